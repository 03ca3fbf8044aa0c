"""The local gateway's API Gateway parts that need no cloud: the proxy event, the token bucket, the
Cognito authorizer's decisions (tokens signed here with a key of the test's own) and the status of a
failed integration. (Its behaviour over HTTP in front of the real API function is in
tests/e2e/test_gateway.py and tests/e2e/test_promotion.py.)"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from mangum.handlers.api_gateway import APIGateway

from infrastructure import catalog
from pipectl.localcloud.auth import CognitoAuthorizer, issuer
from pipectl.localcloud.gateway import Gateway, TokenBucket, proxy_event

POOL, CLIENT, NOW = "us-east-1_pool", "client-1", 1_800_000_000
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same id, another key: a forged signature
PUBLIC_KEYS = KeySet.import_key_set({"keys": [KEY.as_dict(private=False)]})
PREDICT, ADMIN = catalog.api_scope("predict"), catalog.api_scope("admin")


def token(key: RSAKey = KEY, **claims: object) -> str:
    """An access token as Cognito issues one for the client-credentials grant (claims overridable)."""
    values: dict = {  # type: ignore[type-arg]
        "sub": CLIENT,
        "client_id": CLIENT,
        "token_use": "access",
        "scope": f"{PREDICT} {ADMIN}",
        "iss": issuer(POOL),
        "iat": NOW - 10,
        "exp": NOW + 3600,
    }
    values.update(claims)
    return jwt.encode({"kid": "k1", "alg": "RS256"}, {k: v for k, v in values.items() if v is not None}, key)


def authorizer(now: int = NOW) -> CognitoAuthorizer:
    return CognitoAuthorizer(POOL, lambda: PUBLIC_KEYS, lambda fresh=False: {CLIENT}, clock=lambda: now)


def bearer(value: str | None = None) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {value or token()}"), ("x-api-key", "k")]


def event(**overrides: object) -> dict:  # type: ignore[type-arg]
    values: dict = {  # type: ignore[type-arg]
        "method": "POST",
        "target": "/predict?debug=1&tag=a&tag=b",
        "headers": [("Host", "127.0.0.1:8000"), ("x-api-key", "k"), ("Accept", "a"), ("Accept", "b")],
        "body": b'{"rows": []}',
    }
    values.update(overrides)
    return proxy_event(
        str(values["method"]),
        str(values["target"]),
        list(values["headers"]),  # type: ignore[arg-type]
        bytes(values["body"]),  # type: ignore[arg-type]
        source_ip="127.0.0.1",
        api_key="k",
        request_id="r-1",
    )


def test_a_request_becomes_a_rest_api_proxy_event_mangum_recognises() -> None:
    built = event()
    assert built["resource"] == "/{proxy+}" and built["path"] == "/predict"
    assert built["pathParameters"] == {"proxy": "predict"}
    assert built["queryStringParameters"] == {"debug": "1", "tag": "b"}
    assert built["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    assert built["headers"]["Accept"] == "b" and built["multiValueHeaders"]["Accept"] == ["a", "b"]
    assert built["requestContext"]["requestId"] == "r-1"
    assert built["requestContext"]["identity"]["apiKey"] == "k"
    assert (built["body"], built["isBase64Encoded"]) == ('{"rows": []}', False)
    assert APIGateway.infer(built, None, {"api_gateway_base_path": "/"})  # type: ignore[arg-type]


def test_a_binary_body_travels_base64_encoded() -> None:
    built = event(body=b"\xff\xfe\x00")
    assert built["isBase64Encoded"] is True and base64.b64decode(built["body"]) == b"\xff\xfe\x00"


def test_the_root_path_has_no_proxy_parameter() -> None:
    built = event(method="GET", target="/", body=b"")
    assert (built["resource"], built["pathParameters"], built["body"]) == ("/", None, None)


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_a_burst_then_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=20, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.1  # two tokens' worth at 20 a second
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def test_the_bucket_never_holds_more_than_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=20, burst=3, clock=clock)
    clock.now += 3600  # an hour idle
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def _silent_endpoint() -> tuple[socket.socket, str]:
    """A TCP endpoint that accepts connections and never answers: a Lambda API that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.listen()
    threading.Thread(target=lambda: [listener.accept() for _ in range(8)], daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}"


def _gateway(endpoint: str, read_timeout: float) -> Gateway:
    client = boto3.client(
        "lambda",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(read_timeout=read_timeout, connect_timeout=1, retries={"max_attempts": 1}),
    )
    return Gateway(client, "api", "live", lambda fresh=False: {"k"}, authorizer=authorizer(), rate=10, burst=10)


def test_an_integration_that_never_answers_is_a_504_endpoint_timeout() -> None:
    listener, endpoint = _silent_endpoint()
    with listener:
        answer = _gateway(endpoint, read_timeout=0.2).handle("GET", "/health", bearer(), b"", "127.0.0.1")
    assert answer.status == 504 and b"Endpoint request timed out" in answer.body


def test_an_integration_that_cannot_be_reached_is_a_502() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # nothing listens there now: the connection is refused
    answer = _gateway(endpoint, read_timeout=5).handle("GET", "/health", bearer(), b"", "127.0.0.1")
    assert answer.status == 502 and b"Internal server error" in answer.body


