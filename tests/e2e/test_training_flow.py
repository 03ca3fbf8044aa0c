"""The training state machine on the local cloud: a real Batch job (a local process), MLflow in
PostgreSQL, the comparison with the champion and both sides of its Choice."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psycopg
import pytest

from pipectl import datasource, flows
from pipectl.target import Target
from pricepipe import registry
from pricepipe.contract import load_contract
from pricepipe.settings import Settings
from tests.conftest import land_and_load

pytestmark = pytest.mark.e2e
DAYS = 75
FAST = {"window_days": 75, "holdout_days": 14, "time_budget_s": 3}


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


def test_a_first_model_is_trained_registered_and_ready_for_promotion(
    target: Target, loaded: dt.date, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution = flows.run(target, "training", {**FAST, "reason": "test"})
    assert execution.status == "SUCCEEDED", execution.cause
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


def metrics_named(target: Target, name: str, at_least: int = 1) -> list[dict[str, Any]]:
    """The metrics named ``name``, once their EMF lines have reached CloudWatch (shipped as Lambda's
    log agent ships them: a fraction of a second after the function returns)."""
    cloudwatch = target.client("cloudwatch")
    found: list[dict[str, Any]] = []
    for _ in range(50):
        found = list(cloudwatch.list_metrics(Namespace="PricePipeline", MetricName=name)["Metrics"])
        if len(found) >= at_least:
            break
        time.sleep(0.2)
    return found


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
    assert "before the 14 validation and 14 holdout days" in execution.output["why"]
    assert models(target) == before


def drift_rows(target: Target, check_id: str) -> list[tuple[str, str | None, str, bool]]:
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT kind, feature, metric, drifted FROM monitoring.drift_metrics WHERE check_id = %s", (check_id,)
            )
        ]


def test_drift_on_the_champions_own_period_stays_quiet(target: Target, loaded: dt.date) -> None:
    execution = flows.run(target, "drift", {"end": loaded.isoformat(), "window_days": 14})
    assert execution.status == "SUCCEEDED", execution.cause
    summary = execution.output
    assert summary["decision"] == "none", summary["reasons"]
    assert summary["model_version"] == "1" and summary["current_rows"] > 100
    rows = drift_rows(target, summary["execution"])
    assert {kind for kind, *_ in rows} == {"feature", "prediction", "performance"}
    report = target.client("s3").get_object(Bucket=target.artifacts_bucket, Key=summary["report_uri"].split("/", 3)[3])
    assert b"<html" in report["Body"].read()[:200].lower()
    # every PSI score is a CloudWatch metric by feature (the predictions' under "prediction")
    assert "prediction" in summary["psi"] and len(summary["psi"]) > 10
    scored = {
        d["Value"]
        for m in metrics_named(target, "drift_psi", len(summary["psi"]))
        for d in m["Dimensions"]
        if d["Name"] == "feature"
    }
    assert scored == set(summary["psi"])


def test_drift_over_threshold_starts_training(target: Target, loaded: dt.date) -> None:
    assert target.database_url
    winter = datasource.select_days(start=dt.date(2017, 1, 2), end=dt.date(2017, 1, 22))
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        land_and_load(
            conn, target.client("s3"), load_contract("hotel_rates"), Settings(database_url=target.database_url), winter
        )
    execution = flows.run(target, "drift", {"window_days": 21})
    assert execution.status == "SUCCEEDED", execution.cause
    summary = execution.output
    assert summary["decision"] == "retrain" and summary["drifted"] is True, summary
    assert any(drifted for *_, drifted in drift_rows(target, summary["execution"]))
    training = flows.wait(target, summary["handover"]["training_execution"])
    assert training.status == "SUCCEEDED", training.cause
    assert training.output["reason"].startswith("drift check")
    if training.output.get("promotion"):
        flows.wait(target, training.output["promotion"]["execution_arn"])  # let it finish before teardown
