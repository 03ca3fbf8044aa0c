"""The catalog's container jobs on AWS Batch (Fargate): compute environment, queues, job definitions.

One Fargate compute environment in the data stack's isolated subnets, one queue and one job
definition per :data:`~infrastructure.catalog.JOBS` entry (the local cloud registers the same queue
and definition names). The image is built from the repository root by ``cdk deploy``; ``cdk synth``
only stages its build context, which is exactly what the Dockerfile copies (see
:func:`docker_context_excludes`), so the virtualenv, node_modules, caches and cloud assemblies are
never staged, hashed or uploaded.

Network: the tasks run without a public IP in subnets that have no route out. They pull the image
through the ECR (api, dkr) interface endpoints and the S3 gateway endpoint (layers), write logs
through the CloudWatch Logs endpoint, read the database secret through the Secrets Manager endpoint
and reach PostgreSQL as members of the database-clients group. All of those live in the data stack.

Roles: the *execution role* is what ECS uses before the container starts (pull this one image, write
this one log group); the *job role* is what the training code can do: read the database secret,
read the lake's features, read and write MLflow artifacts and write its result document.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from aws_cdk import Duration, IgnoreMode, Size, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from infrastructure import catalog, nag
from infrastructure.catalog import Grant, JobSpec
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.data_access import attach_data_access
from infrastructure.stacks.data_stack import DataStack
from pricepipe.settings import DEFAULTS

# What each job does with the buckets. Every catalog job must appear here (JobSpec has no grants of
# its own yet): a new job gets no data access until someone decides which it needs.
JOB_ACCESS: dict[str, tuple[Grant, ...]] = {
    "training": (
        Grant("lake", DEFAULTS.lake_prefix, "read"),  # --source lake
        Grant("artifacts", DEFAULTS.mlflow_artifact_prefix, "read"),  # MLflow lists and downloads run artifacts
        Grant("artifacts", DEFAULTS.mlflow_artifact_prefix, "write"),  # plots, model, reference stats, serving artifact
        Grant("artifacts", DEFAULTS.training_results_prefix, "write"),  # the result document the flow reads
    ),
}

# Never in an image, whatever the Dockerfile copies: bytecode, build metadata, test caches.
_CONTEXT_JUNK = ("**/__pycache__", "**/*.pyc", "**/*.egg-info", "**/.pytest_cache", "**/.mypy_cache")


def copy_sources(dockerfile: Path) -> list[str]:
    """Build-context paths that the Dockerfile's COPY and ADD instructions read, in order.

    Instructions that copy from another stage or image (``--from=``) and ADD of a URL read nothing
    from the context and are skipped.
    """
    text = re.sub(r"\\[ \t]*\r?\n", " ", dockerfile.read_text(encoding="utf-8"))
    sources: list[str] = []
    for line in text.splitlines():
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() not in ("COPY", "ADD") or not arguments.strip():
            continue
        arguments = arguments.strip()
        if arguments.startswith("<<"):
            continue  # a heredoc: inline content, nothing from the context
        items = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        flags = [item for item in items if item.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        paths = [item for item in items if not item.startswith("--")]
        sources += [path for path in paths[:-1] if "://" not in path]
    return sources


def docker_context_excludes(dockerfile: Path, root: Path = catalog.ROOT) -> list[str]:
    """Exclude patterns (Docker ignore syntax) that leave only what ``dockerfile`` copies.

    An allowlist rather than a list of what to leave out: a new folder at the repository root (data,
    a second virtualenv, benchmark output) can never slip into the image's build context, and the
    staged asset, its hash and its upload stay as small as the image's own inputs.
    """
    sources = [source.removeprefix("./").rstrip("/") for source in copy_sources(dockerfile)]
    if not sources:
        raise ValueError(f"{dockerfile} copies nothing from its build context")
    whole = [source for source in sources if source in ("", ".", "*")]
    if whole:
        raise ValueError(f"{dockerfile} copies the whole build context; copy explicit paths instead")
    keep = sorted({*sources, dockerfile.resolve().relative_to(root.resolve()).as_posix()})
    return ["*", *(f"!{path}" for path in keep), *_CONTEXT_JUNK]


class BatchJobs(Construct):
    """A Fargate compute environment and, per catalog job, a queue and a job definition."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data: DataStack,
        config: DeployConfig,
        jobs: tuple[JobSpec, ...] = catalog.JOBS,
    ) -> None:
        super().__init__(scope, construct_id)
        self.data = data
        self.config = config
        missing = [job.key for job in jobs if job.key not in JOB_ACCESS]
        if missing:
            raise KeyError(f"no data access declared for job {', '.join(missing)}: add it to JOB_ACCESS")
        too_big = [job.key for job in jobs if job.vcpus > config.batch_max_vcpus]
        if too_big:
            # Batch would leave such a job RUNNABLE until the queue's time limit cancels it.
            raise ValueError(
                f"pricepipe:batchMaxVcpus={config.batch_max_vcpus} is below the vCPUs of {', '.join(too_big)}"
            )

        self.compute_environment = batch.FargateComputeEnvironment(
            self,
            "Fargate",
            vpc=data.vpc,
            vpc_subnets=data.subnets,
            # The database-clients group: PostgreSQL and HTTPS to the VPC endpoints, nothing else.
            security_groups=[data.database_clients],
            # On-demand, not Spot: a job is not retried (it registers a model version), so an
            # interruption would fail the whole training run.
            spot=False,
            maxv_cpus=config.batch_max_vcpus,
        )
        self.jobs = jobs
        self.queues: dict[str, batch.JobQueue] = {}
        self.definitions: dict[str, batch.EcsJobDefinition] = {}
        for job in jobs:
            self._job(job)

    def _job(self, job: JobSpec) -> None:
        camel = catalog.camel(job.key)
        stack = Stack.of(self)
        self.queues[job.key] = batch.JobQueue(
            self,
            f"{camel}Queue",
            job_queue_name=job.name,
            priority=1,
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=self.compute_environment, order=1)
            ],
            # A job that can never be placed would otherwise stay RUNNABLE for good, and the state
            # machine's submitJob.sync task with it (the job's timeout only counts once it runs).
            job_state_time_limit_actions=[
                batch.JobStateTimeLimitAction(
                    max_time=Duration.minutes(minutes),
                    reason=reason,
                    action=batch.JobStateTimeLimitActionsAction.CANCEL,
                    state=batch.JobStateTimeLimitActionsState.RUNNABLE,
                )
                for reason, minutes in (
                    (batch.JobStateTimeLimitActionsReason.JOB_RESOURCE_REQUIREMENT, 10),
                    (batch.JobStateTimeLimitActionsReason.COMPUTE_ENVIRONMENT_MAX_RESOURCE, 10),
                    (batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY, 60),
                )
            ],
        )

        log_group = logs.LogGroup(self, f"{camel}Logs", retention=self.config.log_retention)
        execution_role = iam.Role(
            self,
            f"{camel}ExecutionRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description=f"ECS task execution role of the {job.name} Batch job: pull its image, write its log group",
        )
        job_role = iam.Role(
            self,
            f"{camel}JobRole",
            # Only ECS tasks started in this account may assume it (confused-deputy guard).
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com").with_conditions(
                {"StringEquals": {"aws:SourceAccount": stack.account}}
            ),
            description=f"Job role of the {job.name} Batch job: what the training code may call",
        )
        self.data.database_secret.grant_read(job_role)
        attach_data_access(
            job_role,
            job_role,
            names=self.data.bucket_names,
            grants=JOB_ACCESS[job.key],
            contract=self.config.contract,
            who=f"the {job.name} job",
        )

        dockerfile = catalog.ROOT / job.dockerfile
        image = ecs.ContainerImage.from_asset(
            str(catalog.ROOT),
            file=job.dockerfile,
            ignore_mode=IgnoreMode.DOCKER,
            exclude=docker_context_excludes(dockerfile),
            # Fargate runs X86_64 below; build for it even on an arm64 laptop.
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        environment = catalog.environment(
            job.name,
            landing_bucket=self.data.bucket_names.landing,
            lake_bucket=self.data.bucket_names.lake,
            artifacts_bucket=self.data.bucket_names.artifacts,
            database_secret_arn=self.data.database_secret.secret_arn,
            contract=self.config.contract,
            stage=self.config.stage,
        )
        container = batch.EcsFargateContainerDefinition(
            self,
            f"{camel}Container",
            image=image,
            cpu=job.vcpus,
            memory=Size.mebibytes(job.memory_mb),
            command=list(job.command),
            environment={**environment, **catalog.JOB_EXTRA_ENVIRONMENT},
            job_role=job_role,
            execution_role=execution_role,
            logging=ecs.LogDrivers.aws_logs(stream_prefix=job.key, log_group=log_group),
            fargate_platform_version=ecs.FargatePlatformVersion.LATEST,
            fargate_cpu_architecture=ecs.CpuArchitecture.X86_64,
            fargate_operating_system_family=ecs.OperatingSystemFamily.LINUX,
            # No route out exists anyway; without a public IP the task is not addressable either.
            assign_public_ip=False,
        )
        self.definitions[job.key] = batch.EcsJobDefinition(
            self,
            f"{camel}JobDefinition",
            # Fixed, so the state machine's role can name the definition's revisions without a wildcard
            # over every definition in the account.
            job_definition_name=job.name,
            container=container,
            # One attempt: a run registers a model version, so a blind retry could register twice.
            retry_attempts=1,
            timeout=Duration.seconds(job.timeout_s),
        )

        pull_policy = execution_role.node.try_find_child("DefaultPolicy")
        assert pull_policy is not None
        nag.acknowledge(
            pull_policy,
            "IAM5",
            "ecr:GetAuthorizationToken does not support resource-level permissions (AWS documents "
            "Resource *); the image pull itself (BatchGetImage, GetDownloadUrlForLayer) is scoped to the "
            "CDK asset repository.",
            finding="Resource::*",
        )

    def job_definition_arn_pattern(self, job: JobSpec) -> str:
        """Every revision of ``job``'s definition: what a caller of SubmitJob is granted."""
        return Stack.of(self).format_arn(service="batch", resource="job-definition", resource_name=f"{job.name}:*")

    def substitutions(self) -> dict[str, str]:
        """ASL placeholder -> ARN, for every job's queue and job definition."""
        values: dict[str, str] = {}
        for job in self.jobs:
            values[job.queue_substitution] = self.queues[job.key].job_queue_arn
            values[job.definition_substitution] = self.definitions[job.key].job_definition_arn
        return values

    def job_for(self, placeholder: str) -> JobSpec | None:
        """The job whose queue or definition ARN ``placeholder`` stands for."""
        return next((j for j in self.jobs if placeholder in (j.queue_substitution, j.definition_substitution)), None)
