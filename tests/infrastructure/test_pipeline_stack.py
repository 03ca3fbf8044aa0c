"""PipelineStack: the catalog's functions and their grants, migrations, the state machines and the ETL triggers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aws_cdk.assertions import Capture, Match, Template

from infrastructure import catalog
from infrastructure.catalog import Grant
from infrastructure.stacks.config import DEFAULT_DRIFT_SCHEDULE, DEFAULT_ETL_SCHEDULE
from infrastructure.stacks.data_access import s3_statements
from infrastructure.stacks.data_stack import BucketNames
from infrastructure.stacks.pipeline_stack import distributed_map_labels, migrations_fingerprint, task_resources
from pricepipe.settings import DEFAULTS
from tests.infrastructure.support import (
    as_list,
    expected_s3_grants,
    of_type,
    s3_grants,
    statements_of_role,
)

# the synthesized app deploys the default contract: its own folders under the landing and quarantine roots
DATASET = "hotel_rates"
LANDING_PREFIX = "landing/hotel_rates/"
QUARANTINE_PREFIX = "quarantine/hotel_rates/"
LAKE_PREFIX = DEFAULTS.lake_prefix
MANIFEST_PREFIX = DEFAULTS.manifest_prefix

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
ResourcesOf = Callable[[catalog.FunctionSpec], Resources]
ETL = catalog.state_machine("etl")


def _function(resources: Resources, spec: catalog.FunctionSpec) -> tuple[str, dict[str, Any]]:
    for name, resource in of_type(resources, "AWS::Lambda::Function").items():
        if resource["Properties"].get("FunctionName") == spec.name:
            return name, resource
    raise AssertionError(f"no function named {spec.name}")


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=lambda s: s.key)
def test_given_a_catalog_function_then_it_is_deployed_with_its_handler_runtime_and_sizes(
    spec: catalog.FunctionSpec, resources_of: ResourcesOf
) -> None:
    pipeline_resources = resources_of(spec)
    _, function = _function(pipeline_resources, spec)
    props = function["Properties"]
    assert props["Handler"] == spec.handler
    assert props["Runtime"] == catalog.LAMBDA_RUNTIME
    assert props["MemorySize"] == spec.memory_mb
    assert props["Timeout"] == spec.timeout_s
    assert props["Architectures"] == ["x86_64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert ("VpcConfig" in props) == spec.needs_database


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=lambda s: s.key)
def test_given_a_catalog_function_then_its_environment_is_the_catalogs(
    spec: catalog.FunctionSpec, resources_of: ResourcesOf
) -> None:
    pipeline_resources = resources_of(spec)
    _, function = _function(pipeline_resources, spec)
    variables = function["Properties"]["Environment"]["Variables"]
    expected = catalog.function_environment(
        spec,
        landing_bucket="L",
        lake_bucket="K",
        artifacts_bucket="A",
        database_secret_arn="S",
        contract="hotel_rates",
        stage="prod",
    )
    assert set(variables) == set(expected)
    for key in ("PRICEPIPE_STAGE", "PRICEPIPE_CONTRACT", "POWERTOOLS_SERVICE_NAME"):
        assert variables[key] == expected[key]
    for key, purpose in (
        ("PRICEPIPE_LANDING_BUCKET", "landing"),
        ("PRICEPIPE_LAKE_BUCKET", "lake"),
        ("PRICEPIPE_ARTIFACTS_BUCKET", "artifacts"),
    ):
        assert variables[key]["Fn::Join"][1][0] == f"pricepipe-prod-{purpose}-"


@pytest.mark.parametrize(
    "spec", [f for f in catalog.FUNCTIONS if f.key != catalog.SERVING_FUNCTION], ids=lambda s: s.key
)
def test_given_a_pipeline_function_then_its_layers_are_numpy_dependencies_mlflow_if_it_opens_a_registry_package(
    spec: catalog.FunctionSpec, pipeline_resources: Resources
) -> None:
    _, function = _function(pipeline_resources, spec)
    layers = function["Properties"]["Layers"]
    own = [name.rstrip("0123456789ABCDEF") for layer in layers if "Ref" in layer for name in [layer["Ref"]]]
    managed = [json.dumps(layer) for layer in layers if "Ref" not in layer]
    expected = ["DepsLayer", *(["MlflowLayer"] if spec.needs_registry else []), "PackageLayer"]
    if spec.needs_data_layer:
        # later layers win where paths collide: the managed layer first, so our pinned packages win
        assert len(managed) == 1
        # the version of the region deployed to, from the table's mapping (AWS numbers it per region)
        assert ':336392948345:layer:AWSSDKPandas-Python312:"' in managed[0]
        assert '{"Fn::FindInMap": ["PandasLayerVersions", {"Ref": "AWS::Region"}, "version"]}' in managed[0]
        assert json.dumps(layers[0]) == managed[0]
        assert own == expected
    else:
        assert managed == []
        assert own == ["NumpyLayer", *expected], "the shared package's model evaluator imports numpy"
    assert len(layers) <= 5, "Lambda's limit"


def test_given_a_function_that_opens_a_registry_then_it_never_also_carries_the_pandas_layer() -> None:
    """MLflow's layer (~115 MB with bytecode) and the managed pandas layer do not fit in 250 MB together."""
    assert not [f.key for f in catalog.FUNCTIONS if f.needs_registry and f.needs_data_layer]


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=lambda s: s.key)
def test_given_a_catalog_function_then_its_role_has_no_managed_policy_and_logs_only_to_its_own_group(
    spec: catalog.FunctionSpec, resources_of: ResourcesOf
) -> None:
    pipeline_resources = resources_of(spec)
    _, function = _function(pipeline_resources, spec)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    assert "ManagedPolicyArns" not in pipeline_resources[role]["Properties"]
    log_group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    log_statements = [s for s in statements_of_role(pipeline_resources, role) if "logs:PutLogEvents" in s["Action"]]
    assert [s["Resource"] for s in log_statements] == [{"Fn::GetAtt": [log_group, "Arn"]}]
    assert pipeline_resources[log_group]["Properties"]["RetentionInDays"] == 90
    # the group `pipectl logs` reads, on AWS as on the local cloud
    assert pipeline_resources[log_group]["Properties"]["LogGroupName"] == catalog.log_group_name(spec.name)


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=lambda s: s.key)
def test_given_a_catalog_function_then_its_s3_access_is_exactly_what_its_grants_declare(
    spec: catalog.FunctionSpec, resources_of: ResourcesOf
) -> None:
    pipeline_resources = resources_of(spec)
    _, function = _function(pipeline_resources, spec)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    assert s3_grants(statements_of_role(pipeline_resources, role)) == expected_s3_grants(
        catalog.contract_grants(spec.s3, DATASET)
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "etl-discover",
            {
                ("s3:ListBucket", f"landing?prefix={LANDING_PREFIX}"),
                ("s3:GetObject", f"landing/{LANDING_PREFIX}*"),
                ("s3:PutObject", f"artifacts/{MANIFEST_PREFIX}*"),
                ("s3:DeleteObject", f"artifacts/{MANIFEST_PREFIX}*"),
            },
        ),
        (
            "etl-load",
            {
                ("s3:ListBucket", f"landing?prefix={LANDING_PREFIX}"),
                ("s3:GetObject", f"landing/{LANDING_PREFIX}*"),
                ("s3:PutObject", f"landing/{QUARANTINE_PREFIX}*"),
                ("s3:DeleteObject", f"landing/{QUARANTINE_PREFIX}*"),
                ("s3:PutObject", f"lake/{LAKE_PREFIX}*"),
                # a rolled-back load attempt deletes the lake objects it wrote
                ("s3:DeleteObject", f"lake/{LAKE_PREFIX}*"),
            },
        ),
        ("etl-summarize", set()),
        ("training-prepare", set()),
        ("migrate", set()),
    ],
)
def test_given_a_function_then_it_may_touch_only_the_bucket_prefixes_its_handler_uses(
    key: str, expected: set[tuple[str, str]], pipeline_resources: Resources
) -> None:
    _, function = _function(pipeline_resources, catalog.function(key))
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    assert s3_grants(statements_of_role(pipeline_resources, role)) == expected


