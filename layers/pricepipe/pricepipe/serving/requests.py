"""The API's request and response models, generated from the data contract.

A row of ``POST /predict`` carries every input column of the contract (all columns but the target):
the contract's type becomes the Python type (a category becomes a ``Literal`` of its allowed values,
a date a ``datetime.date``), ``min``/``max`` become ``ge``/``le``, ``max_length`` stays, a nullable
column is optional with ``None`` as default and every other column is required. Unknown fields are
refused (``extra="forbid"``), so a typo is a 422 naming the field rather than a silently missing
value. A batch is ``{"rows": [row, ...]}``.

Types are strict, as the OpenAPI document states them: a JSON boolean is no number (pydantic's lax
mode would read ``true`` as 1), a number is no string or category, text is no number (lax mode reads
``"12"`` as 12), an integer column takes numbers without a fraction (``3`` or ``3.0``, as JSON Schema
counts integers), and a date or datetime column takes text only (lax mode reads a number as a Unix
time). A refused value is the same 422 as any other type error (``int_type``, ``float_type``,
``string_type``, ``date_type``...).

These models are the definition of valid input: they produce the OpenAPI schema, validate single rows
and report every error of a bad batch. Large valid batches take a faster columnar path
(:mod:`pricepipe.serving.columns`) whose acceptance is a strict subset of theirs.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from pricepipe.contract import Column, Contract

# An OpenAPI document's component schemas: where ``$ref`` s of the request body point.
REF_TEMPLATE = "#/components/schemas/{model}"

_PYTHON_TYPES: dict[str, Any] = {
    "integer": int,
    "float": float,
    "boolean": bool,
    "string": str,
    "date": dt.date,
    "datetime": dt.datetime,
}


# The response models only document the API (the service encodes its answers itself): their
# validators are built when first needed (/openapi.json), not at every cold start (~2 ms here).
_DOCUMENTATION_ONLY = ConfigDict(defer_build=True)


class PredictionResponse(BaseModel):
    """Predicted prices in the order of the rows sent, with what produced them."""

    model_config = _DOCUMENTATION_ONLY

    request_id: str = Field(description="Identifies this request in the prediction log (monitoring.predictions)")
    model_name: str
    model_version: str
    keys: list[str] = Field(description="Each row's key (the contract's key columns joined with '|')")
    predictions: list[float] = Field(description="The predicted price of each row, in request order")
    contributions: list[dict[str, float]] | None = Field(
        default=None,
        description=(
            "With explain=true: per row, every model feature's contribution (TreeSHAP) to the model's"
            " output; base_value plus a row's contributions is that output, in contribution_scale"
        ),
    )
    base_value: float | None = Field(
        default=None, description="With explain=true: the model's expected output, where contributions start"
    )
    contribution_scale: Literal["price", "log_price"] | None = Field(
        default=None,
        description=(
            'With explain=true: what the contributions add up to, "price" or, for a model trained on log'
            ' prices, "log_price"'
        ),
    )
    # [low, high] as a two-item array: a tuple's schema (an array of item schemas) is not a valid
    # OpenAPI 3.1 schema object, which schemathesis refuses (tests/unit/test_openapi_fuzz.py)
    intervals: list[Annotated[list[float | None], Field(min_length=2, max_length=2)]] | None = Field(
        default=None,
        description=(
            "With interval=<level>: per row, [low, high], an interval that holds the price for about that"
            " share of rows (split conformal, calibrated at training; /model-info gives its holdout"
            " coverage). An end is null (unbounded) when the level is beyond what the calibration rows"
            " can bound"
        ),
    )
    interval_level: float | None = Field(default=None, description="With interval=<level>: that level")


class ErrorResponse(BaseModel):
    """A request that could not be served (no model, batch too large, no explanations or intervals), and why."""

    model_config = _DOCUMENTATION_ONLY

    detail: str


class FieldError(BaseModel):
    """One invalid field: pydantic's error as FastAPI reports it, plus the field's path as text."""

    model_config = _DOCUMENTATION_ONLY

    type: str
    loc: list[str | int] = Field(description='Where in the body, e.g. ["body", "rows", 3, "lead_time"]')
    msg: str
    field: str = Field(description="The same location as a person writes it, e.g. rows[3].lead_time")
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorResponse(BaseModel):
    """Every invalid field of the request (the first 100 of them)."""

    model_config = _DOCUMENTATION_ONLY

    detail: list[FieldError]


def _text_only(kind: str) -> Callable[[Any], Any]:
    """A date or datetime column's input must be JSON text (then parsed as pydantic parses it): the
    document says ``string``, and lax mode would read a number as a Unix time. Strict mode is no use
    here, since it wants a ``datetime.date`` object where the parsed JSON holds text."""

    def check(value: Any) -> Any:
        if type(value) is not str and value is not None:
            raise PydanticCustomError(f"{kind}_type", f"Input should be a valid {kind}, in ISO 8601 text")
        return value

    return check


def _whole(value: Any) -> Any:
    """JSON Schema's integer is any number without a fractional part (2020-12, §6.1.1 of its
    validation vocabulary; OpenAPI 3.1 uses it): ``3.0`` is one, and strict mode alone refuses it."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


