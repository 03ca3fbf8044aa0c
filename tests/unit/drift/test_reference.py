"""Reference statistics: what the builder writes, and that documents stored by earlier models still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricepipe.contract import Contract
from pricepipe.drift.check import DriftThresholds, check_drift
from pricepipe.drift.columns import Coded
from pricepipe.drift.reference import (
    categorical_summary,
    numeric_summary,
    reference_from_data,
    reference_statistics,
    validate_reference,
)
from pricepipe.errors import DriftInputError
from pricepipe.features import build_features
from pricepipe.settings import Settings

# Written by the training code of December 2026 (then pricepipe.training.reference) for the first
# week of hotel_rates, as a model version's run stores it: the format every champion's is in.
STORED = Path(__file__).with_name("reference_v1.json")


@pytest.fixture(scope="module")
def first_week(hotel_rates: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """The rows the stored document describes: features of the bookings before 2016-07-09."""
    raw = hotel_rates.dropna(subset=["country"])
    raw = raw[raw["arrival_date"] < "2016-07-09"]
    return build_features(raw.assign(arrival_date=pd.to_datetime(raw["arrival_date"])), contract).reset_index(drop=True)


def _stored_predictions(rows: pd.DataFrame, contract: Contract) -> np.ndarray:
    return rows[contract.target].to_numpy() * 0.9 + 10


def test_bins_count_the_edges_below_each_value() -> None:
    summary = numeric_summary([1, 2, 3, 4, 5, 6, 7, 8, 9, None], bins=2, sample_size=3)

    assert summary["bin_edges"] == [5.0]  # the median
    assert summary["bin_proportions"] == pytest.approx([5 / 9, 4 / 9])  # 1..5 (<= the edge), then 6..9
    assert summary["missing_fraction"] == pytest.approx(1 / 10)
    assert len(summary["sample"]) == 3
    assert summary["quantiles"][0] == 1 and summary["quantiles"][-1] == 9


def test_categories_come_most_frequent_first_ties_by_label_and_the_rest_pooled() -> None:
    labels = ("b", "a", "c", "d")
    codes = np.array([0, 0, 1, 1, 2, 2, 2, 3, -1, -1], dtype=np.int64)  # c x3, a x2, b x2, d x1, 2 missing

    summary = categorical_summary(Coded(codes, labels), top=3)

    assert list(summary["frequencies"].items()) == [("c", 3 / 8), ("a", 2 / 8), ("b", 2 / 8)]
    assert summary["other_fraction"] == pytest.approx(1 / 8)
    assert (summary["count"], summary["missing_fraction"]) == (10, pytest.approx(0.2))


def test_reference_statistics_describe_every_feature_target_and_prediction(
    first_week: pd.DataFrame, contract: Contract
) -> None:
    predictions = np.linspace(50, 150, 40)

    ref = reference_statistics(first_week, contract, predictions, sample_size=50)

    assert set(ref["numeric"]) == set(contract.numeric_features)
    assert set(ref["categorical"]) == set(contract.categorical_features)
    for stats in (*ref["numeric"].values(), ref["target"], ref["prediction"]):
        assert len(stats["bin_proportions"]) == len(stats["bin_edges"]) + 1
        assert sum(stats["bin_proportions"]) == pytest.approx(1.0)
        assert len(stats["quantiles"]) == 101
        assert stats["quantiles"] == sorted(stats["quantiles"])
        assert len(stats["sample"]) <= 50
    for stats in ref["categorical"].values():
        assert sum(stats["frequencies"].values()) + stats["other_fraction"] == pytest.approx(1.0)
    assert ref["prediction"]["count"] == 40
    assert ref["target"]["name"] == contract.target
    assert ref["rows"] == len(first_week)
    assert ref["contract"] == {"name": contract.name, "version": contract.version}


def test_the_builder_writes_what_training_has_stored_byte_for_byte(
    first_week: pd.DataFrame, contract: Contract
) -> None:
    # GIVEN the rows and predictions a stored document was built from
    predictions = _stored_predictions(first_week, contract)

    # WHEN the reference is built again
    document = reference_statistics(
        first_week, contract, predictions, prediction_source="holdout, by the evaluation model", sample_size=5
    )

    # THEN it is the stored text exactly: a changed format needs a new version and a reader of the old
    assert json.dumps(document) == STORED.read_text()


def test_a_reference_stored_by_an_earlier_model_still_loads_and_checks(
    first_week: pd.DataFrame, contract: Contract
) -> None:
    stored = json.loads(STORED.read_text())

    validate_reference(stored)
    report = check_drift(
        stored,
        first_week,
        predictions=_stored_predictions(first_week, contract),
        thresholds=DriftThresholds.from_settings(Settings()),
    )

    assert report.status == "checked" and not report.drifted
    assert len(report.checked_features) == len(contract.feature_columns)


def test_a_document_that_is_not_reference_statistics_of_this_version_is_refused() -> None:
    rng = np.random.default_rng(1)
    document = reference_from_data({"x": rng.normal(size=1_000)}, numeric=["x"], categorical=[])
    with pytest.raises(DriftInputError, match="must be a reference-statistics mapping"):
        validate_reference([document])
    with pytest.raises(DriftInputError, match="format is 'something-else'"):
        validate_reference({**document, "format": "something-else"})
    with pytest.raises(DriftInputError, match="version 2; this code reads version 1"):
        validate_reference({**document, "format_version": 2})
    broken = json.loads(json.dumps(document))
    broken["numeric"]["x"]["quantiles"] = broken["numeric"]["x"]["quantiles"][:50]
    with pytest.raises(DriftInputError, match="quantile sketch needs 101 points"):
        validate_reference(broken)
