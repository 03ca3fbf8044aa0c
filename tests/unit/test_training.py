"""Training without a database: time splits, the search, determinism, metrics, reference statistics."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pricepipe.contract import Contract
from pricepipe.features import build_features
from pricepipe.training import (
    SearchSettings,
    TrainingConfig,
    TrainingData,
    TrainingDataError,
    TrainingWindow,
    fit_encoding,
    regression_metrics,
    time_split,
    train,
)
from pricepipe.training.data import encode, event_dates, in_holdout, split
from pricepipe.training.pipeline import model_pipeline
from pricepipe.training.search import (
    FAMILIES,
    TPE_STARTUP_TRIALS,
    GroupMedian,
    SearchResult,
    search,
    tree_cap,
)

QUICK = SearchSettings(seed=11, time_budget_s=60, max_trials=3, max_tree_levels=240)


@pytest.fixture(scope="module")
def features(hotel_rates: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Processed features of the first 100 days of real bookings (as ETL would load them)."""
    raw = hotel_rates.dropna(subset=["country"])
    raw = raw[raw["arrival_date"] < "2016-10-10"]
    return build_features(raw.assign(arrival_date=pd.to_datetime(raw["arrival_date"])), contract).reset_index(drop=True)


def _data(frame: pd.DataFrame) -> TrainingData:
    dates = pd.to_datetime(frame["arrival_date"])
    return TrainingData(frame, TrainingWindow(dates.min().date(), dates.max().date()), "memory")


# -- time split ------------------------------------------------------------------------------------


def test_the_holdout_is_the_last_calendar_days(features: pd.DataFrame, contract: Contract) -> None:
    past, recent = time_split(features, contract, days=14)

    last = event_dates(features, contract).max()
    assert event_dates(recent, contract).min() == last - pd.Timedelta(days=13)
    assert event_dates(past, contract).max() < event_dates(recent, contract).min()
    assert len(past) + len(recent) == len(features)


def test_a_fractional_holdout_cuts_between_days(features: pd.DataFrame, contract: Contract) -> None:
    past, recent = time_split(features, contract, days=None, fraction=0.2)

    assert 0.1 < len(recent) / len(features) < 0.3
    assert event_dates(past, contract).max() < event_dates(recent, contract).min()


def test_a_holdout_of_no_days_is_refused(features: pd.DataFrame, contract: Contract) -> None:
    with pytest.raises(TrainingDataError, match="at least one day"):
        time_split(features, contract, days=0)


def test_with_an_event_time_the_one_split_is_by_time(features: pd.DataFrame, contract: Contract) -> None:
    parts = split(features, contract, holdout_days=14, validation_days=7, holdout_fraction=0.2, seed=1)

    days = pd.to_datetime(features[contract.event_time])
    assert parts.rule == "time"
    assert pd.to_datetime(parts.holdout[contract.event_time]).min() == days.max() - pd.Timedelta(days=13)
    assert pd.to_datetime(parts.validation[contract.event_time]).min() == days.max() - pd.Timedelta(days=20)
    assert pd.to_datetime(parts.fit[contract.event_time]).max() < days.max() - pd.Timedelta(days=20)
    with pytest.raises(ValueError, match="has an event time"):
        in_holdout(features, contract, fraction=0.2, seed=1)


def test_a_window_is_counted_in_days_with_both_ends() -> None:
    window = TrainingWindow.ending(dt.date(2017, 8, 31), 30)
    assert (window.start, window.days) == (dt.date(2017, 8, 2), 30)


# -- encoding, metrics, baseline -------------------------------------------------------------------


def test_categories_are_ranked_by_frequency_and_capped(features: pd.DataFrame, contract: Contract) -> None:
    encoding = fit_encoding(features, contract, max_categories=3)

    counts = features["country"].value_counts()
    assert list(encoding.categories["country"]) == list(counts.index[:3])
    assert set(encoding.categories) == set(contract.categorical_features)
    assert all(len(v) <= 3 for v in encoding.categories.values())


def test_metrics_on_known_values() -> None:
    m = regression_metrics([100.0, 200.0, 0.0, 100.0], [110.0, 190.0, 10.0, 100.0])

    assert m["rmse"] == pytest.approx(np.sqrt(300 / 4))
    assert m["mae"] == pytest.approx(7.5)
    assert m["mape"] == pytest.approx((0.1 + 0.05 + 0.0) / 3)  # the zero price is left out
    assert m["r2"] == pytest.approx(1 - 300 / 20000)
    assert m["rows"] == 4


