"""Candidate model families, the simple baseline, and the hyperparameter search.

Both families handle categorical features natively and train on the matrix of
:class:`pricepipe.lean_model.FeatureEncoding`, so what is evaluated is what gets served.

The search: one sequential Optuna study per family, interleaved, each with its own seeded sampler
(``TPESampler`` by default, ``RandomSampler`` to compare). The first trials of every study are
the family's defaults (:meth:`Family.defaults`), once per target transform, so the chosen model's
validation RMSE can never be worse than the defaults'; the sampler then chooses the settings and the
transform (price, or log price when every price is positive). Every trial is scored in price on
the time-ordered validation days, which also stop its boosting early (the tree count is the best
iteration there). Optuna is imported here only, inside :func:`search`: it ships in the training
container, never in a Lambda layer.

Determinism: each study's sampler is seeded with ``(seed, family)`` and trials run one at a time,
so the sequence of trials never depends on timing; the time budget only decides how long a prefix
of it runs (the count is logged). LightGBM runs on one thread with ``deterministic=True``;
HistGradientBoosting is deterministic given its seed.

Serving cost: the lean evaluator's time grows with trees x depth, so every trial's tree count is
capped at ``max_tree_levels // max_depth`` (DESIGN §5 budgets, see ``benchmarks/bench_train``).
LightGBM's own defaults grow trees of 31 leaves with no depth limit (17 levels on hotel_rates: 100
trees would cost 1,700 levels against the 800 allowed), so the defaults' candidate bounds the depth
at what the cost admits for the defaults' 100 trees (``max_tree_levels // 100``), never below the
depth 31 leaves need (:func:`default_depth`); everything else is LightGBM's (or scikit-learn's)
default.
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
    import optuna
    import pandas as pd

    from pricepipe.lean_model import FeatureEncoding, TreeArrays

SAMPLERS = ("tpe", "random")
DEFAULT_TREES = 100  # n_estimators / max_iter of both libraries' defaults
TPE_STARTUP_TRIALS = 5  # completed trials (the defaults included) before TPE models the results


def _identity(values: np.ndarray) -> np.ndarray:
    return values


# target transform -> (price to training target, model output to price); the lean artifact applies
# the same inverse at predict time (pricepipe.lean_model, info["target_transform"])
TARGET_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "identity": (_identity, _identity),
    "log": (np.log, np.exp),
}


def to_target(transform: str, prices: np.ndarray) -> np.ndarray:
    return TARGET_TRANSFORMS[transform][0](prices)


def to_price(transform: str, output: np.ndarray) -> np.ndarray:
    return TARGET_TRANSFORMS[transform][1](output)


@dataclass(frozen=True)
class SearchSettings:
    seed: int = 42
    time_budget_s: float = 120.0
    max_trials: int = 20  # per family
    max_tree_levels: int = 800  # trees x max depth of one model (serving cost)
    early_stopping_rounds: int = 30
    families: tuple[str, ...] = ("lightgbm", "hist_gradient_boosting")
    sampler: str = "tpe"  # Optuna's TPESampler, or "random" (RandomSampler) to compare
    transforms: tuple[str, ...] = ("identity", "log")  # target transforms tried (log: positive prices only)


@dataclass(frozen=True)
class Trial:
    family: str
    number: int
    params: dict[str, Any]
    n_trees: int
    validation_rmse: float  # in price, whatever the transform
    seconds: float
    target_transform: str = "identity"

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

    def defaults(self, settings: SearchSettings) -> dict[str, Any]: ...

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]: ...

    def fit(
        self, params: dict[str, Any], n_trees: int, x: np.ndarray, y: np.ndarray, categorical: list[int], seed: int
    ) -> Any: ...

    def fit_scored(
        self,
        params: dict[str, Any],
        transform: str,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        categorical: list[int],
        settings: SearchSettings,
    ) -> tuple[int, float]: ...

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray: ...

    def export(self, model: Any, encoding: FeatureEncoding) -> TreeArrays: ...


def _round(params: dict[str, Any]) -> dict[str, Any]:
    """Readable parameters in the tracking UI; what is logged is exactly what was trained."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()}


