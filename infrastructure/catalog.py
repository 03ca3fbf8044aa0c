"""What the pipeline is made of, declared once for the CDK stacks and the local cloud alike.

Plain Python (no CDK import), so the local cloud can create the very same functions, with the same
handlers, environment and state-machine substitutions, as ``cdk deploy`` does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pricepipe.settings import DEFAULTS, contract_prefix  # the bucket layout every grant below names

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"
STATE_MACHINES_DIR = Path(__file__).resolve().parent / "statemachines"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]+)\}")

PROJECT = "pricepipe"
# CloudFormation stacks, in deploy order (pipectl --target aws reads their outputs)
DATA_STACK = "PricePipe-Data"
PIPELINE_STACK = "PricePipe-Pipeline"
SERVING_STACK = "PricePipe-Serving"
MONITORING_STACK = "PricePipe-Monitoring"
STACKS = (DATA_STACK, PIPELINE_STACK, SERVING_STACK, MONITORING_STACK)
LAMBDA_RUNTIME = "python3.12"


@dataclass(frozen=True)
class Grant:
    """S3 access a function needs: ``read`` lists and gets, ``write`` puts and deletes, under one
    prefix of one of the pipeline's buckets."""

    bucket: str  # landing | lake | artifacts
    prefix: str
    access: str  # read | write
    # The prefix is a per-contract root (landing, quarantine): the grant is on the deployed
    # contract's folder under it (pricepipe.settings.contract_prefix), see contract_grants.
    per_contract: bool = False

    def for_contract(self, dataset: str) -> Grant:
        """The grant as deployed for contract ``dataset``."""
        if not self.per_contract:
            return self
        return Grant(self.bucket, contract_prefix(self.prefix, dataset), self.access)


