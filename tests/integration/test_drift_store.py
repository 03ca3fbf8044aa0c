"""Drift against real PostgreSQL: reports written to monitoring.drift_metrics, and the window the
drift flow checks (price_data.model_features, read as training reads it) against a reference."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import psycopg
import pytest

from pipectl import datasource
from pricepipe.drift.check import DriftReport, DriftThresholds, check_drift
from pricepipe.drift.reference import reference_from_data, reference_statistics
from pricepipe.drift.store import save_report
from pricepipe.features import build_features
from pricepipe.settings import Settings
from pricepipe.training.data import TrainingWindow, load_postgres
from tests.conftest import land_and_load

FIRST = dt.date(2016, 7, 2)
UTC = dt.UTC


def _report(rows: int = 500, seed: int = 1) -> DriftReport:
    rng = np.random.default_rng(seed)
    reference = reference_from_data(
        {"x": rng.normal(size=5_000), "c": rng.choice(np.array(["a", "b"], dtype=object), 5_000)},
        numeric=["x"],
        categorical=["c"],
        predictions=rng.normal(100, 10, 5_000),
    )
    predictions = rng.normal(115, 10, rows)
    return check_drift(
        reference,
        {"x": rng.normal(size=rows) + 1, "c": rng.choice(np.array(["a", "b"], dtype=object), rows)},
        predictions=predictions,
        actuals=predictions + rng.normal(0, 10, rows),
        reference_metrics={"rmse": 9.0, "mae": 7.0},
        thresholds=DriftThresholds.from_settings(Settings()),
        model_name="price-model",
        model_version="4",
        window_start=dt.datetime(2017, 8, 1, tzinfo=UTC),
        window_end=dt.datetime(2017, 8, 8, tzinfo=UTC),
    )


def test_a_report_is_stored_one_row_per_check(conn: psycopg.Connection) -> None:
    report = _report()

    written = save_report(conn, report)

    stored = conn.execute(
        "SELECT kind, feature, metric, value, threshold, drifted, model_name, model_version, window_start,"
        " window_end, reference_rows, current_rows, checked_at FROM monitoring.drift_metrics"
        " WHERE check_id = %s ORDER BY id",
        (report.check_id,),
    ).fetchall()
    assert written == len(stored) == len(report.checks)
    assert [r[:6] for r in stored] == [
        (c.kind, c.feature, c.metric, pytest.approx(c.value), c.threshold, c.drifted) for c in report.checks
    ]
    assert {r[6:] for r in stored} == {
        (
            "price-model",
            "4",
            report.window_start,
            report.window_end,
            report.reference_rows,
            report.current_rows,
            report.checked_at,
        )
    }
    assert {r[0] for r in stored} == {"feature", "prediction", "performance"}


def test_a_report_is_stored_all_or_nothing(conn: psycopg.Connection) -> None:
    report = _report()
    refused = dataclasses.replace(report.checks[0], kind="bogus")  # type: ignore[arg-type]  # the table's CHECK refuses it
    broken = dataclasses.replace(report, checks=(*report.checks, refused))

    with pytest.raises(psycopg.errors.CheckViolation):
        save_report(conn, broken)

    stored = conn.execute("SELECT count(*) FROM monitoring.drift_metrics WHERE check_id = %s", (report.check_id,))
    assert stored.fetchone() == (0,)


def test_the_window_the_flow_checks_is_read_from_model_features(conn, s3, contract, settings, hotel_rates) -> None:  # type: ignore[no-untyped-def]
    land_and_load(conn, s3, contract, settings, datasource.select_days(start=FIRST, end=FIRST + dt.timedelta(days=5)))
    window = TrainingWindow.ending(FIRST + dt.timedelta(days=4), 3)  # July 4, 5 and 6

    frame = load_postgres(conn, contract, window).frame

    expected = hotel_rates[hotel_rates["arrival_date"].between("2016-07-04", "2016-07-06")].dropna(subset=["country"])
    assert len(frame) == len(expected) > 0
    assert set(contract.feature_columns) <= set(frame.columns)
    np.testing.assert_array_equal(frame["lead_time"].to_numpy(dtype=float), expected["lead_time"].to_numpy(dtype=float))
    assert frame["country"].astype(str).tolist() == expected["country"].tolist()
    assert set(np.unique(frame["arrival_date_day_of_year"])) == {186, 187, 188}
    conn.execute("SET TIME ZONE 'Asia/Tokyo'")  # event days stay the same days east of UTC
    assert len(load_postgres(conn, contract, window).frame) == len(frame)

    # the window goes straight into a check against a training reference of the same days
    features = build_features(expected.assign(arrival_date=pd.to_datetime(expected["arrival_date"])), contract)
    reference = reference_statistics(features, contract, features[contract.target].to_numpy())
    report = check_drift(reference, frame, thresholds=DriftThresholds.from_settings(Settings(drift_min_rows=50)))
    assert report.status == "checked" and not report.drifted
    assert len(report.checked_features) == len(contract.feature_columns)


def test_an_empty_window_is_not_enough_data_rather_than_an_error(conn, contract) -> None:  # type: ignore[no-untyped-def]
    frame = load_postgres(conn, contract, TrainingWindow.ending(dt.date(2030, 1, 1), 7)).frame
    reference = reference_from_data(
        {name: np.zeros(200) for name in contract.numeric_features}, numeric=contract.numeric_features, categorical=[]
    )

    report = check_drift(reference, frame, thresholds=DriftThresholds.from_settings(Settings()))

    assert len(frame) == 0
    assert report.status == "not_enough_data" and not report.drifted
