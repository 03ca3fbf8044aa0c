"""Promotion's steps below the local cloud: the history and the lock on a real PostgreSQL, the metric
gate's decisions, and how a promotion ends unpromoted (moto's Lambda for the alias)."""

from __future__ import annotations

import json
import math
from typing import Any

import boto3
import psycopg
import pytest

from pricepipe.errors import CommandError, DeploymentError, PricePipeError, PromotionRefused
from pricepipe.promotion import abandon, deployer, gate, history, plan
from pricepipe.promotion.steps import Plan, PromotionState
from pricepipe.settings import Settings
from tests.integration.aws_lambda import ALIAS, FUNCTION, MODEL_LAYER, REGION, _zip, serving_version

MODEL = "price-model"
BY: dict[str, Any] = {"actor": "t", "actor_source": "pipeline"}  # who a row says acted, and how that is known
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:pricepipe-promotion:run-1"


def _register(conn: psycopg.Connection[Any], version: str, stage: str = "none", r2: float = 0.8) -> None:
    conn.execute(
        "INSERT INTO model_registry.models (model_name, version, stage, serving_artifact_uri, metrics)"
        " VALUES (%s, %s, %s, %s, %s)",
        (MODEL, version, stage, f"s3://a/{MODEL}/{version}/serving/model.npz", json.dumps({"rmse": 20.0, "r2": r2})),
    )


def _running(
    conn: psycopg.Connection[Any], execution_arn: str, version: str, function_version: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO model_registry.promotions (execution_arn, model_name, version, strategy, function_version)"
        " VALUES (%s, %s, %s, 'canary', %s)",
        (execution_arn, MODEL, version, function_version),
    )


