"""Batch scoring: every row of a prefix of CSV or Parquet files priced by one registered model.

The scoring flow (``infrastructure/statemachines/scoring.asl.json``) runs three steps:

- :func:`plan`: resolve the model (a version, or an alias; default the champion) from the
  registry's mirror in PostgreSQL, list the input files and cut each into parts — a CSV into byte
  ranges of about ``part_bytes`` (a part holds the lines that *start* in its range, so a line cut by
  a boundary belongs to one part only; quoted line breaks inside a field are not supported in a
  CSV that is split), a Parquet file into runs of whole row groups of at least ``part_rows`` rows —
  and write them as the run's manifest, which the Distributed Map reads;
- :func:`score_part`, one Map child per part: read the part into Arrow columns, check every row
  with the API's own column rules (:meth:`pricepipe.serving.columns.ColumnCheck.violations`; a
  refused row's reasons are the API's request models' messages), price the good rows with the lean
  model (no ML library, as the API) in batches of :data:`BATCH_ROWS`, and write Parquet predictions
  (the key columns, ``prediction``, ``model_name``, ``model_version``, and with an interval level
  ``interval_low``/``interval_high``/``interval_level``) under ``s3://<artifacts>/scores/<run>/``,
  the refused rows with their reasons beside them; then record the part in
  ``monitoring.scoring_parts``;
- :func:`summarize`: the run's totals (rows in, scored, rejected) from the parts, into
  ``monitoring.scoring_runs`` and the flow's output.

Every row that comes in is scored or rejected with its reasons (the tables' CHECK constraints hold
the sum). Output keys are fixed by the run and the part, and a part already recorded is skipped: a
rerun of the same run id writes nothing twice, and scores only the parts a failed run left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pricepipe import champion, storage
from pricepipe.contract import read_csv_table
from pricepipe.db import transient_errors
from pricepipe.errors import PricePipeError
from pricepipe.lean_model import LeanModel, load_from_uri
from pricepipe.serving.columns import ColumnCheck, feature_columns
from pricepipe.serving.requests import request_models
from pricepipe.storage import ObjectRef, split_uri

if TYPE_CHECKING:
    import numpy as np
    import psycopg
    import pyarrow as pa
    from mypy_boto3_s3 import S3Client

    from pricepipe.contract import Contract
    from pricepipe.settings import Settings

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".parq")
BATCH_ROWS = 100_000  # rows checked and priced at once: bounds a child's memory for any part size
HEADER_PROBE = 64 * 1024  # bytes read at a time when looking for a CSV's header or a line's end
MAX_REASONS_SHOWN = 20  # reasons per rejected part in the run's output (every row keeps its own in the file)
PART_LOCK_NAMESPACE = 7_401_200
ALIASES = ("champion", "challenger", "previous")
REASONS_COLUMN = "_reasons"
ROW_COLUMN = "_part_row"


class ScoringRefused(PricePipeError):
    """A scoring run that cannot go ahead as asked (unknown model, bad input, a run id reused for
    other input), named in the message. Its class name is the error the state machine fails with."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    uri: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PartResult:
    part_id: str
    key: str
    status: str  # scored | rejected | skipped (recorded by an earlier attempt or run)
    rows_in: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    output_key: str | None = None
    rejected_key: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the model -------------------------------------------------------------------------------------


def resolve_model(conn: psycopg.Connection[Any], model_name: str, wanted: str | None) -> ModelRef:
    """``wanted`` (a version number, or an alias: champion, challenger, previous; None: the champion)
    as the registry's mirror in PostgreSQL holds it, with its lean artifact's URI."""
    wanted = (wanted or champion.STAGE).strip()
    with transient_errors():
        if wanted == champion.STAGE:
            found = champion.current(conn, model_name)
            row = (found.version, found.serving_artifact_uri) if found else None
        elif wanted in ALIASES:
            row = conn.execute(
                "SELECT version, serving_artifact_uri FROM model_registry.models"
                " WHERE model_name = %s AND stage = %s ORDER BY updated_at DESC LIMIT 1",
                (model_name, wanted),
            ).fetchone()
        elif wanted.isdigit():
            row = conn.execute(
                "SELECT version, serving_artifact_uri FROM model_registry.models"
                " WHERE model_name = %s AND version = %s",
                (model_name, wanted),
            ).fetchone()
        else:
            raise ScoringRefused(f"model {wanted!r} is neither a version number nor one of {', '.join(ALIASES)}")
    if row is None:
        raise ScoringRefused(f"{model_name} has no version {wanted!r} in the registry: train or promote one first")
    if not row[1]:
        raise ScoringRefused(f"{model_name} version {row[0]} has no serving artifact to score with")
    return ModelRef(model_name, str(row[0]), str(row[1]))


