"""Publishing a serving version under SnapStart: no alias may route to it before it is Active.

A SnapStart version stays Pending while Lambda initialises it and takes its snapshot, and a Pending
function's invocations fail (AWS Lambda Developer Guide, "Lambda function states", "Activating and
managing Lambda SnapStart"). moto publishes every version Active, so AWS's documented answers come
from botocore's Stubber.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from pricepipe.errors import DeploymentError
from pricepipe.promotion import deployer
from pricepipe.serving import snapshot

FUNCTION = "pricepipe-api"
MODEL_LAYER = "arn:aws:lambda:eu-west-1:123456789012:layer:pricepipe-model:4"
DEPS_LAYER = "arn:aws:lambda:eu-west-1:123456789012:layer:pricepipe-serving:2"
FUNCTION_ARN = f"arn:aws:lambda:eu-west-1:123456789012:function:{FUNCTION}"


def _latest(stubber: Stubber, layers: list[str], revision: str) -> None:
    stubber.add_response(
        "get_function_configuration",
        {
            "FunctionName": FUNCTION,
            "RevisionId": revision,
            "LastUpdateStatus": "Successful",
            "Layers": [{"Arn": arn} for arn in layers],
        },
        {"FunctionName": FUNCTION},
    )


def _published_then(stubber: Stubber, *states: tuple[str, dict[str, str]]) -> None:
    layers = [DEPS_LAYER, MODEL_LAYER]
    _latest(stubber, [DEPS_LAYER], "r1")
    stubber.add_response(
        "update_function_configuration",
        {"FunctionName": FUNCTION},
        {"FunctionName": FUNCTION, "Layers": layers, "RevisionId": "r1"},
    )
    _latest(stubber, layers, "r2")
    stubber.add_response(
        "publish_version",
        {
            "FunctionName": FUNCTION,
            "Version": "5",
            "FunctionArn": f"{FUNCTION_ARN}:5",
            "State": "Pending",
            "Layers": [{"Arn": arn} for arn in layers],
            "SnapStart": {"ApplyOn": "PublishedVersions"},
        },
        {"FunctionName": FUNCTION, "Description": "model price-model@3", "RevisionId": "r2"},
    )
    for state, extra in states:
        stubber.add_response(
            "get_function_configuration",
            {"FunctionName": FUNCTION, "Version": "5", "State": state, **extra},
            {"FunctionName": FUNCTION, "Qualifier": "5"},
        )


def _publish(client: Any) -> deployer.PublishedVersion:
    return deployer.publish_function_version(
        client,
        function=FUNCTION,
        layer_name="pricepipe-model",
        layer_arn=MODEL_LAYER,
        description="model price-model@3",
        timeout_s=60,
    )


def test_given_a_pending_snapstart_version_when_publishing_then_it_returns_once_the_version_is_active(
    lam: tuple[Any, Stubber],
) -> None:
    client, stubber = lam
    _published_then(stubber, ("Pending", {}), ("Active", {}))
    assert _publish(client)["function_version"] == "5"  # and both state reads were made (no pending response)


def test_given_a_snapshot_that_fails_when_publishing_then_the_error_carries_lambdas_reason(
    lam: tuple[Any, Stubber],
) -> None:
    client, stubber = lam
    failed = {"StateReasonCode": "FunctionError", "StateReason": "init raised ContractError"}
    _published_then(stubber, ("Failed", failed))
    with pytest.raises(DeploymentError, match=r"pricepipe-api version 5 failed: FunctionError: init raised"):
        _publish(client)


def test_given_snapstart_switched_on_by_a_deploy_then_an_older_version_is_not_the_same_build() -> None:
    common = {"CodeSha256": "abc", "Layers": [{"Arn": DEPS_LAYER}, {"Arn": MODEL_LAYER}]}
    version = {**common, "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"}}
    latest = {**common, "SnapStart": {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}}
    assert not deployer.same_build(version, latest, "pricepipe-model")
    snapshotted = {**common, "SnapStart": {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}}
    assert deployer.same_build(snapshotted, latest, "pricepipe-model")  # OptimizationStatus is not the build


def test_given_generators_seeded_at_init_when_restored_then_reseed_gives_them_new_state() -> None:
    import random

    import numpy as np

    random.seed(1)
    np.random.seed(1)
    snapshot_draws = (random.random(), float(np.random.random()))
    random.seed(1)
    np.random.seed(1)  # the state every environment restored from one snapshot would share
    snapshot.reseed()
    assert (random.random(), float(np.random.random())) != snapshot_draws
