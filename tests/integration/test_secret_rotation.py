"""The database secret rotates under a warm promotion function: its next call succeeds without a restart.

Real PostgreSQL, moto's Secrets Manager holding the secret, the promotion function's module imported
as a fresh container imports it and called twice across a rotation. The rotation goes through the
rotation function's steps (https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_how.html):
the new credentials are stored as ``AWSPENDING``, set on the database, then ``AWSCURRENT`` moves.

The test server trusts every local connection (pg_hba.conf: ``trust`` for 127.0.0.1 and the socket),
so it never checks a password. What the code under test meets on RDS is the server refusing, while
connecting, the credentials of a stale copy of the secret. Here the server refuses them for real by
another rule it enforces under trust: the old credentials' role is made ``NOLOGIN`` (FATAL, SQLSTATE
28000), and the new secret names a second role, as the alternating-users strategy does. Open
sessions survive a password change on PostgreSQL, so the old role's sessions are ended too (as an idle
timeout or a failover ends a frozen container's): the warm function must open new connections.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import psycopg
import pytest
from psycopg import sql

from pricepipe import db
from pricepipe.errors import TransientError
from pricepipe.settings import Settings
from tests.integration.aws_lambda import REGION, fresh_handler

HANDLER = Path(__file__).resolve().parents[2] / "functions" / "promotion" / "handler.py"
pytestmark = pytest.mark.usefixtures("aws")


class LambdaContext:
    function_name = "pricepipe-promotion"
    function_version = "1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:pricepipe-promotion"
    memory_limit_in_mb = 512
    aws_request_id = "rotation-1"


@pytest.fixture
def roles(pg_admin_url: str, database_url: str) -> Iterator[tuple[str, str]]:
    """Two login roles for this test (old and new credentials), with the admin's rights on its database."""
    names = (f"rot_old_{uuid.uuid4().hex[:8]}", f"rot_new_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(name)))
    yield names
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
    with psycopg.connect(database_url, autocommit=True) as owner:
        for name in names:
            owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(database_url: str, role: str) -> str:
    return psycopg.conninfo.make_conninfo(database_url, user=role)


@pytest.fixture
def secret(database_url: str, roles: tuple[str, str]) -> str:
    # MLflow's tables made by the database's owner first, as the migrate function's role would
    from pricepipe import registry

    registry.client_for(registry.mlflow_uri_from_dsn(database_url)).search_registered_models()
    client = boto3.client("secretsmanager", region_name=REGION)
    return str(
        client.create_secret(Name="pricepipe-db", SecretString=json.dumps({"dsn": as_role(database_url, roles[0])}))[
            "ARN"
        ]
    )


@pytest.fixture
def promotion(secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The promotion function as a fresh container imports it: the database only through the secret."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PRICEPIPE_DATABASE_URL", raising=False)
    monkeypatch.delenv("PRICEPIPE_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PRICEPIPE_DATABASE_SECRET_ARN", secret)
    monkeypatch.setenv("PRICEPIPE_REGION", REGION)
    with fresh_handler(HANDLER) as module:
        yield module


def rotate_to(secret: str, dsn: str) -> str:
    """The rotation function's createSecret step: the new credentials as ``AWSPENDING``."""
    client = boto3.client("secretsmanager", region_name=REGION)
    token = uuid.uuid4().hex
    client.put_secret_value(
        SecretId=secret, ClientRequestToken=token, SecretString=json.dumps({"dsn": dsn}), VersionStages=["AWSPENDING"]
    )
    return token


def finish_rotation(secret: str, token: str) -> None:
    """The finishSecret step: ``AWSCURRENT`` moves to the new version (the old one becomes ``AWSPREVIOUS``)."""
    client = boto3.client("secretsmanager", region_name=REGION)
    versions = client.describe_secret(SecretId=secret)["VersionIdsToStages"]
    current = next(v for v, stages in versions.items() if "AWSCURRENT" in stages)
    client.update_secret_version_stage(
        SecretId=secret, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=current
    )


def refuse(pg_admin_url: str, role: str) -> None:
    """The setSecret step's effect on a stale copy: the database refuses the old credentials from now on,
    and the sessions they opened end."""
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))


def current_user(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def test_a_warm_function_reads_the_rotated_secret_again_and_its_next_call_succeeds(
    promotion: ModuleType, secret: str, database_url: str, pg_admin_url: str, roles: tuple[str, str]
) -> None:
    old, new = roles
    context = LambdaContext()
    assert promotion.command({"command": "history"}, context) == []
    assert promotion.mlflow_client().search_registered_models() == []
    assert current_user(promotion.connection()) == old

    token = rotate_to(secret, as_role(database_url, new))
    refuse(pg_admin_url, old)
    # between setSecret and finishSecret the database refuses AWSCURRENT too: a clear, retried error
    with pytest.raises(TransientError, match=r"refused the credentials of secret .*again after reading its AWSCURRENT"):
        promotion.command({"command": "history"}, context)

    finish_rotation(secret, token)
    # MLflow first (the copy the container holds is still the old one): its pooled connection ended
    # with the old role, the pool's reconnect is refused, the client is rebuilt on the new secret
    assert promotion.mlflow_client().search_registered_models() == []
    assert promotion.mlflow_client().uri.startswith(f"postgresql+psycopg://{new}@")
    assert promotion.command({"command": "history"}, context) == []
    assert current_user(promotion.connection()) == new


def test_errors_other_than_a_refusal_propagate_without_a_second_read(pg_admin_url: str) -> None:
    reads = []

    class Secrets:
        def get_secret_value(self, SecretId: str, VersionStage: str) -> dict[str, str]:
            reads.append(SecretId)
            return {"SecretString": json.dumps({"dsn": pg_admin_url})}

    credentials = db.DatabaseCredentials(Settings(database_secret_arn="arn:secret", database_url=None), Secrets())
    with pytest.raises(psycopg.errors.UndefinedTable):
        credentials.call(lambda dsn: psycopg.connect(dsn).execute("SELECT * FROM no_such_table"), "a query")
    assert reads == ["arn:secret"]
    refused = psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "app"')
    assert db.is_auth_failure(TransientError("could not connect")) is False
    wrapped = TransientError("could not connect")
    wrapped.__cause__ = refused
    assert db.is_auth_failure(wrapped)
    assert not db.is_auth_failure(psycopg.OperationalError("connection failed: Connection refused"))
