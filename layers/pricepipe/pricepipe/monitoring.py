"""Writing the prediction log into ``monitoring.predictions``.

Why predictions travel through the API's log rather than a database write per request: the API then
holds no database connection and makes no network call on the request path (an RDS connection per
Lambda container would also exhaust RDS at scale, and a failed or slow database would fail or slow
predictions); a log line costs ~50 µs and nothing else. CloudWatch Logs batches the lines of many
requests into one delivery to the prediction-writer function (a subscription filter on the
``prediction_log`` message), and retries a failed delivery; the writer inserts a whole delivery in
one statement over one connection per container, and a unique index on (request id, record key)
makes a redelivery add nothing. The record key lets actual prices be joined later (performance
monitoring): ``UPDATE monitoring.predictions SET actual = ... WHERE record_key = ...``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from pricepipe.serving.prediction_log import PredictionRecord

# One statement per delivery: the rows go in as arrays (unnest), so a delivery of thousands of rows
# is one round trip, and ON CONFLICT makes a redelivered one a no-op.
_INSERT = """
INSERT INTO monitoring.predictions
    (request_id, record_key, model_name, model_version, function_version, features, prediction, predicted_at)
SELECT r, k, mn, mv, fv, f::jsonb, p, t
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::timestamptz[])
    AS rows (r, k, mn, mv, fv, f, p, t)
ON CONFLICT (request_id, record_key) DO NOTHING
"""


def insert_predictions(conn: psycopg.Connection[Any], records: Sequence[PredictionRecord]) -> int:
    """Insert ``records`` (one statement, one transaction); returns how many rows were new."""
    if not records:
        return 0
    columns: list[list[Any]] = [[] for _ in range(8)]
    for r in records:
        for column, value in zip(
            columns,
            (
                r.request_id,
                r.record_key,
                r.model_name,
                r.model_version,
                r.function_version,
                json.dumps(r.features, default=str),
                r.prediction,
                r.predicted_at,
            ),
            strict=True,
        ):
            column.append(value)
    with conn.transaction():
        cursor = conn.execute(_INSERT, columns)
        return cursor.rowcount
