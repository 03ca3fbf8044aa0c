"""Drift state machine task (infrastructure/statemachines/drift.asl.json): check the newest days
against the champion's training reference, store the report, emit the scores as metrics; and the
prediction log's daily upkeep (month partitions ahead, retention: pricepipe.partitions.maintain)."""

from __future__ import annotations

import datetime as dt

import boto3
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from pricepipe import partitions
from pricepipe.contract import load_contract
from pricepipe.db import ConnectionCache, DatabaseCredentials
from pricepipe.drift import flow
from pricepipe.observability import logger, metrics
from pricepipe.settings import get_settings

settings = get_settings()
s3 = boto3.client("s3", region_name=settings.region)
credentials = DatabaseCredentials(settings)
database = ConnectionCache(credentials)
contract = load_contract(settings.contract, s3)


@logger.inject_lambda_context
@metrics.log_metrics
def check(event: flow.DriftEvent, context: LambdaContext) -> flow.DriftResult:
    upkeep = partitions.maintain(database.get(), settings, dt.datetime.now(dt.UTC).date())
    # prefixed: "created" is a logging.LogRecord attribute, which extra keys must not overwrite
    logger.info("prediction log partitions maintained", extra={f"partitions_{k}": v for k, v in upkeep.items()})
    summary = flow.check(database.get(), s3, contract, settings, event.get("request") or {}, event.get("execution"))
    metrics.add_dimension(name="model_name", value=settings.model_name)
    metrics.add_metric(name="drift_detected", unit=MetricUnit.Count, value=1 if summary["decision"] == "retrain" else 0)
    if summary.get("drifted") is not None:
        metrics.add_metric(name="drift_share", unit=MetricUnit.Percent, value=100 * float(summary["drift_share"]))
        for name, value in (summary.get("performance") or {}).items():
            metrics.add_metric(name=f"performance_{name}", unit=MetricUnit.NoUnit, value=float(value))
        for feature, value in (summary.get("psi") or {}).items():
            # one metric per feature (its own dimension set, so its own EMF line)
            with single_metric(
                name="drift_psi", unit=MetricUnit.NoUnit, value=float(value), namespace=settings.metrics_namespace
            ) as score:
                score.add_dimension(name="model_name", value=settings.model_name)
                score.add_dimension(name="feature", value=str(feature))
    logger.info("drift checked", extra=summary)
    return summary