@pytest.mark.parametrize("spec", [f for f in catalog.FUNCTIONS if not f.s3], ids=lambda s: s.key)
def test_given_a_function_without_grants_then_it_has_no_data_access_policy(
    spec: catalog.FunctionSpec, resources_of: ResourcesOf
) -> None:
    pipeline_resources = resources_of(spec)
    _, function = _function(pipeline_resources, spec)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    actions = {a for s in statements_of_role(pipeline_resources, role) for a in s["Action"]}
    assert not [a for a in actions if a.startswith("s3:")]


@pytest.mark.parametrize(
    "grant",
    [
        Grant("archive", "landing/", "read"),
        Grant("lake", "processed_features/", "admin"),
        Grant("lake", "processed_features", "read"),
        Grant("lake", "", "write"),
        Grant("lake", "*/", "read"),
    ],
    ids=["unknown-bucket", "unknown-access", "prefix-without-slash", "whole-bucket", "wildcard"],
)
def test_given_a_malformed_grant_then_synthesis_refuses_it_rather_than_granting_more(grant: Grant) -> None:
    from aws_cdk import App, Stack

    stack = Stack(App(), "Grants")
    with pytest.raises(ValueError, match="grant"):
        s3_statements(stack, BucketNames.for_stage("prod"), [grant])


