"""The prediction-writer: CloudWatch Logs deliveries of the API's log → rows of monitoring.predictions.

Deliveries are built as CloudWatch Logs builds them (JSON with logEvents, gzipped, base64 under
``awslogs.data``); the prediction lines in them are written by the Powertools logger exactly as the
API writes them; the rows land in a real PostgreSQL database.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import psycopg
import pytest

from infrastructure import catalog
from pricepipe.observability import logger
from pricepipe.serving.prediction_log import LineWriter, emit, log_lines, log_serializer
from tests.integration.aws_lambda import fresh_handler

HANDLER = Path(__file__).resolve().parents[2] / "functions" / "prediction_writer" / "handler.py"
PREDICTED_AT_MS = 1_785_000_000_000
FIRST_EVENT_ID = 36_000_000_000_000_000_000_000_000  # CloudWatch's event ids are long decimal strings


class LambdaContext:
    function_name = "pricepipe-prediction-writer"
    function_version = "1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:pricepipe-prediction-writer"
    memory_limit_in_mb = 256
    aws_request_id = "writer-request-1"
    log_group_name = "/aws/lambda/pricepipe-prediction-writer"
    log_stream_name = "2026/11/26/[1]abc"


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    previous = logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]


@pytest.fixture
def writer(database_url: str, monkeypatch: pytest.MonkeyPatch, captured_log: io.StringIO) -> Iterator[ModuleType]:
    """The writer function as a fresh container imports it, pointed at this test's database."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("PRICEPIPE_DATABASE_SECRET_ARN", raising=False)
    with fresh_handler(HANDLER) as module:
        yield module


def api_lines(request_id: str, keys: list[str], model_version: str = "7") -> list[str]:
    """Prediction log lines exactly as the API writes them (Powertools JSON, one per line)."""
    buffer = io.StringIO()
    previous = logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    try:
        emit(
            logger,
            log_lines(
                request_id=request_id,
                model_name="price-model",
                model_version=model_version,
                function_version="3",
                predicted_at_ms=PREDICTED_AT_MS,
                keys=keys,
                predictions=[100.0 + i for i in range(len(keys))],
                features={
                    "lead_time": [10 * i for i in range(len(keys))],
                    "meal": ["bed_and_breakfast"] * len(keys),
                    "arrival_date": ["2017-08-01"] * len(keys),
                },
                size_hint=100,
            ),
        )
    finally:
        logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
    return buffer.getvalue().splitlines()


def writer_lines(request_id: str, keys: list[str], *, direct: bool) -> list[str]:
    """Lines as the API function writes them now: :class:`LineWriter`, columns as numpy arrays and
    tuples — straight to the handler's stream (``direct``, the function's own logger setup) or, with
    the formatter's default serializer, through ``logger.info``."""
    buffer = io.StringIO()
    formatter = logger.registered_formatter
    saved = formatter.json_serializer  # type: ignore[attr-defined]
    previous = logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    if direct:
        formatter.json_serializer = log_serializer  # type: ignore[attr-defined]
    try:
        writer = LineWriter(logger)
        assert (writer._target() is not None) is direct
        writer.write(
            log_lines(
                request_id=request_id,
                model_name="price-model",
                model_version="7",
                function_version="3",
                predicted_at_ms=PREDICTED_AT_MS,
                keys=keys,
                predictions=np.array([100.0 + i for i in range(len(keys))]),
                features={
                    "lead_time": np.array([10 * i for i in range(len(keys))]),
                    "meal": ("bed_and_breakfast",) * len(keys),
                    "arrival_date": ("2017-08-01",) * len(keys),
                },
                size_hint=100,
                as_lists=False,
            )
        )
    finally:
        logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
        formatter.json_serializer = saved  # type: ignore[attr-defined]
    return buffer.getvalue().splitlines()


