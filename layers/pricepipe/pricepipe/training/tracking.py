"""What a training run leaves in MLflow besides its model version: metrics, parameters and tags, the
plots, the drift reference, the data lineage and the search's record, and the chosen model as an
sklearn pipeline. :func:`pricepipe.registry.log_and_register` calls these inside the run it opens.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pricepipe.registry import json_safe

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pricepipe.training.trainer import TrainingOutcome


def log_run(client: MlflowClient, run_id: str, outcome: TrainingOutcome) -> None:
    """The run's metrics (each search trial's too), parameters, tags and artifacts."""
    import numpy as np
    from mlflow.entities import Metric, Param, RunTag

    from pricepipe.training import plots

    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in outcome.all_metrics().items() if math.isfinite(v)]
    metrics += [
        Metric(f"{t.family}.trial_validation_rmse", t.validation_rmse, now, t.number) for t in outcome.search.trials
    ]
    params = [Param(k, str(v)[:6000]) for k, v in outcome.params().items()]
    tags = [
        RunTag("pricepipe.contract", outcome.contract.name),
        RunTag("pricepipe.model_family", outcome.chosen),
        RunTag("pricepipe.source", outcome.data.source),
    ]
    # MLflow's batch limits: 1000 metrics, 100 params per call
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    client.log_batch(run_id, tags=tags)

    chosen = outcome.model
    actual = outcome.holdout[outcome.contract.target].to_numpy(dtype=float)
    title = f"{outcome.chosen} on the holdout"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("plots", "reference", "lineage", "search"):
            (root / folder).mkdir()
        (root / "plots" / "predicted_vs_actual.png").write_bytes(
            plots.predicted_vs_actual(actual, chosen.predictions, title)
        )
        from pricepipe.training.data import encode, event_dates

        if outcome.contract.event_time is not None:  # without one, the holdout's rows have no dates
            (root / "plots" / "residuals_over_time.png").write_bytes(
                plots.residuals_over_time(
                    event_dates(outcome.holdout, outcome.contract), actual, chosen.predictions, title
                )
            )
        (root / "plots" / "feature_importance.png").write_bytes(
            plots.feature_importance(outcome.lean.feature_importance(), f"{outcome.chosen}: split gain")
        )
        if outcome.lean.can_explain:
            # the served model's TreeSHAP contributions on (at most 1,000 of) the holdout's rows: ~0.5 s
            holdout = outcome.holdout
            sample = holdout.iloc[np.linspace(0, len(holdout) - 1, min(len(holdout), 1000)).astype(int)]
            explanation = outcome.lean.explain_matrix(encode(sample, outcome.served_encoding))
            (root / "plots" / "feature_contributions.png").write_bytes(
                plots.feature_contributions(
                    explanation.mean_abs(), f"{outcome.chosen}: mean |contribution| on the holdout", explanation.scale
                )
            )
        (root / "reference" / "reference_stats.json").write_text(json.dumps(json_safe(outcome.reference)))
        lineage = {"data_window": outcome.data_window(), **outcome.data.lineage}
        (root / "lineage" / "lineage.json").write_text(json.dumps(json_safe(lineage), indent=1, default=str))
        search = {
            "stopped_by": outcome.search.stopped_by,
            "seconds": outcome.search.seconds,
            "trials": [t.to_dict() for t in outcome.search.trials],
            "candidates": {
                name: {
                    "params": c.params,
                    "target_transform": c.target_transform,
                    "n_trees": c.n_trees,
                    "validation_rmse": c.validation_rmse,
                    "holdout": c.holdout,
                }
                for name, c in (*outcome.candidates.items(), ("baseline", outcome.baseline))
            },
        }
        (root / "search" / "search.json").write_text(json.dumps(json_safe(search), indent=1))
        client.log_artifacts(run_id, tmp)


def log_model(mlflow: Any, outcome: TrainingOutcome) -> Any:
    """The chosen model as an sklearn pipeline (features frame in, price out), with signature and example."""
    import numpy as np
    import sklearn
    from mlflow.models import infer_signature

    import pricepipe
    from pricepipe.training.pipeline import SKOPS_TRUSTED_TYPES, model_pipeline

    pipeline = model_pipeline(outcome.served_encoding, outcome.served_model, outcome.model.target_transform)
    contract = outcome.contract
    # the signature takes the column types of price_data.model_features, so its rows load as they are
    example = outcome.holdout[list(contract.feature_columns)].head(5)
    example = example.astype(dict.fromkeys(contract.categorical_features, object))
    requirements = [f"numpy=={np.__version__}", f"scikit-learn=={sklearn.__version__}"]
    import pandas
    import skops

    requirements += [f"pandas=={pandas.__version__}", f"skops=={skops.__version__}"]
    if outcome.chosen == "lightgbm":
        import lightgbm

        requirements.append(f"lightgbm=={lightgbm.__version__}")
    # the pipeline's first step is pricepipe code: ship the package with the model so that
    # mlflow.pyfunc can load it anywhere, without pricepipe installed
    package = str(Path(pricepipe.__file__).parent)
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot carry missing values: known and chosen (above)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        signature = infer_signature(example, pipeline.predict(example))
    return mlflow.sklearn.log_model(
        pipeline,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=requirements,
        code_paths=[package],
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )
