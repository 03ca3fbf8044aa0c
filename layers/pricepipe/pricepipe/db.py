"""PostgreSQL access: where the DSN comes from, migrations, contract-driven tables and bulk COPY.

The DSN comes from a Secrets Manager secret when one is configured (RDS's generated secret, or
``{"dsn": ...}`` as the local cloud stores it), else from ``DATABASE_URL``, so Lambda functions
take the same path everywhere.

Rotation. The secret is read once per process (:class:`DatabaseCredentials`) and read again when the
database refuses it: Secrets Manager rotates it under running functions (every 30 days, data_stack.py),
and a warm container's copy is then stale. Every cached connection (:class:`ConnectionCache`), the
MLflow client (:class:`pricepipe.registry.ReconnectingClient`) and the training job go through
:meth:`DatabaseCredentials.call`: one re-read and one retry on an authentication failure, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pricepipe import partitions
from pricepipe.errors import ConfigurationError, ContractError, TransientError

if TYPE_CHECKING:
    import pandas as pd

    from pricepipe.contract import Contract
    from pricepipe.settings import Settings

MIGRATION_LOCK = 7_401_001  # pg_advisory lock id held while migrating
DATASET_TABLES = ("raw_data", "processed_features")
T = TypeVar("T")


def resolve_dsn(settings: Settings, secrets_client: Any | None = None) -> str:
    """The connection string for these settings, fetching the secret when one is configured."""
    if settings.database_secret_arn:
        if secrets_client is None:
            import boto3

            secrets_client = boto3.client("secretsmanager", region_name=settings.region)
        try:
            # AWSCURRENT is GetSecretValue's default on AWS; named because moto 5.2 keeps answering with
            # the first version after a rotation moves the label (update_secret_version_stage)
            raw = secrets_client.get_secret_value(SecretId=settings.database_secret_arn, VersionStage="AWSCURRENT")[
                "SecretString"
            ]
        except Exception as exc:
            raise TransientError(f"could not read database secret {settings.database_secret_arn}: {exc}") from exc
        return dsn_from_secret(json.loads(raw))
    if settings.database_url:
        return settings.database_url.get_secret_value()
    raise ConfigurationError("no database configured: set DATABASE_URL or PRICEPIPE_DATABASE_SECRET_ARN")


def dsn_from_secret(secret: dict[str, Any]) -> str:
    """A DSN from an RDS-style secret (host, port, username, password, dbname) or ``{"dsn": ...}``."""
    if "dsn" in secret:
        return str(secret["dsn"])
    missing = [k for k in ("host", "username", "password") if k not in secret]
    if missing:
        raise ConfigurationError(f"database secret lacks {', '.join(missing)}")
    return make_conninfo(
        host=secret["host"],
        port=str(secret.get("port", 5432)),
        user=secret["username"],
        password=secret["password"],
        dbname=secret.get("dbname", "postgres"),
        sslmode=secret.get("sslmode", "require"),
        connect_timeout="10",
        application_name="pricepipe",
    )


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise TransientError(f"could not connect to the database: {exc}") from exc


# -- credentials that rotate ------------------------------------------------------------------------

# PostgreSQL's class 28, "Invalid Authorization Specification": 28000 (no such role, a role that may
# not log in, no pg_hba.conf entry) and 28P01 (wrong password). Errors met while connecting carry no
# SQLSTATE in psycopg (libpq hands over only the message text of the server's FATAL report), so those
# are recognised by the server's own wording (src/backend/libpq/auth.c, utils/init/miscinit.c) and
# libpq's when the server asks for a password none was given.
AUTH_SQLSTATES = frozenset({"28000", "28P01"})
_AUTH_MESSAGES = re.compile(
    r"authentication failed for user|is not permitted to log in|no pg_hba\.conf entry|pg_hba\.conf rejects"
    r"|fe_sendauth: no password supplied|FATAL:\s+role \"[^\"]*\" does not exist"
)


def is_auth_failure(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was caused by, the database refusing the credentials: psycopg's error,
    or the same wrapped by SQLAlchemy (``.orig``), MLflow (``raise ... from``) or :func:`connect`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, psycopg.Error):
            if exc.sqlstate in AUTH_SQLSTATES:
                return True
            if exc.sqlstate is None and isinstance(exc, psycopg.OperationalError) and _AUTH_MESSAGES.search(str(exc)):
                return True
        orig = getattr(exc, "orig", None)
        exc = orig if isinstance(orig, BaseException) else exc.__cause__
    return False


class DatabaseCredentials:
    """The DSN of the settings' database, read once per process and again when the database refuses it.

    Secrets Manager's rotation (https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_how.html)
    stores the new password as the ``AWSPENDING`` version, sets it on the database, tests it, then
    moves ``AWSCURRENT`` to it (the old version becomes ``AWSPREVIOUS``). Open sessions keep working;
    a new connection with a copy read before the rotation is refused. Reading ``AWSCURRENT`` again
    then gives the password the database has. With the single-user strategy this stack uses
    (rotation-strategy.html, "Single user"), between the database's change and the label's move the
    database accepts only the pending password, for the seconds the rotation function takes: the
    second refusal is a :class:`TransientError`, which the state machines retry with backoff.
    """

    def __init__(self, settings: Settings, secrets_client: Any | None = None) -> None:
        self._settings = settings
        self._secrets = secrets_client
        self._dsn: str | None = None
        self._lock = threading.Lock()

    @property
    def secret_arn(self) -> str | None:
        return self._settings.database_secret_arn

    def dsn(self) -> str:
        with self._lock:
            if self._dsn is None:
                self._dsn = resolve_dsn(self._settings, self._secrets)
            return self._dsn

    def refresh(self) -> str:
        """Forget the copy and read the secret again."""
        with self._lock:
            self._dsn = None
        return self.dsn()

    def call(self, use: Callable[[str], T], what: str) -> T:
        """``use(dsn)``; when the database refuses the credentials, once more with the secret read again.

        Any other error propagates as it is, and so does a refusal when no secret is configured
        (``DATABASE_URL`` cannot change under a running process). A second refusal raises
        :class:`TransientError` saying so.
        """
        try:
            return use(self.dsn())
        except Exception as exc:
            if not (self.secret_arn and is_auth_failure(exc)):
                raise
        try:
            return use(self.refresh())
        except Exception as exc:
            if not is_auth_failure(exc):
                raise
            raise TransientError(
                f"the database refused the credentials of secret {self.secret_arn} ({what}), again after reading"
                " its AWSCURRENT version anew: a rotation between setting the new password and moving AWSCURRENT"
                " clears within seconds (retry); otherwise the secret and the database's password disagree"
                f" (see the rotation function's log): {_first_line(exc)}"
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ConnectionCache:
    """One connection per process, reopened when it breaks (a Lambda container keeps it warm).

    A connection the server closed while the container was frozen (idle timeout, failover, a session
    ended by an administrator) is found by a ping before it is handed out and replaced; opening one
    goes through :meth:`DatabaseCredentials.call`, so a rotated password is read again.
    """

    def __init__(self, credentials: DatabaseCredentials) -> None:
        self._credentials = credentials
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and _alive(conn):
            return conn
        self.close()
        # autocommit: every write sits in an explicit conn.transaction(); a plain SELECT must not
        # leave an open transaction that would turn later transaction blocks into savepoints
        self._conn = self._credentials.call(lambda dsn: connect(dsn, autocommit=True), "opening a connection")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _alive(conn: psycopg.Connection[Any]) -> bool:
    """A round trip on an idle autocommit connection; any other is left to its next statement (a
    SELECT would open a transaction there)."""
    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return True
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


# -- migrations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The versioned SQL files shipped in ``pricepipe/migrations``, in order."""
    out = []
    for item in (resources.files("pricepipe") / "migrations").iterdir():
        if item.name.endswith(".sql"):
            version, _, name = item.name.removesuffix(".sql").partition("_")
            out.append(Migration(int(version), name, item.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: m.version)


def migrate(conn: psycopg.Connection[Any], contract: Contract | None = None, *, until: int | None = None) -> list[int]:
    """Apply pending migrations (each in its own transaction), then sync the dataset's tables.

    Idempotent and safe to run concurrently (an advisory lock serialises runners). Refuses to run
    when an applied migration's file has changed since. Returns the versions applied now. ``until``
    stops after that version (tests of a conversion start from the database before it). Rows a
    migration left in a partitioned table's default partition go to their month partitions
    (:func:`pricepipe.partitions.settle`).
    """
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.pricepipe_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = dict(conn.execute("SELECT version, checksum FROM public.pricepipe_migrations").fetchall())
        for migration in migrations():
            if until is not None and migration.version > until:
                break
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise ConfigurationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO public.pricepipe_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            applied_now.append(migration.version)
        if partitions.is_partitioned(conn, partitions.PREDICTIONS):
            partitions.settle(conn, partitions.PREDICTIONS)
        if contract is not None:
            sync_dataset(conn, contract)
    return applied_now


def sync_dataset(conn: psycopg.Connection[Any], contract: Contract) -> None:
    """Make the dataset tables carry the contract's columns and key; register the contract.

    Adds columns a newer contract version introduces. Refuses a different dataset than the one the
    database holds, a changed column type, or a changed key, naming what differs. With an event
    time, ``raw_data`` is partitioned by its month (converted in place, every row kept, when an
    older database holds it unpartitioned) and keyed on the contract's key plus the event time, as
    PostgreSQL requires of a partitioned table's primary key.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK + 1,))
        row = conn.execute("SELECT name FROM price_data.datasets").fetchone()
        if row is not None and row[0] != contract.name:
            raise ContractError(
                f"this database holds dataset {row[0]!r}; contract {contract.name!r} needs its own database"
            )
        wanted = {"raw_data": contract.raw_table_columns, "processed_features": contract.processed_table_columns}
        for table, columns in wanted.items():
            existing = _table_columns(conn, table)
            for name, pg_type in columns.items():
                if name not in existing:
                    conn.execute(
                        sql.SQL("ALTER TABLE price_data.{} ADD COLUMN {} {}").format(
                            sql.Identifier(table), sql.Identifier(name), sql.SQL(pg_type)
                        )
                    )
                elif existing[name] != _canonical_type(pg_type):
                    raise ContractError(
                        f"price_data.{table}.{name} is {existing[name]} but the contract says {pg_type}; "
                        "a column's type cannot change in place"
                    )
            if table == "raw_data":
                _partition_raw_data(conn, contract)
            _ensure_primary_key(conn, table, primary_key(contract, table))
        _create_model_features_view(conn, contract)
        conn.execute(
            "INSERT INTO price_data.datasets (name, contract_version, contract) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET contract_version = EXCLUDED.contract_version,"
            " contract = EXCLUDED.contract, updated_at = now()",
            (contract.name, contract.version, json.dumps(contract.model_dump(mode="json"))),
        )


def primary_key(contract: Contract, table: str) -> tuple[str, ...]:
    """The primary key of a dataset table: the contract's key, plus the event time in ``raw_data``
    when it is partitioned by it and the key lacks it.

    The key stays unique on its own all the same: ``processed_features`` (not partitioned) keeps
    the contract's key as its primary key and every loaded row goes into both tables in one
    transaction, and the ETL's duplicate check looks a key up in ``raw_data`` across all partitions
    (``pricepipe.etl._not_yet_stored``; the primary key's index leads with the key columns).
    """
    spec = partitions.raw_data(contract) if table == "raw_data" else None
    if spec is None or spec.column in contract.key:
        return contract.key
    return (*contract.key, spec.column)


def _partition_raw_data(conn: psycopg.Connection[Any], contract: Contract) -> None:
    """Convert an unpartitioned ``raw_data`` into one partitioned by event month, rows and all."""
    spec = partitions.raw_data(contract)
    if spec is None or partitions.is_partitioned(conn, spec):
        return
    _ensure_primary_key(conn, "raw_data", contract.key)  # refuses a changed key before anything moves
    old = sql.Identifier("price_data", "raw_data_unpartitioned")
    conn.execute("DROP VIEW IF EXISTS price_data.model_features")  # re-created by sync_dataset
    conn.execute("ALTER TABLE price_data.raw_data RENAME TO raw_data_unpartitioned")
    pkey = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'price_data.raw_data_unpartitioned'::regclass"
        " AND contype = 'p'"
    ).fetchone()
    if pkey is not None:  # its index name would clash with the new table's
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(old, sql.Identifier(pkey[0])))
    conn.execute(
        sql.SQL(
            "CREATE TABLE price_data.raw_data (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            " PARTITION BY RANGE ({})"
        ).format(old, sql.Identifier(spec.column))
    )
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF price_data.raw_data DEFAULT").format(
            sql.Identifier(spec.schema, spec.default)
        )
    )
    months = conn.execute(
        sql.SQL("SELECT DISTINCT date_trunc('month', {} {})::date FROM {}").format(
            sql.Identifier(spec.column), sql.SQL("AT TIME ZONE 'UTC'" if spec.kind == "timestamptz" else ""), old
        )
    ).fetchall()
    partitions.ensure_months(conn, spec, [m for (m,) in months if m is not None])
    moved = conn.execute(sql.SQL("INSERT INTO price_data.raw_data SELECT * FROM {}").format(old)).rowcount
    kept = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(old)).fetchone()
    if kept is None or kept[0] != moved:  # cannot happen; and if it did, the transaction rolls back
        raise ContractError(f"partitioning price_data.raw_data copied {moved} of {kept} rows; nothing changed")
    conn.execute(sql.SQL("DROP TABLE {}").format(old))


def _create_model_features_view(conn: psycopg.Connection[Any], contract: Contract) -> None:
    """``price_data.model_features``: model-ready rows, raw columns joined with engineered ones, and
    the ``_ingest_id`` of the load that stored them (what picks a contract's rows by load date when
    it has no event time)."""
    engineered = set(contract.processed_table_columns) - set(contract.key)
    select = [
        sql.SQL("f.{}").format(sql.Identifier(c)) if c in engineered else sql.SQL("r.{}").format(sql.Identifier(c))
        for c in contract.feature_table_columns
    ]
    conn.execute("DROP VIEW IF EXISTS price_data.model_features")
    conn.execute(
        sql.SQL(
            "CREATE VIEW price_data.model_features AS SELECT {}, f._ingest_id FROM price_data.raw_data r"
            " JOIN price_data.processed_features f USING ({})"
        ).format(sql.SQL(", ").join(select), sql.SQL(", ").join(map(sql.Identifier, contract.key)))
    )


def _canonical_type(pg_type: str) -> str:
    return {
        "BIGINT": "bigint",
        "INTEGER": "integer",
        "DOUBLE PRECISION": "double precision",
        "BOOLEAN": "boolean",
        "TEXT": "text",
        "DATE": "date",
        "TIMESTAMPTZ": "timestamp with time zone",
    }[pg_type]


def _table_columns(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'price_data' AND table_name = %s",
        (table,),
    ).fetchall()
    return dict(rows)


def _ensure_primary_key(conn: psycopg.Connection[Any], table: str, key: tuple[str, ...]) -> None:
    current = conn.execute(
        "SELECT array_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum))"
        " FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (f"price_data.{table}",),
    ).fetchone()
    have = tuple(current[0]) if current and current[0] else ()
    if have == key:
        return
    if have:
        raise ContractError(f"price_data.{table} is keyed on {have} but the contract's key is {key}")
    conn.execute(
        sql.SQL("ALTER TABLE price_data.{} ADD PRIMARY KEY ({})").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, key))
        )
    )


# -- bulk load -------------------------------------------------------------------------------------


def copy_frame(
    conn: psycopg.Connection[Any], table: str, frame: pd.DataFrame, schema: Any, constants: dict[str, int] | None = None
) -> int:
    """COPY a frame into ``table`` in PostgreSQL's binary format (Arrow-encoded, no per-row Python).

    ``schema`` is the Arrow schema naming the frame's columns to write and their types;
    ``constants`` adds BIGINT columns with one value for every row (e.g. the ingest id) without
    touching the frame, which other threads may be reading.
    """
    import pyarrow as pa
    from pgpq import ArrowToPostgresBinaryEncoder

    arrow = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    for name, value in (constants or {}).items():
        arrow = arrow.append_column(pa.field(name, pa.int64()), pa.repeat(pa.scalar(value, pa.int64()), arrow.num_rows))
    encoder = ArrowToPostgresBinaryEncoder(arrow.schema)
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary)").format(
        sql.SQL(table), sql.SQL(", ").join(map(sql.Identifier, arrow.schema.names))
    )
    with conn.cursor().copy(statement) as copy:
        copy.write(encoder.write_header())
        for batch in arrow.to_batches(max_chunksize=65_536):
            copy.write(encoder.write_batch(batch))
        copy.write(encoder.finish())
    return arrow.num_rows


@contextmanager
def transient_errors() -> Iterator[None]:
    """Re-raise database failures worth retrying as :class:`TransientError`."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
        raise TransientError(f"database: {exc}") from exc
    except psycopg.errors.UniqueViolation as exc:
        # another load committed the same rows first; the retry sees them as duplicates
        raise TransientError(f"concurrent load of the same rows: {exc.diag.message_primary}") from exc
