"""Batch scoring's steps (pricepipe.scoring) on a real PostgreSQL and moto's S3, run as the state
machine runs them: plan, each manifest part, summarize."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pricepipe import scoring
from pricepipe.contract import Contract
from pricepipe.scoring import ScoringRefused
from tests.scoring_support import api_predictions, hotel_model, register

INPUT = "scoring/batch-1/"


@pytest.fixture(scope="module")
def model(hotel_rates: pd.DataFrame, contract: Contract) -> Any:
    return hotel_model(hotel_rates, contract)


@pytest.fixture
def registered(conn: Any, s3: Any, settings: Any, model: Any) -> Any:
    register(conn, s3, settings.artifacts_bucket, model, "1")
    return model


def rows(hotel_rates: pd.DataFrame, start: int, n: int) -> pd.DataFrame:
    return hotel_rates.iloc[start : start + n].reset_index(drop=True)


def put_csv(s3: Any, bucket: str, key: str, frame: pd.DataFrame) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=frame.to_csv(index=False).encode())


def put_parquet(s3: Any, bucket: str, key: str, frame: pd.DataFrame, row_group_size: int) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, row_group_size=row_group_size)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


def run(
    s3: Any, conn: Any, settings: Any, contract: Contract, request: dict[str, Any], execution: str
) -> dict[str, Any]:
    """The state machine's steps in order, each part through the scorer (as the Map's children)."""
    planned = scoring.plan(s3, conn, settings, contract, request, execution)
    items = s3.get_object(Bucket=planned["manifest"]["bucket"], Key=planned["manifest"]["key"])["Body"].read()
    scorer = scoring.Scorer(contract)
    results = []
    for part in pd.read_json(io.BytesIO(items), orient="records", dtype=False).to_dict("records"):
        event = {"part": part, "run": planned["run"], "model": planned["model"], "interval": planned["interval"]}
        results.append(scoring.score_part(conn, s3, settings, scorer, event))
    summary = scoring.summarize(conn, settings, planned["run"])
    summary["results"] = results
    summary["planned"] = planned
    return summary


def read_predictions(s3: Any, bucket: str, run_id: str) -> pd.DataFrame:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"scores/{run_id}/predictions/").get("Contents", [])
    tables = [pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())) for o in listed]
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame()


def with_bad_rows(frame: pd.DataFrame) -> pd.DataFrame:
    bad = frame.copy()
    bad.loc[3, "lead_time"] = -5  # below the contract's min
    bad.loc[7, "meal"] = "room_only"  # not an allowed category
    bad["adults"] = bad["adults"].astype(object)
    bad.loc[11, "adults"] = "two"  # not an integer
    return bad


def test_every_row_is_scored_or_rejected_with_its_reasons_across_split_files(
    s3: Any, conn: Any, settings: Any, contract: Contract, registered: Any, hotel_rates: pd.DataFrame
) -> None:
    bucket = settings.landing_bucket
    csv_rows = with_bad_rows(rows(hotel_rates, 5000, 400))
    parquet_rows = rows(hotel_rates, 6000, 300)
    parquet_rows.loc[5, "meal"] = "room_only"  # refused in a dictionary-encoded Parquet column
    put_csv(s3, bucket, f"{INPUT}a.csv", csv_rows)
    put_parquet(s3, bucket, f"{INPUT}b.parquet", parquet_rows, row_group_size=50)

    summary = run(s3, conn, settings, contract, {"input": INPUT, "part_bytes": 20_000, "part_rows": 120}, "exec-1")

    assert summary["planned"]["parts"] > 4, "the CSV cut in byte ranges, the Parquet file in row groups"
    country_missing = int(csv_rows["country"].isna().sum() + parquet_rows["country"].isna().sum())
    assert summary["rows_in"] == 700
    assert summary["rows_rejected"] == 4 + country_missing
    assert summary["rows_scored"] == 700 - summary["rows_rejected"]
    assert summary["status"] == "succeeded" and summary["parts_failed"] == 0

    scored = read_predictions(s3, settings.artifacts_bucket, "exec-1")
    every = pd.concat([csv_rows, parquet_rows], ignore_index=True)
    bad_ids = {int(csv_rows.loc[i, "booking_id"]) for i in (3, 7, 11)} | {int(parquet_rows.loc[5, "booking_id"])}
    bad_ids |= set(every.loc[every["country"].isna(), "booking_id"].astype(int))
    assert sorted(scored["booking_id"]) == sorted(set(every["booking_id"].astype(int)) - bad_ids), "each row once"
    assert set(scored["model_name"]) == {"price-model"} and set(scored["model_version"]) == {"1"}
    good = parquet_rows[~parquet_rows["booking_id"].isin(bad_ids)]
    expected = dict(zip(good["booking_id"], api_predictions(registered, contract, good), strict=True))
    got = scored.set_index("booking_id")["prediction"]
    assert np.allclose([got[k] for k in expected], list(expected.values()), rtol=1e-9), "as the API prices them"

    rejected = pd.concat(
        pd.read_csv(io.BytesIO(s3.get_object(Bucket=settings.artifacts_bucket, Key=r.rejected_key)["Body"].read()))
        for r in summary["results"]
        if r.rejected_key
    )
    reasons = dict(zip(rejected["booking_id"].astype(int), rejected["_reasons"], strict=True))
    assert "lead_time: Input should be greater than or equal to 0" in reasons[int(csv_rows.loc[3, "booking_id"])]
    assert reasons[int(csv_rows.loc[7, "booking_id"])].startswith("meal: Input should be")
    assert reasons[int(parquet_rows.loc[5, "booking_id"])].startswith("meal: Input should be")
    assert "adults: Input should be a valid integer" in reasons[int(csv_rows.loc[11, "booking_id"])]
    assert set(reasons) == bad_ids

    with conn.cursor() as cur:
        stored = cur.execute(
            "SELECT rows_in, rows_scored, rows_rejected, status FROM monitoring.scoring_runs WHERE run_id = 'exec-1'"
        ).fetchone()
    assert stored == (700, summary["rows_scored"], summary["rows_rejected"], "succeeded")


def test_rerunning_a_run_id_writes_nothing_twice_and_another_scoring_under_it_is_refused(
    s3: Any, conn: Any, settings: Any, contract: Contract, registered: Any, hotel_rates: pd.DataFrame, model: Any
) -> None:
    put_csv(s3, settings.landing_bucket, f"{INPUT}a.csv", rows(hotel_rates, 7000, 200))
    request = {"input": INPUT, "run": "nightly", "part_bytes": 10_000}
    first = run(s3, conn, settings, contract, request, "exec-a")
    objects = s3.list_objects_v2(Bucket=settings.artifacts_bucket, Prefix="scores/nightly/")["Contents"]

    again = run(s3, conn, settings, contract, request, "exec-b")

    assert {r.status for r in again["results"]} == {"skipped"}
    assert {k: again[k] for k in ("rows_in", "rows_scored", "rows_rejected")} == {
        k: first[k] for k in ("rows_in", "rows_scored", "rows_rejected")
    }
    after = s3.list_objects_v2(Bucket=settings.artifacts_bucket, Prefix="scores/nightly/")["Contents"]
    assert [(o["Key"], o["ETag"], o["LastModified"]) for o in after] == [
        (o["Key"], o["ETag"], o["LastModified"]) for o in objects
    ]
    assert len(read_predictions(s3, settings.artifacts_bucket, "nightly")) == first["rows_scored"]

    register(conn, s3, settings.artifacts_bucket, model, "2", stage="challenger")
    with pytest.raises(ScoringRefused, match="already scored"):
        scoring.plan(s3, conn, settings, contract, {**request, "model": "challenger"}, "exec-c")


def test_an_interval_level_adds_each_rows_interval_around_its_prediction(
    s3: Any, conn: Any, settings: Any, contract: Contract, registered: Any, hotel_rates: pd.DataFrame
) -> None:
    put_parquet(s3, settings.landing_bucket, f"{INPUT}b.parquet", rows(hotel_rates, 8000, 100), row_group_size=100)

    run(s3, conn, settings, contract, {"input": INPUT, "interval": 0.8, "model": "1"}, "exec-i")

    scored = read_predictions(s3, settings.artifacts_bucket, "exec-i")
    assert (scored["interval_low"] <= scored["prediction"]).all() and (
        scored["prediction"] <= scored["interval_high"]
    ).all()
    assert set(scored["interval_level"]) == {0.8}


def test_a_file_with_a_column_the_contract_does_not_know_has_every_row_rejected_with_the_reason(
    s3: Any, conn: Any, settings: Any, contract: Contract, registered: Any, hotel_rates: pd.DataFrame
) -> None:
    put_csv(s3, settings.landing_bucket, f"{INPUT}odd.csv", rows(hotel_rates, 100, 20).assign(colour="red"))

    summary = run(s3, conn, settings, contract, {"input": INPUT}, "exec-u")

    assert (summary["rows_in"], summary["rows_scored"], summary["rows_rejected"]) == (20, 0, 20)
    assert summary["rejected_parts"][0]["reason"] == "columns not in contract 'hotel_rates': colour"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"input": "landing/hotel_rates/"}, "outside s3://pricepipe-landing/scoring/"),
        ({"input": INPUT, "model": "9"}, "no version '9'"),
        ({"input": INPUT, "interval": 1.5}, "interval must be a level in"),
        ({"input": "scoring/nothing-here/"}, "no .csv or .parquet files"),
    ],
)
def test_a_scoring_that_cannot_go_ahead_is_refused_naming_why(
    s3: Any, conn: Any, settings: Any, contract: Contract, registered: Any, request_: dict[str, Any], message: str
) -> None:
    put_csv(s3, settings.landing_bucket, f"{INPUT}a.csv", pd.DataFrame({"booking_id": [1]}))
    with pytest.raises(ScoringRefused, match=message):
        scoring.plan(s3, conn, settings, contract, request_, "exec-x")
