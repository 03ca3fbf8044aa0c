"""The Finalize step: all traffic to the new version, which becomes champion (the old one ``previous``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pricepipe import registry
from pricepipe.promotion import deployer
from pricepipe.promotion import ssm as ssm_parameters
from pricepipe.promotion.history import actor_of, aliases, reason_for, record, restore_aliases
from pricepipe.promotion.plan import Serving, check_alias_unchanged, finish

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_ssm import SSMClient

    from pricepipe.promotion.steps import Approval, Promoted, PromotionState
    from pricepipe.settings import Settings


def _finalize_reason(state: PromotionState) -> tuple[str, str, str]:
    """(reason, actor, actor source) of the switch, by the route that led to it."""
    plan = state["plan"]
    route = plan["route"]
    by_plan = plan["actor"], plan["actor_source"]
    if route == "canary":
        return state["canary"]["reason"], *by_plan
    if route == "approval":
        approval: Approval = state.get("approval") or {}
        by, source = actor_of({"actor": approval.get("approved_by"), "actor_source": approval.get("actor_source")})
        return f"approved by {by}: {approval.get('reason') or 'approved'}", by, source
    if route == "gate":
        return f"metric gate passed: {state['gate']['reason']}", *by_plan
    return "; ".join(part for part in (plan["reason"], plan.get("note")) if part), *by_plan


def finalize(
    conn: psycopg.Connection[Any],
    lam: LambdaClient,
    ssm: SSMClient,
    client: MlflowClient,
    settings: Settings,
    state: PromotionState,
) -> Promoted:
    """All traffic to the new version, which becomes champion (the old one ``previous``).

    Alias, SSM parameter and MLflow aliases change in that order; if a later one fails, the earlier
    ones are put back before the error goes on, so traffic and registry never disagree.
    """
    serving = Serving.from_settings(settings)
    plan, deployment = state["plan"], state["deployment"]
    model_name, version = plan["model_name"], plan["model_version"]
    target = deployment["function_version"]
    before = deployer.alias_state(lam, serving.function, serving.alias)
    check_alias_unchanged(before, plan, target)
    aliases_before = aliases(client, model_name)
    parameter_before = ssm_parameters.value(ssm, serving.parameter)
    reason, actor, actor_source = _finalize_reason(state)
    switched = deployer.switch(lam, serving.function, serving.alias, target, before["revision_id"])
    try:
        ssm_parameters.put_model_layer_parameter(ssm, serving.parameter, deployment["layer_arn"])
        serving_before = plan["champion"]
        if plan.get("kind") == "code":  # the champion's model on new code: the registry has nothing to change
            previous = serving_before["version"] if serving_before else None
        else:
            promoted = registry.promote(client, conn, model_name, version)
            previous = promoted["previous"] or (serving_before["version"] if serving_before else None)
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
                reason=reason_for(plan, reason),
                actor=actor,
                actor_source=actor_source,
                execution_arn=plan["execution_arn"],
                details={
                    "previous_function_version": plan["alias_before"]["function_version"],
                    "layer_arn": deployment["layer_arn"],
                    "gate": state.get("gate"),
                    "canary": state.get("canary"),
                    "approval": state.get("approval"),
                },
            )
        finish(conn, plan["execution_arn"], "promoted", reason_for(plan, reason))
    except BaseException:
        deployer.restore_alias(lam, serving.function, serving.alias, before)
        ssm_parameters.restore(ssm, serving.parameter, parameter_before)
        restore_aliases(client, conn, model_name, aliases_before)
        raise
    return {"outcome": "promoted", "reason": reason, "champion": version, "previous": previous, "alias": switched}
