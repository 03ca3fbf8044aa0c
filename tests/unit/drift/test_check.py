"""The drift check on known distributions and on the real hotel_rates seasons."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pricepipe.contract import Contract
from pricepipe.drift.check import OTHER, DriftCheck, DriftReport, DriftThresholds, check_drift, compare_data
from pricepipe.drift.reference import reference_from_data, reference_statistics
from pricepipe.errors import DriftInputError
from pricepipe.features import build_features
from pricepipe.settings import Settings

THRESHOLDS = DriftThresholds.from_settings(Settings())


def _numeric_reference(values: np.ndarray, name: str = "x") -> dict:
    return reference_from_data({name: values}, numeric=[name], categorical=[])


def _check(report: DriftReport, feature: str | None, metric: str) -> DriftCheck:
    return next(c for c in report.checks if c.feature == feature and c.metric == metric)


@pytest.fixture(scope="module")
def normal_reference() -> dict:
    return _numeric_reference(np.random.default_rng(1).normal(10, 2, 50_000))


# -- numeric features -------------------------------------------------------------------------------


def test_the_same_distribution_scores_low_and_does_not_drift(normal_reference: dict) -> None:
    current = np.random.default_rng(2).normal(10, 2, 5_000)

    report = check_drift(normal_reference, {"x": current}, thresholds=THRESHOLDS)

    assert _check(report, "x", "psi").value < 0.1
    assert _check(report, "x", "ks").value < 0.05
    assert report.drifted_features == ()
    assert not report.drifted
    assert report.reasons[0] == "no drift"


def test_a_shift_of_one_and_a_half_standard_deviations_drifts(normal_reference: dict) -> None:
    current = np.random.default_rng(3).normal(10 + 1.5 * 2, 2, 5_000)

    report = check_drift(normal_reference, {"x": current}, thresholds=THRESHOLDS)

    assert _check(report, "x", "psi").value > 0.25
    assert _check(report, "x", "ks").value > 0.4
    assert _check(report, "x", "psi").drifted and _check(report, "x", "ks").drifted
    assert report.drifted_features == ("x",)
    assert report.feature_drift and report.drifted


@pytest.mark.parametrize(
    "sample",
    [
        lambda rng, n, shift: rng.normal(shift, 1, n),
        lambda rng, n, shift: rng.poisson(3 + 2 * shift, n).astype(float),  # discrete: the sketch has jumps
    ],
    ids=["continuous", "discrete"],
)
@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_ks_from_the_quantile_sketch_is_within_a_percent_of_the_exact_statistic(
    sample: Callable[[np.random.Generator, int, float], np.ndarray], shift: float
) -> None:
    rng = np.random.default_rng(4)
    reference, current = sample(rng, 40_000, 0.0), sample(rng, 3_000, shift)

    report = check_drift(_numeric_reference(reference), {"x": current}, thresholds=THRESHOLDS)

    exact = stats.ks_2samp(reference, current).statistic
    assert _check(report, "x", "ks").value == pytest.approx(exact, abs=0.01)


def test_the_reference_data_themselves_score_zero_psi_even_when_discrete() -> None:
    values = np.random.default_rng(4).poisson(2, 20_000).astype(float)  # bin edges are data values

    report = check_drift(_numeric_reference(values), {"x": values}, thresholds=THRESHOLDS)

    (distribution,) = report.distributions
    assert distribution.current == pytest.approx(distribution.reference, abs=1e-12)
    assert _check(report, "x", "psi").value == pytest.approx(0.0, abs=1e-12)
    assert _check(report, "x", "ks").value <= 0.01  # the sketch's resolution


def test_noise_over_the_psi_threshold_in_a_small_window_is_not_drift() -> None:
    thresholds = DriftThresholds.from_settings(Settings(drift_min_rows=20))
    reference = _numeric_reference(np.random.default_rng(5).normal(0, 1, 20_000))
    current = np.random.default_rng(6).normal(0, 1, 25)  # same distribution: PSI is noise at this size

    report = check_drift(reference, {"x": current}, thresholds=thresholds)

    psi = _check(report, "x", "psi")
    assert psi.value >= thresholds.psi
    assert not psi.drifted
    assert "sampling noise" in psi.note
    assert not report.drifted


def test_missing_numeric_values_are_left_out_and_reported(normal_reference: dict) -> None:
    current = np.random.default_rng(7).normal(10, 2, 5_000)
    current[::5] = np.nan

    report = check_drift(normal_reference, {"x": current}, thresholds=THRESHOLDS)

    (distribution,) = report.distributions
    assert distribution.current_missing == pytest.approx(0.2)
    assert distribution.current_rows == 4_000
    assert not report.drifted


def test_a_feature_with_every_value_missing_is_skipped_with_its_reason() -> None:
    rng = np.random.default_rng(8)
    reference = reference_from_data(
        {"a": rng.normal(size=1000), "b": rng.normal(size=1000)}, numeric=["a", "b"], categorical=[]
    )

    report = check_drift(reference, {"a": rng.normal(size=500), "b": np.full(500, np.nan)}, thresholds=THRESHOLDS)

    assert report.checked_features == ("a",)
    assert report.skipped_features == (("b", "only 0 non-missing current values (fewer than 100)"),)
    assert any("b: only 0 non-missing" in reason for reason in report.reasons)


# -- categorical features ---------------------------------------------------------------------------


def _categories(shares: dict[str, float], n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(list(shares), size=n, p=list(shares.values())).astype(object)


def test_a_change_in_the_category_mix_drifts_with_a_significant_chi_square() -> None:
    reference = reference_from_data(
        {"c": _categories({"a": 0.5, "b": 0.3, "c": 0.2}, 20_000, 1)}, numeric=[], categorical=["c"]
    )
    current = _categories({"a": 0.2, "b": 0.3, "c": 0.5}, 2_000, 2)

    report = check_drift(reference, {"c": current}, thresholds=THRESHOLDS)

    assert _check(report, "c", "psi").value > 0.25
    assert _check(report, "c", "chi2_pvalue").value < 1e-6
    assert _check(report, "c", "chi2").value > 100
    assert report.drifted_features == ("c",)


def test_the_same_category_mix_is_stable() -> None:
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    reference = reference_from_data({"c": _categories(shares, 20_000, 1)}, numeric=[], categorical=["c"])

    report = check_drift(reference, {"c": _categories(shares, 2_000, 3)}, thresholds=THRESHOLDS)

    assert _check(report, "c", "psi").value < 0.1
    assert _check(report, "c", "chi2_pvalue").value > THRESHOLDS.pvalue
    assert not report.drifted


def test_unseen_categories_are_pooled_as_other_and_can_drift() -> None:
    reference = reference_from_data({"c": _categories({"a": 0.6, "b": 0.4}, 20_000, 1)}, numeric=[], categorical=["c"])
    current = _categories({"a": 0.3, "b": 0.3, "new-1": 0.2, "new-2": 0.2}, 2_000, 4)

    report = check_drift(reference, {"c": current}, thresholds=THRESHOLDS)

    (distribution,) = report.distributions
    assert distribution.labels == ("a", "b", OTHER)
    assert distribution.reference[-1] == 0.0
    assert distribution.current[-1] == pytest.approx(0.4, abs=0.03)
    assert report.drifted_features == ("c",)


def test_categories_too_rare_to_expect_five_current_rows_are_pooled() -> None:
    shares = {"common": 0.9, **{f"rare{i}": 0.01 for i in range(10)}}
    reference = reference_from_data({"c": _categories(shares, 50_000, 1)}, numeric=[], categorical=["c"])

    small = check_drift(reference, {"c": _categories(shares, 200, 7)}, thresholds=THRESHOLDS)  # 2 rows each
    large = check_drift(reference, {"c": _categories(shares, 5_000, 8)}, thresholds=THRESHOLDS)  # 50 rows each

    assert small.distributions[0].labels == ("common", OTHER)
    assert small.distributions[0].reference[1] == pytest.approx(0.1, abs=0.01)
    assert len(large.distributions[0].labels) == 11  # every category scored, nothing left for "other"
    assert not small.drifted and not large.drifted


def test_missing_categories_are_left_out_of_the_shares() -> None:
    reference = reference_from_data({"c": _categories({"a": 0.5, "b": 0.5}, 10_000, 1)}, numeric=[], categorical=["c"])
    current = _categories({"a": 0.5, "b": 0.5}, 1_000, 5)
    current[::4] = None

    report = check_drift(reference, {"c": current}, thresholds=THRESHOLDS)

    (distribution,) = report.distributions
    assert distribution.current_missing == pytest.approx(0.25)
    assert sum(distribution.current) == pytest.approx(1.0)
    assert not report.drifted


def test_a_dataframe_and_arrays_give_the_same_report() -> None:
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"x": rng.normal(size=3_000), "c": _categories({"a": 0.7, "b": 0.3}, 3_000, 6)})
    frame.loc[::10, "x"] = np.nan
    reference = reference_from_data(frame.iloc[:2_000], numeric=["x"], categorical=["c"])

    from_frame = check_drift(reference, frame.iloc[2_000:], thresholds=THRESHOLDS)
    from_arrays = check_drift(
        reference, {"x": frame["x"].to_numpy()[2_000:], "c": frame["c"].to_numpy()[2_000:]}, thresholds=THRESHOLDS
    )

    assert from_frame.checks == from_arrays.checks
    assert from_frame.distributions == from_arrays.distributions


# -- the dataset decision, tiny windows, predictions, performance -------------------------------------


def test_two_raw_datasets_compare_through_a_reference_built_from_all_reference_rows() -> None:
    rng = np.random.default_rng(18)
    reference = pd.DataFrame({"x": rng.normal(size=20_000), "y": rng.normal(size=20_000)})
    reference["c"] = pd.Categorical(_categories({"a": 0.5, "b": 0.5}, 20_000, 9))
    current = pd.DataFrame({"x": rng.normal(size=2_000) + 1.0, "y": rng.normal(size=2_000)})
    current["c"] = pd.Categorical(_categories({"a": 0.9, "b": 0.1}, 2_000, 10))

    report = compare_data(reference, current, numeric=["x", "y"], categorical=["c"], thresholds=THRESHOLDS)

    assert report.reference_rows == 20_000 and report.current_rows == 2_000
    assert report.drifted_features == ("x", "c")


def test_the_dataset_drifts_when_the_share_of_drifted_features_reaches_the_threshold() -> None:
    rng = np.random.default_rng(10)
    names = [f"f{i}" for i in range(10)]
    reference = reference_from_data({n: rng.normal(size=10_000) for n in names}, numeric=names, categorical=[])

    def window(shifted: int) -> dict[str, np.ndarray]:
        return {n: rng.normal(size=1_000) + (2.0 if i < shifted else 0.0) for i, n in enumerate(names)}

    two = check_drift(reference, window(2), thresholds=THRESHOLDS)  # 20% < 30%
    four = check_drift(reference, window(4), thresholds=THRESHOLDS)  # 40% >= 30%

    assert two.drifted_features == ("f0", "f1") and not two.feature_drift and not two.drifted
    assert "2 of 10 features drifted (20% < 30%)" in two.reasons[1]
    assert four.feature_drift and four.drifted
    assert "4 of 10 features drifted (40% >= 30%)" in four.reasons[1]


def test_a_window_below_the_minimum_rows_is_not_enough_data_rather_than_drift(normal_reference: dict) -> None:
    current = np.random.default_rng(11).normal(100, 2, 20)  # wildly shifted, but only 20 rows

    report = check_drift(normal_reference, {"x": current}, thresholds=THRESHOLDS)

    assert report.status == "not_enough_data"
    assert not report.drifted
    assert report.reasons[0] == "not enough data"
    (check,) = report.checks
    assert (check.metric, check.value, check.threshold, check.drifted) == ("rows", 20.0, 100.0, False)


def test_predictions_that_move_are_prediction_drift() -> None:
    rng = np.random.default_rng(12)
    reference = reference_from_data(
        {"x": rng.normal(size=5_000)}, numeric=["x"], categorical=[], predictions=rng.gamma(4, 25, 5_000)
    )
    features = {"x": rng.normal(size=1_000)}

    stable = check_drift(reference, features, predictions=rng.gamma(4, 25, 1_000), thresholds=THRESHOLDS)
    moved = check_drift(reference, features, predictions=rng.gamma(4, 25, 1_000) * 1.6, thresholds=THRESHOLDS)

    assert not stable.prediction_drift and not stable.drifted
    assert moved.prediction_drift and moved.drifted and not moved.feature_drift
    assert moved.reasons[0] == "DRIFT: predictions"
    assert {c.metric for c in moved.checks if c.kind == "prediction"} == {"psi", "ks", "ks_pvalue"}


@pytest.mark.parametrize(("error_sd", "drifted"), [(10.0, False), (20.0, True)])
def test_performance_drifts_when_errors_grow_past_the_holdout_ratio(error_sd: float, drifted: bool) -> None:
    rng = np.random.default_rng(13)
    reference = reference_from_data(
        {"x": rng.normal(size=5_000)}, numeric=["x"], categorical=[], predictions=rng.normal(100, 10, 5_000)
    )
    predictions = rng.normal(100, 10, 2_000)
    actuals = predictions + rng.normal(0, error_sd, 2_000)
    holdout = {"rmse": 10.0, "mae": 10.0 * np.sqrt(2 / np.pi)}  # the metrics of errors with sd 10

    report = check_drift(
        reference,
        {"x": rng.normal(size=2_000)},
        predictions=predictions,
        actuals=actuals,
        reference_metrics=holdout,
        thresholds=THRESHOLDS,
    )

    assert _check(report, None, "rmse_ratio").value == pytest.approx(error_sd / 10.0, rel=0.05)
    assert report.performance_drift is drifted
    assert report.drifted is drifted


def test_performance_without_enough_actuals_is_a_clear_non_drift() -> None:
    rng = np.random.default_rng(14)
    reference = reference_from_data(
        {"x": rng.normal(size=5_000)}, numeric=["x"], categorical=[], predictions=rng.normal(100, 10, 5_000)
    )
    predictions = rng.normal(100, 10, 500)
    actuals = np.full(500, np.nan)
    actuals[:5] = predictions[:5] * 3  # terrible, but five rows say nothing

    report = check_drift(
        reference,
        {"x": rng.normal(size=500)},
        predictions=predictions,
        actuals=actuals,
        reference_metrics={"rmse": 10.0, "mae": 8.0},
        thresholds=THRESHOLDS,
    )

    (check,) = [c for c in report.checks if c.kind == "performance"]
    assert (check.metric, check.value, check.drifted) == ("rows_with_actuals", 5.0, False)
    assert not report.performance_drift
    assert any(r.startswith("not enough rows with actuals (5 < 30)") for r in report.reasons)


# -- bad input and the stored rows ------------------------------------------------------------------


def test_current_data_that_cannot_be_compared_is_refused_naming_the_problem(normal_reference: dict) -> None:
    current = {"x": np.zeros(200)}
    with pytest.raises(DriftInputError, match="lacks feature"):
        check_drift(normal_reference, {"y": np.zeros(200)}, thresholds=THRESHOLDS)
    with pytest.raises(DriftInputError, match="'x' is numeric in the reference"):
        check_drift(normal_reference, {"x": np.array(["a"] * 200, dtype=object)}, thresholds=THRESHOLDS)
    with pytest.raises(DriftInputError, match="without the reference metrics"):
        check_drift(normal_reference, current, predictions=np.zeros(200), actuals=np.zeros(200), thresholds=THRESHOLDS)


def test_report_rows_are_one_per_check_under_the_reports_id(normal_reference: dict) -> None:
    report = check_drift(normal_reference, {"x": np.random.default_rng(16).normal(10, 2, 500)}, thresholds=THRESHOLDS)

    rows = report.rows()

    assert len(rows) == len(report.checks) == 3
    assert {row["check_id"] for row in rows} == {report.check_id}


# -- the real data: hotel_rates seasons ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hotel_features(hotel_rates: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    raw = hotel_rates.dropna(subset=["country"])
    return build_features(raw.assign(arrival_date=pd.to_datetime(raw["arrival_date"])), contract)


@pytest.fixture(scope="module")
def second_half_2016(hotel_features: pd.DataFrame, contract: Contract) -> tuple[pd.DataFrame, dict]:
    """Training reference of 2016-07..2016-12; a model predicting every price exactly stands in for the
    champion, so prediction drift here is the price distribution's drift."""
    rows = hotel_features[hotel_features["arrival_date"] < "2017-01-01"]
    prices = rows[contract.target].to_numpy()
    return rows, reference_statistics(rows, contract, prices)


def test_a_later_summer_month_drifts_in_its_seasonal_features_and_prices(
    second_half_2016: tuple[pd.DataFrame, dict], hotel_features: pd.DataFrame, contract: Contract
) -> None:
    _, reference = second_half_2016
    august = hotel_features[
        (hotel_features["arrival_date"] >= "2017-08-01") & (hotel_features["arrival_date"] < "2017-09-01")
    ]

    report = check_drift(reference, august, predictions=august[contract.target].to_numpy(), thresholds=THRESHOLDS)

    assert {"arrival_date_month", "arrival_date_day_of_year", "historical_adr"} <= set(report.drifted_features)
    assert report.prediction_drift
    assert report.drifted
    assert len(report.checked_features) == len(contract.feature_columns)


def test_a_random_sample_of_the_reference_period_does_not_drift(
    second_half_2016: tuple[pd.DataFrame, dict], contract: Contract
) -> None:
    rows, reference = second_half_2016
    sample = rows.sample(n=800, random_state=17)

    report = check_drift(reference, sample, predictions=sample[contract.target].to_numpy(), thresholds=THRESHOLDS)

    assert not report.feature_drift
    assert report.drift_share < 0.1
    assert not report.prediction_drift
    assert not report.drifted
