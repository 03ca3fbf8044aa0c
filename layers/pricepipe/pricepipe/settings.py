"""The one settings object, read from the environment once per process.

The same code runs on AWS, LocalStack and the local cloud: only these values differ. AWS endpoints
are not settings here; boto3 reads the SDK's standard ``AWS_ENDPOINT_URL*`` variables itself.

The environment is read by :func:`environment_values`, a plain pydantic model's few lines, rather
than by pydantic-settings: every field is a scalar that pydantic parses from its text, and importing
pydantic-settings (with python-dotenv and its CLI, cloud and file sources) was ~50 ms of the serving
function's cold start for reading a dozen variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator

ENV_PREFIX = "PRICEPIPE_"


class Settings(BaseModel):
    """Configuration of every function, job and command, from ``PRICEPIPE_*`` variables."""

    # by field name only: a field's validation_alias lists the variables it is read from (environment_values)
    model_config = ConfigDict(
        extra="ignore", frozen=True, validate_default=True, validate_by_name=True, validate_by_alias=False
    )

    def __init__(self, **values: Any) -> None:
        """The environment's values (:func:`environment_values`), those given here winning over them."""
        super().__init__(**{**environment_values(), **values})

    stage: Literal["dev", "test", "prod"] = "dev"
    region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("PRICEPIPE_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    # The data contract: a bundled contract's name, a file path, or an s3:// URI.
    contract: str = "hotel_rates"

    # The bucket layout. These defaults are the one definition of every prefix: the stacks grant IAM
    # access and set lifecycle rules on them, and the CLI lands and counts files under them. Landing
    # and quarantine are roots: each contract has its folder under them (contract_landing_prefix).
    landing_bucket: str = "pricepipe-landing"
    landing_prefix: str = "landing/"
    quarantine_prefix: str = "quarantine/"
    lake_bucket: str = "pricepipe-lake"
    lake_prefix: str = "processed_features/"
    artifacts_bucket: str = "pricepipe-artifacts"
    manifest_prefix: str = "manifests/etl/"
    training_results_prefix: str = "training/results/"  # the training job's result documents
    drift_report_prefix: str = "drift/reports/"  # drift checks' HTML reports
    # Batch scoring (pricepipe.scoring): files to score land under scoring_input_prefix of the landing
    # bucket; predictions and rejected rows go under scores_prefix<run>/ of the artifacts bucket.
    scoring_input_prefix: str = "scoring/"
    scoring_manifest_prefix: str = "manifests/scoring/"
    scores_prefix: str = "scores/"

    # Database: a Secrets Manager secret (RDS's JSON, or {"dsn": ...}) wins over a plain URL.
    database_secret_arn: str | None = None
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PRICEPIPE_DATABASE_URL", "DATABASE_URL")
    )

    metrics_namespace: str = "PricePipeline"
    service_name: str = Field(
        default="pricepipe",
        validation_alias=AliasChoices("PRICEPIPE_SERVICE_NAME", "POWERTOOLS_SERVICE_NAME"),
    )

    # -- training, tracking and the model registry (pricepipe.training, pricepipe.registry) ----------
    # MLflow's store is a database URI, no server. Unset: the pipeline's own database, schema
    # `mlflow` (migration 0002), derived from the same DSN, so one secret serves both.
    mlflow_tracking_uri: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PRICEPIPE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
    )
    mlflow_experiment: str = "price-model"
    mlflow_artifact_prefix: str = "mlflow/"  # artifacts: s3://<artifacts_bucket>/<prefix><experiment>
    model_name: str = "price-model"  # the registered model
    training_window_days: int = Field(default=365, ge=2)  # days of data up to the latest event date
    holdout_days: int = Field(default=28, ge=1)  # most recent days, scored once, never trained on
    validation_days: int | None = Field(default=None, ge=1)  # search's validation days; None: holdout_days
    # A contract without an event time holds out and validates on shares of its keys, by a seeded
    # hash (pricepipe.training.data.split); their sum must stay below 1 (the job refuses it otherwise).
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    validation_fraction: float | None = Field(default=None, gt=0, lt=1)  # None: holdout_fraction
    time_budget_s: float = Field(default=300.0, gt=0)  # hyperparameter search wall clock
    search_max_trials: int = Field(default=20, ge=1)  # per model family; bounds the search when time does not
    max_tree_levels: int = Field(default=800, ge=1)  # trees x depth per model: the lean evaluator's cost
    refit_full_window: bool = True  # serve the chosen settings refit on the whole window, holdout included
    seed: int = 42
    promotion_margin: float = Field(default=0.01, ge=0, lt=1)  # challenger RMSE must be this fraction lower

    # -- drift checks (pricepipe.drift) -------------------------------------------------------------
    # A feature drifts only when an effect size crosses its threshold AND its test's p-value is below
    # drift_pvalue: effect sizes alone fire on small windows (sampling noise), p-values alone on
    # large ones (any difference is "significant" at 100,000 rows).
    drift_psi_threshold: float = Field(default=0.2, gt=0)  # PSI rule of thumb: <0.1 stable, >0.25 major shift
    drift_ks_threshold: float = Field(default=0.1, gt=0, le=1)  # largest gap between the two CDFs
    drift_pvalue: float = Field(default=0.01, gt=0, lt=1)  # KS and chi-square; ~30 features are tested per run
    drift_min_rows: int = Field(default=100, ge=1)  # fewer current rows: "not enough data", not a verdict
    drift_window_days: int = Field(default=7, ge=1)  # the current window: the last N event days
    drift_share_threshold: float = Field(default=0.3, gt=0, le=1)  # share of drifted features = dataset drift
    performance_rmse_ratio_threshold: float = Field(default=1.25, ge=1)  # current RMSE / training holdout RMSE
    performance_mae_ratio_threshold: float = Field(default=1.25, ge=1)  # current MAE / training holdout MAE
    performance_min_rows: int = Field(default=30, ge=1)  # rows whose actual price has arrived
    # monitoring.predictions keeps the current month and this many before it; older month partitions
    # are dropped whole by the drift function's upkeep (pricepipe.partitions.maintain). 0: keep all.
    # 13 keeps a year-on-year comparison of the same month possible.
    prediction_retention_months: int = Field(default=13, ge=0, le=1200)

    # -- serving (functions/api, pricepipe.serving) -------------------------------------------------
    # One POST /predict takes at most this many rows; more is a 413 naming both numbers. 1,000 rows
    # of hotel_rates are ~0.75 MB of JSON, well inside Lambda's 6 MB synchronous payload; DESIGN §5
    # budgets a 1,000-row request (benchmarks/bench_serve measures it).
    max_batch_rows: int = Field(default=1000, ge=1, le=10_000)

    # -- batch scoring (pricepipe.scoring, infrastructure/statemachines/scoring.asl.json) -----------
    # A file is scored in parts, one Distributed Map child each: a CSV by byte ranges of about
    # scoring_part_bytes (cut at line ends), a Parquet file by runs of whole row groups of at least
    # scoring_part_rows rows. A run's input may override both.
    scoring_part_bytes: int = Field(default=64 * 2**20, ge=1024)
    scoring_part_rows: int = Field(default=250_000, ge=1)

    # -- promotion (pricepipe.promotion, infrastructure/statemachines/promotion.asl.json) -----------
    # How a registered version reaches the `live` alias of the serving function. A run's input may
    # override the strategy, canary_percent and bake_seconds. Canary thresholds judge the canary's own
    # Lambda version over its bake: an absurd model errs rarely, so its predictions are compared too.
    promotion_strategy: Literal["manual", "auto", "canary", "blue-green"] = "canary"
    canary_percent: float = Field(default=10.0, gt=0, lt=100)  # share of live traffic the canary gets
    canary_bake_seconds: int = Field(default=600, ge=1, le=86_400)  # Wait state before each health check
    canary_max_bakes: int = Field(default=3, ge=1, le=20)  # bakes tried while there is too little traffic to judge
    canary_min_requests: int = Field(default=20, ge=1)  # fewer canary invocations: not enough traffic
    canary_min_predictions: int = Field(default=50, ge=10)  # predicted rows per version for the distribution check
    canary_max_error_rate: float = Field(default=0.01, ge=0, le=1)  # (function errors + 5xx) / invocations
    canary_max_p99_ms: float = Field(default=500.0, gt=0)  # p99 of the canary version's Lambda Duration
    canary_max_prediction_psi: float = Field(default=0.25, gt=0)  # canary vs champion predictions, same window
    # Too little traffic after canary_max_bakes: roll back (safe) or promote (CodeDeploy's "no alarm" rule).
    canary_on_insufficient_traffic: Literal["rollback", "promote"] = "rollback"
    manual_approval_timeout_s: int = Field(default=86_400, ge=1, le=31_536_000)  # then the request expires
    # auto strategy: holdout R² floor on top of beating the champion; 0 = better than the holdout's mean
    auto_min_r2: float = Field(default=0.0, le=1)
    # What promotion acts on; the same names as infrastructure/catalog.py (tests/unit/test_catalog.py).
    serving_function: str = "pricepipe-api"
    serving_alias: str = "live"
    model_layer_name: str = "pricepipe-model"
    model_layer_parameter: str = "/pricepipe/serving/model-layer-arn"  # SSM: the champion's layer, a record
    # API Gateway throttling (stage and usage plan) and the local gateway's token bucket: steady
    # requests per second, and how many may arrive at once above it.
    api_throttle_rate: float = Field(default=50.0, gt=0)
    api_throttle_burst: int = Field(default=100, ge=1)

    def contract_landing_prefix(self, dataset: str) -> str:
        """Where a contract's files land: ``landing/<contract name>/``. The ETL takes only files under
        its own contract's folder, so a file is never loaded with another dataset's contract."""
        return contract_prefix(self.landing_prefix, dataset)

    def contract_quarantine_prefix(self, dataset: str) -> str:
        """Where a contract's rejected files and rows go: ``quarantine/<contract name>/``."""
        return contract_prefix(self.quarantine_prefix, dataset)

    @model_validator(mode="after")
    def _no_plaintext_credentials_in_prod(self) -> Settings:
        url = self.database_url.get_secret_value() if self.database_url else ""
        if self.stage == "prod" and not self.database_secret_arn and urlsplit(url).password:
            raise ValueError(
                "stage=prod refuses a DATABASE_URL carrying a password: "
                "set PRICEPIPE_DATABASE_SECRET_ARN to the Secrets Manager secret instead"
            )
        for name in PREFIXES:
            if not getattr(self, name).endswith("/"):
                raise ValueError(f"{name} must end with '/', got {getattr(self, name)!r}")
        return self


