"""Training one model version: split by time, search, refit, score, export, summarise.

The window's rows are split three ways in time::

    |---------------- train ----------------|-- holdout --|
    |------------ fit ------------|-- val --|

The search fits on *fit* and scores on *val* (hyperparameters, tree counts, the model family and the
baseline's grouping are all chosen there); each family's best settings are refit on the whole
*train* part and scored once on the *holdout*, the most recent days, which no choice has seen: those
are the metrics reported.

Two artifacts come out. The *evaluation* model is that train-part fit: it never saw the holdout, so
it is what the champion comparison scores on the holdout. The *served* model is the same settings
refit on the whole window (``refit_full_window``, the default): prices drift, and leaving the most
recent weeks out of the model that serves cost 2.6 RMSE on the DESIGN §3 split (see
``benchmarks/bench_train``). With the refit off, one model is both.

A contract without an event time is split by a seeded hash of the key instead
(:func:`pricepipe.training.data.split`), and serves the evaluation model: refit on its holdout
keys, the champion would later be compared with challengers on rows it was trained on.

Both artifacts also carry the prediction intervals (``intervals``, the default): an error model σ(x)
fitted on *fit* and calibration scores from *val*, with their coverage measured on the holdout by
the evaluation model (:mod:`pricepipe.training.intervals` says why that is the figure to report).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pricepipe.drift.reference import reference_statistics
from pricepipe.errors import PricePipeError
from pricepipe.lean_model import LeanModel
from pricepipe.training.data import TrainingData, TrainingDataError, covered_dates, encode, fit_encoding, split
from pricepipe.training.intervals import conformal_interval, coverage, tracking_metrics
from pricepipe.training.metrics import regression_metrics
from pricepipe.training.search import (
    FAMILIES,
    GroupMedian,
    SearchResult,
    SearchSettings,
    Trial,
    choose_baseline,
    search,
    single_threaded,
    to_price,
    to_target,
)

if TYPE_CHECKING:
    import pandas as pd

    from pricepipe.contract import Contract
    from pricepipe.lean_interval import ConformalInterval
    from pricepipe.lean_model import FeatureEncoding
    from pricepipe.training.search import Family

# largest |lean - original| output accepted at export, in the trees' own scale (for a log model the
# log price: the prices then agree within a relative 1e-6)
PARITY_TOLERANCE = 1e-6


class ExportError(PricePipeError, RuntimeError):
    """The exported serving artifact does not reproduce the trained model's predictions."""


@dataclass(frozen=True)
class TrainingConfig:
    holdout_days: int = 28
    validation_days: int | None = None  # None: as many as the holdout
    holdout_fraction: float = 0.2  # without an event time: the share of keys held out (by seeded hash)
    validation_fraction: float | None = None  # without an event time: the share validating; None: as the holdout
    search: SearchSettings = field(default_factory=SearchSettings)
    min_train_rows: int = 200
    min_holdout_rows: int = 30
    reference_sample_size: int = 200
    refit_full_window: bool = True
    intervals: bool = True  # export prediction intervals (costs four more fits of the chosen settings)

    @property
    def effective_validation_days(self) -> int:
        return self.validation_days or self.holdout_days

    def to_params(self) -> dict[str, Any]:
        return {
            "holdout_days": self.holdout_days,
            "validation_days": self.effective_validation_days,
            "holdout_fraction": self.holdout_fraction,
            "validation_fraction": self.validation_fraction or self.holdout_fraction,
            "seed": self.search.seed,
            "time_budget_s": self.search.time_budget_s,
            "max_trials": self.search.max_trials,
            "max_tree_levels": self.search.max_tree_levels,
            "early_stopping_rounds": self.search.early_stopping_rounds,
            "families": ",".join(self.search.families),
            "sampler": self.search.sampler,
            "target_transforms": ",".join(self.search.transforms),
            "refit_full_window": self.refit_full_window,
            "intervals": self.intervals,
        }


