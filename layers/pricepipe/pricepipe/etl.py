"""The ETL flow's steps: discover new landing files, load one file, summarise a run.

``load_file`` is the heart: validate against the contract, quarantine bad rows with their reasons,
COPY new good rows into ``price_data.raw_data`` and their features into
``price_data.processed_features``, write the features to the Parquet lake, and record it all in the
ingestion ledger, in one transaction. Every row that comes in is loaded, quarantined, or counted as
a duplicate (a key already stored); the ledger's CHECK constraint holds the sum. A file already
taken is skipped, so landing the same file twice adds nothing. Files come from the contract's own
landing folder (``landing/<contract>/``, :meth:`Settings.contract_landing_prefix`) and bad ones go to
its quarantine folder; a file anywhere else is refused, never loaded with the wrong contract.

``execution`` is the ETL state machine's execution name, as in the other flows; the ingestion
ledger keeps it in its ``run_id`` column.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from pricepipe import partitions, storage
from pricepipe.contract import Contract, read_csv, validate
from pricepipe.db import copy_frame, transient_errors
from pricepipe.errors import ContractError
from pricepipe.features import build_features
from pricepipe.storage import ObjectChanged, ObjectRef

if TYPE_CHECKING:
    import pandas as pd
    import psycopg
    from mypy_boto3_s3 import S3Client

    from pricepipe.settings import Settings

CSV_SUFFIXES = (".csv", ".csv.gz")
MAX_LISTED_FILES = 200  # per-file lines in a run summary; totals always cover every file
LAKE_WRITERS = 8  # concurrent S3 puts when a file spans many days
FILE_LOCK_NAMESPACE = 7_401_100


@dataclass
class FileResult:
    """What became of one landing file."""

    bucket: str
    key: str
    etag: str
    status: str  # loaded | rejected | skipped
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    quarantine_key: str | None = None
    lake_keys: list[str] = field(default_factory=list)
    ingest_id: int | None = None
    reason: str | None = None
    actuals_joined: int = 0  # served predictions whose actual price arrived with this file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- discover --------------------------------------------------------------------------------------


def discover(
    s3: S3Client,
    conn: psycopg.Connection[Any],
    settings: Settings,
    contract: Contract,
    prefix: str | None,
    execution: str,
) -> dict[str, Any]:
    """List landing files under ``prefix`` not yet taken, and write them as the run's manifest.

    ``prefix`` lies in the contract's landing folder (default: all of it); a prefix above it (such
    as the whole landing root) is narrowed to it, one elsewhere (another contract's folder, the
    quarantine) is refused. The manifest (a JSON array in the artifacts bucket) is what the
    Distributed Map reads, so a run can hold more files than a state's payload could.
    """
    area = settings.contract_landing_prefix(contract.name)
    prefix = prefix or area
    if area.startswith(prefix):
        prefix = area
    elif not prefix.startswith(area):
        raise ValueError(f"prefix {prefix!r} is outside the landing folder {area!r} of contract {contract.name!r}")
    listed = list(storage.list_objects(s3, settings.landing_bucket, prefix))
    with transient_errors():
        taken = {
            (key, etag)
            for key, etag in conn.execute(
                "SELECT source_key, source_etag FROM price_data.ingestion_ledger"
                " WHERE source_bucket = %s AND status IN ('loaded', 'rejected') AND source_key = ANY(%s)",
                (settings.landing_bucket, [o.key for o in listed]),
            )
        }
    new = [o for o in listed if (o.key, o.etag) not in taken]
    manifest_key = f"{settings.manifest_prefix}{execution}.json"
    storage.put_json(s3, settings.artifacts_bucket, manifest_key, [o.to_dict() for o in new])
    return {
        "execution": execution,
        "prefix": prefix,
        "files": len(new),
        "already_taken": len(listed) - len(new),
        "manifest": {"bucket": settings.artifacts_bucket, "key": manifest_key},
    }


# -- load one file ---------------------------------------------------------------------------------


def load_file(
    conn: psycopg.Connection[Any],
    s3: S3Client,
    contract: Contract,
    settings: Settings,
    ref: ObjectRef,
    execution: str,
) -> FileResult:
    """Validate, quarantine and load one landing file in one transaction (see module docstring).

    Raises :class:`~pricepipe.errors.TransientError` for failures worth retrying, and
    :class:`~pricepipe.errors.ContractError` for a file outside the contract's landing folder; any
    failure rolls the whole file back and records a ``failed`` ledger row.
    """
    started = dt.datetime.now(dt.UTC)
    written: list[str] = []  # lake objects of this attempt: removed again if it does not commit
    try:
        quarantine_key_of(settings, contract, ref.key)  # another contract's file is refused unread
        with transient_errors(), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (FILE_LOCK_NAMESPACE, ref.key))
            taken = conn.execute(
                "SELECT status FROM price_data.ingestion_ledger WHERE source_bucket = %s AND source_key = %s"
                " AND source_etag = %s AND status IN ('loaded', 'rejected')",
                (ref.bucket, ref.key, ref.etag),
            ).fetchone()
            if taken is not None:
                return FileResult(ref.bucket, ref.key, ref.etag, "skipped", reason=f"already {taken[0]}")
            try:
                data = storage.read_object(s3, ref)
            except ObjectChanged as exc:
                return FileResult(ref.bucket, ref.key, ref.etag, "skipped", reason=str(exc))
            return _load(conn, s3, contract, settings, ref, execution, data, started, written)
    except Exception as exc:
        _discard(s3, settings.lake_bucket, written)
        _record_failure(conn, contract, ref, execution, started, exc)
        raise


def _load(
    conn: psycopg.Connection[Any],
    s3: S3Client,
    contract: Contract,
    settings: Settings,
    ref: ObjectRef,
    execution: str,
    data: bytes,
    started: dt.datetime,
    written: list[str],
) -> FileResult:
    quarantine_key = quarantine_key_of(settings, contract, ref.key)
    if not ref.key.endswith(CSV_SUFFIXES):
        return _reject(conn, s3, contract, ref, execution, data, started, quarantine_key, "not a .csv file")
    try:
        frame = read_csv(_decompress(ref.key, data), contract)
    except ValueError as exc:
        return _reject(conn, s3, contract, ref, execution, data, started, quarantine_key, str(exc))

    checked = validate(frame, contract)
    # The load date is the transaction's day (UTC): finished_at below is the same now(), so the
    # lake's load-date partition and the database's window agree (pricepipe.training.data).
    ingest_id, load_date = conn.execute(
        "INSERT INTO price_data.ingestion_ledger (run_id, dataset, source_bucket, source_key, source_etag,"
        " source_size, status, started_at) VALUES (%s, %s, %s, %s, %s, %s, 'loaded', %s)"
        " RETURNING id, (now() AT TIME ZONE 'UTC')::date",
        (execution, contract.name, ref.bucket, ref.key, ref.etag, ref.size, started),
    ).fetchone()  # type: ignore[misc]

    good = checked.good
    _ensure_event_months(conn, contract, good)  # before raw_data is first read: see pricepipe.partitions
    is_new = _not_yet_stored(conn, contract, good)
    new = good[is_new].reset_index(drop=True) if not is_new.all() else good
    features = build_features(new, contract)
    lineage = {"_ingest_id": ingest_id}
    # The lake write (client CPU and S3) overlaps the COPYs (database-bound); both finish before
    # the commit, and a lake failure rolls the database back.
    with ThreadPoolExecutor(max_workers=1) as background:  # leaving the block waits for the lake
        lake = background.submit(write_lake, s3, settings, contract, features, ref, written, load_date)
        copy_frame(conn, "price_data.raw_data", new, _raw_schema(contract), lineage)
        copy_frame(conn, "price_data.processed_features", features, _processed_schema(contract), lineage)
        lake_keys = lake.result()

    result = FileResult(
        ref.bucket,
        ref.key,
        ref.etag,
        "loaded",
        rows_in=checked.rows_in,
        rows_loaded=len(new),
        rows_quarantined=len(checked.bad),
        rows_duplicate=len(good) - len(new),
        ingest_id=ingest_id,
    )
    result.actuals_joined = _join_actuals(conn, contract, ingest_id) if len(new) else 0
    if len(checked.bad):
        result.quarantine_key = _write_quarantine(s3, ref.bucket, quarantine_key, checked.bad)
    result.lake_keys = lake_keys
    dates = _event_date_range(new, contract)
    conn.execute(
        "UPDATE price_data.ingestion_ledger SET rows_in = %s, rows_loaded = %s, rows_quarantined = %s,"
        " rows_duplicate = %s, quarantine_key = %s, lake_keys = %s, event_date_min = %s, event_date_max = %s,"
        " finished_at = now() WHERE id = %s",
        (
            result.rows_in,
            result.rows_loaded,
            result.rows_quarantined,
            result.rows_duplicate,
            result.quarantine_key,
            result.lake_keys,
            dates[0],
            dates[1],
            ingest_id,
        ),
    )
    return result


def quarantine_key_of(settings: Settings, contract: Contract, key: str) -> str:
    """Where a landing file's rejected rows (or the whole file) go: the same path under the contract's
    quarantine folder. A key outside the contract's landing folder is refused with a
    :class:`ContractError`: it belongs to another dataset (or none), whose contract this is not."""
    area = settings.contract_landing_prefix(contract.name)
    if not key.startswith(area):
        raise ContractError(
            f"{key} is not under {area}, the landing folder of contract {contract.name!r} that this ETL"
            f" loads with: land {contract.name} files under {area}, another dataset's in its own deployment"
        )
    return settings.contract_quarantine_prefix(contract.name) + key.removeprefix(area)


def _decompress(key: str, data: bytes) -> bytes:
    if key.endswith(".gz"):
        import gzip

        try:
            return gzip.decompress(data)
        except OSError as exc:
            raise ValueError(f"not a readable gzip file: {exc}") from exc
    return data


def _reject(
    conn: psycopg.Connection[Any],
    s3: S3Client,
    contract: Contract,
    ref: ObjectRef,
    execution: str,
    data: bytes,
    started: dt.datetime,
    quarantine_key: str,
    reason: str,
) -> FileResult:
    """Quarantine a whole unreadable file as it came, with its reason beside it."""
    storage.put_bytes(s3, ref.bucket, quarantine_key, data)
    storage.put_bytes(s3, ref.bucket, f"{quarantine_key}.reason.txt", reason.encode(), "text/plain")
    conn.execute(
        "INSERT INTO price_data.ingestion_ledger (run_id, dataset, source_bucket, source_key, source_etag,"
        " source_size, status, quarantine_key, error, started_at) VALUES (%s, %s, %s, %s, %s, %s, 'rejected',"
        " %s, %s, %s)",
        (execution, contract.name, ref.bucket, ref.key, ref.etag, ref.size, quarantine_key, reason, started),
    )
    return FileResult(ref.bucket, ref.key, ref.etag, "rejected", quarantine_key=quarantine_key, reason=reason)


def _discard(s3: S3Client, bucket: str, keys: list[str]) -> None:
    """Best effort: remove lake objects of an attempt that rolled back (a retry rewrites them)."""
    for start in range(0, len(keys), 1000):
        with contextlib.suppress(Exception):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})


def _record_failure(
    conn: psycopg.Connection[Any],
    contract: Contract,
    ref: ObjectRef,
    execution: str,
    started: dt.datetime,
    exc: Exception,
) -> None:
    """Best effort: a ``failed`` ledger row so the run's summary shows the file and why."""
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO price_data.ingestion_ledger (run_id, dataset, source_bucket, source_key, source_etag,"
                " source_size, status, error, started_at) VALUES (%s, %s, %s, %s, %s, %s, 'failed', %s, %s)",
                (
                    execution,
                    contract.name,
                    ref.bucket,
                    ref.key,
                    ref.etag,
                    ref.size,
                    f"{type(exc).__name__}: {exc}",
                    started,
                ),
            )
    except Exception:  # noqa: BLE001, S110 - the database may be what failed; the error itself propagates
        pass


