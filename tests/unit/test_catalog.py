"""The catalog: one declaration of functions and state machines for CDK and the local cloud."""

from __future__ import annotations

import json

import pytest

from infrastructure import catalog


def test_every_function_folder_has_its_handler() -> None:
    for spec in catalog.FUNCTIONS:
        module, _, function = spec.handler.rpartition(".")
        source = (spec.code_dir / f"{module}.py").read_text()
        assert f"def {function}(" in source, spec.key


@pytest.mark.parametrize("machine", catalog.STATE_MACHINES, ids=lambda m: m.key)
def test_every_placeholder_of_an_asl_file_is_declared_and_provided(machine: catalog.StateMachineSpec) -> None:
    assert catalog.placeholders(machine) == set(machine.substitutions)
    provided = {f.substitution for f in catalog.FUNCTIONS if f.substitution}
    provided |= {j.queue_substitution for j in catalog.JOBS} | {j.definition_substitution for j in catalog.JOBS}
    provided |= {m.substitution for m in catalog.STATE_MACHINES if m.substitution}
    assert set(machine.substitutions) <= provided


def test_rendering_substitutes_everything_and_stays_valid_json() -> None:
    machine = catalog.state_machine("etl")
    values = {name: f"arn:aws:lambda:us-east-1:1:function:{name}" for name in machine.substitutions}
    definition = json.loads(catalog.render_definition(machine, values))
    assert "${" not in json.dumps(definition)
    assert definition["States"]["Discover"]["Parameters"]["FunctionName"].endswith("EtlDiscoverFunctionArn")


def test_rendering_without_a_value_names_the_missing_placeholder() -> None:
    with pytest.raises(KeyError, match="EtlSummarizeFunctionArn"):
        catalog.render_definition(
            catalog.state_machine("etl"), {"EtlDiscoverFunctionArn": "a", "EtlLoadFunctionArn": "b"}
        )


def test_functions_get_the_same_environment_keys_everywhere() -> None:
    spec = catalog.function("etl-load")
    env = catalog.function_environment(
        spec,
        landing_bucket="l",
        lake_bucket="k",
        artifacts_bucket="a",
        database_secret_arn="s",
        contract="hotel_rates",
        stage="dev",
    )
    assert env["PRICEPIPE_DATABASE_SECRET_ARN"] == "s"
    assert env["POWERTOOLS_SERVICE_NAME"] == "pricepipe-etl-load"
    assert catalog.function_output(spec) == "EtlLoadFunctionName"


def test_a_state_machine_another_one_starts_is_created_before_it() -> None:
    order = [m.key for m in catalog.STATE_MACHINES]
    for machine in catalog.STATE_MACHINES:
        for other in catalog.STATE_MACHINES:
            if other.substitution and other.substitution in machine.substitutions:
                assert order.index(other.key) < order.index(machine.key), (other.key, machine.key)


def test_training_starts_the_promotion_flow_without_waiting_for_it() -> None:
    machine = catalog.state_machine("training")
    values = {name: f"arn:{name}" for name in machine.substitutions}
    states = json.loads(catalog.render_definition(machine, values))["States"]
    handover = states["ReadyForPromotion"]
    # fire-and-forget: startExecution.sync fails in moto's engine, and a canary bakes for minutes
    assert handover["Resource"] == "arn:aws:states:::states:startExecution"
    assert handover["Parameters"]["StateMachineArn"] == "arn:PromotionStateMachineArn"
    assert set(handover["Parameters"]["Input"]) >= {"model_version.$", "reason.$"}
    assert states[handover["Next"]]["Type"] == "Succeed"


def test_promotion_functions_act_on_what_the_settings_name() -> None:
    from pricepipe.settings import Settings

    settings = Settings()
    env = dict(catalog.PROMOTION_ENVIRONMENT)
    assert env["PRICEPIPE_SERVING_FUNCTION"] == settings.serving_function == catalog.function("api").name
    assert env["PRICEPIPE_SERVING_ALIAS"] == settings.serving_alias == catalog.LIVE_ALIAS
    assert env["PRICEPIPE_MODEL_LAYER_NAME"] == settings.model_layer_name == catalog.MODEL_LAYER
    assert env["PRICEPIPE_MODEL_LAYER_PARAMETER"] == settings.model_layer_parameter == catalog.MODEL_LAYER_PARAMETER
    spec = catalog.function("promotion-finalize")
    rendered = catalog.function_environment(
        spec,
        landing_bucket="l",
        lake_bucket="k",
        artifacts_bucket="a",
        database_secret_arn="s",
        contract="hotel_rates",
        stage="dev",
    )
    assert rendered["PRICEPIPE_SERVING_ALIAS"] == "live" and spec.needs_registry


def test_every_granted_prefix_is_a_prefix_of_the_settings_layout() -> None:
    from infrastructure.stacks.batch_jobs import JOB_ACCESS
    from pricepipe.settings import DEFAULTS, PREFIXES

    layout = {getattr(DEFAULTS, name) for name in PREFIXES}
    grants = [g for f in catalog.FUNCTIONS for g in f.s3] + [g for grants in JOB_ACCESS.values() for g in grants]
    assert grants
    assert {g.prefix for g in grants} <= layout


def test_landing_and_quarantine_grants_are_on_the_deployed_contracts_folders_only() -> None:
    grants = catalog.contract_grants(catalog.function("etl-load").s3, "ames")

    assert [(g.bucket, g.prefix, g.access) for g in grants] == [
        ("landing", "landing/ames/", "read"),
        ("landing", "quarantine/ames/", "write"),
        ("lake", "processed_features/", "write"),
    ]
    assert not any(g.per_contract for g in grants)
