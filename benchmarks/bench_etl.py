"""ETL throughput: 1,000,000 hotel_rates rows (resampled) through validation, load and features.

Beside it, in the same run and on the same database, a bare binary COPY of the same typed rows
into a table shaped like ``price_data.raw_data`` (primary key included): the physical limit of
writing those rows once. Also the peak memory of one process loading a 100,000-row file.

    python -m benchmarks.bench_etl [--rows 1000000] [--repeat 3]

S3 is a moto server in its own process on loopback.
PostgreSQL comes from TEST_DATABASE_URL, else 127.0.0.1:5432, else an embedded server.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from benchmarks.common import RESULTS as RESULTS_DIR
from benchmarks.common import admin_url, peak_rss_mb, print_table, s3_server, write_result

BUDGET_S = 15.0
MEMORY_BUDGET_MB = 512


def make_csv(rows: int, seed: int = 7) -> bytes:
    from pipectl.datasource import hotel_rates

    frame = hotel_rates().sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)
    frame["booking_id"] = np.arange(1, rows + 1)
    return frame.to_csv(index=False).encode()


def fresh_database(admin: str) -> str:
    name = f"pricepipe_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(admin, dbname=name)


def drop_database(admin: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))


def run(rows: int, repeat: int) -> dict[str, Any]:
    from pricepipe import db, etl, storage
    from pricepipe.contract import load_contract, read_csv, validate
    from pricepipe.settings import Settings

    contract = load_contract("hotel_rates")
    body = make_csv(rows)
    typed = validate(read_csv(body, contract), contract).good  # the rows a bare COPY writes
    admin = admin_url()
    url = fresh_database(admin)
    etl_s: list[float] = []
    copy_s: list[float] = []
    loaded = 0
    try:
        with s3_server() as s3, db.connect(url, autocommit=True) as conn:
            settings = Settings(database_url=url)
            for bucket in (settings.landing_bucket, settings.lake_bucket, settings.artifacts_bucket):
                s3.create_bucket(Bucket=bucket)
            db.migrate(conn, contract)
            conn.execute("CREATE TABLE bench_bare (LIKE price_data.raw_data INCLUDING ALL)")
            key = f"{settings.contract_landing_prefix(contract.name)}bench/big.csv"
            s3.put_object(Bucket=settings.landing_bucket, Key=key, Body=body)
            head = s3.head_object(Bucket=settings.landing_bucket, Key=key)
            ref = storage.ObjectRef(settings.landing_bucket, key, head["ETag"].strip('"'), len(body))
            for attempt in range(repeat):
                conn.execute("TRUNCATE price_data.raw_data, price_data.processed_features, price_data.ingestion_ledger")
                conn.execute("TRUNCATE bench_bare")
                conn.execute("CHECKPOINT")
                started = time.perf_counter()
                result = etl.load_file(conn, s3, contract, settings, ref, f"bench-{attempt}")
                etl_s.append(time.perf_counter() - started)
                loaded = result.rows_loaded
                conn.execute("CHECKPOINT")
                started = time.perf_counter()
                with conn.transaction():
                    db.copy_frame(
                        conn, "bench_bare", typed, contract.arrow_schema(contract.raw_table_columns), {"_ingest_id": 1}
                    )
                copy_s.append(time.perf_counter() - started)
                print(f"  run {attempt + 1}: etl {etl_s[-1]:.2f} s, bare COPY {copy_s[-1]:.2f} s", flush=True)
    finally:
        drop_database(admin, url)
    etl_median, copy_median = statistics.median(etl_s), statistics.median(copy_s)
    return {
        "rows_in": rows,
        "rows_loaded": loaded,
        "etl_seconds": etl_s,
        "bare_copy_seconds": copy_s,
        "etl_median_s": round(etl_median, 2),
        "bare_copy_median_s": round(copy_median, 2),
        "etl_rows_per_s": round(rows / etl_median),
        "bare_copy_rows_per_s": round(len(typed) / copy_median),
        "etl_over_bare_copy": round(etl_median / copy_median, 2),
        "budget_s": BUDGET_S,
    }


def peak_memory_mb(rows: int) -> float:
    """Peak RSS of a fresh process loading one ``rows``-row file through ``etl.load_file``."""
    probe_file = RESULTS_DIR / f"probe-{rows}.csv"
    probe_file.parent.mkdir(parents=True, exist_ok=True)
    probe_file.write_bytes(make_csv(rows))
    with s3_server():  # the probe inherits the endpoint from the environment
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_etl", "--memory-probe", str(probe_file)],
            capture_output=True,
            text=True,
            check=True,
        )
    probe_file.unlink()
    return float(out.stdout.strip().splitlines()[-1])


def memory_probe(path: Path) -> None:
    import boto3

    from pricepipe import db, etl, storage
    from pricepipe.contract import load_contract
    from pricepipe.settings import Settings

    contract = load_contract("hotel_rates")
    body = path.read_bytes()
    admin = admin_url()
    url = fresh_database(admin)
    try:
        with db.connect(url, autocommit=True) as conn:
            settings = Settings(database_url=url)
            s3 = boto3.client("s3", region_name="us-east-1")
            for bucket in (settings.landing_bucket, settings.lake_bucket, settings.artifacts_bucket):
                s3.create_bucket(Bucket=bucket)
            db.migrate(conn, contract)
            key = f"{settings.contract_landing_prefix(contract.name)}probe.csv"
            s3.put_object(Bucket=settings.landing_bucket, Key=key, Body=body)
            head = s3.head_object(Bucket=settings.landing_bucket, Key=key)
            ref = storage.ObjectRef(settings.landing_bucket, key, head["ETag"].strip('"'), 0)
            etl.load_file(conn, s3, contract, settings, ref, "probe")
    finally:
        drop_database(admin, url)
    print(peak_rss_mb())  # this probe's own peak, not the 1M-row runs' of the process that spawned it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-probe", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    print(f"ETL benchmark: {args.rows:,} rows, {args.repeat} runs (medians below)", flush=True)
    result = run(args.rows, args.repeat)
    result["peak_rss_mb_100k_file"] = round(peak_memory_mb(100_000), 1)
    print_table(
        "ETL: landing file -> PostgreSQL (raw + features) + Parquet lake",
        [
            (
                "pipeline load_file (validate, dedupe, COPY x2, features, lake)",
                f"{result['etl_median_s']:.2f} s",
                f"{result['etl_rows_per_s']:,} rows/s",
            ),
            (
                "bare binary COPY of the same rows into raw_data's shape",
                f"{result['bare_copy_median_s']:.2f} s",
                f"{result['bare_copy_rows_per_s']:,} rows/s",
            ),
            ("ratio pipeline / bare COPY", f"{result['etl_over_bare_copy']:.2f}x", f"budget {BUDGET_S:.0f} s"),
            (
                "peak RSS, one process loading a 100,000-row file",
                f"{result['peak_rss_mb_100k_file']:.0f} MB",
                f"budget {MEMORY_BUDGET_MB} MB",
            ),
        ],
    )
    write_result("etl", result)


if __name__ == "__main__":
    main()
