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
    check_fractions,
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
    from pricepipe.registry import ReconnectingClient
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
    end: dt.date | None = None  # last (event, or load) date to train on; None: the latest in the data
    holdout_fraction: float = 0.2  # without an event time: keys held out (see training.data.split)
    validation_fraction: float | None = None

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
            "holdout_fraction": settings.holdout_fraction,
            "validation_fraction": settings.validation_fraction,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self, contract: Contract | None = None) -> None:
        """Refuse options that cannot give a train part, a validation part and a holdout: by days, or
        for a ``contract`` without an event time by key fractions."""
        if self.source not in ("postgres", "lake"):
            raise TrainingDataError(f"source must be postgres or lake, got {self.source!r}")
        for name in ("window_days", "holdout_days", "max_trials", "max_tree_levels"):
            if getattr(self, name) < 1:
                raise TrainingDataError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.time_budget_s <= 0:
            raise TrainingDataError(f"time-budget-s must be positive, got {self.time_budget_s}")
        if contract is not None and contract.event_time is None:
            check_fractions(self.holdout_fraction, self.validation_fraction or self.holdout_fraction)
            return
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
            holdout_fraction=self.holdout_fraction,
            validation_fraction=self.validation_fraction,
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
    """The window ending at ``options.end`` (default: the latest event date in the source, or
    without an event time the latest load date)."""
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


def holdout_of(window: dict[str, Any]) -> dict[str, Any]:
    """Where the holdout is, as the training flow's evaluation reloads it: a date range, and without
    an event time the key-hash rule that picks it out of that range (``fraction``, ``seed``)."""
    out = {"start": window["holdout_start"], "end": window["holdout_end"], "rows": window["holdout_rows"]}
    if window.get("split") == "key_hash":
        out.update(split="key_hash", fraction=window["holdout_fraction"], seed=window["seed"])
    return out


def run_job(
    options: JobOptions,
    contract: Contract,
    settings: Settings,
    *,
    conn: psycopg.Connection[Any],
    s3: S3Client,
    uri: str | ReconnectingClient,
) -> dict[str, Any]:
    """Load, train, log and register; the result document (see ``training_jobs/train.py``)."""
    from pricepipe import registry

    began = time.monotonic()
    options.check(contract)
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
        "holdout": holdout_of(window),
        "search": {
            "trials": len(outcome.search.trials),
            "seconds": outcome.search.seconds,
            "stopped_by": outcome.search.stopped_by,
        },
        "seed": options.seed,
        "source": options.source,
        "seconds": round(time.monotonic() - began, 3),
    }
