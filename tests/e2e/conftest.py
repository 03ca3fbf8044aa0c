"""A local cloud per test module, with the pipeline deployed on it and a fresh database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipectl.localcloud import LocalCloud
from pipectl.localcloud.daemon import run_migrations
from pipectl.localcloud.provision import Resources, provision
from pipectl.target import Target, target_from_state
from tests.conftest import create_database, drop_database
from tests.e2e.support import FUNCTION_SETTINGS, JOB_SETTINGS


@pytest.fixture(scope="module")
def cloud_database(pg_admin_url: str) -> Iterator[str]:
    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    with LocalCloud(Path(tmp_path_factory.mktemp("localcloud"))) as running:
        yield running


@pytest.fixture(scope="module")
def deployed(cloud: LocalCloud, cloud_database: str) -> Resources:
    resources = provision(cloud, cloud_database, job_settings=JOB_SETTINGS, function_settings=FUNCTION_SETTINGS)
    run_migrations(cloud, resources)  # as the CDK custom resource does on deploy
    return resources


@pytest.fixture(scope="module")
def target(deployed: Resources) -> Target:
    return target_from_state(deployed.to_dict())
