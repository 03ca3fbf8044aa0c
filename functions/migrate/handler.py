"""CloudFormation custom resource (via the CDK Provider framework): run migrations on deploy.

Create and Update apply pending migrations and sync the dataset tables to the contract; Delete keeps
the data (the database is retained or snapshotted by its own removal policy).
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from pricepipe.contract import load_contract
from pricepipe.db import connect, migrate, resolve_dsn
from pricepipe.observability import logger
from pricepipe.settings import get_settings

settings = get_settings()


@logger.inject_lambda_context
def on_event(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    physical_id = event.get("PhysicalResourceId") or "pricepipe-database-schema"
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": physical_id}
    contract = load_contract(settings.contract, boto3.client("s3", region_name=settings.region))
    with connect(resolve_dsn(settings), autocommit=True) as conn:
        applied = migrate(conn, contract)
    logger.info("database migrated", extra={"applied": applied, "dataset": contract.name})
    return {"PhysicalResourceId": physical_id, "Data": {"Applied": ",".join(map(str, applied))}}