_STRICT_TYPES = {
    "integer": Annotated[int, BeforeValidator(_whole)],
    "date": Annotated[dt.date, BeforeValidator(_text_only("date"))],
    "datetime": Annotated[dt.datetime, BeforeValidator(_text_only("datetime"))],
}


def _python_type(column: Column) -> Any:
    if column.allowed:
        return Literal[tuple(column.allowed)]
    if column.type in _STRICT_TYPES:
        return _STRICT_TYPES[column.type]
    return _PYTHON_TYPES[column.type]


def _field(name: str, column: Column) -> tuple[Any, Any]:
    """``(annotation, FieldInfo)`` of one contract column for ``create_model``."""
    constraints: dict[str, Any] = {}
    if column.min is not None:
        constraints["ge"] = math.ceil(column.min) if column.type == "integer" else column.min
    if column.max is not None:
        constraints["le"] = math.floor(column.max) if column.type == "integer" else column.max
    if column.max_length is not None and not column.allowed:  # allowed values already bound the text
        constraints["max_length"] = column.max_length
    if column.type == "float":
        constraints["allow_inf_nan"] = False  # the ETL refuses them too: a model never saw one
    if column.type in ("integer", "float", "boolean", "string") and not column.allowed:
        constraints["strict"] = True  # see the module docstring; a float column still takes integers
    kind = _python_type(column)
    description = column.description or None
    if column.nullable:
        return kind | None, Field(default=None, description=description, **constraints)
    return kind, Field(description=description, **constraints)


def example_value(column: Column) -> Any:
    """A value that satisfies the column's checks, for documentation examples."""
    if column.allowed:
        return column.allowed[0]
    if column.type in ("integer", "float"):
        low = column.min if column.min is not None else 0.0
        high = column.max if column.max is not None else low + 100.0
        value = low + (high - low) / 4 if column.max is not None else low + 1.0
        return round(value) if column.type == "integer" else round(value, 2)
    if column.type == "boolean":
        return False
    if column.type == "date":
        return "2017-08-01"
    if column.type == "datetime":
        return "2017-08-01T12:00:00Z"
    return "text"[: column.max_length or 4]


@dataclass(frozen=True)
class RequestModels:
    """The models of one contract's API, built once per process."""

    row: type[BaseModel]
    batch: type[BaseModel]
    max_batch_rows: int
    example: dict[str, Any]

    def body_schemas(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The request body's schema (one row *or* a batch) and the component schemas it refers to."""
        components: dict[str, dict[str, Any]] = {}
        refs = []
        for model in (self.row, self.batch):
            schema = model.model_json_schema(ref_template=REF_TEMPLATE)
            if model is self.batch:
                # the size limit, checked before validation (a 413), is still the document's to state
                schema["properties"]["rows"]["maxItems"] = self.max_batch_rows
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
            refs.append({"$ref": REF_TEMPLATE.format(model=model.__name__)})
        return {"oneOf": refs}, components


def request_models(contract: Contract, max_batch_rows: int) -> RequestModels:
    """Row and batch models for ``contract`` (see the module docstring)."""
    title = "".join(part.capitalize() for part in contract.name.split("_"))
    example = {name: example_value(contract.columns[name]) for name in contract.input_columns}
    fields = {name: _field(name, contract.columns[name]) for name in contract.input_columns}
    row: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{title}Row",
        __config__=ConfigDict(
            extra="forbid",
            title=f"{title}Row",
            json_schema_extra={"description": f"One {contract.name} record to price.", "examples": [example]},
        ),
        **fields,
    )
    batch: type[BaseModel] = create_model(
        f"{title}Batch",
        __config__=ConfigDict(
            extra="forbid",
            title=f"{title}Batch",
            json_schema_extra={
                "description": f"Up to {max_batch_rows} {contract.name} records to price in one request.",
                "examples": [{"rows": [example]}],
            },
        ),
        # the size limit is checked before validation (a 413, not a 422), so it is not a constraint here
        rows=(list[row], Field(min_length=1, description=f"At most {max_batch_rows} rows")),
    )
    return RequestModels(row=row, batch=batch, max_batch_rows=max_batch_rows, example=example)
