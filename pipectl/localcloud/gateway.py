"""The local cloud's API Gateway: HTTP on 127.0.0.1 in front of the serving function's ``live`` alias.

What it does as a REST API with a Lambda proxy integration, an API key and a usage plan would:

- answers a method or path the serving stack's API does not have (TRACE, POST /docs, ...) with 403
  ``Missing Authentication Token`` in JSON, as a REST API does, before looking at the key;
- requires an access token of the API clients' user pool in the ``Authorization`` header, checked as
  API Gateway's Cognito authorizer checks it (signature, issuer, app client, expiry, and one of the
  path's scopes, ``catalog.required_scopes``; :class:`~pipectl.localcloud.auth.CognitoAuthorizer`):
  401 ``Unauthorized`` without a valid token, 403 when it lacks the scope; then the ``x-api-key``
  header to hold an enabled API key of the cloud (403 ``Forbidden``): the key names the client's
  usage plan, it authorizes nothing by itself. ``GET /docs`` and ``GET /openapi.json`` (and Swagger
  UI's OAuth redirect) need neither, so the docs page opens in a browser; the serving stack leaves
  the same methods open;
- throttles each key with a token bucket (``rate`` requests per second, ``burst`` at once; 429
  ``Too Many Requests``), as a usage plan does;
- turns each request into an API Gateway v1 proxy event (the token's claims in
  ``requestContext.authorizer.claims``, as the Cognito authorizer passes them) and invokes
  ``<function>:<alias>`` through the Lambda API, so the alias's canary weights decide which version
  answers;
- returns the function's status, headers and body (decoding ``isBase64Encoded``), 502 when the
  function fails and 504 when it runs past the integration timeout;
- writes one access log line (JSON) per request.

What it does not: custom domains and stage paths (the API is at the root), request validation and
models, Lambda and IAM authorizers, per-method throttling, caching, quotas, CORS, payload limits.
"""

from __future__ import annotations

import base64
import datetime as dt
import errno
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

from infrastructure import catalog
from pricepipe.serving import docs

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

    from pipectl.localcloud.auth import CognitoAuthorizer

PUBLIC_ROUTES = {("GET", path) for path in docs.PUBLIC_PATHS}  # as the serving stack's (pricepipe.serving.docs)
# The serving stack's methods: ANY on / and on /{proxy+}, and GET alone on each public doc path (an
# explicit resource is matched before the greedy proxy). ANY stands for these seven methods (API
# Gateway developer guide, "Set up a method": ANY is DELETE, GET, HEAD, OPTIONS, PATCH, POST or PUT).
ANY_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"})
_PUBLIC_PATHS = {path for _, path in PUBLIC_ROUTES}
# What a REST API answers for a method or resource it does not have, whatever the API key: 403
# {"message": "Missing Authentication Token"} (gateway response MISSING_AUTHENTICATION_TOKEN;
# https://repost.aws/knowledge-center/api-gateway-authentication-token-errors).
MISSING_ROUTE = "Missing Authentication Token"
INTEGRATION_TIMEOUT_S = 29.0  # API Gateway's default integration timeout
STAGE = "local"


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one or is throttled."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


