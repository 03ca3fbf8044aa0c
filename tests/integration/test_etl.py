"""The ETL steps on real PostgreSQL and S3 (moto): accounting, idempotency, quarantine, atomicity."""

from __future__ import annotations

import datetime as dt
import io
import json

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest

from pipectl import datasource
from pricepipe import etl, storage
from pricepipe.errors import BucketNotFound, ContractError, TransientError
from tests.conftest import land_and_load

DAY = dt.date(2016, 7, 2)  # 34 bookings, one without a country


def counts(conn: psycopg.Connection) -> tuple[int, int]:
    raw = conn.execute("SELECT count(*) FROM price_data.raw_data").fetchone()
    features = conn.execute("SELECT count(*) FROM price_data.processed_features").fetchone()
    assert raw is not None and features is not None
    return raw[0], features[0]


def put(s3, settings, key: str, body: bytes) -> storage.ObjectRef:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=settings.landing_bucket, Key=key, Body=body)
    head = s3.head_object(Bucket=settings.landing_bucket, Key=key)
    return storage.ObjectRef(settings.landing_bucket, key, head["ETag"].strip('"'), head["ContentLength"])


def test_a_day_loads_into_both_tables_the_lake_and_the_quarantine(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    (result,) = land_and_load(conn, s3, contract, settings, [DAY])
    assert (result.status, result.rows_in, result.rows_loaded, result.rows_quarantined, result.rows_duplicate) == (
        "loaded",
        34,
        33,
        1,
        0,
    )
    assert counts(conn) == (33, 33)
    model_rows = conn.execute("SELECT * FROM price_data.model_features ORDER BY booking_id").fetchall()
    # model-ready rows, and the load that stored them (what a contract without event time windows on)
    assert len(model_rows) == 33 and len(model_rows[0]) == len(contract.feature_table_columns) + 1
    quarantined = pd.read_csv(
        io.BytesIO(s3.get_object(Bucket=settings.landing_bucket, Key=result.quarantine_key)["Body"].read())
    )
    assert quarantined["_reasons"].tolist() == ["country: missing value"]
    assert result.quarantine_key == "quarantine/hotel_rates/2016/07/02/bookings-20160702.csv"
    (lake_key,) = result.lake_keys
    assert lake_key.startswith("processed_features/dataset=hotel_rates/arrival_date=2016-07-02/part-")
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=settings.lake_bucket, Key=lake_key)["Body"].read()))
    assert table.num_rows == 33 and table.column_names == list(contract.feature_table_columns)
    ledger = conn.execute(
        "SELECT status, rows_in, rows_loaded, rows_quarantined, rows_duplicate, event_date_min, lake_keys"
        " FROM price_data.ingestion_ledger"
    ).fetchall()
    assert ledger == [("loaded", 34, 33, 1, 0, DAY, [lake_key])]
    lineage = conn.execute("SELECT DISTINCT _ingest_id FROM price_data.raw_data").fetchall()
    assert lineage == [(result.ingest_id,)]


