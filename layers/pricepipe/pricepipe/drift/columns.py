"""Column access: the columns a check or a reference reads, from a DataFrame or a mapping of arrays.

Numeric columns become float64 arrays (NaN = missing), categorical ones :class:`Coded` integer codes,
so everything downstream is numpy; pandas is touched only to take columns out of a DataFrame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pricepipe.errors import DriftInputError


@dataclass(frozen=True)
class Coded:
    """A categorical column as integer codes into ``labels``; -1 marks a missing value."""

    codes: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.codes)


def as_columns(data: Any, numeric: Sequence[str], categorical: Sequence[str]) -> tuple[dict[str, Any], int]:
    """Numeric columns as float64 arrays (NaN = missing) and categorical ones as :class:`Coded`, from
    a pandas DataFrame or a mapping of arrays; the rows counted. Names every missing column."""
    names = list(data.columns) if _is_frame(data) else list(data.keys()) if isinstance(data, Mapping) else None
    if names is None:
        raise DriftInputError(
            f"current data must be a pandas DataFrame or a mapping of arrays, got {type(data).__name__}"
        )
    absent = [name for name in (*numeric, *categorical) if name not in names]
    if absent:
        raise DriftInputError(f"the current data lacks feature(s) the reference has: {', '.join(absent)}")
    out: dict[str, Any] = {}
    lengths = set()
    for name in numeric:
        out[name] = numeric_column(name, data[name])
        lengths.add(len(out[name]))
    for name in categorical:
        out[name] = coded_column(name, data[name])
        lengths.add(len(out[name]))
    if len(lengths) > 1:
        raise DriftInputError(f"the current columns differ in length: {sorted(lengths)}")
    rows = lengths.pop() if lengths else (len(data) if _is_frame(data) else 0)
    return out, rows


def _is_frame(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "columns")


def numeric_column(name: str, values: Any) -> np.ndarray:
    try:
        if hasattr(values, "to_numpy"):
            return np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DriftInputError(
            f"feature {name!r} is numeric in the reference but its current values are not: {exc}"
        ) from exc


def coded_column(name: str, values: Any) -> Coded:
    if isinstance(values, Coded):
        return values
    if hasattr(values, "cat"):  # pandas categorical: the codes exist already
        return Coded(np.asarray(values.cat.codes, dtype=np.int64), tuple(str(c) for c in values.cat.categories))
    if type(values).__module__.startswith("pandas"):
        import pandas as pd

        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        return Coded(np.asarray(codes, dtype=np.int64), tuple(str(u) for u in uniques))
    array = np.asarray(values)
    if array.ndim != 1:
        raise DriftInputError(f"feature {name!r} must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind == "O":
        missing = np.fromiter((v is None or (isinstance(v, float) and math.isnan(v)) for v in array), bool, len(array))
    elif array.dtype.kind == "f":
        missing = np.isnan(array)
    else:
        missing = np.zeros(len(array), dtype=bool)
    codes = np.full(len(array), -1, dtype=np.int64)
    if (~missing).any():
        labels, inverse = np.unique(array[~missing].astype(str), return_inverse=True)
        codes[~missing] = inverse
        return Coded(codes, tuple(str(v) for v in labels))
    return Coded(codes, ())
