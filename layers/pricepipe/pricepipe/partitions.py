"""Monthly range partitions: ``monitoring.predictions`` by ``predicted_at``, and ``price_data.raw_data``
by the contract's event time when it has one.

The one place that names, creates, fills and drops month partitions. Each partitioned table has a
DEFAULT partition, so an insert never fails for want of a partition; the writers create the months
they are about to write (the prediction writer per delivery, the ETL per file) so rows land in their
month directly, and :func:`settle` moves whatever reached the default partition into month
partitions (on migration, and in the daily maintenance step). :func:`maintain` is that step for the
prediction log: the current and next month pre-created, the default partition emptied, months older
than ``prediction_retention_months`` dropped. It runs with the drift check (functions/drift).

Partitions are named ``<table>_pYYYY_MM`` and bound in UTC: ``[YYYY-MM-01 00:00+00, next month)``
for a ``timestamptz`` column, ``[YYYY-MM-01, next month)`` for a ``date`` column.

Locks (PostgreSQL's documented behaviour, "CREATE TABLE ... PARTITION OF" and "DROP TABLE" take an
ACCESS EXCLUSIVE lock on the parent while they run): creating a month is a short transaction of its
own in the writer, taken once a month per table; the ETL creates its file's months before it first
reads ``raw_data`` in its transaction, so no load waits on a lock another load waits on too. An
advisory lock per table serialises creators (two of them would otherwise race on the name).
"""

from __future__ import annotations

import datetime as dt
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from pricepipe.contract import Contract
    from pricepipe.settings import Settings

PARTITION_LOCK = 7_401_010  # pg_advisory_xact_lock(PARTITION_LOCK, hashtext(table)) while creating months
# How long retention waits for the parent's lock (a long report query may hold it); then it gives up
# until the next run rather than queue the writer behind it.
RETENTION_LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class Partitioned:
    """A table partitioned by month of ``column`` (``kind``: its PostgreSQL type)."""

    schema: str
    table: str
    column: str
    kind: Literal["timestamptz", "date"] = "timestamptz"

    @property
    def qualified(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.table)

    @property
    def default(self) -> str:
        return f"{self.table}_default"

    def partition(self, month: dt.date) -> str:
        return f"{self.table}_p{month:%Y_%m}"

    def month_of(self, value: dt.date | dt.datetime) -> dt.date:
        """The first day of ``value``'s month, in UTC for an aware datetime."""
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return dt.date(value.year, value.month, 1)

    def bound(self, month: dt.date) -> dt.date | dt.datetime:
        if self.kind == "date":
            return month
        return dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)


PREDICTIONS = Partitioned("monitoring", "predictions", "predicted_at")

# Months known to exist, per connection (so per database): the writer's fast path looks nothing up.
_known: weakref.WeakKeyDictionary[Any, set[tuple[str, str, dt.date]]] = weakref.WeakKeyDictionary()


def raw_data(contract: Contract) -> Partitioned | None:
    """``price_data.raw_data``'s partitioning under ``contract``: by event month, or none without an event time."""
    if contract.event_time is None:
        return None
    kind: Literal["timestamptz", "date"] = (
        "date" if contract.columns[contract.event_time].type == "date" else "timestamptz"
    )
    return Partitioned("price_data", "raw_data", contract.event_time, kind)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months_before(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 - count
    return dt.date(index // 12, index % 12 + 1, 1)


def is_partitioned(conn: psycopg.Connection[Any], spec: Partitioned) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))",
        (f"{spec.schema}.{spec.table}",),
    ).fetchone()
    return bool(row and row[0])