def test_landing_the_same_file_twice_adds_nothing(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    land_and_load(conn, s3, contract, settings, [DAY])
    (again,) = land_and_load(conn, s3, contract, settings, [DAY])
    assert again.status == "skipped" and again.reason == "already loaded"
    assert counts(conn) == (33, 33)
    assert conn.execute("SELECT count(*) FROM price_data.ingestion_ledger").fetchone() == (1,)


def test_rows_already_stored_from_another_file_count_as_duplicates(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    land_and_load(conn, s3, contract, settings, [DAY])
    body, _ = datasource.day_csv(DAY)
    resent = etl.load_file(
        conn, s3, contract, settings, put(s3, settings, "landing/hotel_rates/resend/day.csv", body), "run-2"
    )
    assert (resent.rows_in, resent.rows_loaded, resent.rows_quarantined, resent.rows_duplicate) == (34, 0, 1, 33)
    assert counts(conn) == (33, 33)


def test_every_row_is_accounted_for_over_many_days(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    days = datasource.select_days(days=20)
    results = land_and_load(conn, s3, contract, settings, days)
    summary = etl.summarize(conn, "test-run")
    assert summary["files_loaded"] == 20 and summary["files_failed"] == 0
    assert summary["rows_in"] == summary["rows_loaded"] + summary["rows_quarantined"] + summary["rows_duplicate"]
    assert summary["rows_in"] == sum(datasource.day_csv(d)[1] for d in days)
    assert counts(conn) == (summary["rows_loaded"], summary["rows_loaded"])
    assert sum(r.rows_loaded for r in results) == summary["rows_loaded"]


def test_a_load_failing_part_way_leaves_only_a_failed_ledger_row_and_loads_once_fixed(
    conn, s3, contract, settings
) -> None:  # type: ignore[no-untyped-def]
    # raw rows are COPYed first; the features COPY then fails on a constraint a DBA added
    conn.execute("ALTER TABLE price_data.processed_features ADD CONSTRAINT no_july CHECK (arrival_date_month <> 7)")
    body, _ = datasource.day_csv(DAY)
    ref = put(s3, settings, "landing/hotel_rates/2016/07/02/bookings-20160702.csv", body)
    with pytest.raises(psycopg.errors.CheckViolation):
        etl.load_file(conn, s3, contract, settings, ref, "run-fail")
    assert counts(conn) == (0, 0)
    assert s3.list_objects_v2(Bucket=settings.lake_bucket).get("KeyCount") == 0
    assert conn.execute("SELECT status, rows_loaded FROM price_data.ingestion_ledger").fetchall() == [("failed", 0)]
    assert "quarantine/" not in json.dumps(
        [o["Key"] for o in s3.list_objects_v2(Bucket=settings.landing_bucket).get("Contents", [])]
    )
    # once the constraint is fixed, the retry loads the file in full
    conn.execute("ALTER TABLE price_data.processed_features DROP CONSTRAINT no_july")
    retried = etl.load_file(conn, s3, contract, settings, ref, "run-fail")
    assert retried.rows_loaded == 33 and counts(conn) == (33, 33)
    assert etl.summarize(conn, "run-fail")["files"][0]["status"] == "loaded"


def test_a_missing_lake_bucket_is_a_configuration_error_that_rolls_the_load_back(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    body, _ = datasource.day_csv(DAY)
    ref = put(s3, settings, "landing/hotel_rates/2016/07/02/bookings-20160702.csv", body)
    s3.delete_bucket(Bucket=settings.lake_bucket)
    with pytest.raises(BucketNotFound, match=settings.lake_bucket) as failure:
        etl.load_file(conn, s3, contract, settings, ref, "run-x")
    # the state machine retries TransientError only: a deployment to fix is not retried
    assert not isinstance(failure.value, TransientError)
    assert counts(conn) == (0, 0)
    (error,) = conn.execute("SELECT error FROM price_data.ingestion_ledger WHERE status = 'failed'").fetchone()
    assert error.startswith("BucketNotFound:")


def test_a_file_that_failed_on_a_missing_bucket_loads_once_the_bucket_exists(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    body, _ = datasource.day_csv(DAY)
    ref = put(s3, settings, "landing/hotel_rates/2016/07/02/bookings-20160702.csv", body)
    s3.delete_bucket(Bucket=settings.lake_bucket)
    with pytest.raises(BucketNotFound):
        etl.load_file(conn, s3, contract, settings, ref, "run-x")
    s3.create_bucket(Bucket=settings.lake_bucket)
    assert etl.load_file(conn, s3, contract, settings, ref, "run-x").rows_loaded == 33
    assert counts(conn) == (33, 33)


def test_an_unreadable_file_is_rejected_whole_with_its_reason(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    ref = put(s3, settings, "landing/hotel_rates/broken.csv", b'booking_id,"avg_price\n1,2,3\n"')
    result = etl.load_file(conn, s3, contract, settings, ref, "run-r")
    assert result.status == "rejected" and "not a readable CSV" in (result.reason or "")
    reason = s3.get_object(Bucket=settings.landing_bucket, Key="quarantine/hotel_rates/broken.csv.reason.txt")
    assert b"not a readable CSV" in reason["Body"].read()
    again = etl.load_file(conn, s3, contract, settings, ref, "run-r2")
    assert again.status == "skipped" and again.reason == "already rejected"
    assert counts(conn) == (0, 0)


def test_a_file_missing_a_column_is_quarantined_row_by_row(conn, s3, contract, settings, hotel_rates) -> None:  # type: ignore[no-untyped-def]
    day = hotel_rates[hotel_rates["arrival_date"] == DAY.isoformat()].drop(columns=["meal"])
    ref = put(s3, settings, "landing/hotel_rates/no-meal.csv", day.to_csv(index=False).encode())
    result = etl.load_file(conn, s3, contract, settings, ref, "run-m")
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (34, 0, 34)
    assert counts(conn) == (0, 0)


def test_a_file_changed_after_discovery_is_skipped_without_loading_a_row(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    body, _ = datasource.day_csv(DAY)
    ref = put(s3, settings, "landing/hotel_rates/day.csv", body)
    put(s3, settings, "landing/hotel_rates/day.csv", body + b"\n")
    result = etl.load_file(conn, s3, contract, settings, ref, "run-c")
    assert result.status == "skipped" and "changed or vanished" in (result.reason or "")
    assert counts(conn) == (0, 0)


def test_discover_lists_only_files_not_yet_taken_and_writes_a_manifest(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    first, second = datasource.select_days(days=2)
    land_and_load(conn, s3, contract, settings, [first])
    datasource.land_days(s3, settings.landing_bucket, settings.landing_prefix, [second])
    put(s3, settings, "landing/ames/houses.csv", b"rownames,sale_price\n1,100\n")  # another contract's folder
    found = etl.discover(s3, conn, settings, contract, None, "run-d")
    assert (found["prefix"], found["files"], found["already_taken"]) == ("landing/hotel_rates/", 1, 1)
    manifest = storage.get_json(s3, found["manifest"]["bucket"], found["manifest"]["key"])
    assert [item["key"] for item in manifest] == [datasource.day_key("landing/", second)]
    # the whole landing root is narrowed to the contract's folder
    assert etl.discover(s3, conn, settings, contract, "landing/", "run-d2")["prefix"] == "landing/hotel_rates/"


@pytest.mark.parametrize("prefix", ["quarantine/", "landing/ames/", "landing/hotel_rates_old/"])
def test_discover_refuses_a_prefix_outside_the_contracts_landing_folder(conn, s3, settings, contract, prefix) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="outside the landing folder 'landing/hotel_rates/' of contract 'hotel_rates'"):
        etl.discover(s3, conn, settings, contract, prefix, "run-q")


@pytest.mark.parametrize("key", ["landing/ames/houses.csv", "landing/houses.csv", "elsewhere/hotel_rates/day.csv"])
def test_a_file_outside_the_contracts_folder_is_refused_unread_not_loaded(conn, s3, contract, settings, key) -> None:  # type: ignore[no-untyped-def]
    body, _ = datasource.day_csv(DAY)  # hotel rows even: the folder says which contract a file is for
    ref = put(s3, settings, key, body)
    with pytest.raises(ContractError, match=f"{key} is not under landing/hotel_rates/, the landing folder of"):
        etl.load_file(conn, s3, contract, settings, ref, "run-o")
    assert counts(conn) == (0, 0)
    assert "quarantine/" not in json.dumps(
        [o["Key"] for o in s3.list_objects_v2(Bucket=settings.landing_bucket).get("Contents", [])]
    )
    (status, error) = conn.execute("SELECT status, error FROM price_data.ingestion_ledger").fetchone()
    assert status == "failed" and error.startswith("ContractError:")


def test_a_dropped_connection_is_a_transient_error(s3, contract, settings, database_url) -> None:  # type: ignore[no-untyped-def]
    from pricepipe import db

    body, _ = datasource.day_csv(DAY)
    ref = put(s3, settings, "landing/hotel_rates/d.csv", body)
    victim = db.connect(database_url, autocommit=True)
    pid = victim.info.backend_pid
    with db.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(TransientError, match="database"):
        etl.load_file(victim, s3, contract, settings, ref, "run-t")


def test_served_predictions_get_their_actual_price_when_the_row_arrives(conn, s3, contract, settings) -> None:  # type: ignore[no-untyped-def]
    frame = datasource.hotel_rates()
    booking = frame[frame["arrival_date"] == DAY.isoformat()].iloc[0]
    conn.execute(
        "INSERT INTO monitoring.predictions (request_id, record_key, model_name, model_version, features, prediction)"
        " VALUES ('req-1', %s, 'price-model', '1', '{}', 99.0),"
        " ('req-2', 'not-a-booking', 'price-model', '1', '{}', 1)",
        (str(booking["booking_id"]),),
    )
    (result,) = land_and_load(conn, s3, contract, settings, [DAY])
    assert result.actuals_joined == 1
    rows = conn.execute("SELECT record_key, actual FROM monitoring.predictions ORDER BY request_id").fetchall()
    assert rows == [(str(booking["booking_id"]), booking["avg_price_per_room"]), ("not-a-booking", None)]
