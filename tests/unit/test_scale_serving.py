"""``pipectl scale-serving`` waits for READY: FAILED and a timeout are errors that say why.

AWS's answers come from botocore's Stubber (the documented response shapes); the e2e test
(tests/e2e/test_operations.py) runs the IN_PROGRESS -> READY path against the local cloud.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from pipectl.commands import ops

FUNCTION = "pricepipe-api"


def _answer(stubber: Stubber, status: str, **extra: Any) -> None:
    stubber.add_response(
        "get_provisioned_concurrency_config",
        {"RequestedProvisionedConcurrentExecutions": 2, "Status": status, **extra},
        {"FunctionName": FUNCTION, "Qualifier": "live"},
    )


class FakeClock:
    """Time moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_given_in_progress_then_ready_when_waiting_then_it_returns_the_ready_config(lam: Any) -> None:
    client, stubber = lam
    clock = FakeClock()
    _answer(stubber, "IN_PROGRESS", AllocatedProvisionedConcurrentExecutions=0)
    _answer(stubber, "IN_PROGRESS", AllocatedProvisionedConcurrentExecutions=0)
    _answer(stubber, "READY", AllocatedProvisionedConcurrentExecutions=2)
    config = ops.wait_until_provisioned(client, FUNCTION, clock=clock, sleep=clock.sleep, timeout_s=60)
    assert config["Status"] == "READY" and config["AllocatedProvisionedConcurrentExecutions"] == 2
    assert clock.slept == [ops.PROVISIONING_POLL_S] * 2


def test_given_failed_when_waiting_then_the_error_carries_awss_reason(lam: Any) -> None:
    client, stubber = lam
    clock = FakeClock()
    _answer(stubber, "IN_PROGRESS")
    _answer(stubber, "FAILED", StatusReason="FUNCTION_ERROR_INIT_FAILURE")
    with pytest.raises(ops.ProvisioningFailed, match=r"pricepipe-api:live FAILED: FUNCTION_ERROR_INIT_FAILURE"):
        ops.wait_until_provisioned(client, FUNCTION, clock=clock, sleep=clock.sleep, timeout_s=60)


def test_given_no_progress_when_the_timeout_passes_then_it_stops_polling_with_an_error(lam: Any) -> None:
    client, stubber = lam
    clock = FakeClock()
    for _ in range(3):  # 0 s, 5 s, 10 s; a fourth poll would be past the 12 s timeout
        _answer(stubber, "IN_PROGRESS", AllocatedProvisionedConcurrentExecutions=0)
    with pytest.raises(ops.ProvisioningFailed, match=r"still IN_PROGRESS after 12 s \(0 of 2 allocated\)"):
        ops.wait_until_provisioned(client, FUNCTION, clock=clock, sleep=clock.sleep, timeout_s=12)
    assert clock.slept == [ops.PROVISIONING_POLL_S] * 2


# -- SnapStart: AWS Lambda supports either it or provisioned concurrency on a function, not both --------


class _LambdaOnly:
    """The part of a Target scale_serving uses: the Lambda client and the serving function's name."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.functions = {"api": FUNCTION}

    def client(self, service: str) -> Any:
        assert service == "lambda"
        return self._client


def _alias(stubber: Stubber, version: str, weights: dict[str, float] | None = None) -> None:
    answer: dict[str, Any] = {"Name": "live", "FunctionVersion": version}
    if weights:
        answer["RoutingConfig"] = {"AdditionalVersionWeights": weights}
    stubber.add_response("get_alias", answer, {"FunctionName": FUNCTION, "Name": "live"})


def _configuration(stubber: Stubber, qualifier: str, apply_on: str) -> None:
    status = "On" if apply_on == "PublishedVersions" and qualifier != "$LATEST" else "Off"
    stubber.add_response(
        "get_function_configuration",
        {
            "FunctionName": FUNCTION,
            "Version": qualifier,
            "SnapStart": {"ApplyOn": apply_on, "OptimizationStatus": status},
        },
        {"FunctionName": FUNCTION} if qualifier == "$LATEST" else {"FunctionName": FUNCTION, "Qualifier": qualifier},
    )


def test_given_snapstart_on_the_canary_version_when_scaling_then_it_is_refused_naming_why_and_the_way_out(
    lam: Any,
) -> None:
    client, stubber = lam
    _alias(stubber, "3", {"4": 0.1})
    _configuration(stubber, "$LATEST", "PublishedVersions")
    _configuration(stubber, "3", "None")
    _configuration(stubber, "4", "PublishedVersions")
    # no put_provisioned_concurrency_config is stubbed: the Stubber fails the test if it is called
    with pytest.raises(ops.SnapStartIsOn) as refused:
        ops.scale_serving(_LambdaOnly(client), 2)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "pricepipe-api has SnapStart on ($LATEST, 4)" in message
    assert "does not support provisioned concurrency on a SnapStart function" in message
    assert "-c pricepipe:snapStart=false -c pricepipe:provisionedConcurrency=true" in message


def test_given_snapstart_off_everywhere_when_scaling_then_provisioned_concurrency_is_put_on_live(lam: Any) -> None:
    client, stubber = lam
    clock = FakeClock()
    _alias(stubber, "3")
    _configuration(stubber, "$LATEST", "None")
    _configuration(stubber, "3", "None")
    stubber.add_response(
        "put_provisioned_concurrency_config",
        {"RequestedProvisionedConcurrentExecutions": 2, "Status": "IN_PROGRESS"},
        {"FunctionName": FUNCTION, "Qualifier": "live", "ProvisionedConcurrentExecutions": 2},
    )
    _answer(stubber, "READY", AllocatedProvisionedConcurrentExecutions=2)
    config = ops.scale_serving(_LambdaOnly(client), 2, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert config["Status"] == "READY"


def test_given_snapstart_on_when_removing_provisioned_concurrency_then_it_is_not_refused(lam: Any) -> None:
    client, stubber = lam
    stubber.add_response("delete_provisioned_concurrency_config", {}, {"FunctionName": FUNCTION, "Qualifier": "live"})
    assert ops.scale_serving(_LambdaOnly(client), 0) == {"Status": "REMOVED"}  # type: ignore[arg-type]
