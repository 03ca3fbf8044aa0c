"""Month partitions on a real PostgreSQL: the conversion of a database holding data, rows of a month
with no partition yet, and retention (pricepipe.partitions, migration 0007, db.sync_dataset)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pipectl import datasource
from pricepipe import db, etl, partitions, storage
from pricepipe.contract import Contract, load_contract, read_csv, validate
from pricepipe.monitoring import insert_predictions
from pricepipe.serving.prediction_log import PredictionRecord
from pricepipe.settings import Settings
from tests.conftest import land_and_load

PREDICTIONS = partitions.PREDICTIONS
# hotel_rates days in three months; 2016-07-31 and 2016-08-01 straddle a month boundary
DAYS = [dt.date(2016, 7, 2), dt.date(2016, 7, 31), dt.date(2016, 8, 1), dt.date(2016, 9, 15)]


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)


def record(request_id: str, key: str, at: dt.datetime, prediction: float = 100.0) -> PredictionRecord:
    return PredictionRecord(request_id, key, "price-model", "7", "3", {"lead_time": 1}, prediction, at)


def where_rows_are(conn: psycopg.Connection, table: str) -> dict[str, int]:
    """Rows per partition (the table each row physically sits in)."""
    rows = conn.execute(
        sql.SQL("SELECT tableoid::regclass::text, count(*) FROM {} GROUP BY 1").format(sql.SQL(table))
    ).fetchall()
    return {name.split(".")[-1]: n for name, n in rows}


def old_database(url: str, contract: Contract) -> None:
    """A database as the code before migration 0007 left it: migrations 1-4, raw_data unpartitioned
    and keyed on the contract's key (as that sync_dataset made it), holding loaded rows and predictions."""
    with db.connect(url, autocommit=True) as conn:
        db.migrate(conn, until=4)
        for table, columns in {
            "raw_data": contract.raw_table_columns,
            "processed_features": contract.processed_table_columns,
        }.items():
            for name, pg_type in columns.items():
                conn.execute(
                    sql.SQL("ALTER TABLE price_data.{} ADD COLUMN {} {}").format(
                        sql.Identifier(table), sql.Identifier(name), sql.SQL(pg_type)
                    )
                )
            conn.execute(
                sql.SQL("ALTER TABLE price_data.{} ADD PRIMARY KEY (booking_id)").format(sql.Identifier(table))
            )
        with conn.transaction():
            for ingest_id, day in enumerate(DAYS, start=1):
                good = validate(read_csv(datasource.day_csv(day)[0], contract), contract).good
                lineage = {"_ingest_id": ingest_id}
                db.copy_frame(conn, "price_data.raw_data", good, etl._raw_schema(contract), lineage)
                features = etl.build_features(good, contract)
                db.copy_frame(conn, "price_data.processed_features", features, etl._processed_schema(contract), lineage)
            conn.execute(
                "INSERT INTO monitoring.predictions (request_id, record_key, model_name, model_version, features,"
                " prediction, predicted_at, actual) SELECT 'req-' || (i / 3), (i % 3)::text, 'price-model', '7',"
                " jsonb_build_object('i', i), i, timestamptz '2026-05-30 12:00+00' + i * interval '1 day',"
                " CASE WHEN i % 2 = 0 THEN i + 0.5 END FROM generate_series(1, 60) AS i"
            )


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "raw": conn.execute("SELECT * FROM price_data.raw_data ORDER BY booking_id").fetchall(),
        "features": conn.execute("SELECT * FROM price_data.processed_features ORDER BY booking_id").fetchall(),
        "predictions": conn.execute("SELECT * FROM monitoring.predictions ORDER BY id").fetchall(),
    }


