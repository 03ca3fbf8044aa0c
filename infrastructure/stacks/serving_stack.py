"""Serving: the prediction API behind API Gateway, its live alias, code canaries and the prediction log.

Reads top to bottom like a request: layers (dependencies, the shared package, the model) -> the
function, a version and the ``live`` alias -> CodeDeploy, which moves the alias to a new code
version by a canary and rolls back on alarms -> API Gateway (API keys, usage plan, throttling,
access logs) -> the prediction log, from the function's log group to the prediction-writer.

A stack of its own, after the pipeline stack, for one hard reason and one soft one:

- the function's model layer is a CloudFormation dynamic reference to the SSM parameter
  ``catalog.MODEL_LAYER_PARAMETER``, which CloudFormation resolves when it creates the change set;
  the parameter is created (once, if absent) by the pipeline stack, so it exists by then
  (:mod:`infrastructure.stacks.model_layer`);
- the serving path changes on its own rhythm (code canaries) and its blast radius is the public
  API, apart from the batch flows.

Everything the pipeline stack's promotion functions need of this stack is named, not referenced
(function ``pricepipe-api``, alias ``live``, layers by :mod:`~infrastructure.stacks.layer_names`),
so there is no dependency back onto the pipeline stack.

**Two ways the live alias moves, and who owns each.** A *code* change goes through ``cdk deploy``:
CloudFormation publishes a version of the new code carrying the champion's model layer (the SSM
parameter) and CodeDeploy shifts the alias to it: 10 % for 5 minutes, then all, rolled back
automatically on the alarms below. A *model* change goes through the promotion flow (manual, auto,
canary or blue-green), which publishes versions and moves the alias itself. ``cdk deploy`` sets the
alias to the stack's version whenever that version changes, whatever the promotion flow did since
the last deploy; since that version carries the champion's model, the end state is right, but do not
deploy code while a promotion runs (CodeDeploy refuses an alias that carries canary weights, and a
promotion that finds the alias changed stops).
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import ArnFormat, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_logs_destinations as log_destinations
from aws_cdk import custom_resources as cr
from constructs import Construct

from infrastructure import catalog, nag
from infrastructure.layers import requirements_layer_code
from infrastructure.stacks import layer_names
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.data_access import attach_data_access
from infrastructure.stacks.data_stack import DataStack
from infrastructure.stacks.model_layer import embeddable_model_layer_reference, model_layer_reference
from infrastructure.stacks.pipeline_function import RUNTIMES, PipelineFunction
from infrastructure.stacks.pipeline_stack import REQUIREMENTS_DIR, PipelineStack, function_code

SERVING_REQUIREMENTS = REQUIREMENTS_DIR / "serving-deps.txt"
API_NAME = f"{catalog.PROJECT}-api"  # the REST API's name: the ApiName dimension of its metrics
API_STAGE = "v1"  # the stage: the URL prefix and the Stage dimension
# Open without an API key, so the interactive docs work in a browser (which sends no x-api-key
# header): FastAPI's Swagger page, the OpenAPI document it loads, and its OAuth2 redirect page.
# They describe the API and run nothing; the stage's throttling still applies to them.
PUBLIC_DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")
# CodeDeploy's alarms, judged per minute while a code canary bakes (CANARY_10_PERCENT_5_MINUTES).
ROLLBACK_ERRORS_PER_MINUTE = 5  # function errors, or 5xx answers of the API
ROLLBACK_P99_MS = 1000  # the live alias's p99 Duration (warm requests take well under a millisecond)
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "extendedRequestId": "$context.extendedRequestId",
    "requestTime": "$context.requestTime",
    "sourceIp": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "apiKeyId": "$context.identity.apiKeyId",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "path": "$context.path",
    "protocol": "$context.protocol",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "integrationStatus": "$context.integrationStatus",
    "errorMessage": "$context.error.message",
    "xrayTraceId": "$context.xrayTraceId",
}


class ServingStack(Stack):
    """The API function (no VPC: it needs no database), its alias and canary, API Gateway, prediction log."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data: DataStack,
        pipeline: PipelineStack,
        config: DeployConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.spec = catalog.function(catalog.SERVING_FUNCTION)
        self._layers(pipeline)
        self._function(data)
        self._code_deploys()
        self._api()
        self._prediction_log()
        CfnOutput(self, catalog.function_output(self.spec), value=self.api_function.function.function_name)
        CfnOutput(self, "LiveAlias", value=self.alias.function_arn, description="The alias API Gateway invokes")
        CfnOutput(self, "ApiUrl", value=self.api.url, description="Base URL of the prediction API")
        CfnOutput(
            self,
            "ApiKeyId",
            value=self.api_key.key_id,
            description="aws apigateway get-api-key --include-value --api-key <id> reveals the key",
        )

    # -- layers ------------------------------------------------------------------------------------

    def _layers(self, pipeline: PipelineStack) -> None:
        """Dependencies (no pandas, pyarrow, psycopg or MLflow: DESIGN §5), the shared package, the model."""
        self.serving_layer = lambda_.LayerVersion(
            self,
            "ServingLayer",
            layer_version_name=layer_names.SERVING,
            code=requirements_layer_code(SERVING_REQUIREMENTS),
            compatible_runtimes=[RUNTIMES[catalog.LAMBDA_RUNTIME]],
            compatible_architectures=[lambda_.Architecture.X86_64],
            description=f"Dependencies of the prediction API ({SERVING_REQUIREMENTS.name})",
        )
        self.package_layer = pipeline.package_layer
        # The champion's model, as the SSM parameter names it when this stack is deployed.
        self.model_layer_arn = model_layer_reference()
        self.model_layer = lambda_.LayerVersion.from_layer_version_arn(self, "ModelLayer", self.model_layer_arn)

    # -- function, version, alias ------------------------------------------------------------------

    def _function(self, data: DataStack) -> None:
        # Each published version is described as its model layer is ("model <name>@<version>", or "no
        # model"): the promotion flow finds the model a version serves by that description
        # (pricepipe.promotion.deployer.model_of), and the layer behind the parameter is known only at deploy time.
        custom_resource_logs = logs.LogGroup(self, "CustomResourceLogs", retention=self.config.log_retention)
        custom_resource_role = iam.Role(
            self,
            "CustomResourceRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Reads the description of the model layer version the serving function carries",
        )
        custom_resource_logs.grant_write(custom_resource_role)
        layer_description = cr.AwsCustomResource(
            self,
            "ModelLayerDescription",
            resource_type="Custom::PricePipeModelLayerDescription",
            on_update=cr.AwsSdkCall(
                service="Lambda",
                action="getLayerVersionByArn",
                parameters={"Arn": embeddable_model_layer_reference()},
                physical_resource_id=cr.PhysicalResourceId.of(catalog.MODEL_LAYER_PARAMETER),
                output_paths=["Description"],
            ),
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [iam.PolicyStatement(actions=["lambda:GetLayerVersion"], resources=[self._model_layer_versions()])]
            ),
            role=custom_resource_role,
            log_group=custom_resource_logs,
            install_latest_aws_sdk=False,
        )
        self._acknowledge_model_layer_versions(layer_description)

        spec = self.spec
        environment = catalog.function_environment(
            spec,
            landing_bucket=data.bucket_names.landing,
            lake_bucket=data.bucket_names.lake,
            artifacts_bucket=data.bucket_names.artifacts,
            database_secret_arn="",  # the API has no database (catalog needs_database=False)
            contract=self.config.contract,
            stage=self.config.stage,
        )
        self.api_function = PipelineFunction(
            self,
            catalog.camel(spec.key),
            spec=spec,
            code=function_code(spec),
            layers=[self.serving_layer, self.package_layer, self.model_layer],
            environment=environment,
            log_retention=self.config.log_retention,
            current_version_options=lambda_.VersionOptions(
                description=layer_description.get_response_field("Description"),
                # Promotions route traffic to older versions and roll back to them: keep them all.
                removal_policy=RemovalPolicy.RETAIN,
            ),
        )
        # An S3 contract is read at every cold start (pricepipe.contract): the role must reach that object.
        contract_access = attach_data_access(
            self.api_function,
            self.api_function.role,
            names=data.bucket_names,
            grants=spec.s3,
            contract=self.config.contract,
            who=spec.name,
        )
        if contract_access is not None:
            self.api_function.function.node.add_dependency(contract_access)
        self.version = self.api_function.function.current_version
        self.alias = lambda_.Alias(self, "Live", alias_name=catalog.LIVE_ALIAS, version=self.version)

    def _model_layer_versions(self) -> str:
        return self.format_arn(
            service="lambda",
            resource="layer",
            resource_name=f"{layer_names.MODEL}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def _acknowledge_model_layer_versions(self, resource: cr.AwsCustomResource) -> None:
        nag.acknowledge(
            resource,
            "IAM5",
            "Reads the description of whichever model layer version the SSM parameter names at deploy time; "
            f"versions are numbered when the promotion flow publishes them, so it is {layer_names.MODEL}'s versions.",
            finding=nag.resource_finding(self, self._model_layer_versions()),
        )

    # -- code deploys ------------------------------------------------------------------------------

    def _code_deploys(self) -> None:
        """CodeDeploy moves the alias to a new code version: 10 % for 5 minutes, rolled back on alarm."""
        minute = Duration.minutes(1)
        errors = cloudwatch.Alarm(
            self,
            "LiveAliasErrorsAlarm",
            alarm_description=f"Code canary: function errors behind {catalog.LIVE_ALIAS} (CodeDeploy rolls back)",
            metric=self.alias.metric_errors(period=minute, statistic="Sum"),
            threshold=ROLLBACK_ERRORS_PER_MINUTE,
            evaluation_periods=2,
            datapoints_to_alarm=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        latency = cloudwatch.Alarm(
            self,
            "LiveAliasLatencyAlarm",
            alarm_description=f"Code canary: p99 Duration of {catalog.LIVE_ALIAS} (CodeDeploy rolls back)",
            metric=self.alias.metric_duration(period=minute, statistic="p99"),
            threshold=ROLLBACK_P99_MS,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        server_errors = cloudwatch.Alarm(
            self,
            "ApiServerErrorsAlarm",
            alarm_description="Code canary: 5xx answers of the API (CodeDeploy rolls back)",
            metric=cloudwatch.Metric(
                namespace="AWS/ApiGateway",
                metric_name="5XXError",
                dimensions_map={"ApiName": API_NAME, "Stage": API_STAGE},
                period=minute,
                statistic="Sum",
            ),
            threshold=ROLLBACK_ERRORS_PER_MINUTE,
            evaluation_periods=2,
            datapoints_to_alarm=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.rollback_alarms = [server_errors, errors, latency]
        self.deployment_group = codedeploy.LambdaDeploymentGroup(
            self,
            "CodeCanary",
            alias=self.alias,
            deployment_config=codedeploy.LambdaDeploymentConfig.CANARY_10_PERCENT_5_MINUTES,
            alarms=self.rollback_alarms,
            auto_rollback=codedeploy.AutoRollbackConfig(
                failed_deployment=True, stopped_deployment=True, deployment_in_alarm=True
            ),
        )
        role = self.deployment_group.role
        nag.acknowledge(
            role,
            "IAM4",
            "AWSCodeDeployRoleForLambdaLimited is AWS's policy for CodeDeploy's Lambda deployments: it may "
            "update aliases, invoke hook functions named CodeDeployHook_*, and read alarms; nothing else.",
            finding="Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSCodeDeployRoleForLambdaLimited",
        )

    # -- API Gateway -------------------------------------------------------------------------------

    def _api(self) -> None:
        config = self.config
        access_logs = logs.LogGroup(self, "ApiAccessLogs", retention=config.log_retention)
        self.api = apigw.RestApi(
            self,
            "RestApi",
            rest_api_name=API_NAME,
            description="Price prediction API (FastAPI on Lambda): POST /predict, GET /health, /model-info, /metrics",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            api_key_source_type=apigw.ApiKeySourceType.HEADER,
            cloud_watch_role=config.api_gateway_account_role,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=API_STAGE,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
                tracing_enabled=True,
                metrics_enabled=True,  # per-method execution metrics
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # request bodies are the prediction log's, not the gateway's
                throttling_rate_limit=config.api_throttle_rate,
                throttling_burst_limit=config.api_throttle_burst,
            ),
        )
        # The stage URL is this stack's ApiUrl output; RestApi's own copy of it would be a second one.
        self.api.node.try_remove_child("Endpoint")
        # Every request goes through the live alias: FastAPI routes and validates (a request validator
        # at the gateway would only duplicate the data contract's checks).
        integration = apigw.LambdaIntegration(self.alias, allow_test_invoke=False)
        self.api.root.add_method("ANY", integration, api_key_required=True)
        self.api.root.add_resource("{proxy+}").add_method("ANY", integration, api_key_required=True)
        for path in PUBLIC_DOC_PATHS:
            resource = self.api.root.resource_for_path(path)
            resource.add_method("GET", integration, api_key_required=False)

        plan = self.api.add_usage_plan(
            "UsagePlan",
            name=f"{API_NAME}-default",
            description="Throttling and a daily quota per API key",
            throttle=apigw.ThrottleSettings(rate_limit=config.api_throttle_rate, burst_limit=config.api_throttle_burst),
            quota=apigw.QuotaSettings(limit=config.api_quota_per_day, period=apigw.Period.DAY),
        )
        plan.add_api_stage(stage=self.api.deployment_stage)
        self.api_key = self.api.add_api_key("DefaultApiKey", description="The first client's key (add more per client)")
        plan.add_api_key(self.api_key)

        nag.acknowledge(
            self.api,
            "APIG2",
            "Requests are validated by the API itself: FastAPI checks every body against the data contract's "
            "models and answers 422 naming each bad field, which a gateway validator would only duplicate.",
        )
        nag.acknowledge(
            self.api,
            "APIG3",
            "No WAF web ACL: clients authenticate with API keys and a usage plan throttles and caps each key; "
            "the stage throttles the whole API. A web ACL can be associated with the stage later if needed.",
        )
        nag.acknowledge(
            self.api,
            "APIG4",
            "Clients are identified by API keys with a usage plan (throttling and quota per key), the access "
            f"control chosen for this API; only {', '.join(PUBLIC_DOC_PATHS)} are open, for the docs page.",
        )
        nag.acknowledge(
            self.api,
            "COG4",
            "No Cognito user pool: machine clients use API keys with a usage plan, and there are no end users "
            "to sign in; an authorizer can be added in front of the same alias later.",
        )
        if config.api_gateway_account_role:
            account_role = self.api.node.try_find_child("CloudWatchRole")
            assert account_role is not None
            nag.acknowledge(
                account_role,
                "IAM4",
                "AmazonAPIGatewayPushToCloudWatchLogs is the policy AWS documents for API Gateway's account-wide "
                "logging role (access and execution logs); switch it off with pricepipe:apiGatewayAccountRole=false "
                "where the account already has one.",
                finding="Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs",
            )

    # -- prediction log ----------------------------------------------------------------------------

    def _prediction_log(self) -> None:
        """The API's prediction lines go to the prediction-writer, which loads them into PostgreSQL.

        The writer belongs to the pipeline stack (it is in the VPC, with the database); it is named,
        not referenced, and its invoke permission lives here, next to the log group it trusts.
        """
        writer = catalog.function("prediction-writer")
        writer_arn = self.format_arn(
            service="lambda", resource="function", resource_name=writer.name, arn_format=ArnFormat.COLON_RESOURCE_NAME
        )
        log_group = self.api_function.log_group
        permission = lambda_.CfnPermission(
            self,
            "PredictionLogInvokePermission",
            action="lambda:InvokeFunction",
            function_name=writer_arn,
            principal="logs.amazonaws.com",
            source_arn=log_group.log_group_arn,
            source_account=self.account,
        )
        subscription = logs.SubscriptionFilter(
            self,
            "PredictionLog",
            log_group=log_group,
            filter_name=catalog.PREDICTION_LOG_MARKER,
            filter_pattern=logs.FilterPattern.literal(catalog.PREDICTION_LOG_FILTER),
            destination=log_destinations.LambdaDestination(
                lambda_.Function.from_function_attributes(self, "PredictionWriter", function_arn=writer_arn),
                add_permissions=False,
            ),
        )
        subscription.node.add_dependency(permission)
