"""What each promotion function may do to the serving function, its alias, layers and SSM parameter.

The table below is read from the code each function runs (functions/promotion/handler.py over
the pricepipe.promotion package and its AWS adapters); every statement names the serving
function (``pricepipe-api``), its ``live`` alias, its layers and the model-layer parameter by their
fixed names, so the pipeline stack grants them without a reference to the serving stack, which is
deployed after it. Nothing here is ``lambda:*``; UpdateAlias is on the live alias only.

Which calls need what:

- ``alias``: ``deployer.alias_state`` (GetAlias) and every weight change or switch (UpdateAlias).
- ``inspect``: ``deployer.version_configuration`` (GetFunctionConfiguration with a version qualifier).
- ``deploy``: ``deployer.deploy_model``: the function's configuration and versions (GetFunctionConfiguration,
  ListVersionsByFunction), a new model layer version (PublishLayerVersion), $LATEST with that layer
  (UpdateFunctionConfiguration, which requires GetLayerVersion on *every* layer in the new list, not
  only the model's) and the version that pins it (PublishVersion).
- ``parameter``: the champion's model layer in SSM, read before a change, written, and deleted again
  when a failed step restores a parameter that did not exist (``promotion.ssm.restore``).
- ``executions``: whether another promotion still runs (``promotion.stepfunctions.execution_status``).
- ``task-tokens``: ``pipectl approve`` / ``reject`` answer the manual strategy's waiting task.
- ``metrics``: the canary's Lambda and API metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infrastructure import catalog, nag
from infrastructure.stacks import layer_names

# function key -> what it may do (see the module docstring). Every one of them also reads the
# database secret (catalog needs_database) and the S3 prefixes of its catalog grants.
PROMOTION_ACCESS: Mapping[str, tuple[str, ...]] = {
    "promotion-prepare": ("alias", "inspect", "executions"),
    "promotion-gate": (),
    "promotion-deploy": ("deploy",),
    "promotion-request-approval": (),
    "promotion-start-canary": ("alias",),
    "promotion-check-canary": ("metrics",),
    "promotion-finalize": ("alias", "parameter"),
    "promotion-abandon": ("alias",),
    # approve/reject (task tokens), rollback (deploys the previous model again when its version is
    # gone, moves the alias and the parameter, refuses while a promotion runs), status (inspects)
    "promotion-command": ("deploy", "alias", "parameter", "executions", "task-tokens"),
}
CAPABILITIES = frozenset({"alias", "inspect", "deploy", "parameter", "executions", "task-tokens", "metrics"})

DEPLOY_FUNCTION_ACTIONS = (
    "lambda:GetFunctionConfiguration",
    "lambda:UpdateFunctionConfiguration",
    "lambda:PublishVersion",
    "lambda:ListVersionsByFunction",
)
ALIAS_ACTIONS = ("lambda:GetAlias", "lambda:UpdateAlias")
PARAMETER_ACTIONS = ("ssm:GetParameter", "ssm:PutParameter", "ssm:DeleteParameter")


@dataclass(frozen=True)
class ServingArns:
    """The serving side's ARNs, built from fixed names in one stack's account and region."""

    function: str  # the unqualified function
    versions: str  # any qualifier of it: function:pricepipe-api:*
    alias: str  # function:pricepipe-api:live
    model_layer: str  # the layer (PublishLayerVersion's resource)
    layer_versions: tuple[str, ...]  # every version of each layer the function carries
    parameter: str  # the champion's model layer parameter
    promotion_executions: str  # executions of the promotion state machine

    @classmethod
    def of(cls, stack: Stack) -> ServingArns:
        function = catalog.function(catalog.SERVING_FUNCTION).name

        def lambda_arn(resource: str, name: str) -> str:
            return stack.format_arn(
                service="lambda", resource=resource, resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
            )

        return cls(
            function=lambda_arn("function", function),
            versions=lambda_arn("function", f"{function}:*"),
            alias=lambda_arn("function", f"{function}:{catalog.LIVE_ALIAS}"),
            model_layer=lambda_arn("layer", layer_names.MODEL),
            layer_versions=tuple(lambda_arn("layer", f"{name}:*") for name in layer_names.SERVING_FUNCTION_LAYERS),
            parameter=stack.format_arn(
                service="ssm", resource="parameter", resource_name=catalog.MODEL_LAYER_PARAMETER.lstrip("/")
            ),
            promotion_executions=stack.format_arn(
                service="states",
                resource="execution",
                resource_name=f"{catalog.state_machine('promotion').name}:*",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            ),
        )


def serving_statements(arns: ServingArns, capabilities: tuple[str, ...]) -> list[iam.PolicyStatement]:
    """The statements that allow ``capabilities`` and nothing else, one Sid per kind of access."""
    unknown = set(capabilities) - CAPABILITIES
    if unknown:
        raise ValueError(f"unknown serving capabilities {sorted(unknown)}: one of {sorted(CAPABILITIES)}")
    wanted = set(capabilities)
    statements: list[iam.PolicyStatement] = []
    if "deploy" in wanted:
        statements += [
            iam.PolicyStatement(
                sid="DeployServingVersions",
                actions=list(DEPLOY_FUNCTION_ACTIONS),
                resources=[arns.function, arns.versions],
            ),
            iam.PolicyStatement(
                sid="PublishModelLayers", actions=["lambda:PublishLayerVersion"], resources=[arns.model_layer]
            ),
            iam.PolicyStatement(
                sid="ReadServingLayers", actions=["lambda:GetLayerVersion"], resources=list(arns.layer_versions)
            ),
        ]
    elif "inspect" in wanted:
        statements.append(
            iam.PolicyStatement(
                sid="InspectServingVersions",
                actions=["lambda:GetFunctionConfiguration"],
                resources=[arns.function, arns.versions],
            )
        )
    if "alias" in wanted:
        statements.append(iam.PolicyStatement(sid="MoveLiveAlias", actions=list(ALIAS_ACTIONS), resources=[arns.alias]))
    if "parameter" in wanted:
        statements.append(
            iam.PolicyStatement(
                sid="RecordChampionModelLayer", actions=list(PARAMETER_ACTIONS), resources=[arns.parameter]
            )
        )
    if "executions" in wanted:
        statements.append(
            iam.PolicyStatement(
                sid="DescribePromotions", actions=["states:DescribeExecution"], resources=[arns.promotion_executions]
            )
        )
    return statements


def unscoped_statements(capabilities: tuple[str, ...]) -> list[iam.PolicyStatement]:
    """The two kinds of access AWS does not let a policy scope: task tokens and metric queries."""
    statements = []
    if "task-tokens" in capabilities:
        statements.append(
            iam.PolicyStatement(
                sid="AnswerApprovals", actions=["states:SendTaskSuccess", "states:SendTaskFailure"], resources=["*"]
            )
        )
    if "metrics" in capabilities:
        statements.append(
            iam.PolicyStatement(sid="ReadCanaryMetrics", actions=["cloudwatch:GetMetricData"], resources=["*"])
        )
    return statements


def attach_serving_access(scope: Construct, role: iam.IRole, key: str) -> list[iam.Policy]:
    """The policies of function ``key`` (a PROMOTION_ACCESS entry) on ``role``, acknowledged for cdk-nag.

    Wildcards that AWS does not let us narrow (``Resource: *``) go into a policy of their own, so that
    acknowledging them cannot hide a wildcard added to the scoped policy.
    """
    capabilities = PROMOTION_ACCESS[key]
    stack = Stack.of(scope)
    arns = ServingArns.of(stack)
    name = catalog.function(key).name
    policies: list[iam.Policy] = []
    scoped = serving_statements(arns, capabilities)
    if scoped:
        policy = iam.Policy(scope, "ServingAccessPolicy", statements=scoped, roles=[role])
        reasons = {
            arns.versions: (
                f"{name} reads the configuration of the serving function's published versions "
                "(pricepipe.promotion.deployer.version_configuration qualifies by version number, known only at run"
                " time); "
                "`:*` is that one function's qualifiers."
            ),
            arns.promotion_executions: (
                f"{name} checks whether another promotion still runs; execution names are generated per run, so "
                "the resource is the executions of the promotion state machine only."
            ),
        }
        layers_reason = (
            f"{name} updates the serving function's layers: UpdateFunctionConfiguration requires "
            "lambda:GetLayerVersion on every layer in the new list; versions are numbered at publish "
            "time, so each of the function's fixed-name layers is granted with all its versions."
        )
        reasons |= dict.fromkeys(arns.layer_versions, layers_reason)
        used = {resource for statement in scoped for resource in statement.resources}
        for arn, reason in reasons.items():
            if arn in used:
                nag.acknowledge(policy, "IAM5", reason, finding=nag.resource_finding(stack, arn))
        policies.append(policy)
    unscoped = unscoped_statements(capabilities)
    if unscoped:
        policy = iam.Policy(scope, "UnscopedServingAccessPolicy", statements=unscoped, roles=[role])
        why = {
            "task-tokens": "states:SendTaskSuccess/SendTaskFailure take a task token, not a resource ARN",
            "metrics": "cloudwatch:GetMetricData supports no resource-level permissions",
        }
        nag.acknowledge(
            policy,
            "IAM5",
            f"{name}: " + "; ".join(why[c] for c in capabilities if c in why) + " (AWS documents Resource *). "
            "This policy holds nothing else.",
            finding="Resource::*",
        )
        policies.append(policy)
    return policies
