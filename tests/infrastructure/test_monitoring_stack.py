"""MonitoringStack: alarms to an encrypted SSL-only topic, the dashboard, and the metric catalog behind both."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from infrastructure import catalog
from infrastructure.stacks.config import DEFAULT_QUARANTINE_ALARM_PERCENT, dataset_name
from infrastructure.stacks.monitoring_stack import METRICS, MODEL_NAME, NAMESPACE
from infrastructure.stacks.serving_stack import API_NAME
from tests.infrastructure.support import of_type

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
PACKAGE = catalog.ROOT / "layers" / "pricepipe" / "pricepipe"


def _source(path: str) -> str:
    return (catalog.ROOT / path).read_text(encoding="utf-8")


# -- the metric catalog: what the code really emits --------------------------------------------------


def _emitted_by_family() -> dict[str, set[str]]:
    """Metric names the handlers build from a prefix and a runtime key, derived from the code they call."""
    from pricepipe.promotion.abandon import OUTCOMES
    from pricepipe.training.metrics import regression_metrics

    drift = (PACKAGE / "drift" / "check.py").read_text(encoding="utf-8")
    canary = (PACKAGE / "promotion" / "canary.py").read_text(encoding="utf-8")
    return {
        "challenger_": {f"challenger_{k}" for k in regression_metrics([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])},
        "performance_": {
            f"performance_{m}" for m in re.findall(r'DriftCheck\(\s*"performance",\s*\w+,\s*"(\w+)"', drift)
        },
        "canary_": {f"canary_{c}" for c in re.findall(r'"check":\s*"(\w+)"', canary)},
        "promotion_": {f"promotion_{o.replace('-', '_')}" for o in OUTCOMES},
    }


@pytest.mark.parametrize("group", [g for g in METRICS if g.emitted_by != "AWS"], ids=lambda g: g.names[0])
def test_given_a_metric_of_ours_then_the_handler_named_for_it_emits_it_with_those_dimensions(group: Any) -> None:
    source = _source(group.emitted_by)
    families = _emitted_by_family()
    for name in group.names:
        prefix = next((p for p in families if name.startswith(p)), None)
        if prefix is not None:
            assert name in families[prefix], f"{name}: the code emits {sorted(families[prefix])}"
            assert f'f"{prefix}{{' in source, f"{group.emitted_by} builds {prefix}* names"
        else:
            assert f'"{name}"' in source, f"{group.emitted_by} does not emit {name}"
    for dimension in group.dimensions:
        if dimension == "service":
            continue  # Powertools' default dimension: POWERTOOLS_SERVICE_NAME, the function's name
        assert f'"{dimension}"' in source, f"{group.emitted_by} sets no {dimension} dimension"
    assert group.function is not None
    spec = catalog.function(group.function)
    if group.emitted_by.startswith("functions/"):
        assert group.emitted_by == f"functions/{spec.folder}/handler.py"


def test_given_the_metric_catalog_then_every_handler_metric_is_in_it() -> None:
    """The other direction: a metric a handler adds with a literal name is listed (and so can be shown)."""
    listed = {name for group in METRICS for name in group.names}
    for handler in sorted((catalog.ROOT / "functions").glob("*/handler.py")):
        for name in re.findall(r'add_metric\(\s*name="(\w+)"', handler.read_text(encoding="utf-8")):
            assert name in listed, f"{handler.parent.name} emits {name}"


def test_given_the_bundled_contract_then_the_etl_dataset_dimension_is_its_name() -> None:
    assert dataset_name("hotel_rates") == "hotel_rates"
    assert dataset_name("s3://bucket/contracts/my_prices.yaml") == "my_prices"


# -- the topic and the alarms ------------------------------------------------------------------------


def test_given_the_alarm_topic_then_it_is_encrypted_with_a_rotating_key_and_refuses_plain_http(
    monitoring_resources: Resources,
) -> None:
    ((topic_name, topic),) = of_type(monitoring_resources, "AWS::SNS::Topic").items()
    key = topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    assert monitoring_resources[key]["Properties"]["EnableKeyRotation"] is True
    key_statements = monitoring_resources[key]["Properties"]["KeyPolicy"]["Statement"]
    assert [s for s in key_statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    (policy,) = of_type(monitoring_resources, "AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert [
        s
        for s in statements
        if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    (publish,) = [s for s in statements if s.get("Sid") == "CloudWatchAlarmsPublish"]
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert publish["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert policy["Properties"]["Topics"] == [{"Ref": topic_name}]


def _alarms(resources: Resources) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in of_type(resources, "AWS::CloudWatch::Alarm").items()}


def test_given_every_alarm_then_it_notifies_the_topic(monitoring_resources: Resources) -> None:
    ((topic, _),) = of_type(monitoring_resources, "AWS::SNS::Topic").items()
    alarms = _alarms(monitoring_resources)
    assert alarms
    for name, props in alarms.items():
        assert props["AlarmActions"] == [{"Ref": topic}], name
        assert props["TreatMissingData"] == "notBreaching", "no data (no traffic, no run) is not an alarm"


def test_given_the_alarms_then_api_errors_latency_drift_quarantine_training_and_each_flow_are_watched(
    monitoring_resources: Resources,
) -> None:
    alarms = _alarms(monitoring_resources)
    by_metric = {p["MetricName"]: p for p in alarms.values() if "MetricName" in p}
    assert set(by_metric) == {"5XXError", "Latency", "drift_detected", "quarantine_ratio", "training_job_failed"}
    assert {d["Name"]: d["Value"] for d in by_metric["5XXError"]["Dimensions"]}["ApiName"] == API_NAME
    assert by_metric["Latency"]["ExtendedStatistic"] == "p99"
    drift = by_metric["drift_detected"]
    assert (drift["Namespace"], drift["Threshold"], drift["ComparisonOperator"]) == (
        NAMESPACE,
        1,
        "GreaterThanOrEqualToThreshold",
    )
    assert {d["Name"]: d["Value"] for d in drift["Dimensions"]} == {
        "service": catalog.function("drift-check").name,
        "model_name": MODEL_NAME,
    }
    quarantine = by_metric["quarantine_ratio"]
    assert quarantine["Threshold"] == DEFAULT_QUARANTINE_ALARM_PERCENT
    assert {d["Name"]: d["Value"] for d in quarantine["Dimensions"]} == {
        "service": catalog.function("etl-summarize").name,
        "dataset": "hotel_rates",
    }
    failed = [json.dumps(p["Metrics"]) for p in alarms.values() if "Metrics" in p]
    for spec in catalog.STATE_MACHINES:
        (alarm,) = [m for m in failed if f':stateMachine:{spec.name}"' in m]
        assert "ExecutionsFailed" in alarm and "ExecutionsTimedOut" in alarm


# -- the dashboard -----------------------------------------------------------------------------------


def _dashboard_body(resources: Resources) -> str:
    (dashboard,) = of_type(resources, "AWS::CloudWatch::Dashboard").values()
    return json.dumps(dashboard["Properties"]["DashboardBody"])


def test_given_the_dashboard_then_it_shows_each_state_machine_the_api_and_the_flows(
    monitoring_resources: Resources,
) -> None:
    body = _dashboard_body(monitoring_resources)
    for spec in catalog.STATE_MACHINES:
        assert f":stateMachine:{spec.name}" in body, spec.name
    for text in (API_NAME, "Predictions", "model_version", "quarantine_ratio", "drift_share", "training_job_failed"):
        assert text in body, text
    assert "alarms" in body, "an alarm status widget"


def cloudwatch_dashboard_metrics(body: str) -> set[tuple[str, str]]:
    """(namespace, metric) of every metric and SEARCH expression in a dashboard body."""
    text = body.replace('\\\\\\"', '"').replace('\\"', '"')
    found = set(re.findall(r'\["([\w/]+)","(\w+)"', text))
    found |= {(ns, name) for ns, name in re.findall(r"SEARCH\('\{([\w/]+),[^}]*\} MetricName=\"(\w+)\"", text)}
    return found


def test_given_the_dashboard_then_every_metric_it_shows_is_one_the_code_or_aws_emits(
    monitoring_resources: Resources,
) -> None:
    shown = cloudwatch_dashboard_metrics(_dashboard_body(monitoring_resources))
    emitted = {(g.namespace, name) for g in METRICS for name in g.names}
    assert shown
    assert shown <= emitted


def test_given_the_monitoring_stack_then_it_references_no_other_stack(monitoring_resources: Resources) -> None:
    text = json.dumps(monitoring_resources)
    assert "Fn::GetStackOutput" not in text
    assert "Fn::ImportValue" not in text
