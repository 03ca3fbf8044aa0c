"""ServingStack: the API function, its live alias (the promotion flow's), API Gateway, and the prediction log."""

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
    DEFAULT_WAF_RATE_PER_5_MIN,
)
from infrastructure.stacks.model_layer import NO_MODEL_DESCRIPTION, NO_MODEL_FILES
from infrastructure.stacks.serving_stack import (
    API_NAME,
    API_STAGE,
    LIVE_ALIAS_PROPERTIES,
    PUBLIC_DOC_PATHS,
)
from tests.infrastructure.support import as_list, of_type, statements_of_role

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
API = catalog.function(catalog.SERVING_FUNCTION)


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


def test_given_the_api_function_then_its_layers_are_the_serving_layer_and_the_package_and_no_model(
    serving_resources: Resources, synthesized: Synthesized
) -> None:
    """The model layer is the promotion flow's to attach: nothing the template resolves decides it."""
    _, function = _api_function(serving_resources)
    serving, package = function["Properties"]["Layers"]
    assert serving_resources[serving["Ref"]]["Properties"]["LayerName"] == "pricepipe-serving"
    reference = package["Fn::GetStackOutput"]
    assert reference["StackName"] == PIPELINE_STACK
    pipeline = synthesized.raw_template(PIPELINE_STACK)
    layer = pipeline["Outputs"][reference["OutputName"]]["Value"]["Ref"]
    assert pipeline["Resources"][layer]["Properties"]["LayerName"] == "pricepipe-package"
    assert pipeline["Resources"][layer]["DeletionPolicy"] == "Retain", "the serving stack may still name it"
    assert not [
        r for r in of_type(serving_resources, "AWS::Lambda::LayerVersion").values() if "pandas" in json.dumps(r)
    ]


def test_given_the_serving_template_then_nothing_in_it_resolves_the_model_at_deploy_time(
    serving_resources: Resources,
) -> None:
    text = json.dumps(serving_resources)
    assert "{{resolve:" not in text, "no dynamic reference: CloudFormation does not re-read one by itself"
    assert catalog.MODEL_LAYER_PARAMETER not in text
    assert not [n for n, r in serving_resources.items() if r["Type"].startswith("Custom::")]


def test_given_the_api_function_then_its_one_version_is_a_bootstrap_serving_no_model(
    serving_resources: Resources,
) -> None:
    """Published once with the function; deployer.model_of reads its description as no model."""
    from pricepipe.promotion import deployer

    (version,) = of_type(serving_resources, "AWS::Lambda::Version").values()
    function, _ = _api_function(serving_resources)
    description = catalog.BOOTSTRAP_VERSION_DESCRIPTION
    assert version["Properties"] == {"FunctionName": {"Ref": function}, "Description": description}
    assert deployer.model_of(description) is None


def test_given_the_live_alias_then_the_template_never_moves_it_after_creating_it(
    serving_resources: Resources,
) -> None:
    """CloudFormation updates a resource only when its template properties change: these are fixed
    for the stack's life, so a deploy leaves FunctionVersion and the weights to the promotion flow."""
    _, alias = _one(serving_resources, "AWS::Lambda::Alias")
    version, _ = _one(serving_resources, "AWS::Lambda::Version")
    function, _ = _api_function(serving_resources)
    assert alias["Properties"] == {
        "FunctionName": {"Ref": function},
        "FunctionVersion": {"Fn::GetAtt": [version, "Version"]},
        "Name": catalog.LIVE_ALIAS,
    }
    assert tuple(sorted(alias["Properties"])) == LIVE_ALIAS_PROPERTIES
    assert "UpdatePolicy" not in alias, "no CodeDeploy: it would be a second owner of the alias"
    assert not of_type(serving_resources, "AWS::CodeDeploy::DeploymentGroup")
    assert not of_type(serving_resources, "AWS::CodeDeploy::Application")


# -- API Gateway -------------------------------------------------------------------------------------