def test_migrating_a_database_holding_data_partitions_it_by_month_and_keeps_every_row(
    empty_database: str, contract: Contract
) -> None:
    old_database(empty_database, contract)
    with db.connect(empty_database, autocommit=True) as conn:
        before = snapshot(conn)
        assert len(before["raw"]) > 100 and len(before["predictions"]) == 60

        applied = db.migrate(conn, contract)

        assert applied == [m.version for m in db.migrations() if m.version > 4]
        assert snapshot(conn) == before  # every row, every value, the ids too
        assert where_rows_are(conn, "monitoring.predictions") == {
            "predictions_p2026_05": 1,  # 2026-05-31 12:00 UTC
            "predictions_p2026_06": 30,
            "predictions_p2026_07": 29,
        }
        raw_partitions = where_rows_are(conn, "price_data.raw_data")
        assert set(raw_partitions) == {"raw_data_p2016_07", "raw_data_p2016_08", "raw_data_p2016_09"}
        assert sum(raw_partitions.values()) == len(before["raw"])
        assert partitions.is_partitioned(conn, partitions.raw_data(contract))  # type: ignore[arg-type]
        assert db.migrate(conn, contract) == []  # and again: nothing to do, nothing moves
        assert snapshot(conn) == before

        # the writer's dedupe and the ETL's still hold on the converted tables
        first = before["predictions"][0]
        again = record(first[1], first[2], first[8])
        assert insert_predictions(conn, [again]) == 0
        assert insert_predictions(conn, [record("req-new", "1", utc(2026, 6, 2))]) == 1
        ids = [r[0] for r in conn.execute("SELECT id FROM monitoring.predictions ORDER BY id").fetchall()]
        assert len(set(ids)) == 61 and ids[-1] > max(r[0] for r in before["predictions"])
        with pytest.raises(psycopg.errors.UniqueViolation):  # the key alone stays unique
            conn.execute(
                "INSERT INTO price_data.processed_features (_ingest_id, booking_id, arrival_date)"
                " SELECT 9, booking_id, arrival_date + 40 FROM price_data.processed_features LIMIT 1"
            )
        model_rows = conn.execute("SELECT count(*) FROM price_data.model_features").fetchone()
        assert model_rows == (len(before["raw"]),)


def test_etl_rows_land_in_their_event_months_and_a_repeated_key_stays_a_duplicate(  # type: ignore[no-untyped-def]
    conn, s3, contract, settings
) -> None:
    results = land_and_load(conn, s3, contract, settings, [dt.date(2016, 7, 31), dt.date(2016, 8, 1)])

    landed = where_rows_are(conn, "price_data.raw_data")
    assert set(landed) == {"raw_data_p2016_07", "raw_data_p2016_08"}
    assert sum(landed.values()) == sum(r.rows_loaded for r in results)
    # the same bookings in another file (another name, so not skipped as taken) are duplicates
    key = "landing/hotel_rates/again/bookings.csv"
    s3.put_object(Bucket=settings.landing_bucket, Key=key, Body=datasource.day_csv(dt.date(2016, 8, 1))[0])
    head = s3.head_object(Bucket=settings.landing_bucket, Key=key)
    ref = storage.ObjectRef(settings.landing_bucket, key, head["ETag"].strip('"'), head["ContentLength"])
    again = etl.load_file(conn, s3, contract, settings, ref, "again")
    assert (again.rows_loaded, again.rows_duplicate) == (0, results[1].rows_loaded)


def test_a_contract_without_an_event_time_keeps_raw_data_whole_and_keyed_on_its_key(empty_database: str) -> None:
    ames = load_contract("ames")
    with db.connect(empty_database, autocommit=True) as conn:
        db.migrate(conn, ames)
        assert partitions.raw_data(ames) is None
        assert not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'price_data.raw_data'::regclass)"
        ).fetchone()[0]  # type: ignore[index]
        assert db.primary_key(ames, "raw_data") == ames.key


def test_a_prediction_for_a_month_with_no_partition_gets_one(conn: psycopg.Connection) -> None:
    assert partitions.PREDICTIONS.partition(dt.date(2031, 3, 1)) not in where_rows_are(conn, "monitoring.predictions")

    inserted = insert_predictions(
        conn, [record("req-1", "a", utc(2031, 3, 31, 23, 59)), record("req-1", "b", utc(2031, 3, 31, 23, 59))]
    )

    assert inserted == 2
    assert where_rows_are(conn, "monitoring.predictions") == {"predictions_p2031_03": 2}


def test_a_row_written_past_the_writer_waits_in_the_default_partition_until_settled(conn: psycopg.Connection) -> None:
    """Any other insert (an operator's, a test's) never fails for want of a partition."""
    conn.execute(
        "INSERT INTO monitoring.predictions (request_id, record_key, model_name, model_version, features, prediction,"
        " predicted_at) VALUES ('r', 'k', 'm', '1', '{}', 1.0, '2032-01-31 23:30-05')"  # 2032-02-01 04:30 UTC
    )
    assert where_rows_are(conn, "monitoring.predictions") == {"predictions_default": 1}

    created = partitions.settle(conn, PREDICTIONS)

    assert created == ["predictions_p2032_02"]
    assert where_rows_are(conn, "monitoring.predictions") == {"predictions_p2032_02": 1}
    assert conn.execute("SELECT request_id, prediction FROM monitoring.predictions").fetchall() == [("r", 1.0)]