@dataclass
class Candidate:
    """One model family's best settings, refit on the train part and scored on the holdout."""

    family: str
    params: dict[str, Any]
    n_trees: int
    validation_rmse: float
    holdout: dict[str, float]
    predictions: np.ndarray  # prices
    model: Any = field(repr=False)
    target_transform: str = "identity"  # what the model was trained on (search.TARGET_TRANSFORMS)


@dataclass
class TrainingOutcome:
    contract: Contract
    data: TrainingData
    config: TrainingConfig
    train: pd.DataFrame
    holdout: pd.DataFrame
    encoding: FeatureEncoding
    search: SearchResult
    candidates: dict[str, Candidate]
    chosen: str
    baseline: Candidate
    lean: LeanModel  # served: refit on the whole window (or the evaluation model, refit off)
    evaluation_lean: LeanModel  # the train-part fit the holdout metrics describe
    served_model: Any = field(repr=False)
    served_encoding: FeatureEncoding
    reference: dict[str, Any]
    seconds: float
    trained_at: str

    @property
    def model(self) -> Candidate:
        return self.candidates[self.chosen]

    @property
    def metrics(self) -> dict[str, float]:
        """The chosen model's holdout metrics."""
        return self.model.holdout

    @property
    def refits_full_window(self) -> bool:
        """Whether the served model is refit on the whole window (never without an event time)."""
        return self.config.refit_full_window and self.contract.event_time is not None

    def data_window(self) -> dict[str, Any]:
        """The window, and the dates each part covers: event dates, or without an event time the
        load dates of the whole window (its key-hash holdout is spread over all of it)."""
        train_start, train_end = covered_dates(self.train, self.contract, self.data.window)
        holdout_start, holdout_end = covered_dates(self.holdout, self.contract, self.data.window)
        keyed = self.contract.event_time is None
        return {
            **self.data.window.to_dict(),
            "dates": "load" if keyed else "event",
            "source": self.data.source,
            "rows": self.data.rows,
            "days_with_data": self.data.lineage.get("days_with_data"),
            "split": "key_hash" if keyed else "time",
            **({"holdout_fraction": self.config.holdout_fraction, "seed": self.config.search.seed} if keyed else {}),
            "train_rows": len(self.train),
            "train_start": train_start,
            "train_end": train_end,
            "holdout_rows": len(self.holdout),
            "holdout_start": holdout_start,
            "holdout_end": holdout_end,
            "served_model_trained_on": "window" if self.refits_full_window else "train",
        }

    def all_metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: the chosen model's, each candidate's and the baseline's."""
        out = {f"holdout_{k}": v for k, v in self.metrics.items()}
        for name, candidate in (*self.candidates.items(), ("baseline", self.baseline)):
            out.update({f"{name}.holdout_{k}": v for k, v in candidate.holdout.items()})
            if name != "baseline":
                out[f"{name}.validation_rmse"] = candidate.validation_rmse
                out[f"{name}.n_trees"] = float(candidate.n_trees)
        if self.lean.interval is not None:
            out.update(tracking_metrics(self.lean.interval.info))
        out["search.trials"] = float(len(self.search.trials))
        out["search.seconds"] = self.search.seconds
        out["training.seconds"] = self.seconds
        return out

    def params(self) -> dict[str, Any]:
        """Flat parameters for tracking: configuration, the window and the chosen model's settings."""
        window = self.data_window()
        return {
            **self.config.to_params(),
            "contract": f"{self.contract.name}@v{self.contract.version}",
            "source": self.data.source,
            "window_start": window["start"],
            "window_end": window["end"],
            "window_days": window["days"],
            "holdout_start": window["holdout_start"],
            "rows": self.data.rows,
            "model_family": self.chosen,
            "target_transform": self.model.target_transform,
            "n_trees": self.model.n_trees,
            **{f"model.{k}": v for k, v in self.model.params.items()},
            "baseline.group_by": self.baseline.params["group_by"],
        }