def load_model(s3: S3Client, ref: ModelRef, contract: Contract, interval: float | None) -> LeanModel:
    """The model's lean artifact, refused here (before any row is read) when it was trained on another
    contract or cannot give the asked intervals."""
    model = load_from_uri(ref.uri, s3)
    trained_on = model.info.get("contract") or {}
    if isinstance(trained_on, dict) and trained_on.get("name") not in (None, contract.name):
        raise ScoringRefused(
            f"{ref.name} version {ref.version} was trained on {trained_on['name']!r}, not {contract.name!r}"
        )
    unknown = [name for name in model.features if name not in contract.feature_columns]
    if unknown:
        raise ScoringRefused(f"{ref.name} version {ref.version} needs features the contract does not make: {unknown}")
    if interval is not None and not model.can_interval:
        raise ScoringRefused(
            f"{ref.name} version {ref.version} carries no interval calibration: score without interval"
        )
    return model


# -- plan ------------------------------------------------------------------------------------------


def input_location(settings: Settings, given: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of the input: ``s3://bucket/prefix`` or a prefix of the landing bucket,
    which must lie under its scoring folder (the only place the scoring functions may read)."""
    if given.startswith("s3://"):
        bucket, prefix = split_uri(given)
    else:
        bucket, prefix = settings.landing_bucket, given.lstrip("/")
    if bucket != settings.landing_bucket or not prefix.startswith(settings.scoring_input_prefix):
        raise ScoringRefused(
            f"input s3://{bucket}/{prefix} is outside s3://{settings.landing_bucket}/{settings.scoring_input_prefix},"
            " the folder the scoring flow reads: copy the files there"
        )
    return bucket, prefix


def plan(
    s3: S3Client,
    conn: psycopg.Connection[Any],
    settings: Settings,
    contract: Contract,
    request: dict[str, Any],
    execution: str,
) -> dict[str, Any]:
    """Resolve the model, cut the input into parts, write the manifest and open the run's row."""
    if not request.get("input"):
        raise ScoringRefused("a scoring run needs its input: an S3 prefix of CSV or Parquet files")
    bucket, prefix = input_location(settings, str(request["input"]))
    run = str(request.get("run") or execution)
    if not run or "/" in run or len(run) > 128:
        raise ScoringRefused(f"run id {run!r} must be 1-128 characters without '/'")
    interval = _level(request.get("interval"))
    part_bytes = int(request.get("part_bytes") or settings.scoring_part_bytes)
    part_rows = int(request.get("part_rows") or settings.scoring_part_rows)
    if part_bytes < 1 or part_rows < 1:
        raise ScoringRefused("part_bytes and part_rows must be positive")
    model = resolve_model(conn, settings.model_name, request.get("model"))
    load_model(s3, model, contract, interval)
    files = [o for o in storage.list_objects(s3, bucket, prefix) if o.key.endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)]
    if not files:
        raise ScoringRefused(f"no .csv or .parquet files under s3://{bucket}/{prefix}")
    parts = [part for ref in files for part in _parts(s3, ref, part_bytes, part_rows)]
    output_prefix = f"{settings.scores_prefix}{run}/"
    _open_run(conn, run, model, f"s3://{bucket}/{prefix}", interval, output_prefix, len(parts), execution)
    manifest_key = f"{settings.scoring_manifest_prefix}{run}.json"
    storage.put_json(s3, settings.artifacts_bucket, manifest_key, parts)
    return {
        "run": run,
        "model": model.to_dict(),
        "interval": interval,
        "input": f"s3://{bucket}/{prefix}",
        "files": len(files),
        "parts": len(parts),
        "output": f"s3://{settings.artifacts_bucket}/{output_prefix}",
        "manifest": {"bucket": settings.artifacts_bucket, "key": manifest_key},
    }


