"""``pipectl scale-serving`` waits for READY: FAILED and a timeout are errors that say why.

AWS's answers come from botocore's Stubber (the documented response shapes); the e2e test
(tests/e2e/test_operations.py) runs the IN_PROGRESS -> READY path against the local cloud.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from pipectl.commands import ops

FUNCTION = "pricepipe-api"


@pytest.fixture
def lam() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("lambda", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


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
