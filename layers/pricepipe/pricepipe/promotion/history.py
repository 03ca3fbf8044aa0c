"""What promotion writes down: ``model_registry`` rows (a version's registration, each deployment), and
snapshots of the MLflow aliases to put back when a step fails half-way.

``model_registry.deployments`` says what changed for live traffic, when, why and by whom; every step
that moves traffic (or decides not to) adds one row through :func:`record`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pricepipe import registry

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient

    from pricepipe.promotion.steps import Plan


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def to_json(value: Any) -> str:
    """JSON for a jsonb column: NaN and infinities (which PostgreSQL refuses) become null."""
    return json.dumps(registry.json_safe(value), default=str)


# how a row's actor is known (migration 0006 says what each means)
ACTOR_SOURCES = ("iam", "token", "execution", "pipeline", "local-user", "unverified")
Actor = tuple[str, str]  # (actor, actor_source)
STARTED_BY = "AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID"  # Step Functions' name for a parent execution


def actor_of(payload: Mapping[str, Any], default: Actor = ("pipeline", "pipeline")) -> Actor:
    """(actor, actor_source) of a promotion request or an operator command: the ``actor`` and
    ``actor_source`` it names (a source outside :data:`ACTOR_SOURCES` counts as ``unverified``), else
    the execution that started it, else ``default`` (the pipeline's own)."""
    claimed = payload.get("actor")
    if claimed:
        source = str(payload.get("actor_source") or "unverified")
        return str(claimed), source if source in ACTOR_SOURCES else "unverified"
    if payload.get(STARTED_BY):
        return str(payload[STARTED_BY]), "execution"
    return default


CODE_ROLLOUT = "code rollout"  # how a code rollout's history rows begin their reason


def reason_for(plan: Plan, reason: str) -> str:
    """A step's reason as its history row gives it: a code rollout's say so (its model is unchanged)."""
    return f"{CODE_ROLLOUT}: {reason}" if plan.get("kind") == "code" else reason


def model_row(conn: psycopg.Connection[Any], model_name: str, version: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT version, stage, run_id, dataset, metrics, params, data_window, serving_artifact_uri, created_at"
        " FROM model_registry.models WHERE model_name = %s AND version = %s",
        (model_name, version),
    ).fetchone()
    if row is None:
        return None
    keys = ("version", "stage", "run_id", "dataset", "metrics", "params", "data_window", "serving_artifact_uri")
    return {**dict(zip(keys, row[:8], strict=True)), "created_at": iso(row[8])}


def record(
    conn: psycopg.Connection[Any],
    *,
    model_name: str,
    version: str | None,
    action: str,
    reason: str,
    actor: str,
    actor_source: str,
    previous_version: str | None = None,
    strategy: str | None = None,
    traffic_percent: float | None = None,
    function_version: str | None = None,
    execution_arn: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """One ``model_registry.deployments`` row: what changed for live traffic, when, why and by whom
    (``actor``, and how that is known: one of :data:`ACTOR_SOURCES`)."""
    if actor_source not in ACTOR_SOURCES:
        raise ValueError(f"actor_source {actor_source!r} is not one of {', '.join(ACTOR_SOURCES)}")
    row = conn.execute(
        "INSERT INTO model_registry.deployments (model_name, version, previous_version, action, strategy,"
        " traffic_percent, function_version, reason, actor, actor_source, execution_arn, details)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            model_name,
            version,
            previous_version,
            action,
            strategy,
            traffic_percent,
            function_version,
            reason,
            actor,
            actor_source,
            execution_arn,
            to_json(details or {}),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def history(conn: psycopg.Connection[Any], model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The latest deployment rows, newest first."""
    rows = conn.execute(
        "SELECT id, created_at, version, previous_version, action, strategy, traffic_percent, function_version,"
        " reason, actor, actor_source, execution_arn FROM model_registry.deployments WHERE model_name = %s"
        " ORDER BY created_at DESC, id DESC LIMIT %s",
        (model_name, limit),
    ).fetchall()
    keys = (
        "id",
        "created_at",
        "version",
        "previous_version",
        "action",
        "strategy",
        "traffic_percent",
        "function_version",
        "reason",
        "actor",
        "actor_source",
        "execution_arn",
    )
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        item["created_at"] = iso(item["created_at"])
        item["traffic_percent"] = float(item["traffic_percent"]) if item["traffic_percent"] is not None else None
        out.append(item)
    return out


def last_promoted_function_version(conn: psycopg.Connection[Any], model_name: str, version: str) -> str | None:
    """The function version ``version`` served on when it was last promoted, as recorded then."""
    recorded = conn.execute(
        "SELECT function_version FROM model_registry.deployments WHERE model_name = %s AND version = %s"
        " AND action = 'promoted' AND function_version IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT 1",
        (model_name, version),
    ).fetchone()
    return None if recorded is None else str(recorded[0])


# -- the registry's aliases ----------------------------------------------------------------------------


def aliases(client: MlflowClient, model_name: str) -> dict[str, str | None]:
    return {alias: registry.alias_version(client, model_name, alias) for alias in registry.ALIASES}


def restore_aliases(
    client: MlflowClient, conn: psycopg.Connection[Any], model_name: str, snapshot: dict[str, str | None]
) -> None:
    """Best effort: MLflow aliases (and the stages mirroring them) as they were in ``snapshot``."""
    for alias, version in snapshot.items():
        try:
            if version is None:
                registry.delete_alias(client, conn, model_name, alias)
            elif registry.alias_version(client, model_name, alias) != version:
                registry.set_alias(client, conn, model_name, alias, version)
        except Exception:  # noqa: BLE001, S112 - the error that brought us here is the one to report
            continue