def test_the_baseline_predicts_group_medians_and_falls_back(contract: Contract) -> None:
    frame = pd.DataFrame({"meal": ["a", "a", "a", "b", "b"], contract.target: [1.0, 2.0, 9.0, 5.0, 7.0]})
    model = GroupMedian.fit(frame, contract.target, "meal")

    assert model.predict(pd.DataFrame({"meal": ["a", "b", "zzz"]})).tolist() == [2.0, 6.0, 5.0]


# -- search and determinism ------------------------------------------------------------------------


Matrices = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]


def _matrices(features: pd.DataFrame, contract: Contract) -> Matrices:
    fit, val = time_split(features, contract, days=14)
    encoding = fit_encoding(fit, contract)
    categorical = [encoding.index[n] for n in contract.categorical_features]
    y = contract.target
    return (
        encode(fit, encoding),
        fit[y].to_numpy(dtype=float),
        encode(val, encoding),
        val[y].to_numpy(dtype=float),
        categorical,
    )


def _strip(result: SearchResult) -> list[tuple[object, ...]]:
    return [(t.family, t.number, t.params, t.target_transform, t.n_trees, t.validation_rmse) for t in result.trials]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_the_same_seed_gives_the_same_search(features: pd.DataFrame, contract: Contract, sampler: str) -> None:
    matrices = _matrices(features, contract)
    settings = replace(QUICK, sampler=sampler)

    first, second = search(*matrices, settings), search(*matrices, settings)

    assert _strip(first) == _strip(second)
    assert len(first.trials) == 2 * QUICK.max_trials


def test_the_first_trials_are_the_defaults_once_per_target_transform(
    features: pd.DataFrame, contract: Contract
) -> None:
    result = search(*_matrices(features, contract), QUICK)

    for name, family in FAMILIES.items():
        first, second = [t for t in result.trials if t.family == name][:2]
        assert (first.params, first.target_transform) == (family.defaults(QUICK), "identity")
        assert (second.params, second.target_transform) == (family.defaults(QUICK), "log")
    lightgbm = FAMILIES["lightgbm"].defaults(QUICK)
    # LGBMRegressor()'s settings; the depth bound is the one the serving cost asks for (240 levels: 5)
    assert lightgbm == {
        "learning_rate": 0.1,
        "num_leaves": 31,
        "max_depth": 5,
        "min_child_samples": 20,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "reg_lambda": 0.0,
    }
    assert FAMILIES["lightgbm"].defaults(SearchSettings())["max_depth"] == 8  # 800 levels / 100 trees


def test_the_chosen_model_is_no_worse_than_the_defaults_on_validation(
    features: pd.DataFrame, contract: Contract
) -> None:
    x, y, x_val, y_val, categorical = _matrices(features, contract)
    result = search(x, y, x_val, y_val, categorical, QUICK)

    family = FAMILIES["lightgbm"]
    defaults = family.defaults(QUICK)
    # the defaults fitted to the most trees the serving cost allows, with no early stopping
    model = family.fit(defaults, tree_cap(defaults["max_depth"], QUICK), x, y, categorical, QUICK.seed)
    plain = regression_metrics(y_val, family.predict(model, x_val))["rmse"]
    assert result.chosen.validation_rmse <= result.best["lightgbm"].validation_rmse <= result.trials[0].validation_rmse
    assert result.trials[0].validation_rmse <= plain + 1e-9


def test_another_seed_samples_other_settings(features: pd.DataFrame, contract: Contract) -> None:
    matrices = _matrices(features, contract)
    other = replace(QUICK, seed=12)

    a, b = search(*matrices, QUICK), search(*matrices, other)

    assert [t.params for t in a.trials if t.number >= 2] != [t.params for t in b.trials if t.number >= 2]


def test_tpe_starts_as_random_search_then_samples_from_the_results(features: pd.DataFrame, contract: Contract) -> None:
    matrices = _matrices(features, contract)
    settings = replace(QUICK, max_trials=TPE_STARTUP_TRIALS + 2, families=("lightgbm",))

    tpe, uniform = search(*matrices, settings), search(*matrices, replace(settings, sampler="random"))

    # the defaults for both transforms, then the same seeded random draws until TPE has its startup trials
    assert _strip(tpe)[:TPE_STARTUP_TRIALS] == _strip(uniform)[:TPE_STARTUP_TRIALS]
    assert _strip(tpe)[TPE_STARTUP_TRIALS:] != _strip(uniform)[TPE_STARTUP_TRIALS:]