def _export(family: Any, model: Any, encoding: FeatureEncoding, x: np.ndarray, transform: str) -> LeanModel:
    """The lean artifact of ``model`` (trained on ``transform`` of the price), refused unless it
    reproduces the model's output on ``x`` in the trees' own scale (the log price for a log model)."""
    lean = LeanModel(family.export(model, encoding), encoding, {"target_transform": transform})
    gap = float(np.max(np.abs(lean.output_matrix(x) - family.predict(model, x))))
    if not gap < PARITY_TOLERANCE:
        raise ExportError(f"the lean artifact differs from the {family.name} model by up to {gap:.3g}")
    return lean


def _refit(
    trial: Trial,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_holdout: np.ndarray,
    y_holdout: np.ndarray,
    categorical: list[int],
    seed: int,
) -> Candidate:
    """A family's best trial refit on the train part (prices, trained on the trial's transform) and
    scored in price on the holdout."""
    family, transform = FAMILIES[trial.family], trial.target_transform
    with single_threaded():
        model = family.fit(trial.params, trial.n_trees, x_train, to_target(transform, y_train), categorical, seed)
        predictions = to_price(transform, family.predict(model, x_holdout))
    return Candidate(
        trial.family,
        trial.params,
        trial.n_trees,
        trial.validation_rmse,
        regression_metrics(y_holdout, predictions),
        predictions,
        model,
        transform,
    )