def _level(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise ScoringRefused(f"interval must be a level in (0, 1), such as 0.8; got {value!r}") from None
    if not 0 < level < 1:
        raise ScoringRefused(f"interval must be a level in (0, 1), such as 0.8; got {value!r}")
    return level


def _open_run(
    conn: psycopg.Connection[Any],
    run: str,
    model: ModelRef,
    input_uri: str,
    interval: float | None,
    output_prefix: str,
    parts: int,
    execution: str,
) -> None:
    """Insert the run's row; a rerun of the same run id must ask for the very same scoring."""
    with transient_errors(), conn.transaction():
        before = conn.execute(
            "SELECT model_name, model_version, input_uri, interval_level, parts FROM monitoring.scoring_runs"
            " WHERE run_id = %s FOR UPDATE",
            (run,),
        ).fetchone()
        if before is None:
            conn.execute(
                "INSERT INTO monitoring.scoring_runs (run_id, model_name, model_version, input_uri, interval_level,"
                " output_prefix, parts, execution) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (run, model.name, model.version, input_uri, interval, output_prefix, parts, execution),
            )
            return
        asked = (model.name, model.version, input_uri, interval, parts)
        if tuple(before) != asked:
            raise ScoringRefused(
                f"run {run!r} already scored {before[2]} with {before[0]} version {before[1]}"
                f" (interval {before[3]}, {before[4]} parts); this asks for {input_uri} with version {model.version}"
                f" (interval {interval}, {parts} parts): give this scoring a run id of its own"
            )
        conn.execute(
            "UPDATE monitoring.scoring_runs SET status = 'running', execution = %s, finished_at = NULL"
            " WHERE run_id = %s",
            (execution, run),
        )


def _parts(s3: S3Client, ref: ObjectRef, part_bytes: int, part_rows: int) -> list[dict[str, Any]]:
    """The parts of one input file, as manifest items."""
    if ref.key.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(RangeReader(s3, ref)).metadata
        ranges, start, rows = [], 0, 0
        for group in range(meta.num_row_groups):
            rows += meta.row_group(group).num_rows
            if rows >= part_rows:
                ranges.append((start, group + 1))
                start, rows = group + 1, 0
        if start < meta.num_row_groups or not ranges:
            ranges.append((start, meta.num_row_groups))
        unit = "row_groups"
    else:
        header_end = len(_csv_header(s3, ref))
        bounds = list(range(header_end, ref.size, part_bytes)) or [header_end]
        ranges = [(lo, min(lo + part_bytes, ref.size)) for lo in bounds]
        unit = "bytes"
    return [
        {**ref.to_dict(), "unit": unit, "start": lo, "end": hi, "part_id": _part_id(ref, unit, lo, hi)}
        for lo, hi in ranges
    ]


def _part_id(ref: ObjectRef, unit: str, start: int, end: int) -> str:
    text = f"{ref.bucket}/{ref.key}/{ref.etag}/{unit}/{start}-{end}"
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


# -- reading a part --------------------------------------------------------------------------------


class RangeReader(io.RawIOBase):
    """A seekable, read-only file over one S3 object's content (ranged GETs, pinned to its ETag):
    what pyarrow needs to read a Parquet footer and chosen row groups without the whole object."""

    def __init__(self, s3: S3Client, ref: ObjectRef) -> None:
        super().__init__()
        self.s3, self.ref, self.position = s3, ref, 0
        self._held, self._held_at = b"", 0  # bytes fetched ahead (prefetch), served without a request

    def prefetch(self, start: int, end: int) -> None:
        """Fetch ``[start, end)`` in one request: pyarrow then reads the column chunks in it from memory
        (otherwise every column chunk of every row group is a GET of its own)."""
        self._held, self._held_at = self.range(start, end), start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.ref.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        end = min(self.ref.size, self.position + len(buffer))
        offset = self.position - self._held_at
        if offset >= 0 and end - self._held_at <= len(self._held):
            data = self._held[offset : offset + end - self.position]
        else:
            data = self.range(self.position, end)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object."""
        if end <= start:
            return b""
        try:
            response = self.s3.get_object(
                Bucket=self.ref.bucket, Key=self.ref.key, Range=f"bytes={start}-{end - 1}", IfMatch=f'"{self.ref.etag}"'
            )
            return bytes(response["Body"].read())
        except Exception as exc:
            storage._raise_known(exc, self.ref.bucket, f"reading s3://{self.ref.bucket}/{self.ref.key}")
            raise


def _row_groups_span(meta: Any, groups: range) -> tuple[int, int]:
    """The bytes holding these row groups' column chunks (dictionary pages included)."""
    start, end = None, 0
    for group in groups:
        for index in range(meta.row_group(group).num_columns):
            chunk = meta.row_group(group).column(index)
            first = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            start = first if start is None else min(start, first)
            end = max(end, first + chunk.total_compressed_size)
    return start or 0, end


def _csv_header(s3: S3Client, ref: ObjectRef) -> bytes:
    """The CSV's first line, its line break included."""
    reader, header = RangeReader(s3, ref), b""
    while len(header) < ref.size:
        header += reader.range(len(header), min(ref.size, len(header) + HEADER_PROBE))
        if b"\n" in header:
            return header[: header.index(b"\n") + 1]
    return header


def _csv_lines(s3: S3Client, ref: ObjectRef, start: int, end: int, header_end: int) -> bytes:
    """The lines that start in ``[start, end)``, whole (the last one read on past ``end``)."""
    reader = RangeReader(s3, ref)
    begin = start - 1 if start > header_end else start
    data = reader.range(begin, end)
    if begin < start:  # a line starts in the range only after a line break at start - 1 or later
        cut = data.find(b"\n")
        data = data[cut + 1 :] if cut >= 0 else b""
    if not data:
        return b""
    position = end
    while not data.endswith(b"\n") and position < ref.size:
        more = reader.range(position, min(ref.size, position + HEADER_PROBE))
        if b"\n" in more:
            return data + more[: more.index(b"\n") + 1]
        data, position = data + more, position + len(more)
    return data


def read_part(s3: S3Client, contract: Contract, part: dict[str, Any]) -> pa.Table:
    """One part as an Arrow table (CSV typed as the ETL reads it: text where a value does not parse)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ref = ObjectRef.from_dict(part)
    if part["unit"] == "row_groups":
        reader = RangeReader(s3, ref)
        # text columns stay dictionary-encoded as Parquet writers store them: the checks judge each
        # distinct value once and the model looks each up once
        text = [n for n, c in contract.columns.items() if c.type in ("string", "category")]
        file = pq.ParquetFile(reader, read_dictionary=text)
        groups = range(part["start"], part["end"])
        reader.prefetch(*_row_groups_span(file.metadata, groups))
        return file.read_row_groups(groups)
    header = _csv_header(s3, ref)
    lines = _csv_lines(s3, ref, part["start"], part["end"], len(header))
    table = read_csv_table(header + lines, contract)
    return table if table.num_rows or not lines else pa.table({})


# -- scoring a part --------------------------------------------------------------------------------


class Scorer:
    """What a scoring child keeps between invocations: the contract's checks, the request models for
    reasons, and the models it loaded (by artifact URI)."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.check = ColumnCheck(contract)
        self.row_model = request_models(contract, max_batch_rows=1).row
        self._models: dict[str, LeanModel] = {}

    def model(self, s3: S3Client, ref: ModelRef, interval: float | None) -> LeanModel:
        if ref.uri not in self._models:
            self._models = {ref.uri: load_model(s3, ref, self.contract, interval)}  # one model at a time
        return self._models[ref.uri]


def score_part(
    conn: psycopg.Connection[Any],
    s3: S3Client,
    settings: Settings,
    scorer: Scorer,
    event: dict[str, Any],
) -> PartResult:
    """Score one manifest item (see the module docstring); ``event`` holds the item as ``part`` and the
    plan's ``run``, ``model`` and ``interval``."""
    part, run = event["part"], str(event["run"])
    model_ref = ModelRef(**event["model"])
    interval = _level(event.get("interval"))
    with transient_errors(), conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (PART_LOCK_NAMESPACE, f"{run}/{part['part_id']}")
        )
        done = conn.execute(
            "SELECT status, rows_in, rows_scored, rows_rejected, output_key, rejected_key FROM monitoring.scoring_parts"
            " WHERE run_id = %s AND part_id = %s",
            (run, part["part_id"]),
        ).fetchone()
        if done is not None:
            return PartResult(
                part["part_id"],
                part["key"],
                "skipped",
                rows_in=done[1],
                rows_scored=done[2],
                rows_rejected=done[3],
                output_key=done[4],
                rejected_key=done[5],
                reason=f"already {done[0]}",
            )
        model = scorer.model(s3, model_ref, interval)
        result = _score(s3, settings, scorer, model, model_ref, interval, run, part)
        conn.execute(
            "INSERT INTO monitoring.scoring_parts (run_id, part_id, source_bucket, source_key, source_etag, range_unit,"
            " range_start, range_end, status, rows_in, rows_scored, rows_rejected, output_key, rejected_key, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                run,
                part["part_id"],
                part["bucket"],
                part["key"],
                part["etag"],
                part["unit"],
                part["start"],
                part["end"],
                result.status,
                result.rows_in,
                result.rows_scored,
                result.rows_rejected,
                result.output_key,
                result.rejected_key,
                result.reason,
            ),
        )
    return result


