"""The pipeline: layers, the catalog's functions and jobs, the database migrations and the state machines.

Reads top to bottom like the flow: code and layers -> the model-layer parameter (the promotion
flow's record of the champion's layer) -> functions with their data grants (and, for the promotion
steps, their access to the serving function) -> container jobs on AWS Batch -> schema migration on
deploy -> state machines from their ASL files -> what starts them (daily schedules and new objects in
the landing bucket).

The serving function itself (``catalog.SERVING_FUNCTION``) is deployed by the serving stack; its
model layer is the promotion flow's to attach (see :mod:`infrastructure.stacks.serving_stack`).

The Batch jobs live in this stack, next to the state machines that submit them: a job definition is
immutable, so a change replaces it, and CloudFormation deregisters the old revision only in the
clean-up phase of the same update, after the state machine already points at the new one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from aws_cdk import (
    Annotations,
    ArnFormat,
    Aws,
    CfnMapping,
    CfnOutput,
    CustomResource,
    Duration,
    RemovalPolicy,
    Stack,
    Token,
)
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

from infrastructure import catalog, layers, nag
from infrastructure.layers import (
    PANDAS_LAYER_PROVIDED,
    RUNTIME_PROVIDED,
    build_requirements_layer,
    installed_distributions,
    package_layer_code,
    requirements_layer_code,
)
from infrastructure.stacks import layer_names
from infrastructure.stacks.batch_jobs import BatchJobs
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.data_access import attach_data_access, bucket_arn
from infrastructure.stacks.data_stack import DataStack
from infrastructure.stacks.model_layer import ModelLayerSeed
from infrastructure.stacks.pipeline_function import RUNTIMES, PipelineFunction
from infrastructure.stacks.serving_access import PROMOTION_ACCESS, attach_serving_access
from pricepipe.settings import DEFAULTS

PACKAGE_DIR = catalog.ROOT / "layers" / "pricepipe" / "pricepipe"
REQUIREMENTS_DIR = catalog.ROOT / "layers" / "requirements"
DEPS_REQUIREMENTS = REQUIREMENTS_DIR / "pricepipe-deps.txt"
NUMPY_REQUIREMENTS = REQUIREMENTS_DIR / "numpy.txt"
MLFLOW_REQUIREMENTS = REQUIREMENTS_DIR / "mlflow-deps.txt"
NO_BYTECODE_WARNING = "pricepipe:layers:noBytecode"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
BUNDLED_CONTRACTS_DIR = PACKAGE_DIR / "contracts"
# AWS publishes the layer per Python version: AWSSDKPandas-Python312 for python3.12.
PANDAS_LAYER_NAME = catalog.PANDAS_LAYER
# Step Functions service integrations with AWS Batch, as ASL Task states name them.
BATCH_SUBMIT_JOB = "arn:aws:states:::batch:submitJob"
BATCH_SUBMIT_JOB_SYNC = f"{BATCH_SUBMIT_JOB}.sync"
# The managed rule through which Step Functions learns that a .sync Batch job finished.
BATCH_EVENTS_RULE = "StepFunctionsGetEventsForBatchJobsRule"
# Step Functions' integration that starts another state machine and moves on (not .sync).
STATES_START_EXECUTION = "arn:aws:states:::states:startExecution"


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


def _states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """Every state of an ASL definition, those nested in Map and Parallel states included."""
    found: list[dict[str, Any]] = []
    for state in definition.get("States", {}).values():
        found.append(state)
        for nested in (state.get("ItemProcessor"), state.get("Iterator"), *state.get("Branches", [])):
            if nested:
                found += _states(nested)
    return found


def task_resources(definition: dict[str, Any]) -> set[str]:
    """The ``Resource`` of every Task state: which service integrations a definition uses."""
    return {str(state["Resource"]) for state in _states(definition) if state.get("Type") == "Task"}


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
        self.model_layer_seed = ModelLayerSeed(
            self, "ModelLayerSeed", log_retention=config.log_retention, delete_with_stack=not config.retain_data
        )
        self._functions()
        self.jobs = BatchJobs(self, "Jobs", data=data, config=config)
        for placeholder, arn in self.jobs.substitutions().items():
            CfnOutput(self, placeholder, value=arn)  # e.g. TrainingJobQueueArn, for pipectl --target aws
        self._migrations()
        self.state_machines: dict[str, sfn.StateMachine] = {}
        for spec in catalog.STATE_MACHINES:  # a machine that another one starts comes first
            self.state_machines[spec.key] = self._state_machine(spec)
        self._etl_triggers(self.state_machines["etl"])
        self._drift_schedule(self.state_machines["drift"])
        # the contract's name: pipectl --target aws lands files in its folder (landing/<dataset>/)
        CfnOutput(self, "DatasetName", value=config.dataset)

    # -- layers ------------------------------------------------------------------------------------

    def _layers(self) -> None:
        """Our layers, each under a fixed name (:mod:`infrastructure.stacks.layer_names`), with bytecode.

        Per function (:meth:`function_layers`): numpy comes from the AWS SDK for pandas layer where a
        function has it, else from our numpy layer (the shared package's model evaluator imports it);
        MLflow's client only where a function opens a registry (its own layer: ~110 MB does not fit
        beside the pandas layer, and no function needs both).
        """
        deps_excluded = RUNTIME_PROVIDED + PANDAS_LAYER_PROVIDED
        self.deps_layer = self._layer(
            "DepsLayer",
            layer_names.DEPS,
            requirements_layer_code(DEPS_REQUIREMENTS, excluded=deps_excluded),
            f"Third-party dependencies of the pricepipe package ({DEPS_REQUIREMENTS.name})",
        )
        self.numpy_layer = self._layer(
            "NumpyLayer",
            layer_names.NUMPY,
            requirements_layer_code(NUMPY_REQUIREMENTS),
            f"numpy for functions without the AWS SDK for pandas layer ({NUMPY_REQUIREMENTS.name})",
        )
        # Whatever the dependency layer ships is taken out of MLflow's, so each package exists once
        # on a function's path (and pydantic, PyYAML, ... stay the dependency layer's pins).
        deps_site = build_requirements_layer(DEPS_REQUIREMENTS, deps_excluded) / "python"
        self.mlflow_layer = self._layer(
            "MlflowLayer",
            layer_names.MLFLOW,
            requirements_layer_code(
                MLFLOW_REQUIREMENTS, excluded=RUNTIME_PROVIDED + tuple(installed_distributions(deps_site))
            ),
            f"MLflow's tracking and registry client over PostgreSQL ({MLFLOW_REQUIREMENTS.name})",
        )
        self.package_layer = self._layer(
            "PackageLayer",
            layer_names.PACKAGE,
            package_layer_code(PACKAGE_DIR),
            "The shared pricepipe package: contract, features, ETL, database, storage, serving, promotion",
            # The serving stack uses this layer too and moves to a new version only when it is
            # deployed after this stack: the version it still names must not be deleted meanwhile.
            removal_policy=RemovalPolicy.RETAIN,
        )
        if layers.bytecode_interpreter() is None:
            Annotations.of(self).add_warning_v2(
                NO_BYTECODE_WARNING,
                f"No CPython {layers.PYTHON_VERSION} found (set {layers.BYTECODE_PYTHON_ENV}): the layers ship "
                "sources only, and every cold start compiles the modules it imports.",
            )
        self.pandas_layer = lambda_.LayerVersion.from_layer_version_arn(self, "PandasLayer", self._pandas_layer_arn())

    def _pandas_layer_arn(self) -> str:
        """AWS's AWS SDK for pandas layer in this stack's region, for the release in
        layers/pandas-managed/versions.json (AWS numbers its versions per region). A concrete region
        is looked up at synth (an unlisted one fails synth, naming it); an environment-agnostic stack
        carries the table as a mapping, and CloudFormation refuses a region that is not in it."""
        if self.config.pandas_layer_arn:
            return self.config.pandas_layer_arn
        managed = layers.managed_pandas_layer()
        if managed.layer != PANDAS_LAYER_NAME:
            raise ValueError(
                f"versions.json lists {managed.layer}, but the functions run {PANDAS_LAYER_NAME}'s runtime"
            )
        if Token.is_unresolved(self.region):
            mapping = {region: {"version": str(version)} for region, version in sorted(managed.versions.items())}
            version = CfnMapping(self, "PandasLayerVersions", mapping=mapping).find_in_map(Aws.REGION, "version")
        else:
            version = str(managed.version_in(self.region))
        return self.format_arn(
            service="lambda",
            account=managed.account,
            resource="layer",
            resource_name=f"{managed.layer}:{version}",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def _layer(
        self,
        construct_id: str,
        name: str,
        code: lambda_.Code,
        description: str,
        removal_policy: RemovalPolicy | None = None,
    ) -> lambda_.LayerVersion:
        return lambda_.LayerVersion(
            self,
            construct_id,
            layer_version_name=name,
            code=code,
            compatible_runtimes=[RUNTIMES[catalog.LAMBDA_RUNTIME]],
            compatible_architectures=[lambda_.Architecture.X86_64],
            description=description,
            removal_policy=removal_policy,
        )

    def function_layers(self, spec: catalog.FunctionSpec) -> list[lambda_.ILayerVersion]:
        """A pipeline function's layers, as :func:`infrastructure.catalog.function_layers` names and orders
        them (the local cloud attaches the same)."""
        by_name: dict[str, lambda_.ILayerVersion] = {
            catalog.PANDAS_LAYER: self.pandas_layer,
            layer_names.NUMPY: self.numpy_layer,
            layer_names.DEPS: self.deps_layer,
            layer_names.MLFLOW: self.mlflow_layer,
            layer_names.PACKAGE: self.package_layer,
        }
        return [by_name[name] for name in catalog.function_layers(spec)]

    # -- functions ---------------------------------------------------------------------------------

    def _functions(self) -> None:
        data = self.data
        codes: dict[Path, lambda_.Code] = {}
        self.functions: dict[str, PipelineFunction] = {}
        for spec in catalog.FUNCTIONS:
            if spec.key == catalog.SERVING_FUNCTION:
                continue  # the serving stack's (see the module docstring)
            if spec.code_dir not in codes:
                codes[spec.code_dir] = function_code(spec)
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
                layers=self.function_layers(spec),
                environment=environment,
                log_retention=self.config.log_retention,
                vpc=data.vpc if spec.needs_database else None,
                vpc_subnets=data.subnets,
                security_groups=[data.database_clients],
            )
            self._grant_data_access(function)
            self.functions[spec.key] = function
            CfnOutput(self, catalog.function_output(spec), value=function.function.function_name)

    def _grant_data_access(self, function: PipelineFunction) -> None:
        """The S3 access its catalog entry declares (none without grants), the database secret, and for a
        promotion step what it does to the serving function (:mod:`infrastructure.stacks.serving_access`)."""
        spec = function.spec
        if spec.needs_database:
            self.data.database_secret.grant_read(function.role)
        policies = [
            attach_data_access(
                function,
                function.role,
                names=self.data.bucket_names,
                grants=catalog.contract_grants(spec.s3, self.config.dataset),
                contract=self.config.contract,
                who=spec.name,
            )
        ]
        if spec.key in PROMOTION_ACCESS:
            policies += attach_serving_access(function, function.role, spec.key)
        for policy in policies:
            if policy is not None:
                function.function.node.add_dependency(policy)

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
        """A state machine from its ASL file; its role allows what that file calls and nothing else."""
        needed = catalog.placeholders(spec)
        if needed != set(spec.substitutions):
            raise ValueError(f"{spec.file} uses {sorted(needed)} but the catalog declares {sorted(spec.substitutions)}")
        functions = {f.spec.substitution: f for f in self.functions.values() if f.spec.substitution}
        values = {name: functions[name].function.function_arn for name in needed if name in functions}
        values |= {name: arn for name, arn in self.jobs.substitutions().items() if name in needed}
        # Another state machine, by its fixed name: no reference to it, so two flows that start each
        # other's machines could never form a dependency cycle.
        started = [m for m in catalog.STATE_MACHINES if m.substitution in needed]
        values |= {m.substitution: self.state_machine_arn(m) for m in started if m.substitution}
        unknown = needed - values.keys()
        if unknown:
            raise KeyError(f"{spec.file}: no function, job or state machine provides {', '.join(sorted(unknown))}")
        tasks = [functions[name] for name in sorted(needed) if name in functions]
        submitted = {job.key: job for name in needed if (job := self.jobs.job_for(name))}
        jobs = [submitted[key] for key in sorted(submitted)]
        definition = json.loads(spec.path.read_text(encoding="utf-8"))
        camel = catalog.camel(spec.key)

        role = iam.Role(
            self,
            f"{camel}StateMachineRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description=f"Execution role of the {spec.name} state machine: what {spec.file} calls",
        )
        asl_policy = iam.Policy(self, f"{camel}StateMachineAslPolicy", roles=[role])
        acknowledgments: dict[str, str] = {}
        if tasks:
            asl_policy.add_statements(
                iam.PolicyStatement(
                    sid="InvokeTaskFunctions",
                    actions=["lambda:InvokeFunction"],
                    resources=[arn for f in tasks for arn in (f.function.function_arn, f"{f.function.function_arn}:*")],
                )
            )
            for f in tasks:
                acknowledgments[nag.resource_finding(self, f"{f.function.function_arn}:*")] = (
                    f"{spec.file} invokes {f.spec.name}; `:*` adds that one function's version and alias "
                    "qualifiers, as Step Functions' Lambda integration documents."
                )
        acknowledgments |= self._distributed_map_statements(spec, definition, asl_policy)
        self._start_execution_statements(spec, definition, started, asl_policy)
        batch_acknowledgments, batch_policies = self._batch_statements(spec, definition, jobs, role, asl_policy)
        acknowledgments |= batch_acknowledgments
        for finding, reason in acknowledgments.items():
            nag.acknowledge(asl_policy, "IAM5", reason, finding=finding)

        log_group = logs.LogGroup(self, f"{camel}StateMachineLogs", retention=self.config.log_retention)
        machine = sfn.StateMachine(
            self,
            f"{camel}StateMachine",
            state_machine_name=spec.name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_file(str(spec.path)),
            definition_substitutions={name: values[name] for name in sorted(needed)},
            role=role,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
        )
        # The role must allow what the definition calls before the first execution can start.
        for policy in (asl_policy, *batch_policies):
            machine.node.add_dependency(policy)
        # The first scheduled run must find the tables, and the machines this one starts.
        machine.node.add_dependency(self.schema)
        for other in started:
            if other.key in self.state_machines:
                machine.node.add_dependency(self.state_machines[other.key])
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

    def state_machine_arn(self, spec: catalog.StateMachineSpec) -> str:
        """A catalog state machine's ARN from its fixed name."""
        return self.format_arn(
            service="states", resource="stateMachine", resource_name=spec.name, arn_format=ArnFormat.COLON_RESOURCE_NAME
        )

    def _start_execution_statements(
        self,
        spec: catalog.StateMachineSpec,
        definition: dict[str, Any],
        started: list[catalog.StateMachineSpec],
        policy: iam.Policy,
    ) -> None:
        """StartExecution on the machines the definition starts (``states:startExecution``, not .sync:
        the started execution is not followed, so nothing else is needed)."""
        if not started:
            return
        integrations = task_resources(definition)
        if integrations & {f"{STATES_START_EXECUTION}.sync", f"{STATES_START_EXECUTION}.sync:2"}:
            raise ValueError(f"{spec.file} waits for a started execution (.sync): grant what that needs first")
        if STATES_START_EXECUTION not in integrations:
            raise ValueError(f"{spec.file} names another state machine but never starts one")
        policy.add_statements(
            iam.PolicyStatement(
                sid="StartStateMachines",
                actions=["states:StartExecution"],
                resources=[self.state_machine_arn(m) for m in started],
            )
        )

    def _distributed_map_statements(
        self, spec: catalog.StateMachineSpec, definition: dict[str, Any], policy: iam.Policy
    ) -> dict[str, str]:
        """A DISTRIBUTED map reads its item manifest and runs child executions of this state machine."""
        labels = distributed_map_labels(definition)
        if not labels:
            return {}
        # The name is fixed so the role can name the state machine (and its executions) without a
        # reference to the resource that needs the role.
        machine_arn = self.state_machine_arn(spec)
        manifests = bucket_arn(self, self.data.bucket_names.artifacts, spec.manifest_prefix)
        policy.add_statements(
            iam.PolicyStatement(sid="ReadItemManifests", actions=["s3:GetObject"], resources=[manifests]),
            iam.PolicyStatement(sid="StartChildExecutions", actions=["states:StartExecution"], resources=[machine_arn]),
        )

        def execution_arn(name: str) -> str:
            return self.format_arn(
                service="states", resource="execution", resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
            )

        # Child executions of a map run are named <machine>/<map label>:<id>; describing and stopping
        # them is granted as AWS documents it for Distributed Map, redriving per label as CDK's own
        # DistributedMap construct does.
        children = execution_arn(f"{spec.name}/*")
        redrivable = [execution_arn(f"{spec.name}/{label or '*'}:*") for label in labels]
        policy.add_statements(
            iam.PolicyStatement(
                sid="ManageChildExecutions",
                actions=["states:DescribeExecution", "states:StopExecution"],
                resources=[children],
            ),
            iam.PolicyStatement(sid="RedriveMapRuns", actions=["states:RedriveExecution"], resources=redrivable),
        )
        reason = (
            f"What the DISTRIBUTED map of {spec.file} needs: the item manifests under {spec.manifest_prefix},"
            " and the "
            "child executions it starts (named by the state machine's fixed name and the map's label)."
        )
        return {nag.resource_finding(self, arn): reason for arn in (manifests, children, *redrivable)}

    def _batch_statements(
        self,
        spec: catalog.StateMachineSpec,
        definition: dict[str, Any],
        jobs: list[catalog.JobSpec],
        role: iam.Role,
        policy: iam.Policy,
    ) -> tuple[dict[str, str], list[iam.Policy]]:
        """SubmitJob on the jobs' queues and definitions; for ``.sync`` also tracking and stopping them.

        Returns the IAM5 acknowledgments for ``policy`` and any further policy attached to ``role``:
        DescribeJobs supports no resource-level permission at all, so it goes into a policy of its own,
        where acknowledging its ``Resource::*`` cannot hide a wildcard added to ``policy``.
        """
        integrations = task_resources(definition)
        if not jobs or not integrations & {BATCH_SUBMIT_JOB, BATCH_SUBMIT_JOB_SYNC}:
            return {}, []
        queues = [self.jobs.queues[job.key].job_queue_arn for job in jobs]
        definitions = [self.jobs.job_definition_arn_pattern(job) for job in jobs]
        policy.add_statements(
            iam.PolicyStatement(sid="SubmitJobs", actions=["batch:SubmitJob"], resources=[*queues, *definitions])
        )
        acknowledgments = {
            nag.resource_finding(self, arn): (
                f"{spec.file} submits the {job.name} job definition: the state machine references its current "
                "revision, and `:*` (that definition's revisions only) keeps executions started before a deploy, "
                "which hold the previous revision's ARN, able to submit."
            )
            for job, arn in zip(jobs, definitions, strict=True)
        }
        if BATCH_SUBMIT_JOB_SYNC not in integrations:
            return acknowledgments, []

        jobs_arn = self.format_arn(service="batch", resource="job", resource_name="*")
        events_rule = self.format_arn(service="events", resource="rule", resource_name=BATCH_EVENTS_RULE)
        policy.add_statements(
            # Step Functions stops the job when the execution is stopped or the task times out. Job IDs
            # exist only at run time, so jobs are named by account and region.
            iam.PolicyStatement(sid="StopSubmittedJobs", actions=["batch:TerminateJob"], resources=[jobs_arn]),
            iam.PolicyStatement(
                sid="ManageBatchJobEventsRule",
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[events_rule],
            ),
        )
        acknowledgments[nag.resource_finding(self, jobs_arn)] = (
            f"{spec.file} waits for its Batch jobs (submitJob.sync) and Step Functions terminates a job when the "
            "execution stops; job IDs are generated at submit time, so the resource is this account's jobs."
        )
        tracking = iam.Policy(
            self,
            f"{catalog.camel(spec.key)}StateMachineBatchTrackingPolicy",
            roles=[role],
            statements=[iam.PolicyStatement(sid="TrackSubmittedJobs", actions=["batch:DescribeJobs"], resources=["*"])],
        )
        nag.acknowledge(
            tracking,
            "IAM5",
            "batch:DescribeJobs supports no resource-level permissions (AWS documents Resource *); Step Functions "
            f"polls it to follow the jobs {spec.file} submits with submitJob.sync. This policy holds nothing else.",
            finding="Resource::*",
        )
        return acknowledgments, [tracking]

    # -- triggers ----------------------------------------------------------------------------------

    def _etl_triggers(self, machine: sfn.StateMachine) -> None:
        landing = DEFAULTS.contract_landing_prefix(self.config.dataset)  # the contract's folder only
        scheduler.Schedule(
            self,
            "EtlSchedule",
            description=f"Daily ETL of everything under {landing} not yet taken",
            schedule=scheduler.ScheduleExpression.expression(self.config.etl_schedule),
            target=scheduler_targets.StepFunctionsStartExecution(
                machine,
                input=scheduler.ScheduleTargetInput.from_object({"prefix": landing}),
                retry_attempts=3,
                max_event_age=Duration.hours(1),
            ),
        )
        events.Rule(
            self,
            "EtlOnLandingObject",
            description=f"Run the ETL for each new object under {landing}",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [self.data.bucket_names.landing]},
                    "object": {"key": [{"prefix": landing}]},
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

    def _drift_schedule(self, machine: sfn.StateMachine) -> None:
        scheduler.Schedule(
            self,
            "DriftSchedule",
            description="Daily drift check of the newest days against the champion, after the ETL",
            schedule=scheduler.ScheduleExpression.expression(self.config.drift_schedule),
            target=scheduler_targets.StepFunctionsStartExecution(
                machine,
                input=scheduler.ScheduleTargetInput.from_object({}),
                retry_attempts=3,
                max_event_age=Duration.hours(1),
            ),
        )


def function_code(spec: catalog.FunctionSpec) -> lambda_.Code:
    """A function's folder as its code asset (without bytecode caches and tests)."""
    return lambda_.Code.from_asset(str(spec.code_dir), exclude=["__pycache__", "*.pyc", "tests"])
