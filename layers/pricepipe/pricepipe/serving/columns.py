"""Batch rows → validated columns in a few C-level passes per column: the fast path of large batches.

Validating 1,000 rows through the pydantic batch model builds 1,000 model instances and checks
~30,000 values one by one (~6 ms here, most of DESIGN §5's 10 ms for the whole request). But the
model wants columns anyway, and a column can be checked at once: the set of its value types, its
min and max, its set of values against the allowed ones. :meth:`ColumnCheck.columns` does that over
rows already parsed from JSON and returns the columns (numeric ones as numpy arrays, ready for the
model), or ``None`` as soon as anything is unusual — a type other than the plain JSON one, a value
out of range, an unknown field, a datetime column — and the caller then validates with the pydantic
models, which accept or report exactly as they always do. So this path accepts only what the models
accept and yields the same values (tests hold the two equal); every error message comes from the
models.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from pricepipe.features import DATE_PARTS
from pricepipe.serving.prediction_log import Column

if TYPE_CHECKING:
    from pricepipe.contract import Contract

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FLOAT_LIMIT = 1e300  # beyond this, a JSON number is left to the models to judge
_DATE_CACHE_LIMIT = 100_000
_NONE = type(None)


@dataclass(frozen=True)
class _Rule:
    name: str
    kind: str  # integer | float | boolean | string | date
    nullable: bool
    low: float | None
    high: float | None
    max_length: int | None
    allowed: frozenset[Any] | None


class ColumnCheck:
    """The contract's input checks, applied a column at a time (see the module docstring)."""

    def __init__(self, contract: Contract) -> None:
        self.names: tuple[str, ...] = contract.input_columns
        self.required = frozenset(n for n in self.names if not contract.columns[n].nullable)
        self.known = frozenset(self.names)
        self.enabled = bool(self.names) and all(contract.columns[n].type != "datetime" for n in self.names)
        names = self.names
        self._row_values: Callable[[Any], tuple[Any, ...]] = (
            itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
        )
        self._rules = []
        for name in names:
            column = contract.columns[name]
            allowed = None
            if column.allowed:
                allowed = frozenset(column.allowed) | ({None} if column.nullable else frozenset())
            self._rules.append(
                _Rule(
                    name=name,
                    kind="string" if column.type == "category" else column.type,
                    nullable=column.nullable,
                    low=column.min,
                    high=column.max,
                    max_length=column.max_length,
                    allowed=allowed,
                )
            )
        self._dates: dict[str, dt.date] = {}  # ISO text → date, kept across requests (dates repeat)

    def columns(self, rows: Sequence[Any]) -> dict[str, Column] | None:
        """Every input column of ``rows``, or ``None``: let the pydantic models decide."""
        if not self.enabled or not rows:
            return None
        try:
            values = list(map(self._row_values, rows))  # KeyError: a field left out; TypeError: not an object
            complete = all(type(row) is dict for row in rows) and set(map(len, rows)) == {len(self.names)}
        except (KeyError, TypeError):
            complete = False
        if complete:
            raw: list[Sequence[Any]] = list(zip(*values, strict=True))
        else:
            # nullable fields may be left out; a missing required or an unknown field is for the models
            if not all(type(row) is dict and self.required <= row.keys() <= self.known for row in rows):
                return None
            raw = [[row.get(name) for row in rows] for name in self.names]
        out: dict[str, Column] = {}
        for rule, column in zip(self._rules, raw, strict=True):
            checked = self._check(rule, column)
            if checked is None:
                return None
            out[rule.name] = checked
        return out

    def _check(self, rule: _Rule, values: Sequence[Any]) -> Column | None:
        if rule.allowed is not None:
            try:
                return values if set(values) <= rule.allowed else None
            except TypeError:  # an unhashable value (a list, an object) is no category
                return None
        if rule.kind in ("integer", "float"):
            return self._numbers(rule, values)
        kinds = set(map(type, values))
        if _NONE in kinds:
            if not rule.nullable:
                return None
            kinds.discard(_NONE)
        if rule.kind == "boolean":
            return values if kinds <= {bool} else None
        if rule.kind == "string":
            if not kinds <= {str}:
                return None
            present = [v for v in values if v is not None] if rule.nullable else values
            if rule.max_length is not None and present and max(map(len, present)) > rule.max_length:
                return None
            return values
        if rule.kind == "date" and kinds <= {str}:
            return self._parse_dates(values)
        return None

    @staticmethod
    def _numbers(rule: _Rule, values: Sequence[Any]) -> Column | None:
        """A numeric column as a numpy array (what the model reads), its type and range checked."""
        integer = rule.kind == "integer"
        try:
            # numpy infers the dtype in C: int64 for JSON integers, float64 once a float is among them,
            # "object" for gaps (None) or integers beyond 64 bits, text or bool kinds for the rest
            array = np.array(values)
        except (ValueError, OverflowError):  # nested lists of uneven length and the like
            return None
        kind = array.dtype.kind
        if kind == "O":
            return ColumnCheck._numbers_with_gaps(rule, values) if rule.nullable else None
        if kind not in ("iu" if integer else "iuf"):
            return None  # text, bool, nested values: pydantic may coerce some and names the rest
        if kind != "f" and not integer:
            array = array.astype(np.float64)  # JSON's 7 for a float column: the model reads 7.0
        if len(array):
            low, high = array.min(), array.max()
            if not integer and not (low > -_FLOAT_LIMIT and high < _FLOAT_LIMIT):
                return None
            if (rule.low is not None and low < rule.low) or (rule.high is not None and high > rule.high):
                return None
        return array

    @staticmethod
    def _numbers_with_gaps(rule: _Rule, values: Sequence[Any]) -> Sequence[Any] | None:
        """A nullable numeric column holding None: kept as a list, which the model reads with gaps."""
        integer = rule.kind == "integer"
        present = [v for v in values if v is not None]
        if not set(map(type, present)) <= ({int} if integer else {int, float}):
            return None
        if present:
            low, high = min(present), max(present)
            if not (low > -_FLOAT_LIMIT and high < _FLOAT_LIMIT):
                return None
            if (rule.low is not None and low < rule.low) or (rule.high is not None and high > rule.high):
                return None
        return values if integer else [None if v is None else float(v) for v in values]

    def _parse_dates(self, values: Sequence[Any]) -> list[Any] | None:
        cache = self._dates
        if len(cache) > _DATE_CACHE_LIMIT:  # a bound, should clients send every day of three centuries
            cache.clear()
        for text in set(values):
            if text is None or text in cache:
                continue
            if len(text) != 10 or not _ISO_DATE.fullmatch(text):
                return None  # other spellings the models may accept: let them decide
            try:
                cache[text] = dt.date.fromisoformat(text)
            except ValueError:
                return None
        return [None if v is None else cache[v] for v in values]


def plain(values: Column) -> list[Any]:
    """A column as a list of Python values (numpy arrays become ints and floats), e.g. for JSON."""
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def feature_columns(columns: Mapping[str, Column], contract: Contract) -> dict[str, Column]:
    """The model's features for columns of validated input: :func:`pricepipe.features.feature_row`
    applied to every row, a column at a time (date parts are computed once per distinct date)."""
    out: dict[str, Column] = {name: columns[name] for name in contract.passthrough_features}
    if contract.event_time is not None and contract.date_part_columns:
        moments = columns[contract.event_time]
        parts = [DATE_PARTS[p][1] for p in contract.features.event_time_parts]
        by_day = {m: tuple(part(_day(m)) for part in parts) for m in set(moments)}
        per_row = map(by_day.__getitem__, moments)
        out.update(zip(contract.date_part_columns, zip(*per_row, strict=True), strict=True))
    return out


def _day(value: Any) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value
