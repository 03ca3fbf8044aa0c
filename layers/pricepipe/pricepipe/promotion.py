"""Promotion: how a registered model version comes to serve the ``live`` alias, and how it leaves.

The steps of ``infrastructure/statemachines/promotion.asl.json`` and the operator's commands
(``pipectl approve | reject | rollback | deployments``), as plain functions over a database
connection, an MLflow client and AWS clients passed in (:mod:`pricepipe.deployer` does the Lambda and
SSM calls). Strategies:

- **blue-green**: deploy, switch the alias at once; the old version stays published and recorded, so
  :func:`rollback` puts it back with one alias update.
- **auto**: the metric gate (:func:`gate`), then as blue-green.
- **canary**: deploy, give the new version ``canary_percent`` of the traffic, bake, judge its own
  metrics (:mod:`pricepipe.canary`), then switch fully or roll back on its own.
- **manual**: deploy, then wait for a person (a Step Functions task token), then as blue-green.

Every change is written down: MLflow aliases (champion, challenger, previous, mirrored into
``model_registry.models.stage`` by :mod:`pricepipe.registry`), a ``model_registry.deployments`` row
saying what changed and why, and the run's ``model_registry.promotions`` row, which is also the lock
that keeps two promotions from moving the alias at once. A step that fails half-way undoes what it
changed before it raises; the state machine then runs :func:`roll_back` with ``outcome="failed"``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.errors import UniqueViolation

from pricepipe import deployer, registry
from pricepipe.champion import challenger_wins
from pricepipe.champion import current as champion_of
from pricepipe.errors import PricePipeError

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient

    from pricepipe.contract import Contract
    from pricepipe.settings import Settings

STRATEGIES = ("manual", "auto", "canary", "blue-green")


class PromotionRefused(PricePipeError):
    """A promotion that must not go ahead (unknown version, another one running, ...), and why.

    Its class name is the error the promotion state machine fails with.
    """


class CommandError(PricePipeError):
    """An operator command that cannot be carried out as asked, with what to do instead."""


@dataclass(frozen=True)
class Serving:
    """What promotion acts on: the serving function, its alias, the model layer and its SSM parameter."""

    function: str
    alias: str
    layer_name: str
    parameter: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Serving:
        return cls(
            settings.serving_function,
            settings.serving_alias,
            settings.model_layer_name,
            settings.model_layer_parameter,
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _json(value: Any) -> str:
    """JSON for a jsonb column: NaN and infinities (which PostgreSQL refuses) become null."""

    def finite(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {str(k): finite(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [finite(v) for v in item]
        return item

    return json.dumps(finite(value), default=str)


# -- registry and history ------------------------------------------------------------------------------


def model_row(conn: psycopg.Connection[Any], model_name: str, version: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT version, stage, run_id, dataset, metrics, params, data_window, serving_artifact_uri, created_at"
        " FROM model_registry.models WHERE model_name = %s AND version = %s",
        (model_name, version),
    ).fetchone()
    if row is None:
        return None
    keys = ("version", "stage", "run_id", "dataset", "metrics", "params", "data_window", "serving_artifact_uri")
    return {**dict(zip(keys, row[:8], strict=True)), "created_at": _iso(row[8])}


def record(
    conn: psycopg.Connection[Any],
    *,
    model_name: str,
    version: str | None,
    action: str,
    reason: str,
    actor: str,
    previous_version: str | None = None,
    strategy: str | None = None,
    traffic_percent: float | None = None,
    function_version: str | None = None,
    execution_arn: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """One ``model_registry.deployments`` row: what changed for live traffic, when, why and by whom."""
    row = conn.execute(
        "INSERT INTO model_registry.deployments (model_name, version, previous_version, action, strategy,"
        " traffic_percent, function_version, reason, actor, execution_arn, details)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
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
            execution_arn,
            _json(details or {}),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def history(conn: psycopg.Connection[Any], model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The latest deployment rows, newest first."""
    rows = conn.execute(
        "SELECT id, created_at, version, previous_version, action, strategy, traffic_percent, function_version,"
        " reason, actor, execution_arn FROM model_registry.deployments WHERE model_name = %s"
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
        "execution_arn",
    )
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        item["created_at"] = _iso(item["created_at"])
        item["traffic_percent"] = float(item["traffic_percent"]) if item["traffic_percent"] is not None else None
        out.append(item)
    return out


def _aliases(client: MlflowClient, model_name: str) -> dict[str, str | None]:
    return {alias: registry.alias_version(client, model_name, alias) for alias in registry.ALIASES}