def contract_grants(grants: tuple[Grant, ...], dataset: str) -> tuple[Grant, ...]:
    """A function's grants for the deployed contract: per-contract prefixes resolved to its folders."""
    return tuple(grant.for_contract(dataset) for grant in grants)


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda function: a handler in ``functions/<folder>`` over the shared layer."""

    key: str  # short name; the deployed name is f"{PROJECT}-{key}"
    folder: str
    handler: str
    description: str
    memory_mb: int = 512
    timeout_s: int = 60
    substitution: str | None = None  # its ARN's placeholder in the ASL files
    needs_database: bool = True
    needs_data_layer: bool = True  # pandas/pyarrow (AWS SDK for pandas managed layer)
    # MLflow's client (mlflow-skinny + SQLAlchemy + Alembic, ~100 MB): a layer of its own, since the
    # shared dependency layer must stay small enough to sit beside the pandas layer (250 MB in all)
    needs_registry: bool = False
    s3: tuple[Grant, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()  # on top of environment(): what only this function needs
    # Lambda's reserved concurrency (None: the account's unreserved pool). AWS keeps at least 100
    # executions unreserved and new accounts may have a quota of 10 in all, so a reservation can make
    # the deploy fail: https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html
    reserved_concurrency: int | None = None

    @property
    def name(self) -> str:
        return f"{PROJECT}-{self.key}"

    @property
    def code_dir(self) -> Path:
        return FUNCTIONS_DIR / self.folder


@dataclass(frozen=True)
class StateMachineSpec:
    key: str
    file: str
    description: str
    substitutions: tuple[str, ...] = field(default=())
    substitution: str | None = None  # its own ARN's placeholder in other ASL files (a flow starting it)
    # Where its DISTRIBUTED Map's item manifests are (artifacts bucket), if it has one: its role reads them
    manifest_prefix: str = DEFAULTS.manifest_prefix

    @property
    def name(self) -> str:
        return f"{PROJECT}-{self.key}"

    @property
    def path(self) -> Path:
        return STATE_MACHINES_DIR / self.file


# -- serving ---------------------------------------------------------------------------------------
SERVING_FUNCTION = "api"  # the catalog key of the function behind API Gateway
LIVE_ALIAS = "live"  # API Gateway invokes this alias; only the promotion flow moves it (serving_stack.py)
# The description of the version the alias starts on, published with the function: not of
# pricepipe.promotion.deployer's "model <name>@<version>" form, so it reads as a version serving no model.
BOOTSTRAP_VERSION_DESCRIPTION = f"{PROJECT}: no model deployed yet (bootstrap version, published with the function)"
MODEL_LAYER = f"{PROJECT}-model"  # layer versions carrying a lean model (pricepipe.serving.model_layer)
# SSM: the champion's model layer, as the promotion flow last recorded it (no template reads it)
MODEL_LAYER_PARAMETER = f"/{PROJECT}/serving/model-layer-arn"
PREDICTION_LOG_MARKER = "prediction_log"  # the API's log message for predictions; the subscription's filter
# The subscription filter's pattern: the marker as a quoted term, as FilterPattern.all_terms writes it.
PREDICTION_LOG_FILTER = f'"{PREDICTION_LOG_MARKER}"'
# OAuth2 on the API (a Cognito user pool on AWS, the local cloud's on a laptop): the resource server,
# its scopes, and the scope each path needs. API Gateway's Cognito authorizer lets a request through
# when its access token carries one of the method's scopes; the local gateway reads the same table.
# The docs paths need none (serving_stack.PUBLIC_DOC_PATHS).
API_RESOURCE_SERVER = f"{PROJECT}-api"
API_CLIENTS_POOL = f"{PROJECT}-api-clients"  # the user pool of the API's app clients
API_USAGE_PLAN = f"{PROJECT}-api-default"  # the usage plan every client's API key joins
API_SCOPES = {
    "predict": "Price rows and check health: POST /predict, GET /health",
    "admin": "Read what is served: GET /model-info and /metrics",
}
ADMIN_PATHS = ("/model-info", "/metrics")  # each its own API Gateway resource, needing the admin scope


def api_scope(name: str) -> str:
    """A scope as a token carries it and a method lists it: ``pricepipe-api/predict``."""
    if name not in API_SCOPES:
        raise ValueError(f"unknown API scope {name!r}: one of {', '.join(API_SCOPES)}")
    return f"{API_RESOURCE_SERVER}/{name}"


def required_scopes(path: str) -> tuple[str, ...]:
    """The scopes a request to ``path`` must carry one of (``admin`` for :data:`ADMIN_PATHS`)."""
    return (api_scope("admin"),) if path in ADMIN_PATHS else (api_scope("predict"),)


# What the promotion functions act on (pricepipe.settings.Settings has the same defaults).
PROMOTION_ENVIRONMENT = (
    ("PRICEPIPE_SERVING_FUNCTION", f"{PROJECT}-{SERVING_FUNCTION}"),
    ("PRICEPIPE_SERVING_ALIAS", LIVE_ALIAS),
    ("PRICEPIPE_MODEL_LAYER_NAME", MODEL_LAYER),
    ("PRICEPIPE_MODEL_LAYER_PARAMETER", MODEL_LAYER_PARAMETER),
)
# -- layers ----------------------------------------------------------------------------------------
# Fixed names of the layers the stacks publish (a fixed name lets a policy grant ``layer:<name>:*``,
# see infrastructure/stacks/layer_names.py), and AWS's managed layer, published per Python version.
DEPS_LAYER = f"{PROJECT}-deps"  # the shared package's third-party dependencies (layers/requirements/pricepipe-deps.txt)
NUMPY_LAYER = f"{PROJECT}-numpy"  # numpy where the AWS SDK for pandas layer is not attached
MLFLOW_LAYER = f"{PROJECT}-mlflow"  # MLflow's registry client (needs_registry)
PACKAGE_LAYER = f"{PROJECT}-package"  # the shared pricepipe package
SERVING_LAYER = f"{PROJECT}-serving"  # the serving function's own dependencies (layers/requirements/serving-deps.txt)
# AWS's AWS SDK for pandas layer (needs_data_layer): AWSSDKPandas-Python312 for python3.12
PANDAS_LAYER = f"AWSSDKPandas-Python{LAMBDA_RUNTIME.removeprefix('python').replace('.', '')}"
MLFLOW_ARTIFACTS = Grant("artifacts", DEFAULTS.mlflow_artifact_prefix, "read")  # registered models' lean artifacts


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec(
        key="etl-discover",
        folder="etl",
        handler="handler.discover",
        description="ETL: list landing files not yet taken and write the run's manifest",
        memory_mb=512,
        timeout_s=120,
        substitution="EtlDiscoverFunctionArn",
        s3=(
            Grant("landing", DEFAULTS.landing_prefix, "read", per_contract=True),
            Grant("artifacts", DEFAULTS.manifest_prefix, "write"),
        ),
    ),
    FunctionSpec(
        key="etl-load",
        folder="etl",
        handler="handler.load_file",
        description="ETL: validate one landing file, quarantine bad rows, load Postgres and the lake",
        memory_mb=1024,
        timeout_s=900,
        substitution="EtlLoadFunctionArn",
        s3=(
            Grant("landing", DEFAULTS.landing_prefix, "read", per_contract=True),
            Grant("landing", DEFAULTS.quarantine_prefix, "write", per_contract=True),
            Grant("lake", DEFAULTS.lake_prefix, "write"),
        ),
    ),
    FunctionSpec(
        key="etl-summarize",
        folder="etl",
        handler="handler.summarize",
        description="ETL: totals of a run from the ingestion ledger, and its metrics",
        memory_mb=256,
        timeout_s=60,
        substitution="EtlSummarizeFunctionArn",
    ),
    FunctionSpec(
        key="training-prepare",
        folder="training",
        handler="handler.prepare",
        description="Training: choose the window and check there is enough data to train on",
        memory_mb=256,
        timeout_s=60,
        substitution="TrainingPrepareFunctionArn",
    ),
    FunctionSpec(
        key="training-evaluate",
        folder="training",
        handler="handler.evaluate",
        description="Training: challenger vs champion on the same most-recent holdout, and the decision",
        memory_mb=1024,
        timeout_s=300,
        substitution="TrainingEvaluateFunctionArn",
        s3=(
            Grant("artifacts", DEFAULTS.training_results_prefix, "read"),
            Grant("artifacts", DEFAULTS.mlflow_artifact_prefix, "read"),
        ),
    ),
    FunctionSpec(
        key="training-job-failed",
        folder="training",
        handler="handler.job_failed",
        description="Training: report a failed training job (metric, log); the champion is untouched",
        memory_mb=256,
        timeout_s=60,
        substitution="TrainingJobFailedFunctionArn",
        needs_database=False,
        s3=(Grant("artifacts", DEFAULTS.training_results_prefix, "read"),),
    ),
    FunctionSpec(
        key="api",
        folder="api",
        handler="app.handler",
        description="Serving: the FastAPI prediction API through Mangum; model from its model layer",
        memory_mb=512,
        timeout_s=29,
        needs_database=False,
        needs_data_layer=False,
    ),
    FunctionSpec(
        key="prediction-writer",
        folder="prediction_writer",
        handler="handler.handler",
        description="Serving: prediction logs (CloudWatch Logs subscription) into monitoring.predictions",
        memory_mb=256,
        timeout_s=60,
        needs_data_layer=False,
    ),
    FunctionSpec(
        key="drift-check",
        folder="drift",
        handler="handler.check",
        description="Drift: newest days vs the champion's training reference; report, metrics, decision",
        memory_mb=1024,
        timeout_s=300,
        substitution="DriftCheckFunctionArn",
        s3=(
            Grant("artifacts", DEFAULTS.mlflow_artifact_prefix, "read"),
            Grant("artifacts", DEFAULTS.drift_report_prefix, "write"),
        ),
    ),
    FunctionSpec(
        key="migrate",
        folder="migrate",
        handler="handler.on_event",
        description="Custom resource: apply database migrations and sync the contract's tables",
        memory_mb=256,
        timeout_s=300,
    ),
    FunctionSpec(
        key="promotion-prepare",
        folder="promotion",
        handler="handler.prepare",
        description="Promotion: check the version, choose the route, take the promotion lock, snapshot the alias",
        memory_mb=512,
        timeout_s=60,
        substitution="PromotionPrepareFunctionArn",
        needs_data_layer=False,
        needs_registry=True,
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-gate",
        folder="promotion",
        handler="handler.gate",
        description="Promotion (auto): the metric gate, challenger vs champion on the same recent holdout",
        memory_mb=1024,
        timeout_s=300,
        substitution="PromotionGateFunctionArn",
        s3=(MLFLOW_ARTIFACTS,),
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-deploy",
        folder="promotion",
        handler="handler.deploy",
        description="Promotion: publish the model layer and a serving function version carrying it (no traffic)",
        memory_mb=512,
        timeout_s=180,
        substitution="PromotionDeployFunctionArn",
        needs_data_layer=False,
        s3=(MLFLOW_ARTIFACTS,),
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-request-approval",
        folder="promotion",
        handler="handler.request_approval",
        description="Promotion (manual): keep the task token for pipectl approve / reject",
        memory_mb=256,
        timeout_s=30,
        substitution="PromotionRequestApprovalFunctionArn",
        needs_data_layer=False,
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-start-canary",
        folder="promotion",
        handler="handler.start_canary",
        description="Promotion (canary): give the new version its share of the live alias's traffic",
        memory_mb=256,
        timeout_s=30,
        substitution="PromotionStartCanaryFunctionArn",
        needs_data_layer=False,
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-check-canary",
        folder="promotion",
        handler="handler.check_canary",
        description="Promotion (canary): error rate, p99 latency and prediction shift of the canary version",
        memory_mb=512,
        timeout_s=60,
        substitution="PromotionCheckCanaryFunctionArn",
        needs_data_layer=False,
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-finalize",
        folder="promotion",
        handler="handler.finalize",
        description="Promotion: all traffic to the new version; champion in MLflow; the model layer parameter",
        memory_mb=512,
        timeout_s=60,
        substitution="PromotionFinalizeFunctionArn",
        needs_data_layer=False,
        needs_registry=True,
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-abandon",
        folder="promotion",
        handler="handler.abandon",
        description="Promotion: end without promoting (canary rolled back, rejected, failed) and record why",
        memory_mb=512,
        timeout_s=60,
        substitution="PromotionAbandonFunctionArn",
        needs_data_layer=False,
        needs_registry=True,
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="promotion-command",
        folder="promotion",
        handler="handler.command",
        description="Promotion commands of pipectl: approve, reject, rollback, history, status",
        memory_mb=512,
        timeout_s=120,
        needs_data_layer=False,
        needs_registry=True,
        s3=(MLFLOW_ARTIFACTS,),
        environment=PROMOTION_ENVIRONMENT,
    ),
    FunctionSpec(
        key="scoring-plan",
        folder="scoring",
        handler="handler.plan",
        description="Scoring: resolve the model, cut the input files into parts and write the run's manifest",
        memory_mb=512,
        timeout_s=300,
        substitution="ScoringPlanFunctionArn",
        s3=(
            Grant("landing", DEFAULTS.scoring_input_prefix, "read"),
            Grant("artifacts", DEFAULTS.scoring_manifest_prefix, "write"),
            MLFLOW_ARTIFACTS,
        ),
    ),
    FunctionSpec(
        key="scoring-score",
        folder="scoring",
        handler="handler.score_part",
        description="Scoring: check one part's rows against the contract, price them, write Parquet predictions",
        memory_mb=1024,
        timeout_s=900,
        substitution="ScoringScoreFunctionArn",
        s3=(
            Grant("landing", DEFAULTS.scoring_input_prefix, "read"),
            Grant("artifacts", DEFAULTS.scores_prefix, "write"),
            MLFLOW_ARTIFACTS,
        ),
    ),
    FunctionSpec(
        key="scoring-summarize",
        folder="scoring",
        handler="handler.summarize",
        description="Scoring: a run's totals (rows in, scored, rejected) into monitoring.scoring_runs",
        memory_mb=256,
        timeout_s=60,
        substitution="ScoringSummarizeFunctionArn",
    ),
)


@dataclass(frozen=True)
class JobSpec:
    """A container job on AWS Batch (Fargate); the local cloud runs its command as a process."""

    key: str
    dockerfile: str  # relative to the repository root, which is the build context
    command: tuple[str, ...]
    description: str
    vcpus: float = 1.0
    memory_mb: int = 4096
    timeout_s: int = 3600
    queue_substitution: str = ""
    definition_substitution: str = ""

    @property
    def name(self) -> str:
        return f"{PROJECT}-{self.key}"


TRAINING_JOB = JobSpec(
    key="training",
    dockerfile="training_jobs/Dockerfile",
    command=(
        *("python", "-m", "training_jobs.train"),
        *("--window-days", "Ref::window_days", "--holdout-days", "Ref::holdout_days", "--end", "Ref::end"),
        *("--time-budget-s", "Ref::time_budget_s", "--result-uri", "Ref::result_uri"),
    ),
    description="Train, track in MLflow and register a price model",
    vcpus=2.0,
    memory_mb=8192,
    timeout_s=3600,
    queue_substitution="TrainingJobQueueArn",
    definition_substitution="TrainingJobDefinitionArn",
)
JOBS: tuple[JobSpec, ...] = (TRAINING_JOB,)
# Set in every job's container on top of catalog.environment(): a job never phones home.
JOB_EXTRA_ENVIRONMENT = {"MLFLOW_DISABLE_TELEMETRY": "true", "MPLBACKEND": "Agg"}

# A state machine that another one starts comes before it: the local cloud creates them in this order.
STATE_MACHINES: tuple[StateMachineSpec, ...] = (
    StateMachineSpec(
        key="promotion",
        file="promotion.asl.json",
        description="A registered version to the live alias: manual, auto, canary or blue-green; rollback",
        substitutions=(
            "PromotionPrepareFunctionArn",
            "PromotionGateFunctionArn",
            "PromotionDeployFunctionArn",
            "PromotionRequestApprovalFunctionArn",
            "PromotionStartCanaryFunctionArn",
            "PromotionCheckCanaryFunctionArn",
            "PromotionFinalizeFunctionArn",
            "PromotionAbandonFunctionArn",
        ),
        substitution="PromotionStateMachineArn",
    ),
    StateMachineSpec(
        key="etl",
        file="etl.asl.json",
        description="Landing files -> validated rows in PostgreSQL and the Parquet lake",
        substitutions=("EtlDiscoverFunctionArn", "EtlLoadFunctionArn", "EtlSummarizeFunctionArn"),
    ),
    StateMachineSpec(
        key="training",
        file="training.asl.json",
        description="Batch training job, MLflow registration, challenger vs champion",
        substitutions=(
            "TrainingPrepareFunctionArn",
            "TrainingJobQueueArn",
            "TrainingJobDefinitionArn",
            "TrainingJobFailedFunctionArn",
            "TrainingEvaluateFunctionArn",
            "PromotionStateMachineArn",
        ),
        substitution="TrainingStateMachineArn",
    ),
    StateMachineSpec(
        key="drift",
        file="drift.asl.json",
        description="Drift of the newest days against the champion's reference; starts training when over threshold",
        substitutions=("DriftCheckFunctionArn", "TrainingStateMachineArn"),
    ),
    StateMachineSpec(
        key="scoring",
        file="scoring.asl.json",
        description="Batch scoring of an S3 prefix of CSV or Parquet files with a registered model",
        substitutions=("ScoringPlanFunctionArn", "ScoringScoreFunctionArn", "ScoringSummarizeFunctionArn"),
        manifest_prefix=DEFAULTS.scoring_manifest_prefix,
    ),
)


def function(key: str) -> FunctionSpec:
    return next(f for f in FUNCTIONS if f.key == key)


def function_layers(spec: FunctionSpec) -> tuple[str, ...]:
    """The names of the layers a function is deployed with, in Lambda's extraction order (a later
    layer's files win where paths collide): the managed pandas layer (or our numpy) first, our pinned
    dependencies after it, the shared package last. The serving function has its own dependencies and
    no numpy; its model layer is the promotion flow's to attach, after these (SERVING_FUNCTION_LAYERS).
    The stacks and the local cloud both attach exactly these."""
    if spec.key == SERVING_FUNCTION:
        return (SERVING_LAYER, PACKAGE_LAYER)
    return (
        PANDAS_LAYER if spec.needs_data_layer else NUMPY_LAYER,
        DEPS_LAYER,
        *((MLFLOW_LAYER,) if spec.needs_registry else ()),
        PACKAGE_LAYER,
    )


def state_machine(key: str) -> StateMachineSpec:
    return next(s for s in STATE_MACHINES if s.key == key)


def placeholders(spec: StateMachineSpec) -> set[str]:
    return set(PLACEHOLDER.findall(spec.path.read_text(encoding="utf-8")))


def render_definition(spec: StateMachineSpec, values: dict[str, str]) -> str:
    """The ASL with every ``${Name}`` replaced: what CDK's definition_substitutions do at deploy."""
    return substitute(spec.path.read_text(encoding="utf-8"), values, where=spec.file)


