"""The drift state machine on the local cloud: the newest days against the champion's training
reference, the report in PostgreSQL and S3, the scores in CloudWatch, and the hand-over to training."""

from __future__ import annotations

import datetime as dt
from html import escape

import psycopg
import pytest

from pipectl import datasource, flows
from pipectl.target import Target
from pricepipe.contract import load_contract
from pricepipe.settings import Settings
from tests.conftest import land_and_load
from tests.e2e.support import SEARCH_GUARD_S, metrics_named

pytestmark = pytest.mark.e2e


def _land(target: Target, days: list[dt.date]) -> None:
    assert target.database_url
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        land_and_load(
            conn, target.client("s3"), load_contract("hotel_rates"), Settings(database_url=target.database_url), days
        )


@pytest.fixture(scope="module")
def champion(target: Target) -> dt.date:
    """75 days of hotel_rates loaded and a first model trained on them and switched in: version 1.
    Returns the last loaded day."""
    days = datasource.select_days(days=75)
    _land(target, days)
    training = flows.run(target, "training", {"window_days": 75, "holdout_days": 14, "time_budget_s": SEARCH_GUARD_S})
    assert training.status == "SUCCEEDED", training.cause
    promotion = flows.wait(target, training.output["promotion"]["execution_arn"])
    assert promotion.status == "SUCCEEDED", promotion.cause
    return days[-1]


def drift_rows(target: Target, check_id: str) -> list[tuple[str, str | None, str, bool]]:
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT kind, feature, metric, drifted FROM monitoring.drift_metrics WHERE check_id = %s", (check_id,)
            )
        ]


def test_drift_on_the_champions_own_period_stays_quiet(target: Target, champion: dt.date) -> None:
    execution = flows.run(target, "drift", {"end": champion.isoformat(), "window_days": 14})
    assert execution.status == "SUCCEEDED", execution.cause
    summary = execution.output
    assert summary["decision"] == "none", summary["reasons"]
    assert summary["why"].startswith("no retraining: ") and "performance stable (RMSE " in summary["why"]
    assert summary["model_version"] == "1" and summary["current_rows"] > 100
    # the report is stored under the execution's name
    assert summary["execution"] == execution.name
    rows = drift_rows(target, summary["execution"])
    assert {kind for kind, *_ in rows} == {"feature", "prediction", "performance"}
    report = target.client("s3").get_object(Bucket=target.artifacts_bucket, Key=summary["report_uri"].split("/", 3)[3])
    page = report["Body"].read().decode()
    assert "<html" in page[:200].lower()
    assert escape(summary["why"]) in page  # the report says what was decided, in the same words
    # every PSI score is a CloudWatch metric by feature (the predictions' under "prediction")
    assert "prediction" in summary["psi"] and len(summary["psi"]) > 10
    scored = {
        d["Value"]
        for m in metrics_named(target, "drift_psi", len(summary["psi"]))
        for d in m["Dimensions"]
        if d["Name"] == "feature"
    }
    assert scored == set(summary["psi"])


def test_drift_over_threshold_starts_training(target: Target, champion: dt.date) -> None:
    _land(target, datasource.select_days(start=dt.date(2017, 1, 2), end=dt.date(2017, 1, 22)))
    execution = flows.run(target, "drift", {"window_days": 21})
    assert execution.status == "SUCCEEDED", execution.cause
    summary = execution.output
    assert summary["decision"] == "retrain" and summary["drifted"] is True, summary
    assert any(drifted for *_, drifted in drift_rows(target, summary["execution"]))
    training = flows.wait(target, summary["handover"]["training_execution"])
    assert training.status == "SUCCEEDED", training.cause
    assert training.output["reason"] == f"drift check {summary['execution']}: {summary['why']}"
    assert summary["why"].startswith("retraining: ")
    if training.output.get("promotion"):
        flows.wait(target, training.output["promotion"]["execution_arn"])  # let it finish before teardown