def proxy_event(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    source_ip: str,
    api_key: str | None,
    request_id: str,
    claims: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The API Gateway REST (v1) Lambda proxy event for one request on a ``/{proxy+}`` resource."""
    parts = urlsplit(target)
    path = parts.path or "/"
    query = parse_qs(parts.query, keep_blank_values=True)
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    try:
        text: str | None = body.decode("utf-8") if body else None
        encoded = False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
    resource = "/" if path == "/" else "/{proxy+}"
    now = dt.datetime.now(dt.UTC)
    event: dict[str, Any] = {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": {name: values[-1] for name, values in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": None if path == "/" else {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": method,
            "path": path,  # what the client asked for: the API is at the root, as on a custom domain
            "stage": STAGE,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "protocol": "HTTP/1.1",
            "domainName": multi_headers.get("Host", multi_headers.get("host", ["localhost"]))[-1],
            "identity": {
                "sourceIp": source_ip,
                "userAgent": (multi_headers.get("User-Agent") or [""])[-1] or None,
                "apiKey": api_key,
                "apiKeyId": api_key[:8] if api_key else None,
            },
        },
        "body": text,
        "isBase64Encoded": encoded,
    }
    if claims is not None:  # the Cognito authorizer passes the claims as strings
        event["requestContext"]["authorizer"] = {"claims": {k: str(v) for k, v in claims.items()}}
    return event


class Gateway:
    """An HTTP server invoking ``function:alias`` for every request; start() binds, stop() closes."""

    def __init__(
        self,
        lambda_client: LambdaClient,
        function: str,
        alias: str,
        api_keys: Callable[..., set[str]],
        *,
        authorizer: CognitoAuthorizer,
        rate: float,
        burst: int,
        host: str = "127.0.0.1",
        port: int = 8000,
        access_log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lambda_client = lambda_client
        self.function, self.alias = function, alias
        self.api_keys = api_keys
        self.authorizer = authorizer
        self.rate, self.burst = rate, burst
        self.clock = clock  # the token buckets' (tests drive it)
        self.host, self.port = host, port
        self.access_log = access_log
        self._buckets: dict[str, TokenBucket] = {}
        self._buckets_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, fall_back_to_any_port: bool = False) -> Gateway:
        """Listen; when the port is taken and ``fall_back_to_any_port``, on a free one (see :attr:`url`)."""
        handler = _handler_for(self)
        try:
            self._server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not fall_back_to_any_port:
                raise
            self._server = ThreadingHTTPServer((self.host, 0), handler)
        self.port = serve_in_background(self._server, "gateway")
        return self

    def stop(self) -> None:
        close(self._server)
        self._server = None

    def _bucket(self, key: str) -> TokenBucket:
        with self._buckets_lock:
            if key not in self._buckets:
                self._buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
            return self._buckets[key]

    def _refusal(
        self, method: str, path: str, headers: list[tuple[str, str]], request_id: str, fields: dict[str, Any]
    ) -> tuple[Answer | None, dict[str, Any] | None]:
        """The gateway's own answer before any integration, in API Gateway's order: no such method, the
        authorizer's refusal, no valid API key, throttled; (None, the token's claims) to go on. The
        authorizer comes before the usage plan's key check: a REST API can even take the key from its
        authorizer ("Choose an API key source in API Gateway", API Gateway developer guide)."""
        if not has_method(method, path):
            return _message(403, MISSING_ROUTE, request_id, {**fields, "error": "no such method or resource"}), None
        api_key = _header(headers, "x-api-key")
        claims = None
        if (method, path) not in PUBLIC_ROUTES:
            decision = self.authorizer.check(_header(headers, "authorization"), catalog.required_scopes(path))
            if decision.status:
                return _message(
                    decision.status, decision.message, request_id, {**fields, "error": decision.reason}
                ), None
            claims = decision.claims
            fields["clientId"] = (claims or {}).get("client_id")
            if not api_key or (api_key not in self.api_keys() and api_key not in self.api_keys(fresh=True)):
                return _message(403, "Forbidden", request_id, {**fields, "error": "missing or unknown API key"}), None
        if not self._bucket(api_key or "anonymous").take():
            return _message(429, "Too Many Requests", request_id, {**fields, "error": "throttled"}), None
        return None, claims

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str) -> Answer:
        """The answer to one request, with its access log fields."""
        request_id = str(uuid.uuid4())
        path = urlsplit(target).path or "/"
        fields: dict[str, Any] = {"requestId": request_id, "ip": source_ip, "httpMethod": method, "path": path}
        refused, claims = self._refusal(method, path, headers, request_id, fields)
        if refused is not None:
            return refused
        api_key = _header(headers, "x-api-key")
        event = proxy_event(
            method, target, headers, body, source_ip=source_ip, api_key=api_key, request_id=request_id, claims=claims
        )
        began = time.perf_counter()
        try:
            answer = self.lambda_client.invoke(
                FunctionName=self.function, Qualifier=self.alias, Payload=json.dumps(event).encode()
            )
        except Exception as exc:  # noqa: BLE001 - the integration failed: the client sees a gateway error
            # botocore's read/connect timeouts are the integration timing out (API Gateway: 504)
            status = 504 if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError)) else 502
            message = "Endpoint request timed out" if status == 504 else "Internal server error"
            return _message(status, message, request_id, {**fields, "error": f"{type(exc).__name__}: {exc}"})
        latency_ms = round((time.perf_counter() - began) * 1000, 3)
        fields |= {"integrationLatency": latency_ms, "executedVersion": answer.get("ExecutedVersion")}
        payload = answer["Payload"].read()
        if answer.get("FunctionError"):
            return _message(502, "Internal server error", request_id, {**fields, "error": payload[:500].decode()})
        try:
            response = json.loads(payload)
            status = int(response["statusCode"])
        except (ValueError, KeyError, TypeError):
            return _message(502, "Internal server error", request_id, {**fields, "error": "malformed response"})
        out_headers: list[tuple[str, str]] = []
        for name, values in (response.get("multiValueHeaders") or {}).items():
            out_headers.extend((name, str(v)) for v in values)
        named = {name.lower() for name, _ in out_headers}
        out_headers.extend(
            (name, str(value)) for name, value in (response.get("headers") or {}).items() if name.lower() not in named
        )
        out_headers.append(("x-amzn-RequestId", request_id))
        raw = response.get("body") or ""
        content = base64.b64decode(raw) if response.get("isBase64Encoded") else str(raw).encode()
        return Answer(status, out_headers, content, fields)


def serve_in_background(server: ThreadingHTTPServer, name: str) -> int:
    """Serve on a daemon thread (a thread per request); returns the port it listens on."""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return int(server.server_address[1])


def close(server: ThreadingHTTPServer | None) -> None:
    """Stop serving and release the port (nothing when not started)."""
    if server is not None:
        server.shutdown()
        server.server_close()


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The last value of header ``name`` (case-insensitive), if any."""
    return next((v for k, v in reversed(headers) if k.lower() == name), None)