def _score(
    s3: S3Client,
    settings: Settings,
    scorer: Scorer,
    model: LeanModel,
    model_ref: ModelRef,
    interval: float | None,
    run: str,
    part: dict[str, Any],
) -> PartResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    contract = scorer.contract
    base = f"{settings.scores_prefix}{run}/"
    result = PartResult(part["part_id"], part["key"], "scored")
    try:
        table = read_part(s3, contract, part)
        refusal = _column_refusal(table, contract)
    except (ValueError, pa.ArrowException) as exc:  # not readable as CSV / Parquet: the file's rows cannot be counted
        raise ScoringRefused(f"s3://{part['bucket']}/{part['key']} cannot be read: {exc}") from exc
    result.rows_in = table.num_rows
    rejected: list[pa.Table] = []
    if refusal is not None:
        result.status, result.reason = "rejected", refusal
        rejected.append(_with_reasons(table, [refusal] * table.num_rows, 0))
    else:
        sink = io.BytesIO()
        writer: pq.ParquetWriter | None = None
        for offset in range(0, table.num_rows, BATCH_ROWS):
            batch = table.slice(offset, BATCH_ROWS)
            good, bad = _checked(scorer, batch, offset)
            if bad is not None:
                rejected.append(bad)
            if good is not None and good.num_rows:
                out = _predict(contract, model, model_ref, interval, good)
                if writer is None:
                    writer = pq.ParquetWriter(sink, out.schema, compression="zstd")
                writer.write_table(out)
                result.rows_scored += good.num_rows
        if writer is not None:
            writer.close()
            result.output_key = storage.put_bytes(
                s3, settings.artifacts_bucket, f"{base}predictions/part-{part['part_id']}.parquet", sink.getvalue()
            )
    result.rows_rejected = result.rows_in - result.rows_scored
    if result.rows_rejected:
        result.rejected_key = _write_rejected(
            s3, settings.artifacts_bucket, f"{base}rejected/part-{part['part_id']}.csv", rejected
        )
    return result


