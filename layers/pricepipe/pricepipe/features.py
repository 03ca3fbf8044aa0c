"""Model features derived from contract-valid rows.

One definition serves ETL and training (whole frames) and serving (single rows without pandas):
each derived feature is declared once in :data:`DATE_PARTS` with a vectorised and a scalar form,
and a test holds the two forms equal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pricepipe.contract import Contract


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


# part -> (vectorised over a datetime Series, scalar over one date)
DATE_PARTS: dict[str, tuple[Callable[[Any], Any], Callable[[dt.date], int | bool]]] = {
    "year": (lambda s: s.dt.year, lambda d: d.year),
    "month": (lambda s: s.dt.month, lambda d: d.month),
    "day_of_week": (lambda s: s.dt.day_of_week, lambda d: d.weekday()),
    "day_of_year": (lambda s: s.dt.day_of_year, lambda d: d.timetuple().tm_yday),
    "week_of_year": (lambda s: s.dt.isocalendar().week, lambda d: d.isocalendar().week),
    "is_weekend": (lambda s: s.dt.day_of_week >= 5, lambda d: d.weekday() >= 5),
}


def build_features(rows: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """The ``processed_features`` frame for contract-valid rows: key, event time, features, target.

    Columns come out in :attr:`Contract.feature_table_columns` order; a missing target (rows to
    predict rather than to train on) is allowed.
    """
    import pandas as pd

    out: dict[str, Any] = {}
    for name in contract.key:
        out[name] = rows[name]
    if contract.event_time is not None:
        moment = pd.to_datetime(rows[contract.event_time])
        out[contract.event_time] = rows[contract.event_time]
    for name in contract.passthrough_features:
        out[name] = rows[name]
    if contract.event_time is not None:
        for part, column in zip(contract.features.event_time_parts, contract.date_part_columns, strict=True):
            values = DATE_PARTS[part][0](moment)
            out[column] = values.astype("bool" if part == "is_weekend" else "int32")
    target = contract.target
    out[target] = rows[target] if target in rows else pd.Series(float("nan"), index=rows.index)
    return pd.DataFrame(out, index=rows.index)


def feature_row(record: Mapping[str, Any], contract: Contract) -> dict[str, Any]:
    """Features of one input record without pandas (the serving path)."""
    row = {name: record.get(name) for name in contract.passthrough_features}
    if contract.event_time is not None:
        moment = _as_date(record[contract.event_time])
        for part, column in zip(contract.features.event_time_parts, contract.date_part_columns, strict=True):
            row[column] = DATE_PARTS[part][1](moment)
    return row
