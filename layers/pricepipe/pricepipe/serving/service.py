"""Serving one contract's model: request body in, validated rows, features, prices, a log line out.

The API function (``functions/api/app.py``) is a thin FastAPI shell over :class:`PredictionService`,
which is built once per container at cold start and holds everything the hot path needs ready: the
request models, the column checks, the model's lookup tables.

The path of a request, cheapest first:

- ``{"rows": [...]}`` (a batch): its size is checked before anything else (:class:`BatchTooLarge`),
  then the rows are checked a column at a time (:mod:`pricepipe.serving.columns`) and the model reads
  the columns; if that path declines, the pydantic batch model validates and names every bad field;
- any other JSON value is one row: the pydantic row model validates it (a few µs), then
  :func:`pricepipe.features.feature_row` and the model's one-row path.

With ``explain`` (``POST /predict?explain=true``) the same features are also split into per-feature
contributions (:meth:`pricepipe.lean_model.LeanModel.explain_columns`, TreeSHAP); without it nothing
of that is imported or computed. A model whose artifact cannot explain is :class:`ExplanationUnavailable`.
With ``interval`` (``POST /predict?interval=0.8``, any level in (0, 1)) each row also gets its
prediction interval from the artifact's error model and calibration scores
(:meth:`pricepipe.lean_model.LeanModel.intervals_columns`); a model exported without them is
:class:`IntervalUnavailable`. Both can be asked together; without either the path is as before.

Bodies are parsed with orjson (3x faster than ``json`` here, the largest cost of a 1,000-row
request after validation) and responses encoded with it; the prediction log line is encoded once,
by orjson, with the columns as they are (numpy arrays, the request's own date text) and written by
:class:`pricepipe.serving.prediction_log.LineWriter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ValidationError

from pricepipe.errors import PricePipeError
from pricepipe.features import feature_row
from pricepipe.lean_interval import METHOD
from pricepipe.lean_model import NO_COVER, NO_INTERVAL
from pricepipe.serving.columns import ColumnCheck, feature_columns, plain
from pricepipe.serving.prediction_log import (
    KEY_SEPARATOR,
    Column,
    EmfMetrics,
    LineWriter,
    key_text,
    log_lines,
    record_key,
)
from pricepipe.serving.requests import RequestModels, request_models

if TYPE_CHECKING:
    from pricepipe.contract import Contract
    from pricepipe.lean_explain import Explanation
    from pricepipe.lean_interval import ConformalInterval
    from pricepipe.lean_model import LeanModel
    from pricepipe.serving.model_layer import DeployedModel
    from pricepipe.serving.prediction_log import _InfoLogger

NO_MODEL = (
    "no model deployed yet: this function version carries no model layer (pricepipe_model); "
    "train a model and promote it to serve predictions"
)
MAX_REPORTED_ERRORS = 100  # a batch of bad rows would otherwise answer with megabytes of errors


class NoModelDeployed(PricePipeError):
    """The function has no model layer: answer 503, never a made-up price."""

    def __init__(self) -> None:
        super().__init__(NO_MODEL)


class BatchTooLarge(PricePipeError):
    """More rows than ``max_batch_rows`` in one request (HTTP 413)."""

    def __init__(self, rows: int, limit: int) -> None:
        self.rows, self.limit = rows, limit
        super().__init__(
            f"a batch holds at most {limit} rows and this one has {rows}: send it as {-(-rows // limit)} requests"
        )


class InvalidRequest(PricePipeError):
    """The body does not satisfy the request models; ``errors`` in pydantic's form, located in the body."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} invalid field(s)")


class ModelCannotAnswer(PricePipeError):
    """Something was asked of a model whose artifact cannot give it (HTTP 409: the request is fine,
    the deployed model is not one that can answer it; a 5xx would count against the version)."""


class ExplanationUnavailable(ModelCannotAnswer):
    """``explain=true`` of a model whose artifact has no node covers."""