def _column_refusal(table: pa.Table, contract: Contract) -> str | None:
    """Why no row of the part can be scored (a column the contract does not know, a required one
    missing), as the API refuses an unknown or missing field; None when the columns are usable."""
    names = set(table.column_names)
    if not names and table.num_rows == 0:
        return None
    unknown = sorted(names - set(contract.input_columns) - {contract.target})
    if unknown:
        return f"columns not in contract {contract.name!r}: {', '.join(unknown)}"
    missing = [n for n in contract.input_columns if n not in names and not contract.columns[n].nullable]
    if missing:
        return f"required columns missing: {', '.join(missing)}"
    return None


_ARROW_TYPES = {
    "integer": "int64",
    "float": "float64",
    "boolean": "bool_",
    "string": "large_string",
    "category": "large_string",
    "date": "date32",
    "datetime": "timestamp_us_utc",
}


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    if kind == "datetime":
        return pa.timestamp("us", tz="UTC")
    return getattr(pa, _ARROW_TYPES[kind])()


def _typed(batch: pa.Table, contract: Contract) -> tuple[dict[str, pa.Array], dict[str, np.ndarray]]:
    """The batch's input columns cast to their contract types, and per column the rows whose value
    does not convert (those become nulls here; the reasons show the value as it came)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: dict[str, pa.Array] = {}
    unconverted: dict[str, np.ndarray] = {}
    for name in contract.input_columns:
        if name not in batch.column_names:
            continue
        values = batch.column(name).combine_chunks()
        wanted = _arrow_type(contract.columns[name].type)
        if values.type == wanted or _text_dictionary(values.type, wanted):
            columns[name] = values
            continue
        try:
            columns[name] = pc.cast(values, wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            converted = [_convert_one(v, wanted) for v in values.to_pylist()]
            failed = np.array([c is _FAILED for c in converted], dtype=bool)
            columns[name] = pa.array([None if c is _FAILED else c for c in converted], wanted)
            unconverted[name] = failed
    return columns, unconverted


_FAILED = object()


def _text_dictionary(found: pa.DataType, wanted: pa.DataType) -> bool:
    """Dictionary-encoded text where text is wanted: kept as it is (see :func:`read_part`)."""
    import pyarrow as pa

    return (
        pa.types.is_dictionary(found)
        and pa.types.is_large_string(wanted)
        and (pa.types.is_string(found.value_type) or pa.types.is_large_string(found.value_type))
    )


def _convert_one(value: Any, wanted: pa.DataType) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    if value is None:
        return None
    try:
        return pc.cast(pa.array([value]), wanted)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _FAILED


def _checked(scorer: Scorer, batch: pa.Table, offset: int) -> tuple[pa.Table | None, pa.Table | None]:
    """``(good rows as typed input columns, refused rows as they came with their reasons)``."""
    import numpy as np
    import pyarrow as pa

    columns, unconverted = _typed(batch, scorer.contract)
    refused = scorer.check.violations(columns, batch.num_rows)
    bad = np.zeros(batch.num_rows, dtype=bool)
    for mask in (*refused.values(), *unconverted.values()):
        bad |= mask
    good = pa.table(columns)
    if not bad.any():
        return good, None
    rows = np.flatnonzero(bad)
    reasons = _reasons(scorer, batch, columns, unconverted, refused, rows)
    rejected = _with_reasons(batch.take(rows), reasons, offset, rows)
    return good.filter(pa.array(~bad)), rejected


def _reasons(
    scorer: Scorer,
    batch: pa.Table,
    columns: dict[str, pa.Array],
    unconverted: dict[str, np.ndarray],
    refused: dict[str, np.ndarray],
    rows: np.ndarray,
) -> list[str]:
    """Each refused row's reasons as the API's request models state them ("lead_time: Input should be
    greater than or equal to 0"), with the row's values as JSON would carry them."""
    from pydantic import ValidationError

    from pricepipe.serving.service import field_path

    typed = {name: values.take(rows).to_pylist() for name, values in columns.items()}
    raw = {name: batch.column(name).take(rows).to_pylist() for name in unconverted}
    out = []
    for i, row in enumerate(rows):
        record = {name: _json_value(values[i]) for name, values in typed.items()}
        for name, failed in unconverted.items():
            if failed[row]:
                record[name] = raw[name][i]
        try:
            scorer.row_model.model_validate(record)
        except ValidationError as exc:
            out.append("; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)))
            continue
        # the models accept what the column rules refused: name the rules (never expected; tests hold them equal)
        out.append(
            "; ".join(f"{name}: refused by the contract's column rules" for name, m in refused.items() if m[row])
        )
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _with_reasons(table: pa.Table, reasons: list[str], offset: int, rows: Any = None) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    positions = np.arange(table.num_rows) if rows is None else np.asarray(rows)
    for index, field in enumerate(table.schema):  # rows as they came, as plain columns (CSV has no dictionaries)
        if pa.types.is_dictionary(field.type):
            table = table.set_column(index, field.name, table.column(index).cast(field.type.value_type))
    table = table.append_column(ROW_COLUMN, pa.array(positions + offset, pa.int64()))
    return table.append_column(REASONS_COLUMN, pa.array(reasons, pa.large_string()))


def _write_rejected(s3: S3Client, bucket: str, key: str, tables: list[pa.Table]) -> str:
    """Refused rows as they came, with their row number in the part and their reasons (CSV, as the
    ETL's quarantine writes them)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.concat_tables(tables, promote_options="permissive")
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    return storage.put_bytes(s3, bucket, key, buffer.getvalue(), "text/csv")


def model_features(contract: Contract, good: pa.Table) -> dict[str, Any]:
    """The model's feature columns for validated rows: numbers as numpy arrays, text as Arrow
    dictionaries (each distinct value looked up once), date parts once per distinct day."""
    import pyarrow as pa

    n = good.num_rows
    columns: dict[str, Any] = {}
    for name in contract.passthrough_features:
        values = (
            good.column(name).combine_chunks()
            if name in good.column_names
            else pa.nulls(n, _arrow_type(contract.columns[name].type))
        )
        if contract.columns[name].type in ("string", "category", "boolean"):
            columns[name] = values if pa.types.is_dictionary(values.type) else values.dictionary_encode()
        else:
            columns[name] = values.to_numpy(zero_copy_only=False)
    if contract.event_time is not None:
        columns[contract.event_time] = good.column(contract.event_time).combine_chunks()
    return feature_columns(columns, contract)


def _predict(contract: Contract, model: LeanModel, ref: ModelRef, interval: float | None, good: pa.Table) -> pa.Table:
    """Predictions for validated rows: the key columns, the price, the model, the interval."""
    import pyarrow as pa

    n = good.num_rows
    features = model_features(contract, good)
    predictions = model.predict_columns(features)
    out: dict[str, Any] = {name: good.column(name) for name in contract.key}
    out["prediction"] = pa.array(predictions, pa.float64())
    out["model_name"] = pa.repeat(pa.scalar(ref.name, pa.string()), n).dictionary_encode()
    out["model_version"] = pa.repeat(pa.scalar(ref.version, pa.string()), n).dictionary_encode()
    if interval is not None:
        bounds = model.intervals_columns(features, predictions, interval)
        out["interval_low"] = pa.array(bounds[:, 0], pa.float64())
        out["interval_high"] = pa.array(bounds[:, 1], pa.float64())
        out["interval_level"] = pa.repeat(pa.scalar(interval, pa.float64()), n)
    return pa.table(out)


# -- summarize -------------------------------------------------------------------------------------


def summarize(conn: psycopg.Connection[Any], settings: Settings, run: str) -> dict[str, Any]:
    """The run's totals from its parts, stored in its row; a part planned but not recorded failed."""
    with transient_errors(), conn.transaction():
        head = conn.execute(
            "SELECT model_name, model_version, input_uri, interval_level, output_prefix, parts"
            " FROM monitoring.scoring_runs WHERE run_id = %s",
            (run,),
        ).fetchone()
        if head is None:
            raise ScoringRefused(f"no scoring run {run!r}")
        parts = conn.execute(
            "SELECT source_key, status, rows_in, rows_scored, rows_rejected, reason FROM monitoring.scoring_parts"
            " WHERE run_id = %s ORDER BY source_key, range_start",
            (run,),
        ).fetchall()
        totals = {
            name: sum(int(p[i]) for p in parts)
            for i, name in ((2, "rows_in"), (3, "rows_scored"), (4, "rows_rejected"))
        }
        failed = int(head[5]) - len(parts)
        status = "failed" if failed else "succeeded"
        conn.execute(
            "UPDATE monitoring.scoring_runs SET rows_in = %s, rows_scored = %s, rows_rejected = %s, parts_failed = %s,"
            " status = %s, finished_at = now() WHERE run_id = %s",
            (totals["rows_in"], totals["rows_scored"], totals["rows_rejected"], failed, status, run),
        )
    rejected_parts = [{"key": p[0], "status": p[1], "reason": p[5]} for p in parts if p[5]]
    return {
        "run": run,
        "status": status,
        "model": {"name": head[0], "version": head[1]},
        "input": head[2],
        "interval": head[3],
        **totals,
        "parts": int(head[5]),
        "parts_scored": len(parts),
        "parts_failed": failed,
        "rejected_parts": rejected_parts[:MAX_REASONS_SHOWN],
        "output": f"s3://{settings.artifacts_bucket}/{head[4]}",
    }