def _restore_aliases(
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


def _mark_rejected(
    client: MlflowClient, conn: psycopg.Connection[Any], model_name: str, version: str, why: str
) -> None:
    """The version leaves the challenger alias and is marked ``rejected``, in MLflow and the mirror."""
    if registry.alias_version(client, model_name, "challenger") == version:
        registry.delete_alias(client, conn, model_name, "challenger")
    if registry.alias_version(client, model_name, "champion") == version:
        return  # a champion is never marked rejected by a failed re-promotion of itself
    with conn.transaction():
        conn.execute(
            "UPDATE model_registry.models SET stage = 'rejected', updated_at = now()"
            " WHERE model_name = %s AND version = %s AND stage IN ('none', 'challenger', 'archived', 'rejected')",
            (model_name, version),
        )
    client.set_model_version_tag(model_name, version, "pricepipe.promotion", why[:5000])


# -- the promotion lock --------------------------------------------------------------------------------


def _running(conn: psycopg.Connection[Any], model_name: str) -> list[tuple[str, str, str | None]]:
    return [
        (str(r[0]), str(r[1]), r[2])
        for r in conn.execute(
            "SELECT execution_arn, version, function_version FROM model_registry.promotions"
            " WHERE model_name = %s AND status = 'running'",
            (model_name,),
        ).fetchall()
    ]


def _execution_status(sfn: Any, execution_arn: str) -> str:
    try:
        return str(sfn.describe_execution(executionArn=execution_arn)["status"])
    except Exception as exc:  # an execution that no longer exists has certainly ended
        if "ExecutionDoesNotExist" in type(exc).__name__ or "ExecutionDoesNotExist" in str(exc):
            return "GONE"
        raise


def _finish(
    conn: psycopg.Connection[Any],
    execution_arn: str,
    status: str,
    outcome: str,
    approval_status: str | None = None,
) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE model_registry.promotions SET status = %s, outcome = %s, finished_at = now(),"
            " approval_status = COALESCE(%s, approval_status)"
            " WHERE execution_arn = %s",
            (status, outcome[:5000], approval_status, execution_arn),
        )


def _clear_stale(
    conn: psycopg.Connection[Any], lam: Any, sfn: Any, serving: Serving, model_name: str, execution_arn: str
) -> None:
    """Release the lock of promotions whose execution ended without reaching an end state (stopped,
    timed out, or gone with a restarted local cloud); refuse while another one really runs."""
    for other_arn, other_version, other_function_version in _running(conn, model_name):
        if other_arn == execution_arn:
            continue
        status = _execution_status(sfn, other_arn)
        if status == "RUNNING":
            raise PromotionRefused(
                f"the promotion of {model_name} version {other_version} is still running ({other_arn}):"
                " wait for it to end (or answer it with `pipectl approve` / `pipectl reject`)"
            )
        why = f"its execution ended without finishing ({status})"
        alias = deployer.alias_state(lam, serving.function, serving.alias)
        if other_function_version and other_function_version in alias["weights"]:
            # a canary stopped mid-bake keeps its weight: take it back, the primary was never changed
            deployer.switch(lam, serving.function, serving.alias, alias["function_version"], alias["revision_id"])
            with conn.transaction():
                record(
                    conn,
                    model_name=model_name,
                    version=other_version,
                    action="rolled-back",
                    reason=f"canary weight removed: {why}",
                    actor="pipeline",
                    traffic_percent=0,
                    function_version=other_function_version,
                    execution_arn=other_arn,
                    details={"alias_before": alias},
                )
        _finish(conn, other_arn, "failed", why)


# -- prepare ---------------------------------------------------------------------------------------------


