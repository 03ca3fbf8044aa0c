"""The CLI's summaries as an 80-column terminal shows them: no line longer than the terminal, and
no name, number or word of a cell broken across lines."""

from __future__ import annotations

import datetime as dt
import io
import re
from typing import Any

import pytest
from rich.console import Console, RenderableType

from pipectl.commands.data import destinations_table, etl_summary
from pipectl.commands.drift import timeline_table
from pipectl.commands.local import status_table
from pipectl.commands.training import training_table
from pipectl.target import Target

WIDTH = 80
ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:"


def render(renderable: RenderableType, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, color_system=None, force_terminal=False, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def assert_readable(text: str, *words: str) -> None:
    """Every line fits, and each of ``words`` (a file name, a date, an ARN's name) is on one line."""
    lines = text.splitlines()
    too_long = [line for line in lines if len(line) > WIDTH]
    assert not too_long, too_long
    for word in words:
        assert any(word in line for line in lines), f"{word!r} is broken across lines:\n{text}"


def _file(day: dt.date, status: str = "loaded", error: str | None = None, quarantined: int = 0) -> dict[str, Any]:
    return {
        "key": f"landing/hotel_rates/bookings-{day:%Y%m%d}.csv",
        "status": status,
        "rows_in": 34,
        "rows_loaded": 0 if status != "loaded" else 34 - quarantined,
        "rows_quarantined": quarantined,
        "rows_duplicate": 0,
        "quarantine_key": None,
        "event_date_min": day.isoformat(),
        "event_date_max": day.isoformat(),
        "error": error,
    }


def etl_run(days: int = 178) -> dict[str, Any]:
    first = dt.date(2016, 7, 2)
    files = [_file(first + dt.timedelta(days=i), quarantined=1 if i % 50 == 0 else 0) for i in range(days)]
    files[3] = _file(first + dt.timedelta(days=3), "failed", "TransientError: the lake write timed out (retry later)")
    files[4] = _file(first + dt.timedelta(days=4), "rejected", "the file has no column arrival_date")
    return {
        "execution": "5c1e0c8e-3c0b-4b0e-9d55-0d2c4b8b1f7a",
        "rows_in": sum(f["rows_in"] for f in files),
        "rows_loaded": sum(f["rows_loaded"] for f in files),
        "rows_quarantined": sum(f["rows_quarantined"] for f in files),
        "rows_duplicate": 0,
        "files_loaded": days - 2,
        "files_rejected": 1,
        "files_failed": 1,
        "files": files,
        "files_listed": days,
        "files_total": days,
    }


def test_the_etl_summary_of_a_178_day_run_is_a_few_lines_with_a_line_per_failure() -> None:
    run = etl_run()

    text = render(etl_summary(run))

    assert len(text.splitlines()) <= 10, text
    assert_readable(text, "bookings-20160705.csv", "bookings-20160706.csv", "2016-07-02", "2016-12-26")
    assert re.search(r"files\s+178: 176 loaded, 1 rejected, 1 failed", text), text
    assert re.search(r"rows\s+6,052 in: 5,980 loaded, 4 quarantined, 0 duplicate", text), text
    failures = [line for line in text.splitlines() if line.lstrip().startswith(("failed", "rejected"))]
    assert len(failures) == 2 and "lake write" in failures[0] and "no column" in failures[1], text
    assert "bookings-20160702.csv" not in text  # a loaded file is in the details only
    assert "--details" in text


def test_the_etl_details_list_every_file_within_80_columns() -> None:
    run = etl_run()

    text = render(etl_summary(run, details=True))

    names = [f"bookings-{dt.date(2016, 7, 2) + dt.timedelta(days=i):%Y%m%d}.csv" for i in range(178)]
    assert_readable(text, *names)
    assert sum(1 for line in text.splitlines() if "bookings-" in line) == 178 + 2  # each file, the failures again


def test_an_etl_run_that_listed_only_some_files_says_how_many() -> None:
    run = {**etl_run(12), "files_total": 40}

    assert "12 of 40 files listed" in render(etl_summary(run, details=True))


def test_an_etl_run_with_nothing_new_says_so() -> None:
    assert "no new landing files" in render(etl_summary({"files_total": 0}))


def test_the_destinations_fit() -> None:
    rows = [
        ("PostgreSQL price_data.raw_data", "15,402 rows"),
        ("PostgreSQL price_data.processed_features", "15,402 rows"),
        ("PostgreSQL price_data.ingestion_ledger", "408 rows"),
        ("Parquet lake s3://pricepipe-lake/processed_features/", "1,204 files"),
        ("quarantine s3://pricepipe-landing/quarantine/hotel_rates/", "12 files"),
    ]

    text = render(destinations_table(rows))

    assert_readable(text, *(word for row in rows for word in " ".join(row).split()))


def test_the_loop_timeline_fits_with_each_decision_in_words() -> None:
    timeline = [
        {
            "week": "2016-12-27..2017-01-02",
            "quotes": 40,
            "loaded": 233,
            "decision": "none",
            "drift": "no retraining: feature and prediction drift found but performance stable"
            " (RMSE 31.2 vs 28.9 on the training holdout)",
        },
        {
            "week": "2017-01-03..2017-01-09",
            "quotes": 40,
            "loaded": 1204,
            "decision": "retrain",
            "drift": "retraining: performance drifted (RMSE 48.3 vs 28.9 on the training holdout)",
            "training": "v2 RMSE 30.1 vs champion 48.3: promote",
            "promotion": "promoted",
        },
    ]

    text = render(timeline_table(timeline))

    assert_readable(text, "2016-12-27", "2017-01-03", "1204", "31.2", "48.3", "v2", "promoted", "holdout)")


def test_local_status_fits() -> None:
    target = Target(
        kind="local",
        region="us-east-1",
        landing_bucket="pricepipe-landing",
        lake_bucket="pricepipe-lake",
        artifacts_bucket="pricepipe-artifacts",
        state_machines={k: f"{ARN}pricepipe-{k}" for k in ("etl", "training", "promotion", "drift")},
        functions={k: f"{FUNCTION}pricepipe-{k}" for k in ("etl", "migrate", "serving", "drift-check")},
        endpoint="http://127.0.0.1:4577",
        database_url="postgresql://postgres:secret@127.0.0.1:5432/pricepipe",
        api_url="http://127.0.0.1:8000",
        api_key="a3F9x0bQe1ZlC7u2Vb9pXk4Rw8YtN6mS",
        dataset="hotel_rates",
    )
    routes = [
        {"function_version": "7", "traffic_percent": 90.0, "model_version": "3"},
        {"function_version": "8", "traffic_percent": 10.0, "model_version": "4"},
    ]

    text = render(status_table(target, routes))

    assert_readable(
        text,
        "a3F9x0bQe1ZlC7u2Vb9pXk4Rw8YtN6mS",
        "http://127.0.0.1:8000/docs",
        "postgresql://postgres:***@127.0.0.1:5432/pricepipe",
        "pricepipe-drift-check",
        "pricepipe-promotion",
        "landing/hotel_rates/",
    )
    assert "secret" not in text
    assert "10%: model 4" in text


@pytest.mark.parametrize("champion", [True, False], ids=["against-champion", "first-model"])
def test_the_training_comparison_fits(champion: bool) -> None:
    metrics = {"rmse": 30.123, "mae": 21.5, "mape": 0.183, "r2": 0.791}
    evaluation: dict[str, Any] = {
        "decision": "promote",
        "reason": "challenger RMSE 30.123 beats champion RMSE 48.301 by more than 2%",
        "challenger": {"version": "12", "metrics": metrics},
        "holdout": {"start": "2017-01-03", "end": "2017-01-09", "rows": 1204},
    }
    if champion:
        evaluation["champion"] = {"version": "11", "metrics": {**metrics, "rmse": 48.301}}

    text = render(training_table(evaluation))

    assert_readable(text, "30.123", "0.791", "2017-01-03..2017-01-09,", "challenger", "48.301")
