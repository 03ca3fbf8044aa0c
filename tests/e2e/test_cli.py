"""`pipectl` as a user runs it: the local cloud daemon, the demo, and a restart that keeps S3."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pipectl(tmp_path: Path, pg_admin_url: str) -> Iterator:  # type: ignore[type-arg]
    url = create_database(pg_admin_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PRICEPIPE_", "MOTO_"))},
        "DATABASE_URL": url,
        "PIPECTL_STATE_DIR": str(tmp_path / "state"),
        "PIPECTL_LOCAL_PORT": str(free_port()),
        "PIPECTL_GATEWAY_PORT": str(free_port()),
        "COLUMNS": "200",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipectl.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    yield run
    run("local", "down")
    drop_database(pg_admin_url, url)


def test_demo_loads_days_and_a_second_run_adds_nothing(pipectl) -> None:  # type: ignore[no-untyped-def]
    first = pipectl("demo", "--days", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3: 3 loaded" in first.stdout, first.stdout  # the ETL's summary: files by outcome
    assert "bookings-20160702.csv" not in first.stdout  # each file only with --details
    assert "PostgreSQL price_data.raw_data" in first.stdout

    second = pipectl("demo", "--days", "3")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "no new landing files" in second.stdout


def test_s3_survives_a_restart_of_the_local_cloud(pipectl) -> None:  # type: ignore[no-untyped-def]
    assert pipectl("local", "up").returncode == 0
    assert pipectl("land", "--date", "2016-07-04").returncode == 0
    down = pipectl("local", "down")
    assert "local cloud stopped" in down.stdout
    assert pipectl("local", "status").returncode == 2  # not running: says so, exits non-zero
    assert pipectl("local", "up").returncode == 0
    # up on a running cloud is the local `cdk deploy`: with no function's code changed, it deploys nothing
    again = pipectl("local", "up")
    assert again.returncode == 0 and "nothing deployed" in again.stdout, again.stdout + again.stderr
    etl = pipectl("etl", "--details")
    assert etl.returncode == 0, etl.stdout + etl.stderr
    assert "bookings-20160704.csv" in etl.stdout


def test_bad_land_arguments_get_a_clear_error(pipectl) -> None:  # type: ignore[no-untyped-def]
    assert pipectl("local", "up").returncode == 0
    result = pipectl("land", "--from", "2017-02-01", "--to", "2017-01-01")
    assert result.returncode == 2 and "is after" in result.stdout
    result = pipectl("land", "--date", "2015-01-01")
    assert result.returncode == 2 and "no arrivals in that selection" in result.stdout
