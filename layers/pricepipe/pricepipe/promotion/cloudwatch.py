"""CloudWatch adapter: the metrics a canary is judged on, summed over its bake.

Lambda publishes ``Invocations``, ``Errors`` and ``Duration`` per version reached through an alias
(dimension ``ExecutedVersion``), exactly what a canary needs; the function's own code adds nothing for
it. The API adds its 5xx answers (errors it caught, which Lambda never counts) as an EMF metric.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import DimensionTypeDef, MetricDataQueryTypeDef

LAMBDA_NAMESPACE = "AWS/Lambda"


class LambdaTraffic(TypedDict):
    """What one function version did behind an alias: requests, failed invocations, p99 duration (ms)."""

    invocations: float
    errors: float
    p99_ms: float | None


def _period(start: dt.datetime, end: dt.datetime) -> int:
    """One period spanning the whole window (CloudWatch's periods are whole minutes)."""
    seconds = max(1.0, (end - start).total_seconds())
    return int(max(60, math.ceil(seconds / 60) * 60))


def _query(
    key: str, namespace: str, metric: str, dimensions: Sequence[DimensionTypeDef], period: int, stat: str
) -> MetricDataQueryTypeDef:
    return {
        "Id": key,
        "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": dimensions},
            "Period": period,
            "Stat": stat,
        },
    }


def _values(
    cloudwatch: CloudWatchClient, queries: Sequence[MetricDataQueryTypeDef], start: dt.datetime, end: dt.datetime
) -> dict[str, list[float]]:
    answer = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start, EndTime=end)
    return {r["Id"]: [v for v in r.get("Values", []) if v is not None] for r in answer["MetricDataResults"]}


def lambda_traffic(
    cloudwatch: CloudWatchClient, function: str, alias: str, version: str, start: dt.datetime, end: dt.datetime
) -> LambdaTraffic:
    """Invocations, errors and p99 duration (ms) of one version behind ``alias`` between two moments."""
    dimensions: list[DimensionTypeDef] = [
        {"Name": "FunctionName", "Value": function},
        {"Name": "Resource", "Value": f"{function}:{alias}"},
        {"Name": "ExecutedVersion", "Value": version},
    ]
    period = _period(start, end)
    values = _values(
        cloudwatch,
        [
            _query("invocations", LAMBDA_NAMESPACE, "Invocations", dimensions, period, "Sum"),
            _query("errors", LAMBDA_NAMESPACE, "Errors", dimensions, period, "Sum"),
            _query("p99", LAMBDA_NAMESPACE, "Duration", dimensions, period, "p99"),
        ],
        start,
        end,
    )
    return {
        "invocations": float(sum(values.get("invocations", []))),
        "errors": float(sum(values.get("errors", []))),
        "p99_ms": max(values["p99"]) if values.get("p99") else None,
    }


def api_server_errors(
    cloudwatch: CloudWatchClient,
    namespace: str,
    metric: str,
    function: str,
    version: str,
    start: dt.datetime,
    end: dt.datetime,
) -> float:
    """Responses the API answered with a 5xx from that version (errors it caught, which Lambda's own
    Errors metric does not count)."""
    dimensions: list[DimensionTypeDef] = [
        {"Name": "service", "Value": function},
        {"Name": "function_version", "Value": version},
    ]
    query = _query("server_errors", namespace, metric, dimensions, _period(start, end), "Sum")
    return float(sum(sum(found) for found in _values(cloudwatch, [query], start, end).values()))
