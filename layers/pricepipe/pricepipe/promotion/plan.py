"""The plan of a promotion: the request checked, the route chosen, the lock taken, the alias snapshotted.

:func:`prepare` is the first step of ``infrastructure/statemachines/promotion.asl.json``; every later
step reads the plan it returns. The run's ``model_registry.promotions`` row is the lock that keeps two
promotions from moving the alias at once: :func:`running` finds the holders, :func:`finish` releases
one, and :func:`clear_stale` releases those whose execution ended without reaching an end state.
A code rollout (``kind: code``) takes the same lock, so it never runs beside a promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.errors import UniqueViolation

from pricepipe import registry
from pricepipe.errors import PromotionRefused
from pricepipe.promotion import deployer
from pricepipe.promotion.history import actor_of, iso, model_row, now, record, to_json
from pricepipe.promotion.stepfunctions import execution_status

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_stepfunctions import SFNClient

    from pricepipe.promotion.deployer import AliasState
    from pricepipe.promotion.steps import Plan, Route, ServingChampion
    from pricepipe.settings import Settings

STRATEGIES = ("manual", "auto", "canary", "blue-green")
KINDS = ("model", "code")  # a new model on today's code, or today's code with the champion's model
CODE_ROLLOUT_STRATEGY = "canary"  # a code rollout's default: new code meets live traffic a share at a time


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


# -- the promotion lock --------------------------------------------------------------------------------


def running(conn: psycopg.Connection[Any], model_name: str) -> list[tuple[str, str, str | None]]:
    return [
        (str(r[0]), str(r[1]), r[2])
        for r in conn.execute(
            "SELECT execution_arn, version, function_version FROM model_registry.promotions"
            " WHERE model_name = %s AND status = 'running'",
            (model_name,),
        ).fetchall()
    ]


def finish(
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


def clear_stale(
    conn: psycopg.Connection[Any],
    lam: LambdaClient,
    sfn: SFNClient,
    serving: Serving,
    model_name: str,
    execution_arn: str,
) -> None:
    """Release the lock of promotions whose execution ended without reaching an end state (stopped,
    timed out, or gone with a restarted local cloud); refuse while another one really runs."""
    for other_arn, other_version, other_function_version in running(conn, model_name):
        if other_arn == execution_arn:
            continue
        status = execution_status(sfn, other_arn)
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
                    actor_source="pipeline",
                    traffic_percent=0,
                    function_version=other_function_version,
                    execution_arn=other_arn,
                    details={"alias_before": alias},
                )
        finish(conn, other_arn, "failed", why)


def _code_rollout(request: dict[str, Any], model_name: str, champion: str | None) -> tuple[str, str]:
    """(model version, strategy) of a code rollout: the function's current code with the champion's model."""
    if champion is None:
        raise PromotionRefused(
            f"a code rollout serves the new code with the champion's model, and {model_name} has no champion yet:"
            " promote a model first (its promotion publishes the current code too)"
        )
    asked = request.get("model_version")
    if asked not in (None, "") and str(asked) != champion:
        raise PromotionRefused(
            f"a code rollout keeps the champion's model ({model_name} version {champion}), not version {asked}:"
            " promote that version instead"
        )
    strategy = str(request.get("strategy") or CODE_ROLLOUT_STRATEGY)
    if strategy == "auto":
        raise PromotionRefused(
            "a code rollout keeps the champion's model, so the metric gate (auto) has no other model to judge:"
            " use canary, blue-green or manual"
        )
    return champion, strategy


def _route(
    strategy: str, champion: ServingChampion | None, serves_it: bool, alias: str, version: str
) -> tuple[Route, str]:
    """The route through the state machine, and a note when it is not the strategy's own."""
    if serves_it:
        return "unchanged", f"version {version} already serves all of {alias}'s traffic"
    if strategy == "manual":
        return "approval", ""
    if strategy == "auto":
        return "gate", ""
    if strategy == "canary" and champion is None:
        return "switch", "no model serves yet, so there is nothing to compare a canary with: switching at once"
    return ("canary" if strategy == "canary" else "switch"), ""


def check_alias_unchanged(current: AliasState, plan: Plan, ours: str) -> None:
    before = plan["alias_before"]
    foreign = {v for v in current["weights"] if v != ours}
    if current["function_version"] not in (before["function_version"], ours) or foreign:
        raise PromotionRefused(
            f"alias {plan['alias']} changed while this promotion ran (now {current['function_version']}"
            f" {current['weights'] or ''}, was {before['function_version']}): not touching it"
        )


# -- prepare ---------------------------------------------------------------------------------------------


def prepare(  # noqa: C901, PLR0912, PLR0915 - every refusal a promotion can meet, checked in order before anything changes
    conn: psycopg.Connection[Any],
    lam: LambdaClient,
    sfn: SFNClient,
    client: MlflowClient,
    settings: Settings,
    request: dict[str, Any],
    execution_arn: str,
) -> Plan:
    """Check the request, choose the route, take the promotion lock and snapshot the alias: the plan."""
    serving = Serving.from_settings(settings)
    model_name = settings.model_name
    kind = str(request.get("kind") or "model")
    registered_champion = registry.alias_version(client, model_name, "champion")
    if kind == "code":
        version, strategy = _code_rollout(request, model_name, registered_champion)
    elif kind != "model":
        raise PromotionRefused(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    elif request.get("model_version") in (None, ""):
        raise PromotionRefused("the promotion request names no model_version")
    else:
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

    clear_stale(conn, lam, sfn, serving, model_name, execution_arn)
    alias = deployer.alias_state(lam, serving.function, serving.alias)
    if alias["weights"]:
        # not ours (no promotion runs): a split someone set by hand; refuse rather than guess
        raise PromotionRefused(
            f"alias {serving.alias} of {serving.function} splits traffic {alias['weights']} though no promotion"
            " runs: set it back to one version first"
        )
    primary = deployer.version_configuration(lam, serving.function, alias["function_version"])
    served = deployer.model_of(primary.get("Description"))
    champion: ServingChampion | None = None
    if served is not None and served[0] == model_name:
        champion = {"version": served[1], "function_version": alias["function_version"]}

    serves_it = champion is not None and champion["version"] == version
    if kind == "code" and serves_it:
        # the champion's model already serves: a rollout has nothing to do unless a deploy changed the code
        latest = dict(lam.get_function_configuration(FunctionName=serving.function))
        serves_it = deployer.same_build(primary, latest, serving.layer_name)
    route, note = _route(strategy, champion, serves_it, serving.alias, version)

    reason = str(request.get("reason") or "requested")
    actor, actor_source = actor_of(request)
    plan: Plan = {
        "execution_arn": execution_arn,
        "kind": "code" if kind == "code" else "model",
        "model_name": model_name,
        "model_version": version,
        "strategy": strategy,
        "route": route,
        "reason": reason,
        "note": note,
        "actor": actor,
        "actor_source": actor_source,
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
        "requested_at": iso(now()),
    }
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO model_registry.promotions (execution_arn, model_name, version, strategy, status, reason,"
                " requested_by, requested_by_source, plan, outcome, finished_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s = 'running' THEN NULL ELSE now() END)"
                " ON CONFLICT (execution_arn) DO NOTHING",
                (
                    execution_arn,
                    model_name,
                    version,
                    strategy,
                    "unchanged" if route == "unchanged" else "running",
                    reason,
                    actor,
                    actor_source,
                    to_json(plan),
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
            finish(conn, execution_arn, "failed", f"could not set the challenger alias: {exc}")
            raise
    return plan