def _over_http(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    """(status, content type, JSON body) of one request to a gateway whose integration is unreachable:
    every answer here is the gateway's own."""
    with _serving_gateway() as gateway:
        connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
        connection.request(method, path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), json.loads(answer.read())


@contextlib.contextmanager
def _serving_gateway() -> Iterator[Gateway]:
    """A gateway listening on a free port, in front of a Lambda endpoint nothing listens on."""
    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    gateway = _gateway(endpoint, read_timeout=5)
    gateway.port = 0
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "BREW"])
def test_a_method_the_api_does_not_have_is_api_gateways_json_403_not_an_html_501(method: str) -> None:
    assert _over_http(method, "/predict", {"x-api-key": "k"}) == (
        403,
        "application/json",
        {"message": "Missing Authentication Token"},
    )


def test_a_method_a_doc_path_does_not_have_is_a_missing_route_even_with_a_key() -> None:
    # /docs is its own resource with GET only: POST does not fall through to /{proxy+}
    assert _over_http("POST", "/docs", {"x-api-key": "k"})[::2] == (403, {"message": "Missing Authentication Token"})


def test_a_request_without_a_token_on_an_existing_route_is_unauthorized_even_with_an_api_key() -> None:
    assert _over_http("POST", "/predict", {"x-api-key": "k"})[::2] == (401, {"message": "Unauthorized"})


def test_a_valid_token_without_an_api_key_is_forbidden() -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    assert _over_http("POST", "/predict", headers)[::2] == (403, {"message": "Forbidden"})


# -- the Cognito authorizer: API Gateway's gateway responses (auth.py cites them) ------------------------


@pytest.mark.parametrize(
    ("header", "now"),
    [
        (None, NOW),
        ("", NOW),
        ("Bearer not-a-jwt", NOW),
        (f"Bearer {token()}", NOW + 3600),  # expired: the clock is an hour on
        (f"Bearer {token(iss=issuer('us-east-1_another'))}", NOW),  # another pool's
        (f"Bearer {token(key=OTHER_KEY)}", NOW),  # signed by a key not in the pool's JWKS
        (f"Bearer {token()[:-4]}AAAA", NOW),  # the signature tampered with
        (f"Bearer {token(token_use='id')}", NOW),  # an ID token, not an access token
        (f"Bearer {token(client_id='deleted-client')}", NOW),  # an app client the pool no longer has
        (f"Bearer {token(exp=None)}", NOW),  # no expiry
    ],
    ids=["none", "empty", "garbage", "expired", "other-pool", "other-key", "tampered", "id-token", "client", "no-exp"],
)
def test_an_invalid_token_is_401_unauthorized(header: str | None, now: int) -> None:
    decision = authorizer(now).check(header, (PREDICT,))
    assert (decision.status, decision.message) == (401, "Unauthorized")


def test_a_valid_token_without_the_methods_scope_is_403_access_denied() -> None:
    decision = authorizer().check(f"Bearer {token(scope=PREDICT)}", catalog.required_scopes("/model-info"))
    assert decision.status == 403 and decision.message == "User is not authorized to access this resource"


def test_a_valid_token_with_the_scope_is_accepted_with_its_claims_bearer_or_not() -> None:
    for header in (f"Bearer {token(scope=PREDICT)}", token(scope=PREDICT)):
        decision = authorizer().check(header, catalog.required_scopes("/predict"))
        assert decision.status == 0 and decision.claims and decision.claims["client_id"] == CLIENT
    assert authorizer(NOW + 3599).check(token(), (PREDICT,)).status == 0, "valid until its exp"


def test_the_paths_scopes_are_admin_for_what_is_served_and_predict_for_the_rest() -> None:
    assert catalog.required_scopes("/model-info") == catalog.required_scopes("/metrics") == (ADMIN,)
    assert catalog.required_scopes("/predict") == catalog.required_scopes("/health") == (PREDICT,)
    with pytest.raises(ValueError, match="unknown API scope 'root'"):
        catalog.api_scope("root")


def test_the_claims_reach_the_function_as_the_cognito_authorizer_passes_them() -> None:
    built = proxy_event(
        "GET", "/health", [], b"", source_ip="1.2.3.4", api_key="k", request_id="r", claims={"client_id": "c", "exp": 5}
    )
    assert built["requestContext"]["authorizer"] == {"claims": {"client_id": "c", "exp": "5"}}


def test_swagger_uis_files_are_open_without_a_key_or_token_like_the_docs_page() -> None:
    # a browser loading /docs sends neither an x-api-key nor a token for the page's scripts
    for path in ("/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"):
        assert _over_http("GET", path)[0] == 502, path  # past the checks, to the (unreachable) function
    assert _over_http("GET", "/docs/other.js")[::2] == (401, {"message": "Unauthorized"})


def test_a_malformed_request_is_answered_in_json() -> None:
    with _serving_gateway() as gateway, socket.create_connection((gateway.host, gateway.port), timeout=10) as raw:
        many = b"".join(b"x-h%d: v\r\n" % i for i in range(101))  # http.server accepts 100 at most
        raw.sendall(b"GET / HTTP/1.1\r\n" + many + b"\r\n")
        received = b"".join(iter(lambda: raw.recv(65536), b""))  # the server closes after an error
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"431" and b"application/json" in head
    assert "message" in json.loads(body)