def substitute(text: str, values: dict[str, str], *, where: str) -> str:
    """``text`` (an ASL definition, e.g. the staged copy a template deploys) with every ``${Name}`` replaced."""
    missing = set(PLACEHOLDER.findall(text)) - values.keys()
    if missing:
        raise KeyError(f"{where} needs values for {', '.join(sorted(missing))}")
    rendered = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    json.loads(rendered)  # a bad substitution must fail here, not inside the engine
    return rendered


def environment(
    service: str,
    *,
    landing_bucket: str,
    lake_bucket: str,
    artifacts_bucket: str,
    database_secret_arn: str | None,
    contract: str,
    stage: str,
) -> dict[str, str]:
    """Environment of a function or job: the same keys on AWS and the local cloud; values differ."""
    env = {
        "PRICEPIPE_STAGE": stage,
        "PRICEPIPE_CONTRACT": contract,
        "PRICEPIPE_LANDING_BUCKET": landing_bucket,
        "PRICEPIPE_LAKE_BUCKET": lake_bucket,
        "PRICEPIPE_ARTIFACTS_BUCKET": artifacts_bucket,
        "POWERTOOLS_SERVICE_NAME": service,
    }
    if database_secret_arn:
        env["PRICEPIPE_DATABASE_SECRET_ARN"] = database_secret_arn
    return env


