"""Candidate model families, the simple baseline, and the time-budgeted hyperparameter search.

Both families handle categorical features natively and train on the matrix of
:class:`pricepipe.lean_model.FeatureEncoding`, so what is evaluated is what gets served.

Determinism: each family draws its trials from its own generator seeded with ``(seed, family)``,
and trial 0 is the family's defaults. The sequence of trials therefore never depends on timing; the
time budget only decides how long a prefix of it runs (the count is logged). LightGBM runs on one
thread with ``deterministic=True``; HistGradientBoosting is deterministic given its seed.

Serving cost: the lean evaluator's time grows with trees x depth, so every trial's tree count is
capped at ``max_tree_levels // max_depth`` (DESIGN §5 budgets, see ``benchmarks/bench_train``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pricepipe.training.metrics import regression_metrics

if TYPE_CHECKING:
    import pandas as pd

    from pricepipe.lean_model import FeatureEncoding, TreeArrays


@dataclass(frozen=True)
class SearchSettings:
    seed: int = 42
    time_budget_s: float = 120.0
    max_trials: int = 20  # per family
    max_tree_levels: int = 800  # trees x max depth of one model (serving cost)
    early_stopping_rounds: int = 30
    families: tuple[str, ...] = ("lightgbm", "hist_gradient_boosting")


@dataclass(frozen=True)
class Trial:
    family: str
    number: int
    params: dict[str, Any]
    n_trees: int
    validation_rmse: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    trials: list[Trial]
    seconds: float
    stopped_by: str  # "trials" (all ran) or "budget"
    best: dict[str, Trial] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for trial in self.trials:
            held = self.best.get(trial.family)
            if held is None or trial.validation_rmse < held.validation_rmse:
                self.best[trial.family] = trial

    @property
    def chosen(self) -> Trial:
        """The best trial over all families (ties go to the family listed first)."""
        return min(self.best.values(), key=lambda t: t.validation_rmse)


class Family(Protocol):
    name: str

    def sample(self, rng: np.random.Generator, number: int) -> dict[str, Any]: ...

    def fit(
        self, params: dict[str, Any], n_trees: int, x: np.ndarray, y: np.ndarray, categorical: list[int], seed: int
    ) -> Any: ...

    def fit_scored(
        self,
        params: dict[str, Any],
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        categorical: list[int],
        settings: SearchSettings,
    ) -> tuple[int, float]: ...

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray: ...

    def export(self, model: Any, encoding: FeatureEncoding) -> TreeArrays: ...


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(math.log(low), math.log(high))))


def _round(params: dict[str, Any]) -> dict[str, Any]:
    """Readable parameters in the tracking UI; what is logged is exactly what was trained."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()}


def tree_cap(max_depth: int, settings: SearchSettings) -> int:
    return max(1, settings.max_tree_levels // max_depth)


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - y) ** 2)))


class LightGBMFamily:
    name = "lightgbm"

    def sample(self, rng: np.random.Generator, number: int) -> dict[str, Any]:
        if number == 0:
            return {
                "learning_rate": 0.1,
                "num_leaves": 31,
                "max_depth": 8,
                "min_child_samples": 20,
                "subsample": 1.0,
                "colsample_bytree": 1.0,
                "reg_lambda": 0.0,
            }
        return _round(
            {
                "learning_rate": _log_uniform(rng, 0.02, 0.3),
                "num_leaves": int(rng.choice([7, 15, 31, 63])),
                "max_depth": int(rng.choice([4, 5, 6, 7, 8])),
                "min_child_samples": int(rng.choice([5, 10, 20, 40, 80])),
                "subsample": float(rng.uniform(0.6, 1.0)),
                "colsample_bytree": float(rng.uniform(0.6, 1.0)),
                "reg_lambda": float(rng.choice([0.0, 0.1, 1.0, 5.0, 10.0])),
            }
        )

    def _estimator(self, params: dict[str, Any], n_trees: int, seed: int) -> Any:
        import lightgbm

        # one thread: deterministic, and on 2 shared cores OpenMP spinning makes more threads slower
        return lightgbm.LGBMRegressor(
            n_estimators=n_trees,
            subsample_freq=1 if params["subsample"] < 1 else 0,
            max_bin=255,
            metric="rmse",
            random_state=seed,
            n_jobs=1,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
            **params,
        )

    def fit(
        self, params: dict[str, Any], n_trees: int, x: np.ndarray, y: np.ndarray, categorical: list[int], seed: int
    ) -> Any:
        return self._estimator(params, n_trees, seed).fit(x, y, categorical_feature=categorical or "auto")

    def fit_scored(
        self,
        params: dict[str, Any],
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        categorical: list[int],
        settings: SearchSettings,
    ) -> tuple[int, float]:
        import lightgbm

        cap = tree_cap(params["max_depth"], settings)
        model = self._estimator(params, cap, settings.seed).fit(
            x,
            y,
            categorical_feature=categorical or "auto",
            eval_X=(x_val,),
            eval_y=(y_val,),
            callbacks=[lightgbm.early_stopping(settings.early_stopping_rounds, verbose=False)],
        )
        n_trees = int(model.best_iteration_ or cap)
        return n_trees, _rmse(y_val, model.predict(x_val, num_iteration=n_trees))

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x), dtype=np.float64)

    def export(self, model: Any, encoding: FeatureEncoding) -> TreeArrays:
        from pricepipe.training.export import lightgbm_trees

        return lightgbm_trees(model.booster_, encoding)