@pytest.mark.parametrize("spec", catalog.FUNCTIONS, ids=lambda s: s.key)
def test_given_a_function_that_needs_the_database_then_it_may_read_the_database_secret(
    spec: catalog.FunctionSpec, resources_of: ResourcesOf
) -> None:
    pipeline_resources = resources_of(spec)
    _, function = _function(pipeline_resources, spec)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    secret_reads = [
        s for s in statements_of_role(pipeline_resources, role) if "secretsmanager:GetSecretValue" in s["Action"]
    ]
    assert len(secret_reads) == (1 if spec.needs_database else 0)
    if secret_reads:
        assert "Fn::GetStackOutput" in json.dumps(secret_reads[0]["Resource"]), "the data stack's secret"


def test_given_the_stacks_then_a_cli_finds_every_function_and_state_machine_by_output_name(
    pipeline_template: Template, serving_template: Template
) -> None:
    pipeline_outputs = pipeline_template.to_json()["Outputs"]
    serving_outputs = serving_template.to_json()["Outputs"]
    expected = {catalog.function_output(f) for f in catalog.FUNCTIONS if f.key != catalog.SERVING_FUNCTION} | {
        catalog.state_machine_output(m) for m in catalog.STATE_MACHINES
    }
    assert expected <= set(pipeline_outputs)
    assert catalog.function_output(catalog.function(catalog.SERVING_FUNCTION)) in serving_outputs
    assert "EtlLoadFunctionName" in pipeline_outputs
    assert "EtlStateMachineArn" in pipeline_outputs
    assert not [name for name in expected if "Export" in pipeline_outputs[name]]


