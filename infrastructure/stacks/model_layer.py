"""The SSM parameter recording the champion's model layer, created once with a "no model" layer version.

The model reaches the serving function as a layer version published by the promotion flow
(:mod:`pricepipe.serving.model_layer`), which attaches it to the function version it publishes; each
function version pins one. The flow also records the champion's layer version ARN in the SSM
parameter ``catalog.MODEL_LAYER_PARAMETER`` (``pricepipe.promotion.ssm``), for operators and tools:
no template reads it, so no deploy depends on it being current (the serving stack's docstring says
why a dynamic reference would be the wrong source).

:class:`ModelLayerSeed` creates the parameter only if it is absent (``PutParameter`` with
``Overwrite: false`` on create, no call on update), pointing at a "no model" layer version:
``python/pricepipe_model/__init__.py`` without ``model.npz``, with which the API answers 503 "no
model deployed yet". Later deploys never touch the parameter. That layer version is retained when
replaced or when the stack is deleted: the parameter may still name it.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from infrastructure import catalog
from infrastructure.layers import files_layer_code
from infrastructure.stacks import layer_names
from infrastructure.stacks.pipeline_function import RUNTIMES

# A layer description, copied into the description of every function version the serving stack
# publishes with it; deliberately not of pricepipe.promotion.deployer's "model <name>@<version>" form, so a
# version carrying it is a version serving no model.
NO_MODEL_DESCRIPTION = "pricepipe: no model deployed yet (pricepipe_model without model.npz)"
NO_MODEL_FILES = {
    "pricepipe_model/__init__.py": (
        b'"""No model deployed yet: the promotion flow replaces this layer with one holding model.npz'
        b' (pricepipe.serving.model_layer)."""\n'
    )
}


def model_layer_parameter_arn(stack: Stack) -> str:
    return stack.format_arn(
        service="ssm", resource="parameter", resource_name=catalog.MODEL_LAYER_PARAMETER.lstrip("/")
    )


class ModelLayerSeed(Construct):
    """The "no model" layer version and the parameter, created once if absent and never overwritten."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        log_retention: logs.RetentionDays,
        delete_with_stack: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.no_model_layer = lambda_.LayerVersion(
            self,
            "NoModelLayer",
            layer_version_name=layer_names.MODEL,
            code=files_layer_code("no-model", NO_MODEL_FILES),
            compatible_runtimes=[RUNTIMES[catalog.LAMBDA_RUNTIME]],
            compatible_architectures=[lambda_.Architecture.X86_64],
            description=NO_MODEL_DESCRIPTION,
            removal_policy=RemovalPolicy.RETAIN,
        )
        parameter_arn = model_layer_parameter_arn(stack)
        log_group = logs.LogGroup(self, "Logs", retention=log_retention)
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Creates {catalog.MODEL_LAYER_PARAMETER} once, if absent",
        )
        log_group.grant_write(role)
        put = cr.AwsSdkCall(
            service="SSM",
            action="putParameter",
            parameters={
                "Name": catalog.MODEL_LAYER_PARAMETER,
                "Value": self.no_model_layer.layer_version_arn,
                "Type": "String",
                "Overwrite": False,
                "Description": "Model layer version of the champion (set by the promotion flow; created empty by cdk)",
            },
            physical_resource_id=cr.PhysicalResourceId.of(catalog.MODEL_LAYER_PARAMETER),
            # the parameter exists (a champion, or an earlier deployment's seed): keep it as it is
            ignore_error_codes_matching="ParameterAlreadyExists",
        )
        actions = ["ssm:PutParameter"]
        # A disposable stage forgets its champion with its database; production keeps the parameter,
        # which outlives the stack like the retained database and model layers it points to.
        delete = None
        if delete_with_stack:
            actions.append("ssm:DeleteParameter")
            delete = cr.AwsSdkCall(
                service="SSM",
                action="deleteParameter",
                parameters={"Name": catalog.MODEL_LAYER_PARAMETER},
                ignore_error_codes_matching="ParameterNotFound",
            )
        self.parameter = cr.AwsCustomResource(
            self,
            "Parameter",
            resource_type="Custom::PricePipeModelLayerParameter",
            on_create=put,
            on_delete=delete,
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [iam.PolicyStatement(actions=actions, resources=[parameter_arn])]
            ),
            role=role,
            log_group=log_group,
            install_latest_aws_sdk=False,
        )
