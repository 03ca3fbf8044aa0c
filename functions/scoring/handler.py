"""Scoring state machine tasks (infrastructure/statemachines/scoring.asl.json): plan, score one part, summarise.

Thin: parse the event, call pricepipe.scoring, shape the result. Clients, settings, the database
connection and the scorer (the contract's checks, the loaded model) are made once per container.
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from pricepipe import scoring
from pricepipe.contract import load_contract
from pricepipe.db import ConnectionCache, DatabaseCredentials
from pricepipe.observability import logger, metrics
from pricepipe.settings import get_settings

settings = get_settings()
s3 = boto3.client("s3", region_name=settings.region)
credentials = DatabaseCredentials(settings)  # re-read when the secret rotates (pricepipe.db)
database = ConnectionCache(credentials)
contract = load_contract(settings.contract, s3)
scorer = scoring.Scorer(contract)


@logger.inject_lambda_context
def plan(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    planned = scoring.plan(s3, database.get(), settings, contract, event.get("request") or {}, event["execution"])
    logger.info("scoring run planned", extra={k: v for k, v in planned.items() if k != "manifest"})
    return planned


@logger.inject_lambda_context
@metrics.log_metrics
def score_part(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = scoring.score_part(database.get(), s3, settings, scorer, event)
    logger.info("part scored", extra=result.to_dict())
    metrics.add_dimension(name="dataset", value=contract.name)
    fresh = result.status != "skipped"  # a part an earlier attempt recorded was counted then
    for name in ("rows_in", "rows_scored", "rows_rejected"):
        metrics.add_metric(name=f"scoring_{name}", unit=MetricUnit.Count, value=getattr(result, name) if fresh else 0)
    return result.to_dict()


@logger.inject_lambda_context
def summarize(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    summary = scoring.summarize(database.get(), settings, event["run"])
    logger.info("scoring run summarised", extra={k: v for k, v in summary.items() if k != "rejected_parts"})
    return summary
