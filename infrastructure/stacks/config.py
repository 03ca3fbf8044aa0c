"""Deploy-time choices, read once from CDK context (``cdk.json`` or ``cdk deploy -c key=value``).

Every key is optional. The defaults are the production posture: deletion protection, a final
snapshot, a Multi-AZ database, SnapStart on the API function. ``-c pricepipe:stage=dev`` (or
``test``) switches to a disposable stack (no deletion protection, no snapshot, single AZ, no
SnapStart); each of those can still be set on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from aws_cdk import aws_logs as logs
from constructs import Node

from infrastructure.catalog import ROOT

BUNDLED_CONTRACTS = ROOT / "layers" / "pricepipe" / "pricepipe" / "contracts"

STAGES = ("dev", "test", "prod")
DEFAULT_ETL_SCHEDULE = "cron(0 2 * * ? *)"
# Daily, two hours after the ETL: the drift check compares the newest loaded days.
DEFAULT_DRIFT_SCHEDULE = "cron(0 5 * * ? *)"  # after the 02:00 ETL and the 04:00-04:30 RDS backup window
# API Gateway throttling (stage default and usage plan): the same defaults as the local gateway's
# token bucket, pricepipe.settings.Settings api_throttle_rate / api_throttle_burst (a test holds them equal).
DEFAULT_API_THROTTLE_RATE = 50.0
DEFAULT_API_THROTTLE_BURST = 100
DEFAULT_API_QUOTA_PER_DAY = 1_000_000
# AWS WAF's rate-based rule: requests a client IP may send in 5 minutes before it is blocked (AWS WAF
# accepts 10 to 2,000,000,000; "Rate-based rule statement", AWS WAF Developer Guide). 3,000 is 10 a
# second on average, a fifth of the stage's rate: one address cannot take the API from the others.
DEFAULT_WAF_RATE_PER_5_MIN = 3_000
# An ETL run whose quarantined rows exceed this share of its input raises an alarm.
DEFAULT_QUARANTINE_ALARM_PERCENT = 5.0

SNAPSTART_WITH_PROVISIONED_CONCURRENCY = (
    "pricepipe:snapStart and pricepipe:provisionedConcurrency cannot both be true: AWS Lambda does not "
    "support provisioned concurrency on a SnapStart function (AWS Lambda Developer Guide, 'Improving startup "
    "performance with Lambda SnapStart'). Choose one for this stage: snapStart=true (each published version "
    "snapshots its initialised app, restored on demand) or provisionedConcurrency=true with snapStart=false "
    "(containers kept initialised by `pipectl scale-serving`, paid per hour)"
)

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
    # AWS's "AWS SDK for pandas" layer: by region from layers/pandas-managed/versions.json unless
    # given whole (-c pricepipe:pandasLayerArn=..., for a region or partition the table lacks)
    pandas_layer_arn: str | None = None
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
    drift_schedule: str = DEFAULT_DRIFT_SCHEDULE
    # Per API key (usage plan) and for the stage as a whole (the docs paths need no key).
    api_throttle_rate: float = DEFAULT_API_THROTTLE_RATE
    api_throttle_burst: int = DEFAULT_API_THROTTLE_BURST
    api_quota_per_day: int = DEFAULT_API_QUOTA_PER_DAY
    # API Gateway writes access and execution logs only with an account-wide CloudWatch Logs role
    # (AWS::ApiGateway::Account). On by default so a fresh account works; turn it off where the
    # account already has one managed elsewhere (-c pricepipe:apiGatewayAccountRole=false).
    api_gateway_account_role: bool = True
    # A WAF web ACL on the API stage (AWS managed common rule set, known bad inputs, a rate limit per
    # client IP): on by default for prod, off for dev and test unless -c pricepipe:apiWaf=true.
    api_waf: bool = True
    api_waf_rate_per_5_min: int = DEFAULT_WAF_RATE_PER_5_MIN
    alarm_email: str | None = None  # subscribed to the alarm topic when given
    # A CloudTrail trail of data events (object reads and writes in the artifacts bucket, the state
    # machines' data events, invokes of the promotion command function): the principal behind each
    # row of model_registry.deployments, to check it against. On for prod, off for dev and test
    # (data events are billed per event): -c pricepipe:auditTrail=true|false.
    audit_trail: bool = True
    quarantine_alarm_percent: float = DEFAULT_QUARANTINE_ALARM_PERCENT
    # How the API function's cold starts are paid for, one choice per stage (README "Cold starts"):
    # SnapStart (every published version snapshots its initialised app; on by default in prod), or
    # provisioned concurrency set on the live alias by `pipectl scale-serving`. AWS Lambda supports
    # only one of the two on a function ("Improving startup performance with Lambda SnapStart",
    # Supported features and limitations: "SnapStart does not support provisioned concurrency").
    snap_start: bool = True
    provisioned_concurrency: bool = False

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"pricepipe:stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.log_retention_days not in _RETENTION:
            raise ValueError(
                f"pricepipe:logRetentionDays must be one of {sorted(_RETENTION)}, got {self.log_retention_days}"
            )
        if self.batch_max_vcpus < 1:
            raise ValueError(f"pricepipe:batchMaxVcpus must be at least 1, got {self.batch_max_vcpus}")
        for key, expression in (("etlSchedule", self.etl_schedule), ("driftSchedule", self.drift_schedule)):
            if not (expression.startswith(("cron(", "rate(", "at(")) and expression.endswith(")")):
                raise ValueError(f"pricepipe:{key} must be an EventBridge Scheduler expression, got {expression!r}")
        if self.api_throttle_rate <= 0 or self.api_throttle_burst < 1 or self.api_quota_per_day < 1:
            raise ValueError(
                "pricepipe:apiThrottleRate must be positive, apiThrottleBurst and apiQuotaPerDay at least 1, got "
                f"{self.api_throttle_rate}, {self.api_throttle_burst}, {self.api_quota_per_day}"
            )
        if not 10 <= self.api_waf_rate_per_5_min <= 2_000_000_000:
            raise ValueError(
                f"pricepipe:apiWafRatePer5Min must be between 10 and 2000000000, got {self.api_waf_rate_per_5_min}"
            )
        if self.snap_start and self.provisioned_concurrency:
            raise ValueError(SNAPSTART_WITH_PROVISIONED_CONCURRENCY)
        if not 0 < self.quarantine_alarm_percent <= 100:
            raise ValueError(
                f"pricepipe:quarantineAlarmPercent must be in (0, 100], got {self.quarantine_alarm_percent}"
            )

    @property
    def dataset(self) -> str:
        """The deployed contract's name (:func:`dataset_name`)."""
        return dataset_name(self.contract)

    @property
    def log_retention(self) -> logs.RetentionDays:
        return _RETENTION[self.log_retention_days]

    @classmethod
    def from_context(cls, node: Node) -> DeployConfig:
        def get(key: str) -> Any:
            return node.try_get_context(f"pricepipe:{key}")

        stage = str(get("stage") or cls.stage)
        disposable = stage == "dev"
        provisioned = _flag(get("provisionedConcurrency"), default=cls.provisioned_concurrency)
        return cls(
            stage=stage,
            contract=str(get("contract") or cls.contract),
            etl_schedule=str(get("etlSchedule") or cls.etl_schedule),
            pandas_layer_arn=get("pandasLayerArn"),
            retain_data=_flag(get("retainData"), default=not disposable),
            db_multi_az=_flag(get("dbMultiAz"), default=not disposable),
            db_instance_type=str(get("dbInstanceType") or cls.db_instance_type),
            db_allocated_storage_gb=int(get("dbAllocatedStorageGb") or cls.db_allocated_storage_gb),
            db_max_allocated_storage_gb=int(get("dbMaxAllocatedStorageGb") or cls.db_max_allocated_storage_gb),
            log_retention_days=int(get("logRetentionDays") or cls.log_retention_days),
            bastion=_flag(get("bastion"), default=cls.bastion),
            batch_max_vcpus=int(get("batchMaxVcpus") or cls.batch_max_vcpus),
            drift_schedule=str(get("driftSchedule") or cls.drift_schedule),
            api_throttle_rate=float(get("apiThrottleRate") or cls.api_throttle_rate),
            api_throttle_burst=int(get("apiThrottleBurst") or cls.api_throttle_burst),
            api_quota_per_day=int(get("apiQuotaPerDay") or cls.api_quota_per_day),
            api_gateway_account_role=_flag(get("apiGatewayAccountRole"), default=cls.api_gateway_account_role),
            api_waf=_flag(get("apiWaf"), default=stage == "prod"),
            api_waf_rate_per_5_min=int(get("apiWafRatePer5Min") or cls.api_waf_rate_per_5_min),
            alarm_email=get("alarmEmail") or None,
            audit_trail=_flag(get("auditTrail"), default=stage == "prod"),
            quarantine_alarm_percent=float(get("quarantineAlarmPercent") or cls.quarantine_alarm_percent),
            # prod's default, unless the stage chose provisioned concurrency instead
            snap_start=_flag(get("snapStart"), default=stage == "prod" and not provisioned),
            provisioned_concurrency=provisioned,
        )


def dataset_name(contract: str) -> str:
    """A contract's name, known at synth time: the ``dataset`` dimension of the ETL metrics and its
    folder under the landing and quarantine roots. A bundled contract's is read here; for one in S3
    the file's stem, which is what the bundled contracts use too (the ETL refuses files outside the
    folder of the name the contract itself declares, so the two must agree)."""
    bundled = BUNDLED_CONTRACTS / f"{contract}.yaml"
    if bundled.is_file():
        return str(yaml.safe_load(bundled.read_text(encoding="utf-8"))["name"])
    return contract.rstrip("/").rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")


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
