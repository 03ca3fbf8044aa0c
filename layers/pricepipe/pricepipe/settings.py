"""The one settings object, read from the environment once per process.

The same code runs on AWS, LocalStack and the local cloud: only these values differ. AWS endpoints
are not settings here; boto3 reads the SDK's standard ``AWS_ENDPOINT_URL*`` variables itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of every function, job and command, from ``PRICEPIPE_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="PRICEPIPE_", extra="ignore", frozen=True)

    stage: Literal["dev", "test", "prod"] = "dev"
    region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("PRICEPIPE_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    # The data contract: a bundled contract's name, a file path, or an s3:// URI.
    contract: str = "hotel_rates"

    landing_bucket: str = "pricepipe-landing"
    landing_prefix: str = "landing/"
    quarantine_prefix: str = "quarantine/"
    lake_bucket: str = "pricepipe-lake"
    lake_prefix: str = "processed_features/"
    artifacts_bucket: str = "pricepipe-artifacts"
    manifest_prefix: str = "manifests/etl/"

    # Database: a Secrets Manager secret (RDS's JSON, or {"dsn": ...}) wins over a plain URL.
    database_secret_arn: str | None = None
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PRICEPIPE_DATABASE_URL", "DATABASE_URL")
    )

    metrics_namespace: str = "PricePipeline"
    service_name: str = Field(
        default="pricepipe",
        validation_alias=AliasChoices("PRICEPIPE_SERVICE_NAME", "POWERTOOLS_SERVICE_NAME"),
    )

    @model_validator(mode="after")
    def _no_plaintext_credentials_in_prod(self) -> Settings:
        url = self.database_url.get_secret_value() if self.database_url else ""
        if self.stage == "prod" and not self.database_secret_arn and urlsplit(url).password:
            raise ValueError(
                "stage=prod refuses a DATABASE_URL carrying a password: "
                "set PRICEPIPE_DATABASE_SECRET_ARN to the Secrets Manager secret instead"
            )
        for name in ("landing_prefix", "quarantine_prefix", "lake_prefix", "manifest_prefix"):
            if not getattr(self, name).endswith("/"):
                raise ValueError(f"{name} must end with '/', got {getattr(self, name)!r}")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (a Lambda container reads them at cold start)."""
    return Settings()
