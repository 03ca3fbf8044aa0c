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

The API writes its lines through :class:`LineWriter`: the line Powertools' logger would write, built
and encoded in one orjson call rather than through a ``logging.LogRecord`` and the formatter's
per-record work (~40 µs, a tenth of the one-row budget); any other logger setup goes through
``logger.info`` as before.

Imported by the API (writing) and the prediction-writer (parsing): pydantic, orjson and the
standard library only.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

# The log message marking a prediction line. infrastructure/catalog.py declares the same literal for
# the subscription filter; the package cannot import infrastructure, so a test holds the two equal.
PREDICTION_LOG_MARKER = "prediction_log"
# The API's EMF count of its 5xx answers, dimensions {service: <function name>, function_version: <version>}:
# errors FastAPI caught, which Lambda's own Errors metric never counts; a canary's health check reads it.
API_SERVER_ERRORS = "ServerErrors"
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
    as_lists: bool = True,
) -> Iterator[dict[str, Any]]:
    """The extra keys of each log line of one request.

    ``size_hint`` bounds the features' JSON size (the request body's length plus the derived date
    parts does: the other features are a subset of its values, without the per-row field names); a
    request is split into as many lines as keep each under :data:`MAX_LINE_BYTES`. Columns are
    passed on as they are when one line takes them all (lists are not copied: the hot path of a
    one-row request), else sliced. ``metrics`` (an :class:`EmfMetrics` block) goes into the first
    line only, so CloudWatch counts a request once. With ``as_lists=False`` numpy arrays and tuples
    stay as they are, for a writer whose encoder reads them (:class:`LineWriter`: orjson encodes
    an array in C, where ``tolist`` would first build a Python object per value).
    """
    listed = _listed if as_lists else _as_is
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
            "keys": listed(keys),
            "predictions": listed(predictions),
            "features": {name: listed(column) for name, column in features.items()},
        }
        return
    for part, start in enumerate(range(0, n, step), start=1):
        stop = start + step
        yield {
            **(first if part == 1 else head),
            "part": part,
            "keys": listed(keys[start:stop]),
            "predictions": listed(predictions[start:stop]),
            "features": {name: listed(column[start:stop]) for name, column in features.items()},
        }


def _listed(values: Any) -> list[Any]:
    """A list of plain values: lists as they are, numpy arrays (duck-typed: numpy is not imported
    here) through ``tolist``, anything else copied."""
    if type(values) is list:
        return values
    tolist = getattr(values, "tolist", None)
    return tolist() if tolist is not None else list(values)


def _as_is(values: Any) -> Any:
    return values


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


class ServerErrorMetric:
    """One EMF line per 5xx answer, ``ServerErrors`` with dimensions ``service`` (the function's name)
    and ``function_version``: what a canary's health check reads (see :mod:`pricepipe.promotion.canary`), since
    Lambda's own ``Errors`` never counts an error FastAPI caught and answered with a 500."""

    def __init__(self, namespace: str, function: str, function_version: str) -> None:
        self.metric = API_SERVER_ERRORS
        self._document: dict[str, Any] = {
            "_aws": {
                "Timestamp": 0,
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [["service", "function_version"]],
                        "Metrics": [{"Name": API_SERVER_ERRORS, "Unit": "Count"}],
                    }
                ],
            },
            "service": function,
            "function_version": function_version,
            API_SERVER_ERRORS: 1,
        }

    def line(self, timestamp_ms: int | None = None) -> str:
        self._document["_aws"]["Timestamp"] = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        return orjson.dumps(self._document).decode()

    def emit(self) -> None:
        """Print the line to standard output, which Lambda ships to CloudWatch Logs (and so EMF)."""
        print(self.line(), flush=True)  # EMF: CloudWatch reads it from the function output


def emit(logger: _InfoLogger, lines: Iterator[dict[str, Any]]) -> int:
    """Write the lines through ``logger`` (the Powertools logger); returns how many were written."""
    count = 0
    for extra in lines:
        logger.info(PREDICTION_LOG_MARKER, extra=extra)
        count += 1
    return count