class HistGradientBoostingFamily:
    name = "hist_gradient_boosting"

    def sample(self, rng: np.random.Generator, number: int) -> dict[str, Any]:
        if number == 0:
            return {
                "learning_rate": 0.1,
                "max_leaf_nodes": 31,
                "max_depth": 8,
                "min_samples_leaf": 20,
                "l2_regularization": 0.0,
                "max_features": 1.0,
            }
        return _round(
            {
                "learning_rate": _log_uniform(rng, 0.02, 0.3),
                "max_leaf_nodes": int(rng.choice([7, 15, 31, 63])),
                "max_depth": int(rng.choice([4, 5, 6, 7, 8])),
                "min_samples_leaf": int(rng.choice([5, 10, 20, 40, 80])),
                "l2_regularization": float(rng.choice([0.0, 0.1, 1.0, 5.0, 10.0])),
                "max_features": float(rng.uniform(0.6, 1.0)),
            }
        )

    def fit(
        self, params: dict[str, Any], n_trees: int, x: np.ndarray, y: np.ndarray, categorical: list[int], seed: int
    ) -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor

        mask = np.zeros(x.shape[1], dtype=bool)
        mask[categorical] = True
        # early stopping off: its validation split is random, ours is time-ordered (fit_scored)
        return HistGradientBoostingRegressor(
            max_iter=n_trees,
            categorical_features=mask if mask.any() else None,
            early_stopping=False,
            max_bins=255,
            random_state=seed,
            **params,
        ).fit(x, y)

    def fit_scored(
        self,
        params: dict[str, Any],
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        categorical: list[int],
        settings: SearchSettings,
    ) -> tuple[int, float]:
        cap = tree_cap(params["max_depth"], settings)
        model = self.fit(params, cap, x, y, categorical, settings.seed)
        scores = [_rmse(y_val, p) for p in model.staged_predict(x_val)]
        best = int(np.argmin(scores))
        return best + 1, scores[best]

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x), dtype=np.float64)

    def export(self, model: Any, encoding: FeatureEncoding) -> TreeArrays:
        from pricepipe.training.export import hist_gradient_boosting_trees

        return hist_gradient_boosting_trees(model, encoding)


FAMILIES: dict[str, Family] = {f.name: f for f in (LightGBMFamily(), HistGradientBoostingFamily())}


def search(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    categorical: list[int],
    settings: SearchSettings,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Random search over every family, interleaved, until the trials or the time budget run out.

    Trial 0 of each family always runs, so a tiny budget still yields one model per family.
    """
    unknown = [name for name in settings.families if name not in FAMILIES]
    if unknown or not settings.families:
        raise ValueError(f"unknown model families {unknown}; known: {sorted(FAMILIES)}")
    families = [FAMILIES[name] for name in settings.families]
    rngs = {f.name: np.random.default_rng([settings.seed, i]) for i, f in enumerate(families)}
    started = clock()
    trials: list[Trial] = []
    stopped_by = "trials"
    with single_threaded():
        for number in range(settings.max_trials):
            for family in families:
                if number > 0 and clock() - started >= settings.time_budget_s:
                    stopped_by = "budget"
                    break
                params = family.sample(rngs[family.name], number)
                began = clock()
                n_trees, rmse = family.fit_scored(params, x, y, x_val, y_val, categorical, settings)
                trials.append(Trial(family.name, number, params, n_trees, rmse, round(clock() - began, 3)))
            if stopped_by == "budget":
                break
    return SearchResult(trials, round(clock() - started, 3), stopped_by)


@contextmanager
def single_threaded() -> Iterator[None]:
    """OpenMP limited to one thread: on small data and shared cores, OpenMP's spinning threads made
    HistGradientBoosting fits up to 10x slower here, and one thread is reproducible by construction."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


# -- the baseline ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupMedian:
    """Median price per value of one categorical feature (unseen values: the overall median)."""

    feature: str | None
    medians: dict[Any, float]
    default: float

    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, feature: str | None) -> GroupMedian:
        default = float(frame[target].median())
        if feature is None:
            return cls(None, {}, default)
        medians = frame.groupby(frame[feature].astype(object), sort=True)[target].median()
        return cls(feature, {k: float(v) for k, v in medians.items()}, default)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.feature is None:
            return np.full(len(frame), self.default)
        values = frame[self.feature].astype(object).to_numpy()
        return np.fromiter((self.medians.get(v, self.default) for v in values), dtype=np.float64, count=len(values))

    @property
    def params(self) -> dict[str, Any]:
        return {"kind": "group_median", "group_by": self.feature or "(none)"}


def choose_baseline(
    fit_frame: pd.DataFrame, val_frame: pd.DataFrame, target: str, candidates: tuple[str, ...]
) -> str | None:
    """The grouping (or none) whose medians score best on the validation days."""
    best: tuple[float, str | None] = (math.inf, None)
    for feature in (None, *candidates):
        model = GroupMedian.fit(fit_frame, target, feature)
        score = regression_metrics(val_frame[target].to_numpy(), model.predict(val_frame))["rmse"]
        if score < best[0]:
            best = (score, feature)
    return best[1]