def test_the_log_transform_is_not_tried_when_a_price_is_not_positive(
    features: pd.DataFrame, contract: Contract
) -> None:
    x, y, x_val, y_val, categorical = _matrices(features, contract)
    y = y.copy()
    y[3] = 0.0

    result = search(x, y, x_val, y_val, categorical, replace(QUICK, max_trials=2))

    assert {t.target_transform for t in result.trials} == {"identity"}


def test_unknown_samplers_and_transforms_are_refused(features: pd.DataFrame, contract: Contract) -> None:
    matrices = _matrices(features, contract)
    with pytest.raises(ValueError, match="unknown sampler 'grid'; known: tpe, random"):
        search(*matrices, replace(QUICK, sampler="grid"))
    with pytest.raises(ValueError, match=r"unknown target transforms \['sqrt'\]"):
        search(*matrices, replace(QUICK, transforms=("sqrt",)))


def test_the_time_budget_stops_the_search_after_the_defaults(features: pd.DataFrame, contract: Contract) -> None:
    ticks = itertools.count(step=1000.0)  # every clock reading is 1000 s later: the budget is gone at once

    result = search(*_matrices(features, contract), QUICK, clock=lambda: next(ticks))

    assert result.stopped_by == "budget"
    assert [(t.family, t.number, t.target_transform) for t in result.trials] == [
        ("lightgbm", 0, "identity"),
        ("hist_gradient_boosting", 0, "identity"),
        ("lightgbm", 1, "log"),
        ("hist_gradient_boosting", 1, "log"),
    ]


def test_every_trial_stays_within_the_serving_cost(features: pd.DataFrame, contract: Contract) -> None:
    result = search(*_matrices(features, contract), QUICK)
    for trial in result.trials:
        assert trial.n_trees * trial.params["max_depth"] <= QUICK.max_tree_levels


def test_training_is_deterministic_given_the_seed(features: pd.DataFrame, contract: Contract) -> None:
    config = TrainingConfig(holdout_days=14, search=QUICK, min_train_rows=100)

    first, second = train(_data(features), contract, config), train(_data(features), contract, config)

    assert first.chosen == second.chosen
    assert first.all_metrics() | {"search.seconds": 0, "training.seconds": 0} == second.all_metrics() | {
        "search.seconds": 0,
        "training.seconds": 0,
    }
    matrix = encode(first.holdout, first.encoding)
    assert np.array_equal(first.lean.predict_matrix(matrix), second.lean.predict_matrix(matrix))


def test_training_scores_every_candidate_and_the_baseline_on_the_holdout(
    features: pd.DataFrame, contract: Contract
) -> None:
    outcome = train(_data(features), contract, TrainingConfig(holdout_days=14, search=QUICK, min_train_rows=100))

    assert set(outcome.candidates) == {"lightgbm", "hist_gradient_boosting"}
    assert outcome.chosen == min(outcome.candidates.values(), key=lambda c: c.validation_rmse).family
    for candidate in (*outcome.candidates.values(), outcome.baseline):
        assert set(candidate.holdout) == {"rmse", "mae", "mape", "r2", "rows"}
        assert candidate.holdout["rows"] == len(outcome.holdout)
    window = outcome.data_window()
    assert window["train_end"] < window["holdout_start"]
    assert outcome.lean.info["metrics"] == outcome.metrics
    assert outcome.params()["model_family"] == outcome.chosen
    # prediction intervals: measured on the holdout, carried by both artifacts, logged per level
    interval = outcome.lean.interval
    assert interval is not None and outcome.evaluation_lean.interval is interval
    assert interval.info["holdout_rows"] == len(outcome.holdout)
    validation = time_split(outcome.train, contract, days=14)[1]  # the validation days: as many as the holdout's
    assert interval.calibration_rows == len(validation)
    metrics = outcome.all_metrics()
    for level in (50, 80, 90, 95):
        assert 0 < metrics[f"interval.holdout_coverage_{level}"] <= 1
        assert metrics[f"interval.holdout_mean_width_{level}"] > 0


