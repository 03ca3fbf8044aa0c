"""The Deploy step: a function version of the serving function carrying the model, with no traffic yet.

:mod:`pricepipe.promotion.deployer` does the Lambda work; this step records it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pricepipe.errors import PromotionRefused
from pricepipe.promotion import deployer
from pricepipe.promotion.history import iso, model_row, now, reason_for, record
from pricepipe.promotion.plan import Serving

if TYPE_CHECKING:
    import psycopg
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_s3 import S3Client

    from pricepipe.promotion.deployer import ModelDeployment
    from pricepipe.promotion.steps import DeployResult, Plan
    from pricepipe.settings import Settings


def layer_metadata(row: dict[str, Any], model_name: str, alias: str) -> dict[str, Any]:
    """What the model layer says about its model (``model.json``; the API's /model-info shows it)."""
    params = row.get("params") or {}
    return {
        "model_name": model_name,
        "model_version": row["version"],
        "alias": alias,  # the function alias it is deployed behind
        "run_id": row.get("run_id"),
        "dataset": row.get("dataset"),
        "model_family": params.get("model_family"),
        "metrics": {k: v for k, v in (row.get("metrics") or {}).items() if not isinstance(v, dict)},
        "data_window": row.get("data_window") or {},
        "trained_at": row.get("created_at"),  # registered right after training, in the same job
    }


def deploy_registered(
    lam: LambdaClient, s3: S3Client, serving: Serving, model_name: str, row: dict[str, Any]
) -> ModelDeployment:
    """A function version serving the registered version ``row`` (a :func:`~.history.model_row`)."""
    return deployer.deploy_model(
        lam,
        s3,
        function=serving.function,
        layer_name=serving.layer_name,
        artifact_uri=str(row["serving_artifact_uri"]),
        metadata=layer_metadata(row, model_name, serving.alias),
    )


def deploy(
    conn: psycopg.Connection[Any], lam: LambdaClient, s3: S3Client, settings: Settings, plan: Plan
) -> DeployResult:
    """A function version of the serving function carrying this model; no traffic reaches it yet."""
    serving = Serving.from_settings(settings)
    model_name, version = plan["model_name"], plan["model_version"]
    row = model_row(conn, model_name, version)
    if row is None:
        raise PromotionRefused(f"{model_name} version {version} is no longer registered")
    deployment = deploy_registered(lam, s3, serving, model_name, row)
    with conn.transaction():
        conn.execute(
            "UPDATE model_registry.promotions SET function_version = %s WHERE execution_arn = %s",
            (deployment["function_version"], plan["execution_arn"]),
        )
        record(
            conn,
            model_name=model_name,
            version=version,
            action="deployed",
            strategy=plan["strategy"],
            traffic_percent=0,
            function_version=deployment["function_version"],
            reason=reason_for(
                plan,
                f"{serving.function} version {deployment['function_version']} serves {model_name}@{version}"
                f" ({'reused' if deployment.get('reused') else 'published'}); no traffic yet",
            ),
            actor=plan["actor"],
            actor_source=plan["actor_source"],
            execution_arn=plan["execution_arn"],
            details={"layer_arn": deployment.get("layer_arn"), "code_sha256": deployment.get("code_sha256")},
        )
    return {**deployment, "deployed_at": iso(now())}