def delivery(messages: list[str], message_type: str = "DATA_MESSAGE") -> dict[str, Any]:
    """A subscription delivery as CloudWatch Logs sends it to a Lambda function."""
    payload = {
        "messageType": message_type,
        "owner": "000000000000",
        "logGroup": "/aws/lambda/pricepipe-api",
        "logStream": "2026/11/26/[3]0123456789abcdef",
        "subscriptionFilters": ["pricepipe-prediction-log"],
        "logEvents": [
            {"id": str(FIRST_EVENT_ID + i), "timestamp": PREDICTED_AT_MS + i, "message": m}
            for i, m in enumerate(messages)
        ],
    }
    return {"awslogs": {"data": base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()}}


def rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT request_id, record_key, model_name, model_version, function_version, features, prediction,"
            " predicted_at FROM monitoring.predictions ORDER BY request_id, record_key"
        ).fetchall()


Invoke = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture
def invoke(writer: ModuleType) -> Invoke:
    return lambda event: writer.handler(event, LambdaContext())


def test_a_delivery_lands_its_predictions_in_monitoring_predictions(invoke: Invoke, database_url: str) -> None:
    event = delivery(api_lines("req-1", ["101", "102"]) + api_lines("req-2", ["103"], model_version="8"))

    result = invoke(event)

    assert result["inserted"] == 3 and result["lines"] == 2
    stored = rows(database_url)
    assert [(r[0], r[1], r[3], r[6]) for r in stored] == [
        ("req-1", "101", "7", 100.0),
        ("req-1", "102", "7", 101.0),
        ("req-2", "103", "8", 100.0),
    ]
    _, _, model_name, _, function_version, features, _, predicted_at = stored[1]
    assert (model_name, function_version) == ("price-model", "3")
    assert features == {"lead_time": 10, "meal": "bed_and_breakfast", "arrival_date": "2017-08-01"}
    assert predicted_at == dt.datetime.fromtimestamp(PREDICTED_AT_MS / 1000, tz=dt.UTC)


def test_lines_from_the_apis_line_writer_land_as_the_loggers_do(invoke: Invoke, database_url: str) -> None:
    event = delivery(
        writer_lines("req-1", ["101", "102"], direct=True) + writer_lines("req-2", ["101", "102"], direct=False)
    )

    result = invoke(event)

    assert result["inserted"] == 4 and result["lines"] == 2
    landed: dict[str, list[tuple[Any, ...]]] = {}
    for request_id, record_key, _, _, _, features, prediction, _ in rows(database_url):
        landed.setdefault(request_id, []).append((record_key, features, prediction))
    assert landed["req-1"] == landed["req-2"]
    assert landed["req-1"][1] == (
        "102",
        {"lead_time": 10, "meal": "bed_and_breakfast", "arrival_date": "2017-08-01"},
        101.0,
    )


def test_a_redelivered_batch_adds_nothing(invoke: Invoke, database_url: str) -> None:
    event = delivery(api_lines("req-1", ["101", "102"]))
    invoke(event)

    again = invoke(event)

    assert again["inserted"] == 0 and again["duplicates"] == 2
    assert len(rows(database_url)) == 2


def test_a_key_repeated_within_one_request_keeps_its_first_row(invoke: Invoke, database_url: str) -> None:
    """The API prices a batch that repeats a key; the store holds one row per request and key."""
    result = invoke(delivery(api_lines("req-1", ["101", "102", "101"])))

    assert result["inserted"] == 2 and result["duplicates"] == 1
    landed = {(key, prediction) for _, key, _, _, _, _, prediction, _ in rows(database_url)}
    assert landed == {("101", 100.0), ("102", 101.0)}


def test_lines_that_are_not_predictions_are_ignored(invoke: Invoke, database_url: str) -> None:
    others = [
        "START RequestId: 6f1c Version: 3",
        json.dumps({"level": "INFO", "message": "model loaded", "service": "pricepipe-api"}),
        json.dumps({"level": "INFO", "message": "about the prediction_log format", "service": "pricepipe-api"}),
        "END RequestId: 6f1c",
        "REPORT RequestId: 6f1c\tDuration: 1.21 ms\tBilled Duration: 2 ms\tMemory Size: 512 MB",
    ]

    result = invoke(delivery([*others, *api_lines("req-1", ["101"])]))

    assert (result["ignored"], result["inserted"], result["skipped"]) == (5, 1, 0)
    assert [r[1] for r in rows(database_url)] == ["101"]


