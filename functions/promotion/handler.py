"""Promotion state machine tasks (infrastructure/statemachines/promotion.asl.json) and pipectl's commands.

Thin: parse the event, call pricepipe.promotion, shape the result. Steps that change MLflow aliases
open an MLflow client (its store is the pipeline's database); the others never import mlflow.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, cast

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from pricepipe import promotion, registry
from pricepipe.db import ConnectionCache, DatabaseCredentials
from pricepipe.observability import logger, metrics
from pricepipe.settings import get_settings

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient

    from pricepipe.contract import Contract
    from pricepipe.promotion.steps import (
        Abandoned,
        ApprovalRequested,
        CanaryStarted,
        CanaryVerdict,
        DeployResult,
        GateResult,
        Plan,
        Promoted,
    )

settings = get_settings()
lam = boto3.client("lambda", region_name=settings.region)
s3 = boto3.client("s3", region_name=settings.region)
ssm = boto3.client("ssm", region_name=settings.region)
sfn = boto3.client("stepfunctions", region_name=settings.region)
cloudwatch = boto3.client("cloudwatch", region_name=settings.region)
credentials = DatabaseCredentials(settings)
database = ConnectionCache(credentials)


def connection() -> psycopg.Connection[Any]:
    """The container's connection, in autocommit: each step's writes commit in their own transactions."""
    conn = database.get()
    if not conn.autocommit:
        conn.rollback()
        conn.autocommit = True
    return conn


_mlflow = registry.ReconnectingClient(settings, credentials)


def mlflow_client() -> MlflowClient:
    """The container's MLflow client: rebuilt with the secret read again when the database refuses
    the password it was made with (a rotation since the container started)."""
    return cast("MlflowClient", _mlflow)


@cache
def contract() -> Contract:
    from pricepipe.contract import load_contract

    return load_contract(settings.contract, s3)


@logger.inject_lambda_context
def prepare(event: dict[str, Any], context: LambdaContext) -> Plan:
    plan = promotion.plan.prepare(
        connection(), lam, sfn, mlflow_client(), settings, event.get("request") or {}, event["execution_arn"]
    )
    logger.info("promotion planned", extra={k: plan[k] for k in ("model_version", "strategy", "route", "champion")})
    return plan


@logger.inject_lambda_context
def gate(event: dict[str, Any], context: LambdaContext) -> GateResult:
    result = promotion.gate.gate(connection(), s3, contract(), settings, event["plan"])
    logger.info("metric gate", extra=result)
    return result


@logger.inject_lambda_context
def deploy(event: dict[str, Any], context: LambdaContext) -> DeployResult:
    return promotion.deploy.deploy(connection(), lam, s3, settings, event["plan"])


@logger.inject_lambda_context
def request_approval(event: dict[str, Any], context: LambdaContext) -> ApprovalRequested:
    return promotion.approval.request_approval(connection(), event["plan"], event["deployment"], event["task_token"])


@logger.inject_lambda_context
def start_canary(event: dict[str, Any], context: LambdaContext) -> CanaryStarted:
    return promotion.canary.start_canary(connection(), lam, settings, event["plan"], event["deployment"])


@logger.inject_lambda_context
@metrics.log_metrics
def check_canary(event: dict[str, Any], context: LambdaContext) -> CanaryVerdict:
    verdict = promotion.canary.check(connection(), cloudwatch, settings, event["state"])
    metrics.add_dimension(name="model_name", value=settings.model_name)
    for check in verdict["checks"]:
        metrics.add_metric(name=f"canary_{check['check']}", unit=MetricUnit.NoUnit, value=float(check["value"]))
    logger.info("canary checked", extra={k: verdict[k] for k in ("verdict", "attempt", "reason")})
    return verdict


@logger.inject_lambda_context
def finalize(event: dict[str, Any], context: LambdaContext) -> Promoted:
    return promotion.finalize.finalize(connection(), lam, ssm, mlflow_client(), settings, event["state"])


@logger.inject_lambda_context
@metrics.log_metrics
def abandon(event: dict[str, Any], context: LambdaContext) -> Abandoned:
    result = promotion.abandon.abandon(connection(), lam, mlflow_client(), settings, event["state"], event["outcome"])
    metrics.add_dimension(name="model_name", value=settings.model_name)
    metrics.add_metric(name=f"promotion_{event['outcome'].replace('-', '_')}", unit=MetricUnit.Count, value=1)
    logger.warning("promotion ended without promoting", extra=result)
    return result


@logger.inject_lambda_context
def command(event: dict[str, Any], context: LambdaContext) -> Any:
    """pipectl's operator commands; the database is private, so they run here rather than on a laptop."""
    name = event.get("command")
    by = promotion.history.actor_of(event, default=("unknown", "unverified"))
    actor = by[0]
    reason = str(event.get("reason") or "")
    conn = connection()
    if name == "approve":
        result: Any = promotion.approval.approve(conn, sfn, settings, str(event["model_version"]), by, reason)
    elif name == "reject":
        result = promotion.approval.reject(conn, sfn, settings, str(event["model_version"]), by, reason)
    elif name == "rollback":
        result = promotion.rollback.rollback(
            conn, lam, s3, ssm, sfn, mlflow_client(), settings, actor, reason, actor_source=by[1]
        )
    elif name == "history":
        result = promotion.history.history(conn, settings.model_name, int(event.get("limit") or 20))
    elif name == "status":
        result = promotion.status.status(conn, lam, mlflow_client(), settings)
    else:
        raise promotion.CommandError(f"unknown command {name!r}: approve, reject, rollback, history or status")
    if name in ("approve", "reject", "rollback"):
        logger.info(f"{name} by {actor}", extra={"result": result})
    return result
