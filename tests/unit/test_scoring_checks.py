"""The API's column rules over Arrow columns (batch scoring) refuse exactly the rows the API's
request models refuse."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from pricepipe.contract import Contract
from pricepipe.scoring import _arrow_type
from pricepipe.serving.columns import ColumnCheck
from pricepipe.serving.requests import request_models


def good_row(contract: Contract) -> dict[str, Any]:
    return dict(request_models(contract, 1).example)


BAD_VALUES = [
    ("lead_time", -1),  # below min
    ("lead_time", 1001),  # above max
    ("historical_adr", float("inf")),  # not finite
    ("historical_adr", float("nan")),
    ("meal", "room_only"),  # not an allowed category
    ("country", "x" * 17),  # longer than max_length
    ("country", None),  # required
    ("arrival_date", None),
]


@pytest.mark.parametrize("dictionary", [False, True], ids=["plain", "dictionary-encoded text"])
def test_the_arrow_rules_refuse_exactly_what_the_request_models_refuse(contract: Contract, dictionary: bool) -> None:
    rows = [good_row(contract)]
    for name, value in BAD_VALUES:
        rows.append({**good_row(contract), name: value})
    rows.append({**good_row(contract), "lead_time": 1000, "country": "x" * 16, "historical_adr": 0.0})  # edges: fine
    columns = {}
    for name in contract.input_columns:
        values = [r[name] for r in rows]
        if contract.columns[name].type == "date":
            values = [None if v is None else dt.date.fromisoformat(v) for v in values]
        columns[name] = pa.array(values, _arrow_type(contract.columns[name].type), from_pandas=False)
        if dictionary and contract.columns[name].type in ("string", "category"):
            columns[name] = columns[name].dictionary_encode()  # as Parquet text columns are read

    refused = ColumnCheck(contract).violations(columns, len(rows))

    mask = np.zeros(len(rows), dtype=bool)
    for column_mask in refused.values():
        mask |= column_mask
    model = request_models(contract, 1).row

    def accepted(row: dict[str, Any]) -> bool:
        try:
            model.model_validate(row)
        except ValidationError:
            return False
        return True

    assert list(~mask) == [accepted(r) for r in rows]
    assert list(mask) == [False, *[True] * len(BAD_VALUES), False]


@pytest.mark.parametrize("missing", ["lead_time", "country"])
def test_a_required_column_left_out_refuses_every_row(contract: Contract, missing: str) -> None:
    refused = ColumnCheck(contract).violations({}, 3)
    assert refused[missing].tolist() == [True, True, True]