def _ensure_event_months(conn: psycopg.Connection[Any], contract: Contract, good: pd.DataFrame) -> None:
    """Create the ``raw_data`` partitions of the event months of ``good`` that are missing."""
    spec = partitions.raw_data(contract)
    if spec is None or good.empty:
        return
    moments = good[spec.column]
    if getattr(moments.dt, "tz", None) is not None:
        moments = moments.dt.tz_convert("UTC")
    months = (moments.dt.year * 100 + moments.dt.month).unique()
    partitions.ensure_months(conn, spec, [dt.date(int(m) // 100, int(m) % 100, 1) for m in months])


def _not_yet_stored(conn: psycopg.Connection[Any], contract: Contract, good: pd.DataFrame) -> Any:
    """Mask of rows whose key is not in ``price_data.raw_data`` yet."""
    import numpy as np
    import pandas as pd

    if good.empty:
        return np.ones(0, dtype=bool)
    keys = list(contract.key)
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE incoming_keys ON COMMIT DROP AS SELECT {} FROM price_data.raw_data WITH NO DATA"
        ).format(sql.SQL(", ").join(map(sql.Identifier, keys)))
    )
    copy_frame(conn, "incoming_keys", good[keys], contract.arrow_schema({k: contract.columns[k].pg_type for k in keys}))
    stored = conn.execute(
        sql.SQL("SELECT {cols} FROM incoming_keys JOIN price_data.raw_data USING ({cols})").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, keys))
        )
    ).fetchall()
    conn.execute("DROP TABLE incoming_keys")
    if not stored:
        return np.ones(len(good), dtype=bool)
    stored_index = pd.MultiIndex.from_tuples(stored, names=keys)
    return ~pd.MultiIndex.from_frame(good[keys]).isin(stored_index)