def month_partitions(conn: psycopg.Connection[Any], spec: Partitioned) -> dict[dt.date, str]:
    """The month partitions ``spec``'s table has now, by month (the default partition left out)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        (f"{spec.schema}.{spec.table}",),
    ).fetchall()
    pattern = re.compile(rf"{re.escape(spec.table)}_p(\d{{4}})_(\d{{2}})")
    out = {}
    for (name,) in rows:
        match = pattern.fullmatch(name)
        if match:
            out[dt.date(int(match[1]), int(match[2]), 1)] = name
    return out


def ensure_months(conn: psycopg.Connection[Any], spec: Partitioned, months: Iterable[dt.date]) -> list[str]:
    """Create the month partitions of ``months`` that do not exist yet; returns the names created.

    Rows of such a month already in the default partition move into the new partition in the same
    transaction (PostgreSQL refuses to create a partition whose rows sit in the default one). Opens
    a transaction of its own unless the caller's is open (the ETL's). A month this process created
    or saw is not looked up again.
    """
    known = _known.setdefault(conn, set())
    wanted = sorted({m for m in months if (spec.schema, spec.table, m) not in known})
    if not wanted:
        return []
    own_transaction = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    created = []
    with conn.transaction():
        have = month_partitions(conn, spec)
        missing = [m for m in wanted if m not in have]
        if missing:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (PARTITION_LOCK, spec.table))
            have = month_partitions(conn, spec)  # another creator may have been first
            for month in missing:
                if month not in have:
                    _create(conn, spec, month)
                    created.append(spec.partition(month))
    if own_transaction:  # committed: remembered (a caller's transaction may still roll back)
        known.update((spec.schema, spec.table, m) for m in wanted)
    return created


def _create(conn: psycopg.Connection[Any], spec: Partitioned, month: dt.date) -> None:
    low, high = spec.bound(month), spec.bound(next_month(month))
    in_month = sql.SQL("{col} >= {low} AND {col} < {high}").format(
        col=sql.Identifier(spec.column), low=sql.Literal(low), high=sql.Literal(high)
    )
    default = sql.Identifier(spec.schema, spec.default)
    waiting = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(default, in_month)).fetchone()
    moving = bool(waiting and waiting[0])
    if moving:
        conn.execute(sql.SQL("CREATE TEMP TABLE pricepipe_moving (LIKE {}) ON COMMIT DROP").format(spec.qualified))
        conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {default} WHERE {cond} RETURNING *)"
                " INSERT INTO pricepipe_moving SELECT * FROM moved"
            ).format(default=default, cond=in_month)
        )
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(spec.schema, spec.partition(month)), spec.qualified, sql.Literal(low), sql.Literal(high)
        )
    )
    if moving:
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM pricepipe_moving").format(spec.qualified))
        conn.execute("DROP TABLE pricepipe_moving")


def settle(conn: psycopg.Connection[Any], spec: Partitioned, today: dt.date | None = None) -> list[str]:
    """Give every row in the default partition its month partition; with ``today``, also pre-create
    the current and the next month. Returns the partitions created."""
    month = sql.SQL(
        "date_trunc('month', {})::date" if spec.kind == "date" else "date_trunc('month', {} AT TIME ZONE 'UTC')::date"
    )
    stray = conn.execute(
        sql.SQL("SELECT DISTINCT {} FROM {}").format(
            month.format(sql.Identifier(spec.column)), sql.Identifier(spec.schema, spec.default)
        )
    ).fetchall()
    months = {row[0] for row in stray}
    if today is not None:
        months |= {spec.month_of(today), next_month(spec.month_of(today))}
    _forget(spec, months)  # look again: a month may have been dropped since this process saw it
    return ensure_months(conn, spec, months)


def drop_before(
    conn: psycopg.Connection[Any], spec: Partitioned, keep_from: dt.date, lock_timeout: str = RETENTION_LOCK_TIMEOUT
) -> list[str]:
    """Drop the month partitions of months before ``keep_from``; returns their names. Raises
    ``LockNotAvailable`` after waiting ``lock_timeout`` for the table's lock (nothing dropped)."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        old = sorted((m, name) for m, name in month_partitions(conn, spec).items() if m < keep_from)
        for _, name in old:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(spec.schema, name)))
    _forget(spec, [m for m, _ in old])
    return [name for _, name in old]


def _forget(spec: Partitioned, months: Iterable[dt.date]) -> None:
    for known in _known.values():
        known.difference_update((spec.schema, spec.table, m) for m in months)


def maintain(
    conn: psycopg.Connection[Any], settings: Settings, today: dt.date, lock_timeout: str = RETENTION_LOCK_TIMEOUT
) -> dict[str, Any]:
    """The prediction log's daily upkeep (see the module docstring): what was created and dropped.

    Retention keeps the current month and the ``prediction_retention_months`` before it (0 keeps
    every month); a month is dropped whole, never row by row. When the table's lock cannot be had
    within ``lock_timeout``, nothing is dropped and ``deferred`` says why: the next
    run drops it.
    """
    out: dict[str, Any] = {"created": settle(conn, PREDICTIONS, today), "dropped": []}
    if settings.prediction_retention_months:
        keep_from = months_before(PREDICTIONS.month_of(today), settings.prediction_retention_months)
        try:
            out["dropped"] = drop_before(conn, PREDICTIONS, keep_from, lock_timeout)
        except psycopg.errors.LockNotAvailable as exc:
            out["deferred"] = f"retention waited {lock_timeout} for the table's lock: {exc}"
    return out
