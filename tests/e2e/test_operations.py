"""Operations on the local cloud: health, logs, a backup/restore round trip, serving capacity."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest

from pipectl import datasource
from pipectl.commands import ops
from pipectl.target import Target
from pricepipe.contract import load_contract
from pricepipe.settings import Settings
from tests.conftest import land_and_load

pytestmark = pytest.mark.e2e

TABLES = ("price_data.raw_data", "price_data.processed_features", "price_data.ingestion_ledger")


def snapshot(url: str) -> dict[str, tuple[int, str]]:
    """Row count and a content digest of each table."""
    with psycopg.connect(url) as conn:
        return {
            table: tuple(
                conn.execute(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
                ).fetchone()
            )  # type: ignore[misc]
            for table in TABLES
        }


def test_health_reports_every_component_and_names_a_broken_one(target: Target) -> None:
    checks = {name: healthy for name, healthy, _ in ops.check_health(target)}
    assert checks["PostgreSQL"] and checks["S3 lake bucket"] and checks["function etl-load"]
    assert all(checks.values()), checks
    broken = Target(**{**target.__dict__, "lake_bucket": "no-such-bucket"})
    checks = {name: healthy for name, healthy, _ in ops.check_health(broken)}
    assert checks["S3 lake bucket"] is False


def test_logs_prints_a_functions_log_lines_and_refuses_an_unknown_function(target: Target) -> None:
    # the migrate function ran (and logged) when the fixture deployed the pipeline
    assert ops.print_logs(target, "migrate", minutes=30, limit=50) > 0
    with pytest.raises(Exception, match="no function 'nope'"):
        ops.print_logs(target, "nope", minutes=1, limit=1)


def test_backup_and_restore_round_trip_loses_nothing(target: Target, tmp_path: Path) -> None:
    assert target.database_url
    settings = Settings(database_url=target.database_url)
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        land_and_load(conn, target.client("s3"), load_contract("hotel_rates"), settings, datasource.select_days(days=3))
    before = snapshot(target.database_url)
    dump = ops.backup_database(target, tmp_path / "backup.dump")
    assert dump.stat().st_size > 0
    # the day after: more data, and a mistake
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        land_and_load(conn, target.client("s3"), load_contract("hotel_rates"), settings, [dt.date(2016, 7, 20)])
        conn.execute("DELETE FROM price_data.raw_data WHERE booking_id < 20")
    assert snapshot(target.database_url) != before
    ops.restore_database(target, dump)
    assert snapshot(target.database_url) == before


def test_restoring_a_missing_file_is_refused(target: Target, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="is not a backup file"):
        ops.restore_database(target, tmp_path / "nope.dump")


def test_scale_serving_waits_until_provisioned_concurrency_on_live_is_ready_and_zero_removes_it(
    target: Target,
) -> None:
    slept: list[float] = []
    # the local cloud answers IN_PROGRESS first, as AWS does while it allocates
    answer = ops.scale_serving(target, 2, sleep=slept.append)
    assert answer["Status"] == "READY" and answer["AllocatedProvisionedConcurrentExecutions"] == 2
    assert slept == [ops.PROVISIONING_POLL_S], "it polled again after IN_PROGRESS instead of returning"
    lam = target.client("lambda")
    config = lam.get_provisioned_concurrency_config(FunctionName="pricepipe-api", Qualifier="live")
    assert config["RequestedProvisionedConcurrentExecutions"] == 2
    ops.scale_serving(target, 0)
    with pytest.raises(lam.exceptions.ProvisionedConcurrencyConfigNotFoundException):
        lam.get_provisioned_concurrency_config(FunctionName="pricepipe-api", Qualifier="live")
