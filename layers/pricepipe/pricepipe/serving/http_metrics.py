"""Prometheus metrics of the API, for ``GET /metrics`` where the app runs as a server (uvicorn).

Requests by route template, method and status; request latency by route; rows priced by model
version; which model the process serves; and the process's own CPU, memory and file descriptors.
Each metrics object has its own registry, so apps built side by side (tests, benchmarks) do not
share counters. In Lambda every container counts only its own requests — fine, since there the
CloudWatch (EMF) metrics written by the handler are the ones to watch.

The middleware is plain ASGI (no ``BaseHTTPMiddleware``, whose per-request task costs ~100 µs) and
labels a request by its route's template (``/predict``), never by its raw path, so a scan of random
URLs cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED_ROUTE = "<unmatched>"
# from 100 µs (a warm one-row /predict) to 2.5 s (a cold start seen by a server's first request)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class HttpMetrics:
    """The API's Prometheus registry and the instruments in it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "pricepipe_http_requests",
            "HTTP requests answered, by route template, method and status code",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "pricepipe_http_request_duration_seconds",
            "Time from request to the end of the response, by route template",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "pricepipe_predictions",
            "Rows priced, by model name and version",
            ("model_name", "model_version"),
            registry=self.registry,
        )
        self.model = Gauge(
            "pricepipe_model_info",
            "The model this process serves (value 1), by name and version",
            ("model_name", "model_version"),
            registry=self.registry,
        )

    def serving(self, model_name: str, model_version: str) -> None:
        self.model.labels(model_name, model_version).set(1)

    def priced(self, model_name: str, model_version: str, rows: int) -> None:
        self.predictions.labels(model_name, model_version).inc(rows)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)


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
