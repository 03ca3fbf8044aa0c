"""Writing the prediction log into ``monitoring.predictions``.

Why predictions travel through the API's log rather than a database write per request: the API then
holds no database connection and makes no network call on the request path (an RDS connection per
Lambda container would also exhaust RDS at scale, and a failed or slow database would fail or slow
predictions); a log line costs ~50 µs and nothing else. CloudWatch Logs batches the lines of many
requests into one delivery to the prediction-writer function (a subscription filter on the
``prediction_log`` message), and retries a failed delivery; the writer inserts a whole delivery in
one transaction over one connection per container, and a unique index on (request id, record key,
predicted at) makes a redelivery add nothing. The record key lets actual prices be joined later (performance
monitoring): ``UPDATE monitoring.predictions SET actual = ... WHERE record_key = ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from pricepipe import partitions

if TYPE_CHECKING:
    import psycopg

    from pricepipe.serving.prediction_log import PredictionRecord

_COLUMNS = "request_id, record_key, model_name, model_version, function_version, features, prediction, predicted_at"
# A delivery's rows are COPied into a session's temporary table, then moved in one INSERT ... SELECT
# whose ON CONFLICT makes a redelivered row a no-op. COPY because it is the fast way in: the rows
# as arrays in one INSERT (unnest) ran at ~2,400 rows/s here, bound by the client encoding eight
# 10,000-element arrays, against ~11,000 for COPY + INSERT (benchmarks/bench_writer.py). Emptied
# at every commit; rows leave it in the order they were copied, so of a key repeated within one
# request the first row is kept.
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS prediction_log_stage (request_id text, record_key text, model_name text,"
    " model_version text, function_version text, features text, prediction float8, predicted_at timestamptz)"
    " ON COMMIT DELETE ROWS"
)
_COPY = f"COPY prediction_log_stage ({_COLUMNS}) FROM STDIN"
# (request_id, record_key, predicted_at): the partition key must be in a partitioned table's unique
# index (migration 0005 says why this still means one row per request and key).
_INSERT = (
    f"INSERT INTO monitoring.predictions ({_COLUMNS})"
    " SELECT request_id, record_key, model_name, model_version, function_version, features::jsonb, prediction,"
    " predicted_at FROM prediction_log_stage"
    " ON CONFLICT (request_id, record_key, predicted_at) DO NOTHING"
)


def insert_predictions(conn: psycopg.Connection[Any], records: Sequence[PredictionRecord]) -> int:
    """Insert ``records`` (one transaction); returns how many rows were new.

    The months the rows fall in get their partitions first (a no-op but for a month's first rows).
    """
    if not records:
        return 0
    moments = {r.predicted_at for r in records}
    partitions.ensure_months(conn, partitions.PREDICTIONS, {partitions.PREDICTIONS.month_of(t) for t in moments})
    with conn.transaction():
        conn.execute(_STAGE)
        with conn.cursor().copy(_COPY) as copy:
            write = copy.write_row
            dumps = orjson.dumps
            for request_id, key, name, version, function_version, features, prediction, at in records:
                write(
                    (
                        request_id,
                        key,
                        name,
                        version,
                        function_version,
                        dumps(features, default=str).decode(),
                        prediction,
                        at,
                    )
                )
        return conn.execute(_INSERT).rowcount
