"""The data contract: one YAML file describing a price dataset, and validation against it.

A contract names the columns with their types, ranges or allowed categories and nullability, the
key, the target (the price) and an optional event-time column, plus how features are derived. ETL,
features, the database tables, training and the API's request model are all driven by it, so a new
price dataset needs a new contract and no code change.

Validation is vectorised (one boolean mask per check) and returns every rejected row with the reasons
it was rejected, in the form ``"<column>: <what is wrong>"`` joined by ``"; "``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pricepipe.errors import ContractError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from mypy_boto3_s3 import S3Client

ColumnType = Literal["integer", "float", "boolean", "string", "category", "date", "datetime"]
DatePart = Literal["year", "month", "day_of_week", "day_of_year", "week_of_year", "is_weekend"]

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_COLUMNS = frozenset({"_ingest_id", "_loaded_at", "_load_date", "_reasons", "_source_key"})
LOAD_DATE_PARTITION = "_load_date"  # the lake's partition key for a contract without an event time
REASONS_COLUMN = "_reasons"

COMPILED_SUFFIX = ".json"  # a bundled contract compiled at build time, beside its YAML (compile_contract)

_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")

_PG_TYPES: dict[str, str] = {
    "integer": "BIGINT",
    "float": "DOUBLE PRECISION",
    "boolean": "BOOLEAN",
    "string": "TEXT",
    "category": "TEXT",
    "date": "DATE",
    "datetime": "TIMESTAMPTZ",
}


class Column(BaseModel):
    """One column of a dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ColumnType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    max_length: int | None = Field(default=None, gt=0)
    description: str = ""

    @model_validator(mode="after")
    def _checks_fit_the_type(self) -> Column:
        numeric = self.type in ("integer", "float")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max apply to integer and float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.type == "category" and not self.allowed:
            raise ValueError("a category column needs its allowed values")
        if self.allowed is not None and self.type not in ("category", "string"):
            raise ValueError(f"allowed values apply to category and string columns, not {self.type}")
        return self

    @property
    def pg_type(self) -> str:
        return _PG_TYPES[self.type]


