"""ServingStack: the API function, its live alias and code canary, API Gateway, and the prediction log."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_logs as logs
from aws_cdk.assertions import Template

from infrastructure import catalog
from infrastructure.stacks import PIPELINE_STACK, SERVING_STACK
from infrastructure.stacks.config import (
    DEFAULT_API_QUOTA_PER_DAY,
    DEFAULT_API_THROTTLE_BURST,
    DEFAULT_API_THROTTLE_RATE,
)
from infrastructure.stacks.model_layer import NO_MODEL_DESCRIPTION, NO_MODEL_FILES
from infrastructure.stacks.serving_stack import API_NAME, API_STAGE, PUBLIC_DOC_PATHS
from tests.infrastructure.support import as_list, of_type, statements_of_role

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
API = catalog.function(catalog.SERVING_FUNCTION)
MODEL_LAYER_REFERENCE = f"{{{{resolve:ssm:{catalog.MODEL_LAYER_PARAMETER}}}}}"


def _one(resources: Resources, kind: str) -> tuple[str, dict[str, Any]]:
    (found,) = of_type(resources, kind).items()
    return found


def _api_function(resources: Resources) -> tuple[str, dict[str, Any]]:
    for name, resource in of_type(resources, "AWS::Lambda::Function").items():
        if resource["Properties"].get("FunctionName") == API.name:
            return name, resource
    raise AssertionError(f"no function named {API.name}")


def _method_paths(resources: Resources) -> dict[tuple[str, str], dict[str, Any]]:
    """(HTTP method, resource path) -> method properties, paths rebuilt from the resource tree."""
    parts = {name: r["Properties"] for name, r in of_type(resources, "AWS::ApiGateway::Resource").items()}

    def path(resource_id: dict[str, Any]) -> str:
        if "Fn::GetAtt" in resource_id:
            return ""  # the root resource
        props = parts[resource_id["Ref"]]
        return f"{path(props['ParentId'])}/{props['PathPart']}"

    return {
        (m["Properties"]["HttpMethod"], path(m["Properties"]["ResourceId"]) or "/"): m["Properties"]
        for m in of_type(resources, "AWS::ApiGateway::Method").values()
    }


# -- the function ------------------------------------------------------------------------------------


def test_given_the_api_function_then_it_runs_outside_the_vpc_traced_with_the_catalogs_memory(
    serving_resources: Resources,
) -> None:
    _, function = _api_function(serving_resources)
    props = function["Properties"]
    assert "VpcConfig" not in props, "it needs no database: predictions are logged"
    assert props["MemorySize"] == API.memory_mb
    assert props["Timeout"] == API.timeout_s
    assert props["Handler"] == "app.handler"
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert "PRICEPIPE_DATABASE_SECRET_ARN" not in props["Environment"]["Variables"]


def test_given_the_api_function_then_its_layers_are_the_serving_layer_the_package_and_the_model_from_ssm_last(
    serving_resources: Resources, synthesized: Synthesized
) -> None:
    _, function = _api_function(serving_resources)
    serving, package, model = function["Properties"]["Layers"]
    assert serving_resources[serving["Ref"]]["Properties"]["LayerName"] == "pricepipe-serving"
    reference = package["Fn::GetStackOutput"]
    assert reference["StackName"] == PIPELINE_STACK
    pipeline = synthesized.raw_template(PIPELINE_STACK)
    layer = pipeline["Outputs"][reference["OutputName"]]["Value"]["Ref"]
    assert pipeline["Resources"][layer]["Properties"]["LayerName"] == "pricepipe-package"
    assert pipeline["Resources"][layer]["DeletionPolicy"] == "Retain", "the serving stack may still name it"
    # resolved by CloudFormation at deploy time: whatever model the promotion flow made champion
    assert model == MODEL_LAYER_REFERENCE
    assert not [
        r for r in of_type(serving_resources, "AWS::Lambda::LayerVersion").values() if "pandas" in json.dumps(r)
    ]


def test_given_the_api_function_then_each_version_is_described_as_its_model_layer_is(
    serving_resources: Resources,
) -> None:
    """pricepipe.promotion.deployer.model_of reads a version's model from its description."""
    (version,) = of_type(serving_resources, "AWS::Lambda::Version").values()
    assert version["DeletionPolicy"] == "Retain", "promotions route to, and roll back to, older versions"
    description = version["Properties"]["Description"]["Fn::GetAtt"]
    assert description[1] == "Description"
    reader = serving_resources[description[0]]
    assert reader["Type"] == "Custom::PricePipeModelLayerDescription"
    call = json.dumps(reader["Properties"]["Create"])
    assert "getLayerVersionByArn" in call
    assert "{{resolve:ssm:${Name}}}" in call
    assert catalog.MODEL_LAYER_PARAMETER in call
    assert reader["Properties"]["Update"] == reader["Properties"]["Create"], "read again whenever it changes"


