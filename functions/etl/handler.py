"""ETL state machine tasks (infrastructure/statemachines/etl.asl.json): discover, load one file, summarise.

Thin: parse the event, call pricepipe.etl, shape the result. Clients, settings and the database
connection are made once per container.
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from pricepipe import etl
from pricepipe.contract import load_contract
from pricepipe.db import ConnectionCache, DatabaseCredentials
from pricepipe.observability import logger, metrics
from pricepipe.settings import get_settings
from pricepipe.storage import ObjectRef

settings = get_settings()
s3 = boto3.client("s3", region_name=settings.region)
credentials = DatabaseCredentials(settings)
database = ConnectionCache(credentials)
contract = load_contract(settings.contract, s3)


@logger.inject_lambda_context
def discover(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return etl.discover(s3, database.get(), settings, contract, event.get("prefix"), event["execution"])


@logger.inject_lambda_context
@metrics.log_metrics
def load_file(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = etl.load_file(
        database.get(), s3, contract, settings, ObjectRef.from_dict(event["object"]), event["execution"]
    )
    logger.info("file processed", extra=result.to_dict())
    metrics.add_dimension(name="dataset", value=contract.name)
    for name in ("rows_in", "rows_loaded", "rows_quarantined", "rows_duplicate"):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=getattr(result, name))
    return result.to_dict()


@logger.inject_lambda_context
@metrics.log_metrics
def summarize(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    summary = etl.summarize(database.get(), event["execution"])
    metrics.add_dimension(name="dataset", value=contract.name)
    metrics.add_metric(name="files_failed", unit=MetricUnit.Count, value=summary["files_failed"])
    metrics.add_metric(name="quarantine_ratio", unit=MetricUnit.Percent, value=100 * summary["quarantine_ratio"])
    logger.info("etl run summarised", extra={k: v for k, v in summary.items() if k != "files"})
    return summary
