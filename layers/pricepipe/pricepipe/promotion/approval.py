"""Manual approval: the execution waits on a Step Functions task token until a person answers.

:func:`request_approval` is the step that keeps the token; :func:`approve` and :func:`reject` are
``pipectl approve`` / ``pipectl reject``, which answer it.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pricepipe.errors import CommandError, PromotionRefused
from pricepipe.promotion import stepfunctions
from pricepipe.promotion.history import iso, now, record
from pricepipe.promotion.plan import finish

if TYPE_CHECKING:
    import psycopg
    from mypy_boto3_stepfunctions import SFNClient

    from pricepipe.promotion.history import Actor
    from pricepipe.promotion.steps import ApprovalRequested, Deployment, Plan
    from pricepipe.settings import Settings


def request_approval(
    conn: psycopg.Connection[Any], plan: Plan, deployment: Deployment, task_token: str
) -> ApprovalRequested:
    """Keep the task token where ``pipectl approve`` / ``reject`` find it; the execution waits meanwhile."""
    expires = now() + dt.timedelta(seconds=int(plan["approval_timeout_s"]))
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
            actor_source=plan["actor_source"],
            execution_arn=plan["execution_arn"],
        )
    return {"status": "pending", "expires_at": iso(expires)}


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
    sfn: SFNClient,
    settings: Settings,
    version: str,
    by: Actor,
    reason: str,
    approve: bool,
) -> dict[str, Any]:
    """Send the answer and write it down: the decision's own ``model_registry.deployments`` row (who,
    when, why) and the promotion row, committed only once the waiting task took the answer. The row's
    time is its transaction's start, before the answer, so it sorts before what the flow does next."""
    actor, actor_source = by
    execution_arn, token = _pending(conn, settings.model_name, version)
    try:
        with conn.transaction():
            conn.execute(
                "UPDATE model_registry.promotions SET approval_status = %s, approval_decided_at = now(),"
                " approval_decided_by = %s, approval_decided_by_source = %s, approval_reason = %s"
                " WHERE execution_arn = %s",
                ("approved" if approve else "rejected", actor, actor_source, reason, execution_arn),
            )
            record(
                conn,
                model_name=settings.model_name,
                version=version,
                action="approval-granted" if approve else "approval-refused",
                traffic_percent=0,
                reason=f"{'approved' if approve else 'rejected'} by {actor}: {reason}",
                actor=actor,
                actor_source=actor_source,
                execution_arn=execution_arn,
            )
            answer = {"reason": reason, "actor_source": actor_source}
            if approve:
                stepfunctions.send_task_success(sfn, token, {"approved_by": actor, **answer})
            else:
                stepfunctions.send_task_failure(sfn, token, "Rejected", {"rejected_by": actor, **answer})
    except stepfunctions.TaskClosed as exc:
        finish(conn, execution_arn, "rejected", f"approval request ended before an answer ({exc.code})", "expired")
        raise CommandError(
            f"the approval request for version {version} is no longer open ({exc.code}): start a new promotion"
        ) from exc
    return {"model_version": version, "execution_arn": execution_arn, "approved": approve, "by": actor}


def approve(
    conn: psycopg.Connection[Any], sfn: SFNClient, settings: Settings, version: str, by: Actor, reason: str = ""
) -> dict[str, Any]:
    """Answer a pending approval with yes: the waiting promotion switches traffic to ``version``.
    ``by`` is (actor, actor source), as :func:`~pricepipe.promotion.history.actor_of` gives it."""
    return _answer(conn, sfn, settings, version, by, reason or "approved", approve=True)


def reject(
    conn: psycopg.Connection[Any], sfn: SFNClient, settings: Settings, version: str, by: Actor, reason: str = ""
) -> dict[str, Any]:
    """Answer a pending approval with no: traffic stays as it is and the version is marked rejected."""
    return _answer(conn, sfn, settings, version, by, reason or "rejected", approve=False)
