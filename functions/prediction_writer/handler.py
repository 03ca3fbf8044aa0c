"""Prediction log → ``monitoring.predictions``: a CloudWatch Logs subscription on the API's log group.

Thin: decode the delivery, parse the prediction lines (:mod:`pricepipe.serving.prediction_log`),
COPY the rows not stored yet in one transaction (:mod:`pricepipe.monitoring` explains this route).
One database connection per container, opened on the first delivery. A line that cannot be read is skipped and
logged, so one bad line never holds back the rest; a database failure raises, and Lambda retries
the delivery, which the unique (request id, record key, predicted at) index makes safe.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from pricepipe.db import ConnectionCache, DatabaseCredentials
from pricepipe.monitoring import insert_predictions
from pricepipe.observability import logger, metrics
from pricepipe.serving.prediction_log import parse_subscription_event
from pricepipe.settings import get_settings

settings = get_settings()
credentials = DatabaseCredentials(settings)
database = ConnectionCache(credentials)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_subscription_event(event)
    for event_id, reason in parsed.skipped:
        logger.warning("unreadable prediction log line skipped", extra={"log_event_id": event_id, "reason": reason})
    inserted = insert_predictions(database.get(), parsed.records) if parsed.records else 0
    result = {
        "lines": parsed.lines,
        "rows": len(parsed.records),
        "inserted": inserted,
        "duplicates": len(parsed.records) - inserted,
        "skipped": len(parsed.skipped),
        "ignored": parsed.ignored,
    }
    logger.info("prediction log loaded", extra=result)
    metrics.add_metric(name="PredictionsLogged", unit=MetricUnit.Count, value=inserted)
    metrics.add_metric(name="PredictionLogLinesSkipped", unit=MetricUnit.Count, value=len(parsed.skipped))
    return result
