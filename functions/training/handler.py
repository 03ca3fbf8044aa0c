"""Training state machine tasks (infrastructure/statemachines/training.asl.json): prepare, evaluate, job_failed.

Thin: parse the event, call pricepipe.training.flow, shape the result.
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from pricepipe.contract import load_contract
from pricepipe.db import ConnectionCache, DatabaseCredentials
from pricepipe.observability import logger, metrics
from pricepipe.settings import get_settings
from pricepipe.training import flow

settings = get_settings()
s3 = boto3.client("s3", region_name=settings.region)
credentials = DatabaseCredentials(settings)
database = ConnectionCache(credentials)
contract = load_contract(settings.contract, s3)


@logger.inject_lambda_context
def prepare(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return flow.prepare(database.get(), contract, settings, event.get("request") or {}, event["execution"])


@logger.inject_lambda_context
@metrics.log_metrics
def evaluate(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcome = flow.evaluate(database.get(), s3, contract, settings, event["prepared"])
    metrics.add_dimension(name="model_name", value=settings.model_name)
    for name, value in outcome["challenger"]["metrics"].items():
        metrics.add_metric(name=f"challenger_{name}", unit=MetricUnit.NoUnit, value=float(value))
    logger.info("challenger evaluated", extra={k: v for k, v in outcome.items() if k != "challenger"})
    return outcome


@logger.inject_lambda_context
@metrics.log_metrics
def job_failed(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = flow.job_failed(s3, event["prepared"], event.get("error") or {})
    metrics.add_dimension(name="model_name", value=settings.model_name)
    metrics.add_metric(name="training_job_failed", unit=MetricUnit.Count, value=1)
    logger.error("training job failed", extra=report)
    return report
