"""Helpers the e2e modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from typing import Any

from pipectl.target import Target


def metrics_named(target: Target, name: str, at_least: int = 1) -> list[dict[str, Any]]:
    """The metrics named ``name``, once their EMF lines have reached CloudWatch (shipped as Lambda's
    log agent ships them: a fraction of a second after the function returns)."""
    cloudwatch = target.client("cloudwatch")
    found: list[dict[str, Any]] = []
    for _ in range(50):
        found = list(cloudwatch.list_metrics(Namespace="PricePipeline", MetricName=name)["Metrics"])
        if len(found) >= at_least:
            break
        time.sleep(0.2)
    return found
