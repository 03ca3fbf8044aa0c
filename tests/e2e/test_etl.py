"""The ETL state machine (the ASL file CDK deploys) on the local cloud, with the real handlers."""

from __future__ import annotations

import io

import psycopg
import pyarrow.parquet as pq
import pytest

from pipectl import datasource, flows
from pipectl.target import Target

pytestmark = pytest.mark.e2e


def db_counts(target: Target) -> tuple[int, int]:
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        raw = conn.execute("SELECT count(*) FROM price_data.raw_data").fetchone()
        features = conn.execute("SELECT count(*) FROM price_data.processed_features").fetchone()
    assert raw and features
    return raw[0], features[0]


def test_landing_files_flow_into_postgres_and_the_lake(target: Target) -> None:
    days = datasource.select_days(days=3)
    datasource.land_days(target.client("s3"), target.landing_bucket, "landing/", days)
    execution = flows.run(target, "etl", {"prefix": "landing/"})
    assert execution.status == "SUCCEEDED", execution.cause
    summary = execution.output
    assert summary["execution"] == execution.name  # the ledger names the run by its execution
    expected_in = sum(datasource.day_csv(d)[1] for d in days)
    assert summary["files_loaded"] == 3 and summary["rows_in"] == expected_in
    assert summary["rows_in"] == summary["rows_loaded"] + summary["rows_quarantined"] + summary["rows_duplicate"]
    assert db_counts(target) == (summary["rows_loaded"], summary["rows_loaded"])
    s3 = target.client("s3")
    lake = s3.list_objects_v2(Bucket=target.lake_bucket, Prefix="processed_features/dataset=hotel_rates/")
    keys = [o["Key"] for o in lake["Contents"]]
    assert len(keys) == 3
    rows = sum(
        pq.read_table(io.BytesIO(s3.get_object(Bucket=target.lake_bucket, Key=k)["Body"].read())).num_rows for k in keys
    )
    assert rows == summary["rows_loaded"]


def test_running_again_adds_nothing(target: Target) -> None:
    datasource.land_days(target.client("s3"), target.landing_bucket, "landing/", datasource.select_days(days=3))
    first = flows.run(target, "etl", {"prefix": "landing/"})  # loads them, unless an earlier test did
    assert first.status == "SUCCEEDED", first.cause
    before = db_counts(target)
    execution = flows.run(target, "etl", {"prefix": "landing/"})
    assert execution.status == "SUCCEEDED"
    assert execution.output["files_total"] == 0
    assert db_counts(target) == before


def test_a_failing_file_fails_the_run_the_others_load_and_the_next_run_loads_it(target: Target) -> None:
    assert target.database_url
    day_ok, day_bad = datasource.select_days(days=12)[-2:]
    frame = datasource.hotel_rates()
    doomed = int(frame.loc[frame["arrival_date"] == day_bad.isoformat(), "booking_id"].iloc[0])
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE price_data.raw_data ADD CONSTRAINT not_this_one CHECK (booking_id <> {doomed})")
    try:
        datasource.land_days(target.client("s3"), target.landing_bucket, "landing/", [day_ok, day_bad])
        execution = flows.run(target, "etl", {"prefix": "landing/"})
    finally:
        with psycopg.connect(target.database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE price_data.raw_data DROP CONSTRAINT not_this_one")
    assert (execution.status, execution.error) == ("FAILED", "EtlFilesFailed")
    with psycopg.connect(target.database_url) as conn:
        ledger = dict(
            conn.execute(
                "SELECT source_key, status FROM price_data.ingestion_ledger WHERE source_key = ANY(%s)",
                ([datasource.day_key("landing/", d) for d in (day_ok, day_bad)],),
            ).fetchall()
        )
        loaded_bad = conn.execute(
            "SELECT count(*) FROM price_data.raw_data WHERE arrival_date = %s", (day_bad,)
        ).fetchone()
    assert ledger == {
        datasource.day_key("landing/", day_ok): "loaded",
        datasource.day_key("landing/", day_bad): "failed",
    }
    assert loaded_bad == (0,)
    # the failed file is not taken: the next run, with the problem gone, loads it
    retry = flows.run(target, "etl", {"prefix": "landing/"})
    assert retry.status == "SUCCEEDED" and retry.output["files_loaded"] == 1
