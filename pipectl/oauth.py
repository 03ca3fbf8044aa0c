"""A client of the API: an access token from the user pool's token endpoint (client-credentials grant)
and the headers every call sends, the same for the local cloud and a deployed stack.

The token authorizes (API Gateway's Cognito authorizer checks it); the API key only names the
client's usage plan (throttling and quota), so a call carries both.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infrastructure import catalog

if TYPE_CHECKING:
    from pipectl.target import Target

# A token is fetched again this long before it expires, so no call goes out with one about to lapse.
REFRESH_MARGIN_S = 60.0


class TokenRequestFailed(Exception):
    """The token endpoint refused the client; the message says what it answered."""


@dataclass
class ApiClient:
    """One client's credentials: its app client (id and secret), the token endpoint and its API key."""

    token_url: str
    client_id: str
    client_secret: str
    api_key: str | None = None
    scopes: tuple[str, ...] = ()  # empty: every scope the app client is allowed
    clock: Callable[[], float] = time.time
    _token: tuple[str, float] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def token(self) -> str:
        """A current access token (fetched when there is none or it is about to expire)."""
        with self._lock:
            if self._token is None or self._token[1] - REFRESH_MARGIN_S <= self.clock():
                self._token = self._fetch()
            return self._token[0]

    def headers(self) -> dict[str, str]:
        """What every API call sends: ``Authorization: Bearer <token>`` and ``x-api-key``."""
        headers = {"Authorization": f"Bearer {self.token()}"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def _fetch(self) -> tuple[str, float]:
        basic = base64.b64encode(
            f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(self.client_secret)}".encode()
        ).decode()
        form = {"grant_type": "client_credentials", **({"scope": " ".join(self.scopes)} if self.scopes else {})}
        request = urllib.request.Request(  # noqa: S310 - the user pool's token endpoint, http(s) only
            self.token_url,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as answer:  # noqa: S310
                body = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise TokenRequestFailed(
                f"{self.token_url} refused client {self.client_id}: {exc.code} {exc.read().decode(errors='replace')}"
            ) from exc
        return str(body["access_token"]), self.clock() + float(body["expires_in"])


_clients: dict[tuple[str, str, str | None], ApiClient] = {}


def client_of(
    target: Target, client_id: str | None = None, client_secret: str | None = None, api_key: str | None = None
) -> ApiClient:
    """The API client a command calls as: the target's first app client and API key unless given
    (one per process, so its token is reused until it is about to expire)."""
    token_url = target.token_url
    client_id, client_secret = client_id or target.client_id, client_secret or target.client_secret
    if not (token_url and client_id and client_secret):
        raise TokenRequestFailed(
            "no API client for this target: pass --client-id and --client-secret (`pipectl client create NAME`)"
        )
    key = (token_url, client_id, api_key or target.api_key)
    if key not in _clients:
        _clients[key] = ApiClient(token_url, client_id, client_secret, api_key=api_key or target.api_key)
    return _clients[key]


def token_command(token_url: str, client_id: str, scopes: tuple[str, ...] = ()) -> str:
    """The shell command that gets a token for ``client_id`` (its secret in ``$CLIENT_SECRET``)."""
    scope = f" -d scope={urllib.parse.quote(' '.join(scopes))}" if scopes else ""
    return (
        f'curl -s -u "{client_id}:$CLIENT_SECRET" -d grant_type=client_credentials{scope} {token_url}'
        " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    )


def create_app_client(cognito: Any, pool_id: str, name: str, scopes: tuple[str, ...]) -> tuple[str, str]:
    """An app client of the API clients' pool for the client-credentials grant with ``scopes`` (names
    of catalog.API_SCOPES); returns its id and secret. The same call on AWS and the local cloud."""
    client = cognito.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName=f"{catalog.PROJECT}-api-{name}",
        GenerateSecret=True,
        AllowedOAuthFlows=["client_credentials"],
        AllowedOAuthFlowsUserPoolClient=True,
        AllowedOAuthScopes=[catalog.api_scope(scope) for scope in scopes],
        SupportedIdentityProviders=["COGNITO"],
        ExplicitAuthFlows=[],
        AccessTokenValidity=1,
        TokenValidityUnits={"AccessToken": "hours"},
        EnableTokenRevocation=True,
        PreventUserExistenceErrors="ENABLED",
    )["UserPoolClient"]
    return str(client["ClientId"]), str(client["ClientSecret"])