def _interval(
    family: Family,
    winner: Candidate,
    parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    encoding: FeatureEncoding,
    target: str,
    seed: int,
) -> ConformalInterval:
    """The winner's prediction intervals (σ on fit, scores on val), with their coverage on the holdout
    measured by the evaluation model's predictions there (see :mod:`pricepipe.training.intervals`)."""
    fit_part, validation, holdout = parts
    transform = winner.target_transform  # the interval's arithmetic is in price; the fits on the trial's scale
    categorical = [j for j, name in enumerate(encoding.features) if encoding.is_categorical(name)]

    def fit_predict(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
        with single_threaded():
            model = family.fit(winner.params, winner.n_trees, x, to_target(transform, y), categorical, seed)
            return to_price(transform, family.predict(model, x_new))

    interval = conformal_interval(
        (encode(fit_part, encoding), fit_part[target].to_numpy(dtype=np.float64)),
        (encode(validation, encoding), validation[target].to_numpy(dtype=np.float64)),
        fit_predict,
        encoding,
        categorical,
        seed,
    )
    measured = coverage(
        interval, encode(holdout, encoding), holdout[target].to_numpy(dtype=np.float64), winner.predictions
    )
    interval.info.update(
        holdout_coverage=measured["coverage"],
        holdout_mean_width=measured["mean_width"],
        holdout_rows=len(holdout),
        measured_with="the evaluation model (fit + validation) on the holdout; served: the same sigma and scores",
    )
    return interval


def _check_rows(frame: pd.DataFrame, minimum: int, what: str, hint: str) -> None:
    if len(frame) < minimum:
        raise TrainingDataError(f"{what} has {len(frame)} rows, fewer than the {minimum} needed: {hint}")


def train(data: TrainingData, contract: Contract, config: TrainingConfig) -> TrainingOutcome:
    """Train, choose and export a model on ``data`` (see the module docstring). No side effects."""
    began = time.monotonic()
    window = data.window
    if data.rows == 0:
        raise TrainingDataError(
            f"no {contract.name} rows between {window.start} and {window.end} in the {data.source}: "
            "load data with the ETL first, or choose another window"
        )
    parts = split(
        data.frame,
        contract,
        holdout_days=config.holdout_days,
        validation_days=config.validation_days,
        holdout_fraction=config.holdout_fraction,
        validation_fraction=config.validation_fraction,
        seed=config.search.seed,
    )
    train_part, holdout, fit_part, validation = parts.train, parts.holdout, parts.fit, parts.validation
    keyed = parts.rule == "key_hash"
    more = "load more rows, or raise the fractions"
    _check_rows(holdout, config.min_holdout_rows, parts.holdout_is, more if keyed else "widen --holdout-days")
    _check_rows(train_part, config.min_train_rows, "the train part", "widen --window-days")
    _check_rows(
        validation,
        config.min_holdout_rows,
        parts.validation_is,
        more if keyed else "widen the window or the validation days",
    )
    _check_rows(fit_part, config.min_train_rows // 2, "the fit part (train before validation)", "widen --window-days")

    target = contract.target
    search_encoding = fit_encoding(fit_part, contract)
    categorical = [search_encoding.index[name] for name in contract.categorical_features]
    result = search(
        encode(fit_part, search_encoding),
        fit_part[target].to_numpy(dtype=np.float64),
        encode(validation, search_encoding),
        validation[target].to_numpy(dtype=np.float64),
        categorical,
        config.search,
    )

    encoding = fit_encoding(train_part, contract)
    x_train, y_train = encode(train_part, encoding), train_part[target].to_numpy(dtype=np.float64)
    x_holdout, y_holdout = encode(holdout, encoding), holdout[target].to_numpy(dtype=np.float64)
    candidates = {
        name: _refit(trial, x_train, y_train, x_holdout, y_holdout, categorical, config.search.seed)
        for name, trial in result.best.items()
    }
    chosen = result.chosen.family

    group = choose_baseline(fit_part, validation, target, contract.categorical_features)
    median = GroupMedian.fit(train_part, target, group)
    baseline_predictions = median.predict(holdout)
    baseline = Candidate(
        "baseline",
        median.params,
        0,
        float("nan"),
        regression_metrics(y_holdout, baseline_predictions),
        baseline_predictions,
        median,
    )

    winner = candidates[chosen]
    family = FAMILIES[chosen]
    transform = winner.target_transform
    interval = (
        _interval(family, winner, (fit_part, validation, holdout), search_encoding, target, config.search.seed)
        if config.intervals
        else None
    )
    evaluation_lean = _export(family, winner.model, encoding, x_holdout, transform)
    if config.refit_full_window and not keyed:
        everything = data.frame
        served_encoding = fit_encoding(everything, contract)
        with single_threaded():
            served_model = family.fit(
                winner.params,
                winner.n_trees,
                encode(everything, served_encoding),
                to_target(transform, everything[target].to_numpy(dtype=np.float64)),
                [served_encoding.index[name] for name in contract.categorical_features],
                config.search.seed,
            )
        lean = _export(family, served_model, served_encoding, encode(holdout, served_encoding), transform)
        reference_rows = everything
    else:
        served_model, served_encoding, lean, reference_rows = winner.model, encoding, evaluation_lean, train_part

    reference = reference_statistics(
        reference_rows,
        contract,
        winner.predictions,
        prediction_source="holdout, by the evaluation model",
        sample_size=config.reference_sample_size,
        seed=config.search.seed,
    )
    outcome = TrainingOutcome(
        contract=contract,
        data=data,
        config=config,
        train=train_part,
        holdout=holdout,
        encoding=encoding,
        search=result,
        candidates=candidates,
        chosen=chosen,
        baseline=baseline,
        lean=lean,
        evaluation_lean=evaluation_lean,
        served_model=served_model,
        served_encoding=served_encoding,
        reference=reference,
        seconds=0.0,
        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    info = {
        "contract": {"name": contract.name, "version": contract.version},
        "target": target,
        "model_family": chosen,
        "target_transform": transform,
        "params": winner.params,
        "n_trees": winner.n_trees,
        "metrics": winner.holdout,
        "data_window": outcome.data_window(),
        "trained_at": outcome.trained_at,
        "seed": config.search.seed,
    }
    outcome.lean = lean.with_interval(interval).with_info(**info, role="serving")
    outcome.evaluation_lean = evaluation_lean.with_interval(interval).with_info(**info, role="evaluation")
    outcome.seconds = round(time.monotonic() - began, 3)
    return outcome