class FeatureSpec(BaseModel):
    """How model features are derived from the columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude: tuple[str, ...] = ()
    event_time_parts: tuple[DatePart, ...] = ("month", "day_of_week", "day_of_year", "is_weekend")


class Contract(BaseModel):
    """A dataset's contract, as read from its YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(default=1, ge=1)
    description: str = ""
    key: tuple[str, ...]
    target: str
    event_time: str | None = None
    columns: dict[str, Column]
    features: FeatureSpec = FeatureSpec()

    @model_validator(mode="before")
    @classmethod
    def _key_may_be_a_string(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("key"), str):
            data = {**data, "key": (data["key"],)}
        return data

    @model_validator(mode="after")
    def _roles_name_real_columns(self) -> Contract:  # noqa: C901, PLR0912 - each role's column check is one branch; the contract's rules read as one list
        if not _IDENTIFIER.match(self.name):
            raise ValueError(f"name {self.name!r} must be a lower-case identifier")
        for column in self.columns:
            if not _IDENTIFIER.match(column):
                raise ValueError(f"column name {column!r} must be a lower-case identifier")
            if column in RESERVED_COLUMNS:
                raise ValueError(f"column name {column!r} is reserved by the pipeline")
        if not self.key:
            raise ValueError("key must name at least one column")
        for role, names in (("key", self.key), ("target", (self.target,)), ("features.exclude", self.features.exclude)):
            for name in names:
                if name not in self.columns:
                    raise ValueError(f"{role} names {name!r}, which is not a column")
        if self.event_time is not None:
            if self.event_time not in self.columns:
                raise ValueError(f"event_time names {self.event_time!r}, which is not a column")
            if self.columns[self.event_time].type not in ("date", "datetime"):
                raise ValueError(f"event_time column {self.event_time!r} must be a date or datetime")
            if self.columns[self.event_time].nullable:
                raise ValueError(f"event_time column {self.event_time!r} cannot be nullable")
        for name in self.key:
            if self.columns[name].nullable:
                raise ValueError(f"key column {name!r} cannot be nullable")
        if self.columns[self.target].type not in ("integer", "float"):
            raise ValueError(f"target {self.target!r} must be numeric")
        if self.columns[self.target].nullable:
            raise ValueError(f"target {self.target!r} cannot be nullable")
        return self

    # -- derived views -------------------------------------------------------------------------

    @cached_property
    def input_columns(self) -> tuple[str, ...]:
        """Columns a caller supplies to get a prediction: everything but the target."""
        return tuple(c for c in self.columns if c != self.target)

    @property
    def lake_partition(self) -> str:
        """The Parquet lake's partition key (``dataset=<name>/<key>=YYYY-MM-DD/``): the event time's
        date, or without one the load date (the ETL writes it, training reads it)."""
        return self.event_time or LOAD_DATE_PARTITION

    @cached_property
    def date_part_columns(self) -> tuple[str, ...]:
        if self.event_time is None:
            return ()
        return tuple(f"{self.event_time}_{part}" for part in self.features.event_time_parts)

    @cached_property
    def passthrough_features(self) -> tuple[str, ...]:
        """Contract columns used as model features as they are (after cleaning)."""
        skip = {*self.key, self.target, *self.features.exclude}
        if self.event_time is not None:
            skip.add(self.event_time)
        return tuple(c for c in self.columns if c not in skip and self.columns[c].type not in ("date", "datetime"))

    @cached_property
    def feature_columns(self) -> tuple[str, ...]:
        """The model's input features, in a fixed order."""
        return self.passthrough_features + self.date_part_columns

    @cached_property
    def categorical_features(self) -> tuple[str, ...]:
        return tuple(c for c in self.passthrough_features if self.columns[c].type in ("string", "category", "boolean"))

    @cached_property
    def numeric_features(self) -> tuple[str, ...]:
        return tuple(c for c in self.feature_columns if c not in self.categorical_features)

    @cached_property
    def feature_table_columns(self) -> dict[str, str]:
        """Model-ready rows (key, event time, every feature, target) with their PostgreSQL types: the
        Parquet lake's columns and the view ``price_data.model_features``."""
        out: dict[str, str] = {k: self.columns[k].pg_type for k in self.key}
        if self.event_time is not None:
            out[self.event_time] = self.columns[self.event_time].pg_type
        for name in self.passthrough_features:
            out[name] = self.columns[name].pg_type
        out.update(self._engineered_columns)
        out[self.target] = self.columns[self.target].pg_type
        return out

    @cached_property
    def processed_table_columns(self) -> dict[str, str]:
        """Columns stored in ``price_data.processed_features``: key, event time, the engineered
        features and the target. Features that are raw columns as they are stay in ``raw_data``
        (the view ``price_data.model_features`` joins the two): storing them twice would double the
        bulk-load volume for no information."""
        out: dict[str, str] = {k: self.columns[k].pg_type for k in self.key}
        if self.event_time is not None:
            out[self.event_time] = self.columns[self.event_time].pg_type
        out.update(self._engineered_columns)
        out[self.target] = self.columns[self.target].pg_type
        return out

    @cached_property
    def _engineered_columns(self) -> dict[str, str]:
        return {name: "BOOLEAN" if name.endswith("_is_weekend") else "INTEGER" for name in self.date_part_columns}

    def arrow_schema(self, columns: dict[str, str]) -> pa.Schema:
        """The Arrow schema for a frame whose columns carry these PostgreSQL types."""
        import pyarrow as pa

        arrow = {
            "BIGINT": pa.int64(),
            "INTEGER": pa.int32(),
            "DOUBLE PRECISION": pa.float64(),
            "BOOLEAN": pa.bool_(),
            "TEXT": pa.large_string(),
            "DATE": pa.date32(),
            "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
        }
        return pa.schema([pa.field(name, arrow[pg]) for name, pg in columns.items()])

    @cached_property
    def raw_table_columns(self) -> dict[str, str]:
        return {name: col.pg_type for name, col in self.columns.items()}

    def json_schema(self) -> dict[str, Any]:
        """The contract as JSON Schema, for documentation and API request models."""
        kinds = {"integer": "integer", "float": "number", "boolean": "boolean"}
        props: dict[str, Any] = {}
        for name, col in self.columns.items():
            prop: dict[str, Any] = {"type": kinds.get(col.type, "string"), "description": col.description}
            if col.type == "date":
                prop["format"] = "date"
            elif col.type == "datetime":
                prop["format"] = "date-time"
            if col.min is not None:
                prop["minimum"] = col.min
            if col.max is not None:
                prop["maximum"] = col.max
            if col.allowed:
                prop["enum"] = list(col.allowed)
            if col.nullable:
                prop = {"anyOf": [prop, {"type": "null"}]}
            props[name] = prop
        required = [n for n, c in self.columns.items() if not c.nullable]
        return {"title": self.name, "type": "object", "properties": props, "required": required}


