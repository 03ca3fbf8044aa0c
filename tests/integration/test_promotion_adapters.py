"""Promotion's AWS edge against moto in-process: the deployer on Lambda (versions, model layers, alias
weights), and the Step Functions and SSM adapters' answers to what does not exist."""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from pricepipe.errors import DeploymentError
from pricepipe.promotion import cloudwatch, deployer, ssm, stepfunctions
from tests.integration import aws_lambda

REGION, FUNCTION, ALIAS, MODEL_LAYER = aws_lambda.REGION, aws_lambda.FUNCTION, aws_lambda.ALIAS, aws_lambda.MODEL_LAYER
_serving = aws_lambda.serving_version


# -- the deployer on Lambda ------------------------------------------------------------------------------


def test_a_published_version_carries_the_model_layer_last_and_keeps_the_other_layers(lam: Any) -> None:
    served = _serving(lam, "price-model", "3")
    configuration = deployer.version_configuration(lam, FUNCTION, served)
    names = [deployer.layer_name_of(layer["Arn"]) for layer in configuration["Layers"]]
    assert names == ["pricepipe-serving-deps", MODEL_LAYER]
    assert deployer.model_of(configuration.get("Description")) == ("price-model", "3")


def test_publishing_another_model_replaces_the_model_layer_instead_of_adding_one(lam: Any) -> None:
    _serving(lam, "price-model", "3")
    served = _serving(lam, "price-model", "4")
    layers = deployer.version_configuration(lam, FUNCTION, served)["Layers"]
    assert [deployer.layer_name_of(layer["Arn"]) for layer in layers].count(MODEL_LAYER) == 1


def test_the_version_serving_a_model_is_found_again_by_its_description(lam: Any) -> None:
    served = _serving(lam, "price-model", "3")
    _serving(lam, "price-model", "4")
    found = deployer.find_version(lam, FUNCTION, "price-model", "3", MODEL_LAYER)
    assert found is not None and str(found["Version"]) == served
    assert deployer.find_version(lam, FUNCTION, "price-model", "9", MODEL_LAYER) is None


def test_deploying_a_model_that_a_version_with_todays_code_serves_publishes_nothing(lam: Any) -> None:
    served = _serving(lam, "price-model", "3")
    before = deployer.versions(lam, FUNCTION)
    # the artifact is never read: the existing version is reused
    deployed = deployer.deploy_model(
        lam,
        boto3.client("s3", region_name=REGION),
        function=FUNCTION,
        layer_name=MODEL_LAYER,
        artifact_uri="s3://nowhere/model.npz",
        metadata={"model_name": "price-model", "model_version": "3"},
    )
    assert deployed["reused"] is True and deployed["function_version"] == served
    assert deployer.versions(lam, FUNCTION) == before


def test_a_canary_sends_its_share_to_the_new_version_and_the_rest_to_the_stable_one(lam: Any) -> None:
    served = _serving(lam, "price-model", "3")
    state = deployer.set_canary(lam, FUNCTION, ALIAS, stable_version="1", canary_version=served, percent=30)
    assert state["function_version"] == "1" and state["weights"] == {served: 0.3}
    assert deployer.alias_state(lam, FUNCTION, ALIAS) == state


def test_a_switch_sends_all_traffic_to_one_version_and_leaves_no_canary_weight(lam: Any) -> None:
    served = _serving(lam, "price-model", "3")
    deployer.set_canary(lam, FUNCTION, ALIAS, stable_version="1", canary_version=served, percent=30)
    state = deployer.switch(lam, FUNCTION, ALIAS, served)
    assert (state["function_version"], state["weights"]) == (served, {})


def test_restoring_an_alias_puts_back_the_version_and_the_weights_it_had(lam: Any) -> None:
    served = _serving(lam, "price-model", "3")
    snapshot = deployer.set_canary(lam, FUNCTION, ALIAS, stable_version="1", canary_version=served, percent=10)
    deployer.switch(lam, FUNCTION, ALIAS, served)
    restored = deployer.restore_alias(lam, FUNCTION, ALIAS, snapshot)
    assert restored | {"revision_id": None} == snapshot | {"revision_id": None}


@pytest.mark.parametrize("percent", [0, 100])
def test_a_canary_of_none_or_all_of_the_traffic_is_refused(lam: Any, percent: float) -> None:
    served = _serving(lam, "price-model", "3")
    with pytest.raises(DeploymentError, match="between 0 and 100"):
        deployer.set_canary(lam, FUNCTION, ALIAS, stable_version="1", canary_version=served, percent=percent)


def test_a_version_that_does_not_exist_has_no_configuration(lam: Any) -> None:
    assert deployer.existing_version_configuration(lam, FUNCTION, "42") is None
    assert deployer.existing_version_configuration(lam, FUNCTION, "1") is not None