def tree_cap(max_depth: int, settings: SearchSettings) -> int:
    return max(1, settings.max_tree_levels // max_depth)


def default_depth(leaves: int, settings: SearchSettings) -> int:
    """The defaults' depth bound: as deep as the serving cost admits for the defaults' 100 trees,
    and at least as deep as a balanced tree of ``leaves`` leaves (then with fewer trees)."""
    return max(math.ceil(math.log2(leaves)), settings.max_tree_levels // DEFAULT_TREES)


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - y) ** 2)))


class LightGBMFamily:
    name = "lightgbm"

    def defaults(self, settings: SearchSettings) -> dict[str, Any]:
        """``LGBMRegressor()``'s settings, the depth bounded for the serving cost (module docstring)."""
        return {
            "learning_rate": 0.1,
            "num_leaves": 31,
            "max_depth": default_depth(31, settings),
            "min_child_samples": 20,
            "subsample": 1.0,
            "colsample_bytree": 1.0,
            "reg_lambda": 0.0,
        }

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return _round(
            {
                "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
                "num_leaves": trial.suggest_int("num_leaves", 7, 63, log=True),
                "max_depth": trial.suggest_int("max_depth", 3, 10),
                "min_child_samples": trial.suggest_int("min_child_samples", 5, 100, log=True),
                "subsample": trial.suggest_float("subsample", 0.5, 1.0),
                "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
                "reg_lambda": trial.suggest_float("reg_lambda", 0.0, 10.0),
            }
        )

    def _estimator(self, params: dict[str, Any], n_trees: int, seed: int, metric: str = "rmse") -> Any:
        import lightgbm

        # one thread: deterministic, and on 2 shared cores OpenMP spinning makes more threads slower
        return lightgbm.LGBMRegressor(
            n_estimators=n_trees,
            subsample_freq=1 if params["subsample"] < 1 else 0,
            max_bin=255,
            metric=metric,
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
        transform: str,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        categorical: list[int],
        settings: SearchSettings,
    ) -> tuple[int, float]:
        import lightgbm

        def price_rmse(label: np.ndarray, output: np.ndarray) -> tuple[str, float, bool]:
            return "price_rmse", _rmse(to_price(transform, label), to_price(transform, output)), False

        cap = tree_cap(params["max_depth"], settings)
        # the only metric: early stopping reads the validation RMSE in price, whatever the transform
        model = self._estimator(params, cap, settings.seed, metric="None").fit(
            x,
            to_target(transform, y),
            categorical_feature=categorical or "auto",
            eval_X=(x_val,),
            eval_y=(to_target(transform, y_val),),
            eval_metric=price_rmse,
            callbacks=[lightgbm.early_stopping(settings.early_stopping_rounds, verbose=False)],
        )
        n_trees = int(model.best_iteration_ or cap)
        return n_trees, _rmse(y_val, to_price(transform, model.predict(x_val, num_iteration=n_trees)))

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """The model's output, in the scale of its training target."""
        return np.asarray(model.predict(x), dtype=np.float64)

    def export(self, model: Any, encoding: FeatureEncoding) -> TreeArrays:
        from pricepipe.training.export import lightgbm_trees

        return lightgbm_trees(model.booster_, encoding)


