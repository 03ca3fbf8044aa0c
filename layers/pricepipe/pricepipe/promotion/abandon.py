"""Ending a promotion unpromoted: the canary rolled back, the version rejected (by a person, the metric
gate, or an approval nobody gave in time), or a step that failed. Traffic goes back to the champion
alone, and the history says why.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from pricepipe import registry
from pricepipe.promotion import deployer
from pricepipe.promotion.history import actor_of, reason_for, record
from pricepipe.promotion.plan import Serving, finish

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient
    from mypy_boto3_lambda import LambdaClient

    from pricepipe.promotion.steps import Abandoned, Outcome, PromotionState, StepError
    from pricepipe.settings import Settings


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


OUTCOMES = {  # abandon's outcome -> (deployments action, promotions status, approval status, reject the model)
    "rolled-back": ("rolled-back", "rolled-back", None, True),
    "rejected": ("rejected", "rejected", None, True),
    "expired": ("approval-expired", "rejected", "expired", True),
    "failed": ("failed", "failed", None, False),
}


def _abandon_reason(state: PromotionState, outcome: str) -> tuple[str, str, str]:
    """(reason, actor, actor source) of ending without promoting."""
    plan = state["plan"]
    by_plan = plan["actor"], plan["actor_source"]
    error: StepError = state.get("error") or {}
    if outcome == "rolled-back":
        canary = state.get("canary")
        return str((canary["reason"] if canary else None) or "canary unhealthy"), *by_plan
    if outcome == "expired":
        return f"no approval within {plan['approval_timeout_s']} s", *by_plan
    if outcome == "rejected" and error.get("Error") == "Rejected":
        try:
            cause = json.loads(error.get("Cause") or "{}")
        except json.JSONDecodeError:
            cause = {"reason": error.get("Cause")}
        by, source = actor_of(
            {"actor": cause.get("rejected_by") or "unknown", "actor_source": cause.get("actor_source")}
        )
        return f"rejected by {by}: {cause.get('reason') or 'rejected'}", by, source
    if outcome == "rejected":
        gate = state.get("gate")
        return f"metric gate refused: {gate['reason'] if gate else ''}", *by_plan
    cause = str(error.get("Cause") or "")
    try:  # a Lambda task's cause is its error payload as JSON
        payload = json.loads(cause)
        cause = f"{payload.get('errorType', '')}: {payload.get('errorMessage', cause)}"
    except (json.JSONDecodeError, AttributeError):
        pass
    return f"promotion failed at a step: {error.get('Error', 'error')}: {cause}"[:2000], *by_plan


def abandon(
    conn: psycopg.Connection[Any],
    lam: LambdaClient,
    client: MlflowClient,
    settings: Settings,
    state: PromotionState,
    outcome: str,
) -> Abandoned:
    """End a promotion without promoting: traffic back to the champion alone, the model marked
    rejected (unless the promotion ``failed`` for reasons that are not the model's), and why."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    action, status, approval_status, reject_model = OUTCOMES[outcome]
    serving = Serving.from_settings(settings)
    plan = state["plan"]
    model_name, version = plan["model_name"], plan["model_version"]
    deployment = state.get("deployment")
    ours = deployment["function_version"] if deployment else None
    current = deployer.alias_state(lam, serving.function, serving.alias)
    restored = current
    before = plan["alias_before"]
    # only undo what this promotion did: its version holding a weight, or the whole alias
    if ours and (ours in current["weights"] or (current["function_version"] == ours != before["function_version"])):
        restored = deployer.switch(lam, serving.function, serving.alias, before["function_version"])
    reason, actor, actor_source = _abandon_reason(state, outcome)
    if reject_model:
        _mark_rejected(client, conn, model_name, version, f"{action}: {reason}")
    with conn.transaction():
        record(
            conn,
            model_name=model_name,
            version=version,
            previous_version=champion["version"] if (champion := plan["champion"]) else None,
            action=action,
            strategy=plan["strategy"],
            traffic_percent=0,
            function_version=ours,
            reason=reason_for(plan, reason),
            actor=actor,
            actor_source=actor_source,
            execution_arn=plan["execution_arn"],
            details={"alias_before": current, "alias_after": restored, "canary": state.get("canary")},
        )
    finish(conn, plan["execution_arn"], status, reason, approval_status)
    return {"outcome": cast("Outcome", outcome), "reason": reason, "alias": restored}
