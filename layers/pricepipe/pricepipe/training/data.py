"""The training frame: a time window of processed features, from PostgreSQL or from the Parquet lake.

Both sources give the same frame (the columns of ``price_data.processed_features`` in contract order,
sorted by event time and key) plus the data's lineage: which ETL loads or lake objects it came from.
Validation is time-ordered: :func:`time_split` holds out the most recent days.
"""

from __future__ import annotations

import datetime as dt
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
    """Event dates to train on, both ends included."""

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


def _require_event_time(contract: Contract) -> str:
    if contract.event_time is None:
        raise ConfigurationError(
            f"contract {contract.name!r} has no event_time: training validates on the most recent data and needs one"
        )
    return contract.event_time


# -- PostgreSQL ------------------------------------------------------------------------------------


def latest_event_date_postgres(conn: psycopg.Connection[Any], contract: Contract) -> dt.date | None:
    """The most recent event date in ``price_data.processed_features`` (None when it is empty)."""
    from psycopg import sql

    column = _require_event_time(contract)
    row = conn.execute(
        sql.SQL("SELECT max({})::date FROM price_data.processed_features").format(sql.Identifier(column))
    ).fetchone()
    return row[0] if row else None


def load_postgres(conn: psycopg.Connection[Any], contract: Contract, window: TrainingWindow) -> TrainingData:
    """The window's model-ready rows (the view ``price_data.model_features``), with the ETL loads
    that wrote them.

    Rows leave the server as CSV through COPY and are parsed by Arrow with the contract's types: an
    order of magnitude faster than fetching tuples, and the same Arrow schema the lake is read with.
    """
    import pyarrow.csv as pacsv
    from psycopg import sql

    column = _require_event_time(contract)
    columns = contract.feature_table_columns
    selected = [
        sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").format(sql.Identifier(name))
        if pg_type == "TIMESTAMPTZ"
        else sql.Identifier(name)
        for name, pg_type in columns.items()
    ]
    in_window = sql.SQL("{t} >= {lo} AND {t} < {hi}").format(
        t=sql.Identifier(column),
        lo=sql.Literal(window.start),
        hi=sql.Literal(window.end + dt.timedelta(days=1)),
    )
    query = sql.SQL(
        "COPY (SELECT {cols} FROM price_data.model_features WHERE {where} ORDER BY {order})"
        " TO STDOUT WITH (FORMAT csv, HEADER true)"
    ).format(
        cols=sql.SQL(", ").join(selected),
        where=in_window,
        order=sql.SQL(", ").join(map(sql.Identifier, (column, *contract.key))),
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
    return TrainingData(frame, window, "postgres", {**lineage, **_coverage(frame, column)})


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
    return f"{lake_prefix}dataset={contract.name}/{_require_event_time(contract)}="


_PARTITION = re.compile(r"=(\d{4}-\d{2}-\d{2})/")


def _lake_objects(s3: S3Client, bucket: str, base: str) -> Iterable[tuple[dt.date, dict[str, Any]]]:
    from pricepipe import storage

    for ref in storage.list_objects(s3, bucket, base):
        match = _PARTITION.search(ref.key, len(base) - 1)
        if match and ref.key.endswith(".parquet"):
            yield dt.date.fromisoformat(match.group(1)), {"key": ref.key, "etag": ref.etag, "size": ref.size}


def latest_event_date_lake(s3: S3Client, bucket: str, lake_prefix: str, contract: Contract) -> dt.date | None:
    """The most recent event-date partition in the lake (None when there is none)."""
    days = [day for day, _ in _lake_objects(s3, bucket, _lake_base(contract, lake_prefix))]
    return max(days) if days else None


def load_lake(s3: S3Client, bucket: str, lake_prefix: str, contract: Contract, window: TrainingWindow) -> TrainingData:
    """The window's rows from the lake's event-date partitions (``.../<event_time>=YYYY-MM-DD/``).

    Objects are read with the S3 client given (not a filesystem layer), so moto, LocalStack and AWS
    all work through the SDK's endpoint variables.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pricepipe import storage

    column = _require_event_time(contract)
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
    frame = frame.sort_values([column, *contract.key], kind="stable").reset_index(drop=True)
    lineage = {"source": "lake", "bucket": bucket, "objects": wanted}
    return TrainingData(frame, window, "lake", {**lineage, **_coverage(frame, column)})


# -- shared ----------------------------------------------------------------------------------------


def _to_frame(table: pa.Table, contract: Contract) -> pd.DataFrame:
    frame = table.to_pandas(date_as_object=False)
    return frame[list(contract.feature_table_columns)]


def _coverage(frame: pd.DataFrame, column: str) -> dict[str, Any]:
    dates = frame[column].dt.date if len(frame) else pd.Series([], dtype=object)
    return {
        "rows": len(frame),
        "days_with_data": int(dates.nunique()),
        "first_event": dates.min().isoformat() if len(frame) else None,
        "last_event": dates.max().isoformat() if len(frame) else None,
    }


def event_dates(frame: pd.DataFrame, contract: Contract) -> pd.Series:
    """Each row's event date (midnight timestamps, so comparisons with dates are cheap)."""
    moments = pd.to_datetime(frame[_require_event_time(contract)])
    if getattr(moments.dt, "tz", None) is not None:
        moments = moments.dt.tz_convert("UTC").dt.tz_localize(None)
    return moments.dt.normalize()


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