def test_given_the_migrations_then_a_custom_resource_runs_them_with_a_fingerprint_of_migrations_and_contract(
    pipeline_template: Template, pipeline_resources: Resources
) -> None:
    migrate, _ = _function(pipeline_resources, catalog.function("migrate"))
    pipeline_template.has_resource_properties(
        "Custom::PricePipeDatabaseSchema",
        {
            "ServiceToken": {"Fn::GetAtt": [Match.string_like_regexp("MigrationsProviderframeworkonEvent"), "Arn"]},
            "MigrationsHash": migrations_fingerprint("hotel_rates"),
            "Contract": "hotel_rates",
        },
    )
    pipeline_template.has_resource_properties(
        "AWS::Lambda::Function",
        {"Environment": {"Variables": {"USER_ON_EVENT_FUNCTION_ARN": {"Fn::GetAtt": [migrate, "Arn"]}}}},
    )


def test_given_a_changed_migration_or_contract_then_the_fingerprint_changes(tmp_path: Path) -> None:
    migrations, contracts = tmp_path / "migrations", tmp_path / "contracts"
    migrations.mkdir()
    contracts.mkdir()
    (migrations / "0001_schemas.sql").write_text("create schema a;")
    (contracts / "hotel_rates.yaml").write_text("name: hotel_rates")
    first = migrations_fingerprint("hotel_rates", migrations, contracts)

    (migrations / "0002_more.sql").write_text("create schema b;")
    second = migrations_fingerprint("hotel_rates", migrations, contracts)
    (contracts / "hotel_rates.yaml").write_text("name: hotel_rates\ntarget: price")
    third = migrations_fingerprint("hotel_rates", migrations, contracts)

    assert len({first, second, third}) == 3
    assert migrations_fingerprint("hotel_rates", migrations, contracts) == third


def _state_machine(resources: Resources, spec: catalog.StateMachineSpec = ETL) -> tuple[str, dict[str, Any]]:
    machines = of_type(resources, "AWS::StepFunctions::StateMachine")
    assert len(machines) == len(catalog.STATE_MACHINES)
    return next((n, m) for n, m in machines.items() if m["Properties"]["StateMachineName"] == spec.name)


def _state_names(definition: dict[str, Any]) -> set[str]:
    names = set()
    for name, state in definition["States"].items():
        names.add(name)
        for nested in (state.get("ItemProcessor"), state.get("Iterator"), *state.get("Branches", [])):
            if nested:
                names |= _state_names(nested)
    return names


@pytest.mark.parametrize("spec", catalog.STATE_MACHINES, ids=lambda s: s.key)
def test_given_a_catalog_state_machine_then_its_definition_is_the_asl_file_with_every_state(
    spec: catalog.StateMachineSpec, synthesized: Synthesized, pipeline_resources: Resources
) -> None:
    _, machine = _state_machine(pipeline_resources, spec)
    location = machine["Properties"]["DefinitionS3Location"]
    deployed = json.loads(synthesized.asset_path(location["Key"]).read_text(encoding="utf-8"))
    source = json.loads(spec.path.read_text(encoding="utf-8"))
    assert deployed == source, "the one definition of the flow, unchanged"
    assert _state_names(deployed) == _state_names(source)


def test_given_the_etl_state_machine_then_its_definition_has_the_etl_states(
    synthesized: Synthesized, pipeline_resources: Resources
) -> None:
    _, machine = _state_machine(pipeline_resources)
    location = machine["Properties"]["DefinitionS3Location"]
    deployed = json.loads(synthesized.asset_path(location["Key"]).read_text(encoding="utf-8"))
    assert _state_names(deployed) >= {"Discover", "LoadFiles", "LoadFile", "Summarize"}


@pytest.mark.parametrize("spec", catalog.STATE_MACHINES, ids=lambda s: s.key)
def test_given_a_catalog_state_machine_then_every_placeholder_is_substituted_with_a_deployed_arn(
    spec: catalog.StateMachineSpec, pipeline_resources: Resources
) -> None:
    _, machine = _state_machine(pipeline_resources, spec)
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert set(substitutions) == catalog.placeholders(spec) == set(spec.substitutions)
    machines = {m.substitution: m for m in catalog.STATE_MACHINES if m.substitution}
    for name, value in substitutions.items():
        if name in machines:
            # another state machine, by its fixed name (no reference, so no cycle between flows)
            assert value["Fn::Join"][1][-1] == f":stateMachine:{machines[name].name}"
            _state_machine(pipeline_resources, machines[name])
            continue
        reference = value.get("Fn::GetAtt", [value.get("Ref")])[0]
        assert reference in pipeline_resources, f"{name} must name a resource of this stack, got {value}"


