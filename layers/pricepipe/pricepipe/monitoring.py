"""Writing the prediction log into ``monitoring.predictions``.

Why predictions travel through the API's log rather than a database write per request: the API then
holds no database connection and makes no network call on the request path (an RDS connection per
Lambda container would also exhaust RDS at scale, and a failed or slow database would fail or slow
predictions); a log line costs ~50 µs and nothing else. CloudWatch Logs batches the lines of many
requests into one delivery to the prediction-writer function (a subscription filter on the
``prediction_log`` message), and retries a failed delivery; the writer loads a whole delivery in
one transaction over one connection per container, leaving out rows already stored, and a unique
index on (request id, record key, predicted at) backs that up. The record key lets actual prices be
joined later (performance monitoring): ``UPDATE monitoring.predictions SET actual = ... WHERE record_key = ...``.
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
# A delivery is one COPY straight into the table, of the rows not stored yet: the fast way in. The
# rows as arrays in one INSERT ... ON CONFLICT (unnest) ran at ~2,400 rows/s here, bound by the
# client encoding eight 10,000-element arrays; COPY into a temporary table and INSERT ... ON
# CONFLICT from it at ~40% of a bare COPY (benchmarks/bench_writer.py).
_COPY = f"COPY monitoring.predictions ({_COLUMNS}) FROM STDIN"
# What of a delivery is stored already (a redelivery): by the unique index, whose first column is
# the request id, so one index probe per request.
_STORED = "SELECT request_id, record_key, predicted_at FROM monitoring.predictions WHERE request_id = ANY(%s)"


def insert_predictions(conn: psycopg.Connection[Any], records: Sequence[PredictionRecord]) -> int:
    """Insert the rows of ``records`` not stored yet (one transaction); returns how many were new.

    A row is identified by (request id, record key, predicted at), the unique index's columns: of a
    key repeated within one request the first row is kept, and a redelivered row is left out. Two
    writers loading the same rows at the same moment (a redelivery racing the first delivery) make
    the later COPY fail on the unique index; its delivery fails and Lambda's retry finds the rows
    stored. The months the rows fall in get their partitions first (a no-op but for a month's first
    rows).
    """
    if not records:
        return 0
    moments = {r.predicted_at for r in records}
    partitions.ensure_months(conn, partitions.PREDICTIONS, {partitions.PREDICTIONS.month_of(t) for t in moments})
    with conn.transaction():
        seen = set(conn.execute(_STORED, (list({r.request_id for r in records}),)).fetchall())
        new = 0
        with conn.cursor().copy(_COPY) as copy:
            write, dumps = copy.write_row, orjson.dumps
            for request_id, key, name, version, function_version, features, prediction, at in records:
                identity = (request_id, key, at)
                if identity in seen:
                    continue
                seen.add(identity)
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
                new += 1
        return new