# -- loading ---------------------------------------------------------------------------------------


def parse_contract(text: str, source: str = "<string>") -> Contract:
    """Parse a contract's YAML text; every problem is reported with its location."""
    return contract_from_data(_yaml_data(text, source), source)


def _yaml_data(text: str, source: str) -> Any:
    import yaml  # here, not at import: the serving function reads its contract compiled to JSON

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"contract {source} is not valid YAML: {exc}") from exc


def contract_from_data(data: Any, source: str) -> Contract:
    """A contract from its parsed document (YAML's or its compiled JSON's), every problem located."""
    if not isinstance(data, dict):
        raise ContractError(f"contract {source} must be a mapping, got {type(data).__name__}")
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<contract>'}: {err['msg']}" for err in exc.errors()
        )
        raise ContractError(f"contract {source} is invalid: {problems}") from exc


def compile_contract(text: str, source: str) -> bytes:
    """A bundled contract's YAML as the JSON document shipped beside it in the package layer
    (infrastructure/layers.py compiles them at build time): the same data, so the same contract, which
    :func:`load_contract` reads without importing a YAML parser (the serving function's cold start). It
    is checked first, so a layer never ships a contract that does not load; data JSON cannot hold (a
    YAML date) is refused by name."""
    data = _yaml_data(text, source)
    contract_from_data(data, source)
    try:
        return json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
    except TypeError as exc:
        raise ContractError(f"contract {source} holds a value JSON cannot: {exc}") from exc


def bundled_contracts() -> list[str]:
    """Names of the contracts shipped with the package."""
    folder = resources.files("pricepipe") / "contracts"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_contract(ref: str, s3_client: S3Client | None = None) -> Contract:
    """Load a contract by bundled name, file path, or ``s3://bucket/key`` URI."""
    if ref.startswith("s3://"):
        if s3_client is None:
            raise ContractError(f"contract {ref} is in S3 but no S3 client was given")
        from pricepipe import storage  # the serving path never reads a contract from S3 at import

        try:
            bucket, key = storage.split_uri(ref)
            body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise ContractError(f"contract {ref} could not be read: {exc}") from exc
        return parse_contract(body.decode("utf-8"), ref)
    if "/" not in ref and not ref.endswith((".yaml", ".yml")):
        folder = resources.files("pricepipe") / "contracts"
        compiled = folder / f"{ref}{COMPILED_SUFFIX}"  # only in a built layer (compile_contract)
        if compiled.is_file():
            return contract_from_data(json.loads(compiled.read_bytes()), f"{ref}.yaml (compiled)")
        resource = folder / f"{ref}.yaml"
        if not resource.is_file():
            raise ContractError(f"no bundled contract named {ref!r}; bundled: {', '.join(bundled_contracts())}")
        return parse_contract(resource.read_text(encoding="utf-8"), f"{ref}.yaml")
    path = Path(ref)
    if not path.is_file():
        raise ContractError(f"contract file {ref} does not exist")
    return parse_contract(path.read_text(encoding="utf-8"), ref)


# -- validation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationResult:
    """Rows split into those that satisfy the contract (typed) and those that do not (as received)."""

    good: pd.DataFrame
    bad: pd.DataFrame  # the received text values plus REASONS_COLUMN

    @property
    def rows_in(self) -> int:
        return len(self.good) + len(self.bad)


def read_csv(data: bytes, contract: Contract) -> pd.DataFrame:
    """:func:`read_csv_table` as a pandas frame (the ETL validates frames)."""
    return read_csv_table(data, contract).to_pandas(types_mapper=_pandas_type, date_as_object=False)


