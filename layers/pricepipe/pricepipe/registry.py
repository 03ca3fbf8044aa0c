"""MLflow tracking and model registry, and the ``model_registry`` tables that mirror them.

Store layout. MLflow's tracking and registry tables live in the pipeline's own PostgreSQL, in the
schema ``mlflow`` (migration 0002), reached with a SQLAlchemy URI whose ``search_path`` is that
schema: no tracking server, no second database to provision or back up, and MLflow's ~60 tables stay
out of the pipeline's schemas. Artifacts (plots, reference statistics, the MLflow model, the lean
serving artifact) go to ``s3://<artifacts bucket>/mlflow/<experiment>/``; MLflow's S3 client is
boto3, so the SDK's endpoint variables route it to AWS, LocalStack or moto.

Aliases are MLflow's (``champion``, ``challenger``, ``previous``); every change made here is mirrored
into ``model_registry.models.stage``. Functions take their clients and connections as arguments and
import mlflow only when called.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pricepipe.errors import PricePipeError
from pricepipe.lean_model import LeanModel

if TYPE_CHECKING:
    import pandas as pd
    import psycopg
    from mlflow import MlflowClient

    from pricepipe.db import DatabaseCredentials
    from pricepipe.training.trainer import TrainingOutcome

MLFLOW_SCHEMA = "mlflow"
ALIASES = ("champion", "challenger", "previous")  # also the stage priority when a version holds several
SERVING_ARTIFACT = "serving/model.npz"
EVALUATION_ARTIFACT = "evaluation/model.npz"
URI_TAGS = {"serving": "serving_artifact_uri", "evaluation": "evaluation_artifact_uri"}


class RegistryError(PricePipeError, RuntimeError):
    """A registry operation that cannot be done as asked, named in the message."""


# -- where MLflow lives ------------------------------------------------------------------------------


def mlflow_uri_from_dsn(dsn: str, schema: str = MLFLOW_SCHEMA) -> str:
    """MLflow's SQLAlchemy URI for a PostgreSQL DSN (URL or key=value form), tables in ``schema``."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    parts = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    query = {k: v for k, v in parts.items() if k not in ("host", "port", "user", "password", "dbname")}
    options = f"{query.pop('options', '')} -csearch_path={schema}".strip()
    host = parts.get("host")
    if host and host.startswith("/"):  # a Unix socket directory (the embedded server's) is no URL host
        query["host"], host = host, None
    url = URL.create(
        "postgresql+psycopg",
        username=parts.get("user"),
        password=parts.get("password"),
        host=host,
        port=int(parts["port"]) if "port" in parts else None,
        database=parts.get("dbname"),
        query={**query, "options": options},
    )
    return url.render_as_string(hide_password=False)


def tracking_uri(settings: Any, dsn: str) -> str:
    """The configured MLflow URI, else the pipeline database's ``mlflow`` schema."""
    configured = getattr(settings, "mlflow_tracking_uri", None)
    if configured is not None:
        return str(configured.get_secret_value() if hasattr(configured, "get_secret_value") else configured)
    return mlflow_uri_from_dsn(dsn)


def _mlflow() -> Any:
    # the pipeline has no network but its own endpoints: never let MLflow phone home
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def client_for(uri: str) -> MlflowClient:
    """A client whose tracking and registry are both ``uri``."""
    return _mlflow().MlflowClient(tracking_uri=uri, registry_uri=uri)


class ReconnectingClient:
    """An ``MlflowClient`` for a process that outlives the database password (a warm Lambda
    container, a long training job): every method call goes through
    :meth:`pricepipe.db.DatabaseCredentials.call`, so when the store's database refuses the cached
    password (MLflow wraps SQLAlchemy's ``OperationalError``), the secret is read again, the client is
    rebuilt on the new URI and the call is made once more. An authentication failure happens while
    connecting, before the call's session has done anything, so the retry repeats nothing.
    """

    def __init__(self, settings: Any, credentials: DatabaseCredentials) -> None:
        self._settings = settings
        self._credentials = credentials
        self._client: MlflowClient | None = None
        self._uri: str | None = None

    @property
    def uri(self) -> str:
        """The tracking URI of the credentials as last read."""
        return tracking_uri(self._settings, self._credentials.dsn())

    def _for(self, dsn: str) -> MlflowClient:
        uri = tracking_uri(self._settings, dsn)
        if self._client is None or uri != self._uri:
            if getattr(self._settings, "mlflow_tracking_uri", None) is None:
                from pricepipe.db import connect

                # refused credentials surface here at once: MLflow retries creating an engine ~100 s
                connect(dsn).close()
            self._client, self._uri = client_for(uri), uri
        return self._client

    def __getattr__(self, name: str) -> Any:
        """``MlflowClient``'s method ``name``, through the retry (the pipeline calls only its methods)."""
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._credentials.call(lambda dsn: getattr(self._for(dsn), name)(*args, **kwargs), f"MLflow {name}")

        return call


@contextmanager
def fluent(uri: str) -> Iterator[Any]:
    """MLflow's module-level API pointed at ``uri`` for the block, yielding the ``mlflow`` module
    (``log_model`` and ``pyfunc.load_model`` exist only there); the previous URIs come back after."""
    mlflow = _mlflow()
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise RegistryError(f"MLflow experiment {name!r} is deleted: restore it or choose another name")
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location))


# -- logging and registering a trained model ----------------------------------------------------------


@dataclass(frozen=True)
class RegisteredVersion:
    model_name: str
    model_version: str
    alias: str
    run_id: str
    experiment_id: str
    model_uri: str
    artifact_uri: str
    serving_artifact_uri: str
    evaluation_artifact_uri: str
    model_family: str
    metrics: dict[str, float]
    data_window: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def json_safe(value: Any) -> Any:
    """JSON for PostgreSQL: NaN and infinities (which jsonb refuses) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def log_and_register(
    outcome: TrainingOutcome,
    *,
    uri: str | ReconnectingClient,
    conn: psycopg.Connection[Any],
    model_name: str,
    experiment: str,
    artifact_location: str,
    alias: str = "challenger",
) -> RegisteredVersion:
    """Track a training run in MLflow, register its model as a new version with ``alias``, record it.

    All or nothing: a failure before registering leaves a FAILED run and no version; a failure after
    deletes the new version again, so no alias, no ``model_registry.models`` row and no version
    point at a half-logged run. ``uri`` is a tracking URI, or a :class:`ReconnectingClient` for a
    process that may outlive the database password (the training job).
    """
    from pricepipe.training import tracking

    mlflow = _mlflow()
    client: Any = uri if isinstance(uri, ReconnectingClient) else client_for(uri)
    # the first call to the store: a password rotated since the process began is met (and read
    # again) here, before anything is written; the fluent API below then uses the URI that worked
    experiment_id = ensure_experiment(client, experiment, artifact_location)
    store_uri = client.uri if isinstance(client, ReconnectingClient) else str(uri)
    window = outcome.data_window()
    with fluent(store_uri), mlflow.start_run(experiment_id=experiment_id, run_name=_run_name(outcome)) as run:
        run_id = run.info.run_id
        tracking.log_run(client, run_id, outcome)
        info = tracking.log_model(mlflow, outcome)
        version = mlflow.register_model(info.model_uri, model_name, await_registration_for=0).version
        try:
            model_version = client.get_model_version(model_name, version)
            base = run.info.artifact_uri.rstrip("/")
            serving_uri, evaluation_uri = f"{base}/{SERVING_ARTIFACT}", f"{base}/{EVALUATION_ARTIFACT}"
            registered = {"model_name": model_name, "model_version": str(version), "run_id": run_id}
            with tempfile.TemporaryDirectory() as tmp:
                for role, model in (("serving", outcome.lean), ("evaluation", outcome.evaluation_lean)):
                    lean = model.with_info(**registered)
                    folder = Path(tmp, role)
                    folder.mkdir()
                    (folder / "model.npz").write_bytes(lean.to_bytes())
                    (folder / "header.json").write_text(json.dumps(lean.header(), indent=2, default=str))
                    client.log_artifacts(run_id, str(folder), role)
            tags = {
                URI_TAGS["serving"]: serving_uri,
                URI_TAGS["evaluation"]: evaluation_uri,
                "model_family": outcome.chosen,
                "contract": f"{outcome.contract.name}@v{outcome.contract.version}",
                "holdout_rmse": f"{outcome.metrics['rmse']:.6g}",
                "data_window": f"{window['start']}..{window['end']}",
            }
            for key, value in tags.items():
                client.set_model_version_tag(model_name, version, key, value)
            client.update_model_version(
                model_name,
                version,
                description=(
                    f"{outcome.chosen}; holdout {window['holdout_start']}..{window['holdout_end']}: RMSE"
                    f" {outcome.metrics['rmse']:.2f} (fit on {window['train_start']}..{window['train_end']}); serves"
                    f" the same settings fit on {window['start']}..{window[_served_end(outcome)]}"
                ),
            )
            artifact_uri = _model_storage_uri(client, info) or str(model_version.source)
            _record(conn, client, outcome, model_name, str(version), run_id, artifact_uri, serving_uri, alias)
            client.set_tag(run_id, "pricepipe.model_version", str(version))
        except BaseException:
            _forget_version(client, model_name, str(version))
            raise
    return RegisteredVersion(
        model_name=model_name,
        model_version=str(version),
        alias=alias,
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=f"models:/{model_name}/{version}",
        artifact_uri=artifact_uri,
        serving_artifact_uri=serving_uri,
        evaluation_artifact_uri=evaluation_uri,
        model_family=outcome.chosen,
        metrics=outcome.metrics,
        data_window=window,
    )


def _served_end(outcome: TrainingOutcome) -> str:
    return "end" if outcome.config.refit_full_window else "train_end"


def _run_name(outcome: TrainingOutcome) -> str:
    window = outcome.data.window
    return f"{outcome.contract.name}-{window.start:%Y%m%d}-{window.end:%Y%m%d}"


def _model_storage_uri(client: MlflowClient, info: Any) -> str | None:
    """Where the logged MLflow model's files are (its artifact location in S3)."""
    model_id = getattr(info, "model_id", None)
    if not model_id:
        return None
    try:
        return str(client.get_logged_model(model_id).artifact_location)
    except Exception:  # noqa: BLE001 - older stores have no logged-model entity; the caller falls back
        return None