class IntervalUnavailable(ModelCannotAnswer):
    """``interval=`` of a model whose artifact has no interval section."""


@dataclass(frozen=True)
class Prediction:
    request_id: str
    model_name: str
    model_version: str
    keys: list[str]
    predictions: Any  # a float array, one per row
    explanation: Explanation | None = None  # asked for with explain
    intervals: Any = None  # asked for with interval: a (rows, 2) float array, ±inf where unbounded
    interval_level: float | None = None

    def to_json(self) -> bytes:
        body = {
            "request_id": self.request_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "keys": self.keys,
            "predictions": self.predictions,
        }
        if self.intervals is not None:
            # orjson writes an infinite end (a level beyond what the calibration rows can bound) as null
            body["intervals"] = self.intervals
            body["interval_level"] = self.interval_level
        if self.explanation is not None:
            body["contributions"] = self.explanation.records()
            body["base_value"] = self.explanation.base_value
            body["contribution_scale"] = self.explanation.scale
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    @property
    def rows(self) -> int:
        return len(self.keys)


def field_path(loc: Sequence[Any]) -> str:
    """``("rows", 3, "lead_time")`` → ``rows[3].lead_time``: how a person names a bad field."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    errors = exc.errors(include_url=False)
    shown = [{**e, "field": field_path(e["loc"])} for e in errors[:MAX_REPORTED_ERRORS]]
    if len(errors) > MAX_REPORTED_ERRORS:
        hidden = len(errors) - MAX_REPORTED_ERRORS
        shown.append(
            {"type": "too_many_errors", "loc": (), "field": "body", "msg": f"and {hidden} more errors like these"}
        )
    return shown


class PredictionService:
    """Everything a request needs, prepared once per container (see the module docstring)."""

    def __init__(
        self,
        contract: Contract,
        deployed: DeployedModel | None,
        *,
        max_batch_rows: int,
        function_version: str,
        logger: _InfoLogger,
        metrics: EmfMetrics | None = None,
    ) -> None:
        self.contract = contract
        self.metrics = metrics
        self.deployed = deployed
        self.function_version = function_version
        self.logger = logger
        self._log = LineWriter(logger)
        self.models: RequestModels = request_models(contract, max_batch_rows)
        self.max_batch_rows = max_batch_rows
        self._check = ColumnCheck(contract)
        self._row_validate = self.models.row.model_validate
        self._batch_validate = self.models.batch.model_validate
        self._key = contract.key
        self._key_text = [_key_formatter(contract.columns[name].type) for name in contract.key]
        self._event_time = contract.event_time
        self._derived_bytes = 8 * len(contract.date_part_columns)  # per row, beyond the body's own values
        if deployed is not None:
            _refuse_mismatch(contract, deployed)
            self.model_name = str(deployed.metadata.get("model_name") or deployed.model.info.get("model_name", ""))
            self.model_version = deployed.version
        else:
            self.model_name = self.model_version = ""

    @property
    def ready(self) -> bool:
        return self.deployed is not None

    # -- /predict ----------------------------------------------------------------------------------

    def predict(  # noqa: C901 - the request path in one function: parse, validate, predict, explain, interval, log
        self, body: bytes, request_id: str, *, explain: bool = False, interval: float | None = None
    ) -> Prediction:
        """Validate ``body``, predict, and write the prediction log line(s) with the request's metrics;
        with ``explain``, each row's per-feature contributions too, with ``interval`` (a level in
        (0, 1), checked by the caller) each row's prediction interval (the log line is the same)."""
        began = time.perf_counter()
        deployed = self.deployed
        if deployed is None:
            raise NoModelDeployed
        explanation = bounds = None
        if explain or interval is not None:
            _refuse_unanswerable(deployed.model, explain, interval)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                [
                    {
                        "type": "json_invalid",
                        "loc": (exc.pos,),
                        "field": "body",
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": exc.msg},
                    }
                ]
            ) from None
        event_time = self._event_time
        if type(payload) is dict and "rows" in payload:
            rows = payload["rows"]
            if isinstance(rows, list) and len(rows) > self.max_batch_rows:
                raise BatchTooLarge(len(rows), self.max_batch_rows)
            checked = self._check.check(rows) if isinstance(rows, list) and len(payload) == 1 else None
            if checked is None:
                batch = self._validated(self._batch_validate, payload)
                records = [row.__dict__ for row in batch.rows]  # type: ignore[attr-defined]
                columns = {name: [r[name] for r in records] for name in self.contract.input_columns}
                moments: Column = columns[event_time] if event_time else ()
            else:
                columns = checked.columns
                # the request's own ISO text: what str() of the parsed dates would log, without a
                # call per row into the encoder's fallback
                moments = checked.texts.get(event_time, columns[event_time]) if event_time else ()
            keys = self._keys(columns)
            features = feature_columns(columns, self.contract)
            values = deployed.model.predict_columns(features)
            if interval is not None or explain:
                bounds, explanation = _asked(deployed.model, features, values, interval, explain, columns=True)
        else:
            record = self._validated(self._row_validate, payload).__dict__
            keys = [record_key([record[k] for k in self._key])]
            row = feature_row(record, self.contract)
            values = deployed.model.predict_rows([row])
            if interval is not None or explain:
                bounds, explanation = _asked(deployed.model, [row], values, interval, explain, columns=False)
            features = {name: [value] for name, value in row.items()}
            moments = [record[event_time]] if event_time else []
        if event_time:  # logged beside the features: drift checks window by event time
            features = {**features, event_time: moments}
        now_ms = int(time.time() * 1000)
        block = None
        if self.metrics is not None:
            block = self.metrics.block(now_ms, len(keys), (time.perf_counter() - began) * 1000)
        self._log.write(
            log_lines(
                request_id=request_id,
                model_name=self.model_name,
                model_version=self.model_version,
                function_version=self.function_version,
                predicted_at_ms=now_ms,
                keys=keys,
                predictions=values,
                features=features,
                size_hint=len(body) + self._derived_bytes * len(keys),
                metrics=block,
                as_lists=False,
            ),
        )
        return Prediction(request_id, self.model_name, self.model_version, keys, values, explanation, bounds, interval)

    @staticmethod
    def _validated(validate: Any, payload: Any) -> BaseModel:
        try:
            return validate(payload)
        except ValidationError as exc:
            raise InvalidRequest(_errors(exc)) from None

    def _keys(self, columns: Mapping[str, Column]) -> list[str]:
        """Each row's record key. A key may repeat within a batch (the OpenAPI document cannot state
        such a rule, and a client may well price one booking under two scenarios): every row is
        priced and answered, and the prediction log's store, one row per request and record key,
        keeps the first of them (:mod:`pricepipe.monitoring` inserts with ON CONFLICT DO NOTHING)."""
        texts = [
            list(map(fmt, plain(columns[name]))) if fmt is not None else list(columns[name])
            for name, fmt in zip(self._key, self._key_text, strict=True)
        ]
        return texts[0] if len(texts) == 1 else list(map(KEY_SEPARATOR.join, zip(*texts, strict=True)))

    # -- /health and /model-info -----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        if self.deployed is None:
            return {"status": "unavailable", "model_loaded": False, "detail": NO_MODEL}
        return {
            "status": "ok",
            "model_loaded": True,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "function_version": self.function_version,
        }

    def model_info(self) -> dict[str, Any]:
        """What is served: from the model layer's metadata, else from the artifact's own info."""
        deployed = self.deployed
        if deployed is None:
            raise NoModelDeployed
        meta, info, model = deployed.metadata, deployed.model.info, deployed.model

        def pick(name: str) -> Any:
            return meta.get(name, info.get(name))

        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "alias": meta.get("alias"),
            "function_version": self.function_version,
            "model_family": pick("model_family"),
            "run_id": pick("run_id"),
            "trained_at": pick("trained_at"),
            "contract": pick("contract") or {"name": self.contract.name, "version": self.contract.version},
            "target": pick("target") or self.contract.target,
            "metrics": pick("metrics") or {},
            "data_window": pick("data_window") or {},
            "features": list(model.features),
            "categorical_features": [name for name in model.features if model.encoding.is_categorical(name)],
            "n_trees": model.n_trees,
            "max_depth": model.max_depth,
            "max_batch_rows": self.max_batch_rows,
            "explainable": model.can_explain,  # POST /predict?explain=true answers contributions
            "intervals": _interval_info(model.interval),  # POST /predict?interval=0.8 answers intervals
        }


