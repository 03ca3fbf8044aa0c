"""The operator's way back (``pipectl rollback``), and the champion served again after a restart.

:func:`rollback` puts the ``previous`` version back on all live traffic: one alias update while its
function version still exists. :func:`restore_champion` deploys the registry's champion when the alias
serves no model (a restarted local cloud has lost its Lambda versions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pricepipe import registry
from pricepipe.champion import current as champion_of
from pricepipe.errors import CommandError
from pricepipe.promotion import deployer
from pricepipe.promotion import ssm as ssm_parameters
from pricepipe.promotion.deploy import deploy_registered
from pricepipe.promotion.history import aliases, last_promoted_function_version, model_row, record, restore_aliases
from pricepipe.promotion.plan import Serving, running
from pricepipe.promotion.stepfunctions import execution_status

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_stepfunctions import SFNClient

    from pricepipe.promotion.steps import ServingVersion
    from pricepipe.settings import Settings


def function_version_serving(
    conn: psycopg.Connection[Any], lam: LambdaClient, s3: S3Client, serving: Serving, model_name: str, version: str
) -> ServingVersion:
    """The function version that served ``version`` (as recorded when it was promoted), else any
    version serving it, else a new one from its artifact (a restarted local cloud has none left)."""
    recorded = last_promoted_function_version(conn, model_name, version)
    if recorded is not None:
        configuration = deployer.existing_version_configuration(lam, serving.function, recorded)
        layer = deployer.model_layer_of(configuration, serving.layer_name) if configuration else None
        if layer and configuration and deployer.model_of(configuration.get("Description")) == (model_name, version):
            return {"function_version": recorded, "layer_arn": layer, "reused": True}
    found = deployer.find_version(lam, serving.function, model_name, version, serving.layer_name)
    if found is not None:
        layer_arn = deployer.model_layer_of(found, serving.layer_name)
        return {"function_version": str(found["Version"]), "layer_arn": layer_arn, "reused": True}
    row = model_row(conn, model_name, version)
    if row is None or not row["serving_artifact_uri"]:
        raise CommandError(f"{model_name} version {version} has no serving artifact to deploy again")
    deployed = deploy_registered(lam, s3, serving, model_name, row)
    return {
        "function_version": deployed["function_version"],
        "layer_arn": deployed["layer_arn"],
        "reused": deployed["reused"],
    }


def rollback(
    conn: psycopg.Connection[Any],
    lam: LambdaClient,
    s3: S3Client,
    ssm: SSMClient,
    sfn: SFNClient,
    client: MlflowClient,
    settings: Settings,
    actor: str,
    reason: str = "",
    actor_source: str = "unverified",
) -> dict[str, Any]:
    """Put the ``previous`` version back on all live traffic at once; the demoted champion is marked
    rejected. One alias update when the previous function version still exists (it does, unless a
    local cloud was restarted)."""
    serving = Serving.from_settings(settings)
    model_name = settings.model_name
    for execution_arn, version, _ in running(conn, model_name):
        if execution_status(sfn, execution_arn) == "RUNNING":
            raise CommandError(
                f"the promotion of version {version} is running ({execution_arn}): let it end, or"
                f" `pipectl reject {version}` if it waits for approval, before rolling back"
            )
    aliases_before = aliases(client, model_name)
    previous, champion = aliases_before["previous"], aliases_before["champion"]
    if previous is None:
        raise CommandError(f"{model_name} has no previous version to roll back to (champion: {champion or 'none'})")
    target = function_version_serving(conn, lam, s3, serving, model_name, previous)
    before = deployer.alias_state(lam, serving.function, serving.alias)
    parameter_before = ssm_parameters.value(ssm, serving.parameter)
    why = reason or "rollback requested"
    switched = deployer.switch(lam, serving.function, serving.alias, target["function_version"], before["revision_id"])
    try:
        if target["layer_arn"]:
            ssm_parameters.put_model_layer_parameter(ssm, serving.parameter, target["layer_arn"])
        rolled = registry.rollback(client, conn, model_name)
        with conn.transaction():
            record(
                conn,
                model_name=model_name,
                version=previous,
                previous_version=rolled["rolled_back"],
                action="rolled-back",
                strategy="rollback",
                traffic_percent=100,
                function_version=target["function_version"],
                reason=why,
                actor=actor,
                actor_source=actor_source,
                details={"alias_before": before, "layer_arn": target.get("layer_arn")},
            )
    except BaseException:
        deployer.restore_alias(lam, serving.function, serving.alias, before)
        ssm_parameters.restore(ssm, serving.parameter, parameter_before)
        restore_aliases(client, conn, model_name, aliases_before)
        raise
    return {
        "champion": previous,
        "rolled_back": rolled["rolled_back"],
        "function_version": target["function_version"],
        "alias": switched,
        "reason": why,
    }


def restore_champion(
    conn: psycopg.Connection[Any], lam: LambdaClient, s3: S3Client, ssm: SSMClient, settings: Settings, actor: str
) -> dict[str, Any] | None:
    """Serve the registry's champion again when the alias serves no model: a restarted local cloud
    needs it because its Lambda versions are gone (on AWS a code rollout after re-creating the serving
    stack does the same through the promotion flow)."""
    serving = Serving.from_settings(settings)
    alias = deployer.alias_state(lam, serving.function, serving.alias)
    primary = deployer.version_configuration(lam, serving.function, alias["function_version"])
    if deployer.model_of(primary.get("Description")) is not None:
        return None
    champion = champion_of(conn, settings.model_name)
    if champion is None:
        return None
    version = champion.version
    target = function_version_serving(conn, lam, s3, serving, settings.model_name, version)
    switched = deployer.switch(lam, serving.function, serving.alias, target["function_version"])
    if target["layer_arn"]:
        ssm_parameters.put_model_layer_parameter(ssm, serving.parameter, target["layer_arn"])
    with conn.transaction():
        record(
            conn,
            model_name=settings.model_name,
            version=version,
            action="redeployed",
            traffic_percent=100,
            function_version=target["function_version"],
            reason=f"{serving.alias} served no model: the champion was deployed again",
            actor=actor,
            actor_source="pipeline",
            details={"alias_before": alias},
        )
    return {"champion": version, "function_version": target["function_version"], "alias": switched}
