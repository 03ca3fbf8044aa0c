"""Promotion on the local cloud: the promotion state machine (the ASL file CDK deploys) with the real
handlers, Lambda versions and alias weights, CloudWatch metrics, the prediction log, MLflow in
PostgreSQL, and the HTTP gateway in front of the ``live`` alias.

Models are trained once for the module on real hotel_rates rows loaded through the real ETL step,
and registered with :func:`pricepipe.registry.log_and_register`: version 1 and 2 are that model, 3
is the same trees with every leaf value multiplied by ten, a model that answers without error but
prices rooms absurdly. The tests share the cloud (training and deploying it once is what takes time)
but not their starting point: each one first brings the cloud to the state it starts from
(:func:`champion_serves`), so any one of them passes alone and in any order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest

from infrastructure import catalog
from pipectl import datasource, flows
from pipectl.commands.promotion import CommandFailed, _command
from pipectl.localcloud import LocalCloud
from pipectl.localcloud.daemon import run_migrations
from pipectl.localcloud.gateway import Gateway
from pipectl.localcloud.provision import Resources, provision, redeploy
from pipectl.oauth import ApiClient
from pipectl.target import Target
from pricepipe import db, registry
from pricepipe.contract import Contract
from pricepipe.lean_model import LeanModel
from pricepipe.promotion import deployer
from pricepipe.settings import Settings
from pricepipe.training import TrainingWindow, load_postgres
from pricepipe.training.search import SearchSettings
from pricepipe.training.trainer import TrainingConfig, train
from tests.conftest import land_and_load
from tests.e2e.support import SEARCH_GUARD_S, api_client, start_gateway

pytestmark = pytest.mark.e2e

DAYS = 60
API = catalog.function(catalog.SERVING_FUNCTION).name
# A canary's outcome is decided by the traffic the test sends, never by how long a bake lasted: a
# check that finds too little traffic bakes again (1 s, up to 20 times), and the test sends a fixed
# number of requests once the canary has started. A laptop's canary sees tens of requests, not
# thousands: judge it on fewer.
BAKE_SECONDS = 1
CANARY_REQUESTS = 40  # 20-row batches; at 30% the canary gets 12 on average, 5 are needed (P(fewer) < 1e-3)
CANARY_SETTINGS = {
    "PRICEPIPE_CANARY_MIN_REQUESTS": "5",
    "PRICEPIPE_CANARY_MIN_PREDICTIONS": "30",
    "PRICEPIPE_CANARY_MAX_BAKES": "20",
}


@pytest.fixture(scope="module")
def deployed(cloud: LocalCloud, cloud_database: str) -> Resources:
    """The pipeline as the daemon deploys it, with the canary minimums above (overrides conftest's)."""
    resources = provision(cloud, cloud_database, function_settings=CANARY_SETTINGS)
    run_migrations(cloud, resources)
    return resources


@pytest.fixture(scope="module")
def versions(cloud: LocalCloud, deployed: Resources, contract: Contract) -> dict[str, str]:
    """Registered versions: ``good`` (1, and again as 2 and 4) and ``bad`` (3), on DAYS of loaded hotel_rates."""
    url = deployed.database_url
    settings = Settings(database_url=url)
    days = datasource.select_days(days=DAYS)
    with db.connect(url, autocommit=True) as conn, mock.patch.dict(os.environ, cloud.client_env()):
        land_and_load(conn, cloud.client("s3"), contract, settings, days)
        data = load_postgres(conn, contract, TrainingWindow.ending(days[-1], DAYS))
        # stops on its 2 trials, never on the clock: the same model on any machine
        search = SearchSettings(seed=7, time_budget_s=SEARCH_GUARD_S, max_trials=2, max_tree_levels=300)
        outcome = train(data, contract, TrainingConfig(holdout_days=14, validation_days=14, search=search))
        trees = outcome.lean.trees
        absurd = dataclasses.replace(trees, value=trees.value * 10, base_score=trees.base_score * 10)
        bad_model = LeanModel(absurd, outcome.lean.encoding, outcome.lean.info)
        bad = dataclasses.replace(outcome, lean=bad_model, evaluation_lean=bad_model)

        def register(variant: Any) -> str:
            return registry.log_and_register(
                variant,
                uri=registry.mlflow_uri_from_dsn(url),
                conn=conn,
                model_name=settings.model_name,
                experiment=settings.mlflow_experiment,
                artifact_location=f"s3://{settings.artifacts_bucket}/mlflow/{settings.mlflow_experiment}",
            ).model_version

        return {
            "good": register(outcome),
            "good_again": register(outcome),
            "bad": register(bad),
            "spare": register(outcome),
        }


@pytest.fixture(scope="module")
def gateway(cloud: LocalCloud, deployed: Resources) -> Iterator[Gateway]:
    started = start_gateway(cloud)
    yield started
    started.stop()


# -- helpers ------------------------------------------------------------------------------------------


def promote(target: Target, version: str, **options: Any) -> flows.Execution:
    return flows.run(target, "promotion", {"model_version": version, "reason": "test", **options})


def alias(target: Target) -> dict[str, Any]:
    return deployer.alias_state(target.client("lambda"), API, catalog.LIVE_ALIAS)


def function_versions(target: Target) -> list[str]:
    pages = target.client("lambda").get_paginator("list_versions_by_function").paginate(FunctionName=API)
    return sorted(v["Version"] for page in pages for v in page["Versions"])


def served_model(target: Target, function_version: str) -> str | None:
    configuration = deployer.version_configuration(target.client("lambda"), API, function_version)
    model = deployer.model_of(configuration.get("Description"))
    return model[1] if model else None


def mlflow_aliases(target: Target) -> dict[str, str | None]:
    assert target.database_url
    client = registry.client_for(registry.mlflow_uri_from_dsn(target.database_url))
    return {name: registry.alias_version(client, "price-model", name) for name in registry.ALIASES}


def stage(target: Target, version: str) -> str:
    assert target.database_url
    with psycopg.connect(target.database_url) as conn:
        row = conn.execute(
            "SELECT stage FROM model_registry.models WHERE model_name = 'price-model' AND version = %s", (version,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def deployments(target: Target, execution_arn: str | None = None) -> list[dict[str, Any]]:
    rows = _command(target, {"command": "history", "limit": 100})
    return [r for r in reversed(rows) if execution_arn is None or r["execution_arn"] == execution_arn]


def http(
    gateway: Gateway, method: str, path: str, body: Any = None, client: ApiClient | dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One call through the gateway as ``client`` (its token and API key), or with these headers."""
    headers = client.headers() if isinstance(client, ApiClient) else client or {}
    request = urllib.request.Request(
        gateway.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Bookings after the training window, that the API accepts."""
    return datasource.api_rows(datasource.api_bookings().iloc[3000:4000].sample(n, random_state=seed))


def champion_serves(target: Target, version: str) -> None:
    """GIVEN ``version`` is champion and serves all live traffic (promoted blue-green unless it already
    does; no promotion is left running)."""
    now = alias(target)
    if now["weights"] or served_model(target, now["function_version"]) != version:
        execution = promote(target, version, strategy="blue-green")
        assert execution.status == "SUCCEEDED", execution.cause
    assert mlflow_aliases(target)["champion"] == version


@pytest.fixture(scope="module", autouse=True)
def _a_model_serves(target: Target, versions: dict[str, str]) -> None:
    """Every test of the module starts with a model on the live alias (the gateway's tests need one
    to answer /health); tests that need a particular champion say so with :func:`champion_serves`."""
    champion_serves(target, versions["good"])


def run_with_traffic(
    target: Target, gateway: Gateway, api: ApiClient, version: str | None, **options: Any
) -> flows.Execution:
    """A canary promotion (or, with ``version`` None and ``kind="code"``, a code rollout) with
    CANARY_REQUESTS 20-row batches sent through the gateway once it started."""
    statuses: list[int] = []

    def client(seeds: range) -> None:
        statuses.extend(http(gateway, "POST", "/predict", {"rows": rows(20, seed)}, api)[0] for seed in seeds)

    request = {"reason": "test", **options} | ({"model_version": version} if version else {})
    arn = flows.start(target, "promotion", request)
    flows.wait(target, arn, timeout_s=120, stop_at=("Bake", "CheckCanary"))
    clients = [
        threading.Thread(target=client, args=(range(first, CANARY_REQUESTS, 2),), daemon=True) for first in (0, 1)
    ]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    execution = flows.wait(target, arn, timeout_s=120)
    assert len(statuses) == CANARY_REQUESTS and set(statuses) == {200}, f"clients saw {sorted(set(statuses))}"
    return execution


# -- blue-green and rollback ----------------------------------------------------------------------------


def test_blue_green_switches_at_once_and_rollback_restores_the_previous_version_instantly(
    target: Target, versions: dict[str, str]
) -> None:
    # GIVEN version 1 serves all traffic, WHEN version 2 is promoted blue-green
    champion_serves(target, versions["good"])
    serving_first = alias(target)["function_version"]
    second = promote(target, versions["good_again"], strategy="blue-green")
    assert second.status == "SUCCEEDED", second.cause
    serving_second = second.output["deployment"]["function_version"]
    # THEN version 2 takes all traffic at once, with version 1 recorded as previous
    assert alias(target) | {"revision_id": None} == {
        "function_version": serving_second,
        "weights": {},
        "revision_id": None,
    }
    assert served_model(target, serving_second) == versions["good_again"]
    assert mlflow_aliases(target) == {
        "champion": versions["good_again"],
        "challenger": None,
        "previous": versions["good"],
    }

    # WHEN an operator rolls back
    published = function_versions(target)
    answer = _command(target, {"command": "rollback", "actor": "ops@test", "reason": "bad reviews"})
    # THEN the alias points back at version 1's function version at once: nothing is published or
    # rebuilt, only the alias moves
    assert answer["function_version"] == serving_first
    assert alias(target)["function_version"] == serving_first and alias(target)["weights"] == {}
    assert function_versions(target) == published
    assert mlflow_aliases(target) == {"champion": versions["good"], "challenger": None, "previous": None}
    assert stage(target, versions["good_again"]) == "rejected"
    history = deployments(target)
    assert [(r["action"], r["version"]) for r in history[-3:]] == [
        ("deployed", versions["good_again"]),
        ("promoted", versions["good_again"]),
        ("rolled-back", versions["good"]),
    ]
    assert history[-1]["actor"] == "ops@test" and history[-1]["reason"] == "bad reviews"
    assert history[-1]["previous_version"] == versions["good_again"] and history[-1]["traffic_percent"] == 100


def test_a_rollback_without_a_previous_version_has_nothing_to_go_back_to(
    target: Target, versions: dict[str, str]
) -> None:
    # GIVEN version 1 is champion and no version is previous (as after a rollback)
    champion_serves(target, versions["good"])
    assert target.database_url
    client = registry.client_for(registry.mlflow_uri_from_dsn(target.database_url))
    with db.connect(target.database_url, autocommit=True) as conn:
        registry.delete_alias(client, conn, "price-model", "previous")
    with pytest.raises(CommandFailed, match="no previous version to roll back to"):
        _command(target, {"command": "rollback", "actor": "ops@test"})
    assert mlflow_aliases(target)["champion"] == versions["good"]


# -- canary ----------------------------------------------------------------------------------------------


def test_a_bad_canary_rolls_back_by_itself(
    target: Target, versions: dict[str, str], gateway: Gateway, deployed: Resources
) -> None:
    # GIVEN version 1 serves all traffic
    champion_serves(target, versions["good"])
    before = alias(target)
    # WHEN the absurd version 3 is promoted as a canary while clients send requests
    execution = run_with_traffic(
        target,
        gateway,
        api_client(deployed),
        versions["bad"],
        strategy="canary",
        canary_percent=30,
        bake_seconds=BAKE_SECONDS,
    )
    # THEN the flow fails on purpose, with the reason, and traffic is back on the champion alone
    assert (execution.status, execution.error) == ("FAILED", "CanaryRolledBack"), execution.cause
    assert "prediction_psi" in (execution.cause or "")
    assert alias(target) | {"revision_id": None} == before | {"revision_id": None}
    assert mlflow_aliases(target)["champion"] == versions["good"]
    assert stage(target, versions["bad"]) == "rejected"
    history = deployments(target, execution.arn)
    assert [r["action"] for r in history] == ["deployed", "canary-started", "rolled-back"]
    assert history[1]["traffic_percent"] == 30
    assert history[-1]["traffic_percent"] == 0 and "canary unhealthy" in history[-1]["reason"]


def test_a_good_canary_reaches_all_traffic_and_becomes_champion(
    target: Target, versions: dict[str, str], gateway: Gateway, deployed: Resources
) -> None:
    # GIVEN version 1 serves all traffic
    champion_serves(target, versions["good"])
    champion = alias(target)["function_version"]
    # WHEN version 2, the same model, is promoted as a canary while clients send requests
    execution = run_with_traffic(
        target,
        gateway,
        api_client(deployed),
        versions["good_again"],
        strategy="canary",
        canary_percent=30,
        bake_seconds=BAKE_SECONDS,
    )
    # THEN it passes its health check and takes all traffic as champion
    assert execution.status == "SUCCEEDED", execution.cause
    assert execution.output["canary"]["verdict"] == "healthy"
    checks = {c["check"] for c in execution.output["canary"]["checks"]}
    assert checks == {"error_rate", "p99_ms", "prediction_psi"}
    now = alias(target)
    assert now["function_version"] == execution.output["deployment"]["function_version"] != champion
    assert now["weights"] == {}
    assert mlflow_aliases(target) == {
        "champion": versions["good_again"],
        "challenger": None,
        "previous": versions["good"],
    }
    history = deployments(target, execution.arn)
    assert [r["action"] for r in history] == ["deployed", "canary-started", "promoted"]
    assert history[-1]["traffic_percent"] == 100 and history[-1]["reason"].startswith("canary healthy")


# -- the deployment lifecycle: promotions and code deploys, one owner of the alias ---------------------------

# New API code, as a developer's change would be: the same app, answering one header more.
CHANGED_API_CODE = """

_released_handler = handler


def handler(event, context):  # a code change: every answer says which build served it
    answer = _released_handler(event, context)
    answer.setdefault("headers", {})["x-pricepipe-build"] = "lifecycle-2"
    return answer
"""


def changed_api_code(folder: Path) -> Path:
    """A copy of the API function's code folder with CHANGED_API_CODE appended to its handler module."""
    spec = catalog.function(catalog.SERVING_FUNCTION)
    copy = shutil.copytree(spec.code_dir, folder / "api", ignore=shutil.ignore_patterns("__pycache__"))
    module = copy / f"{spec.handler.rpartition('.')[0]}.py"
    module.write_text(module.read_text() + CHANGED_API_CODE)
    return copy


def build_header(gateway: Gateway, api: ApiClient) -> str | None:
    request = urllib.request.Request(gateway.url + "/model-info", headers=api.headers())
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers.get("x-pricepipe-build")


def test_a_code_deploy_reaches_live_traffic_by_a_canary_with_the_champions_model_between_promotions(
    target: Target, versions: dict[str, str], gateway: Gateway, deployed: Resources, tmp_path: Path
) -> None:
    lam = target.client("lambda")
    # GIVEN a promoted model serves all traffic
    champion_serves(target, versions["good"])
    before = alias(target)
    old_code = deployer.version_configuration(lam, API, before["function_version"])["CodeSha256"]
    try:
        # WHEN the API's code changes and is deployed (`pipectl local up` on a running cloud)
        assert redeploy(lam, {catalog.SERVING_FUNCTION: changed_api_code(tmp_path)}) == [catalog.SERVING_FUNCTION]
        new_code = lam.get_function_configuration(FunctionName=API)["CodeSha256"]
        # THEN the deploy changed $LATEST only: live traffic stays where the promotion put it
        assert new_code != old_code
        assert alias(target) | {"revision_id": None} == before | {"revision_id": None}
        assert build_header(gateway, api_client(deployed)) is None

        # WHEN a code rollout starts while a promotion waits for approval, THEN it is refused, naming it
        waiting = wait_for_approval(target, versions["spare"])
        refused = flows.run(target, "promotion", {"kind": "code", "reason": "test"})
        assert (refused.status, refused.error) == ("FAILED", "PromotionRefused"), refused.cause
        assert waiting in (refused.cause or "") and "still running" in (refused.cause or "")
        _command(target, {"command": "reject", "model_version": versions["spare"], "actor": "test", "reason": "no"})
        assert flows.wait(target, waiting, timeout_s=60).status == "SUCCEEDED"
        assert alias(target) | {"revision_id": None} == before | {"revision_id": None}

        # WHEN the code rollout runs alone, as a canary while clients send requests
        rollout = run_with_traffic(
            target, gateway, api_client(deployed), None, kind="code", canary_percent=30, bake_seconds=BAKE_SECONDS
        )
        # THEN the new code serves all traffic with the champion's model, after a healthy canary
        assert rollout.status == "SUCCEEDED", rollout.cause
        assert rollout.output["canary"]["verdict"] == "healthy"
        now = alias(target)
        serving = deployer.version_configuration(lam, API, now["function_version"])
        assert now["weights"] == {} and now["function_version"] != before["function_version"]
        assert serving["CodeSha256"] == new_code
        assert served_model(target, now["function_version"]) == versions["good"]
        assert mlflow_aliases(target)["champion"] == versions["good"]
        assert build_header(gateway, api_client(deployed)) == "lifecycle-2"
        history = deployments(target, rollout.arn)
        assert [r["action"] for r in history] == ["deployed", "canary-started", "promoted"]
        assert all(r["reason"].startswith("code rollout: ") for r in history)
        assert {r["version"] for r in history} == {versions["good"]}
        # AND a second rollout with nothing new deployed has nothing to do
        again = flows.run(target, "promotion", {"kind": "code", "reason": "test"})
        assert again.status == "SUCCEEDED" and again.output["plan"]["route"] == "unchanged", again.cause

        # WHEN another model is promoted after the code deploy
        promoted = promote(target, versions["good_again"], strategy="blue-green")
        # THEN it serves on the new code, and both steps are in the history
        assert promoted.status == "SUCCEEDED", promoted.cause
        target_version = promoted.output["deployment"]["function_version"]
        assert alias(target)["function_version"] == target_version
        assert deployer.version_configuration(lam, API, target_version)["CodeSha256"] == new_code
        assert served_model(target, target_version) == versions["good_again"]
        actions = [(r["action"], r["execution_arn"]) for r in deployments(target) if r["action"] == "promoted"]
        assert actions[-2:] == [("promoted", rollout.arn), ("promoted", promoted.arn)]

        # WHEN the code is deployed again (back to the API's own) and rolled out blue-green
        assert redeploy(lam) == [catalog.SERVING_FUNCTION]
        back = flows.run(target, "promotion", {"kind": "code", "strategy": "blue-green", "reason": "test"})
        # THEN the new champion serves on it: a deploy after any promotion, and a promotion after any deploy
        assert back.status == "SUCCEEDED", back.cause
        serving = deployer.version_configuration(lam, API, alias(target)["function_version"])
        assert serving["CodeSha256"] == old_code and served_model(target, serving["Version"]) == versions["good_again"]
        assert build_header(gateway, api_client(deployed)) is None
    finally:
        redeploy(lam)  # the module's other tests run the API's own code


# -- manual approval, and the metric gate ----------------------------------------------------------------


def wait_for_approval(target: Target, version: str) -> str:
    arn = flows.start(target, "promotion", {"model_version": version, "strategy": "manual", "reason": "test"})
    waiting = flows.wait(target, arn, timeout_s=60, stop_at=("RequestApproval",))
    assert waiting.status == "RUNNING", waiting.cause
    deadline = time.monotonic() + 30  # the task records its token just after the state is entered
    while time.monotonic() < deadline:
        rows = deployments(target, arn)
        if rows and rows[-1]["action"] == "approval-requested":
            return arn
        time.sleep(0.3)
    raise AssertionError("the approval request was never recorded")


def test_manual_approve_promotes(target: Target, versions: dict[str, str]) -> None:
    # GIVEN version 2 is champion and version 1 waits for approval
    champion_serves(target, versions["good_again"])
    arn = wait_for_approval(target, versions["good"])
    assert mlflow_aliases(target)["challenger"] == versions["good"]
    # WHEN someone approves it
    _command(
        target,
        {
            "command": "approve",
            "model_version": versions["good"],
            "actor": "arn:aws:iam::000000000000:user/alice",
            "actor_source": "iam",
            "reason": "looks right",
        },
    )
    execution = flows.wait(target, arn, timeout_s=60)
    # THEN it serves all traffic as champion, and the history names the approver
    assert execution.status == "SUCCEEDED", execution.cause
    assert served_model(target, alias(target)["function_version"]) == versions["good"]
    assert mlflow_aliases(target)["champion"] == versions["good"]
    history = deployments(target, arn)
    assert [r["action"] for r in history] == ["deployed", "approval-requested", "approval-granted", "promoted"]
    alice = ("arn:aws:iam::000000000000:user/alice", "iam")
    assert [(r["actor"], r["actor_source"]) for r in history[-2:]] == [alice, alice]
    assert "looks right" in history[-1]["reason"]
    assert history[1]["actor_source"] == "pipeline"  # asked for by the flow, started without an actor


def test_manual_reject_leaves_traffic_unchanged(target: Target, versions: dict[str, str]) -> None:
    # GIVEN version 1 is champion and version 4 waits for approval
    champion_serves(target, versions["good"])
    before, registered = alias(target), mlflow_aliases(target)
    arn = wait_for_approval(target, versions["spare"])
    # WHEN someone rejects it
    _command(target, {"command": "reject", "model_version": versions["spare"], "actor": "bob", "reason": "too soon"})
    execution = flows.wait(target, arn, timeout_s=60)
    # THEN nothing changed for traffic, and the version is marked rejected with the reason
    assert execution.status == "SUCCEEDED" and execution.output["result"]["outcome"] == "rejected"
    assert alias(target) | {"revision_id": None} == before | {"revision_id": None}
    assert mlflow_aliases(target) == registered
    assert stage(target, versions["spare"]) == "rejected"
    history = deployments(target, arn)
    assert [r["action"] for r in history] == ["deployed", "approval-requested", "approval-refused", "rejected"]
    assert history[-1]["actor"] == "bob" and history[-1]["reason"] == "rejected by bob: too soon"
    assert history[-2]["reason"] == history[-1]["reason"]
    assert {r["actor_source"] for r in history[-2:]} == {"unverified"}  # an actor named without a source


def test_approving_a_version_without_a_pending_approval_says_so(target: Target) -> None:
    with pytest.raises(CommandFailed, match="version 99 has no pending approval"):
        _command(target, {"command": "approve", "model_version": "99", "actor": "alice"})


def test_the_auto_gate_refuses_a_worse_model(target: Target, versions: dict[str, str]) -> None:
    # GIVEN version 1 is champion; WHEN the absurd version 3 is promoted with the metric gate
    champion_serves(target, versions["good"])
    before = alias(target)
    execution = promote(target, versions["bad"], strategy="auto")
    # THEN it never reaches traffic, and the history says why
    assert execution.status == "SUCCEEDED" and execution.output["result"]["outcome"] == "rejected"
    assert execution.output["gate"]["passed"] is False
    assert alias(target) | {"revision_id": None} == before | {"revision_id": None}
    history = deployments(target, execution.arn)
    assert [r["action"] for r in history] == ["rejected"] and "RMSE" in history[0]["reason"]


def test_promoting_an_unknown_version_fails_before_changing_anything(target: Target) -> None:
    before = alias(target)
    execution = promote(target, "404", strategy="blue-green")
    assert (execution.status, execution.error) == ("FAILED", "PromotionRefused")
    assert "not registered" in (execution.cause or "")
    assert alias(target) | {"revision_id": None} == before | {"revision_id": None}


# -- the gateway -------------------------------------------------------------------------------------------


def test_the_gateway_requires_a_token_with_the_paths_scope_and_an_api_key_but_serves_the_docs(
    target: Target, versions: dict[str, str], gateway: Gateway, deployed: Resources
) -> None:
    champion_serves(target, versions["good"])
    client, pricing_only = api_client(deployed), api_client(deployed, "predict")
    unauthorized = (401, b'{"message": "Unauthorized"}')
    # no token, or the API key alone: the authorizer refuses before the key is looked at
    assert http(gateway, "GET", "/health") == unauthorized
    assert http(gateway, "GET", "/health", client={"x-api-key": deployed.api_key}) == unauthorized
    # a valid token without the client's API key: no usage plan names the caller
    assert http(gateway, "GET", "/health", client={"Authorization": f"Bearer {client.token()}"})[0] == 403
    status, body = http(gateway, "GET", "/health", client=client)
    assert status == 200 and json.loads(body)["model_loaded"] is True
    # /model-info needs the admin scope: a pricing-only token is authentic but denied
    assert http(gateway, "GET", "/model-info", client=pricing_only)[0] == 403
    assert http(gateway, "GET", "/model-info", client=client)[0] == 200
    status, body = http(gateway, "GET", "/docs")
    assert status == 200 and b"swagger" in body.lower()
    status, body = http(gateway, "GET", "/openapi.json")
    assert status == 200 and "/predict" in json.loads(body)["paths"]
    status, body = http(gateway, "POST", "/predict", {"rows": rows(3, 0)}, pricing_only)
    assert status == 200 and len(json.loads(body)["predictions"]) == 3