def _record(
    conn: psycopg.Connection[Any],
    client: MlflowClient,
    outcome: TrainingOutcome,
    model_name: str,
    version: str,
    run_id: str,
    artifact_uri: str,
    serving_uri: str,
    alias: str,
) -> None:
    """The ``model_registry.models`` row, and the alias with every stage it changes, in one transaction."""
    metrics = {
        **outcome.metrics,
        "candidates": {name: c.holdout for name, c in outcome.candidates.items()},
        "baseline": outcome.baseline.holdout,
    }
    params = {
        "model_family": outcome.chosen,
        "n_trees": outcome.model.n_trees,
        **outcome.model.params,
        "config": outcome.config.to_params(),
    }
    with conn.transaction():
        conn.execute(
            "INSERT INTO model_registry.models (model_name, version, run_id, dataset, stage, metrics, params,"
            " data_window, artifact_uri, serving_artifact_uri) VALUES (%s, %s, %s, %s, 'none', %s, %s, %s, %s, %s)",
            (
                model_name,
                version,
                run_id,
                outcome.contract.name,
                json.dumps(json_safe(metrics)),
                json.dumps(json_safe(params)),
                json.dumps(json_safe(outcome.data_window())),
                artifact_uri,
                serving_uri,
            ),
        )
        set_alias(client, conn, model_name, alias, version)


def _forget_version(client: MlflowClient, model_name: str, version: str) -> None:
    # best effort: the error that brought us here is the one the caller must see
    with suppress(Exception):
        client.delete_model_version(model_name, version)