def prepare(
    conn: psycopg.Connection[Any],
    lam: Any,
    sfn: Any,
    client: MlflowClient,
    settings: Settings,
    request: dict[str, Any],
    execution_arn: str,
) -> dict[str, Any]:
    """Check the request, choose the route, take the promotion lock and snapshot the alias: the plan."""
    serving = Serving.from_settings(settings)
    model_name = settings.model_name
    if request.get("model_version") in (None, ""):
        raise PromotionRefused("the promotion request names no model_version")
    version = str(request["model_version"])
    strategy = str(request.get("strategy") or settings.promotion_strategy)
    if strategy not in STRATEGIES:
        raise PromotionRefused(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    percent = float(request.get("canary_percent") or settings.canary_percent)
    if not 0 < percent < 100:
        raise PromotionRefused(f"canary_percent must be between 0 and 100, got {percent}")
    bake_seconds = int(request.get("bake_seconds") or settings.canary_bake_seconds)
    if bake_seconds < 1:
        raise PromotionRefused(f"bake_seconds must be at least 1, got {bake_seconds}")
    row = model_row(conn, model_name, version)
    if row is None:
        raise PromotionRefused(f"{model_name} version {version} is not registered (no model_registry.models row)")
    if not row["serving_artifact_uri"]:
        raise PromotionRefused(f"{model_name} version {version} has no serving artifact to deploy")

    _clear_stale(conn, lam, sfn, serving, model_name, execution_arn)
    alias = deployer.alias_state(lam, serving.function, serving.alias)
    if alias["weights"]:
        # not ours (no promotion runs): a split someone set by hand; refuse rather than guess
        raise PromotionRefused(
            f"alias {serving.alias} of {serving.function} splits traffic {alias['weights']} though no promotion"
            " runs: set it back to one version first"
        )
    primary = deployer.version_configuration(lam, serving.function, alias["function_version"])
    served = deployer.model_of(primary.get("Description"))
    champion = None
    if served is not None and served[0] == model_name:
        champion = {"version": served[1], "function_version": alias["function_version"]}
    registered_champion = registry.alias_version(client, model_name, "champion")

    note = ""
    if champion is not None and champion["version"] == version:
        route = "unchanged"
        note = f"version {version} already serves all of {serving.alias}'s traffic"
    elif strategy == "manual":
        route = "approval"
    elif strategy == "auto":
        route = "gate"
    elif strategy == "canary" and champion is not None:
        route = "canary"
    else:
        route = "switch"
        if strategy == "canary":
            note = "no model serves yet, so there is nothing to compare a canary with: switching at once"

    reason = str(request.get("reason") or "requested")
    plan = {
        "execution_arn": execution_arn,
        "model_name": model_name,
        "model_version": version,
        "strategy": strategy,
        "route": route,
        "reason": reason,
        "note": note,
        "actor": str(request.get("actor") or "pipeline"),
        "canary_percent": percent,
        "bake_seconds": bake_seconds,
        "approval_timeout_s": int(settings.manual_approval_timeout_s),
        "function": serving.function,
        "alias": serving.alias,
        "alias_before": alias,
        "champion": champion,
        "registered_champion": registered_champion,
        "stage_before": row["stage"],
        "evaluation": request.get("evaluation"),
        "requested_at": _iso(_now()),
    }
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO model_registry.promotions (execution_arn, model_name, version, strategy, status, reason,"
                " plan, outcome, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s = 'running' THEN NULL ELSE now() END)"
                " ON CONFLICT (execution_arn) DO NOTHING",
                (
                    execution_arn,
                    model_name,
                    version,
                    strategy,
                    "unchanged" if route == "unchanged" else "running",
                    reason,
                    _json(plan),
                    note or None,
                    "unchanged" if route == "unchanged" else "running",
                ),
            )
    except UniqueViolation as exc:
        raise PromotionRefused(f"another promotion of {model_name} started at the same moment: {exc}") from exc
    if route != "unchanged" and registered_champion != version:
        try:  # the version being promoted is the challenger while it is tried
            registry.set_alias(client, conn, model_name, "challenger", version)
        except BaseException as exc:
            _finish(conn, execution_arn, "failed", f"could not set the challenger alias: {exc}")
            raise
    return plan


# -- the metric gate (auto) ------------------------------------------------------------------------------


def _evaluation_uri(serving_uri: str) -> str:
    """The lean fit that never saw its holdout sits beside the serving one (pricepipe.registry's layout)."""
    if serving_uri.endswith(registry.SERVING_ARTIFACT):
        return serving_uri[: -len(registry.SERVING_ARTIFACT)] + registry.EVALUATION_ARTIFACT
    return serving_uri


def gate(
    conn: psycopg.Connection[Any], s3: Any, contract: Contract, settings: Settings, plan: dict[str, Any]
) -> dict[str, Any]:
    """Pass when the version beats the champion on the same recent holdout by ``promotion_margin``
    and its own holdout R² reaches ``auto_min_r2``.

    The comparison is the training flow's when the run was started by it for this version (its
    ``evaluation``); otherwise both lean artifacts are scored now on the latest ``holdout_days``.
    """
    from pricepipe.lean_model import load_from_uri

    model_name, version = plan["model_name"], plan["model_version"]
    row = model_row(conn, model_name, version)
    assert row is not None
    r2 = float((row["metrics"] or {}).get("r2", math.nan))
    if not r2 >= settings.auto_min_r2:
        return {
            "passed": False,
            "reason": f"holdout R² {r2:.3f} is below the auto gate's floor {settings.auto_min_r2:.3f}",
            "source": "registered-metrics",
        }
    evaluation = plan.get("evaluation") or {}
    if str((evaluation.get("challenger") or {}).get("version")) == version and evaluation.get("decision"):
        passed = evaluation["decision"] == "promote"
        return {"passed": passed, "reason": str(evaluation.get("reason", "")), "source": "training-evaluation"}

    champion = champion_of(conn, model_name)
    if champion is None or champion.version == version:
        return {"passed": True, "reason": "no champion yet", "source": "no-champion"}

    from pricepipe.registry import evaluate_artifact
    from pricepipe.training.data import TrainingWindow, latest_event_date_postgres, load_postgres

    end = latest_event_date_postgres(conn, contract)
    if end is None:
        return {"passed": False, "reason": "no data to compare the two versions on", "source": "fresh-holdout"}
    frame = load_postgres(conn, contract, TrainingWindow.ending(end, settings.holdout_days)).frame
    try:
        challenger_model = load_from_uri(_evaluation_uri(str(row["serving_artifact_uri"])), s3)
    except Exception:  # noqa: BLE001 - a version without an evaluation artifact is scored as it serves
        challenger_model = load_from_uri(str(row["serving_artifact_uri"]), s3)
    challenger = evaluate_artifact(challenger_model, frame, contract.target)
    incumbent = evaluate_artifact(load_from_uri(champion.serving_artifact_uri, s3), frame, contract.target)
    verdict = challenger_wins(
        challenger["rmse"],
        incumbent["rmse"],
        settings.promotion_margin,
        challenger=f"version {version}",
        champion=f"champion {champion.version}",
        measured_on=f"on the latest {settings.holdout_days} days, {len(frame)} rows",
    )
    return {
        "passed": verdict.wins,
        "reason": verdict.reason,
        "source": "fresh-holdout",
        "challenger": challenger,
        "champion": {"version": champion.version, **incumbent},
    }


# -- deploy ----------------------------------------------------------------------------------------------


def layer_metadata(row: dict[str, Any], model_name: str, alias: str) -> dict[str, Any]:
    """What the model layer says about its model (``model.json``; the API's /model-info shows it)."""
    params = row.get("params") or {}
    return {
        "model_name": model_name,
        "model_version": row["version"],
        "alias": alias,  # the function alias it is deployed behind
        "run_id": row.get("run_id"),
        "dataset": row.get("dataset"),
        "model_family": params.get("model_family"),
        "metrics": {k: v for k, v in (row.get("metrics") or {}).items() if not isinstance(v, dict)},
        "data_window": row.get("data_window") or {},
        "trained_at": row.get("created_at"),  # registered right after training, in the same job
    }


def deploy(
    conn: psycopg.Connection[Any], lam: Any, s3: Any, settings: Settings, plan: dict[str, Any]
) -> dict[str, Any]:
    """A function version of the serving function carrying this model; no traffic reaches it yet."""
    serving = Serving.from_settings(settings)
    model_name, version = plan["model_name"], plan["model_version"]
    row = model_row(conn, model_name, version)
    if row is None:
        raise PromotionRefused(f"{model_name} version {version} is no longer registered")
    deployment = deployer.deploy_model(
        lam,
        s3,
        function=serving.function,
        layer_name=serving.layer_name,
        artifact_uri=str(row["serving_artifact_uri"]),
        metadata=layer_metadata(row, model_name, serving.alias),
    )
    with conn.transaction():
        conn.execute(
            "UPDATE model_registry.promotions SET function_version = %s WHERE execution_arn = %s",
            (deployment["function_version"], plan["execution_arn"]),
        )
        record(
            conn,
            model_name=model_name,
            version=version,
            action="deployed",
            strategy=plan["strategy"],
            traffic_percent=0,
            function_version=deployment["function_version"],
            reason=(
                f"{serving.function} version {deployment['function_version']} serves {model_name}@{version}"
                f" ({'reused' if deployment.get('reused') else 'published'}); no traffic yet"
            ),
            actor=plan["actor"],
            execution_arn=plan["execution_arn"],
            details={"layer_arn": deployment.get("layer_arn")},
        )
    return {**deployment, "deployed_at": _iso(_now())}


# -- manual approval -------------------------------------------------------------------------------------


def request_approval(
    conn: psycopg.Connection[Any], plan: dict[str, Any], deployment: dict[str, Any], task_token: str
) -> dict[str, Any]:
    """Keep the task token where ``pipectl approve`` / ``reject`` find it; the execution waits meanwhile."""
    expires = _now() + dt.timedelta(seconds=int(plan["approval_timeout_s"]))
    version = plan["model_version"]
    with conn.transaction():
        updated = conn.execute(
            "UPDATE model_registry.promotions SET task_token = %s, approval_status = 'pending',"
            " approval_requested_at = now(), approval_expires_at = %s WHERE execution_arn = %s",
            (task_token, expires, plan["execution_arn"]),
        ).rowcount
        if updated != 1:
            raise PromotionRefused(f"no promotion row for {plan['execution_arn']}: cannot wait for an approval")
        record(
            conn,
            model_name=plan["model_name"],
            version=version,
            action="approval-requested",
            strategy=plan["strategy"],
            traffic_percent=0,
            function_version=deployment["function_version"],
            reason=(
                f"waiting for `pipectl approve {version}` or `pipectl reject {version}` until {expires:%Y-%m-%d %H:%M}"
                f" UTC; try it first on {plan['function']}:{deployment['function_version']}"
            ),
            actor=plan["actor"],
            execution_arn=plan["execution_arn"],
        )
    return {"status": "pending", "expires_at": _iso(expires)}


def _pending(conn: psycopg.Connection[Any], model_name: str, version: str) -> tuple[str, str]:
    row = conn.execute(
        "SELECT execution_arn, task_token FROM model_registry.promotions WHERE model_name = %s AND version = %s"
        " AND status = 'running' AND approval_status = 'pending' AND task_token IS NOT NULL",
        (model_name, version),
    ).fetchone()
    if row is not None:
        return str(row[0]), str(row[1])
    waiting = [
        str(r[0])
        for r in conn.execute(
            "SELECT version FROM model_registry.promotions WHERE model_name = %s AND status = 'running'"
            " AND approval_status = 'pending' ORDER BY started_at",
            (model_name,),
        ).fetchall()
    ]
    hint = f"versions waiting for approval: {', '.join(waiting)}" if waiting else "no version is waiting for one"
    raise CommandError(f"{model_name} version {version} has no pending approval ({hint})")


def _answer(
    conn: psycopg.Connection[Any],
    sfn: Any,
    settings: Settings,
    version: str,
    actor: str,
    reason: str,
    approve: bool,
) -> dict[str, Any]:
    execution_arn, token = _pending(conn, settings.model_name, version)
    try:
        if approve:
            sfn.send_task_success(taskToken=token, output=json.dumps({"approved_by": actor, "reason": reason}))
        else:
            sfn.send_task_failure(
                taskToken=token, error="Rejected", cause=json.dumps({"rejected_by": actor, "reason": reason})
            )
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        if code in ("TaskTimedOut", "InvalidToken", "TaskDoesNotExist"):
            _finish(conn, execution_arn, "rejected", f"approval request ended before an answer ({code})", "expired")
            raise CommandError(
                f"the approval request for version {version} is no longer open ({code}): start a new promotion"
            ) from exc
        raise
    with conn.transaction():
        conn.execute(
            "UPDATE model_registry.promotions SET approval_status = %s, approval_decided_at = now(),"
            " approval_decided_by = %s, approval_reason = %s WHERE execution_arn = %s",
            ("approved" if approve else "rejected", actor, reason, execution_arn),
        )
    return {"model_version": version, "execution_arn": execution_arn, "approved": approve, "by": actor}


def approve(
    conn: psycopg.Connection[Any], sfn: Any, settings: Settings, version: str, actor: str, reason: str = ""
) -> dict[str, Any]:
    """Answer a pending approval with yes: the waiting promotion switches traffic to ``version``."""
    return _answer(conn, sfn, settings, version, actor, reason or "approved", approve=True)


def reject(
    conn: psycopg.Connection[Any], sfn: Any, settings: Settings, version: str, actor: str, reason: str = ""
) -> dict[str, Any]:
    """Answer a pending approval with no: traffic stays as it is and the version is marked rejected."""
    return _answer(conn, sfn, settings, version, actor, reason or "rejected", approve=False)


# -- canary ----------------------------------------------------------------------------------------------


def _check_alias_unchanged(current: dict[str, Any], plan: dict[str, Any], ours: str) -> None:
    before = plan["alias_before"]
    foreign = {v for v in current["weights"] if v != ours}
    if current["function_version"] not in (before["function_version"], ours) or foreign:
        raise PromotionRefused(
            f"alias {plan['alias']} changed while this promotion ran (now {current['function_version']}"
            f" {current['weights'] or ''}, was {before['function_version']}): not touching it"
        )


def start_canary(
    conn: psycopg.Connection[Any], lam: Any, settings: Settings, plan: dict[str, Any], deployment: dict[str, Any]
) -> dict[str, Any]:
    """Give the new version ``canary_percent`` of the live traffic; the champion keeps the rest."""
    serving = Serving.from_settings(settings)
    canary = deployment["function_version"]
    current = deployer.alias_state(lam, serving.function, serving.alias)
    _check_alias_unchanged(current, plan, canary)
    stable = plan["champion"]["function_version"]
    state = deployer.set_canary(
        lam,
        serving.function,
        serving.alias,
        stable_version=stable,
        canary_version=canary,
        percent=float(plan["canary_percent"]),
        revision_id=current["revision_id"],
    )
    started = _now()
    try:
        with conn.transaction():
            record(
                conn,
                model_name=plan["model_name"],
                version=plan["model_version"],
                previous_version=plan["champion"]["version"],
                action="canary-started",
                strategy=plan["strategy"],
                traffic_percent=float(plan["canary_percent"]),
                function_version=canary,
                reason=(
                    f"{plan['canary_percent']:g}% of {serving.alias} to version {canary}, the rest to {stable}"
                    f" (champion {plan['champion']['version']}); health check after {plan['bake_seconds']} s"
                ),
                actor=plan["actor"],
                execution_arn=plan["execution_arn"],
                details={"alias": state},
            )
    except BaseException:
        deployer.switch(lam, serving.function, serving.alias, stable)
        raise
    return {"started_at": _iso(started), "alias": state}


# -- the end of a promotion ------------------------------------------------------------------------------


def _finalize_reason(state: dict[str, Any]) -> tuple[str, str]:
    """(reason, actor) of the switch, by the route that led to it."""
    plan = state["plan"]
    route = plan["route"]
    if route == "canary":
        return state["canary"]["reason"], plan["actor"]
    if route == "approval":
        approval = state.get("approval") or {}
        by = str(approval.get("approved_by") or "unknown")
        return f"approved by {by}: {approval.get('reason') or 'approved'}", by
    if route == "gate":
        return f"metric gate passed: {state['gate']['reason']}", plan["actor"]
    return "; ".join(part for part in (plan["reason"], plan.get("note")) if part), plan["actor"]


def finalize(
    conn: psycopg.Connection[Any],
    lam: Any,
    ssm: Any,
    client: MlflowClient,
    settings: Settings,
    state: dict[str, Any],
) -> dict[str, Any]:
    """All traffic to the new version, which becomes champion (the old one ``previous``).

    Alias, SSM parameter and MLflow aliases change in that order; if a later one fails, the earlier
    ones are put back before the error goes on, so traffic and registry never disagree.
    """
    serving = Serving.from_settings(settings)
    plan, deployment = state["plan"], state["deployment"]
    model_name, version = plan["model_name"], plan["model_version"]
    target = deployment["function_version"]
    before = deployer.alias_state(lam, serving.function, serving.alias)
    _check_alias_unchanged(before, plan, target)
    aliases_before = _aliases(client, model_name)
    parameter_before = _parameter(ssm, serving.parameter)
    reason, actor = _finalize_reason(state)
    switched = deployer.switch(lam, serving.function, serving.alias, target, before["revision_id"])
    try:
        deployer.put_model_layer_parameter(ssm, serving.parameter, deployment["layer_arn"])
        promoted = registry.promote(client, conn, model_name, version)
        previous = promoted["previous"] or (plan["champion"] or {}).get("version")
        with conn.transaction():
            record(
                conn,
                model_name=model_name,
                version=version,
                previous_version=previous,
                action="promoted",
                strategy=plan["strategy"],
                traffic_percent=100,
                function_version=target,
                reason=reason,
                actor=actor,
                execution_arn=plan["execution_arn"],
                details={
                    "previous_function_version": plan["alias_before"]["function_version"],
                    "layer_arn": deployment["layer_arn"],
                    "gate": state.get("gate"),
                    "canary": state.get("canary"),
                    "approval": state.get("approval"),
                },
            )
        _finish(conn, plan["execution_arn"], "promoted", reason)
    except BaseException:
        deployer.restore_alias(lam, serving.function, serving.alias, before)
        _restore_parameter(ssm, serving.parameter, parameter_before)
        _restore_aliases(client, conn, model_name, aliases_before)
        raise
    return {"outcome": "promoted", "reason": reason, "champion": version, "previous": previous, "alias": switched}


def _parameter(ssm: Any, name: str) -> str | None:
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except Exception as exc:
        if "ParameterNotFound" in type(exc).__name__ or "ParameterNotFound" in str(exc):
            return None
        raise


def _restore_parameter(ssm: Any, name: str, value: str | None) -> None:
    try:
        if value is None:
            ssm.delete_parameter(Name=name)
        else:
            deployer.put_model_layer_parameter(ssm, name, value)
    except Exception:  # noqa: BLE001, S110 - best effort; the original error is what the caller must see
        pass


OUTCOMES = {  # roll_back's outcome -> (deployments action, promotions status, approval status, reject the model)
    "rolled-back": ("rolled-back", "rolled-back", None, True),
    "rejected": ("rejected", "rejected", None, True),
    "expired": ("approval-expired", "rejected", "expired", True),
    "failed": ("failed", "failed", None, False),
}


def _roll_back_reason(state: dict[str, Any], outcome: str) -> tuple[str, str]:
    plan = state["plan"]
    error = state.get("error") or {}
    if outcome == "rolled-back":
        return str((state.get("canary") or {}).get("reason") or "canary unhealthy"), plan["actor"]
    if outcome == "expired":
        return f"no approval within {plan['approval_timeout_s']} s", plan["actor"]
    if outcome == "rejected" and error.get("Error") == "Rejected":
        try:
            cause = json.loads(error.get("Cause") or "{}")
        except json.JSONDecodeError:
            cause = {"reason": error.get("Cause")}
        by = str(cause.get("rejected_by") or "unknown")
        return f"rejected by {by}: {cause.get('reason') or 'rejected'}", by
    if outcome == "rejected":
        return f"metric gate refused: {(state.get('gate') or {}).get('reason', '')}", plan["actor"]
    cause = str(error.get("Cause") or "")
    try:  # a Lambda task's cause is its error payload as JSON
        payload = json.loads(cause)
        cause = f"{payload.get('errorType', '')}: {payload.get('errorMessage', cause)}"
    except (json.JSONDecodeError, AttributeError):
        pass
    return f"promotion failed at a step: {error.get('Error', 'error')}: {cause}"[:2000], plan["actor"]


def roll_back(
    conn: psycopg.Connection[Any],
    lam: Any,
    client: MlflowClient,
    settings: Settings,
    state: dict[str, Any],
    outcome: str,
) -> dict[str, Any]:
    """End a promotion without promoting: traffic back to the champion alone, the model marked
    rejected (unless the promotion ``failed`` for reasons that are not the model's), and why."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    action, status, approval_status, reject_model = OUTCOMES[outcome]
    serving = Serving.from_settings(settings)
    plan = state["plan"]
    model_name, version = plan["model_name"], plan["model_version"]
    ours = (state.get("deployment") or {}).get("function_version")
    current = deployer.alias_state(lam, serving.function, serving.alias)
    restored = current
    before = plan["alias_before"]
    # only undo what this promotion did: its version holding a weight, or the whole alias
    if ours and (ours in current["weights"] or (current["function_version"] == ours != before["function_version"])):
        restored = deployer.switch(lam, serving.function, serving.alias, before["function_version"])
    reason, actor = _roll_back_reason(state, outcome)
    if reject_model:
        _mark_rejected(client, conn, model_name, version, f"{action}: {reason}")
    with conn.transaction():
        record(
            conn,
            model_name=model_name,
            version=version,
            previous_version=(plan.get("champion") or {}).get("version"),
            action=action,
            strategy=plan["strategy"],
            traffic_percent=0,
            function_version=ours,
            reason=reason,
            actor=actor,
            execution_arn=plan["execution_arn"],
            details={"alias_before": current, "alias_after": restored, "canary": state.get("canary")},
        )
    _finish(conn, plan["execution_arn"], status, reason, approval_status)
    return {"outcome": outcome, "reason": reason, "alias": restored}


# -- rollback (blue-green's way back) ----------------------------------------------------------------------


def _function_version_serving(
    conn: psycopg.Connection[Any], lam: Any, s3: Any, serving: Serving, model_name: str, version: str
) -> dict[str, Any]:
    """The function version that served ``version`` (as recorded when it was promoted), else any
    version serving it, else a new one from its artifact (a restarted local cloud has none left)."""
    recorded = conn.execute(
        "SELECT function_version FROM model_registry.deployments WHERE model_name = %s AND version = %s"
        " AND action = 'promoted' AND function_version IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT 1",
        (model_name, version),
    ).fetchone()
    if recorded is not None:
        try:
            configuration = deployer.version_configuration(lam, serving.function, str(recorded[0]))
        except Exception:  # noqa: BLE001 - deleted or never existed here: look further
            configuration = {}
        layer = deployer.model_layer_of(configuration, serving.layer_name) if configuration else None
        if layer and deployer.model_of(configuration.get("Description")) == (model_name, version):
            return {"function_version": str(recorded[0]), "layer_arn": layer, "reused": True}
    found = deployer.find_version(lam, serving.function, model_name, version, serving.layer_name)
    if found is not None:
        layer_arn = deployer.model_layer_of(found, serving.layer_name)
        return {"function_version": str(found["Version"]), "layer_arn": layer_arn, "reused": True}
    row = model_row(conn, model_name, version)
    if row is None or not row["serving_artifact_uri"]:
        raise CommandError(f"{model_name} version {version} has no serving artifact to deploy again")
    return deployer.deploy_model(
        lam,
        s3,
        function=serving.function,
        layer_name=serving.layer_name,
        artifact_uri=str(row["serving_artifact_uri"]),
        metadata=layer_metadata(row, model_name, serving.alias),
    )


def rollback(
    conn: psycopg.Connection[Any],
    lam: Any,
    s3: Any,
    ssm: Any,
    sfn: Any,
    client: MlflowClient,
    settings: Settings,
    actor: str,
    reason: str = "",
) -> dict[str, Any]:
    """Put the ``previous`` version back on all live traffic at once; the demoted champion is marked
    rejected. One alias update when the previous function version still exists (it does, unless a
    local cloud was restarted)."""
    serving = Serving.from_settings(settings)
    model_name = settings.model_name
    for execution_arn, version, _ in _running(conn, model_name):
        if _execution_status(sfn, execution_arn) == "RUNNING":
            raise CommandError(
                f"the promotion of version {version} is running ({execution_arn}): let it end, or"
                f" `pipectl reject {version}` if it waits for approval, before rolling back"
            )
    aliases_before = _aliases(client, model_name)
    previous, champion = aliases_before["previous"], aliases_before["champion"]
    if previous is None:
        raise CommandError(f"{model_name} has no previous version to roll back to (champion: {champion or 'none'})")
    target = _function_version_serving(conn, lam, s3, serving, model_name, previous)
    before = deployer.alias_state(lam, serving.function, serving.alias)
    parameter_before = _parameter(ssm, serving.parameter)
    why = reason or "rollback requested"
    switched = deployer.switch(lam, serving.function, serving.alias, target["function_version"], before["revision_id"])
    try:
        if target.get("layer_arn"):
            deployer.put_model_layer_parameter(ssm, serving.parameter, target["layer_arn"])
        rolled = registry.rollback(client, conn, model_name)
        with conn.transaction():
            record(
                conn,
                model_name=model_name,
                version=previous,
                previous_version=rolled["rolled_back"],
                action="rolled-back",
                strategy="rollback",
                traffic_percent=100,
                function_version=target["function_version"],
                reason=why,
                actor=actor,
                details={"alias_before": before, "layer_arn": target.get("layer_arn")},
            )
    except BaseException:
        deployer.restore_alias(lam, serving.function, serving.alias, before)
        _restore_parameter(ssm, serving.parameter, parameter_before)
        _restore_aliases(client, conn, model_name, aliases_before)
        raise
    return {
        "champion": previous,
        "rolled_back": rolled["rolled_back"],
        "function_version": target["function_version"],
        "alias": switched,
        "reason": why,
    }


# -- what serves now ---------------------------------------------------------------------------------------


def status(conn: psycopg.Connection[Any], lam: Any, client: MlflowClient | None, settings: Settings) -> dict[str, Any]:
    """The live alias, the model each of its versions serves, the registry's aliases, running promotions."""
    serving = Serving.from_settings(settings)
    alias = deployer.alias_state(lam, serving.function, serving.alias)
    routes = {alias["function_version"]: 1.0 - sum(alias["weights"].values()), **alias["weights"]}
    served = []
    for function_version, share in routes.items():
        configuration = deployer.version_configuration(lam, serving.function, function_version)
        model = deployer.model_of(configuration.get("Description"))
        served.append(
            {
                "function_version": function_version,
                "traffic_percent": round(share * 100, 2),
                "model_version": model[1] if model else None,
            }
        )
    running = [
        {"execution_arn": arn, "model_version": version} for arn, version, _ in _running(conn, settings.model_name)
    ]
    return {
        "function": serving.function,
        "alias": serving.alias,
        "routes": served,
        "aliases": _aliases(client, settings.model_name) if client is not None else None,
        "running": running,
    }


def restore_champion(
    conn: psycopg.Connection[Any], lam: Any, s3: Any, ssm: Any, settings: Settings, actor: str
) -> dict[str, Any] | None:
    """Serve the registry's champion again when the alias serves no model (what ``cdk deploy`` does
    with the SSM parameter; a restarted local cloud needs it because its Lambda versions are gone)."""
    serving = Serving.from_settings(settings)
    alias = deployer.alias_state(lam, serving.function, serving.alias)
    primary = deployer.version_configuration(lam, serving.function, alias["function_version"])
    if deployer.model_of(primary.get("Description")) is not None:
        return None
    champion = champion_of(conn, settings.model_name)
    if champion is None:
        return None
    version = champion.version
    target = _function_version_serving(conn, lam, s3, serving, settings.model_name, version)
    switched = deployer.switch(lam, serving.function, serving.alias, target["function_version"])
    if target.get("layer_arn"):
        deployer.put_model_layer_parameter(ssm, serving.parameter, target["layer_arn"])
    with conn.transaction():
        record(
            conn,
            model_name=settings.model_name,
            version=version,
            action="redeployed",
            traffic_percent=100,
            function_version=target["function_version"],
            reason=f"{serving.alias} served no model: the champion was deployed again",
            actor=actor,
            details={"alias_before": alias},
        )
    return {"champion": version, "function_version": target["function_version"], "alias": switched}
