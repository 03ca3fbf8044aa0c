"""The local gateway over HTTP in front of the real API function's ``live`` alias, on a cloud of its
own: the pipeline is deployed but no model has been promoted, so the function answers ``/health``
with 503 ("no model deployed yet"), which is how a test tells the function's answers from the
gateway's own 401s, 403s and 429s. Tokens come from the local cloud's token endpoint and are checked
against moto's user pool and JWKS. (The gateway with a served model is in tests/e2e/test_promotion.py.)"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from infrastructure import catalog
from pipectl.commands import serving
from pipectl.localcloud import LocalCloud
from pipectl.localcloud.auth import authorizer_of
from pipectl.localcloud.gateway import Gateway, moto_api_keys
from pipectl.localcloud.provision import Resources
from pipectl.oauth import ApiClient, TokenRequestFailed, create_app_client
from pipectl.target import Target
from tests.e2e.support import api_client, start_gateway

pytestmark = pytest.mark.e2e

API = catalog.function(catalog.SERVING_FUNCTION).name
UNAUTHORIZED = (401, {"message": "Unauthorized"})


def call(gateway: Gateway, path: str, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(urllib.request.Request(gateway.url + path, headers=headers), timeout=30) as a:
            return int(a.status), json.loads(a.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def gateway(cloud: LocalCloud, deployed: Resources) -> Iterator[Gateway]:
    started = start_gateway(cloud)
    yield started
    started.stop()


def test_the_gateway_throttles_a_key_beyond_its_burst(cloud: LocalCloud, deployed: Resources) -> None:
    # GIVEN a gateway whose buckets' clock stands still: no token comes back, however slow the calls
    keys = moto_api_keys(cloud.client("apigateway"))
    frozen = Gateway(
        cloud.client("lambda"),
        API,
        catalog.LIVE_ALIAS,
        keys,
        authorizer=authorizer_of(cloud),
        rate=0.5,
        burst=3,
        port=0,
        clock=lambda: 0.0,
    ).start()
    try:
        # WHEN one client calls six times
        headers = api_client(deployed).headers()
        statuses = [call(frozen, "/health", headers)[0] for _ in range(6)]
    finally:
        frozen.stop()
    # THEN its burst reaches the function (503: no model yet) and the rest is throttled by the gateway
    assert statuses == [503, 503, 503, 429, 429, 429]


def test_a_token_from_the_token_endpoint_reaches_the_function_and_the_api_key_alone_does_not(
    gateway: Gateway, deployed: Resources
) -> None:
    client = api_client(deployed)
    assert call(gateway, "/health", client.headers())[0] == 503, "the function's answer: no model yet"
    assert call(gateway, "/health", {"x-api-key": deployed.api_key}) == UNAUTHORIZED
    assert call(gateway, "/health", {}) == UNAUTHORIZED
    # the docs need neither
    assert call(gateway, "/openapi.json", {})[0] == 200


def test_a_tampered_token_is_unauthorized(gateway: Gateway, deployed: Resources) -> None:
    token = api_client(deployed).token()
    header, payload, signature = token.split(".")
    claims = json.loads(_b64decode(payload))
    forged = _b64encode(json.dumps(claims | {"scope": catalog.api_scope("admin")}))
    for bad in (f"{header}.{forged}.{signature}", f"{header}.{payload}.{signature[:-6]}AAAAAA"):
        assert call(gateway, "/health", {"Authorization": f"Bearer {bad}", "x-api-key": deployed.api_key}) == (
            UNAUTHORIZED
        )


def test_a_token_of_another_user_pool_is_unauthorized(cloud: LocalCloud, gateway: Gateway, deployed: Resources) -> None:
    # GIVEN another pool of the same cloud (moto signs it with the same key: only the issuer tells)
    cognito = cloud.client("cognito-idp")
    other = cognito.create_user_pool(PoolName="someone-elses")["UserPool"]["Id"]
    cognito.create_resource_server(
        UserPoolId=other,
        Identifier=catalog.API_RESOURCE_SERVER,
        Name="lookalike",
        Scopes=[{"ScopeName": name, "ScopeDescription": text} for name, text in catalog.API_SCOPES.items()],
    )
    client_id, secret = create_app_client(cognito, other, "intruder", tuple(catalog.API_SCOPES))
    intruder = ApiClient(deployed.token_url, client_id, secret, api_key=deployed.api_key)
    # WHEN its client calls with its own token, THEN the gateway refuses it
    assert call(gateway, "/health", intruder.headers()) == UNAUTHORIZED


def test_an_expired_token_is_unauthorized(cloud: LocalCloud, deployed: Resources) -> None:
    # GIVEN a gateway whose authorizer's clock is two hours on (tokens live one hour)
    later = Gateway(
        cloud.client("lambda"),
        API,
        catalog.LIVE_ALIAS,
        moto_api_keys(cloud.client("apigateway")),
        authorizer=authorizer_of(cloud, clock=lambda: time.time() + 7200),
        rate=10,
        burst=10,
        port=0,
    ).start()
    try:
        assert call(later, "/health", api_client(deployed).headers()) == UNAUTHORIZED
    finally:
        later.stop()


def test_a_token_without_the_paths_scope_is_403(gateway: Gateway, deployed: Resources) -> None:
    pricing_only = api_client(deployed, "predict")
    status, body = call(gateway, "/model-info", pricing_only.headers())
    assert (status, body) == (403, {"message": "User is not authorized to access this resource"})
    assert call(gateway, "/model-info", api_client(deployed).headers())[0] == 503, "with admin: the function's"


def test_the_token_endpoint_refuses_bad_clients_as_cognito_does(cloud: LocalCloud, deployed: Resources) -> None:
    cognito = cloud.client("cognito-idp")
    wrong_secret = ApiClient(deployed.token_url, deployed.client_id, "not-the-secret")
    with pytest.raises(TokenRequestFailed, match=r"400.*invalid_client"):
        wrong_secret.token()
    unknown_scope = ApiClient(deployed.token_url, deployed.client_id, deployed.client_secret, scopes=("other/thing",))
    with pytest.raises(TokenRequestFailed, match=r"400.*invalid_scope"):
        unknown_scope.token()
    # an app client not allowed the client-credentials grant
    plain = cognito.create_user_pool_client(
        UserPoolId=deployed.user_pool_id, ClientName="user-facing", GenerateSecret=True
    )["UserPoolClient"]
    with pytest.raises(TokenRequestFailed, match=r"400.*unauthorized_client"):
        ApiClient(deployed.token_url, plain["ClientId"], plain["ClientSecret"]).token()
    refused = urllib.request.Request(deployed.token_url, data=b"grant_type=password", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(refused, timeout=10)
    assert (error.value.code, json.loads(error.value.read())) == (400, {"error": "unsupported_grant_type"})


def _b64decode(part: str) -> str:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def _b64encode(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_pipectl_client_create_makes_a_client_whose_token_and_key_pass_the_gateway(
    gateway: Gateway, target: Target
) -> None:
    # GIVEN `pipectl client create partner` (pricing only) on this cloud
    app = typer.Typer()
    serving.register(app, lambda kind, *_: target)
    result = CliRunner().invoke(app, ["client", "create", "partner"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    printed = dict(re.findall(r"^\s+(client id|client secret|API key)\s+(\S+)", result.output, re.MULTILINE))
    assert "grant_type=client_credentials" in result.output and target.token_url in result.output
    assert '["access_token"]' in result.output, "the token command prints whole"
    partner = ApiClient(
        str(target.token_url), printed["client id"], printed["client secret"], api_key=printed["API key"]
    )
    # THEN its token and key reach the function, and it may not read what is served
    assert call(gateway, "/health", partner.headers())[0] == 503
    assert call(gateway, "/model-info", partner.headers())[0] == 403
