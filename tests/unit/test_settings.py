"""The settings object: read from the environment, refusing unsafe or inconsistent values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pricepipe.settings import Settings


def test_defaults_name_the_local_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "PRICEPIPE_LANDING_BUCKET", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.landing_bucket == "pricepipe-landing"
    assert settings.region == "us-east-1"
    assert settings.database_url is None


def test_environment_overrides_and_database_url_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICEPIPE_LANDING_BUCKET", "acme-landing")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = Settings()
    assert settings.landing_bucket == "acme-landing"
    assert settings.database_url is not None and settings.database_url.get_secret_value() == "postgresql://u@h/db"
    assert settings.region == "eu-west-1"
    assert "postgresql" not in repr(settings)  # the URL is a secret: never printed


def test_prod_refuses_a_password_in_database_url() -> None:
    with pytest.raises(ValidationError, match="refuses a DATABASE_URL carrying a password"):
        Settings(stage="prod", database_url="postgresql://app:hunter2@db/prices")
    assert Settings(stage="prod", database_url="postgresql://app:hunter2@db/prices", database_secret_arn="arn:x")


def test_prefixes_must_end_with_a_slash() -> None:
    with pytest.raises(ValidationError, match="landing_prefix must end with '/'"):
        Settings(landing_prefix="landing")


def test_each_contract_lands_and_is_quarantined_in_its_own_folder() -> None:
    settings = Settings(landing_prefix="in/", quarantine_prefix="bad/")

    assert settings.contract_landing_prefix("ames") == "in/ames/"
    assert settings.contract_quarantine_prefix("hotel_rates") == "bad/hotel_rates/"
    with pytest.raises(ValueError, match="without '/'"):
        settings.contract_landing_prefix("ames/../hotel_rates")


def test_environment_names_match_in_any_case_and_the_first_alias_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("pricepipe_max_batch_rows", "25")  # read as pydantic-settings read it: any case
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("PRICEPIPE_REGION", "eu-central-1")  # the first of the field's variables
    monkeypatch.setenv("PRICEPIPE_REFIT_FULL_WINDOW", "false")
    settings = Settings()
    assert (settings.max_batch_rows, settings.region, settings.refit_full_window) == (25, "eu-central-1", False)
    assert Settings(max_batch_rows=7, region="ap-south-1").max_batch_rows == 7  # a given value wins


def test_a_bad_environment_value_is_refused_naming_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICEPIPE_MAX_BATCH_ROWS", "many")
    with pytest.raises(ValidationError, match=r"max_batch_rows\n  Input should be a valid integer"):
        Settings()
    monkeypatch.setenv("PRICEPIPE_MAX_BATCH_ROWS", "0")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Settings()
