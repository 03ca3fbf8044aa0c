"""Prediction writer throughput: CloudWatch Logs subscription deliveries -> monitoring.predictions.

The API's prediction lines are written as the API writes them (pricepipe.serving.prediction_log's
LineWriter over the Powertools logger, hotel_rates rows and their model features), wrapped in
CloudWatch Logs log events, and batched into subscription deliveries as AWS delivers them to a
function (JSON, gzip, base64 under ``awslogs.data``), each at most ``--delivery-kb`` of event.
The real handler (functions/prediction_writer/handler.py) loads them into a real PostgreSQL
(the partitioned table of migration 0005) through its own connection.

Beside it, in the same run and on the same database: a bare COPY of the same rows (already parsed,
as tuples) into an unpartitioned table shaped like monitoring.predictions with its indexes, the
cost of writing those rows once; the handler's parse step alone; and a redelivery of every batch
(all duplicates, which must add nothing).

    python -m benchmarks.bench_writer [--rows 200000] [--rows-per-request 100] [--repeat 3]

PostgreSQL comes from TEST_DATABASE_URL, else 127.0.0.1:5432, else an embedded server.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import io
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.bench_etl import drop_database, fresh_database
from benchmarks.common import admin_url, print_table, write_result

GOAL_ROWS_PER_S = 50_000
HANDLER = Path(__file__).resolve().parents[1] / "functions" / "prediction_writer" / "handler.py"
START_MS = 1_785_000_000_000  # 2026-07-25: the deliveries span two months, so two partitions


class Context:
    function_name = "pricepipe-prediction-writer"
    function_version = "1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:pricepipe-prediction-writer"
    memory_limit_in_mb = 256
    aws_request_id = "bench"
    log_group_name = "/aws/lambda/pricepipe-prediction-writer"
    log_stream_name = "bench"


def api_lines(rows: int, per_request: int) -> list[str]:
    """Prediction log lines of ``rows`` rows in requests of ``per_request`` rows, as the API writes them."""
    import numpy as np

    from pipectl.datasource import hotel_rates
    from pricepipe.contract import load_contract
    from pricepipe.observability import logger
    from pricepipe.serving.columns import feature_columns
    from pricepipe.serving.prediction_log import LineWriter, log_lines, log_serializer, record_key

    contract = load_contract("hotel_rates")
    frame = hotel_rates().sample(n=rows, replace=True, random_state=7).reset_index(drop=True)
    frame[contract.key[0]] = np.arange(1, rows + 1)
    if contract.event_time:  # as the API's validation gives them: dates, logged in ISO form
        frame[contract.event_time] = [dt.date.fromisoformat(str(d)[:10]) for d in frame[contract.event_time]]
    buffer = io.StringIO()
    formatter = logger.registered_formatter
    saved = formatter.json_serializer  # type: ignore[attr-defined]
    previous = logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    formatter.json_serializer = log_serializer  # type: ignore[attr-defined]  # as functions/api/app.py sets it
    writer = LineWriter(logger)
    try:
        for start in range(0, rows, per_request):
            chunk = frame.iloc[start : start + per_request]
            columns = {name: chunk[name].tolist() for name in contract.input_columns}
            features = feature_columns(columns, contract)
            if contract.event_time:
                features = {**features, contract.event_time: columns[contract.event_time]}
            keys = [record_key([row]) for row in chunk[contract.key[0]].tolist()]
            writer.write(
                log_lines(
                    request_id=uuid.uuid4().hex,
                    model_name="price-model",
                    model_version="7",
                    function_version="3",
                    predicted_at_ms=START_MS + start * 30_000,  # ~100 requests a minute of batches
                    keys=keys,
                    predictions=(chunk[contract.target].to_numpy() * 1.01),
                    features=features,
                    size_hint=len(str(columns)),
                    as_lists=False,
                )
            )
    finally:
        logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
        formatter.json_serializer = saved  # type: ignore[attr-defined]
    return buffer.getvalue().splitlines()


def deliveries(lines: list[str], max_kb: int) -> list[dict[str, Any]]:
    """Subscription deliveries of the lines, each as large as fits in ``max_kb`` of event."""
    from pricepipe.serving.prediction_log import subscription_event

    events = [
        {"id": str(36_000_000_000_000_000_000_000_000 + i), "timestamp": START_MS + i, "message": m}
        for i, m in enumerate(lines)
    ]

    def build(batch: list[dict[str, Any]]) -> dict[str, Any]:
        return subscription_event(batch, log_group="/aws/lambda/pricepipe-api", log_stream="2026/07/25/[3]bench")

    per, limit = len(events), max_kb * 1024
    while per > 1 and len(build(events[:per])["awslogs"]["data"]) > limit:
        per = max(1, int(per * 0.9 * limit / len(build(events[:per])["awslogs"]["data"])))
    return [build(events[i : i + per]) for i in range(0, len(events), per)]


def load_handler(url: str) -> Any:
    os.environ["DATABASE_URL"] = url
    os.environ.pop("PRICEPIPE_DATABASE_SECRET_ARN", None)
    from pricepipe.settings import get_settings

    get_settings.cache_clear()
    spec = importlib.util.spec_from_file_location("bench_prediction_writer", HANDLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_deliveries(module: Any, events: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds to hand every delivery to the handler, and the rows it inserted."""
    from pricepipe.observability import logger

    inserted = 0
    previous = logger.registered_handler.setStream(io.StringIO())  # type: ignore[attr-defined]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the handler's EMF metrics
            started = time.perf_counter()
            for event in events:
                inserted += module.handler(event, Context())["inserted"]
            elapsed = time.perf_counter() - started
    finally:
        logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
    return elapsed, inserted


