"""Training on real PostgreSQL data loaded through the real ETL step, tracked and registered in MLflow
(stored in that PostgreSQL), with artifacts in moto's S3.

Loading 75 days through the ETL and letting MLflow create its ~60 tables both take seconds, so this
module does them once, in a template database (MLflow's part in a child process: a template must
have no open connections), and each test gets a fresh copy of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from pipectl import datasource
from pricepipe import champion, db, registry, storage
from pricepipe.contract import Contract
from pricepipe.lean_model import LeanModel, load_from_uri
from pricepipe.settings import Settings
from pricepipe.training import TrainingDataError, TrainingWindow, load_lake, load_postgres, train
from pricepipe.training.job import JobOptions, load_window, run_job
from tests.conftest import drop_database, land_and_load

DAYS = 75  # of hotel_rates, about 2,500 bookings


def _create(admin_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        admin.execute(statement)
    return psycopg.conninfo.make_conninfo(admin_url, dbname=name)


@pytest.fixture(scope="module")
def template_database(pg_admin_url: str, contract: Contract) -> Iterator[str]:
    """Migrated, holding DAYS of hotel_rates loaded by the ETL step (its lake objects are not kept)."""
    import boto3
    from moto import mock_aws

    name = f"pricepipe_tmpl_{uuid.uuid4().hex[:10]}"
    url = _create(pg_admin_url, name)
    settings = Settings(database_url=url)
    with db.connect(url, autocommit=True) as conn, mock_aws():
        db.migrate(conn, contract)
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in (settings.landing_bucket, settings.lake_bucket):
            s3.create_bucket(Bucket=bucket)
        land_and_load(conn, s3, contract, settings, datasource.select_days(days=DAYS))
    code = "import sys; from pricepipe import registry; registry.client_for(sys.argv[1]).search_experiments()"
    subprocess.run([sys.executable, "-c", code, registry.mlflow_uri_from_dsn(url)], check=True, capture_output=True)
    yield name
    drop_database(pg_admin_url, url)


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh copy of the template per test (overrides conftest's)."""
    url = _create(pg_admin_url, f"pricepipe_test_{uuid.uuid4().hex[:10]}", template_database)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture
def empty_database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A copy of the template without its data (migrated, with MLflow's tables)."""
    url = _create(pg_admin_url, f"pricepipe_test_{uuid.uuid4().hex[:10]}", template_database)
    with db.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE price_data.raw_data, price_data.processed_features, price_data.ingestion_ledger")
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture
def uri(database_url: str) -> str:
    return registry.mlflow_uri_from_dsn(database_url)


def _options(**overrides: Any) -> JobOptions:
    values: dict[str, Any] = {
        "window_days": DAYS,
        "holdout_days": 14,
        "validation_days": 14,
        "time_budget_s": 600.0,  # a guard only: the search stops on its trial count
        "seed": 7,
        "max_trials": 2,
        "max_tree_levels": 400,
    }
    return JobOptions(**{**values, **overrides})


def _object(s3: Any, uri: str) -> bytes:
    bucket, key = storage.split_uri(uri)
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_training_registers_a_tracked_challenger_with_its_artifacts(  # noqa: PLR0915 - one training run checked end to end: running it again per assertion would cost minutes
    conn: psycopg.Connection[Any],
    s3: Any,
    contract: Contract,
    settings: Settings,
    uri: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the job's command, as Batch (or the local cloud) runs it."""
    from training_jobs.train import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    result_uri = f"s3://{settings.artifacts_bucket}/training/results/run-1.json"

    code = main(
        [
            "--window-days", str(DAYS), "--holdout-days", "14", "--validation-days", "14",
            "--time-budget-s", "600", "--max-trials", "2", "--seed", "7", "--result-uri", result_uri,
        ]
    )  # fmt: skip

    assert code == 0
    result = json.loads(_object(s3, result_uri))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    client = registry.client_for(uri)
    assert result["status"] == "succeeded"
    assert result["model_version"] == "1"
    assert (result["search"]["trials"], result["search"]["stopped_by"]) == (4, "trials")
    assert registry.alias_version(client, settings.model_name, "challenger") == "1"

    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    for name in ("holdout_rmse", "holdout_mae", "holdout_mape", "holdout_r2", "baseline.holdout_rmse"):
        assert name in run.data.metrics
    for family in ("lightgbm", "hist_gradient_boosting"):
        assert f"{family}.holdout_rmse" in run.data.metrics
    assert run.data.params["window_days"] == str(DAYS)
    assert run.data.params["model_family"] == result["model_family"]
    assert run.info.artifact_uri.startswith(f"s3://{settings.artifacts_bucket}/mlflow/")

    artifacts = run.info.artifact_uri
    for png in ("predicted_vs_actual", "residuals_over_time", "feature_importance", "feature_contributions"):
        assert _object(s3, f"{artifacts}/plots/{png}.png").startswith(b"\x89PNG")
    reference = json.loads(_object(s3, f"{artifacts}/reference/reference_stats.json"))
    assert set(reference["numeric"]) == set(contract.numeric_features)
    lineage = json.loads(_object(s3, f"{artifacts}/lineage/lineage.json"))
    ledger = conn.execute(
        "SELECT array_agg(id ORDER BY id), sum(rows_loaded) FROM price_data.ingestion_ledger WHERE status = 'loaded'"
    ).fetchone()
    assert ledger is not None
    assert lineage["ingest_ids"] == ledger[0]
    assert lineage["rows"] == ledger[1]
    assert len(lineage["files"]) == DAYS

    assert result["serving_artifact_uri"] == f"{artifacts}/serving/model.npz"
    lean = LeanModel.load(_object(s3, result["serving_artifact_uri"]))
    assert lean.info["model_version"] == "1"
    assert lean.info["contract"] == {"name": contract.name, "version": contract.version}
    # the served artifact carries the intervals whose holdout coverage the run logged, per level
    assert lean.interval is not None
    for level in ("0.5", "0.8", "0.9", "0.95"):
        logged = run.data.metrics[f"interval.holdout_coverage_{round(float(level) * 100)}"]
        assert lean.interval.info["holdout_coverage"][level] == pytest.approx(logged)

    row = conn.execute(
        "SELECT stage, run_id, metrics, data_window, serving_artifact_uri, artifact_uri FROM model_registry.models"
        " WHERE model_name = %s AND version = '1'",
        (settings.model_name,),
    ).fetchone()
    assert row is not None
    assert row[0] == "challenger"
    assert row[1] == result["run_id"]
    assert row[2]["rmse"] == pytest.approx(result["metrics"]["rmse"])
    assert row[3]["holdout_start"] == result["holdout"]["start"]
    assert row[4] == result["serving_artifact_uri"]
    assert row[5].startswith("s3://")

    # the evaluation artifact (never saw the holdout) scores it exactly as training reported ...
    holdout = load_postgres(conn, contract, TrainingWindow.ending(datasource.available_days()[DAYS - 1], 14)).frame
    tags = client.get_model_version(settings.model_name, "1").tags
    assert tags[registry.URI_TAGS["evaluation"]] == result["evaluation_artifact_uri"]
    evaluation = registry.evaluate_artifact(
        load_from_uri(result["evaluation_artifact_uri"], s3), holdout, contract.target
    )
    assert evaluation["rmse"] == pytest.approx(result["metrics"]["rmse"], rel=1e-9)
    # ... while the served artifact is the same settings refit on the whole window, holdout included
    served = registry.evaluate_artifact(load_from_uri(row[4], s3), holdout, contract.target)
    assert served["rmse"] < evaluation["rmse"]
    assert lean.info["role"] == "serving"

    # and MLflow's own model (sklearn pipeline with signature) predicts the same prices
    with registry.fluent(uri) as mlflow:
        model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@challenger")
    assert model.metadata.signature is not None
    features = holdout[list(contract.feature_columns)].astype(dict.fromkeys(contract.categorical_features, object))
    mlflow_prices = model.predict(features)
    from pricepipe.training.data import frame_columns

    lean_prices = lean.predict_columns(frame_columns(holdout, lean.encoding))
    assert np.max(np.abs(np.asarray(mlflow_prices) - lean_prices)) < 1e-6


def test_a_failure_while_registering_leaves_no_version_no_row_and_a_failed_run(
    conn: psycopg.Connection[Any], s3: Any, contract: Contract, settings: Settings, uri: str, database_url: str
) -> None:
    options = _options()
    outcome = train(load_window(options, contract, settings, conn=conn, s3=s3), contract, options.config())
    closed = db.connect(database_url, autocommit=True)
    closed.close()  # the database goes away after the model is registered, before its row is written

    with pytest.raises(psycopg.OperationalError):
        registry.log_and_register(
            outcome,
            uri=uri,
            conn=closed,
            model_name=settings.model_name,
            experiment="failing",
            artifact_location=f"s3://{settings.artifacts_bucket}/mlflow/failing",
        )

    client = registry.client_for(uri)
    assert client.search_model_versions(f"name = '{settings.model_name}'") == []
    experiment = client.get_experiment_by_name("failing")
    assert experiment is not None
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["FAILED"]
    assert conn.execute("SELECT count(*) FROM model_registry.models").fetchone() == (0,)


def test_an_empty_database_fails_clearly_and_registers_nothing(
    empty_database_url: str, s3: Any, contract: Contract, settings: Settings
) -> None:
    uri = registry.mlflow_uri_from_dsn(empty_database_url)
    with db.connect(empty_database_url, autocommit=True) as conn:
        with pytest.raises(TrainingDataError, match="holds no hotel_rates rows yet: run the ETL"):
            run_job(_options(), contract, settings, conn=conn, s3=s3, uri=uri)

        assert conn.execute("SELECT count(*) FROM model_registry.models").fetchone() == (0,)
    assert registry.client_for(uri).search_registered_models() == []


def test_the_job_command_exits_2_and_writes_the_failure_for_a_window_without_data(
    conn: psycopg.Connection[Any], s3: Any, settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training_jobs.train import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    result_key = "training/results/run-1.json"

    code = main(
        [
            "--window-days", "30", "--holdout-days", "7", "--end", "2015-01-31",
            "--result-uri", f"s3://{settings.artifacts_bucket}/{result_key}",
        ]
    )  # fmt: skip

    assert code == 2
    written = json.loads(s3.get_object(Bucket=settings.artifacts_bucket, Key=result_key)["Body"].read())
    assert written["status"] == "failed"
    assert written["error_type"] == "TrainingDataError"
    assert "no hotel_rates rows between 2015-01-02 and 2015-01-31" in written["error"]
    assert registry.client_for(registry.mlflow_uri_from_dsn(database_url)).search_registered_models() == []
    assert conn.execute("SELECT count(*) FROM model_registry.models").fetchone() == (0,)


def test_a_window_too_small_for_a_holdout_is_refused_before_any_work() -> None:
    with pytest.raises(TrainingDataError, match="leaves no training days after a 14-day holdout"):
        _options(window_days=20).check()


def test_the_lake_gives_the_same_frame_as_postgres(empty_database_url: str, s3: Any, contract: Contract) -> None:
    settings = Settings(database_url=empty_database_url)
    days = datasource.available_days()[:25]
    window = TrainingWindow(days[5], days[20])
    conn = db.connect(empty_database_url, autocommit=True)
    land_and_load(conn, s3, contract, settings, days)

    from_db = load_postgres(conn, contract, window)
    from_lake = load_lake(s3, settings.lake_bucket, settings.lake_prefix, contract, window)

    assert from_db.rows > 0
    assert from_db.frame.equals(from_lake.frame)
    assert len(from_lake.lineage["objects"]) == 16
    conn.close()


def test_aliases_move_and_stages_follow(
    conn: psycopg.Connection[Any], s3: Any, contract: Contract, settings: Settings, uri: str
) -> None:
    client = registry.client_for(uri)
    name = settings.model_name
    first = run_job(_options(), contract, settings, conn=conn, s3=s3, uri=uri)
    registry.promote(client, conn, name, first["model_version"])
    second = run_job(_options(seed=8), contract, settings, conn=conn, s3=s3, uri=uri)

    def stages() -> dict[str, str]:
        return dict(conn.execute("SELECT version, stage FROM model_registry.models WHERE model_name = %s", (name,)))

    assert stages() == {"1": "champion", "2": "challenger"}

    serving = champion.current(conn, name)
    assert serving is not None and serving.version == "1"

    registry.promote(client, conn, name, second["model_version"])
    assert stages() == {"1": "previous", "2": "champion"}
    assert registry.alias_version(client, name, "challenger") is None

    registry.rollback(client, conn, name)
    assert stages() == {"1": "champion", "2": "rejected"}
    assert registry.alias_version(client, name, "previous") is None
