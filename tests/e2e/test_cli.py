"""`pipectl` as a user runs it: the local cloud daemon, the demo, and a restart that keeps S3."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipectl.localcloud import ports
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

    run.env = env  # type: ignore[attr-defined]
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


def test_a_taken_port_fails_at_once_and_down_returns_once_every_process_has_exited(pipectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert pipectl("local", "up").returncode == 0
    state_dir = (tmp_path / "state").resolve()
    port = pipectl.env["PIPECTL_LOCAL_PORT"]
    daemon = psutil.Process(json.loads((state_dir / "state.json").read_text())["pid"])
    workers = ports.workers(daemon)
    assert workers  # the migrate function's worker, at least

    # another local cloud on the same port: refused before anything starts, naming the one holding it
    other = pipectl("local", "up", "--state-dir", str(tmp_path / "other"))
    said = " ".join(other.stdout.split())
    assert other.returncode == 1, other.stdout + other.stderr
    assert f"port {port} " in said and f"state folder {state_dir}, process {daemon.pid}" in said, said
    assert not (tmp_path / "other" / "localcloud.log").exists()  # no daemon was started
    # a daemon that loses the race for the port ends at once with the same words (it used to hang)
    direct = subprocess.run(
        [sys.executable, "-m", ports.DAEMON_MODULE, "--state-dir", str(tmp_path / "direct"), "--port", port],
        cwd=ROOT,
        env=pipectl.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert direct.returncode == ports.PORT_TAKEN_EXIT, direct.stdout + direct.stderr
    assert f"process {daemon.pid}" in direct.stderr and f"port {port} " in direct.stderr

    down = pipectl("local", "down")
    assert down.returncode == 0 and "local cloud stopped" in down.stdout, down.stdout + down.stderr
    assert [p.pid for p in (daemon, *workers) if ports.running(p)] == []  # nothing lingers: `up` may follow
    assert not (state_dir / "state.json").exists()


def test_a_daemon_stopped_while_it_starts_exits_with_its_workers(pipectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a database that accepts connections and never answers: the start cannot finish
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        env = {**pipectl.env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{blackhole.getsockname()[1]}/none"}
        daemon = subprocess.Popen(
            [sys.executable, "-m", ports.DAEMON_MODULE, "--state-dir", str(tmp_path / "starting"), "--port", "0"],
            cwd=ROOT,
            env={**env, "PIPECTL_GATEWAY_PORT": str(free_port())},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process = psutil.Process(daemon.pid)
            workers: list[psutil.Process] = []
            for _ in range(1200):  # until the migration's worker has started (count-bounded)
                workers = ports.workers(process)
                if workers or daemon.poll() is not None:
                    break
                time.sleep(0.1)
            assert workers, "the daemon started no worker"
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=120) == 128 + signal.SIGTERM  # it stopped starting, not failed later
            assert [p.pid for p in workers if ports.running(p)] == []
        finally:
            if daemon.poll() is None:
                daemon.kill()