def bare_copy(conn: Any, records: list[Any]) -> float:
    """COPY the parsed rows, features encoded by orjson as the writer does: writing them once."""
    import orjson

    started = time.perf_counter()
    with (
        conn.transaction(),
        conn.cursor().copy(
            "COPY bench_bare (request_id, record_key, model_name, model_version, function_version, features,"
            " prediction, predicted_at) FROM STDIN"
        ) as copy,
    ):
        for r in records:
            copy.write_row(
                (
                    r.request_id,
                    r.record_key,
                    r.model_name,
                    r.model_version,
                    r.function_version,
                    orjson.dumps(r.features, default=str).decode(),
                    r.prediction,
                    r.predicted_at,
                )
            )
    return time.perf_counter() - started


def run(rows: int, per_request: int, repeat: int, delivery_kb: int) -> dict[str, Any]:
    from pricepipe import db
    from pricepipe.serving.prediction_log import parse_subscription_event

    lines = api_lines(rows, per_request)
    events = deliveries(lines, delivery_kb)
    started = time.perf_counter()
    records = [r for event in events for r in parse_subscription_event(event).records]
    parse_s = time.perf_counter() - started
    assert len(records) == rows, f"{len(records)} rows parsed of {rows}"
    admin = admin_url()
    url = fresh_database(admin)
    handler_s: list[float] = []
    copy_s: list[float] = []
    redelivery_s: list[float] = []
    try:
        with db.connect(url, autocommit=True) as conn:
            db.migrate(conn)
            conn.execute(
                "CREATE TABLE bench_bare (LIKE monitoring.predictions INCLUDING DEFAULTS);"
                " ALTER TABLE bench_bare ADD PRIMARY KEY (id);"
                " CREATE UNIQUE INDEX ON bench_bare (request_id, record_key);"
                " CREATE INDEX ON bench_bare (record_key); CREATE INDEX ON bench_bare (predicted_at)"
            )
            module = load_handler(url)
            for attempt in range(repeat):
                conn.execute("TRUNCATE monitoring.predictions, bench_bare")
                conn.execute("CHECKPOINT")
                elapsed, inserted = timed_deliveries(module, events)
                assert inserted == rows, f"the handler inserted {inserted} of {rows}"
                handler_s.append(elapsed)
                elapsed, again = timed_deliveries(module, events)
                assert again == 0, "a redelivery added rows"
                redelivery_s.append(elapsed)
                conn.execute("CHECKPOINT")
                copy_s.append(bare_copy(conn, records))
                print(
                    f"  run {attempt + 1}: handler {handler_s[-1]:.2f} s, redelivery {redelivery_s[-1]:.2f} s,"
                    f" bare COPY {copy_s[-1]:.2f} s",
                    flush=True,
                )
            stored = conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM monitoring.predictions GROUP BY 1 ORDER BY 1"
            ).fetchall()
            module.database.close()
    finally:
        drop_database(admin, url)
    handler_median, copy_median, again_median = (statistics.median(x) for x in (handler_s, copy_s, redelivery_s))
    return {
        "rows": rows,
        "rows_per_request": per_request,
        "lines": len(lines),
        "deliveries": len(events),
        "delivery_kb_max": delivery_kb,
        "rows_per_delivery": round(rows / len(events)),
        "partitions": dict(stored),
        "handler_seconds": handler_s,
        "bare_copy_seconds": copy_s,
        "redelivery_seconds": redelivery_s,
        "parse_seconds": round(parse_s, 3),
        "handler_rows_per_s": round(rows / handler_median),
        "redelivery_rows_per_s": round(rows / again_median),
        "parse_rows_per_s": round(rows / parse_s),
        "bare_copy_rows_per_s": round(rows / copy_median),
        "handler_over_bare_copy": round(handler_median / copy_median, 2),
        "goal_rows_per_s": GOAL_ROWS_PER_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rows-per-request", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delivery-kb", type=int, default=256, help="largest delivery (base64 of gzip), KB")
    args = parser.parse_args()
    print(
        f"Prediction writer benchmark: {args.rows:,} rows in {args.rows_per_request}-row requests,"
        f" {args.repeat} runs (medians below)",
        flush=True,
    )
    result = run(args.rows, args.rows_per_request, args.repeat, args.delivery_kb)
    print_table(
        f"Prediction writer: {result['deliveries']} subscription deliveries"
        f" (~{result['rows_per_delivery']:,} rows each) -> monitoring.predictions",
        [
            (
                "the real handler (decode, parse, dedupe, COPY)",
                f"{result['handler_rows_per_s']:,} rows/s",
                f"goal {GOAL_ROWS_PER_S:,} rows/s",
            ),
            ("the same deliveries again (all duplicates)", f"{result['redelivery_rows_per_s']:,} rows/s", ""),
            ("its parse step alone (no database)", f"{result['parse_rows_per_s']:,} rows/s", ""),
            (
                "bare COPY of the same parsed rows, unpartitioned",
                f"{result['bare_copy_rows_per_s']:,} rows/s",
                "reference",
            ),
            ("ratio handler / bare COPY (time)", f"{result['handler_over_bare_copy']:.2f}x", ""),
        ],
    )
    print(f"rows by partition: {result['partitions']}")
    write_result("writer", result)


if __name__ == "__main__":
    main()
