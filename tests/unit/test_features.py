"""Features: the frame form (ETL, training) and the one-record form (serving) must agree."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pricepipe.contract import Contract, read_csv, validate
from pricepipe.features import DATE_PARTS, build_features, feature_row


@pytest.fixture(scope="module")
def rows(contract: Contract, hotel_rates: pd.DataFrame) -> pd.DataFrame:
    sample = hotel_rates.sample(400, random_state=3)
    return validate(read_csv(sample.to_csv(index=False).encode(), contract), contract).good


def test_feature_frame_has_the_table_columns_in_order(contract: Contract, rows: pd.DataFrame) -> None:
    features = build_features(rows, contract)
    assert list(features.columns) == list(contract.feature_table_columns)
    assert len(features) == len(rows)


def test_date_parts_are_computed_from_the_event_time(contract: Contract) -> None:
    rows = pd.DataFrame(
        {name: [None, None] for name in contract.columns}
        | {"arrival_date": pd.to_datetime(["2016-12-31", "2017-01-02"]), "booking_id": [1, 2]}
    )
    features = build_features(rows, contract)
    assert features["arrival_date_month"].tolist() == [12, 1]
    assert features["arrival_date_day_of_week"].tolist() == [5, 0]  # Saturday, Monday
    assert features["arrival_date_is_weekend"].tolist() == [True, False]
    assert features["arrival_date_week_of_year"].tolist() == [52, 1]
    assert features["arrival_date_day_of_year"].tolist() == [366, 2]


@pytest.mark.parametrize("part", sorted(DATE_PARTS))
def test_vectorised_and_scalar_date_parts_agree_over_two_years(part: str) -> None:
    days = pd.date_range("2016-01-01", "2017-12-31", freq="D")
    vectorised, scalar = DATE_PARTS[part]
    assert [int(v) for v in vectorised(pd.Series(days))] == [int(scalar(d.date())) for d in days]


def test_one_record_gives_the_same_features_as_the_frame(contract: Contract, rows: pd.DataFrame) -> None:
    frame = build_features(rows, contract)
    for position in range(0, len(rows), 37):
        record = {k: (None if pd.isna(v) else v) for k, v in rows.iloc[position].items()}
        record["arrival_date"] = rows.iloc[position]["arrival_date"].date().isoformat()  # as an API client sends it
        single = feature_row(record, contract)
        assert list(single) == list(contract.feature_columns)
        expected = frame.iloc[position]
        for name in contract.feature_columns:
            assert single[name] == expected[name] or (pd.isna(single[name]) and pd.isna(expected[name])), name


def test_a_record_without_target_still_has_all_features(contract: Contract) -> None:
    record = dict.fromkeys(contract.input_columns, 1) | {"arrival_date": dt.date(2017, 7, 1)}
    assert set(feature_row(record, contract)) == set(contract.feature_columns)
