"""The prediction log: one structured log line per request, parsed back into monitoring rows.

The API writes each request's predictions as a Powertools JSON log line whose ``message`` is
:data:`PREDICTION_LOG_MARKER`; CloudWatch Logs hands lines carrying it to the prediction-writer
function (a subscription filter), which loads them into ``monitoring.predictions``. The request path
so never touches the database (see :mod:`pricepipe.monitoring` for the why).

A line carries the request id, the model's name and version, the function version, when, and per row
its record key (the contract's key values joined with ``|``), prediction and model features (the
model's input plus the event time, so drift checks can window by it). Features are stored by column
(``{"lead_time": [12, 40], ...}``): names once per line rather than once per row, which halves the
line and its JSON encoding time. CloudWatch Logs caps an event at 256 KB, so a large batch is split
into several lines (``part`` / ``parts``) sharing the request id. The first line of a request also
carries the request's CloudWatch metrics in the Embedded Metric Format (:class:`EmfMetrics`).

Imported by the API (writing) and the prediction-writer (parsing): pydantic and the standard library only.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

# The log message marking a prediction line. infrastructure/catalog.py declares the same literal for
# the subscription filter; the package cannot import infrastructure, so a test holds the two equal.
PREDICTION_LOG_MARKER = "prediction_log"
LOG_VERSION = 1
# CloudWatch Logs' limit is 256 KB per event; Powertools adds ~300 bytes of its own keys and JSON
# escaping can only grow text a little, so a line aims at 200 KB of payload.
MAX_LINE_BYTES = 200_000
_ROW_OVERHEAD_BYTES = 48  # key, prediction and separators per row, on top of the features
KEY_SEPARATOR = "|"
Column = Any  # one column of values: a list, a tuple or a 1-d numpy array


class _InfoLogger(Protocol):
    def info(self, msg: object, *args: object, **kwargs: Any) -> Any: ...


def record_key(values: Sequence[Any]) -> str:
    """A row's key as stored in ``monitoring.predictions.record_key`` (dates in ISO form)."""
    return KEY_SEPARATOR.join(map(key_text, values))


def key_text(value: Any) -> str:
    """One key value as text: dates in ISO form, everything else as ``str`` gives it."""
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else str(value)


def log_lines(
    *,
    request_id: str,
    model_name: str,
    model_version: str,
    function_version: str,
    predicted_at_ms: int,
    keys: Sequence[str],
    predictions: Column,
    features: Mapping[str, Column],
    size_hint: int,
    metrics: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """The extra keys of each log line of one request.

    ``size_hint`` bounds the features' JSON size (the request body's length plus the derived date
    parts does: the other features are a subset of its values, without the per-row field names); a
    request is split into as many lines as keep each under :data:`MAX_LINE_BYTES`. Columns are
    passed on as they are when one line takes them all (lists are not copied: the hot path of a
    one-row request), else sliced. ``metrics`` (an :class:`EmfMetrics` block) goes into the first
    line only, so CloudWatch counts a request once.
    """
    n = len(keys)
    parts = max(1, min(n, math.ceil((size_hint + _ROW_OVERHEAD_BYTES * n) / MAX_LINE_BYTES)))
    step = math.ceil(n / parts) if n else 1
    head = {
        "log_version": LOG_VERSION,
        "request_id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "function_version": function_version,
        "predicted_at_ms": predicted_at_ms,
        "parts": parts,
    }
    first = {**head, **metrics} if metrics else head
    if parts == 1:
        yield {
            **first,
            "part": 1,
            "keys": _listed(keys),
            "predictions": _listed(predictions),
            "features": {name: _listed(column) for name, column in features.items()},
        }
        return
    for part, start in enumerate(range(0, n, step), start=1):
        stop = start + step
        yield {
            **(first if part == 1 else head),
            "part": part,
            "keys": _listed(keys[start:stop]),
            "predictions": _listed(predictions[start:stop]),
            "features": {name: _listed(column[start:stop]) for name, column in features.items()},
        }


def _listed(values: Any) -> list[Any]:
    """A list of plain values: lists as they are, numpy arrays (duck-typed: numpy is not imported
    here) through ``tolist``, anything else copied."""
    if type(values) is list:
        return values
    tolist = getattr(values, "tolist", None)
    return tolist() if tolist is not None else list(values)


class EmfMetrics:
    """CloudWatch metrics of a request, carried by its prediction log line in the Embedded Metric
    Format: one line per request is both the prediction record and the metrics.

    Why not Powertools ``Metrics`` per request: adding two metrics and flushing them costs 33–60 µs
    here (its own log line, JSON-encoded by ``json``), a tenth of the one-row budget of 0.5 ms;
    filling this block costs ~1 µs. Powertools still emits the function's cold starts.
    """

    def __init__(self, namespace: str, service: str) -> None:
        self.service = service
        self._directive = [
            {
                "Namespace": namespace,
                "Dimensions": [["service", "model_version"]],
                "Metrics": [
                    {"Name": "Predictions", "Unit": "Count"},
                    {"Name": "PredictLatency", "Unit": "Milliseconds"},
                ],
            }
        ]

    def block(self, timestamp_ms: int, rows: int, latency_ms: float) -> dict[str, Any]:
        """The keys to merge into the line (``model_version`` is one of its own keys already)."""
        return {
            "_aws": {"Timestamp": timestamp_ms, "CloudWatchMetrics": self._directive},
            "service": self.service,
            "Predictions": rows,
            "PredictLatency": round(latency_ms, 3),
        }


def emit(logger: _InfoLogger, lines: Iterator[dict[str, Any]]) -> int:
    """Write the lines through ``logger`` (the Powertools logger); returns how many were written."""
    count = 0
    for extra in lines:
        logger.info(PREDICTION_LOG_MARKER, extra=extra)
        count += 1
    return count


# -- reading lines back (the prediction-writer) ----------------------------------------------------


class PredictionLogLine(BaseModel):
    """One prediction log line as written by :func:`log_lines` (Powertools' own keys ignored)."""

    model_config = ConfigDict(extra="ignore")

    message: str
    log_version: int
    request_id: str
    model_name: str
    model_version: str
    function_version: str | None = None
    predicted_at_ms: int  # milliseconds since the epoch (cheaper to write than ISO text)
    keys: list[str]
    predictions: list[float]
    features: dict[str, list[Any]]

    @model_validator(mode="after")
    def _columns_line_up(self) -> PredictionLogLine:
        if self.log_version != LOG_VERSION:
            raise ValueError(f"log_version {self.log_version} is not supported (this code reads {LOG_VERSION})")
        n = len(self.keys)
        if len(self.predictions) != n:
            raise ValueError(f"{len(self.predictions)} predictions for {n} keys")
        for name, column in self.features.items():
            if len(column) != n:
                raise ValueError(f"feature {name} has {len(column)} values for {n} keys")
        return self

    @property
    def predicted_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.predicted_at_ms / 1000, tz=dt.UTC)


