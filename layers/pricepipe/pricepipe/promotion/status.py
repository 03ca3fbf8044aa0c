"""What serves now: ``pipectl deployments``' view of the live alias, the registry and running promotions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pricepipe.promotion import deployer
from pricepipe.promotion.history import aliases
from pricepipe.promotion.plan import Serving, running

if TYPE_CHECKING:
    import psycopg
    from mlflow import MlflowClient
    from mypy_boto3_lambda import LambdaClient

    from pricepipe.settings import Settings


def status(
    conn: psycopg.Connection[Any], lam: LambdaClient, client: MlflowClient | None, settings: Settings
) -> dict[str, Any]:
    """The live alias, the model each of its versions serves, the registry's aliases, running promotions."""
    serving = Serving.from_settings(settings)
    alias = deployer.alias_state(lam, serving.function, serving.alias)
    routes = {alias["function_version"]: 1.0 - sum(alias["weights"].values()), **alias["weights"]}
    served = []
    for function_version, share in routes.items():
        configuration = deployer.version_configuration(lam, serving.function, function_version)
        model = deployer.model_of(configuration.get("Description"))
        served.append(
            {
                "function_version": function_version,
                "traffic_percent": round(share * 100, 2),
                "model_version": model[1] if model else None,
            }
        )
    promotions = [
        {"execution_arn": arn, "model_version": version} for arn, version, _ in running(conn, settings.model_name)
    ]
    return {
        "function": serving.function,
        "alias": serving.alias,
        "routes": served,
        "aliases": aliases(client, settings.model_name) if client is not None else None,
        "running": promotions,
    }