def test_an_artifact_outside_s3_is_refused_before_anything_is_published(aws: None) -> None:
    with pytest.raises(DeploymentError, match="must be in S3"):
        deployer.read_artifact(boto3.client("s3", region_name=REGION), "/tmp/model.npz")


# -- Step Functions ---------------------------------------------------------------------------------------


def test_an_execution_step_functions_does_not_know_is_gone(aws: None) -> None:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = f"arn:aws:states:{REGION}:123456789012:execution:pricepipe-promotion:nobody"
    assert stepfunctions.execution_status(sfn, arn) == stepfunctions.GONE


@pytest.mark.parametrize("code", ["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"])
def test_answering_a_task_that_waits_no_more_says_the_task_is_closed_and_why(code: str) -> None:
    # moto accepts any token, so Step Functions' own answer is played back by botocore's Stubber
    sfn = boto3.client("stepfunctions", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sfn) as stub:
        stub.add_client_error("send_task_failure", service_error_code=code, http_status_code=400)
        with pytest.raises(stepfunctions.TaskClosed) as closed:
            stepfunctions.send_task_failure(sfn, "token", "Rejected", {"rejected_by": "bob"})
    assert closed.value.code == code


def test_any_other_step_functions_error_is_not_mistaken_for_a_closed_task() -> None:
    sfn = boto3.client("stepfunctions", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sfn) as stub:
        stub.add_client_error("send_task_success", service_error_code="ThrottlingException", http_status_code=400)
        with pytest.raises(ClientError, match="ThrottlingException"):
            stepfunctions.send_task_success(sfn, "token", {"approved_by": "alice"})


# -- SSM ------------------------------------------------------------------------------------------------


def test_a_parameter_that_does_not_exist_has_no_value(aws: None) -> None:
    assert ssm.value(boto3.client("ssm", region_name=REGION), "/pricepipe/model-layer") is None


def test_restoring_a_parameter_that_did_not_exist_deletes_it(aws: None) -> None:
    client = boto3.client("ssm", region_name=REGION)
    before = ssm.value(client, "/pricepipe/model-layer")
    ssm.put_model_layer_parameter(client, "/pricepipe/model-layer", "arn:aws:lambda:r:1:layer:pricepipe-model:3")
    ssm.restore(client, "/pricepipe/model-layer", before)
    assert ssm.value(client, "/pricepipe/model-layer") is None


def test_restoring_a_parameter_puts_back_its_value(aws: None) -> None:
    client = boto3.client("ssm", region_name=REGION)
    ssm.put_model_layer_parameter(client, "/pricepipe/model-layer", "arn:aws:lambda:r:1:layer:pricepipe-model:3")
    ssm.put_model_layer_parameter(client, "/pricepipe/model-layer", "arn:aws:lambda:r:1:layer:pricepipe-model:4")
    ssm.restore(client, "/pricepipe/model-layer", "arn:aws:lambda:r:1:layer:pricepipe-model:3")
    assert ssm.value(client, "/pricepipe/model-layer") == "arn:aws:lambda:r:1:layer:pricepipe-model:3"


# -- CloudWatch -----------------------------------------------------------------------------------------


def test_a_version_behind_the_alias_is_measured_on_its_own_metrics_only(aws: None) -> None:
    client = boto3.client("cloudwatch", region_name=REGION)
    now = dt.datetime.now(dt.UTC)

    def put(version: str, metric: str, value: float) -> None:
        dimensions = [
            {"Name": "FunctionName", "Value": FUNCTION},
            {"Name": "Resource", "Value": f"{FUNCTION}:{ALIAS}"},
            {"Name": "ExecutedVersion", "Value": version},
        ]
        client.put_metric_data(
            Namespace=cloudwatch.LAMBDA_NAMESPACE,
            MetricData=[{"MetricName": metric, "Dimensions": dimensions, "Value": value, "Timestamp": now}],
        )

    for _ in range(3):
        put("2", "Invocations", 1)
    put("2", "Errors", 1)
    put("1", "Invocations", 1)
    traffic = cloudwatch.lambda_traffic(
        client, FUNCTION, ALIAS, "2", now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=1)
    )
    assert (traffic["invocations"], traffic["errors"]) == (3.0, 1.0)


def test_a_version_without_requests_has_no_traffic_and_no_latency(aws: None) -> None:
    client = boto3.client("cloudwatch", region_name=REGION)
    now = dt.datetime.now(dt.UTC)
    traffic = cloudwatch.lambda_traffic(client, FUNCTION, ALIAS, "2", now - dt.timedelta(minutes=1), now)
    assert traffic == {"invocations": 0.0, "errors": 0.0, "p99_ms": None}
    errors = cloudwatch.api_server_errors(
        client, "PricePipeline", "ServerErrors", FUNCTION, "2", now - dt.timedelta(minutes=1), now
    )
    assert errors == 0.0
