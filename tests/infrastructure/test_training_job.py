"""The training job on AWS Batch (Fargate) and the training state machine that submits it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from infrastructure import catalog
from infrastructure.stacks import PIPELINE_STACK
from infrastructure.stacks.batch_jobs import (
    JOB_ACCESS,
    copy_sources,
    docker_context_excludes,
)
from infrastructure.stacks.pipeline_stack import BATCH_EVENTS_RULE
from pricepipe.settings import DEFAULTS
from tests.infrastructure.support import (
    Resources,
    actions_of,
    as_list,
    expected_s3_grants,
    of_type,
    s3_grants,
    statements_of_role,
)

LAKE_PREFIX = DEFAULTS.lake_prefix
MLFLOW_PREFIX = DEFAULTS.mlflow_artifact_prefix
TRAINING_RESULTS_PREFIX = DEFAULTS.training_results_prefix

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

JOB = catalog.TRAINING_JOB
TRAINING = catalog.state_machine("training")


def _one(resources: Resources, kind: str) -> tuple[str, dict[str, Any]]:
    found = of_type(resources, kind)
    assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
    return next(iter(found.items()))


def _job_definition(resources: Resources) -> tuple[str, dict[str, Any]]:
    for name, resource in of_type(resources, "AWS::Batch::JobDefinition").items():
        if resource["Properties"]["JobDefinitionName"] == JOB.name:
            return name, resource
    raise AssertionError(f"no job definition named {JOB.name}")


def _container(resources: Resources) -> dict[str, Any]:
    return dict(_job_definition(resources)[1]["Properties"]["ContainerProperties"])


def _role(arn: dict[str, Any]) -> str:
    return str(arn["Fn::GetAtt"][0])


# -- compute environment and queue -------------------------------------------------------------------


def test_given_the_compute_environment_then_it_is_managed_fargate_on_demand_in_the_isolated_subnets(
    pipeline_resources: Resources,
) -> None:
    _, environment = _one(pipeline_resources, "AWS::Batch::ComputeEnvironment")
    props = environment["Properties"]
    assert props["Type"] == "managed"
    assert props["ComputeResources"]["Type"] == "FARGATE", "on-demand Fargate, not FARGATE_SPOT"
    assert props["ComputeResources"]["MaxvCpus"] >= JOB.vcpus
    subnets = [s["Fn::GetStackOutput"]["OutputName"] for s in props["ComputeResources"]["Subnets"]]
    assert len(subnets) == 2
    assert all("isolatedSubnet" in name for name in subnets), subnets
    (group,) = props["ComputeResources"]["SecurityGroupIds"]
    assert "DatabaseClients" in group["Fn::GetStackOutput"]["OutputName"], "the database-clients group"
    assert "ServiceRole" not in props, "Batch's service-linked role, not a role with a managed policy"


def test_given_the_job_queue_then_it_feeds_the_compute_environment_and_cancels_jobs_that_can_never_start(
    pipeline_resources: Resources,
) -> None:
    environment, _ = _one(pipeline_resources, "AWS::Batch::ComputeEnvironment")
    _, queue = _one(pipeline_resources, "AWS::Batch::JobQueue")
    props = queue["Properties"]
    assert props["JobQueueName"] == JOB.name, "the name the local cloud registers too"
    assert props["ComputeEnvironmentOrder"] == [
        {"ComputeEnvironment": {"Fn::GetAtt": [environment, "ComputeEnvironmentArn"]}, "Order": 1}
    ]
    limits = {a["Reason"]: a for a in props["JobStateTimeLimitActions"]}
    assert set(limits) >= {
        "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
        "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
    }
    assert {a["Action"] for a in limits.values()} == {"CANCEL"}
    assert {a["State"] for a in limits.values()} == {"RUNNABLE"}


# -- job definition ----------------------------------------------------------------------------------


def test_given_the_job_definition_then_it_runs_the_catalog_command_on_fargate_with_its_size_and_timeout(
    pipeline_resources: Resources,
) -> None:
    _, definition = _job_definition(pipeline_resources)
    props = definition["Properties"]
    container = props["ContainerProperties"]
    assert container["Command"] == list(JOB.command)
    assert props["PlatformCapabilities"] == ["FARGATE"]
    assert props["RetryStrategy"] == {"Attempts": 1}, "a run registers a version: never retried blindly"
    assert props["Timeout"] == {"AttemptDurationSeconds": JOB.timeout_s}
    resources = {r["Type"]: r["Value"] for r in container["ResourceRequirements"]}
    assert resources == {"VCPU": f"{JOB.vcpus:g}", "MEMORY": str(JOB.memory_mb)}
    assert container["FargatePlatformConfiguration"] == {"PlatformVersion": "LATEST"}
    assert container["NetworkConfiguration"] == {"AssignPublicIp": "DISABLED"}
    assert container["RuntimePlatform"] == {"CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"}


def test_given_the_job_definition_then_its_environment_is_the_catalogs_with_the_database_secret(
    pipeline_resources: Resources,
) -> None:
    variables = {v["Name"]: v["Value"] for v in _container(pipeline_resources)["Environment"]}
    expected = catalog.environment(
        JOB.name,
        landing_bucket="L",
        lake_bucket="K",
        artifacts_bucket="A",
        database_secret_arn="S",
        contract="hotel_rates",
        stage="prod",
    )
    assert set(variables) == set(expected) | set(catalog.JOB_EXTRA_ENVIRONMENT)
    assert variables["POWERTOOLS_SERVICE_NAME"] == JOB.name
    assert variables["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert "Fn::GetStackOutput" in json.dumps(variables["PRICEPIPE_DATABASE_SECRET_ARN"]), "the data stack's secret"
    for key, purpose in (("PRICEPIPE_LAKE_BUCKET", "lake"), ("PRICEPIPE_ARTIFACTS_BUCKET", "artifacts")):
        assert variables[key]["Fn::Join"][1][0] == f"pricepipe-prod-{purpose}-"


def test_given_the_job_definition_then_it_logs_to_its_own_log_group_with_retention(
    pipeline_resources: Resources,
) -> None:
    logging = _container(pipeline_resources)["LogConfiguration"]
    assert logging["LogDriver"] == "awslogs"
    group = logging["Options"]["awslogs-group"]["Ref"]
    assert pipeline_resources[group]["Properties"]["RetentionInDays"] == 90


# -- roles -------------------------------------------------------------------------------------------


def test_given_the_job_role_then_it_reads_the_secret_and_only_its_declared_bucket_prefixes(
    pipeline_resources: Resources,
) -> None:
    role = _role(_container(pipeline_resources)["JobRoleArn"])
    statements = statements_of_role(pipeline_resources, role)
    assert "s3:*" not in actions_of(statements)
    assert s3_grants(statements) == expected_s3_grants(JOB_ACCESS[JOB.key])
    assert s3_grants(statements) == {
        ("s3:ListBucket", f"lake?prefix={LAKE_PREFIX}"),
        ("s3:GetObject", f"lake/{LAKE_PREFIX}*"),
        ("s3:ListBucket", f"artifacts?prefix={MLFLOW_PREFIX}"),
        ("s3:GetObject", f"artifacts/{MLFLOW_PREFIX}*"),
        ("s3:PutObject", f"artifacts/{MLFLOW_PREFIX}*"),
        ("s3:DeleteObject", f"artifacts/{MLFLOW_PREFIX}*"),
        ("s3:PutObject", f"artifacts/{TRAINING_RESULTS_PREFIX}*"),
        ("s3:DeleteObject", f"artifacts/{TRAINING_RESULTS_PREFIX}*"),
    }
    others = actions_of(statements) - {a for a in actions_of(statements) if a.startswith("s3:")}
    assert others == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    (secret,) = [s for s in statements if "secretsmanager:GetSecretValue" in as_list(s["Action"])]
    assert "Fn::GetStackOutput" in json.dumps(secret["Resource"]), "only the data stack's database secret"


def test_given_the_job_role_then_only_ecs_tasks_of_this_account_may_assume_it(pipeline_resources: Resources) -> None:
    role = _role(_container(pipeline_resources)["JobRoleArn"])
    props = pipeline_resources[role]["Properties"]
    (trust,) = props["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert "ManagedPolicyArns" not in props


def test_given_the_execution_role_then_it_pulls_the_image_and_writes_the_job_log_group_only(
    pipeline_resources: Resources,
) -> None:
    container = _container(pipeline_resources)
    role = _role(container["ExecutionRoleArn"])
    assert role != _role(container["JobRoleArn"])
    assert "ManagedPolicyArns" not in pipeline_resources[role]["Properties"]
    statements = statements_of_role(pipeline_resources, role)
    assert actions_of(statements) == {
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    for statement in statements:
        actions = set(as_list(statement["Action"]))
        if statement["Resource"] == "*":
            assert actions == {"ecr:GetAuthorizationToken"}, "only the unscopable action on *"
        elif actions & {"logs:PutLogEvents"}:
            group = container["LogConfiguration"]["Options"]["awslogs-group"]["Ref"]
            assert statement["Resource"] == {"Fn::GetAtt": [group, "Arn"]}
        else:
            assert "container-assets" in json.dumps(statement["Resource"]), "the CDK asset repository"


# -- the image's build context -----------------------------------------------------------------------


def _staged_image(synthesized: Synthesized) -> tuple[Path, dict[str, Any]]:
    manifest = json.loads((synthesized.outdir / f"{PIPELINE_STACK}.assets.json").read_text(encoding="utf-8"))
    (image,) = manifest["dockerImages"].values()
    return synthesized.outdir / image["source"]["directory"], image["source"]


def test_given_the_staged_image_context_then_it_holds_what_the_dockerfile_copies_and_no_virtualenv(
    synthesized: Synthesized,
) -> None:
    context, source = _staged_image(synthesized)
    assert source["dockerFile"] == JOB.dockerfile
    assert source.get("platform") == "linux/amd64"
    assert (context / JOB.dockerfile).is_file()
    assert (context / "layers" / "pricepipe" / "pyproject.toml").is_file()
    assert (context / "layers" / "pricepipe" / "pricepipe" / "__init__.py").is_file()
    assert (context / "training_jobs" / "train.py").is_file()
    assert not (context / ".venv").exists()
    assert {p.name for p in context.iterdir()} == {"training_jobs", "layers"}
    assert {p.name for p in (context / "layers").iterdir()} == {"pricepipe"}
    staged = [p for p in context.rglob("*") if p.is_file()]
    assert not [p for p in staged if "__pycache__" in p.parts or p.suffix == ".pyc" or ".egg-info" in str(p)]
    assert sum(p.stat().st_size for p in staged) < 5_000_000, "sources only"


def test_given_the_job_image_then_the_job_definition_command_reaches_the_container_unchanged() -> None:
    """Batch passes ``command`` as the image's CMD: an ENTRYPOINT would be prepended to it."""
    entrypoint: list[str] = []
    for line in (catalog.ROOT / JOB.dockerfile).read_text(encoding="utf-8").splitlines():
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "ENTRYPOINT":
            arguments = arguments.strip()
            entrypoint = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    assert entrypoint == [], (
        f"{JOB.dockerfile} has ENTRYPOINT {entrypoint}: on Batch the container would run "
        f"{entrypoint + list(JOB.command[:3])} ... (the catalog command is the whole command line)"
    )


