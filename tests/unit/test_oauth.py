"""The API client's tokens (pipectl.oauth) from the local cloud's token endpoint, on moto's in-memory
Cognito: fetched once and reused until they are about to expire, signed so moto's JWKS verifies them.
(The same over HTTP through the gateway: tests/e2e/test_gateway.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from joserfc.jwk import KeySet
from moto import mock_aws

from infrastructure import catalog
from pipectl.localcloud.auth import ACCESS_TOKEN_TTL_S, CognitoAuthorizer, TokenEndpoint
from pipectl.oauth import REFRESH_MARGIN_S, ApiClient, TokenRequestFailed, client_of, create_app_client
from pipectl.target import Target


@pytest.fixture
def pool() -> Iterator[tuple[str, str, str, str]]:
    """(pool id, client id, secret, token URL) of a pool with the API's resource server, in moto."""
    with mock_aws():
        cognito = boto3.client("cognito-idp", region_name="us-east-1")
        pool_id = cognito.create_user_pool(PoolName=catalog.API_CLIENTS_POOL)["UserPool"]["Id"]
        client_id, secret = create_app_client(cognito, pool_id, "test", ("predict",))
        endpoint = TokenEndpoint().start()
        try:
            yield pool_id, client_id, secret, endpoint.url
        finally:
            endpoint.stop()


def moto_public_keys() -> KeySet:
    from moto.cognitoidp.responses import CognitoIdpJsonWebKeyResponse

    return KeySet.import_key_set(json.loads(CognitoIdpJsonWebKeyResponse.json_web_key))


def test_a_token_is_reused_until_it_is_about_to_expire_then_fetched_again(pool: tuple[str, str, str, str]) -> None:
    _, client_id, secret, url = pool
    now = [1_000.0]
    client = ApiClient(url, client_id, secret, api_key="k", clock=lambda: now[0])
    first = client.token()
    assert client.token() == first
    now[0] += ACCESS_TOKEN_TTL_S - REFRESH_MARGIN_S - 1
    assert client.token() == first
    now[0] += 1
    assert client.token() != first
    assert client.headers() == {"Authorization": f"Bearer {client.token()}", "x-api-key": "k"}


def test_the_endpoints_token_verifies_with_the_pools_jwks_and_carries_the_clients_scope(
    pool: tuple[str, str, str, str],
) -> None:
    pool_id, client_id, secret, url = pool
    token = ApiClient(url, client_id, secret).token()
    authorizer = CognitoAuthorizer(pool_id, moto_public_keys, lambda fresh=False: {client_id})
    decision = authorizer.check(f"Bearer {token}", catalog.required_scopes("/predict"))
    assert decision.status == 0 and decision.claims is not None
    assert decision.claims["scope"] == catalog.api_scope("predict") and decision.claims["sub"] == client_id
    assert authorizer.check(f"Bearer {token}", catalog.required_scopes("/metrics")).status == 403


def test_a_target_without_an_api_client_is_a_clear_error() -> None:
    target = Target(kind="aws", region="eu-west-1", landing_bucket="l", lake_bucket="k", artifacts_bucket="a")
    with pytest.raises(TokenRequestFailed, match="pipectl client create NAME"):
        client_of(target)