def test_retention_drops_whole_months_older_than_the_setting_and_pre_creates_the_next(conn: psycopg.Connection) -> None:
    months = [utc(2030, m, 10) for m in (1, 2, 3, 4, 5, 6)]
    insert_predictions(conn, [record(f"req-{i}", "a", at) for i, at in enumerate(months)])

    kept_all = partitions.maintain(conn, Settings(prediction_retention_months=0), dt.date(2030, 6, 15))
    upkeep = partitions.maintain(conn, Settings(prediction_retention_months=2), dt.date(2030, 6, 15))

    assert kept_all == {"created": ["predictions_p2030_07"], "dropped": []}
    assert upkeep == {
        "created": [],
        "dropped": ["predictions_p2030_01", "predictions_p2030_02", "predictions_p2030_03"],
    }
    assert sorted(partitions.month_partitions(conn, PREDICTIONS)) == [dt.date(2030, m, 1) for m in (4, 5, 6, 7)]
    left = conn.execute("SELECT request_id FROM monitoring.predictions ORDER BY 1").fetchall()
    assert left == [("req-3",), ("req-4",), ("req-5",)]
    # a late row of a dropped month still lands (the writer creates its month again) and goes next time
    assert insert_predictions(conn, [record("late", "a", utc(2030, 1, 20))]) == 1
    assert partitions.maintain(conn, Settings(prediction_retention_months=2), dt.date(2030, 6, 16))["dropped"] == [
        "predictions_p2030_01"
    ]


def test_retention_gives_way_to_a_query_holding_the_table(conn: psycopg.Connection, database_url: str) -> None:
    insert_predictions(conn, [record("old", "a", utc(2029, 1, 1))])
    today, keep_all, keep_one = (
        dt.date(2030, 6, 15),
        Settings(prediction_retention_months=0),
        Settings(prediction_retention_months=1),
    )
    partitions.maintain(conn, keep_all, today)  # this and next month exist: the upkeep below creates nothing
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM monitoring.predictions").fetchone()  # holds its lock until commit
        upkeep = partitions.maintain(conn, keep_one, today, lock_timeout="50ms")
    assert upkeep["dropped"] == [] and "lock" in upkeep["deferred"]
    assert partitions.maintain(conn, keep_one, today)["dropped"] == ["predictions_p2029_01"]


def test_a_writer_racing_another_on_the_same_rows_fails_whole_and_its_retry_adds_nothing(database_url: str) -> None:
    """A redelivery handled while the first delivery's transaction is still open: the later COPY
    meets the unique index, its transaction rolls back whole, and Lambda's retry finds the rows."""
    import threading

    rows = [record("req-1", "a", utc(2030, 6, 1)), record("req-1", "b", utc(2030, 6, 1))]
    outcome: list[BaseException | int] = []
    with db.connect(database_url, autocommit=True) as first, db.connect(database_url, autocommit=True) as second:
        insert_predictions(first, [record("req-0", "a", utc(2030, 6, 1))])  # the month exists, committed
        insert_predictions(second, [record("req-0", "b", utc(2030, 6, 1))])

        def redelivery() -> None:
            try:
                outcome.append(insert_predictions(second, rows))
            except psycopg.Error as exc:
                outcome.append(exc)

        with first.transaction():
            assert insert_predictions(first, rows) == 2  # not committed yet
            racer = threading.Thread(target=redelivery)
            racer.start()
            for _ in range(10_000):  # until the racer waits on the unique index (bounded by count)
                waiting = first.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
                if waiting and waiting[0]:
                    break
        racer.join()

        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.UniqueViolation)
        assert insert_predictions(second, rows) == 0  # the retry
        stored = second.execute("SELECT request_id, record_key FROM monitoring.predictions ORDER BY 1, 2").fetchall()
    assert stored == [("req-0", "a"), ("req-0", "b"), ("req-1", "a"), ("req-1", "b")]
