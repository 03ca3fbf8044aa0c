"""The Grafana dashboard (monitoring/grafana/pricepipe.json): well-formed, on the CloudWatch data source,
and showing only metrics the code or AWS really emits (infrastructure.stacks.monitoring_stack.METRICS),
the same ones as the CloudWatch dashboard. Grafana cannot be installed here (DESIGN §4): this is the check."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from infrastructure import catalog
from infrastructure.stacks.monitoring_stack import METRICS, MODEL_NAME, MetricGroup
from infrastructure.stacks.serving_stack import API_NAME, API_STAGE
from tests.infrastructure.support import of_type
from tests.infrastructure.test_monitoring_stack import cloudwatch_dashboard_metrics

pytestmark = pytest.mark.infra

GRAFANA = catalog.ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "pricepipe.json"
DATASOURCE = {"type": "cloudwatch", "uid": "${datasource}"}
SEARCH = re.compile(r"^SEARCH\('\{([\w/]+),([\w,]+)\} MetricName=\"(\w+)\"(?: \"([^\"]+)\")?', '(\w+)', \d+\)$")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _metric_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]


def _group(namespace: str, name: str) -> MetricGroup:
    matches = [g for g in METRICS if g.namespace == namespace and name in g.names]
    assert matches, f"{namespace}/{name} is emitted by nothing (infrastructure/stacks/monitoring_stack.py METRICS)"
    return matches[0]


def _fixed_dimension_values(group: MetricGroup) -> dict[str, str]:
    """The dimension values a panel may pin; others stay open (a variable, or every value)."""
    function = catalog.function(catalog.SERVING_FUNCTION).name
    values = {"ApiName": API_NAME, "Stage": API_STAGE, "model_name": MODEL_NAME}
    if group.namespace == "AWS/Lambda":
        values |= {"FunctionName": function, "Resource": f"{function}:{catalog.LIVE_ALIAS}"}
    if group.function is not None:
        values["service"] = group.service
    return values


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _metric_panels(dashboard):
        for target in panel["targets"]:
            yield panel["title"], target


def _shown(target: dict[str, Any]) -> tuple[str, str]:
    """(namespace, metric) a target queries, from its builder fields or its SEARCH expression."""
    if target.get("metricEditorMode") == 1:
        match = SEARCH.match(target["expression"])
        assert match, f"not a SEARCH this test can read: {target['expression']}"
        namespace, dimensions, name, _, _ = match.groups()
        assert tuple(dimensions.split(",")) == _group(namespace, name).dimensions
        return namespace, name
    return target["namespace"], target["metricName"]


def test_given_the_dashboard_file_then_it_is_a_grafana_dashboard_with_unique_panel_ids(
    dashboard: dict[str, Any],
) -> None:
    assert {"uid", "title", "panels", "templating", "schemaVersion", "time"} <= set(dashboard)
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) for i in ids)
    for panel in _panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


def test_given_the_templating_then_datasource_and_region_are_variables_of_the_cloudwatch_type(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "cloudwatch"
    region = variables["region"]
    assert region["type"] == "query"
    assert region["datasource"] == DATASOURCE
    assert region["query"]["queryType"] == "regions"


def test_given_every_panel_then_it_queries_the_cloudwatch_datasource_in_the_selected_region(
    dashboard: dict[str, Any],
) -> None:
    panels = _metric_panels(dashboard)
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["region"] == "$region", panel["title"]
            assert target["queryMode"] == "Metrics", panel["title"]


def test_given_every_target_then_it_shows_a_metric_the_code_or_aws_emits_with_its_real_dimensions(
    dashboard: dict[str, Any],
) -> None:
    for title, target in _targets(dashboard):
        namespace, name = _shown(target)
        group = _group(namespace, name)
        if target.get("metricEditorMode") == 1:
            continue
        dimensions = target["dimensions"]
        assert set(dimensions) <= set(group.dimensions), f"{title}: {name} has no dimension {set(dimensions)}"
        fixed = _fixed_dimension_values(group)
        for key, value in dimensions.items():
            assert value == fixed.get(key, value) or str(value).startswith("$"), f"{title}: {key}={value}"
        assert target["matchExact"] == (set(dimensions) == set(group.dimensions)), f"{title}: {name}"


def test_given_the_grafana_dashboard_then_it_shows_what_the_cloudwatch_dashboard_shows(
    dashboard: dict[str, Any], monitoring_resources: dict[str, dict[str, Any]]
) -> None:
    (cw,) = of_type(monitoring_resources, "AWS::CloudWatch::Dashboard").values()
    cloudwatch = cloudwatch_dashboard_metrics(json.dumps(cw["Properties"]["DashboardBody"]))
    grafana = {_shown(target) for _, target in _targets(dashboard)}
    assert cloudwatch <= grafana


def test_given_the_dashboard_then_each_state_machine_and_the_predictions_by_model_version_are_shown(
    dashboard: dict[str, Any],
) -> None:
    text = json.dumps(dashboard)
    for spec in catalog.STATE_MACHINES:
        assert f"stateMachine:{spec.name}" in text, spec.name
    by_version = [
        t for _, t in _targets(dashboard) if t.get("metricName") == "Predictions" and not t.get("matchExact", True)
    ]
    assert by_version, "one series per model_version"


def test_given_the_provisioning_example_then_it_declares_a_cloudwatch_datasource() -> None:
    provisioning = yaml.safe_load((GRAFANA / "datasource.yaml").read_text(encoding="utf-8"))
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "cloudwatch"
    assert source["jsonData"]["authType"] == "default"