# json.dumps(default=str), as Powertools calls it, but by orjson: 8x faster on a 1,000-row prediction
# line. Datetimes and dataclasses still go through str() as before; numpy numbers become numbers.
_LOG_JSON = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_SERIALIZE_NUMPY
)


def log_serializer(record: Mapping[str, Any]) -> str:
    """A ``json_serializer`` for the Powertools logger of the serving function (see above)."""
    return orjson.dumps(record, default=str, option=_LOG_JSON).decode()


def _line_default(value: Any) -> Any:
    """What orjson cannot encode itself: a numpy array it declines (not C-contiguous, an unusual
    dtype) as its values, anything else as ``str`` gives it (dates, as ``log_serializer`` does)."""
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist is not None else str(value)


_POWERTOOLS_FORMATTER = ("aws_lambda_powertools.logging.formatter", "LambdaPowertoolsFormatter")
_XRAY_TRACE_ID = "_X_AMZN_TRACE_ID"  # where Lambda puts the X-Ray trace header; Powertools logs its Root


def _with_lists(extra: Mapping[str, Any]) -> dict[str, Any]:
    """A line's extra keys with its columns as plain lists (what :func:`log_lines` gives by default)."""
    out = dict(extra)
    for key in ("keys", "predictions"):
        if key in out:
            out[key] = _listed(out[key])
    if "features" in out:
        out["features"] = {name: _listed(column) for name, column in out["features"].items()}
    return out


class _Moment:
    """The two attributes of a log record Powertools' ``formatTime`` reads, as logging sets them."""

    __slots__ = ("created", "msecs")

    def __init__(self, ns: int) -> None:
        self.created = ns / 1e9
        self.msecs = (ns % 1_000_000_000) // 1_000_000 + 0.0


