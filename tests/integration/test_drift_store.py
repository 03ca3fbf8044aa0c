"""Drift against real PostgreSQL: the current window from price_data.model_features, the prediction
log from monitoring.predictions, and reports written to monitoring.drift_metrics."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import psycopg
import pytest

from pipectl import datasource
from pricepipe import drift
from pricepipe.drift import DriftThresholds, check_drift, load_current_window, load_prediction_log, save_report
from pricepipe.features import build_features
from pricepipe.settings import Settings
from pricepipe.training.reference import reference_statistics
from tests.conftest import land_and_load

FIRST = dt.date(2016, 7, 2)
UTC = dt.UTC


def _report(rows: int = 500, seed: int = 1) -> drift.DriftReport:
    rng = np.random.default_rng(seed)
    reference = drift.reference_from_data(
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


def test_the_current_window_is_read_from_model_features(conn, s3, contract, settings, hotel_rates) -> None:  # type: ignore[no-untyped-def]
    land_and_load(conn, s3, contract, settings, datasource.select_days(start=FIRST, end=FIRST + dt.timedelta(days=5)))
    start, end = drift.window_ending(FIRST + dt.timedelta(days=4), days=3)  # July 4, 5 and 6

    columns, rows = load_current_window(conn, contract, start, end)

    expected = hotel_rates[hotel_rates["arrival_date"].between("2016-07-04", "2016-07-06")].dropna(subset=["country"])
    assert rows == len(expected) > 0
    assert set(columns) == set(contract.feature_columns)
    np.testing.assert_array_equal(columns["lead_time"], expected["lead_time"].to_numpy(dtype=float))
    country = columns["country"]
    assert [country.labels[i] for i in country.codes] == expected["country"].tolist()
    assert set(np.unique(columns["arrival_date_day_of_year"])) == {186.0, 187.0, 188.0}
    conn.execute("SET TIME ZONE 'Asia/Tokyo'")  # event days stay the same days east of UTC
    _, rows_in_tokyo = load_current_window(conn, contract, start, end)
    assert rows_in_tokyo == rows

    # the window goes straight into a check against a training reference of the same days
    features = build_features(expected.assign(arrival_date=pd.to_datetime(expected["arrival_date"])), contract)
    reference = reference_statistics(features, contract, features[contract.target].to_numpy())
    report = check_drift(reference, columns, thresholds=DriftThresholds.from_settings(Settings(drift_min_rows=50)))
    assert report.status == "checked" and not report.drifted
    assert len(report.checked_features) == len(contract.feature_columns)


def test_an_empty_window_reads_as_no_rows(conn, contract) -> None:  # type: ignore[no-untyped-def]
    columns, rows = load_current_window(conn, contract, *drift.window_ending(dt.date(2030, 1, 1), days=7))

    assert rows == 0
    assert all(len(values) == 0 for values in columns.values())


def test_the_prediction_log_gives_the_window_with_actuals_where_known(conn: psycopg.Connection) -> None:
    base = dt.datetime(2017, 8, 1, tzinfo=UTC)
    rows = [
        ("r1", "price-model", "4", 100.0, base + dt.timedelta(hours=1), 110.0),
        ("r2", "price-model", "4", 120.0, base + dt.timedelta(hours=2), None),
        ("r3", "price-model", "3", 90.0, base + dt.timedelta(hours=3), 95.0),
        ("r4", "price-model", "4", 130.0, base + dt.timedelta(days=8), 128.0),  # after the window
    ]
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO monitoring.predictions (request_id, model_name, model_version, features, prediction,"
            " predicted_at, actual) VALUES (%s, %s, %s, '{}', %s, %s, %s)",
            rows,
        )

    everything = load_prediction_log(conn, base, base + dt.timedelta(days=7))
    version_4 = load_prediction_log(
        conn, base, base + dt.timedelta(days=7), model_name="price-model", model_version="4"
    )

    np.testing.assert_array_equal(everything.predictions, [100.0, 120.0, 90.0])
    np.testing.assert_array_equal(everything.actuals, [110.0, np.nan, 95.0])
    assert everything.rows_with_actuals == 2
    np.testing.assert_array_equal(version_4.predictions, [100.0, 120.0])