def _refuse_unanswerable(model: LeanModel, explain: bool, interval: float | None) -> None:
    """Before any work: what the request asks that this model's artifact cannot give is a 409."""
    if explain and not model.can_explain:
        raise ExplanationUnavailable(NO_COVER)
    if interval is not None and not model.can_interval:
        raise IntervalUnavailable(NO_INTERVAL)


def _asked(
    model: LeanModel, features: Any, values: Any, interval: float | None, explain: bool, *, columns: bool
) -> tuple[Any, Explanation | None]:
    """``(intervals, explanation)`` asked of the model for the request's features (columns or records)."""
    bounds = explanation = None
    if interval is not None:
        bounds = (model.intervals_columns if columns else model.intervals_rows)(features, values, interval)
    if explain:
        explanation = model.explain_columns(features) if columns else model.explain_rows(features)
    return bounds, explanation


def _interval_info(interval: ConformalInterval | None) -> dict[str, Any]:
    """What /model-info says of the served intervals: whether there are any, and their holdout coverage."""
    if interval is None:
        return {"available": False}
    info = interval.info
    return {
        "available": True,
        "method": METHOD,
        "calibration_rows": interval.calibration_rows,
        "holdout_coverage": info.get("holdout_coverage", {}),  # level → share of holdout rows covered
        "holdout_mean_width": info.get("holdout_mean_width", {}),
        "holdout_rows": info.get("holdout_rows"),
        "measured_with": info.get("measured_with"),
    }