class LineWriter:
    """Writes prediction lines as ``logger.info(PREDICTION_LOG_MARKER, extra=line)`` does with the
    Powertools logger as the functions set it up (one stream handler, its JSON formatter with
    :func:`log_serializer`), in one orjson call straight to that handler's stream.

    The line has the same keys in the same order — level, location, message, timestamp, the
    formatter's static keys (service), the extra keys, the X-Ray trace id — except the asyncio task
    name Python 3.12's logging adds inside an event loop (``taskName``), which nothing reads. The
    handler is looked up on every line, so a stream swapped in later (tests, benchmarks) is used.
    The line is not handed to ancestor loggers' handlers (see :meth:`_target`). Anything else —
    other handlers or filters, a level above INFO, log buffering, another formatter, context keys —
    goes through ``logger.info`` unchanged.
    """

    def __init__(self, logger: _InfoLogger) -> None:
        self.logger = logger
        self._location = f"write:{LineWriter.write.__code__.co_firstlineno}"

    def write(self, lines: Iterator[dict[str, Any]]) -> int:
        """Write ``lines`` (see :func:`log_lines`, ``as_lists=False`` is fine); returns how many."""
        count = 0
        for extra in lines:
            count += 1
            target = self._target()
            text = None if target is None else self._text(target[1], extra)
            if target is None or text is None:
                # plain lists: the logger's own serializer may not read numpy arrays or tuples
                self.logger.info(PREDICTION_LOG_MARKER, extra=_with_lists(extra))
                continue
            handler = target[0]
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.stream.write(handler.terminator)
                handler.stream.flush()
            except Exception:  # noqa: BLE001 - as a logging handler does: report it, keep serving
                handler.handleError(logging.makeLogRecord({"msg": PREDICTION_LOG_MARKER, "levelno": logging.INFO}))
            finally:
                handler.release()
        return count

    def _target(self) -> tuple[Any, Any] | None:  # noqa: PLR0911 - one early return per record that is not a prediction line
        """``(handler, formatter)`` when the logger is set up as this writer expects, else ``None``."""
        logger: Any = self.logger
        if getattr(logger, "_buffer_config", None) or not hasattr(logger, "registered_formatter"):
            return None
        # Not propagated to ancestors' handlers: Powertools filters its records out of the root
        # handlers there are when it starts (Lambda's), so in Lambda nothing else writes them anyway
        if not logger.isEnabledFor(logging.INFO) or logger.filters:
            return None
        handlers = logger.handlers
        if len(handlers) != 1:
            return None
        handler = handlers[0]
        formatter = handler.formatter
        kind = type(formatter)
        if (kind.__module__, kind.__qualname__) != _POWERTOOLS_FORMATTER:
            return None
        if handler.filters or handler.level > logging.INFO:
            return None
        if formatter.json_serializer is not log_serializer or getattr(handler, "stream", None) is None:
            return None
        return handler, formatter

    def _text(self, formatter: Any, extra: Mapping[str, Any]) -> str | None:  # noqa: C901, PLR0912 - the log line is encoded inline on the request path; splitting it would cost a call per record
        """The line's JSON text, or ``None`` when the formatter's keys ask for what this does not make."""
        if formatter.thread_safe_get_current_keys():
            return None
        line: dict[str, Any] = {}
        for key, value in formatter.log_format.items():
            if key == "message":
                line[key] = PREDICTION_LOG_MARKER
            elif value is None:
                continue  # Powertools drops keys whose value is None
            elif (key, value) == ("level", "%(levelname)s"):
                line[key] = "INFO"
            elif (key, value) == ("location", "%(funcName)s:%(lineno)d"):
                line[key] = self._location
            elif (key, value) == ("timestamp", "%(asctime)s"):
                line[key] = formatter.formatTime(_Moment(time.time_ns()))
            elif isinstance(value, str) and "%(" in value:
                return None  # other log record attributes: the formatter's own work
            else:
                line[key] = value
        if "message" not in line:
            return None
        for key, value in extra.items():
            if value is None:
                line.pop(key, None)
            else:
                line[key] = value
        if formatter.log_format.get("xray_trace_id", "") is not None:
            trace = os.environ.get(_XRAY_TRACE_ID)
            if trace:
                line["xray_trace_id"] = trace.split(";")[0].replace("Root=", "")
            else:
                line.pop("xray_trace_id", None)
        return orjson.dumps(line, default=_line_default, option=_LOG_JSON).decode()


# -- reading lines back (the prediction-writer) ----------------------------------------------------


class PredictionLogLine(BaseModel):
    """One prediction log line as written by :func:`log_lines` (Powertools' own keys ignored)."""

    # built on first use: the API imports this module for writing and never parses a line (~2 ms of
    # its cold start)
    model_config = ConfigDict(extra="ignore", defer_build=True)

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


class PredictionRecord(NamedTuple):
    """One row of ``monitoring.predictions`` (a named tuple: the writer builds one per row, and a
    tuple is made ~5x faster than a frozen dataclass)."""

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


def _loads(text: str | bytes) -> Any:
    """JSON by orjson (~4x faster on a delivery), or by ``json`` for what orjson refuses and Python's
    encoder writes (NaN, Infinity: a logger set up with ``json.dumps`` may write them)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


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
        data = _loads(message[start:])
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
    payload = _loads(gzip.decompress(base64.b64decode(data)))
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


def subscription_event(
    log_events: Sequence[Mapping[str, Any]],
    *,
    log_group: str,
    log_stream: str,
    owner: str = "000000000000",
    filter_name: str = PREDICTION_LOG_MARKER,
) -> dict[str, Any]:
    """A subscription delivery exactly as CloudWatch Logs builds one: what the prediction writer
    receives on AWS, and what the local cloud delivers to it."""
    payload = {
        "messageType": "DATA_MESSAGE",
        "owner": owner,
        "logGroup": log_group,
        "logStream": log_stream,
        "subscriptionFilters": [filter_name],
        "logEvents": list(log_events),
    }
    data = base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()
    return {"awslogs": {"data": data}}
