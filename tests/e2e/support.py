"""Helpers the e2e modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from typing import Any

from infrastructure import catalog
from pipectl.localcloud import LocalCloud
from pipectl.localcloud.auth import authorizer_of
from pipectl.localcloud.gateway import Gateway, moto_api_keys
from pipectl.localcloud.provision import Resources
from pipectl.oauth import ApiClient
from pipectl.target import Target

# Every e2e deployment's training search stops on its trial count, never on the clock, so the model
# it picks (and what the tests assert about it) does not depend on how fast the machine is. 2 trials
# per family run in about the 3 s the search was once given; requests pass a budget that is only a
# guard (SEARCH_GUARD_S).
SEARCH_TRIALS = 2
SEARCH_GUARD_S = 600
JOB_SETTINGS = {"PRICEPIPE_SEARCH_MAX_TRIALS": str(SEARCH_TRIALS)}
# A promotion a flow starts on its own (a retrained challenger that beats the champion) is a canary
# by default, baking 600 s up to 3 times: in a module that sends it no traffic, one bake of a second
# ends it (too little traffic: rolled back), so a test can wait for it to finish.
FUNCTION_SETTINGS = {"PRICEPIPE_CANARY_BAKE_SECONDS": "1", "PRICEPIPE_CANARY_MAX_BAKES": "1"}


def start_gateway(cloud: LocalCloud, rate: float = 500, burst: int = 500) -> Gateway:
    """The local HTTP gateway in front of the API function's ``live`` alias, started on a free port."""
    return Gateway(
        cloud.client("lambda"),
        catalog.function(catalog.SERVING_FUNCTION).name,
        catalog.LIVE_ALIAS,
        moto_api_keys(cloud.client("apigateway")),
        authorizer=authorizer_of(cloud),
        rate=rate,
        burst=burst,
        port=0,
    ).start()


_clients: dict[tuple[str, tuple[str, ...]], ApiClient] = {}


def api_client(deployed: Resources, *scopes: str) -> ApiClient:
    """The deployment's first API client (its token, kept until it is about to expire, and its API
    key): ``.headers()`` is what every call to the gateway sends. ``scopes`` (names of
    catalog.API_SCOPES) narrow its token; none: all of them."""
    key = (f"{deployed.token_url} {deployed.client_id}", scopes)
    if key not in _clients:
        _clients[key] = ApiClient(
            deployed.token_url,
            deployed.client_id,
            deployed.client_secret,
            api_key=deployed.api_key,
            scopes=tuple(catalog.api_scope(scope) for scope in scopes),
        )
    return _clients[key]


def metrics_named(target: Target, name: str, at_least: int = 1) -> list[dict[str, Any]]:
    """The metrics named ``name``, once their EMF lines have reached CloudWatch (shipped as Lambda's
    log agent ships them: a fraction of a second after the function returns)."""
    cloudwatch = target.client("cloudwatch")
    found: list[dict[str, Any]] = []
    for _ in range(50):
        found = list(cloudwatch.list_metrics(Namespace="PricePipeline", MetricName=name)["Metrics"])
        if len(found) >= at_least:
            break
        time.sleep(0.2)
    return found