@dataclass(frozen=True)
class PredictionRecord:
    """One row of ``monitoring.predictions``."""

    request_id: str
    record_key: str
    model_name: str
    model_version: str
    function_version: str | None
    features: dict[str, Any]
    prediction: float
    predicted_at: dt.datetime


@dataclass
class ParsedLogs:
    """What one subscription delivery held: prediction records, and lines skipped with the reason."""

    records: list[PredictionRecord] = field(default_factory=list)
    lines: int = 0  # prediction lines read
    ignored: int = 0  # other log lines (the API's own logs, Lambda's START/END/REPORT)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (log event id, reason)


def records_of(line: PredictionLogLine) -> list[PredictionRecord]:
    names = list(line.features)
    columns = [line.features[name] for name in names]
    predicted_at = line.predicted_at
    return [
        PredictionRecord(
            request_id=line.request_id,
            record_key=key,
            model_name=line.model_name,
            model_version=line.model_version,
            function_version=line.function_version,
            features=dict(zip(names, values, strict=True)),
            prediction=prediction,
            predicted_at=predicted_at,
        )
        for key, prediction, *values in zip(line.keys, line.predictions, *columns, strict=True)
    ]


def parse_line(message: str) -> PredictionLogLine | None:
    """The prediction line in one log event's message; ``None`` when it is another kind of line.

    Raises ``ValueError`` for a line that is marked as a prediction line but cannot be read.
    """
    if PREDICTION_LOG_MARKER not in message:
        return None
    start = message.find("{")  # Lambda's text log format may prefix a line with its own fields
    if start < 0:
        return None
    try:
        data = json.loads(message[start:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("message") != PREDICTION_LOG_MARKER:
        return None
    try:
        return PredictionLogLine.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from exc


def decode_subscription_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The payload CloudWatch Logs delivers to a subscribed function: base64 of gzip of JSON."""
    try:
        data = event["awslogs"]["data"]
    except (KeyError, TypeError) as exc:
        raise ValueError("not a CloudWatch Logs subscription event (no awslogs.data)") from exc
    payload = json.loads(gzip.decompress(base64.b64decode(data)))
    if not isinstance(payload, dict):
        raise ValueError("the subscription payload is not a JSON object")
    return payload


def parse_subscription_event(event: Mapping[str, Any]) -> ParsedLogs:
    """Every prediction record of one delivery; other lines are ignored, unreadable ones skipped."""
    payload = decode_subscription_event(event)
    parsed = ParsedLogs()
    if payload.get("messageType") != "DATA_MESSAGE":  # CONTROL_MESSAGE: CloudWatch checking the target
        return parsed
    for log_event in payload.get("logEvents", []):
        event_id = str(log_event.get("id", "?"))
        try:
            line = parse_line(str(log_event.get("message", "")))
        except ValueError as exc:
            parsed.skipped.append((event_id, str(exc)))
            continue
        if line is None:
            parsed.ignored += 1
            continue
        parsed.lines += 1
        parsed.records.extend(records_of(line))
    return parsed


def subscription_event(log_events: Sequence[Mapping[str, Any]], *, log_group: str, log_stream: str) -> dict[str, Any]:
    """A subscription delivery exactly as CloudWatch Logs builds one (for tests and the local cloud)."""
    payload = {
        "messageType": "DATA_MESSAGE",
        "owner": "000000000000",
        "logGroup": log_group,
        "logStream": log_stream,
        "subscriptionFilters": [PREDICTION_LOG_MARKER],
        "logEvents": list(log_events),
    }
    data = base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()
    return {"awslogs": {"data": data}}
