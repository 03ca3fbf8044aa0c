"""The training frame: a time window of processed features, from PostgreSQL or from the Parquet lake.

Both sources give the same frame (the columns of ``price_data.processed_features`` in contract order,
sorted by event time and key) plus the data's lineage: which ETL loads or lake objects it came from.

:func:`split` is the one rule that cuts a window into fit, validation and holdout rows. With an
event time it is time-ordered (:func:`time_split`: the most recent days are held out). Without one
"most recent" means nothing about the rows themselves, so the cut is by a seeded hash of each row's
key (:func:`key_buckets`): a row stays on its side as the data grows, and a retraining with the same
seed never trains on a row an earlier model was held out on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

# psycopg is imported where used: the MLflow model ships this package to environments without it
from pricepipe.errors import ConfigurationError, PricePipeError
from pricepipe.lean_model import MAX_CATEGORIES, FeatureEncoding

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    from mypy_boto3_s3 import S3Client

    from pricepipe.contract import Contract


class TrainingDataError(PricePipeError):
    """The data cannot train a model as asked (no rows in the window, a holdout too small, ...)."""


@dataclass(frozen=True)
class TrainingWindow:
    """Dates to train on (or to check for drift), both ends included: event dates, or for a contract
    without an event time the dates its rows were loaded (:func:`row_dates_sql`)."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise TrainingDataError(f"training window starts {self.start}, after its end {self.end}")

    @classmethod
    def ending(cls, end: dt.date, days: int) -> TrainingWindow:
        if days < 1:
            raise TrainingDataError(f"a training window needs at least one day, got {days}")
        return cls(end - dt.timedelta(days=days - 1), end)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "days": self.days}


@dataclass
class TrainingData:
    """Rows of one window with where they came from."""

    frame: pd.DataFrame
    window: TrainingWindow
    source: str
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.frame)


# -- PostgreSQL ------------------------------------------------------------------------------------
# Without an event time a row's date is its load date: the UTC day of its ingestion ledger row's
# finished_at, which is the load's transaction time (the ETL writes the lake partition of the same
# day, pricepipe.etl.write_lake). "Recent" then means recently loaded, for the training window,
# the drift window, the performance check and the promotion gate alike.
_LOAD_DATE = "(finished_at AT TIME ZONE 'UTC')::date"


def latest_event_date_postgres(conn: psycopg.Connection[Any], contract: Contract) -> dt.date | None:
    """The most recent date with rows in ``price_data.processed_features`` (None when it is empty):
    the latest event date, or the latest load date of a load that stored rows."""
    from psycopg import sql

    if contract.event_time is None:
        query = sql.SQL(
            "SELECT max({}) FROM price_data.ingestion_ledger WHERE status = 'loaded' AND rows_loaded > 0"
        ).format(sql.SQL(_LOAD_DATE))
    else:
        query = sql.SQL("SELECT max({})::date FROM price_data.processed_features").format(
            sql.Identifier(contract.event_time)
        )
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def rows_in_window_sql(contract: Contract, window: TrainingWindow) -> Any:
    """SQL condition on ``price_data.processed_features`` (or the ``model_features`` view): the row's
    date (event date, or load date) lies in the window."""
    from psycopg import sql

    hi = window.end + dt.timedelta(days=1)
    if contract.event_time is None:
        return sql.SQL(
            "_ingest_id IN (SELECT id FROM price_data.ingestion_ledger WHERE {day} >= {lo} AND {day} < {hi})"
        ).format(day=sql.SQL(_LOAD_DATE), lo=sql.Literal(window.start), hi=sql.Literal(hi))
    return sql.SQL("{t} >= {lo} AND {t} < {hi}").format(
        t=sql.Identifier(contract.event_time), lo=sql.Literal(window.start), hi=sql.Literal(hi)
    )


def _row_order(contract: Contract) -> tuple[str, ...]:
    return (*((contract.event_time,) if contract.event_time else ()), *contract.key)


