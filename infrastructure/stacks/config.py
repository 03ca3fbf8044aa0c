"""Deploy-time choices, read once from CDK context (``cdk.json`` or ``cdk deploy -c key=value``).

Every key is optional. The defaults are the production posture: deletion protection, a final
snapshot, a Multi-AZ database. ``-c pricepipe:stage=dev`` switches to a disposable stack (no
deletion protection, no snapshot, single AZ); each of those can still be set on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import aws_logs as logs
from constructs import Node

STAGES = ("dev", "test", "prod")
DEFAULT_ETL_SCHEDULE = "cron(0 2 * * ? *)"
# Version of AWS's "AWS SDK for pandas" layer for python3.12 x86_64 (pandas, numpy, pyarrow). Layer
# version numbers differ between regions: look yours up in
# https://aws-sdk-pandas.readthedocs.io/en/stable/layers.html and pin it with
# -c pricepipe:pandasLayerVersion=N, or give the whole ARN with -c pricepipe:pandasLayerArn=...
DEFAULT_PANDAS_LAYER_VERSION = 31
PANDAS_LAYER_ACCOUNT = "336392948345"  # AWS's publishing account in the commercial regions

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
}


@dataclass(frozen=True)
class DeployConfig:
    """What differs between deployments of the same code."""

    stage: str = "prod"
    contract: str = "hotel_rates"  # a bundled contract name, or s3://bucket/key
    etl_schedule: str = DEFAULT_ETL_SCHEDULE
    pandas_layer_version: int = DEFAULT_PANDAS_LAYER_VERSION
    pandas_layer_arn: str | None = None  # overrides the version (other partitions, opt-in regions)
    retain_data: bool = True  # RDS deletion protection + snapshot on delete
    db_multi_az: bool = True
    db_instance_type: str = "t4g.small"
    db_allocated_storage_gb: int = 20
    db_max_allocated_storage_gb: int = 100
    log_retention_days: int = 90
    # An SSM-only host in the isolated subnets for port-forwarding to PostgreSQL (MLflow UI, psql).
    bastion: bool = False
    # Fargate vCPUs that Batch may run at once: caps the cost of concurrent or runaway training jobs.
    batch_max_vcpus: int = 4

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"pricepipe:stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.log_retention_days not in _RETENTION:
            raise ValueError(
                f"pricepipe:logRetentionDays must be one of {sorted(_RETENTION)}, got {self.log_retention_days}"
            )
        if self.batch_max_vcpus < 1:
            raise ValueError(f"pricepipe:batchMaxVcpus must be at least 1, got {self.batch_max_vcpus}")
        if not (self.etl_schedule.startswith(("cron(", "rate(", "at(")) and self.etl_schedule.endswith(")")):
            raise ValueError(
                f"pricepipe:etlSchedule must be an EventBridge Scheduler expression, got {self.etl_schedule!r}"
            )

    @property
    def log_retention(self) -> logs.RetentionDays:
        return _RETENTION[self.log_retention_days]

    @classmethod
    def from_context(cls, node: Node) -> DeployConfig:
        def get(key: str) -> Any:
            return node.try_get_context(f"pricepipe:{key}")

        stage = str(get("stage") or cls.stage)
        disposable = stage == "dev"
        pandas_version = get("pandasLayerVersion")
        return cls(
            stage=stage,
            contract=str(get("contract") or cls.contract),
            etl_schedule=str(get("etlSchedule") or cls.etl_schedule),
            pandas_layer_version=int(pandas_version) if pandas_version is not None else cls.pandas_layer_version,
            pandas_layer_arn=get("pandasLayerArn"),
            retain_data=_flag(get("retainData"), default=not disposable),
            db_multi_az=_flag(get("dbMultiAz"), default=not disposable),
            db_instance_type=str(get("dbInstanceType") or cls.db_instance_type),
            db_allocated_storage_gb=int(get("dbAllocatedStorageGb") or cls.db_allocated_storage_gb),
            db_max_allocated_storage_gb=int(get("dbMaxAllocatedStorageGb") or cls.db_max_allocated_storage_gb),
            log_retention_days=int(get("logRetentionDays") or cls.log_retention_days),
            bastion=_flag(get("bastion"), default=cls.bastion),
            batch_max_vcpus=int(get("batchMaxVcpus") or cls.batch_max_vcpus),
        )


def _flag(value: Any, *, default: bool) -> bool:
    """Context from ``-c key=value`` arrives as text; from cdk.json as JSON booleans."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")
