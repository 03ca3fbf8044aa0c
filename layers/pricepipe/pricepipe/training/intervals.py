"""Training the prediction intervals the lean artifact carries (served by :mod:`pricepipe.lean_interval`).

The trainer's rows are split three ways in time, ``fit | val | holdout`` (see
:mod:`pricepipe.training.trainer`). With the chosen model's settings:

1. **σ's target**: out-of-fold absolute errors on *fit*. The rows are dealt into ``folds`` seeded
   folds; the settings fitted on the others price each fold, so every error comes from a model that
   never saw its row (an in-sample error of a boosted model is shrunk, most where it overfits).
2. **σ(x)**: a small LightGBM on (fit features, those errors), floored at 5% of their mean.
3. **Calibration**: the settings fitted on all of *fit* price *val*; the scores are
   ``|y − ŷ| / σ(x)`` there, rows that neither that model nor σ fitted. A level *a* is then answered
   with ``ŷ ± q_a·σ(x)``, ``q_a`` the ``⌈(n + 1)·a⌉``-th smallest score.
4. **Measured**: on the *holdout*, which nothing above used: the evaluation model (fitted on fit +
   val) with σ and the val scores, coverage and mean width at 0.5, 0.8, 0.9 and 0.95.

What is honest to say about these figures:

- The calibration is "a model fitted on everything before, pricing the next weeks" (fit → val), and
  so is the measurement (fit + val → holdout), and so is serving (the whole window → the weeks after
  it): the served artifact carries the served model with the *same* σ and scores. The holdout
  coverage is that procedure's, measured one step earlier; the served model itself never had a
  holdout (it is refit on the whole window), so its own coverage cannot be measured at training.
- Split conformal's finite-sample guarantee assumes calibration and test rows are exchangeable; rows
  ordered in time with drifting prices are not, which is exactly why coverage is measured on the
  most recent rows rather than assumed.
- The search chose the settings and tree counts on *val*, the rows calibrated on: their errors there
  are a little smaller than on unseen rows, so the interval may cover slightly less than its level;
  the holdout figure shows by how much.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pricepipe.lean_interval import ConformalInterval
from pricepipe.lean_model import LeanModel

if TYPE_CHECKING:
    from pricepipe.lean_model import FeatureEncoding

# (x to fit, y to fit, x to price) → prices of the last: the chosen settings, on the price scale
FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

REPORTED_LEVELS = (0.5, 0.8, 0.9, 0.95)
FOLDS = 3
FLOOR_SHARE = 0.05  # σ(x) ≥ this share of the mean out-of-fold error: no row gets a zero width
# σ is small on purpose: it is evaluated beside the point model for every interval asked for
SIGMA_PARAMS = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "max_depth": 4,
    "min_child_samples": 50,
    "subsample": 0.8,
    "colsample_bytree": 1.0,
    "reg_lambda": 1.0,
}
SIGMA_TREES = 150


def out_of_fold_errors(x: np.ndarray, y: np.ndarray, fit_predict: FitPredict, folds: int, seed: int) -> np.ndarray:
    """``|y − ŷ|`` for every row, ŷ from the settings fitted on the other folds (seeded, random folds)."""
    if folds < 2 or len(y) < folds:
        raise ValueError(f"out-of-fold errors need at least 2 folds and a row per fold ({len(y)} rows, {folds} folds)")
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    errors = np.empty(len(y), dtype=np.float64)
    for k in range(folds):
        held = fold == k
        errors[held] = np.abs(y[held] - fit_predict(x[~held], y[~held], x[held]))
    return errors


def fit_sigma(
    x: np.ndarray, errors: np.ndarray, encoding: FeatureEncoding, categorical: Sequence[int], seed: int
) -> LeanModel:
    """σ(x) as a lean model (LightGBM, :data:`SIGMA_PARAMS`) predicting the absolute error."""
    from pricepipe.training.search import FAMILIES, single_threaded

    family = FAMILIES["lightgbm"]
    with single_threaded():
        model = family.fit(SIGMA_PARAMS, SIGMA_TREES, x, errors, list(categorical), seed)
    trees = family.export(model, encoding)
    trees.cover = None  # only explanations read covers, and σ is never explained
    return LeanModel(trees, encoding)


def conformal_interval(
    fit: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    fit_predict: FitPredict,
    encoding: FeatureEncoding,
    categorical: Sequence[int],
    seed: int,
    folds: int = FOLDS,
) -> ConformalInterval:
    """Steps 1-3 of the module docstring: σ from *fit*, scores from *val* (both encoded with ``encoding``)."""
    (x_fit, y_fit), (x_val, y_val) = fit, validation
    errors = out_of_fold_errors(x_fit, y_fit, fit_predict, folds, seed)
    sigma = fit_sigma(x_fit, errors, encoding, categorical, seed)
    floor = max(FLOOR_SHARE * float(np.mean(errors)), 1e-9)
    scale = np.maximum(sigma.predict_matrix(x_val), floor)
    scores = np.abs(y_val - fit_predict(x_fit, y_fit, x_val)) / scale
    return ConformalInterval(sigma, scores, floor, {"folds": folds, "calibrated_on": "validation"})


def coverage(
    interval: ConformalInterval,
    x_sigma: np.ndarray,
    y: np.ndarray,
    predictions: np.ndarray,
    levels: Sequence[float] = REPORTED_LEVELS,
) -> dict[str, dict[str, float]]:
    """Per level: the share of rows whose interval holds y, and the mean width (``x_sigma`` in σ's
    encoding; ``predictions`` the point model's for the same rows, price scale)."""
    scale = interval.scale_matrix(x_sigma)
    out: dict[str, dict[str, float]] = {"coverage": {}, "mean_width": {}}
    for level in levels:
        bounds = interval.bounds(predictions, scale, level)
        out["coverage"][str(level)] = float(np.mean((bounds[:, 0] <= y) & (y <= bounds[:, 1])))
        out["mean_width"][str(level)] = float(np.mean(bounds[:, 1] - bounds[:, 0]))
    return out


def tracking_metrics(info: Mapping[str, Any]) -> dict[str, float]:
    """An interval's measured figures as flat MLflow metrics: ``interval.holdout_coverage_80`` …"""
    out = {}
    for kind in ("coverage", "mean_width"):
        for level, value in (info.get(f"holdout_{kind}") or {}).items():
            out[f"interval.holdout_{kind}_{round(float(level) * 100)}"] = float(value)
    return out
