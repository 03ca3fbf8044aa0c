"""The local gateway over HTTP in front of the real API function's ``live`` alias, on a cloud of its
own: the pipeline is deployed but no model has been promoted, so the function answers ``/health``
with 503 ("no model deployed yet"), which is how a test tells the function's answers from the
gateway's own 429s. (The gateway with a served model is in tests/e2e/test_promotion.py.)"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from infrastructure import catalog
from pipectl.localcloud import LocalCloud
from pipectl.localcloud.gateway import Gateway, moto_api_keys
from pipectl.localcloud.provision import Resources

pytestmark = pytest.mark.e2e

API = catalog.function(catalog.SERVING_FUNCTION).name


def status(gateway: Gateway, path: str, key: str) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(gateway.url + path, headers={"x-api-key": key}), timeout=30
        ) as a:
            return int(a.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_gateway_throttles_a_key_beyond_its_burst(cloud: LocalCloud, deployed: Resources) -> None:
    # GIVEN a gateway whose buckets' clock stands still: no token comes back, however slow the calls
    keys = moto_api_keys(cloud.client("apigateway"))
    frozen = Gateway(
        cloud.client("lambda"), API, catalog.LIVE_ALIAS, keys, rate=0.5, burst=3, port=0, clock=lambda: 0.0
    ).start()
    try:
        # WHEN one key calls six times
        statuses = [status(frozen, "/health", deployed.api_key) for _ in range(6)]
    finally:
        frozen.stop()
    # THEN its burst reaches the function (503: no model yet) and the rest is throttled by the gateway
    assert statuses == [503, 503, 503, 429, 429, 429]