def has_method(method: str, path: str) -> bool:
    """Whether the serving stack's API has ``method`` on ``path`` (see :data:`ANY_METHODS`)."""
    return method == "GET" if path in _PUBLIC_PATHS else method in ANY_METHODS


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    log: dict[str, Any]  # access log fields


def _message(status: int, message: str, request_id: str, log: dict[str, Any]) -> Answer:
    """An answer of the gateway's own, in API Gateway's shape: ``{"message": ...}``."""
    headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", request_id)]
    if status == 403:
        kind = "MissingAuthenticationTokenException" if message == MISSING_ROUTE else "ForbiddenException"
        headers.append(("x-amzn-ErrorType", kind))
    elif status == 401:
        headers.append(("x-amzn-ErrorType", "UnauthorizedException"))
    return Answer(status, headers, json.dumps({"message": message}).encode(), log)


def _handler_for(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pricepipe-local-gateway"
        # The server's own errors (a malformed request line, say) in API Gateway's shape, not HTML.
        error_content_type = "application/json"
        error_message_format = '{"message": "%(message)s"}'

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            began = time.perf_counter()
            answer = gateway.handle(self.command, self.path, list(self.headers.items()), body, self.client_address[0])
            status, content, fields = answer.status, answer.body, answer.log
            self.send_response(status)
            for name, value in answer.headers:
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)
            if gateway.access_log is not None:
                fields |= {
                    "requestTime": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "status": status,
                    "responseLength": len(content),
                    "responseLatency": round((time.perf_counter() - began) * 1000, 3),
                    "protocol": self.request_version,
                }
                gateway.access_log(json.dumps(fields))

        def __getattr__(self, name: str) -> Any:
            """Every method reaches :meth:`Gateway.handle` (TRACE, CONNECT, made-up ones: its 403), never
            http.server's HTML 501 page."""
            if name.startswith("do_"):
                return self._serve
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:
            """Silenced: the access log above is the gateway's log."""

    return Handler


def moto_api_keys(apigateway: Any, ttl_s: float = 5.0) -> Callable[..., set[str]]:
    """The enabled API keys of the cloud, re-read every ``ttl_s`` or when asked ``fresh`` (a key just
    created is accepted at once; a disabled one is refused within ``ttl_s``)."""
    cached: dict[str, Any] = {"at": -1e9, "keys": set()}
    lock = threading.Lock()

    def keys(fresh: bool = False) -> set[str]:
        with lock:
            if fresh or time.monotonic() - cached["at"] > ttl_s:
                items = apigateway.get_api_keys(includeValues=True).get("items", [])
                cached["keys"] = {item["value"] for item in items if item.get("enabled")}
                cached["at"] = time.monotonic()
            return set(cached["keys"])

    return keys