def _join_actuals(conn: psycopg.Connection[Any], contract: Contract, ingest_id: int) -> int:
    """Give served predictions their actual price: rows that just arrived, matched by record key
    (the contract's key values joined with '|', as the API logs them; dates in ISO form)."""
    key = sql.SQL(" || '|' || ").join(sql.SQL("r.{}::text").format(sql.Identifier(k)) for k in contract.key)
    updated = conn.execute(
        sql.SQL(
            "UPDATE monitoring.predictions p SET actual = r.{target}, actual_at = now()"
            " FROM price_data.raw_data r WHERE r._ingest_id = %s AND p.record_key = {key} AND p.actual IS NULL"
        ).format(target=sql.Identifier(contract.target), key=key),
        (ingest_id,),
    )
    return updated.rowcount


def _raw_schema(contract: Contract) -> Any:
    return contract.arrow_schema(contract.raw_table_columns)


def _processed_schema(contract: Contract) -> Any:
    return contract.arrow_schema(contract.processed_table_columns)


def _event_date_range(rows: pd.DataFrame, contract: Contract) -> tuple[dt.date | None, dt.date | None]:
    if contract.event_time is None or rows.empty:
        return None, None
    moments = rows[contract.event_time]
    return moments.min().date(), moments.max().date()


def _write_quarantine(s3: S3Client, bucket: str, key: str, bad: pd.DataFrame) -> str:
    buffer = io.StringIO()
    bad.to_csv(buffer, index=False)
    return storage.put_bytes(s3, bucket, key, buffer.getvalue().encode(), "text/csv")