def test_given_the_api_function_then_the_live_alias_points_at_the_stacks_version(serving_resources: Resources) -> None:
    _, alias = _one(serving_resources, "AWS::Lambda::Alias")
    version, _ = _one(serving_resources, "AWS::Lambda::Version")
    assert alias["Properties"]["Name"] == catalog.LIVE_ALIAS
    assert alias["Properties"]["FunctionVersion"] == {"Fn::GetAtt": [version, "Version"]}
    assert "CodeDeployLambdaAliasUpdate" in alias["UpdatePolicy"], "a code deploy moves it through CodeDeploy"


# -- code canary -------------------------------------------------------------------------------------


def test_given_a_code_deploy_then_codedeploy_shifts_10_percent_for_5_minutes_and_rolls_back_on_alarm(
    serving_resources: Resources,
) -> None:
    name, group = _one(serving_resources, "AWS::CodeDeploy::DeploymentGroup")
    props = group["Properties"]
    assert props["DeploymentConfigName"] == "CodeDeployDefault.LambdaCanary10Percent5Minutes"
    assert props["AutoRollbackConfiguration"]["Enabled"] is True
    assert "DEPLOYMENT_STOP_ON_ALARM" in props["AutoRollbackConfiguration"]["Events"]
    assert props["AlarmConfiguration"]["Enabled"] is True
    alarms = {a["Name"]["Ref"] for a in props["AlarmConfiguration"]["Alarms"]}
    by_metric = {serving_resources[a]["Properties"]["MetricName"]: serving_resources[a]["Properties"] for a in alarms}
    assert set(by_metric) == {"5XXError", "Errors", "Duration"}
    assert by_metric["5XXError"]["Dimensions"] == [
        {"Name": "ApiName", "Value": API_NAME},
        {"Name": "Stage", "Value": API_STAGE},
    ]
    function, _ = _api_function(serving_resources)
    for metric in ("Errors", "Duration"):
        dimensions = {d["Name"]: d["Value"] for d in by_metric[metric]["Dimensions"]}
        assert dimensions == {
            "FunctionName": {"Ref": function},
            "Resource": {"Fn::Join": ["", [{"Ref": function}, f":{catalog.LIVE_ALIAS}"]]},
        }, "the alias, not the whole function"
    assert by_metric["Errors"]["Statistic"] == "Sum"
    assert by_metric["Duration"]["ExtendedStatistic"] == "p99"
    (alias_resource,) = of_type(serving_resources, "AWS::Lambda::Alias").values()
    assert alias_resource["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]["DeploymentGroupName"] == {"Ref": name}


# -- API Gateway -------------------------------------------------------------------------------------


def test_given_the_api_then_every_method_requires_an_api_key_except_getting_the_docs(
    serving_resources: Resources,
) -> None:
    methods = _method_paths(serving_resources)
    assert {("ANY", "/"), ("ANY", "/{proxy+}")} <= set(methods)
    open_methods = {key for key, props in methods.items() if not props.get("ApiKeyRequired")}
    assert open_methods == {("GET", path) for path in PUBLIC_DOC_PATHS}
    assert set(PUBLIC_DOC_PATHS) == {"/docs", "/openapi.json", "/docs/oauth2-redirect"}
    alias, _ = _one(serving_resources, "AWS::Lambda::Alias")
    for props in methods.values():
        integration = props["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert {"Ref": alias} in integration["Uri"]["Fn::Join"][1], "every method invokes the live alias"


def test_given_the_api_then_a_usage_plan_throttles_and_caps_each_key_of_the_stage(
    serving_resources: Resources,
) -> None:
    _, plan = _one(serving_resources, "AWS::ApiGateway::UsagePlan")
    props = plan["Properties"]
    assert props["Throttle"] == {"RateLimit": DEFAULT_API_THROTTLE_RATE, "BurstLimit": DEFAULT_API_THROTTLE_BURST}
    assert props["Quota"] == {"Limit": DEFAULT_API_QUOTA_PER_DAY, "Period": "DAY"}
    stage, _ = _one(serving_resources, "AWS::ApiGateway::Stage")
    assert [s["Stage"] for s in props["ApiStages"]] == [{"Ref": stage}]
    key, _ = _one(serving_resources, "AWS::ApiGateway::ApiKey")
    _, link = _one(serving_resources, "AWS::ApiGateway::UsagePlanKey")
    assert link["Properties"]["KeyId"] == {"Ref": key}


def test_given_the_shared_settings_then_the_api_throttling_defaults_are_the_local_gateways() -> None:
    from pricepipe.settings import Settings

    fields = Settings.model_fields
    assert fields["api_throttle_rate"].default == DEFAULT_API_THROTTLE_RATE
    assert fields["api_throttle_burst"].default == DEFAULT_API_THROTTLE_BURST


def test_given_the_stage_then_it_writes_json_access_logs_traces_and_execution_metrics(
    serving_resources: Resources,
) -> None:
    _, stage = _one(serving_resources, "AWS::ApiGateway::Stage")
    props = stage["Properties"]
    assert props["StageName"] == API_STAGE
    assert props["TracingEnabled"] is True
    access = props["AccessLogSetting"]
    fields = json.loads(access["Format"])
    assert {"requestId", "status", "apiKeyId", "responseLatency", "integrationLatency"} <= set(fields)
    (log_group,) = [
        part["Ref"]
        for part in access["DestinationArn"]["Fn::Join"][1]
        if isinstance(part, dict) and not part.get("Ref", "").startswith("AWS::")
    ]
    assert serving_resources[log_group]["Properties"]["RetentionInDays"] == 90
    (settings,) = props["MethodSettings"]
    assert settings["MetricsEnabled"] is True
    assert settings["LoggingLevel"] == "ERROR"
    assert settings["DataTraceEnabled"] is False
    assert settings["ThrottlingRateLimit"] == DEFAULT_API_THROTTLE_RATE
    assert settings["ThrottlingBurstLimit"] == DEFAULT_API_THROTTLE_BURST
    _, api = _one(serving_resources, "AWS::ApiGateway::RestApi")
    assert api["Properties"]["Name"] == API_NAME
    assert api["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}


def test_given_the_serving_stack_then_it_outputs_the_url_the_key_id_never_the_key_and_the_alias(
    synthesized: Synthesized, serving_resources: Resources
) -> None:
    outputs = synthesized.raw_template(SERVING_STACK)["Outputs"]
    assert {"ApiUrl", "ApiKeyId", "LiveAlias", catalog.function_output(API)} <= set(outputs)
    key, _ = _one(serving_resources, "AWS::ApiGateway::ApiKey")
    assert outputs["ApiKeyId"]["Value"] == {"Ref": key}, "the id; the value stays in API Gateway"
    stage, _ = _one(serving_resources, "AWS::ApiGateway::Stage")
    assert outputs["ApiUrl"]["Value"]["Fn::Join"][1][-2:] == [{"Ref": stage}, "/"]
    alias, _ = _one(serving_resources, "AWS::Lambda::Alias")
    assert outputs["LiveAlias"]["Value"] == {"Ref": alias}
    assert not [name for name in outputs if "Export" in outputs[name]]


# -- prediction log ----------------------------------------------------------------------------------


def test_given_the_api_log_group_then_prediction_lines_are_subscribed_to_the_prediction_writer(
    serving_resources: Resources,
) -> None:
    _, function = _api_function(serving_resources)
    log_group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    _, subscription = _one(serving_resources, "AWS::Logs::SubscriptionFilter")
    props = subscription["Properties"]
    assert props["LogGroupName"] == {"Ref": log_group}
    assert props["FilterPattern"] == catalog.PREDICTION_LOG_FILTER
    writer = catalog.function("prediction-writer").name
    assert props["DestinationArn"]["Fn::Join"][1][-1] == f":function:{writer}"
    permission = serving_resources[subscription["DependsOn"][0]]["Properties"]
    assert permission["Principal"] == "logs.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": [log_group, "Arn"]}
    assert permission["FunctionName"] == props["DestinationArn"]


def test_given_the_catalogs_filter_then_it_is_the_marker_as_filter_pattern_all_terms_writes_it() -> None:
    from pricepipe.serving.prediction_log import PREDICTION_LOG_MARKER

    stack = Stack(App(), "Filter")
    assert catalog.PREDICTION_LOG_MARKER == PREDICTION_LOG_MARKER
    rendered = stack.resolve(logs.FilterPattern.all_terms(catalog.PREDICTION_LOG_MARKER).log_pattern_string)
    assert rendered == catalog.PREDICTION_LOG_FILTER


def test_given_the_prediction_writer_then_it_runs_in_the_vpc_and_reads_the_database_secret(
    pipeline_resources: Resources,
) -> None:
    writer = catalog.function("prediction-writer")
    (function,) = [
        r
        for r in of_type(pipeline_resources, "AWS::Lambda::Function").values()
        if r["Properties"].get("FunctionName") == writer.name
    ]
    assert "VpcConfig" in function["Properties"]
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    actions = {a for s in statements_of_role(pipeline_resources, role) for a in as_list(s["Action"])}
    assert "secretsmanager:GetSecretValue" in actions


# -- the model-layer parameter -----------------------------------------------------------------------


def test_given_the_pipeline_stack_then_it_creates_the_model_layer_parameter_once_and_never_overwrites_it(
    pipeline_resources: Resources,
) -> None:
    _, seed = _one(pipeline_resources, "Custom::PricePipeModelLayerParameter")
    props = seed["Properties"]
    create = json.dumps(props["Create"])
    assert "putParameter" in create
    assert '\\"Overwrite\\":false' in create
    assert catalog.MODEL_LAYER_PARAMETER in create
    assert "ParameterAlreadyExists" in create, "a parameter that exists (a champion) is left as it is"
    assert "Update" not in props, "later deploys never touch it"
    (layer_name,) = [
        n
        for n, r in of_type(pipeline_resources, "AWS::Lambda::LayerVersion").items()
        if r["Properties"]["LayerName"] == catalog.MODEL_LAYER
    ]
    assert layer_name in create
    layer = pipeline_resources[layer_name]
    assert layer["DeletionPolicy"] == "Retain", "the parameter may still name it"
    assert layer["Properties"]["Description"] == NO_MODEL_DESCRIPTION
    assert not NO_MODEL_DESCRIPTION.startswith("model "), "promotion.deployer.model_of must read it as no model"


def test_given_the_no_model_layer_then_it_holds_an_empty_model_package_so_the_api_answers_no_model(
    synthesized: Synthesized, pipeline_resources: Resources, tmp_path: Any
) -> None:
    (layer,) = [
        r
        for r in of_type(pipeline_resources, "AWS::Lambda::LayerVersion").values()
        if r["Properties"]["LayerName"] == catalog.MODEL_LAYER
    ]
    root = synthesized.asset_path(layer["Properties"]["Content"]["S3Key"]) / "python"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc")
    assert files == sorted(NO_MODEL_FILES) == ["pricepipe_model/__init__.py"]

    import sys

    from pricepipe.serving.model_layer import load_deployed_model

    sys.path.insert(0, str(root))
    try:
        assert load_deployed_model() is None
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("pricepipe_model", None)


def test_given_the_serving_stack_then_it_is_deployed_after_the_pipeline_stack_that_creates_the_parameter(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.assembly.get_stack_by_name(SERVING_STACK)
    assert PIPELINE_STACK in [d.id for d in stack.dependencies]


def test_given_a_changed_config_then_throttling_follows_the_context() -> None:
    from infrastructure.stacks import DeployConfig

    app = App(context={"pricepipe:apiThrottleRate": "5", "pricepipe:apiThrottleBurst": "7"})
    config = DeployConfig.from_context(app.node)
    assert (config.api_throttle_rate, config.api_throttle_burst) == (5.0, 7)
    with pytest.raises(ValueError, match="apiThrottleRate"):
        DeployConfig(api_throttle_rate=0)
    with pytest.raises(ValueError, match="driftSchedule"):
        DeployConfig(drift_schedule="daily")


def test_given_the_serving_template_then_no_method_uses_an_authorizer_other_than_api_keys(
    serving_template: Template,
) -> None:
    serving_template.all_resources_properties("AWS::ApiGateway::Method", {"AuthorizationType": "NONE"})
