"""Training: load a time window of features, search and choose a model, export it for serving.

- :mod:`~pricepipe.training.data`: the training frame from PostgreSQL or the lake, the split (by
  time, or by a seeded key hash without an event time).
- :mod:`~pricepipe.training.search`: LightGBM / HistGradientBoosting candidates, the time-budgeted
  search, the baseline.
- :mod:`~pricepipe.training.trainer`: one training run end to end, without side effects.
- :mod:`~pricepipe.training.export`: fitted trees → :mod:`pricepipe.lean_model` arrays.
- :mod:`~pricepipe.training.job`: the Batch job: load, train, log to MLflow, register.

Tracking and the registry live in :mod:`pricepipe.registry`; the reference statistics a run stores
for drift checks are built by :mod:`pricepipe.drift.reference`. scikit-learn, LightGBM, matplotlib and
MLflow are imported where used, so loading data or scoring with this package stays light.
"""

from pricepipe.training.data import (
    TrainingData,
    TrainingDataError,
    TrainingWindow,
    fit_encoding,
    frame_columns,
    load_lake,
    load_postgres,
    split,
    time_split,
)
from pricepipe.training.metrics import regression_metrics
from pricepipe.training.search import SearchSettings
from pricepipe.training.trainer import ExportError, TrainingConfig, TrainingOutcome, train

__all__ = [
    "ExportError",
    "SearchSettings",
    "TrainingConfig",
    "TrainingData",
    "TrainingDataError",
    "TrainingOutcome",
    "TrainingWindow",
    "fit_encoding",
    "frame_columns",
    "load_lake",
    "load_postgres",
    "regression_metrics",
    "split",
    "time_split",
    "train",
]