def function_environment(
    spec: FunctionSpec,
    *,
    landing_bucket: str,
    lake_bucket: str,
    artifacts_bucket: str,
    database_secret_arn: str,
    contract: str,
    stage: str,
) -> dict[str, str]:
    """Environment of a function (see :func:`environment`)."""
    return environment(
        spec.name,
        landing_bucket=landing_bucket,
        lake_bucket=lake_bucket,
        artifacts_bucket=artifacts_bucket,
        database_secret_arn=database_secret_arn if spec.needs_database else None,
        contract=contract,
        stage=stage,
    ) | dict(spec.environment)


def camel(key: str) -> str:
    """``etl-load`` -> ``EtlLoad``: how a key appears in construct ids and stack output names."""
    return "".join(part.capitalize() for part in key.split("-"))


def log_group_name(function_name: str) -> str:
    """The CloudWatch Logs group a function writes to: the stacks name each function's own group so,
    the local cloud writes there and ``pipectl logs`` reads it, on both targets. Lambda's default name,
    so the console's and the CLI's "view logs" find it too."""
    return f"/aws/lambda/{function_name}"


def function_output(spec: FunctionSpec) -> str:
    """The stack output holding a function's name (read by ``pipectl --target aws``)."""
    return f"{camel(spec.key)}FunctionName"


def state_machine_output(spec: StateMachineSpec) -> str:
    return f"{camel(spec.key)}StateMachineArn"