def contract_prefix(root: str, dataset: str) -> str:
    """A contract's folder under one of the per-contract roots (landing, quarantine): the one rule,
    for the ETL, the CLI, the local cloud and the stacks' grants, lifecycle rules and triggers."""
    if not dataset or "/" in dataset:
        raise ValueError(f"a contract's folder needs its name without '/', got {dataset!r}")
    return f"{root}{dataset}/"


PREFIXES = (
    "landing_prefix",
    "quarantine_prefix",
    "lake_prefix",
    "manifest_prefix",
    "training_results_prefix",
    "drift_report_prefix",
    "mlflow_artifact_prefix",
    "scoring_input_prefix",
    "scoring_manifest_prefix",
    "scores_prefix",
)


def environment_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each field's text from the environment, by field name: from ``PRICEPIPE_<FIELD>``, or from the
    variables its ``validation_alias`` names, the first one set winning; names match whatever their
    case (as pydantic-settings matched them). Pydantic then parses each text as its field's type."""
    upper = {name.upper(): value for name, value in (os.environ if environ is None else environ).items()}
    found: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        candidates = alias.choices if isinstance(alias, AliasChoices) else [alias or f"{ENV_PREFIX}{name}"]
        for candidate in candidates:
            if isinstance(candidate, str) and candidate.upper() in upper:
                found[name] = upper[candidate.upper()]
                break
    return found


# Every field at its default, environment unread: what the stacks deploy the functions with.
DEFAULTS = Settings.model_construct()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (a Lambda container reads them at cold start)."""
    return Settings()
