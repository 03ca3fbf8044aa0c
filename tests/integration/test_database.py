"""Migrations and contract-driven tables on a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from pricepipe import db
from pricepipe.contract import Contract, parse_contract
from pricepipe.errors import ConfigurationError, ContractError
from pricepipe.settings import Settings

RAW_COLUMNS = (
    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'price_data' AND table_name = 'raw_data'"
)
SPEC_TABLES = {
    ("price_data", "raw_data"),
    ("price_data", "processed_features"),
    ("price_data", "ingestion_ledger"),
    ("price_data", "datasets"),
    ("model_registry", "models"),
    ("model_registry", "deployments"),
    ("monitoring", "predictions"),
    ("monitoring", "drift_metrics"),
}


def tables(conn: psycopg.Connection) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema IN ('price_data', 'model_registry', 'monitoring')"
    ).fetchall()
    return {(schema, name) for schema, name in rows}


def test_migrate_creates_the_spec_schemas_and_tables_and_is_idempotent(empty_database: str, contract: Contract) -> None:
    with db.connect(empty_database, autocommit=True) as conn:
        first = db.migrate(conn, contract)
        second = db.migrate(conn, contract)
        assert first == [m.version for m in db.migrations()]
        assert second == []
        assert tables(conn) >= SPEC_TABLES
        columns = {r[0] for r in conn.execute(RAW_COLUMNS)}
        assert set(contract.columns) | {"_ingest_id"} == columns


def test_an_edited_applied_migration_is_refused(empty_database: str) -> None:
    with db.connect(empty_database, autocommit=True) as conn:
        db.migrate(conn)
        conn.execute("UPDATE public.pricepipe_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(ConfigurationError, match="changed after it was applied"):
            db.migrate(conn)


def test_the_ledger_refuses_rows_that_do_not_add_up(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="every_row_accounted_for"):
        conn.execute(
            "INSERT INTO price_data.ingestion_ledger (run_id, dataset, source_bucket, source_key, source_etag, status,"
            " rows_in, rows_loaded, rows_quarantined, rows_duplicate, started_at)"
            " VALUES ('r', 'd', 'b', 'k', 'e', 'loaded', 10, 5, 1, 1, now())"
        )


def test_a_new_contract_version_adds_its_columns(conn: psycopg.Connection, contract: Contract) -> None:
    data = contract.model_dump(mode="json")
    data["version"] = 2
    data["columns"]["loyalty_tier"] = {"type": "category", "allowed": ["gold", "silver"], "nullable": True}
    newer = Contract.model_validate(data)
    db.sync_dataset(conn, newer)
    raw = {r[0] for r in conn.execute(RAW_COLUMNS)}
    assert "loyalty_tier" in raw
    assert conn.execute("SELECT contract_version FROM price_data.datasets").fetchone() == (2,)


def test_a_changed_column_type_is_refused(conn: psycopg.Connection, contract: Contract) -> None:
    data = contract.model_dump(mode="json")
    data["columns"]["lead_time"]["type"] = "float"
    with pytest.raises(ContractError, match=r"price_data\.raw_data\.lead_time is bigint but the contract says DOUBLE"):
        db.sync_dataset(conn, Contract.model_validate(data))


def test_a_second_dataset_in_the_same_database_is_refused(conn: psycopg.Connection) -> None:
    other = parse_contract(
        "name: houses\nkey: id\ntarget: price\ncolumns:\n  id: {type: integer}\n  price: {type: float}\n"
    )
    with pytest.raises(ContractError, match="this database holds dataset 'hotel_rates'; contract 'houses'"):
        db.sync_dataset(conn, other)


def test_dsn_from_an_rds_secret_requires_tls_and_names_missing_fields() -> None:
    dsn = db.dsn_from_secret({"host": "db.internal", "port": 5432, "username": "app", "password": "p w", "dbname": "x"})
    parsed = psycopg.conninfo.conninfo_to_dict(dsn)
    assert parsed["sslmode"] == "require" and parsed["password"] == "p w" and parsed["host"] == "db.internal"
    assert db.dsn_from_secret({"dsn": "postgresql://local"}) == "postgresql://local"
    with pytest.raises(ConfigurationError, match="lacks password"):
        db.dsn_from_secret({"host": "h", "username": "u"})


def test_a_cached_connection_commits_writes_after_a_plain_read(database_url: str) -> None:
    """A Lambda container's connection: a SELECT first must not turn the next write into a savepoint."""
    cache = db.ConnectionCache(db.DatabaseCredentials(Settings(database_url=database_url)))
    conn = cache.get()
    conn.execute("SELECT 1").fetchone()
    with conn.transaction():
        conn.execute("CREATE TABLE public.cached_write (x int)")
    with db.connect(database_url) as other:
        assert other.execute("SELECT to_regclass('public.cached_write')").fetchone() == ("cached_write",)
    assert cache.get() is conn
    cache.close()