@pytest.mark.parametrize(("starter", "started"), [("training", "promotion"), ("drift", "training")])
def test_given_a_flow_that_starts_another_then_its_role_may_start_exactly_that_state_machine(
    starter: str, started: str, pipeline_resources: Resources
) -> None:
    name, machine = _state_machine(pipeline_resources, catalog.state_machine(starter))
    target, _ = _state_machine(pipeline_resources, catalog.state_machine(started))
    role = machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = statements_of_role(pipeline_resources, role)
    starts = [s for s in statements if "states:StartExecution" in as_list(s["Action"])]
    assert len(starts) == 1
    assert starts[0]["Action"] == "states:StartExecution", "startExecution (not .sync) needs nothing else"
    assert starts[0]["Resource"]["Fn::Join"][1][-1] == f":stateMachine:{catalog.state_machine(started).name}"
    assert not [a for s in statements for a in as_list(s["Action"]) if a.startswith("states:") and s is not starts[0]]
    assert target in pipeline_resources[name].get("DependsOn", []), "the started machine exists before the first run"


def test_given_the_drift_schedule_then_it_starts_the_drift_check_daily_after_the_etl_with_an_empty_input(
    pipeline_template: Template, pipeline_resources: Resources
) -> None:
    machine, _ = _state_machine(pipeline_resources, catalog.state_machine("drift"))
    target = Capture()
    pipeline_template.has_resource_properties(
        "AWS::Scheduler::Schedule",
        {"ScheduleExpression": DEFAULT_DRIFT_SCHEDULE, "State": "ENABLED", "Target": target},
    )
    assert target.as_object()["Arn"] == {"Ref": machine}
    assert json.loads(target.as_object()["Input"]) == {}
    assert DEFAULT_DRIFT_SCHEDULE == "cron(0 5 * * ? *)"
    assert DEFAULT_ETL_SCHEDULE == "cron(0 2 * * ? *)", "the drift check reads what the ETL loaded"


def test_given_the_asl_files_then_task_resources_name_the_service_integrations_they_use() -> None:
    training = json.loads(catalog.state_machine("training").path.read_text(encoding="utf-8"))
    etl = json.loads(ETL.path.read_text(encoding="utf-8"))
    assert "arn:aws:states:::batch:submitJob.sync" in task_resources(training)
    assert not {r for r in task_resources(etl) if ":batch:" in r}


def test_given_the_etl_state_machine_then_each_placeholder_is_the_arn_of_its_function(
    pipeline_resources: Resources,
) -> None:
    _, machine = _state_machine(pipeline_resources)
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert set(substitutions) == catalog.placeholders(ETL) == set(ETL.substitutions)
    for spec in catalog.FUNCTIONS:
        if spec.substitution in substitutions:
            name, _ = _function(pipeline_resources, spec)
            assert substitutions[spec.substitution] == {"Fn::GetAtt": [name, "Arn"]}
    assert {"EtlDiscoverFunctionArn", "EtlLoadFunctionArn", "EtlSummarizeFunctionArn"} <= set(substitutions)


@pytest.mark.parametrize("spec", catalog.STATE_MACHINES, ids=lambda s: s.key)
def test_given_a_catalog_state_machine_then_it_is_standard_logs_everything_and_is_traced(
    spec: catalog.StateMachineSpec, pipeline_template: Template
) -> None:
    pipeline_template.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "StateMachineName": spec.name,
            "StateMachineType": "STANDARD",
            "LoggingConfiguration": Match.object_like({"Level": "ALL", "IncludeExecutionData": True}),
            "TracingConfiguration": {"Enabled": True},
        },
    )


