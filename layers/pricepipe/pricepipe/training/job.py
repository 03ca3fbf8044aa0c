"""The training job (AWS Batch container, or a local process on the local cloud), as one function.

``run_job`` resolves the window, loads it, trains, logs to MLflow and registers the model as the new
``challenger``, and returns the result document the training state machine reads. The container's
entrypoint (``training_jobs/train.py``) only parses options and builds the clients.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pricepipe.training.data import (
    TrainingData,
    TrainingDataError,
    TrainingWindow,
    latest_event_date_lake,
    latest_event_date_postgres,
    load_lake,
    load_postgres,
)
from pricepipe.training.search import SearchSettings
from pricepipe.training.trainer import TrainingConfig, train

if TYPE_CHECKING:
    import psycopg
    from mypy_boto3_s3 import S3Client

    from pricepipe.contract import Contract
    from pricepipe.settings import Settings

Source = Literal["postgres", "lake"]


@dataclass(frozen=True)
class JobOptions:
    window_days: int
    holdout_days: int
    validation_days: int | None
    time_budget_s: float
    seed: int
    max_trials: int
    max_tree_levels: int
    refit_full_window: bool = True
    source: Source = "postgres"
    end: dt.date | None = None  # last event date to train on; None: the latest in the data

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> JobOptions:
        values: dict[str, Any] = {
            "window_days": settings.training_window_days,
            "holdout_days": settings.holdout_days,
            "validation_days": settings.validation_days,
            "time_budget_s": settings.time_budget_s,
            "seed": settings.seed,
            "max_trials": settings.search_max_trials,
            "max_tree_levels": settings.max_tree_levels,
            "refit_full_window": settings.refit_full_window,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self) -> None:
        """Refuse options that cannot give a train part, a validation part and a holdout."""
        if self.source not in ("postgres", "lake"):
            raise TrainingDataError(f"source must be postgres or lake, got {self.source!r}")
        for name in ("window_days", "holdout_days", "max_trials", "max_tree_levels"):
            if getattr(self, name) < 1:
                raise TrainingDataError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.time_budget_s <= 0:
            raise TrainingDataError(f"time-budget-s must be positive, got {self.time_budget_s}")
        validation = self.validation_days or self.holdout_days
        if self.window_days <= self.holdout_days + validation:
            raise TrainingDataError(
                f"a {self.window_days}-day window leaves no training days after a {self.holdout_days}-day holdout"
                f" and {validation} validation days: widen --window-days or shorten --holdout-days"
            )

    def config(self) -> TrainingConfig:
        return TrainingConfig(
            holdout_days=self.holdout_days,
            validation_days=self.validation_days,
            refit_full_window=self.refit_full_window,
            search=SearchSettings(
                seed=self.seed,
                time_budget_s=self.time_budget_s,
                max_trials=self.max_trials,
                max_tree_levels=self.max_tree_levels,
            ),
        )


def load_window(
    options: JobOptions, contract: Contract, settings: Settings, *, conn: psycopg.Connection[Any], s3: S3Client
) -> TrainingData:
    """The window ending at ``options.end`` (default: the latest event date in the source)."""
    if options.source == "postgres":
        latest = latest_event_date_postgres(conn, contract)
        where = "price_data.processed_features"
    else:
        latest = latest_event_date_lake(s3, settings.lake_bucket, settings.lake_prefix, contract)
        where = f"s3://{settings.lake_bucket}/{settings.lake_prefix}"
    end = options.end or latest
    if end is None:
        raise TrainingDataError(f"{where} holds no {contract.name} rows yet: run the ETL before training")
    window = TrainingWindow.ending(end, options.window_days)
    if options.source == "postgres":
        return load_postgres(conn, contract, window)
    return load_lake(s3, settings.lake_bucket, settings.lake_prefix, contract, window)


def run_job(
    options: JobOptions,
    contract: Contract,
    settings: Settings,
    *,
    conn: psycopg.Connection[Any],
    s3: S3Client,
    uri: str,
) -> dict[str, Any]:
    """Load, train, log and register; the result document (see ``training_jobs/train.py``)."""
    from pricepipe import registry

    began = time.monotonic()
    options.check()
    data = load_window(options, contract, settings, conn=conn, s3=s3)
    outcome = train(data, contract, options.config())
    registered = registry.log_and_register(
        outcome,
        uri=uri,
        conn=conn,
        model_name=settings.model_name,
        experiment=settings.mlflow_experiment,
        artifact_location=f"s3://{settings.artifacts_bucket}/{settings.mlflow_artifact_prefix}{settings.mlflow_experiment}",
    )
    window = outcome.data_window()
    return {
        "status": "succeeded",
        **registered.to_dict(),
        "candidates": {name: c.holdout for name, c in outcome.candidates.items()},
        "baseline": outcome.baseline.holdout,
        "holdout": {"start": window["holdout_start"], "end": window["holdout_end"], "rows": window["holdout_rows"]},
        "search": {
            "trials": len(outcome.search.trials),
            "seconds": outcome.search.seconds,
            "stopped_by": outcome.search.stopped_by,
        },
        "seed": options.seed,
        "source": options.source,
        "seconds": round(time.monotonic() - began, 3),
    }
