"""Prometheus metrics of the API, for ``GET /metrics`` where the app runs as a server (uvicorn).

Requests by route template, method and status; request latency by route; rows priced by model
version; which model the process serves; and the process's own CPU, memory and file descriptors.
Each metrics object has its own registry, so apps built side by side (tests, benchmarks) do not
share counters. In Lambda every container counts only its own requests — fine, since there the
CloudWatch (EMF) metrics written by the handler are the ones to watch.

Requests are counted into plain dicts, and ``prometheus_client`` is imported only when ``/metrics``
is read, which then reports those counts: a Lambda container, never scraped, neither imports it at
its cold start (~15 ms here) nor pays its per-request label lookups and locks (~10 µs a request,
2% of the one-row budget). The exposition is prometheus_client's own.

The middleware is plain ASGI (no ``BaseHTTPMiddleware``, whose per-request task costs ~100 µs) and
labels a request by its route's template (``/predict``), never by its raw path, so a scan of random
URLs cannot grow the label set.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED_ROUTE = "<unmatched>"
# from 100 µs (a warm one-row /predict) to 2.5 s (a cold start seen by a server's first request)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def __getattr__(name: str) -> Any:
    # ``CONTENT_TYPE``, the exposition's content type, without importing prometheus_client at import
    if name == "CONTENT_TYPE":
        from prometheus_client import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Latency:
    """One route's latency histogram: a count per bucket (upper bounds inclusive, as Prometheus'),
    the last one for everything above the largest bound."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0


class HttpMetrics:
    """The API's request counts, and the Prometheus registry that reports them when asked."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, _Latency] = {}
        self._predictions: dict[tuple[str, str], int] = {}
        self._models: dict[tuple[str, str], float] = {}
        self._created: dict[tuple[str, tuple[str, ...]], float] = {}  # when each counter series began
        self._registry: Any = None

    def serving(self, model_name: str, model_version: str) -> None:
        self._models[(model_name, model_version)] = 1.0

    def priced(self, model_name: str, model_version: str, rows: int) -> None:
        key = (model_name, model_version)
        count = self._predictions.get(key)
        if count is None:
            self._created["predictions", key] = time.time()
            count = 0
        self._predictions[key] = count + rows

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        count = self._requests.get(key)
        if count is None:
            self._created["requests", key] = time.time()
            count = 0
        self._requests[key] = count + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = _Latency()
        latency.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.sum += seconds

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return str(CONTENT_TYPE_LATEST)

    def render(self) -> bytes:
        """Everything counted so far, and the process's own metrics, in Prometheus' text format."""
        from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry()
            ProcessCollector(registry=self._registry)
            self._registry.register(_Collector(self))
        return bytes(generate_latest(self._registry))


class _Collector:
    """The counts of an :class:`HttpMetrics` as Prometheus metric families (a custom collector)."""

    def __init__(self, metrics: HttpMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        m = self.metrics
        requests = CounterMetricFamily(
            "pricepipe_http_requests",
            "HTTP requests answered, by route template, method and status code",
            labels=("route", "method", "status"),
        )
        for key, count in list(m._requests.items()):
            requests.add_metric(key, count, created=m._created.get(("requests", key)))
        latency = HistogramMetricFamily(
            "pricepipe_http_request_duration_seconds",
            "Time from request to the end of the response, by route template",
            labels=("route",),
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for route, histogram in list(m._latency.items()):
            cumulative, total = [], 0
            for bound, count in zip(bounds, histogram.counts, strict=True):
                total += count
                cumulative.append((bound, total))
            latency.add_metric((route,), cumulative, histogram.sum)
        predictions = CounterMetricFamily(
            "pricepipe_predictions", "Rows priced, by model name and version", labels=("model_name", "model_version")
        )
        for model_key, rows in list(m._predictions.items()):
            predictions.add_metric(model_key, rows, created=m._created.get(("predictions", model_key)))
        model = GaugeMetricFamily(
            "pricepipe_model_info",
            "The model this process serves (value 1), by name and version",
            labels=("model_name", "model_version"),
        )
        for model_key, value in list(m._models.items()):
            model.add_metric(model_key, value)
        yield from (requests, latency, predictions, model)


class MetricsMiddleware:
    """Counts and times every HTTP request into :class:`HttpMetrics`."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client gets if the app raises before starting a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set by the router on the same scope once a route matched
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.observe(template, scope.get("method", ""), status, time.perf_counter() - began)
