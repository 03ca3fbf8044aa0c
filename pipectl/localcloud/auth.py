"""OAuth2 on the local cloud: moto's Cognito user pools, a token endpoint, and the authorizer's checks.

On AWS, machine clients get an access token from the user pool domain's token endpoint with the
client-credentials grant (``POST /oauth2/token``, "Token endpoint", Amazon Cognito Developer Guide) and
API Gateway's ``COGNITO_USER_POOLS`` authorizer checks it on every method that lists OAuth scopes.
moto has the user pools, app clients and resource servers, and serves each pool's JWKS at
``/<pool>/.well-known/jwks.json``, but no token endpoint; so:

- :class:`TokenEndpoint` answers the client-credentials grant as Cognito does (client secret in an
  HTTP Basic header or in the form; scopes a subset of the client's allowed ones, all of them when
  none are asked for) and signs the token with moto's key of the client's pool, so the JWKS moto
  serves verifies it;
- :class:`CognitoAuthorizer` checks a token as API Gateway's authorizer does: RS256 signature by a
  key of the pool's JWKS, the pool as issuer, an access token (``token_use``) of an app client of the
  pool, not expired, carrying one of the method's scopes.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote_plus

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from infrastructure import catalog
from pipectl.localcloud.cloud import ACCOUNT, REGION
from pipectl.localcloud.gateway import close, serve_in_background

if TYPE_CHECKING:
    from pipectl.localcloud.cloud import LocalCloud

API_CLIENTS_POOL = catalog.API_CLIENTS_POOL
ACCESS_TOKEN_TTL_S = 3600  # Cognito's default access token validity (1 hour)
TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path, not a secret
CLIENT_CREDENTIALS = "client_credentials"
# moto signs every pool's tokens with one key, whose id in the JWKS it serves is this
MOTO_KEY_ID = "dummy"


def issuer(pool_id: str, region: str = REGION) -> str:
    """The ``iss`` of a user pool's tokens (Cognito's, as moto writes it too)."""
    return f"https://cognito-idp.{region}.amazonaws.com/{pool_id}"


# -- the token endpoint --------------------------------------------------------------------------------


class TokenError(Exception):
    """A refused token request: Cognito's ``{"error": ...}`` with HTTP 400."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _client_credentials(form: dict[str, str], authorization: str | None) -> tuple[str, str]:
    """(client id, secret) from an HTTP Basic header (client_secret_basic) or the form (client_secret_post)."""
    if authorization and authorization.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise TokenError("invalid_client") from exc
        client_id, _, secret = decoded.partition(":")
        return unquote_plus(client_id), unquote_plus(secret)
    if form.get("client_id") and form.get("client_secret"):
        return form["client_id"], form["client_secret"]
    raise TokenError("invalid_client")


def _pool_and_client(client_id: str) -> tuple[Any, Any]:
    """moto's user pool and app client of ``client_id`` (client ids are unique across pools)."""
    from moto.cognitoidp.models import cognitoidp_backends

    for pool in cognitoidp_backends[ACCOUNT][REGION].user_pools.values():
        if client_id in pool.clients:
            return pool, pool.clients[client_id]
    raise TokenError("invalid_client")


def issue_token(form: dict[str, str], authorization: str | None, now: float) -> dict[str, Any]:
    """The token endpoint's answer to a client-credentials request, or :class:`TokenError`."""
    if form.get("grant_type") != CLIENT_CREDENTIALS:
        raise TokenError("unsupported_grant_type" if form.get("grant_type") else "invalid_request")
    client_id, secret = _client_credentials(form, authorization)
    pool, client = _pool_and_client(client_id)
    if not client.generate_secret or secret != client.secret:
        raise TokenError("invalid_client")
    config = client.extended_config
    if CLIENT_CREDENTIALS not in (config.get("AllowedOAuthFlows") or []):
        raise TokenError("unauthorized_client")
    allowed = list(config.get("AllowedOAuthScopes") or [])
    asked = form.get("scope", "").split()
    if any(scope not in allowed for scope in asked) or not (asked or allowed):
        raise TokenError("invalid_scope")
    issued = int(now)
    claims = {
        "sub": client_id,
        "token_use": "access",
        "scope": " ".join(asked or allowed),
        "auth_time": issued,
        "iss": issuer(pool.id, pool.region),
        "exp": issued + ACCESS_TOKEN_TTL_S,
        "iat": issued,
        "version": 2,
        "jti": str(uuid.uuid4()),
        "client_id": client_id,
    }
    token = jwt.encode({"kid": MOTO_KEY_ID, "alg": "RS256"}, claims, pool.json_web_key)
    return {"access_token": token, "expires_in": ACCESS_TOKEN_TTL_S, "token_type": "Bearer"}


class TokenEndpoint:
    """``POST /oauth2/token`` on 127.0.0.1 (a free port): the local cloud's user pool domain."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.host, self.port, self.clock = host, port, clock
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{TOKEN_PATH}"

    def start(self) -> TokenEndpoint:
        self._server = ThreadingHTTPServer((self.host, self.port), _token_handler(self))
        self.port = serve_in_background(self._server, "token-endpoint")
        return self

    def stop(self) -> None:
        close(self._server)
        self._server = None


def _token_handler(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace") if length else ""
            form = {key: values[-1] for key, values in parse_qs(body).items()}
            if self.path.split("?")[0] != TOKEN_PATH:
                status, answer = 404, {"error": "not_found"}
            else:
                try:
                    status, answer = 200, issue_token(form, self.headers.get("Authorization"), endpoint.clock())
                except TokenError as exc:
                    status, answer = 400, {"error": exc.error}
            content = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: Any) -> None:
            """Silenced: the token endpoint logs nothing (a log line could hold a secret)."""

    return Handler


# -- the authorizer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What the authorizer decided: ``status`` 0 to go on (``claims`` are the token's), else the
    gateway response API Gateway sends: 401 UNAUTHORIZED or 403 ACCESS_DENIED."""

    status: int
    message: str = ""
    reason: str = ""  # for the access log only
    claims: dict[str, Any] | None = None


