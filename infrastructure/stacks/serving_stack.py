"""Serving: the prediction API behind API Gateway, its live alias and the prediction log.

Reads top to bottom like a request: layers (dependencies, the shared package) -> the function, its
bootstrap version and the ``live`` alias -> API Gateway (a Cognito authorizer on OAuth2 scopes, API
keys in a usage plan, throttling, access logs, a WAF web ACL) -> the prediction log, from the
function's log group to the prediction-writer.

A stack of its own, after the pipeline stack: the serving path changes on its own rhythm and its
blast radius is the public API, apart from the batch flows. Everything the pipeline stack's promotion
functions need of this stack is named, not referenced (function ``pricepipe-api``, alias ``live``,
layers by :mod:`~infrastructure.stacks.layer_names`), so there is no dependency back onto the
pipeline stack.

**One owner of the live alias: the promotion state machine.** ``cdk deploy`` changes the function's
code and configuration ($LATEST) and never moves traffic: the template's alias is created once,
on a bootstrap version published with the function (no model: the API answers 503 "no model
deployed yet"), and its properties never change afterwards. CloudFormation updates a resource only
when its properties in the submitted template differ from the stack's current template ("Update
behaviors of stack resources", AWS CloudFormation User Guide), so a deploy leaves the alias where
the promotion flow put it; :data:`LIVE_ALIAS_PROPERTIES` pins them and the infrastructure tests keep
them pinned (changing them would let CloudFormation set ``FunctionVersion`` back to the bootstrap
version and drop the routing weights, AWS::Lambda::Alias's update behaviour for both being "No
interruption": an in-place UpdateAlias). The model is not in the template either: the promotion flow
puts the champion's model layer on $LATEST and publishes the version itself
(``pricepipe.promotion.deployer.publish_function_version``, UpdateFunctionConfiguration then
PublishVersion), describing it ``model <name>@<version>``, so which model a version carries never
rests on a value CloudFormation resolved at deploy time.

New code reaches live traffic by a **code rollout** started after the deploy (``pipectl rollout``):
an execution of the same promotion state machine with ``kind: code``, which publishes today's code
with the champion's model and canaries it against the serving version, with the same health checks
and ``model_registry.deployments`` rows as a model promotion. A rollout (or promotion) while another
one runs is refused, naming the running one (the ``model_registry.promotions`` lock). A deploy while
a canary bakes moves nothing: versions are immutable, and a promotion step publishing at that moment
is refused by Lambda's revision check instead of publishing a mix of the two.

**SnapStart** (``pricepipe:snapStart``, on by default in prod): every version published from $LATEST,
the bootstrap version and each one the promotion flow publishes, is initialised once and snapshotted,
and new containers resume from that snapshot (``SnapStart: {ApplyOn: PublishedVersions}``; AWS Lambda
Developer Guide, "Improving startup performance with Lambda SnapStart"). AWS does not combine it with
provisioned concurrency, which ``pipectl scale-serving`` sets on the live alias: the stage's config
(:class:`~infrastructure.stacks.config.DeployConfig`) chooses one, and scale-serving refuses while
SnapStart is on.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import ArnFormat, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_logs_destinations as log_destinations
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from infrastructure import catalog, nag
from infrastructure.layers import requirements_layer_code
from infrastructure.stacks import layer_names
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.data_access import attach_data_access
from infrastructure.stacks.data_stack import DataStack
from infrastructure.stacks.pipeline_function import RUNTIMES, PipelineFunction
from infrastructure.stacks.pipeline_stack import REQUIREMENTS_DIR, PipelineStack, function_code
from pricepipe.serving import docs

SERVING_REQUIREMENTS = REQUIREMENTS_DIR / "serving-deps.txt"
API_NAME = f"{catalog.PROJECT}-api"  # the REST API's name: the ApiName dimension of its metrics
API_STAGE = "v1"  # the stage: the URL prefix and the Stage dimension
# Open without a token or an API key, so the interactive docs work in a browser (which sends neither):
# the Swagger page, the OpenAPI document it loads, its OAuth2 redirect page and Swagger UI's own
# files, which the API serves (pricepipe.serving.docs). They describe the API and run nothing; the
# stage's throttling still applies to them.
PUBLIC_DOC_PATHS = docs.PUBLIC_PATHS
# Everything the template ever says about the live alias, fixed for the stack's life (see the module
# docstring): the promotion flow owns FunctionVersion and RoutingConfig after creation.
LIVE_ALIAS_PROPERTIES = ("FunctionName", "FunctionVersion", "Name")
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
    """The API function (no VPC: it needs no database), its live alias, API Gateway, prediction log."""

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
        """Dependencies (no pandas, pyarrow, psycopg or MLflow: DESIGN §5) and the shared package; the model
        layer is the promotion flow's to attach (layer_names.SERVING_FUNCTION_LAYERS lists all three)."""
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

    # -- function, version, alias ------------------------------------------------------------------

    def _function(self, data: DataStack) -> None:
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
            layers=[
                {layer_names.SERVING: self.serving_layer, layer_names.PACKAGE: self.package_layer}[name]
                for name in catalog.function_layers(spec)
            ],
            environment=environment,
            log_retention=self.config.log_retention,
            # The promotion flow publishes a version per model (and per code rollout): with SnapStart each
            # is initialised once, model loaded, and restored from its snapshot at every cold start after.
            # What init leaves in the snapshot was checked for uniqueness (functions/api/app.py, "SnapStart").
            snap_start=self.config.snap_start,
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
        # Published once, when the stack is created, and never replaced: its properties never change
        # (an AWS::Lambda::Version is replaced, i.e. published anew, only when they do).
        self.bootstrap_version = lambda_.Version(
            self,
            "BootstrapVersion",
            lambda_=self.api_function.function,
            description=catalog.BOOTSTRAP_VERSION_DESCRIPTION,
        )
        self.alias = lambda_.Alias(self, "Live", alias_name=catalog.LIVE_ALIAS, version=self.bootstrap_version)

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
        authorizer = self._clients()
        # Every method but the docs needs an access token with the path's scope (catalog.required_scopes)
        # and an API key: the token authorizes, the key only names the client's usage plan (API Gateway
        # developer guide, "Usage plans and API keys": do not rely on API keys for authorization).
        protected = {"/": self.api.root, "/{proxy+}": self.api.root.add_resource("{proxy+}")}
        protected |= {path: self.api.root.resource_for_path(path) for path in catalog.ADMIN_PATHS}
        for path, resource in protected.items():
            resource.add_method(
                "ANY",
                integration,
                api_key_required=True,
                authorizer=authorizer,
                authorization_type=apigw.AuthorizationType.COGNITO,
                authorization_scopes=list(catalog.required_scopes(path)),
            )
        for path in PUBLIC_DOC_PATHS:
            resource = self.api.root.resource_for_path(path)
            method = resource.add_method("GET", integration, api_key_required=False)
            for rule in ("APIG4", "COG4"):  # these three methods only: every other one has the authorizer
                nag.acknowledge(
                    method,
                    rule,
                    f"GET {path} is open on purpose, so the interactive docs work in a browser: it describes the API "
                    "and runs nothing; every other method needs a Cognito access token with its scope.",
                )
        self._web_acl()

        plan = self.api.add_usage_plan(
            "UsagePlan",
            name=catalog.API_USAGE_PLAN,
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

    def _clients(self) -> apigw.CognitoUserPoolsAuthorizer:
        """OAuth2 for machine callers: a Cognito user pool nobody signs in to, its resource server with
        the API's scopes (catalog.API_SCOPES), the token endpoint's domain and a first app client using
        the client-credentials grant (``pipectl client create`` adds more); the authorizer checks the
        access tokens it issues."""
        config = self.config
        self.user_pool = cognito.UserPool(
            self,
            "ApiClients",
            user_pool_name=catalog.API_CLIENTS_POOL,
            self_sign_up_enabled=False,  # clients are app clients, made by an operator
            sign_in_aliases=cognito.SignInAliases(username=True),
            password_policy=cognito.PasswordPolicy(
                min_length=14, require_lowercase=True, require_uppercase=True, require_digits=True, require_symbols=True
            ),
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            account_recovery=cognito.AccountRecovery.NONE,
            deletion_protection=config.retain_data,
            removal_policy=RemovalPolicy.RETAIN if config.retain_data else RemovalPolicy.DESTROY,
        )
        nag.acknowledge(
            self.user_pool,
            "COG8",
            "Essentials, not Plus: no user signs in to this pool (machine clients use the client-credentials grant "
            "with an app client secret), and the Plus plan's threat protection judges user sign-ins and passwords.",
        )
        scopes = [cognito.ResourceServerScope(scope_name=n, scope_description=d) for n, d in catalog.API_SCOPES.items()]
        server = self.user_pool.add_resource_server("Api", identifier=catalog.API_RESOURCE_SERVER, scopes=scopes)
        domain = self.user_pool.add_domain(
            "TokenDomain",
            cognito_domain=cognito.CognitoDomainOptions(
                domain_prefix=f"{catalog.PROJECT}-{config.stage}-{self.account}"
            ),
        )
        self.app_client = self.user_pool.add_client(
            "DefaultClient",
            user_pool_client_name=f"{API_NAME}-default",
            generate_secret=True,
            o_auth=cognito.OAuthSettings(
                flows=cognito.OAuthFlows(client_credentials=True),
                scopes=[cognito.OAuthScope.resource_server(server, scope) for scope in scopes],
            ),
            access_token_validity=Duration.hours(1),
            enable_token_revocation=True,
            prevent_user_existence_errors=True,
        )
        # No user sign-in flow: CloudFormation's default (ExplicitAuthFlows omitted) allows SRP and custom
        # auth; refresh alone is the least Cognito takes, and the client-credentials grant issues no refresh token.
        client = self.app_client.node.default_child
        assert isinstance(client, cognito.CfnUserPoolClient)
        client.explicit_auth_flows = ["ALLOW_REFRESH_TOKEN_AUTH"]
        CfnOutput(self, "UserPoolId", value=self.user_pool.user_pool_id, description="The API clients' user pool")
        CfnOutput(self, "TokenUrl", value=f"{domain.base_url()}/oauth2/token", description="OAuth2 token endpoint")
        CfnOutput(
            self,
            "DefaultClientId",
            value=self.app_client.user_pool_client_id,
            description="aws cognito-idp describe-user-pool-client reveals its secret",
        )
        return apigw.CognitoUserPoolsAuthorizer(
            self, "ClientAuthorizer", authorizer_name=f"{API_NAME}-clients", cognito_user_pools=[self.user_pool]
        )

    def _web_acl(self) -> None:
        """AWS WAF on the stage (config.api_waf): AWS's common and known-bad-inputs rule sets and a
        rate limit per client IP, in front of the authorizer and the usage plan."""
        config = self.config
        if not config.api_waf:
            nag.acknowledge(
                self.api,
                "APIG3",
                "No WAF web ACL on this stage (pricepipe:apiWaf=false, the default outside prod): every method but "
                "the docs needs a Cognito access token and an API key, and the stage and usage plan throttle.",
            )
            return

        def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
            )

        def managed(name: str, priority: int, counted: tuple[str, ...] = ()) -> wafv2.CfnWebACL.RuleProperty:
            group = wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                vendor_name="AWS",
                name=name,
                rule_action_overrides=[
                    wafv2.CfnWebACL.RuleActionOverrideProperty(
                        name=rule, action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={})
                    )
                    for rule in counted
                ]
                or None,
            )
            return wafv2.CfnWebACL.RuleProperty(
                name=name,
                priority=priority,
                statement=wafv2.CfnWebACL.StatementProperty(managed_rule_group_statement=group),
                override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                visibility_config=visibility(name),
            )

        rate = wafv2.CfnWebACL.RuleProperty(
            name="RatePerClientIp",
            priority=2,
            statement=wafv2.CfnWebACL.StatementProperty(
                rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                    limit=config.api_waf_rate_per_5_min, aggregate_key_type="IP", evaluation_window_sec=300
                )
            ),
            action=wafv2.CfnWebACL.RuleActionProperty(block={}),
            visibility_config=visibility("RatePerClientIp"),
        )
        acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            name=f"{API_NAME}-acl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=visibility(f"{API_NAME}-acl"),
            rules=[
                # SizeRestrictions_BODY blocks bodies over 8 KB: a /predict batch (PRICEPIPE_MAX_BATCH_ROWS rows)
                # is larger by design, and the API itself answers 413 past its limit; the rule only counts.
                managed("AWSManagedRulesCommonRuleSet", 0, counted=("SizeRestrictions_BODY",)),
                managed("AWSManagedRulesKnownBadInputsRuleSet", 1),
                rate,
            ],
        )
        wafv2.CfnWebACLAssociation(
            self, "WebAclAssociation", resource_arn=self.api.deployment_stage.stage_arn, web_acl_arn=acl.attr_arn
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