# -- aliases and stages ------------------------------------------------------------------------------


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version holding ``alias``, or None when no version does (or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def set_alias(
    client: MlflowClient, conn: psycopg.Connection[Any], model_name: str, alias: str, version: str
) -> str | None:
    """Point ``alias`` at ``version``; returns the version that held it before (None if none).

    ``model_registry.models.stage`` follows: the new holder takes the alias's name, the old one
    whatever aliases it has left (see :func:`_stage_for`).
    """
    if alias not in ALIASES:
        raise RegistryError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
    before = alias_version(client, model_name, alias)
    client.set_registered_model_alias(model_name, alias, version)
    try:
        _sync_stages(client, conn, model_name, {version} if before is None else {version, before})
    except BaseException:
        _restore_alias(client, model_name, alias, before)
        raise
    return before


def delete_alias(client: MlflowClient, conn: psycopg.Connection[Any], model_name: str, alias: str) -> str | None:
    """Remove ``alias``; returns the version that held it (None if none)."""
    before = alias_version(client, model_name, alias)
    if before is None:
        return None
    client.delete_registered_model_alias(model_name, alias)
    try:
        _sync_stages(client, conn, model_name, {before})
    except BaseException:
        _restore_alias(client, model_name, alias, before)
        raise
    return before


def promote(client: MlflowClient, conn: psycopg.Connection[Any], model_name: str, version: str) -> dict[str, Any]:
    """Make ``version`` the champion: the old champion becomes ``previous``, the challenger alias goes
    if it pointed at ``version``. Returns what changed."""
    champion = alias_version(client, model_name, "champion")
    if champion == version:
        return {"champion": version, "previous": alias_version(client, model_name, "previous"), "changed": False}
    if champion is not None:
        set_alias(client, conn, model_name, "previous", champion)
    set_alias(client, conn, model_name, "champion", version)
    if alias_version(client, model_name, "challenger") == version:
        delete_alias(client, conn, model_name, "challenger")
    return {"champion": version, "previous": champion, "changed": True}


def rollback(client: MlflowClient, conn: psycopg.Connection[Any], model_name: str) -> dict[str, Any]:
    """Make ``previous`` the champion again; the demoted champion is marked ``rejected``."""
    previous = alias_version(client, model_name, "previous")
    if previous is None:
        raise RegistryError(f"{model_name} has no previous version to roll back to")
    champion = set_alias(client, conn, model_name, "champion", previous)
    delete_alias(client, conn, model_name, "previous")
    if champion is not None and champion != previous:
        with conn.transaction():
            conn.execute(
                "UPDATE model_registry.models SET stage = 'rejected', updated_at = now()"
                " WHERE model_name = %s AND version = %s AND stage IN ('none', 'archived')",
                (model_name, champion),
            )
    return {"champion": previous, "rolled_back": champion}


def _stage_for(aliases: set[str], current: str | None) -> str:
    """A version's stage: its highest alias; with none left, ``archived`` if it ever served traffic."""
    for alias in ALIASES:
        if alias in aliases:
            return alias
    if current in ("champion", "previous", "archived"):
        return "archived"
    return "rejected" if current == "rejected" else "none"


def _sync_stages(client: MlflowClient, conn: psycopg.Connection[Any], model_name: str, versions: set[str]) -> None:
    with conn.transaction():
        for version in sorted(versions):
            aliases = set(client.get_model_version(model_name, version).aliases)
            row = conn.execute(
                "SELECT stage FROM model_registry.models WHERE model_name = %s AND version = %s FOR UPDATE",
                (model_name, version),
            ).fetchone()
            conn.execute(
                "UPDATE model_registry.models SET stage = %s, updated_at = now()"
                " WHERE model_name = %s AND version = %s",
                (_stage_for(aliases, row[0] if row else None), model_name, version),
            )


def _restore_alias(client: MlflowClient, model_name: str, alias: str, version: str | None) -> None:
    try:
        if version is None:
            client.delete_registered_model_alias(model_name, alias)
        else:
            client.set_registered_model_alias(model_name, alias, version)
    except Exception:  # noqa: BLE001, S110 - best effort; the original error is what the caller must see
        pass


# -- evaluating registered versions ------------------------------------------------------------------


def evaluate_artifact(model: LeanModel, frame: pd.DataFrame, target: str) -> dict[str, float]:
    """Metrics of a lean model on a frame holding its features and the actual prices."""
    from pricepipe.training.data import frame_columns
    from pricepipe.training.metrics import regression_metrics

    if target not in frame.columns:
        raise RegistryError(f"the evaluation frame lacks the target column {target!r}")
    predictions = model.predict_columns(frame_columns(frame, model.encoding))
    return regression_metrics(frame[target].to_numpy(dtype=float), predictions)