class HistGradientBoostingFamily:
    name = "hist_gradient_boosting"

    def defaults(self, settings: SearchSettings) -> dict[str, Any]:
        """``HistGradientBoostingRegressor()``'s settings, the depth bounded as LightGBM's."""
        return {
            "learning_rate": 0.1,
            "max_leaf_nodes": 31,
            "max_depth": default_depth(31, settings),
            "min_samples_leaf": 20,
            "l2_regularization": 0.0,
            "max_features": 1.0,
        }

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return _round(
            {
                "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
                "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 7, 63, log=True),
                "max_depth": trial.suggest_int("max_depth", 3, 10),
                "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 100, log=True),
                "l2_regularization": trial.suggest_float("l2_regularization", 0.0, 10.0),
                "max_features": trial.suggest_float("max_features", 0.4, 1.0),
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
        transform: str,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        categorical: list[int],
        settings: SearchSettings,
    ) -> tuple[int, float]:
        cap = tree_cap(params["max_depth"], settings)
        model = self.fit(params, cap, x, to_target(transform, y), categorical, settings.seed)
        scores = [_rmse(y_val, to_price(transform, p)) for p in model.staged_predict(x_val)]
        best = int(np.argmin(scores))
        return best + 1, scores[best]

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """The model's output, in the scale of its training target."""
        return np.asarray(model.predict(x), dtype=np.float64)

    def export(self, model: Any, encoding: FeatureEncoding) -> TreeArrays:
        from pricepipe.training.export import hist_gradient_boosting_trees

        return hist_gradient_boosting_trees(model, encoding)


FAMILIES: dict[str, Family] = {f.name: f for f in (LightGBMFamily(), HistGradientBoostingFamily())}


def usable_transforms(settings: SearchSettings, *prices: np.ndarray) -> tuple[str, ...]:
    """The configured target transforms these prices allow: the log needs every price positive."""
    unknown = [name for name in settings.transforms if name not in TARGET_TRANSFORMS]
    if unknown or not settings.transforms:
        raise ValueError(f"unknown target transforms {unknown}; known: {sorted(TARGET_TRANSFORMS)}")
    positive = all(bool(np.all(p > 0)) for p in prices)
    return tuple(name for name in settings.transforms if name != "log" or positive) or ("identity",)


def _studies(families: list[Family], settings: SearchSettings, transforms: tuple[str, ...]) -> dict[str, Any]:
    """One sequential study per family, its sampler seeded by (seed, family), the defaults enqueued
    first, once per transform."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {}
    for i, family in enumerate(families):
        seed = int(np.random.SeedSequence([settings.seed, i]).generate_state(1)[0])
        sampler: optuna.samplers.BaseSampler
        if settings.sampler == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        for transform in transforms:
            study.enqueue_trial({**family.defaults(settings), "target_transform": transform})
        studies[family.name] = study
    return studies


def search(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    categorical: list[int],
    settings: SearchSettings,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Sequential trials over every family, interleaved, until the trials or the time budget run out.

    ``y`` and ``y_val`` are prices. The defaults' trials (one per usable transform) always run, so a
    tiny budget still yields one model per family, and the transform is chosen on validation.
    """
    unknown = [name for name in settings.families if name not in FAMILIES]
    if unknown or not settings.families:
        raise ValueError(f"unknown model families {unknown}; known: {sorted(FAMILIES)}")
    if settings.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {settings.sampler!r}; known: {', '.join(SAMPLERS)}")
    families = [FAMILIES[name] for name in settings.families]
    transforms = usable_transforms(settings, y, y_val)
    studies = _studies(families, settings, transforms)
    started = clock()
    trials: list[Trial] = []
    stopped_by = "trials"
    with single_threaded():
        for number in range(settings.max_trials):
            for family in families:
                if number >= len(transforms) and clock() - started >= settings.time_budget_s:
                    stopped_by = "budget"
                    break
                asked = studies[family.name].ask()
                params = family.suggest(asked)
                transform = asked.suggest_categorical("target_transform", transforms)
                began = clock()
                n_trees, rmse = family.fit_scored(params, transform, x, y, x_val, y_val, categorical, settings)
                studies[family.name].tell(asked, rmse)
                seconds = round(clock() - began, 3)
                trials.append(Trial(family.name, number, params, n_trees, rmse, seconds, transform))
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