def test_given_a_dockerfile_then_the_context_keeps_only_what_it_copies(tmp_path: Path) -> None:
    dockerfile = tmp_path / "jobs" / "Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text(
        "FROM python:3.12-slim AS base\n"
        "# COPY not-a-command/\n"
        "COPY jobs/requirements.txt /app/jobs/\n"
        'COPY ["lib/pkg", "/app/lib/pkg"]\n'
        "COPY --chown=app:app \\\n    jobs /app/jobs\n"
        "COPY --from=base /usr/local /usr/local\n"
        "ADD https://example.com/x.tgz /tmp/\n"
    )

    assert copy_sources(dockerfile) == ["jobs/requirements.txt", "lib/pkg", "jobs"]
    excludes = docker_context_excludes(dockerfile, root=tmp_path)
    assert excludes[0] == "*"
    assert {"!jobs", "!lib/pkg", "!jobs/requirements.txt", "!jobs/Dockerfile"} <= set(excludes)
    assert "**/__pycache__" in excludes


def test_given_a_dockerfile_that_copies_the_whole_context_then_it_is_refused(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /app\n")
    with pytest.raises(ValueError, match="whole build context"):
        docker_context_excludes(dockerfile, root=tmp_path)


def test_the_evaluate_function_reads_the_job_results_and_the_mlflow_artifacts() -> None:
    evaluate = catalog.function("training-evaluate")
    assert {g.prefix for g in evaluate.s3} == {MLFLOW_PREFIX, TRAINING_RESULTS_PREFIX}


# -- the training state machine ----------------------------------------------------------------------


def _training_machine(resources: Resources) -> dict[str, Any]:
    for resource in of_type(resources, "AWS::StepFunctions::StateMachine").values():
        if resource["Properties"]["StateMachineName"] == TRAINING.name:
            return resource
    raise AssertionError(f"no state machine named {TRAINING.name}")


def test_given_the_training_state_machine_then_it_submits_to_the_job_queue_and_definition(
    pipeline_resources: Resources,
) -> None:
    substitutions = _training_machine(pipeline_resources)["Properties"]["DefinitionSubstitutions"]
    queue, _ = _one(pipeline_resources, "AWS::Batch::JobQueue")
    definition, _ = _job_definition(pipeline_resources)
    assert substitutions[JOB.queue_substitution] == {"Fn::GetAtt": [queue, "JobQueueArn"]}
    assert substitutions[JOB.definition_substitution] == {"Ref": definition}, "the deployed revision"
    for key in ("training-prepare", "training-evaluate", "training-job-failed"):
        spec = catalog.function(key)
        assert substitutions[spec.substitution]["Fn::GetAtt"][1] == "Arn"


def test_given_the_training_state_machine_role_then_it_allows_exactly_its_functions_and_the_batch_job(
    pipeline_resources: Resources,
) -> None:
    role = _role(_training_machine(pipeline_resources)["Properties"]["RoleArn"])
    statements = statements_of_role(pipeline_resources, role)
    by_sid = {s.get("Sid"): s for s in statements}

    functions = {
        name
        for name, r in of_type(pipeline_resources, "AWS::Lambda::Function").items()
        if r["Properties"].get("FunctionName")
        in {catalog.function(k).name for k in ("training-prepare", "training-evaluate", "training-job-failed")}
    }
    invoked = by_sid["InvokeTaskFunctions"]["Resource"]
    assert {r["Fn::GetAtt"][0] for r in invoked if "Fn::GetAtt" in r} == functions

    queue, _ = _one(pipeline_resources, "AWS::Batch::JobQueue")
    submit = by_sid["SubmitJobs"]
    assert submit["Action"] == "batch:SubmitJob"
    assert {"Fn::GetAtt": [queue, "JobQueueArn"]} in submit["Resource"]
    patterns = [r["Fn::Join"][1][-1] for r in submit["Resource"] if "Fn::Join" in r]
    assert patterns == [f":job-definition/{JOB.name}:*"], "that definition's revisions, no other definition"

    assert by_sid["StopSubmittedJobs"]["Action"] == "batch:TerminateJob"
    assert by_sid["StopSubmittedJobs"]["Resource"]["Fn::Join"][1][-1] == ":job/*"
    assert by_sid["TrackSubmittedJobs"] == {
        "Action": "batch:DescribeJobs",
        "Effect": "Allow",
        "Resource": "*",
        "Sid": "TrackSubmittedJobs",
    }
    rule = by_sid["ManageBatchJobEventsRule"]
    assert set(rule["Action"]) == {"events:PutTargets", "events:PutRule", "events:DescribeRule"}
    assert rule["Resource"]["Fn::Join"][1][-1] == f":rule/{BATCH_EVENTS_RULE}"

    granted = actions_of(statements)
    assert not [a for a in granted if a.startswith(("s3:", "iam:"))]
    # the promotion flow it starts (tests/infrastructure/test_pipeline_stack.py checks which machine)
    assert {a for a in granted if a.startswith("states:")} == {"states:StartExecution"}
    others = [s for s in statements if s.get("Sid") is None]
    assert {a.split(":")[0] for s in others for a in as_list(s["Action"])} <= {"logs", "xray"}


def test_given_the_pipeline_then_a_cli_finds_the_job_queue_and_definition_by_output_name(
    synthesized: Synthesized,
) -> None:
    outputs = synthesized.raw_template(PIPELINE_STACK)["Outputs"]
    assert {JOB.queue_substitution, JOB.definition_substitution, catalog.state_machine_output(TRAINING)} <= set(outputs)


# -- configuration -----------------------------------------------------------------------------------


def test_given_a_vcpu_cap_below_the_job_size_then_synthesis_refuses_it() -> None:
    """A job larger than the compute environment would wait RUNNABLE until the queue cancels it."""
    from aws_cdk import App, Stack

    from infrastructure.stacks import DataStack, DeployConfig
    from infrastructure.stacks.application import project_context
    from infrastructure.stacks.batch_jobs import BatchJobs

    app = App(context={**project_context(), "pricepipe:batchMaxVcpus": "1"})
    config = DeployConfig.from_context(app.node)
    assert config.batch_max_vcpus == 1
    data = DataStack(app, "Data", config=config)
    with pytest.raises(ValueError, match="batchMaxVcpus"):
        BatchJobs(Stack(app, "Jobs"), "Jobs", data=data, config=config)
    with pytest.raises(ValueError, match="batchMaxVcpus"):
        DeployConfig(batch_max_vcpus=0)