def test_given_the_api_then_every_method_but_the_docs_needs_a_cognito_token_with_its_paths_scope_and_a_key(
    serving_resources: Resources,
) -> None:
    methods = _method_paths(serving_resources)
    protected = {("ANY", "/"), ("ANY", "/{proxy+}"), ("ANY", "/model-info"), ("ANY", "/metrics")}
    assert set(methods) == protected | {("GET", path) for path in PUBLIC_DOC_PATHS}
    assert set(PUBLIC_DOC_PATHS) == {
        "/docs",
        "/openapi.json",
        "/docs/oauth2-redirect",
        "/docs/swagger-ui-bundle.js",  # Swagger UI's files, served by the API itself (offline docs)
        "/docs/swagger-ui.css",
    }
    authorizer, props = _one(serving_resources, "AWS::ApiGateway::Authorizer")
    assert props["Properties"]["Type"] == "COGNITO_USER_POOLS"
    pool, _ = _one(serving_resources, "AWS::Cognito::UserPool")
    assert props["Properties"]["ProviderARNs"] == [{"Fn::GetAtt": [pool, "Arn"]}]
    for (verb, path), method in methods.items():
        if (verb, path) in protected:
            assert method["ApiKeyRequired"] is True, "the key names the usage plan"
            assert method["AuthorizationType"] == "COGNITO_USER_POOLS"
            assert method["AuthorizerId"] == {"Ref": authorizer}
            assert method["AuthorizationScopes"] == list(catalog.required_scopes(path))
        else:
            assert method["AuthorizationType"] == "NONE" and not method.get("ApiKeyRequired")
    assert methods[("ANY", "/model-info")]["AuthorizationScopes"] == ["pricepipe-api/admin"]
    assert methods[("ANY", "/{proxy+}")]["AuthorizationScopes"] == ["pricepipe-api/predict"]
    alias, _ = _one(serving_resources, "AWS::Lambda::Alias")
    for props in methods.values():
        integration = props["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert {"Ref": alias} in integration["Uri"]["Fn::Join"][1], "every method invokes the live alias"


def test_given_the_user_pool_then_machine_clients_get_tokens_by_client_credentials_and_nobody_signs_up(
    synthesized: Synthesized, serving_resources: Resources
) -> None:
    _, pool = _one(serving_resources, "AWS::Cognito::UserPool")
    props = pool["Properties"]
    assert props["UserPoolName"] == catalog.API_CLIENTS_POOL
    assert props["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert props["MfaConfiguration"] == "ON" and props["Policies"]["PasswordPolicy"]["MinimumLength"] >= 14
    assert pool["DeletionPolicy"] == "Retain"
    _, server = _one(serving_resources, "AWS::Cognito::UserPoolResourceServer")
    assert server["Properties"]["Identifier"] == catalog.API_RESOURCE_SERVER
    assert {s["ScopeName"] for s in server["Properties"]["Scopes"]} == set(catalog.API_SCOPES)
    _, client = _one(serving_resources, "AWS::Cognito::UserPoolClient")
    client_props = client["Properties"]
    assert client_props["GenerateSecret"] is True
    assert client_props["AllowedOAuthFlows"] == ["client_credentials"]
    assert client_props["AllowedOAuthFlowsUserPoolClient"] is True
    scopes = json.dumps(client_props["AllowedOAuthScopes"])
    assert all(f"/{name}" in scopes for name in catalog.API_SCOPES)
    assert client_props["ExplicitAuthFlows"] == ["ALLOW_REFRESH_TOKEN_AUTH"], "no user sign-in flow"
    _one(serving_resources, "AWS::Cognito::UserPoolDomain")
    outputs = synthesized.raw_template(SERVING_STACK)["Outputs"]
    assert {"UserPoolId", "TokenUrl", "DefaultClientId"} <= set(outputs)
    assert "oauth2/token" in json.dumps(outputs["TokenUrl"]["Value"])
    assert "ClientSecret" not in json.dumps(outputs), "the secret stays in Cognito"


def test_given_prod_then_a_waf_web_acl_with_aws_managed_rules_and_a_rate_limit_per_ip_guards_the_stage(
    serving_resources: Resources,
) -> None:
    _, acl = _one(serving_resources, "AWS::WAFv2::WebACL")
    props = acl["Properties"]
    assert props["Scope"] == "REGIONAL" and props["DefaultAction"] == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in props["Rules"]}
    assert set(rules) == {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet", "RatePerClientIp"}
    common = rules["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert common["VendorName"] == "AWS"
    assert common["RuleActionOverrides"] == [{"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}}]
    rate = rules["RatePerClientIp"]
    assert rate["Action"] == {"Block": {}}
    assert rate["Statement"]["RateBasedStatement"] == {
        "Limit": DEFAULT_WAF_RATE_PER_5_MIN,
        "AggregateKeyType": "IP",
        "EvaluationWindowSec": 300,
    }
    _, association = _one(serving_resources, "AWS::WAFv2::WebACLAssociation")
    stage, _ = _one(serving_resources, "AWS::ApiGateway::Stage")
    assert {"Ref": stage} in association["Properties"]["ResourceArn"]["Fn::Join"][1]
    assert association["Properties"]["WebACLArn"]["Fn::GetAtt"][1] == "Arn"


def test_given_the_stage_context_then_the_waf_is_on_for_prod_and_off_elsewhere_unless_asked() -> None:
    from infrastructure.stacks import DeployConfig

    def config(**context: str) -> DeployConfig:
        return DeployConfig.from_context(App(context={f"pricepipe:{k}": v for k, v in context.items()}).node)

    assert config().api_waf is True
    assert config(stage="dev").api_waf is False and config(stage="test").api_waf is False
    assert config(stage="dev", apiWaf="true").api_waf is True
    assert config(apiWaf="false").api_waf is False
    assert config(apiWafRatePer5Min="500").api_waf_rate_per_5_min == 500
    with pytest.raises(ValueError, match="apiWafRatePer5Min"):
        DeployConfig(api_waf_rate_per_5_min=5)


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


# -- SnapStart or provisioned concurrency: one choice per stage ---------------------------------------


def test_given_the_prod_stage_then_the_api_function_snapshots_its_published_versions(
    serving_resources: Resources, pipeline_resources: Resources
) -> None:
    _, function = _api_function(serving_resources)
    props = function["Properties"]
    assert props["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    # what SnapStart requires of the function (AWS Lambda Developer Guide, "Improving startup
    # performance with Lambda SnapStart"): python3.12 or later, no EFS, at most 512 MB of /tmp
    assert props["Runtime"] in ("python3.12", "python3.13")
    assert "FileSystemConfigs" not in props
    assert props.get("EphemeralStorage", {"Size": 512})["Size"] <= 512
    # only the API: the batch flows' functions are invoked as $LATEST and gain nothing from a snapshot
    others = of_type(pipeline_resources, "AWS::Lambda::Function").values()
    assert not [f for f in others if "SnapStart" in f["Properties"]]


def test_given_the_stages_then_snapstart_is_prods_default_and_provisioned_concurrency_turns_it_off() -> None:
    from infrastructure.stacks import DeployConfig

    def config(**context: str) -> DeployConfig:
        return DeployConfig.from_context(App(context={f"pricepipe:{k}": v for k, v in context.items()}).node)

    assert config().snap_start and not config().provisioned_concurrency  # prod is the default stage
    assert not config(stage="dev").snap_start and not config(stage="test").snap_start
    assert config(stage="dev", snapStart="true").snap_start
    chosen = config(provisionedConcurrency="true")
    assert (chosen.snap_start, chosen.provisioned_concurrency) == (False, True)


def test_given_snapstart_and_provisioned_concurrency_together_then_the_config_is_refused_saying_why() -> None:
    from infrastructure.stacks import DeployConfig

    app = App(context={"pricepipe:snapStart": "true", "pricepipe:provisionedConcurrency": "true"})
    with pytest.raises(ValueError, match=r"cannot both be true: AWS Lambda does not support provisioned concurrency"):
        DeployConfig.from_context(app.node)
    with pytest.raises(ValueError, match=r"Choose one for this stage"):
        DeployConfig(stage="dev", snap_start=True, provisioned_concurrency=True)


def test_given_snapstart_off_then_the_function_has_no_snapstart_property() -> None:
    from aws_cdk import aws_lambda as lambda_

    from infrastructure.stacks.pipeline_function import PipelineFunction

    stack = Stack(App(), "Bare")
    for construct_id, snap_start in (("Off", False), ("On", True)):
        PipelineFunction(
            stack,
            construct_id,
            spec=API,
            code=lambda_.Code.from_inline("def handler(event, context):\n    return None\n"),
            layers=[],
            environment={},
            log_retention=logs.RetentionDays.ONE_DAY,
            snap_start=snap_start,
        )
    functions = Template.from_stack(stack).find_resources("AWS::Lambda::Function")
    snap = {name.split("Function")[0]: f["Properties"].get("SnapStart") for name, f in functions.items()}
    assert snap == {"Off": None, "On": {"ApplyOn": "PublishedVersions"}}