def test_a_malformed_prediction_line_is_skipped_with_a_log_and_the_rest_still_load(
    invoke: Invoke, database_url: str, captured_log: io.StringIO
) -> None:
    good = api_lines("req-1", ["101", "102"])  # one line
    truncated = good[0][: len(good[0]) // 2]
    incomplete = json.dumps({"message": catalog.PREDICTION_LOG_MARKER, "log_version": 1, "request_id": "req-9"})

    result = invoke(delivery([truncated, *good, incomplete]))

    assert (result["inserted"], result["skipped"]) == (2, 2)
    assert [r[1] for r in rows(database_url)] == ["101", "102"]
    warnings = [json.loads(line) for line in captured_log.getvalue().splitlines() if "skipped" in line]
    assert {w["log_event_id"] for w in warnings if w["level"] == "WARNING"} == {
        str(FIRST_EVENT_ID),
        str(FIRST_EVENT_ID + 2),
    }


def test_cloudwatchs_control_message_writes_nothing(invoke: Invoke, database_url: str) -> None:
    result = invoke(delivery(["CWL CONTROL MESSAGE: Checking health of destination Lambda."], "CONTROL_MESSAGE"))

    assert result["inserted"] == 0 and rows(database_url) == []


def test_actual_prices_join_on_the_record_key(invoke: Invoke, database_url: str) -> None:
    invoke(delivery(api_lines("req-1", ["101", "102"])))

    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE monitoring.predictions SET actual = 120.0, actual_at = now() WHERE record_key = '102'")
        joined = conn.execute("SELECT record_key, prediction, actual FROM monitoring.predictions ORDER BY 1").fetchall()

    assert joined == [("101", 100.0, None), ("102", 101.0, 120.0)]


def test_a_delivery_for_months_with_no_partition_yet_lands_in_new_month_partitions(
    invoke: Invoke, database_url: str
) -> None:
    """monitoring.predictions is partitioned by month (migration 0007): the writer creates a month's
    partition with its first rows, so none wait in the default partition."""

    def line(request_id: str, at_ms: int) -> list[str]:
        return [m.replace(str(PREDICTED_AT_MS), str(at_ms)) for m in api_lines(request_id, ["101"])]

    february, march = 1_930_000_000_000, 1_932_000_000_000  # 2031-02-27 23:06 and 2031-03-23 02:40 UTC
    result = invoke(delivery(line("req-1", february) + line("req-2", march)))

    assert result["inserted"] == 2
    with psycopg.connect(database_url) as conn:
        placed = conn.execute(
            "SELECT request_id, tableoid::regclass::text FROM monitoring.predictions ORDER BY 1"
        ).fetchall()
    assert placed == [("req-1", "monitoring.predictions_p2031_02"), ("req-2", "monitoring.predictions_p2031_03")]


def test_the_packages_delivery_builder_matches_cloudwatchs_format() -> None:
    """pricepipe's subscription_event, which the local cloud delivers, builds what CloudWatch Logs sends."""
    from pricepipe.serving.prediction_log import decode_subscription_event, subscription_event

    events = [{"id": str(FIRST_EVENT_ID), "timestamp": PREDICTED_AT_MS, "message": "x"}]
    built = decode_subscription_event(
        subscription_event(events, log_group="/aws/lambda/pricepipe-api", log_stream="2026/11/26/[3]0123456789abcdef")
    )
    reference = decode_subscription_event(delivery(["x"]))

    assert set(built) == set(reference)
    assert (built["messageType"], built["logEvents"]) == ("DATA_MESSAGE", events)