def _key_formatter(column_type: str) -> Callable[[Any], str] | None:
    """How a key column's values become text (None: they are text), as :func:`record_key` does."""
    if column_type in ("string", "category"):
        return None
    return key_text if column_type in ("date", "datetime") else str


_JSON_STARTS = frozenset('{["-0123456789tfn')


def log_deserializer(message: str) -> Any:
    """A ``json_deserializer`` for the same logger. Powertools tries to decode every message as JSON
    and keeps the text when that fails; with ``json`` the failure costs ~10 µs (an exception built
    with its position), which a message like ``prediction_log`` need not pay."""
    if not message or message[0] not in _JSON_STARTS:
        # a new error each time: re-raising one instance would chain every traceback (and the
        # frames, with their log records) onto it for ever
        raise ValueError("not JSON")
    return orjson.loads(message)


def _refuse_mismatch(contract: Contract, deployed: DeployedModel) -> None:
    """A model trained on another dataset, or needing features this contract does not make, would
    fail on every request: refuse it at cold start, where the deploy sees it."""
    trained_on = deployed.model.info.get("contract") or deployed.metadata.get("contract") or {}
    if isinstance(trained_on, dict) and trained_on.get("name") not in (None, contract.name):
        raise ValueError(f"the deployed model was trained on contract {trained_on['name']!r}, not {contract.name!r}")
    unknown = [name for name in deployed.model.features if name not in contract.feature_columns]
    if unknown:
        raise ValueError(f"the deployed model needs features the contract does not make: {', '.join(unknown)}")