def _status(conn: psycopg.Connection[Any], execution_arn: str) -> tuple[str, str]:
    row = conn.execute(
        "SELECT status, outcome FROM model_registry.promotions WHERE execution_arn = %s", (execution_arn,)
    ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def _plan(alias_before: deployer.AliasState, version: str = "2", **changes: Any) -> Plan:
    planned: Plan = {
        "execution_arn": EXECUTION,
        "kind": "model",
        "model_name": MODEL,
        "model_version": version,
        "strategy": "blue-green",
        "route": "switch",
        "reason": "test",
        "note": "",
        "actor": "pipeline",
        "actor_source": "pipeline",
        "canary_percent": 10.0,
        "bake_seconds": 1,
        "approval_timeout_s": 60,
        "function": FUNCTION,
        "alias": ALIAS,
        "alias_before": alias_before,
        "champion": None,
        "registered_champion": None,
        "stage_before": "none",
        "evaluation": None,
        "requested_at": None,
    }
    return {**planned, **changes}  # type: ignore[typeddict-item]


NO_ALIAS: deployer.AliasState = {"function_version": "1", "weights": {}, "revision_id": None}


# -- the errors the state machines and pipectl match by name -----------------------------------------------


@pytest.mark.parametrize("error", [PromotionRefused, CommandError, DeploymentError])
def test_promotions_errors_are_the_packages_own(error: type[Exception]) -> None:
    assert issubclass(error, PricePipeError)


# -- the history ----------------------------------------------------------------------------------------


def test_the_history_lists_deployments_newest_first_with_their_traffic_share(conn: psycopg.Connection[Any]) -> None:
    for action, percent in (("deployed", 0), ("canary-started", 10), ("promoted", 100)):
        history.record(
            conn,
            model_name=MODEL,
            version="2",
            action=action,
            reason=action,
            **BY,
            traffic_percent=percent,
        )
    rows = history.history(conn, MODEL)
    assert [(r["action"], r["traffic_percent"]) for r in rows] == [
        ("promoted", 100.0),
        ("canary-started", 10.0),
        ("deployed", 0.0),
    ]


def test_a_deployment_detail_postgresql_cannot_store_is_recorded_as_null(conn: psycopg.Connection[Any]) -> None:
    row_id = history.record(
        conn,
        model_name=MODEL,
        version="2",
        action="failed",
        reason="r",
        **BY,
        details={"psi": math.nan},
    )
    details = conn.execute("SELECT details FROM model_registry.deployments WHERE id = %s", (row_id,)).fetchone()
    assert details is not None and details[0] == {"psi": None}


def test_a_version_that_is_not_registered_has_no_model_row(conn: psycopg.Connection[Any]) -> None:
    _register(conn, "1")
    assert history.model_row(conn, MODEL, "9") is None
    row = history.model_row(conn, MODEL, "1")
    assert row is not None and row["serving_artifact_uri"] == f"s3://a/{MODEL}/1/serving/model.npz"


def test_the_function_version_a_model_was_promoted_on_is_the_latest_recorded(conn: psycopg.Connection[Any]) -> None:
    for function_version in ("4", "7"):
        history.record(
            conn,
            model_name=MODEL,
            version="2",
            action="promoted",
            reason="r",
            **BY,
            function_version=function_version,
        )
    history.record(
        conn,
        model_name=MODEL,
        version="2",
        action="deployed",
        reason="r",
        **BY,
        function_version="9",
    )
    assert history.last_promoted_function_version(conn, MODEL, "2") == "7"
    assert history.last_promoted_function_version(conn, MODEL, "3") is None


# -- the lock ---------------------------------------------------------------------------------------------


def test_a_running_promotion_holds_the_lock_until_it_finishes(conn: psycopg.Connection[Any]) -> None:
    _running(conn, EXECUTION, "2")
    assert plan.running(conn, MODEL) == [(EXECUTION, "2", None)]
    plan.finish(conn, EXECUTION, "promoted", "done")
    assert plan.running(conn, MODEL) == []
    assert _status(conn, EXECUTION) == ("promoted", "done")


def test_the_database_refuses_a_second_running_promotion_of_one_model(conn: psycopg.Connection[Any]) -> None:
    _running(conn, EXECUTION, "2")
    with pytest.raises(psycopg.errors.UniqueViolation):
        _running(conn, EXECUTION + "-other", "3")


def test_the_lock_of_an_execution_that_no_longer_exists_is_released(conn: psycopg.Connection[Any], lam: Any) -> None:
    gone = EXECUTION + "-gone"
    _running(conn, gone, "2")
    sfn = boto3.client("stepfunctions", region_name=REGION)
    plan.clear_stale(conn, lam, sfn, plan.Serving.from_settings(Settings()), MODEL, EXECUTION)
    assert _status(conn, gone) == ("failed", "its execution ended without finishing (GONE)")


def test_a_canary_whose_execution_is_gone_loses_its_weight(conn: psycopg.Connection[Any], lam: Any) -> None:
    canary = serving_version(lam, MODEL, "2")
    deployer.set_canary(lam, FUNCTION, ALIAS, stable_version="1", canary_version=canary, percent=20)
    _running(conn, EXECUTION + "-gone", "2", function_version=canary)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    plan.clear_stale(conn, lam, sfn, plan.Serving.from_settings(Settings()), MODEL, EXECUTION)
    assert deployer.alias_state(lam, FUNCTION, ALIAS)["weights"] == {}
    assert [r["action"] for r in history.history(conn, MODEL)] == ["rolled-back"]


def test_the_alias_moving_under_a_promotion_is_refused() -> None:
    moved: deployer.AliasState = {"function_version": "5", "weights": {}, "revision_id": None}
    with pytest.raises(PromotionRefused, match="changed while this promotion ran"):
        plan.check_alias_unchanged(moved, _plan(NO_ALIAS), ours="3")


# -- code rollouts: today's code with the champion's model --------------------------------------------------


def test_a_version_published_before_a_code_deploy_is_no_longer_the_functions_build(lam: Any) -> None:
    published = deployer.version_configuration(lam, FUNCTION, serving_version(lam, MODEL, "2"))
    latest = dict(lam.get_function_configuration(FunctionName=FUNCTION))
    assert deployer.same_build(published, latest, MODEL_LAYER), "the model layer is not part of the build"
    lam.update_function_code(FunctionName=FUNCTION, ZipFile=_zip("app.py", "def handler(e, c):\n    return 2\n"))
    deployed = dict(lam.get_function_configuration(FunctionName=FUNCTION))
    assert not deployer.same_build(published, deployed, MODEL_LAYER)


def test_a_version_published_before_a_configuration_deploy_is_no_longer_the_functions_build(lam: Any) -> None:
    published = deployer.version_configuration(lam, FUNCTION, serving_version(lam, MODEL, "2"))
    lam.update_function_configuration(FunctionName=FUNCTION, Environment={"Variables": {"PRICEPIPE_STAGE": "prod"}})
    deployed = dict(lam.get_function_configuration(FunctionName=FUNCTION))
    assert not deployer.same_build(published, deployed, MODEL_LAYER)


def test_new_code_for_a_model_served_before_carries_that_models_layer_again(lam: Any) -> None:
    first = deployer.version_configuration(lam, FUNCTION, serving_version(lam, MODEL, "2"))
    layer = deployer.model_layer_of(first, MODEL_LAYER)
    lam.update_function_code(FunctionName=FUNCTION, ZipFile=_zip("app.py", "def handler(e, c):\n    return 2\n"))
    s3 = boto3.client("s3", region_name=REGION)
    metadata = {"model_name": MODEL, "model_version": "2"}
    # the artifact is never read: the layer exists, so no new one is built
    deployed = deployer.deploy_model(
        lam, s3, function=FUNCTION, layer_name=MODEL_LAYER, artifact_uri="s3://absent/model.npz", metadata=metadata
    )
    assert deployed["function_version"] != first["Version"] and deployed["reused"] is False
    assert deployed["layer_arn"] == layer and "layer_version" not in deployed
    assert deployed["code_sha256"] != first["CodeSha256"]
    assert deployed["description"] == deployer.describe(MODEL, "2")


def test_a_code_rollout_keeps_the_champions_model_and_says_so_when_asked_otherwise() -> None:
    assert plan._code_rollout({}, MODEL, "4") == ("4", "canary")
    assert plan._code_rollout({"model_version": "4", "strategy": "blue-green"}, MODEL, "4") == ("4", "blue-green")
    with pytest.raises(PromotionRefused, match="has no champion yet: promote a model first"):
        plan._code_rollout({}, MODEL, None)
    with pytest.raises(PromotionRefused, match=r"keeps the champion's model \(price-model version 4\), not version 5"):
        plan._code_rollout({"model_version": "5"}, MODEL, "4")
    with pytest.raises(PromotionRefused, match="metric gate"):
        plan._code_rollout({"strategy": "auto"}, MODEL, "4")


def test_a_rollout_of_what_already_serves_has_nothing_to_do_and_a_canary_needs_a_champion() -> None:
    champion = {"version": "4", "function_version": "7"}
    assert plan._route("canary", champion, True, ALIAS, "4")[0] == "unchanged"  # type: ignore[arg-type]
    assert plan._route("canary", champion, False, ALIAS, "4") == ("canary", "")  # type: ignore[arg-type]
    route, note = plan._route("canary", None, False, ALIAS, "4")
    assert route == "switch" and "nothing to compare a canary with" in note


# -- the metric gate ----------------------------------------------------------------------------------------


def test_the_gate_refuses_a_version_below_the_r2_floor(conn: psycopg.Connection[Any], contract: Any) -> None:
    _register(conn, "2", r2=0.1)
    result = gate.gate(
        conn, boto3.client("s3", region_name=REGION), contract, Settings(auto_min_r2=0.5), _plan(NO_ALIAS)
    )
    assert (result["passed"], result["source"]) == (False, "registered-metrics")


def test_the_gate_follows_the_training_evaluation_of_that_very_version(
    conn: psycopg.Connection[Any], contract: Any
) -> None:
    _register(conn, "2")
    evaluation = {"challenger": {"version": "2"}, "decision": "keep", "reason": "champion RMSE lower"}
    planned = _plan(NO_ALIAS, evaluation=evaluation)
    result = gate.gate(conn, boto3.client("s3", region_name=REGION), contract, Settings(), planned)
    assert result == {"passed": False, "reason": "champion RMSE lower", "source": "training-evaluation"}


def test_the_gate_lets_the_first_version_through_when_there_is_no_champion(
    conn: psycopg.Connection[Any], contract: Any
) -> None:
    _register(conn, "2")
    result = gate.gate(conn, boto3.client("s3", region_name=REGION), contract, Settings(), _plan(NO_ALIAS))
    assert (result["passed"], result["source"]) == (True, "no-champion")


# -- ending unpromoted -------------------------------------------------------------------------------------


def _failed(planned: Plan, function_version: str | None, cause: dict[str, Any]) -> PromotionState:
    state: PromotionState = {"plan": planned, "error": {"Error": cause["errorType"], "Cause": json.dumps(cause)}}
    if function_version:
        state["deployment"] = {
            "function_version": function_version,
            "layer_arn": "arn:aws:lambda:us-east-1:123456789012:layer:pricepipe-model:1",
            "reused": False,
            "deployed_at": None,
        }
    return state


def test_a_failed_promotion_puts_back_the_alias_it_moved(conn: psycopg.Connection[Any], lam: Any) -> None:
    ours = serving_version(lam, MODEL, "2")
    before = deployer.alias_state(lam, FUNCTION, ALIAS)
    deployer.switch(lam, FUNCTION, ALIAS, ours)
    _running(conn, EXECUTION, "2", function_version=ours)
    state = _failed(_plan(before), ours, {"errorType": "DeploymentError", "errorMessage": "boom"})
    ended = abandon.abandon(conn, lam, None, Settings(), state, "failed")  # type: ignore[arg-type]
    assert ended["alias"]["function_version"] == before["function_version"]
    assert ended["reason"] == "promotion failed at a step: DeploymentError: DeploymentError: boom"
    assert _status(conn, EXECUTION)[0] == "failed"


def test_a_failed_promotion_leaves_an_alias_it_never_moved_alone(conn: psycopg.Connection[Any], lam: Any) -> None:
    theirs = serving_version(lam, MODEL, "3")
    before = deployer.alias_state(lam, FUNCTION, ALIAS)
    deployer.switch(lam, FUNCTION, ALIAS, theirs)  # someone else's change, not this promotion's
    _running(conn, EXECUTION, "2")
    state = _failed(_plan(before), None, {"errorType": "PromotionRefused", "errorMessage": "no"})
    ended = abandon.abandon(conn, lam, None, Settings(), state, "failed")  # type: ignore[arg-type]
    assert ended["alias"]["function_version"] == theirs


def test_a_promotion_cannot_end_with_an_outcome_nobody_defined(conn: psycopg.Connection[Any], lam: Any) -> None:
    with pytest.raises(ValueError, match="is not one of"):
        abandon.abandon(conn, lam, None, Settings(), {"plan": _plan(NO_ALIAS)}, "abandoned")  # type: ignore[arg-type]
