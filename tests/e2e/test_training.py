"""The training state machine on the local cloud: a real Batch job (a local process), MLflow in
PostgreSQL, the comparison with the champion and both sides of its Choice."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

from pipectl import datasource, flows
from pipectl.target import Target
from pricepipe import registry, storage
from pricepipe.contract import load_contract
from pricepipe.settings import Settings
from tests.conftest import land_and_load
from tests.e2e.support import SEARCH_GUARD_S, SEARCH_TRIALS, metrics_named

pytestmark = pytest.mark.e2e
DAYS = 75
FAST = {"window_days": 75, "holdout_days": 14, "time_budget_s": SEARCH_GUARD_S}


@pytest.fixture(scope="module")
def loaded(target: Target) -> dt.date:
    """75 days of hotel_rates through the real ETL step into the cloud's database."""
    assert target.database_url
    settings = Settings(database_url=target.database_url)
    days = datasource.select_days(days=DAYS)
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        land_and_load(conn, target.client("s3"), load_contract("hotel_rates"), settings, days)
    return days[-1]


def models(target: Target) -> list[tuple[str, str]]:
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        return [(v, s) for v, s in conn.execute("SELECT version, stage FROM model_registry.models ORDER BY id")]


def search_of(target: Target, execution: flows.Execution) -> dict[str, Any]:
    """The search part of the job's result document: how many trials ran and what stopped them."""
    return dict(storage.get_json(target.client("s3"), *storage.split_uri(execution.output["result_uri"]))["search"])


def test_a_first_model_is_trained_registered_and_ready_for_promotion(
    target: Target, loaded: dt.date, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution = flows.run(target, "training", {**FAST, "reason": "test"})
    assert execution.status == "SUCCEEDED", execution.cause
    search = search_of(target, execution)
    assert (search["trials"], search["stopped_by"]) == (2 * SEARCH_TRIALS, "trials")
    evaluation = execution.output["outcome"]["evaluation"]
    assert evaluation["decision"] == "promote" and evaluation["reason"] == "no champion yet"
    assert evaluation["holdout"]["end"] == loaded.isoformat() and evaluation["holdout"]["rows"] > 100
    assert evaluation["challenger"]["metrics"]["rmse"] > 0
    assert target.database_url
    client = registry.client_for(registry.mlflow_uri_from_dsn(target.database_url))
    # the flow handed the challenger over to the promotion flow; with no champion it is switched in
    promotion = flows.wait(target, execution.output["promotion"]["execution_arn"])
    assert promotion.status == "SUCCEEDED", promotion.cause
    assert models(target) == [("1", "champion")]
    assert registry.alias_version(client, "price-model", "champion") == "1"
    # MLflow's S3 client: this cloud's endpoint (MLflow caches clients by endpoint, so name it)
    assert target.endpoint
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", target.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    run = client.get_run(client.get_model_version("price-model", "1").run_id)
    assert {"holdout_rmse", "holdout_mae", "holdout_r2"} <= set(run.data.metrics), sorted(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "serving" in artifacts and any(p.startswith("plots") for p in artifacts)


def test_a_challenger_that_is_not_better_keeps_the_champion(target: Target, loaded: dt.date) -> None:
    # same data and seed: the new challenger's never-saw-the-holdout fit cannot beat the champion's
    # served model, which was refit on the whole window
    execution = flows.run(target, "training", {**FAST, "reason": "test"})
    assert execution.status == "SUCCEEDED", execution.cause
    assert search_of(target, execution)["stopped_by"] == "trials"
    evaluation = execution.output["outcome"]["evaluation"]
    assert evaluation["decision"] == "keep", evaluation["reason"]
    assert evaluation["champion"]["version"] == "1"
    # the served challenger is the champion refit on the same data with the same seed: it prices the
    # holdout as the champion does, so a canary of it would be allowed no extra shift
    shift = evaluation["prediction_shift"]
    assert shift["champion_version"] == "1" and shift["rows"] == evaluation["holdout"]["rows"]
    assert shift["psi"] < 0.01
    assert dict(models(target)) == {"1": "champion", "2": "challenger"}


def test_a_failing_job_fails_the_run_and_leaves_the_champion(target: Target, loaded: dt.date) -> None:
    before = models(target)
    # a one-day holdout on 2016-09-07, a day with 12 bookings: too few to score, the job refuses
    request = {**FAST, "holdout_days": 1, "end": "2016-09-07", "reason": "test"}
    execution = flows.run(target, "training", request)
    assert (execution.status, execution.error) == ("FAILED", "TrainingJobFailed"), execution.cause
    assert models(target) == before
    history = target.client("stepfunctions").get_execution_history(executionArn=execution.arn)["events"]
    failed_step = [e for e in history if e.get("stateExitedEventDetails", {}).get("name") == "JobFailed"]
    assert failed_step, "the JobFailed step reported the failure"
    assert metrics_named(target, "training_job_failed"), "the failure metric was emitted"


def test_too_little_data_ends_without_training(target: Target, loaded: dt.date) -> None:
    before = models(target)
    execution = flows.run(target, "training", {**FAST, "end": "2015-01-31"})
    assert execution.status == "SUCCEEDED"
    assert execution.output["ready"] is False and "training needs" in execution.output["why"]
    assert models(target) == before


def test_data_that_only_covers_the_holdout_ends_without_starting_a_job(target: Target, loaded: dt.date) -> None:
    # GIVEN ~20 days of rows: plenty of them, all inside the validation days and the holdout
    before = models(target)

    execution = flows.run(target, "training", {**FAST, "end": "2016-07-20"})

    # THEN the flow says why and ends, rather than starting a job bound to fail
    assert execution.status == "SUCCEEDED", execution.cause
    assert execution.output["ready"] is False and execution.output["rows"] >= 200
    assert "before 14 validation and 14 holdout days" in execution.output["why"]
    assert models(target) == before
