"""The pipeline: layers, the catalog's functions, the database migrations and the state machines.

Reads top to bottom like the flow: code and layers -> functions with their data grants -> schema
migration on deploy -> state machines from their ASL files -> what starts them (a daily schedule and
new objects in the landing bucket).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, CfnOutput, CustomResource, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct

from infrastructure import catalog, nag
from infrastructure.layers import PANDAS_LAYER_PROVIDED, RUNTIME_PROVIDED, package_layer_code, requirements_layer_code
from infrastructure.stacks.config import PANDAS_LAYER_ACCOUNT, DeployConfig
from infrastructure.stacks.data_stack import (
    LAKE_PREFIX,
    LANDING_PREFIX,
    MANIFEST_PREFIX,
    QUARANTINE_PREFIX,
    DataStack,
)
from infrastructure.stacks.pipeline_function import RUNTIMES, PipelineFunction

PACKAGE_DIR = catalog.ROOT / "layers" / "pricepipe" / "pricepipe"
DEPS_REQUIREMENTS = catalog.ROOT / "layers" / "requirements" / "pricepipe-deps.txt"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
BUNDLED_CONTRACTS_DIR = PACKAGE_DIR / "contracts"
# AWS publishes the layer per Python version: AWSSDKPandas-Python312 for python3.12.
PANDAS_LAYER_NAME = f"AWSSDKPandas-Python{catalog.LAMBDA_RUNTIME.removeprefix('python').replace('.', '')}"

# What each function does with the buckets, read from its handler (pricepipe.etl and friends).
# Every catalog function must appear here: a new function gets no data access until someone decides
# which it needs. The database secret is granted from FunctionSpec.needs_database.
READ_LANDING = "read-landing"  # list and get landing/*
WRITE_QUARANTINE = "write-quarantine"  # put quarantine/* in the landing bucket
WRITE_LAKE = "write-lake"  # put processed_features/* in the lake
WRITE_MANIFESTS = "write-manifests"  # put manifests/etl/* in the artifacts bucket
FUNCTION_ACCESS: dict[str, frozenset[str]] = {
    "etl-discover": frozenset({READ_LANDING, WRITE_MANIFESTS}),
    "etl-load": frozenset({READ_LANDING, WRITE_QUARANTINE, WRITE_LAKE}),
    "etl-summarize": frozenset(),
    "migrate": frozenset(),
}


def migrations_fingerprint(
    contract: str, migrations_dir: Path = MIGRATIONS_DIR, contracts_dir: Path = BUNDLED_CONTRACTS_DIR
) -> str:
    """Changes when a migration file or the contract changes, so the schema resource re-runs.

    A contract in S3 is identified by its URI only: changing it in place needs a new key (or any
    change of the ``Contract`` property) to re-run the migration.
    """
    digest = hashlib.sha256(contract.encode())
    sources = sorted(migrations_dir.glob("*.sql"))
    bundled = contracts_dir / f"{contract}.yaml"
    if bundled.is_file():
        sources.append(bundled)
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def distributed_map_labels(definition: dict[str, Any]) -> list[str | None]:
    """Labels of every DISTRIBUTED Map state in an ASL definition (None where a map has no label)."""
    labels: list[str | None] = []
    for state in definition.get("States", {}).values():
        if state.get("Type") == "Map":
            processor = state.get("ItemProcessor") or state.get("Iterator") or {}
            if processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
                labels.append(state.get("Label"))
            labels.extend(distributed_map_labels(processor))
        for branch in state.get("Branches", []):
            labels.extend(distributed_map_labels(branch))
    return labels


class PipelineStack(Stack):
    """Functions, migrations, state machines and their triggers, over a :class:`DataStack`."""

    def __init__(
        self, scope: Construct, construct_id: str, *, data: DataStack, config: DeployConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.data = data
        self.config = config
        self._layers()
        self._functions()
        self._migrations()
        self.state_machines = {spec.key: self._state_machine(spec) for spec in catalog.STATE_MACHINES}
        self._etl_triggers(self.state_machines["etl"])

    # -- layers ------------------------------------------------------------------------------------

    def _layers(self) -> None:
        runtime = RUNTIMES[catalog.LAMBDA_RUNTIME]
        self.deps_layer = lambda_.LayerVersion(
            self,
            "DepsLayer",
            code=requirements_layer_code(DEPS_REQUIREMENTS, excluded=RUNTIME_PROVIDED + PANDAS_LAYER_PROVIDED),
            compatible_runtimes=[runtime],
            compatible_architectures=[lambda_.Architecture.X86_64],
            description=f"Third-party dependencies of the pricepipe package ({DEPS_REQUIREMENTS.name})",
        )
        self.package_layer = lambda_.LayerVersion(
            self,
            "PackageLayer",
            code=package_layer_code(PACKAGE_DIR),
            compatible_runtimes=[runtime],
            compatible_architectures=[lambda_.Architecture.X86_64],
            description="The shared pricepipe package: contract, features, ETL, database, storage",
        )
        pandas_arn = self.config.pandas_layer_arn or self.format_arn(
            service="lambda",
            account=PANDAS_LAYER_ACCOUNT,
            resource="layer",
            resource_name=f"{PANDAS_LAYER_NAME}:{self.config.pandas_layer_version}",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.pandas_layer = lambda_.LayerVersion.from_layer_version_arn(self, "PandasLayer", pandas_arn)

    # -- functions ---------------------------------------------------------------------------------

    def _functions(self) -> None:
        data = self.data
        missing = [spec.key for spec in catalog.FUNCTIONS if spec.key not in FUNCTION_ACCESS]
        if missing:
            raise KeyError(f"no data access declared for {', '.join(missing)}: add them to FUNCTION_ACCESS")
        codes: dict[Path, lambda_.Code] = {}
        self.functions: dict[str, PipelineFunction] = {}
        for spec in catalog.FUNCTIONS:
            if spec.code_dir not in codes:
                codes[spec.code_dir] = lambda_.Code.from_asset(
                    str(spec.code_dir), exclude=["__pycache__", "*.pyc", "tests"]
                )
            # Later layers win where paths collide: our pinned dependencies over the managed layer's.
            layers = [self.pandas_layer] if spec.needs_data_layer else []
            layers += [self.deps_layer, self.package_layer]
            environment = catalog.function_environment(
                spec,
                landing_bucket=data.bucket_names.landing,
                lake_bucket=data.bucket_names.lake,
                artifacts_bucket=data.bucket_names.artifacts,
                database_secret_arn=data.database_secret.secret_arn,
                contract=self.config.contract,
                stage=self.config.stage,
            )
            function = PipelineFunction(
                self,
                catalog.camel(spec.key),
                spec=spec,
                code=codes[spec.code_dir],
                layers=layers,
                environment=environment,
                log_retention=self.config.log_retention,
                vpc=data.vpc if spec.needs_database else None,
                vpc_subnets=data.subnets,
                security_groups=[data.database_clients],
            )
            self._grant_data_access(function, FUNCTION_ACCESS[spec.key])
            self.functions[spec.key] = function
            CfnOutput(self, catalog.function_output(spec), value=function.function.function_name)

    def _grant_data_access(self, function: PipelineFunction, access: frozenset[str]) -> None:
        names = self.data.bucket_names
        statements: list[iam.PolicyStatement] = []
        if READ_LANDING in access:
            statements += [
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[self._bucket_arn(names.landing)],
                    conditions={"StringLike": {"s3:prefix": [LANDING_PREFIX, f"{LANDING_PREFIX}*"]}},
                ),
                iam.PolicyStatement(
                    actions=["s3:GetObject"], resources=[self._bucket_arn(names.landing, LANDING_PREFIX)]
                ),
            ]
        if WRITE_QUARANTINE in access:
            statements.append(
                iam.PolicyStatement(
                    actions=["s3:PutObject"], resources=[self._bucket_arn(names.landing, QUARANTINE_PREFIX)]
                )
            )
        if WRITE_LAKE in access:
            statements.append(
                iam.PolicyStatement(actions=["s3:PutObject"], resources=[self._bucket_arn(names.lake, LAKE_PREFIX)])
            )
        if WRITE_MANIFESTS in access:
            statements.append(
                iam.PolicyStatement(
                    actions=["s3:PutObject"], resources=[self._bucket_arn(names.artifacts, MANIFEST_PREFIX)]
                )
            )
        if self.config.contract.startswith("s3://"):
            bucket, _, key = self.config.contract.removeprefix("s3://").partition("/")
            statements.append(
                iam.PolicyStatement(actions=["s3:GetObject"], resources=[f"arn:{self.partition}:s3:::{bucket}/{key}"])
            )
        if function.spec.needs_database:
            self.data.database_secret.grant_read(function.role)
        if not statements:
            return
        policy = iam.Policy(function, "DataAccessPolicy", statements=statements, roles=[function.role])
        function.function.node.add_dependency(policy)
        for statement in statements:
            for resource in statement.resources:
                finding = nag.resource_finding(self, resource)
                if "*" in finding:
                    nag.acknowledge(
                        policy,
                        "IAM5",
                        "Object-key prefix grant: the objects under one prefix of one bucket, which is what "
                        f"{function.spec.name} reads or writes there (pricepipe.settings bucket layout).",
                        finding=finding,
                    )

    def _bucket_arn(self, bucket_name: str, prefix: str | None = None) -> str:
        """A bucket's ARN, or the ARN of every object under ``prefix`` in it."""
        arn = f"arn:{self.partition}:s3:::{bucket_name}"
        return arn if prefix is None else f"{arn}/{prefix}*"

    # -- migrations --------------------------------------------------------------------------------

    def _migrations(self) -> None:
        migrate = self.functions["migrate"]
        provider_logs = logs.LogGroup(self, "MigrationsProviderLogs", retention=self.config.log_retention)
        provider_role = iam.Role(
            self,
            "MigrationsProviderRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="CDK Provider framework function that relays CloudFormation events to pricepipe-migrate",
        )
        provider_logs.grant_write(provider_role)
        provider = cr.Provider(
            self,
            "MigrationsProvider",
            on_event_handler=migrate.function,
            framework_on_event_role=provider_role,
            log_group=provider_logs,
            provider_function_name=f"{catalog.PROJECT}-migrate-provider",
        )
        invoke_policy = provider_role.node.try_find_child("DefaultPolicy")
        assert invoke_policy is not None
        nag.acknowledge(
            invoke_policy,
            "IAM5",
            "The Provider framework invokes pricepipe-migrate by ARN and by any version/alias qualifier "
            "(`:*`) of that one function.",
            finding=nag.resource_finding(self, f"{migrate.function.function_arn}:*"),
        )
        self.schema = CustomResource(
            self,
            "DatabaseSchema",
            service_token=provider.service_token,
            resource_type="Custom::PricePipeDatabaseSchema",
            properties={
                "MigrationsHash": migrations_fingerprint(self.config.contract),
                "Contract": self.config.contract,
            },
        )

    # -- state machines ----------------------------------------------------------------------------

    def _state_machine(self, spec: catalog.StateMachineSpec) -> sfn.StateMachine:
        needed = catalog.placeholders(spec)
        if needed != set(spec.substitutions):
            raise ValueError(f"{spec.file} uses {sorted(needed)} but the catalog declares {sorted(spec.substitutions)}")
        by_placeholder = {f.spec.substitution: f for f in self.functions.values() if f.spec.substitution}
        tasks = [by_placeholder[name] for name in sorted(needed)]
        camel = catalog.camel(spec.key)

        # The name is fixed so the role can name the state machine (and its executions) without a
        # reference to the resource that needs the role: a DISTRIBUTED map starts child executions.
        machine_arn = self.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=spec.name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        role = iam.Role(
            self,
            f"{camel}StateMachineRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description=f"Execution role of the {spec.name} state machine: what {spec.file} calls",
        )
        asl_policy = iam.Policy(self, f"{camel}StateMachineAslPolicy", roles=[role])
        asl_policy.add_statements(
            iam.PolicyStatement(
                sid="InvokeTaskFunctions",
                actions=["lambda:InvokeFunction"],
                resources=[arn for f in tasks for arn in (f.function.function_arn, f"{f.function.function_arn}:*")],
            )
        )
        findings = [nag.resource_finding(self, f"{f.function.function_arn}:*") for f in tasks]
        definition = json.loads(spec.path.read_text(encoding="utf-8"))
        labels = distributed_map_labels(definition)
        if labels:
            asl_policy.add_statements(
                iam.PolicyStatement(
                    sid="ReadItemManifests",
                    actions=["s3:GetObject"],
                    resources=[self._bucket_arn(self.data.bucket_names.artifacts, MANIFEST_PREFIX)],
                ),
                iam.PolicyStatement(
                    sid="StartChildExecutions", actions=["states:StartExecution"], resources=[machine_arn]
                ),
            )

            def execution_arn(name: str) -> str:
                return self.format_arn(
                    service="states", resource="execution", resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
                )

            # Child executions of a map run are named <machine>/<map label>:<id>; describing and
            # stopping them is granted as AWS documents it for Distributed Map, redriving per label as
            # CDK's own DistributedMap construct does.
            children = execution_arn(f"{spec.name}/*")
            redrivable = [execution_arn(f"{spec.name}/{label or '*'}:*") for label in labels]
            asl_policy.add_statements(
                iam.PolicyStatement(
                    sid="ManageChildExecutions",
                    actions=["states:DescribeExecution", "states:StopExecution"],
                    resources=[children],
                ),
                iam.PolicyStatement(sid="RedriveMapRuns", actions=["states:RedriveExecution"], resources=redrivable),
            )
            findings.append(
                nag.resource_finding(self, self._bucket_arn(self.data.bucket_names.artifacts, MANIFEST_PREFIX))
            )
            findings += [nag.resource_finding(self, arn) for arn in {children, *redrivable}]
        for finding in findings:
            nag.acknowledge(
                asl_policy,
                "IAM5",
                f"Exactly what {spec.file} needs: its task functions and their version qualifiers (`:*`), the "
                f"item manifests under {MANIFEST_PREFIX} that the DISTRIBUTED map reads, and the child "
                "executions that map starts (by the state machine's fixed name and the map's label).",
                finding=finding,
            )

        log_group = logs.LogGroup(self, f"{camel}StateMachineLogs", retention=self.config.log_retention)
        machine = sfn.StateMachine(
            self,
            f"{camel}StateMachine",
            state_machine_name=spec.name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_file(str(spec.path)),
            definition_substitutions={name: by_placeholder[name].function.function_arn for name in sorted(needed)},
            role=role,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
        )
        machine.node.add_dependency(asl_policy)
        # The first scheduled run must find the tables.
        machine.node.add_dependency(self.schema)
        default_policy = role.node.try_find_child("DefaultPolicy")
        if default_policy is not None:
            nag.acknowledge(
                default_policy,
                "IAM5",
                "Added by CDK for logging level ALL and X-Ray tracing: CloudWatch Logs delivery "
                "(logs:CreateLogDelivery, ...) and X-Ray actions do not support resource-level permissions.",
                finding="Resource::*",
            )
        CfnOutput(self, catalog.state_machine_output(spec), value=machine.state_machine_arn)
        return machine

    # -- triggers ----------------------------------------------------------------------------------

    def _etl_triggers(self, machine: sfn.StateMachine) -> None:
        scheduler.Schedule(
            self,
            "EtlSchedule",
            description=f"Daily ETL of everything under {LANDING_PREFIX} not yet taken",
            schedule=scheduler.ScheduleExpression.expression(self.config.etl_schedule),
            target=scheduler_targets.StepFunctionsStartExecution(
                machine,
                input=scheduler.ScheduleTargetInput.from_object({"prefix": LANDING_PREFIX}),
                retry_attempts=3,
                max_event_age=Duration.hours(1),
            ),
        )
        events.Rule(
            self,
            "EtlOnLandingObject",
            description=f"Run the ETL for each new object under {LANDING_PREFIX}",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [self.data.bucket_names.landing]},
                    "object": {"key": [{"prefix": LANDING_PREFIX}]},
                },
            ),
            targets=[
                events_targets.SfnStateMachine(
                    machine,
                    input=events.RuleTargetInput.from_object(
                        {"prefix": events.EventField.from_path("$.detail.object.key")}
                    ),
                    retry_attempts=3,
                    max_event_age=Duration.hours(1),
                )
            ],
        )
