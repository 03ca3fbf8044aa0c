"""The scoring state machine (the ASL file CDK deploys) on the local cloud, with the real handlers:
a few thousand rows in three files, one cut into byte ranges and one into row groups."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipectl import flows
from pipectl.datasource import hotel_rates
from pipectl.target import Target
from pricepipe.contract import load_contract
from tests.scoring_support import hotel_model, register

pytestmark = pytest.mark.e2e

PREFIX = "scoring/nightly/"


@pytest.fixture(scope="module")
def champion(target: Target) -> None:
    contract = load_contract("hotel_rates")
    assert target.database_url
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        register(conn, target.client("s3"), target.artifacts_bucket, hotel_model(hotel_rates(), contract), "1")


def objects(target: Target, prefix: str) -> list[tuple[str, str, Any]]:
    listed = target.client("s3").list_objects_v2(Bucket=target.artifacts_bucket, Prefix=prefix).get("Contents", [])
    return [(o["Key"], o["ETag"], o["LastModified"]) for o in listed]


def test_a_prefix_of_files_is_scored_in_parts_and_a_rerun_writes_nothing_twice(target: Target, champion: None) -> None:
    frame = hotel_rates().dropna(subset=["country"])
    s3 = target.client("s3")
    big, small, columnar = frame.iloc[2000:4000], frame.iloc[4000:4500].copy(), frame.iloc[5000:6000]
    small.loc[small.index[:5], "lead_time"] = -1  # five rows the contract refuses
    s3.put_object(Bucket=target.landing_bucket, Key=f"{PREFIX}big.csv", Body=big.to_csv(index=False).encode())
    s3.put_object(Bucket=target.landing_bucket, Key=f"{PREFIX}small.csv", Body=small.to_csv(index=False).encode())
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(columnar, preserve_index=False), buffer, row_group_size=250)
    s3.put_object(Bucket=target.landing_bucket, Key=f"{PREFIX}columnar.parquet", Body=buffer.getvalue())
    request = {"input": f"s3://{target.landing_bucket}/{PREFIX}", "run": "e2e", "part_bytes": 150_000, "part_rows": 500}

    execution = flows.run(target, "scoring", request)

    assert execution.status == "SUCCEEDED", execution.cause
    summary = execution.output
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_rejected"]) == (3500, 3495, 5)
    assert summary["parts"] >= 5 and summary["parts_failed"] == 0
    assert summary["model"] == {"name": "price-model", "version": "1"}
    written = objects(target, "scores/e2e/")
    keys = [k for k, _, _ in written if "/predictions/" in k]
    scored = pa.concat_tables(
        [pq.read_table(io.BytesIO(s3.get_object(Bucket=target.artifacts_bucket, Key=k)["Body"].read())) for k in keys]
    ).to_pandas()
    assert len(scored) == 3495 and scored["booking_id"].is_unique
    assert set(scored["booking_id"]) == set(pd.concat([big, small.iloc[5:], columnar])["booking_id"])
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        stored = conn.execute(
            "SELECT rows_in, rows_scored, rows_rejected, status FROM monitoring.scoring_runs WHERE run_id = 'e2e'"
        ).fetchone()
    assert stored == (3500, 3495, 5, "succeeded")

    again = flows.run(target, "scoring", request)

    assert again.status == "SUCCEEDED", again.cause
    assert {k: again.output[k] for k in ("rows_in", "rows_scored", "rows_rejected")} == {
        "rows_in": 3500,
        "rows_scored": 3495,
        "rows_rejected": 5,
    }
    assert objects(target, "scores/e2e/") == written, "the rerun rewrote nothing"


def test_a_model_that_does_not_exist_fails_the_run_naming_it(target: Target, champion: None) -> None:
    execution = flows.run(target, "scoring", {"input": f"s3://{target.landing_bucket}/{PREFIX}", "model": "42"})

    assert (execution.status, execution.error) == ("FAILED", "ScoringRefused")
    assert "no version '42'" in (execution.cause or "")


def test_pipectl_score_uploads_local_files_and_prints_the_runs_totals(
    target: Target, champion: None, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipectl.commands import scoring as command

    hotel_rates().dropna(subset=["country"]).iloc[:300].to_csv(tmp_path / "catalogue.csv", index=False)

    staged = command.stage_input(target, str(tmp_path), "cli")
    execution = command.run_scoring(target, {"input": staged, "run": "cli", "interval": 0.8})

    assert staged == f"s3://{target.landing_bucket}/scoring/cli/"
    assert execution.succeeded, execution.cause
    assert (execution.output["rows_in"], execution.output["rows_scored"]) == (300, 300)
    assert "scoring run cli" in capsys.readouterr().out
