"""Create the pipeline's resources on a running local cloud, from the same catalog as the CDK app.

Functions are created from their real code folders (zipped, as CDK packages them) with the
environment :func:`infrastructure.catalog.function_environment` gives on AWS too, the layers
:func:`infrastructure.catalog.function_layers` names, in its order (stand-ins: see
:func:`layer_stand_in`), and the catalog's reserved concurrency; state machines from the same ASL
files with local ARNs substituted. tests/infrastructure/test_local_parity.py compares all of it with
the synthesized templates.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from infrastructure import catalog
from pipectl.localcloud.cloud import ACCOUNT, REGION, LocalCloud

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.literals import RuntimeType

ROLE_NAME = "pricepipe-local-execution"
SECRET_NAME = "pricepipe/database"  # noqa: S105 - a name, not a password
LAYER_NOTE = "LOCAL-STAND-IN.txt"  # the one file of a local layer version (layer_stand_in)


@dataclass
class Resources:
    """Names and ARNs of what was created; the CLI reads them from the state file."""

    endpoint: str
    region: str
    landing_bucket: str
    lake_bucket: str
    artifacts_bucket: str
    database_secret_arn: str
    database_url: str
    contract: str
    dataset: str = ""  # the contract's name: its files land under landing/<dataset>/
    functions: dict[str, str] = field(default_factory=dict)  # key -> ARN
    state_machines: dict[str, str] = field(default_factory=dict)  # key -> ARN
    job_queues: dict[str, str] = field(default_factory=dict)  # job key -> queue ARN
    job_definitions: dict[str, str] = field(default_factory=dict)  # job key -> definition ARN
    api_key: str = ""  # the value clients send as x-api-key to the gateway
    # OAuth2: the API clients' user pool, its first app client and the token endpoint (auth.py)
    user_pool_id: str = ""
    client_id: str = ""
    client_secret: str = ""
    token_url: str = ""
    gateway_url: str = ""  # set once the daemon's gateway listens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resources:
        return cls(**data)


def zip_folder(folder: Path) -> bytes:
    """A function's code package: the folder's files, without caches."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                # fixed timestamps: the same code gives the same CodeSha256, as CDK's asset hash does
                info = zipfile.ZipInfo(str(path.relative_to(folder)), date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def code_sha256(package: bytes) -> str:
    """A code package's CodeSha256 as Lambda reports it: the base64 of its SHA-256."""
    return base64.b64encode(hashlib.sha256(package).digest()).decode()


def redeploy(lam: LambdaClient, code_dirs: Mapping[str, Path] | None = None) -> list[str]:
    """What ``cdk deploy`` does to a running deployment's functions: every function whose code package
    changed gets the new package on $LATEST (UpdateFunctionCode), nothing is published and no alias
    moves; a code rollout (``pipectl rollout``) takes new serving code to live traffic. Returns the keys
    of the functions updated. ``code_dirs`` replaces the code folder of some functions (by key)."""
    updated = []
    packages: dict[Path, bytes] = {}
    for spec in catalog.FUNCTIONS:
        folder = (code_dirs or {}).get(spec.key, spec.code_dir)
        package = packages.setdefault(folder, zip_folder(folder))
        if lam.get_function_configuration(FunctionName=spec.name)["CodeSha256"] != code_sha256(package):
            lam.update_function_code(FunctionName=spec.name, ZipFile=package)
            updated.append(spec.key)
    return updated


def provision(
    cloud: LocalCloud,
    database_url: str,
    contract: str = "hotel_rates",
    stage: str = "dev",
    function_settings: dict[str, str] | None = None,
    api_key: str | None = None,
    job_settings: dict[str, str] | None = None,
) -> Resources:
    """Create buckets, the database secret, functions and state machines. Idempotent per cloud.

    ``function_settings`` (``PRICEPIPE_*`` variables) are added to every function's environment:
    this deployment's configuration, as a CDK deploy config would set it. ``job_settings`` are
    added to every Batch job definition's environment likewise (e.g. the search's trial count).
    """
    from pricepipe.contract import load_contract

    s3, iam = cloud.client("s3"), cloud.client("iam")
    resources = Resources(
        endpoint=cloud.endpoint,
        region=REGION,
        landing_bucket=f"{catalog.PROJECT}-landing",
        lake_bucket=f"{catalog.PROJECT}-lake",
        artifacts_bucket=f"{catalog.PROJECT}-artifacts",
        database_secret_arn="",
        database_url=database_url,
        contract=contract,
        dataset=load_contract(contract, s3).name,
    )
    for bucket in (resources.landing_bucket, resources.lake_bucket, resources.artifacts_bucket):
        s3.create_bucket(Bucket=bucket)

    secrets = cloud.client("secretsmanager")
    resources.database_secret_arn = secrets.create_secret(
        Name=SECRET_NAME, SecretString=json.dumps({"dsn": database_url})
    )["ARN"]

    role_arn = iam.create_role(
        RoleName=ROLE_NAME,
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]

    lam = cloud.client("lambda")
    layers = _layers(lam)
    packages: dict[Path, bytes] = {}
    for spec in catalog.FUNCTIONS:
        code = packages.setdefault(spec.code_dir, zip_folder(spec.code_dir))
        env = catalog.function_environment(
            spec,
            landing_bucket=resources.landing_bucket,
            lake_bucket=resources.lake_bucket,
            artifacts_bucket=resources.artifacts_bucket,
            database_secret_arn=resources.database_secret_arn,
            contract=contract,
            stage=stage,
        ) | (function_settings or {})
        resources.functions[spec.key] = lam.create_function(
            FunctionName=spec.name,
            Runtime=catalog.LAMBDA_RUNTIME,
            Role=role_arn,
            Handler=spec.handler,
            Code={"ZipFile": code},
            Description=spec.description,
            Timeout=spec.timeout_s,
            MemorySize=spec.memory_mb,
            Environment={"Variables": env},
            Layers=[layers[name] for name in catalog.function_layers(spec)],
        )["FunctionArn"]
        if spec.reserved_concurrency is not None:
            lam.put_function_concurrency(FunctionName=spec.name, ReservedConcurrentExecutions=spec.reserved_concurrency)

    arns = {spec.substitution: resources.functions[spec.key] for spec in catalog.FUNCTIONS if spec.substitution}
    arns.update(_batch(cloud, resources, role_arn, contract, stage, job_settings or {}))
    resources.api_key = _serving(cloud, resources, api_key)
    _clients(cloud, resources)

    sfn = cloud.client("stepfunctions")
    for machine in catalog.STATE_MACHINES:  # in catalog order: one a flow starts exists before that flow
        definition = catalog.render_definition(machine, {k: v for k, v in arns.items() if k in machine.substitutions})
        resources.state_machines[machine.key] = sfn.create_state_machine(
            name=machine.name, definition=definition, roleArn=role_arn, type="STANDARD"
        )["stateMachineArn"]
        if machine.substitution:
            arns[machine.substitution] = resources.state_machines[machine.key]
    return resources


def layer_stand_in(name: str) -> bytes:
    """The content of a local layer version: an empty ``python/`` folder with a note. The local cloud
    attaches each function's layers by name, in the catalog's order, as the stacks do; their packages
    still come from the development virtualenv (its interpreter is not the runtime's CPython, so the
    layer builds, which are for python3.12 x86_64, cannot run in it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(f"python/{LAYER_NOTE}", date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        archive.writestr(info, f"local stand-in for the {name} layer: its packages come from the virtualenv\n")
    return buffer.getvalue()


def _layers(lam: LambdaClient) -> dict[str, str]:
    """One version of every layer a catalog function names (catalog.function_layers); name -> version ARN.

    AWS's managed pandas layer belongs to AWS's account: here it is a layer of the local account under
    the same name (only its name and position are what the stacks give a function)."""
    arns: dict[str, str] = {}
    for spec in catalog.FUNCTIONS:
        for name in catalog.function_layers(spec):
            if name not in arns:
                arns[name] = lam.publish_layer_version(
                    LayerName=name,
                    Description=f"local stand-in of {name}",
                    Content={"ZipFile": layer_stand_in(name)},
                    CompatibleRuntimes=[cast("RuntimeType", catalog.LAMBDA_RUNTIME)],
                    CompatibleArchitectures=["x86_64"],
                )["LayerVersionArn"]
    return arns


def _serving(cloud: LocalCloud, resources: Resources, api_key: str | None) -> str:
    """What the serving stack deploys around the API function; returns the API key's value.

    - the bootstrap version (1, without a model) and the ``live`` alias on it, as the template creates
      them: the API answers 503 "no model deployed yet" until the first promotion publishes a version
      carrying a model layer, and from then on only the promotion flow moves the alias;
    - the API's log group and its subscription delivering prediction log lines to the prediction
      writer (the local cloud runs the delivery, see ``cloud.py``);
    - an API key (``api_key``'s value, else a generated one), which the local gateway requires as
      API Gateway does.
    """
    lam, logs = cloud.client("lambda"), cloud.client("logs")
    api = catalog.function(catalog.SERVING_FUNCTION)
    first = lam.publish_version(FunctionName=api.name, Description=catalog.BOOTSTRAP_VERSION_DESCRIPTION)["Version"]
    lam.create_alias(FunctionName=api.name, Name=catalog.LIVE_ALIAS, FunctionVersion=first)
    group = catalog.log_group_name(api.name)
    logs.create_log_group(logGroupName=group)
    logs.put_subscription_filter(
        logGroupName=group,
        filterName="prediction-log",
        filterPattern=catalog.PREDICTION_LOG_FILTER,
        destinationArn=resources.functions["prediction-writer"],
    )
    request: dict[str, Any] = {"name": f"{catalog.PROJECT}-local", "enabled": True}
    if api_key:
        request["value"] = api_key
    return str(cloud.client("apigateway").create_api_key(**request)["value"])


def _clients(cloud: LocalCloud, resources: Resources) -> None:
    """What the serving stack's user pool holds: the resource server with the API's scopes and a first
    app client with the client-credentials grant and every scope; tokens come from the cloud's token
    endpoint (pipectl.localcloud.auth)."""
    from pipectl.localcloud.auth import API_CLIENTS_POOL
    from pipectl.oauth import create_app_client

    cognito = cloud.client("cognito-idp")
    pool = cognito.create_user_pool(PoolName=API_CLIENTS_POOL)["UserPool"]["Id"]
    cognito.create_resource_server(
        UserPoolId=pool,
        Identifier=catalog.API_RESOURCE_SERVER,
        Name=catalog.API_RESOURCE_SERVER,
        Scopes=[{"ScopeName": name, "ScopeDescription": text} for name, text in catalog.API_SCOPES.items()],
    )
    resources.user_pool_id = pool
    resources.client_id, resources.client_secret = create_app_client(
        cognito, pool, "default", tuple(catalog.API_SCOPES)
    )
    resources.token_url = cloud.token_url


def _batch(
    cloud: LocalCloud, resources: Resources, role_arn: str, contract: str, stage: str, settings: dict[str, str]
) -> dict[str, str]:
    """A Fargate compute environment, queue and job definition per catalog job; returns the ASL values."""
    batch, ec2 = cloud.client("batch"), cloud.client("ec2")
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]][:1]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"{catalog.PROJECT}-fargate",
        type="MANAGED",
        computeResources={"type": "FARGATE", "maxvCpus": 4, "subnets": subnets, "securityGroupIds": groups},
        serviceRole=role_arn,
    )["computeEnvironmentArn"]
    values = {}
    for job in catalog.JOBS:
        queue = batch.create_job_queue(
            jobQueueName=job.name,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
        )["jobQueueArn"]
        env = catalog.environment(
            job.name,
            landing_bucket=resources.landing_bucket,
            lake_bucket=resources.lake_bucket,
            artifacts_bucket=resources.artifacts_bucket,
            database_secret_arn=resources.database_secret_arn,
            contract=contract,
            stage=stage,
        )
        definition = batch.register_job_definition(
            jobDefinitionName=job.name,
            type="container",
            platformCapabilities=["FARGATE"],
            timeout={"attemptDurationSeconds": job.timeout_s},
            containerProperties={
                "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{job.name}:local",
                "command": list(job.command),
                "environment": [
                    {"name": k, "value": v} for k, v in {**env, **catalog.JOB_EXTRA_ENVIRONMENT, **settings}.items()
                ],
                "resourceRequirements": [
                    {"type": "VCPU", "value": f"{job.vcpus:g}"},
                    {"type": "MEMORY", "value": str(job.memory_mb)},
                ],
                "executionRoleArn": role_arn,
                "jobRoleArn": role_arn,
            },
        )["jobDefinitionArn"]
        resources.job_queues[job.key] = queue
        resources.job_definitions[job.key] = definition
        values[job.queue_substitution] = queue
        values[job.definition_substitution] = definition
    return values
