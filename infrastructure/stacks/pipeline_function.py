"""One catalog function as deployed: the function, its own role, its own log group.

CDK's default role for a function carries the AWS managed policies AWSLambdaBasicExecutionRole and
(in a VPC) AWSLambdaVPCAccessExecutionRole, which allow writing to *any* log group. Here each
function's role may write only to its own log group, and the two kinds of permission that AWS does
not let us scope (ENI management for VPC functions, X-Ray segment uploads) sit in one separate
policy, so that acknowledging their ``Resource::*`` cannot hide a wildcard added anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Annotations, Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infrastructure import catalog, nag
from infrastructure.catalog import LAMBDA_RUNTIME, FunctionSpec

RUNTIMES = {"python3.12": lambda_.Runtime.PYTHON_3_12, "python3.13": lambda_.Runtime.PYTHON_3_13}

VPC_NETWORKING_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)
XRAY_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")


class PipelineFunction(Construct):
    """A :class:`FunctionSpec` deployed with least privilege; grant data access on :attr:`role`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: FunctionSpec,
        code: lambda_.Code,
        layers: Sequence[lambda_.ILayerVersion],
        environment: Mapping[str, str],
        log_retention: logs.RetentionDays,
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: Sequence[ec2.ISecurityGroup] = (),
        snap_start: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        self.spec = spec
        self.log_group = logs.LogGroup(
            self, "Logs", log_group_name=catalog.log_group_name(spec.name), retention=log_retention
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Execution role of {spec.name}",
        )
        self.log_group.grant_write(self.role)

        unscopable = [iam.PolicyStatement(actions=list(XRAY_ACTIONS), resources=["*"])]
        if vpc is not None:
            unscopable.append(iam.PolicyStatement(actions=list(VPC_NETWORKING_ACTIONS), resources=["*"]))
        platform = iam.Policy(self, "PlatformPolicy", statements=unscopable, roles=[self.role])
        nag.acknowledge(
            platform,
            "IAM5",
            "X-Ray PutTraceSegments/PutTelemetryRecords and the EC2 network-interface actions Lambda needs "
            "to attach a function to a VPC do not support resource-level permissions; this policy holds "
            "nothing else.",
            finding="Resource::*",
        )

        self.function = lambda_.Function(
            self,
            "Function",
            function_name=spec.name,
            description=spec.description,
            runtime=RUNTIMES[LAMBDA_RUNTIME],
            # Both layers are built for x86_64 (pip --platform manylinux_*_x86_64).
            architecture=lambda_.Architecture.X86_64,
            handler=spec.handler,
            code=code,
            layers=list(layers),
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_s),
            reserved_concurrent_executions=spec.reserved_concurrency,
            environment=dict(environment),
            role=self.role,
            log_group=self.log_group,
            vpc=vpc,
            vpc_subnets=vpc_subnets if vpc is not None else None,
            security_groups=list(security_groups) if vpc is not None else None,
            # Each published version is initialised once and snapshotted; new execution environments
            # resume from it ("Improving startup performance with Lambda SnapStart", AWS Lambda Developer
            # Guide: python3.12 and later; $LATEST is never snapshotted).
            snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if snap_start else None,
        )
        if snap_start:
            # CDK warns that SnapStart applies to published versions only: the function is served
            # only through versions the promotion flow publishes (and the bootstrap version), never
            # as $LATEST, so the warning is answered by design.
            Annotations.of(self.function).acknowledge_warning(
                "@aws-cdk/aws-lambda:snapStartRequirePublish",
                "served only through published versions (the promotion flow publishes one per model)",
            )
        # Active tracing is set on the L1 because the L2 ``tracing`` prop would add its X-Ray
        # statement to the role's default policy, next to the scoped grants (see module docstring).
        cfn_function = self.function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        cfn_function.tracing_config = lambda_.CfnFunction.TracingConfigProperty(mode="Active")
        # Lambda extracts layers in list order and a later layer's file wins. With the
        # recognizeLayerVersion feature flag the L2 sorts the list by token text (an arbitrary order),
        # so the caller's order (managed pandas layer first, our pinned packages after, the serving
        # function's model last) is set here.
        cfn_function.layers = [layer.layer_version_arn for layer in layers]
        # Lambda checks the ENI permissions when the function is created, so they must exist first.
        self.function.node.add_dependency(platform)
        nag.acknowledge(
            self.function,
            "L1",
            f"{LAMBDA_RUNTIME} is pinned on purpose: the layers are built for CPython "
            f"{LAMBDA_RUNTIME.removeprefix('python')} wheels and bytecode and the AWS SDK for pandas managed layer "
            "is the Python312 build; the runtime moves with infrastructure/catalog.py LAMBDA_RUNTIME.",
        )