def test_given_the_etl_state_machine_role_then_it_allows_exactly_what_the_asl_file_needs(
    pipeline_resources: Resources,
) -> None:
    _, machine = _state_machine(pipeline_resources)
    role = machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = statements_of_role(pipeline_resources, role)
    by_sid = {s.get("Sid"): s for s in statements}

    functions = {
        _function(pipeline_resources, spec)[0] for spec in catalog.FUNCTIONS if spec.substitution in ETL.substitutions
    }
    invoked = by_sid["InvokeTaskFunctions"]["Resource"]
    assert {r["Fn::GetAtt"][0] for r in invoked if "Fn::GetAtt" in r} == functions
    assert {r["Fn::Join"][1][0]["Fn::GetAtt"][0] for r in invoked if "Fn::Join" in r} == functions

    manifests = by_sid["ReadItemManifests"]
    assert manifests["Action"] == "s3:GetObject"
    assert manifests["Resource"]["Fn::Join"][1][-1] == f"/{MANIFEST_PREFIX}*"

    start = by_sid["StartChildExecutions"]
    assert start["Action"] == "states:StartExecution"
    assert start["Resource"]["Fn::Join"][1][-1] == f":stateMachine:{ETL.name}", "itself, by its fixed name"

    labels = distributed_map_labels(json.loads(ETL.path.read_text(encoding="utf-8")))
    children = by_sid["ManageChildExecutions"]
    assert set(children["Action"]) == {"states:DescribeExecution", "states:StopExecution"}
    assert children["Resource"]["Fn::Join"][1][-1] == f":execution:{ETL.name}/*"
    redrive = by_sid["RedriveMapRuns"]
    assert redrive["Action"] == "states:RedriveExecution"
    assert redrive["Resource"]["Fn::Join"][1][-1] == f":execution:{ETL.name}/{labels[0]}:*"

    others = [s for s in statements if s.get("Sid") is None]
    assert {a.split(":")[0] for s in others for a in s["Action"]} <= {"logs", "xray"}, "only CDK's logging/tracing"


def test_given_the_etl_schedule_then_it_runs_daily_over_the_landing_prefix(
    pipeline_template: Template, pipeline_resources: Resources
) -> None:
    machine, _ = _state_machine(pipeline_resources)
    target = Capture()
    pipeline_template.has_resource_properties(
        "AWS::Scheduler::Schedule",
        {"ScheduleExpression": DEFAULT_ETL_SCHEDULE, "State": "ENABLED", "Target": target},
    )
    assert target.as_object()["Arn"] == {"Ref": machine}
    assert json.loads(target.as_object()["Input"]) == {"prefix": LANDING_PREFIX}


def test_given_a_new_landing_object_then_an_eventbridge_rule_starts_the_etl_for_that_key(
    pipeline_resources: Resources,
) -> None:
    machine, _ = _state_machine(pipeline_resources)
    rules = list(of_type(pipeline_resources, "AWS::Events::Rule").values())
    assert len(rules) == 1
    pattern = rules[0]["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.s3"]
    assert pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"] == {"key": [{"prefix": LANDING_PREFIX}]}
    assert pattern["detail"]["bucket"]["name"][0]["Fn::Join"][1][0] == "pricepipe-prod-landing-"

    (target,) = rules[0]["Properties"]["Targets"]
    assert target["Arn"] == {"Ref": machine}
    transformer = target["InputTransformer"]
    path_names = [k for k, v in transformer["InputPathsMap"].items() if v == "$.detail.object.key"]
    assert len(path_names) == 1
    # EventBridge substitutes a string path with its JSON-quoted value.
    assert json.loads(transformer["InputTemplate"].replace(f"<{path_names[0]}>", '"KEY"')) == {"prefix": "KEY"}