def test_the_target_transform_is_chosen_on_validation_never_the_holdout(
    features: pd.DataFrame, contract: Contract
) -> None:
    config = TrainingConfig(holdout_days=14, search=replace(QUICK, max_trials=2), min_train_rows=100)
    outcome = train(_data(features), contract, config)
    # the holdout's prices changed beyond recognition: nothing the search chose may change
    holdout = event_dates(features, contract) >= event_dates(outcome.holdout, contract).min()
    shifted = features.assign(**{contract.target: features[contract.target].where(~holdout, 1e4)})
    other = train(_data(shifted), contract, config)

    assert _strip(other.search) == _strip(outcome.search)
    chosen = outcome.search.chosen
    assert outcome.model.target_transform == chosen.target_transform == other.model.target_transform
    assert outcome.lean.info["target_transform"] == chosen.target_transform
    assert outcome.params()["target_transform"] == chosen.target_transform
    assert other.metrics["rmse"] > 10 * outcome.metrics["rmse"]  # the holdout did change


def test_a_log_model_serves_prices_and_explains_in_log_price(features: pd.DataFrame, contract: Contract) -> None:
    config = TrainingConfig(
        holdout_days=14, search=replace(QUICK, max_trials=1, transforms=("log",)), min_train_rows=100
    )

    outcome = train(_data(features), contract, config)

    assert outcome.model.target_transform == "log"
    for lean, encoding in ((outcome.lean, outcome.served_encoding), (outcome.evaluation_lean, outcome.encoding)):
        assert lean.info["target_transform"] == "log"
        matrix = encode(outcome.holdout, encoding)
        prices = lean.predict_matrix(matrix)
        assert np.allclose(prices, np.exp(lean.output_matrix(matrix)), rtol=1e-12)
        explanation = lean.explain_matrix(matrix[:20])
        assert explanation.scale == "log_price"
        assert np.allclose(explanation.outputs(), lean.output_matrix(matrix[:20]), atol=1e-9)
    evaluation = outcome.evaluation_lean.predict_matrix(encode(outcome.holdout, outcome.encoding))
    assert np.max(np.abs(evaluation / outcome.model.predictions - 1)) < 1e-6
    assert 20 < float(np.median(evaluation)) < 400  # prices, not log prices
    # the sklearn pipeline MLflow logs answers in price too
    pipeline = model_pipeline(outcome.served_encoding, outcome.served_model, outcome.model.target_transform)
    served = outcome.lean.predict_matrix(encode(outcome.holdout, outcome.served_encoding))
    assert np.max(np.abs(pipeline.predict(outcome.holdout) / served - 1)) < 1e-6


def test_the_served_model_is_refit_on_the_whole_window(features: pd.DataFrame, contract: Contract) -> None:
    config = TrainingConfig(holdout_days=14, search=QUICK, min_train_rows=100)

    refit = train(_data(features), contract, config)
    kept = train(_data(features), contract, replace(config, refit_full_window=False, intervals=False))

    matrix = encode(refit.holdout, refit.served_encoding)
    assert not np.array_equal(refit.lean.predict_matrix(matrix), refit.evaluation_lean.predict_matrix(matrix))
    assert refit.reference["rows"] == len(features)
    assert refit.metrics == kept.metrics  # reported metrics always describe the evaluation model
    assert kept.lean is not None and kept.reference["rows"] == len(kept.train)
    assert kept.lean.interval is None and not any(name.startswith("interval.") for name in kept.all_metrics())
    same = encode(kept.holdout, kept.encoding)
    assert np.array_equal(kept.lean.predict_matrix(same), kept.evaluation_lean.predict_matrix(same))


def test_no_rows_in_the_window_is_a_clear_error(features: pd.DataFrame, contract: Contract) -> None:
    empty = TrainingData(features.iloc[:0], TrainingWindow(dt.date(2020, 1, 1), dt.date(2020, 3, 1)), "postgres")

    with pytest.raises(TrainingDataError, match=r"no hotel_rates rows between 2020-01-01 and 2020-03-01"):
        train(empty, contract, TrainingConfig())


def test_a_holdout_too_small_is_a_clear_error(features: pd.DataFrame, contract: Contract) -> None:
    config = TrainingConfig(holdout_days=1, min_holdout_rows=500, search=QUICK)

    with pytest.raises(TrainingDataError, match=r"the holdout \(last 1 days\) has \d+ rows, fewer than the 500"):
        train(_data(features), contract, config)


def test_the_contribution_summary_plot_ranks_features_by_mean_absolute_contribution() -> None:
    from pricepipe.training import plots

    png = plots.feature_contributions({"lead_time": 12.5, "adults": 3.0, "meal": 0.0}, "lightgbm", "price")

    assert png.startswith(b"\x89PNG")