def load_postgres(conn: psycopg.Connection[Any], contract: Contract, window: TrainingWindow) -> TrainingData:
    """The window's model-ready rows (the view ``price_data.model_features``), with the ETL loads
    that wrote them.

    Rows leave the server as CSV through COPY and are parsed by Arrow with the contract's types: an
    order of magnitude faster than fetching tuples, and the same Arrow schema the lake is read with.
    """
    import pyarrow.csv as pacsv
    from psycopg import sql

    columns = contract.feature_table_columns
    selected = [
        sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").format(sql.Identifier(name))
        if pg_type == "TIMESTAMPTZ"
        else sql.Identifier(name)
        for name, pg_type in columns.items()
    ]
    in_window = rows_in_window_sql(contract, window)
    query = sql.SQL(
        "COPY (SELECT {cols} FROM price_data.model_features WHERE {where} ORDER BY {order})"
        " TO STDOUT WITH (FORMAT csv, HEADER true)"
    ).format(
        cols=sql.SQL(", ").join(selected),
        where=in_window,
        order=sql.SQL(", ").join(map(sql.Identifier, _row_order(contract))),
    )
    buffer = io.BytesIO()
    with conn.cursor().copy(query) as copy:
        for chunk in copy:
            buffer.write(chunk)
    table = pacsv.read_csv(
        io.BytesIO(buffer.getvalue()),
        convert_options=pacsv.ConvertOptions(
            column_types=contract.arrow_schema(columns),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    frame = _to_frame(table, contract)
    ingest_ids = [
        row[0]
        for row in conn.execute(
            sql.SQL("SELECT DISTINCT _ingest_id FROM price_data.processed_features WHERE {} ORDER BY 1").format(
                in_window
            )
        )
    ]
    lineage: dict[str, Any] = {
        "source": "postgres",
        "table": "price_data.model_features",
        "ingest_ids": ingest_ids,
        "files": _ledger(conn, ingest_ids),
    }
    return TrainingData(frame, window, "postgres", {**lineage, **_coverage(frame, contract)})


def _ledger(conn: psycopg.Connection[Any], ingest_ids: list[int]) -> list[dict[str, Any]]:
    if not ingest_ids:
        return []
    rows = conn.execute(
        "SELECT id, run_id, source_bucket, source_key, source_etag, rows_loaded, finished_at"
        " FROM price_data.ingestion_ledger WHERE id = ANY(%s) ORDER BY id",
        (ingest_ids,),
    ).fetchall()
    return [
        {
            "ingest_id": r[0],
            "run_id": r[1],
            "source": f"s3://{r[2]}/{r[3]}",
            "etag": r[4],
            "rows_loaded": r[5],
            "loaded_at": r[6].isoformat(),
        }
        for r in rows
    ]


# -- the Parquet lake --------------------------------------------------------------------------------


def _lake_base(contract: Contract, lake_prefix: str) -> str:
    return f"{lake_prefix}dataset={contract.name}/{contract.lake_partition}="


_PARTITION = re.compile(r"=(\d{4}-\d{2}-\d{2})/")


def _lake_objects(s3: S3Client, bucket: str, base: str) -> Iterable[tuple[dt.date, dict[str, Any]]]:
    from pricepipe import storage

    for ref in storage.list_objects(s3, bucket, base):
        match = _PARTITION.search(ref.key, len(base) - 1)
        if match and ref.key.endswith(".parquet"):
            yield dt.date.fromisoformat(match.group(1)), {"key": ref.key, "etag": ref.etag, "size": ref.size}


def latest_event_date_lake(s3: S3Client, bucket: str, lake_prefix: str, contract: Contract) -> dt.date | None:
    """The most recent date partition in the lake (event or load date; None when there is none)."""
    days = [day for day, _ in _lake_objects(s3, bucket, _lake_base(contract, lake_prefix))]
    return max(days) if days else None


def load_lake(s3: S3Client, bucket: str, lake_prefix: str, contract: Contract, window: TrainingWindow) -> TrainingData:
    """The window's rows from the lake's date partitions (``.../<event_time>=YYYY-MM-DD/``, or
    ``.../_load_date=YYYY-MM-DD/`` without an event time: :attr:`Contract.lake_partition`).

    Objects are read with the S3 client given (not a filesystem layer), so moto, LocalStack and AWS
    all work through the SDK's endpoint variables.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pricepipe import storage

    schema = contract.arrow_schema(contract.feature_table_columns)
    wanted = sorted(
        (
            item
            for day, item in _lake_objects(s3, bucket, _lake_base(contract, lake_prefix))
            if window.start <= day <= window.end
        ),
        key=lambda item: str(item["key"]),
    )
    tables = []
    for item in wanted:
        data = storage.read_object(s3, storage.ObjectRef(bucket, item["key"], item["etag"], item["size"]))
        tables.append(pq.read_table(io.BytesIO(data), schema=schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    frame = _to_frame(table, contract)
    frame = frame.sort_values(list(_row_order(contract)), kind="stable").reset_index(drop=True)
    lineage = {"source": "lake", "bucket": bucket, "objects": wanted}
    return TrainingData(frame, window, "lake", {**lineage, **_coverage(frame, contract)})


# -- shared ----------------------------------------------------------------------------------------


def _to_frame(table: pa.Table, contract: Contract) -> pd.DataFrame:
    frame = table.to_pandas(date_as_object=False)
    return frame[list(contract.feature_table_columns)]


def _coverage(frame: pd.DataFrame, contract: Contract) -> dict[str, Any]:
    if contract.event_time is None:  # rows carry no date: the lineage's files say when they came
        return {"rows": len(frame), "days_with_data": None, "first_event": None, "last_event": None}
    dates = frame[contract.event_time].dt.date if len(frame) else pd.Series([], dtype=object)
    return {
        "rows": len(frame),
        "days_with_data": int(dates.nunique()),
        "first_event": dates.min().isoformat() if len(frame) else None,
        "last_event": dates.max().isoformat() if len(frame) else None,
    }


def event_dates(frame: pd.DataFrame, contract: Contract) -> pd.Series:
    """Each row's event date (midnight timestamps, so comparisons with dates are cheap)."""
    if contract.event_time is None:
        raise ConfigurationError(f"contract {contract.name!r} has no event_time: its rows have no event dates")
    moments = pd.to_datetime(frame[contract.event_time])
    if getattr(moments.dt, "tz", None) is not None:
        moments = moments.dt.tz_convert("UTC").dt.tz_localize(None)
    return moments.dt.normalize()


def key_buckets(frame: pd.DataFrame, contract: Contract, seed: int) -> np.ndarray:
    """Each row's place in [0, 1), from its key alone: the first 8 bytes of the BLAKE2b digest of the
    key's text (values joined with ``|``, dates in ISO form), keyed by the seed, over 2**64.

    A standard digest rather than Python's or pandas' hashing: the same row lands in the same place
    in the training job, in the Lambda steps that score a holdout, and in any later version.
    """
    texts = _key_texts(frame, contract)
    base = hashlib.blake2b(key=str(seed).encode(), digest_size=8)
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        digest = base.copy()
        digest.update(text.encode())
        out[i] = int.from_bytes(digest.digest(), "big")
    return out / 2.0**64


def _key_texts(frame: pd.DataFrame, contract: Contract) -> list[str]:
    parts = []
    for name in contract.key:
        column = frame[name]
        if contract.columns[name].type == "date":
            parts.append(pd.to_datetime(column).dt.strftime("%Y-%m-%d"))
        elif contract.columns[name].type == "datetime":
            parts.append(pd.to_datetime(column, utc=True).map(lambda moment: moment.isoformat()))
        else:
            parts.append(column.astype(str))
    if len(parts) == 1:
        return list(parts[0])
    return ["|".join(values) for values in zip(*parts, strict=True)]


def check_fractions(holdout: float, validation: float) -> None:
    """Refuse key-hash fractions that cannot leave rows in every part."""
    for name, value in (("holdout_fraction", holdout), ("validation_fraction", validation)):
        if not 0 < value < 1:
            raise TrainingDataError(f"{name} must be between 0 and 1 (both excluded), got {value}")
    if holdout + validation >= 1:
        raise TrainingDataError(
            f"holdout_fraction {holdout} plus validation_fraction {validation} is {holdout + validation:g}:"
            " nothing would be left to fit on; their sum must be below 1"
        )


def in_holdout(frame: pd.DataFrame, contract: Contract, *, fraction: float, seed: int) -> np.ndarray:
    """Mask of the rows a contract without an event time holds out (key-hash bucket below ``fraction``).

    Only for such contracts: with an event time the holdout is the most recent days, a window."""
    if contract.event_time is not None:
        raise ValueError(f"contract {contract.name!r} has an event time: its holdout is its most recent days")
    return key_buckets(frame, contract, seed) < fraction


@dataclass(frozen=True)
class Split:
    """A window's rows in three parts: the search fits on ``fit`` and scores on ``validation``; the
    chosen settings are refit on ``train`` (fit and validation) and scored once on ``holdout``."""

    train: pd.DataFrame
    fit: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    rule: str  # "time": most recent days | "key_hash": seeded hash of the key
    holdout_is: str  # what the holdout is, for messages
    validation_is: str


def split(
    frame: pd.DataFrame,
    contract: Contract,
    *,
    holdout_days: int,
    holdout_fraction: float,
    seed: int,
    validation_days: int | None = None,
    validation_fraction: float | None = None,
) -> Split:
    """Fit, validation and holdout rows of a window: the one split rule (see the module docstring).

    With an event time: the last ``holdout_days`` calendar days are held out and the
    ``validation_days`` before them validate (None: as many as the holdout). Without one: rows whose
    key-hash bucket (:func:`key_buckets`, salted by ``seed``) is below ``holdout_fraction`` are held
    out, the next ``validation_fraction`` of buckets validate (None: as large as the holdout); the
    fractions are of all the window's rows.
    """
    if contract.event_time is not None:
        days = validation_days or holdout_days
        train, holdout = time_split(frame, contract, days=holdout_days)
        fit, validation = time_split(train, contract, days=days) if len(train) else (train, train)
        return Split(
            train,
            fit,
            validation,
            holdout,
            "time",
            f"the holdout (last {holdout_days} days)",
            f"the validation days (last {days} before the holdout)",
        )
    share = validation_fraction or holdout_fraction
    check_fractions(holdout_fraction, share)
    if frame.empty:
        raise TrainingDataError("no rows to split")
    buckets = key_buckets(frame, contract, seed)
    held = buckets < holdout_fraction
    validating = ~held & (buckets < holdout_fraction + share)
    return Split(
        frame[~held].reset_index(drop=True),
        frame[~held & ~validating].reset_index(drop=True),
        frame[validating].reset_index(drop=True),
        frame[held].reset_index(drop=True),
        "key_hash",
        f"the holdout ({holdout_fraction:.0%} of keys by seeded hash, seed {seed})",
        f"the validation rows (the next {share:.0%} of keys)",
    )


def covered_dates(frame: pd.DataFrame, contract: Contract, window: TrainingWindow) -> tuple[str | None, str | None]:
    """The first and last date ``frame``'s rows cover, ISO (None when it is empty): their event
    dates, or without an event time the window's (load dates; rows carry none of their own)."""
    if frame.empty:
        return None, None
    if contract.event_time is None:
        return window.start.isoformat(), window.end.isoformat()
    dates = event_dates(frame, contract)
    return dates.min().date().isoformat(), dates.max().date().isoformat()


def time_split(
    frame: pd.DataFrame, contract: Contract, *, days: int | None = None, fraction: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (past, most recent): the last ``days`` calendar days, or about the last ``fraction``
    of rows cut at a day boundary, so one day never lands on both sides."""
    if (days is None) == (fraction is None):
        raise ValueError("give exactly one of days or fraction")
    if frame.empty:
        raise TrainingDataError("no rows to split")
    dates = event_dates(frame, contract)
    if days is not None:
        if days < 1:
            raise TrainingDataError(f"a holdout needs at least one day, got {days}")
        cutoff = dates.max() - pd.Timedelta(days=days - 1)
    else:
        assert fraction is not None
        if not 0 < fraction < 1:
            raise TrainingDataError(f"a holdout fraction must be between 0 and 1, got {fraction}")
        ordered = np.sort(dates.to_numpy())
        cutoff = pd.Timestamp(ordered[min(len(ordered) - 1, int(len(ordered) * (1 - fraction)))])
    recent = (dates >= cutoff).to_numpy()
    return frame[~recent].reset_index(drop=True), frame[recent].reset_index(drop=True)


def frame_columns(frame: pd.DataFrame, encoding: FeatureEncoding) -> dict[str, Any]:
    """The frame's feature columns as plain arrays for :mod:`pricepipe.lean_model` (NaN / None missing)."""
    out: dict[str, Any] = {}
    for name in encoding.features:
        if name not in frame.columns:
            raise TrainingDataError(f"the frame lacks feature {name!r}")
        column = frame[name]
        if encoding.is_categorical(name):
            out[name] = column.astype(object).where(column.notna(), None).to_numpy()
        else:
            out[name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def fit_encoding(frame: pd.DataFrame, contract: Contract, max_categories: int = MAX_CATEGORIES) -> FeatureEncoding:
    """The feature encoding learnt from training rows: each categorical feature's categories, most
    frequent first (ties by value), capped at ``max_categories`` — rarer ones are read as missing."""
    categories: dict[str, list[Any]] = {}
    for name in contract.categorical_features:
        counts = frame[name].dropna().astype(object).value_counts(sort=False)
        ranked = sorted(counts.items(), key=lambda item: (-int(item[1]), str(item[0])))
        categories[name] = [_plain(value) for value, _ in ranked[:max_categories]]
    return FeatureEncoding(contract.feature_columns, categories)


def _plain(value: Any) -> Any:
    """A JSON-ready Python scalar (numpy bools and strings become bool and str)."""
    return value.item() if isinstance(value, np.generic) else value


def encode(frame: pd.DataFrame, encoding: FeatureEncoding) -> np.ndarray:
    """The float matrix the trees train on, by the same encoding the serving artifact applies."""
    return encoding.encode_columns(frame_columns(frame, encoding), len(frame))