def write_lake(
    s3: S3Client,
    settings: Settings,
    contract: Contract,
    features: pd.DataFrame,
    ref: ObjectRef,
    written: list[str] | None = None,
    load_date: dt.date | None = None,
) -> list[str]:
    """Write features as Parquet, one object per event date (without an event time, one object in the
    partition of ``load_date``, the load's day; default today, UTC); keys are fixed by the source
    file, so a retried load overwrites rather than duplicates. Each key is appended to ``written``
    once put."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if features.empty:
        return []
    file_id = hashlib.sha1(f"{ref.bucket}/{ref.key}/{ref.etag}".encode(), usedforsecurity=False).hexdigest()[:16]
    base = f"{settings.lake_prefix}dataset={contract.name}/"
    schema = contract.arrow_schema(contract.feature_table_columns)
    table = pa.Table.from_pandas(features, schema=schema, preserve_index=False)
    if contract.event_time is None:
        day = load_date or dt.datetime.now(dt.UTC).date()
        parts = [(f"{contract.lake_partition}={day.isoformat()}", table)]
    else:
        # one sort, then zero-copy slices per day: a file may span hundreds of days
        table = table.take(pc.sort_indices(pc.cast(table[contract.event_time], pa.date32())))
        runs = pc.run_end_encode(pc.cast(table[contract.event_time], pa.date32()).combine_chunks())
        ends, values = runs.run_ends.to_pylist(), runs.values.to_pylist()
        starts = [0, *ends[:-1]]
        parts = [
            (f"{contract.event_time}={value.isoformat()}", table.slice(start, end - start))
            for value, start, end in zip(values, starts, ends, strict=True)
        ]

    def put(part: tuple[str, pa.Table]) -> str:
        buffer = pa.BufferOutputStream()
        pq.write_table(part[1], buffer, compression="zstd")
        key = f"{base}{part[0]}/part-{file_id}.parquet"
        storage.put_bytes(s3, settings.lake_bucket, key, buffer.getvalue().to_pybytes())
        if written is not None:
            written.append(key)
        return key

    if len(parts) == 1:
        return [put(parts[0])]
    with ThreadPoolExecutor(max_workers=LAKE_WRITERS) as pool:
        return list(pool.map(put, parts))


# -- summarise a run -------------------------------------------------------------------------------


def summarize(conn: psycopg.Connection[Any], execution: str) -> dict[str, Any]:
    """Totals of one ETL run from the ledger, with one line per file."""
    with transient_errors():
        rows = conn.execute(
            "SELECT DISTINCT ON (source_key, source_etag) source_key, status, rows_in, rows_loaded,"
            " rows_quarantined, rows_duplicate, quarantine_key, event_date_min, event_date_max, error"
            " FROM price_data.ingestion_ledger WHERE run_id = %s"
            " ORDER BY source_key, source_etag, (status <> 'failed') DESC, id DESC",
            (execution,),
        ).fetchall()
    files = [
        {
            "key": r[0],
            "status": r[1],
            "rows_in": r[2],
            "rows_loaded": r[3],
            "rows_quarantined": r[4],
            "rows_duplicate": r[5],
            "quarantine_key": r[6],
            "event_date_min": r[7].isoformat() if r[7] else None,
            "event_date_max": r[8].isoformat() if r[8] else None,
            "error": r[9],
        }
        for r in rows
    ]
    totals = {k: sum(f[k] for f in files) for k in ("rows_in", "rows_loaded", "rows_quarantined", "rows_duplicate")}
    by_status = {s: sum(1 for f in files if f["status"] == s) for s in ("loaded", "rejected", "failed")}
    return {
        "execution": execution,
        **totals,
        "files_loaded": by_status["loaded"],
        "files_rejected": by_status["rejected"],
        "files_failed": by_status["failed"],
        "quarantine_ratio": round(totals["rows_quarantined"] / totals["rows_in"], 6) if totals["rows_in"] else 0.0,
        "files": files[:MAX_LISTED_FILES],
        "files_listed": min(len(files), MAX_LISTED_FILES),
        "files_total": len(files),
    }