# API Gateway's gateway responses ("Gateway response types for API Gateway", API Gateway developer
# guide): UNAUTHORIZED, 401, "when the custom or Amazon Cognito authorizer failed to authenticate the
# caller" (no token, a bad signature, another pool's, expired: the body {"message": "Unauthorized"});
# ACCESS_DENIED, 403, "for authorization failure, for example when access is denied by a custom or
# Amazon Cognito authorizer" (an authentic token without any of the method's OAuth scopes).
UNAUTHORIZED = "Unauthorized"
ACCESS_DENIED = "User is not authorized to access this resource"


class CognitoAuthorizer:
    """API Gateway's ``COGNITO_USER_POOLS`` authorizer with OAuth scopes, for one user pool.

    ``jwks`` gives the pool's key set (moto's, read over HTTP: :func:`moto_jwks`), ``clients`` the
    pool's app client ids (``clients(fresh=True)`` reads them again: a new client's first token);
    ``clock`` is the time tokens expire against (tests inject it).
    """

    def __init__(
        self,
        pool_id: str,
        jwks: Callable[[], KeySet],
        clients: Callable[..., set[str]],
        *,
        region: str = REGION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool_id, self.issuer = pool_id, issuer(pool_id, region)
        self.jwks, self.clients, self.clock = jwks, clients, clock

    def check(self, authorization: str | None, scopes: Iterable[str]) -> Decision:
        """The decision for a request whose ``Authorization`` header is ``authorization`` on a method
        listing ``scopes`` (the token must carry one of them)."""
        if not authorization or not authorization.strip():
            return Decision(401, UNAUTHORIZED, "no token")
        token = authorization.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        try:
            decoded = jwt.decode(token, self.jwks(), algorithms=["RS256"])
            claims = dict(decoded.claims)
            now = int(self.clock())
            jwt.JWTClaimsRegistry(
                now=now,
                iss={"essential": True, "value": self.issuer},
                exp={"essential": True},
                token_use={"essential": True, "value": "access"},
                client_id={"essential": True},
            ).validate(claims)
        except (JoseError, ValueError, TypeError) as exc:
            return Decision(401, UNAUTHORIZED, f"invalid token: {type(exc).__name__}")
        if claims["client_id"] not in self.clients() and claims["client_id"] not in self.clients(fresh=True):
            return Decision(401, UNAUTHORIZED, "token of an unknown app client")
        carried = set(str(claims.get("scope", "")).split())
        if not carried & set(scopes):
            return Decision(403, ACCESS_DENIED, f"token lacks {' or '.join(scopes)}", claims)
        return Decision(0, claims=claims)


def moto_jwks(endpoint: str, pool_id: str) -> Callable[[], KeySet]:
    """The pool's JWKS as moto serves it at ``<endpoint>/<pool>/.well-known/jwks.json``, read once."""
    cached: list[KeySet] = []
    lock = threading.Lock()

    def keys() -> KeySet:
        with lock:
            if not cached:
                url = f"{endpoint}/{pool_id}/.well-known/jwks.json"
                with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the local cloud's URL
                    cached.append(KeySet.import_key_set(json.loads(answer.read())))
            return cached[0]

    return keys


def moto_clients(cognito: Any, pool_id: str, ttl_s: float = 5.0) -> Callable[..., set[str]]:
    """The pool's app client ids, re-read every ``ttl_s`` or when asked ``fresh`` (a client made by
    ``pipectl client create`` is accepted at once; a deleted one's tokens within ``ttl_s``)."""
    cached: dict[str, Any] = {"at": -1e9, "ids": set()}
    lock = threading.Lock()

    def ids(fresh: bool = False) -> set[str]:
        with lock:
            if fresh or time.monotonic() - cached["at"] > ttl_s:
                listed = cognito.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)["UserPoolClients"]
                cached["ids"] = {c["ClientId"] for c in listed}
                cached["at"] = time.monotonic()
            return set(cached["ids"])

    return ids


def pool_of(cognito: Any) -> str:
    """The id of the API clients' user pool (:data:`API_CLIENTS_POOL`, made by provision)."""
    pools = cognito.list_user_pools(MaxResults=60)["UserPools"]
    found = [pool["Id"] for pool in pools if pool["Name"] == API_CLIENTS_POOL]
    if len(found) != 1:
        raise RuntimeError(f"expected one user pool named {API_CLIENTS_POOL} in the local cloud, found {len(found)}")
    return str(found[0])


def authorizer_of(cloud: LocalCloud, clock: Callable[[], float] = time.time) -> CognitoAuthorizer:
    """The authorizer of the local cloud's API clients' pool: the gateway's."""
    cognito = cloud.client("cognito-idp")
    pool = pool_of(cognito)
    return CognitoAuthorizer(pool, moto_jwks(cloud.endpoint, pool), moto_clients(cognito, pool), clock=clock)