def read_csv_table(data: bytes, contract: Contract) -> pa.Table:
    """Parse CSV bytes for validation: typed columns when every value parses, text otherwise.

    The fast path lets Arrow parse each column as its contract type. A file with any unparsable
    value is read again with every column as text, so that :func:`validate` can name each bad value.
    Blank fields are missing values. A header name matches a contract column case-insensitively
    (``Sale_Price`` is ``sale_price``; contract names are lower case), unless the file also has the
    exact name. Raises ``ValueError`` when the bytes are not CSV at all.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read = _read_options(data, contract)

    arrow = {
        "integer": pa.int64(),
        "float": pa.float64(),
        "boolean": pa.bool_(),
        "string": pa.large_string(),
        "category": pa.large_string(),
        "date": pa.date32(),
        "datetime": pa.timestamp("us", tz="UTC"),
    }
    convert = pacsv.ConvertOptions(
        column_types={n: arrow[c.type] for n, c in contract.columns.items()},
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        true_values=list(_TRUE),
        false_values=list(_FALSE),
    )
    try:
        table = pacsv.read_csv(pa.py_buffer(data), read_options=read, convert_options=convert)
    except pa.ArrowInvalid as typed_error:
        text = pacsv.ConvertOptions(
            column_types={n: pa.large_string() for n in contract.columns},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        try:
            table = pacsv.read_csv(pa.py_buffer(data), read_options=read, convert_options=text)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"not a readable CSV file: {exc}") from typed_error
    return table


def _read_options(data: bytes, contract: Contract) -> Any:
    """Arrow's read options naming the file's columns as the contract does (see :func:`read_csv`);
    None (Arrow's defaults) when the header already does."""
    import csv

    import pyarrow.csv as pacsv

    first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    header = next(csv.reader([first]), [])
    lowered = [name.lower() for name in header]

    def matched(name: str, lower: str) -> str:
        unique = lower not in header and lowered.count(lower) == 1  # "Price" beside "price" stays as it is
        return lower if name not in contract.columns and lower in contract.columns and unique else name

    renamed = [matched(name, lower) for name, lower in zip(header, lowered, strict=True)]
    if renamed == header:
        return None
    return pacsv.ReadOptions(column_names=renamed, skip_rows=1)


def _pandas_type(arrow_type: pa.DataType) -> Any:
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    if pa.types.is_large_string(arrow_type) or pa.types.is_string(arrow_type):
        return pd.StringDtype("pyarrow")
    return None


def validate(frame: pd.DataFrame, contract: Contract) -> ValidationResult:  # noqa: C901, PLR0912, PLR0915 - one vectorised pass per rule of the contract, in the order the quarantine reasons are reported
    """Check values against the contract; return typed good rows and bad rows with reasons.

    ``frame`` holds each column either already typed (as :func:`read_csv`'s fast path gives) or as
    text (strings, missing as NA). Extra columns are ignored. A missing column rejects every row with
    that reason. Bad rows keep their values (as text when the file took the text path, else as
    parsed, e.g. ``no`` shows as ``False``) plus :data:`REASONS_COLUMN`.
    """
    import numpy as np
    import pandas as pd

    n = len(frame)
    checks: list[tuple[np.ndarray, pd.Series | str]] = []  # (row mask, reason per row or constant)
    typed: dict[str, pd.Series] = {}

    for name, col in contract.columns.items():
        if name not in frame.columns:
            checks.append((np.ones(n, dtype=bool), f"{name}: column is missing from the file"))
            typed[name] = pd.Series([None] * n, index=frame.index, dtype=object)  # every row is rejected
            continue
        values, missing, unparsable = _coerce(frame[name], col)
        typed[name] = values
        if not col.nullable and missing.any():
            checks.append((missing, f"{name}: missing value"))
        if unparsable.any():
            checks.append((unparsable, name + ": " + _quote(frame[name]) + f" is not a valid {col.type}"))
        ok = ~missing & ~unparsable
        if col.min is not None or col.max is not None:
            numbers = values.to_numpy(dtype=float, na_value=np.nan)
            if col.min is not None:
                below = ok & (numbers < col.min)
                if below.any():
                    checks.append((below, name + ": " + _text(frame[name]) + f" is below the minimum {col.min:g}"))
            if col.max is not None:
                above = ok & (numbers > col.max)
                if above.any():
                    checks.append((above, name + ": " + _text(frame[name]) + f" is above the maximum {col.max:g}"))
        if col.allowed is not None:
            outside = ok & ~values.isin(col.allowed).to_numpy()
            if outside.any():
                checks.append((outside, name + ": " + _quote(frame[name]) + " is not one of the allowed values"))
        if col.max_length is not None:
            long = ok & (values.str.len().fillna(0).to_numpy() > col.max_length)
            if long.any():
                checks.append((long, name + f": longer than {col.max_length} characters"))

    if all(k in typed for k in contract.key) and n:
        dup = pd.DataFrame({k: typed[k] for k in contract.key}).duplicated(keep="first").to_numpy()
        if dup.any():
            checks.append((dup, "key: repeats an earlier row of the same file"))

    bad_mask = np.zeros(n, dtype=bool)
    for mask, _ in checks:
        bad_mask |= mask
    bad_positions = np.flatnonzero(bad_mask)

    keep = ~bad_mask
    good = pd.DataFrame({name: typed[name][keep] for name in typed})
    good = good.reset_index(drop=True)
    for name, col in contract.columns.items():
        if col.type == "integer" and not col.nullable and name in good:
            good[name] = good[name].astype("int64")

    bad = frame.iloc[bad_positions].astype("string").copy()
    reasons = np.full(len(bad_positions), "", dtype=object)
    for mask, reason in checks:
        hit = mask[bad_positions]
        if not hit.any():
            continue
        if isinstance(reason, str):
            text: Any = reason
        else:
            text = reason.iloc[bad_positions[hit]].astype(str).to_numpy()
        current = reasons[hit]
        reasons[hit] = np.where(current == "", text, current + "; " + text)
    bad[REASONS_COLUMN] = reasons
    return ValidationResult(good=good, bad=bad.reset_index(drop=True))


def _text(values: pd.Series) -> pd.Series:
    return values.astype("string").fillna("")


def _quote(values: pd.Series) -> pd.Series:
    return "'" + _text(values).str.slice(0, 60) + "'"


def _coerce(raw: pd.Series, col: Column) -> tuple[pd.Series, Any, Any]:
    """Typed values, a mask of missing entries and a mask of present-but-unparsable entries."""
    import numpy as np
    import pandas as pd

    if _already_typed(raw, col):
        missing = raw.isna().to_numpy()
        unparsable = np.zeros(len(raw), dtype=bool)
        if col.type == "float":
            unparsable = ~missing & ~np.isfinite(raw.to_numpy(dtype=float, na_value=0.0))
        return raw, missing, unparsable

    text = raw.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy()
    present = ~missing
    if col.type in ("integer", "float"):
        numbers = pd.to_numeric(text.where(present), errors="coerce")
        bad = numbers.isna().to_numpy() & present
        if col.type == "integer":
            whole = numbers.isna() | (numbers == np.floor(numbers))
            bad |= ~whole.to_numpy()
            numbers = numbers.where(whole).astype("Int64")
        else:
            numbers = numbers.astype("float64")
            bad |= present & ~np.isfinite(numbers.to_numpy(dtype=float, na_value=0.0))
        return numbers, missing, bad
    if col.type == "boolean":
        lowered = text.str.lower()
        flags = pd.Series(pd.NA, index=text.index, dtype="boolean")
        flags[lowered.isin(_TRUE).to_numpy()] = True
        flags[lowered.isin(_FALSE).to_numpy()] = False
        return flags, missing, flags.isna().to_numpy() & present
    if col.type == "date":
        parsed = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
        return parsed, missing, parsed.isna().to_numpy() & present
    if col.type == "datetime":
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        return parsed, missing, parsed.isna().to_numpy() & present
    return text.where(present, None), missing, np.zeros(len(text), dtype=bool)


def _already_typed(raw: pd.Series, col: Column) -> bool:
    import pandas as pd

    dtype = raw.dtype
    if col.type == "integer":
        return pd.api.types.is_integer_dtype(dtype)
    if col.type == "float":
        return pd.api.types.is_float_dtype(dtype)
    if col.type == "boolean":
        return pd.api.types.is_bool_dtype(dtype)
    if col.type in ("date", "datetime"):
        return pd.api.types.is_datetime64_any_dtype(dtype)
    return False
