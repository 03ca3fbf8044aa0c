"""``pipectl``: operate the pipeline on the local cloud or a deployed stack.

pipectl local up | down | status     the local cloud (moto + real handlers + PostgreSQL)
pipectl land --days 7                replay hotel_rates days into the landing bucket
pipectl etl                          run the ETL state machine and report per file
pipectl demo                         all of the above, end to end
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pipectl import datasource, flows
from pipectl.target import DEFAULT_STATE_DIR, Target, TargetUnavailable, local_target, resolve

console = Console()
app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
local_app = typer.Typer(help="The local cloud: AWS APIs from moto on loopback, running the real code.")
app.add_typer(local_app, name="local")

TargetOption = Annotated[str, typer.Option("--target", "-t", envvar="PIPECTL_TARGET", help="local or aws")]
StateDirOption = Annotated[Path, typer.Option("--state-dir", envvar="PIPECTL_STATE_DIR", help="local cloud state")]
LANDING_PREFIX = "landing/"


def _target(kind: str, state_dir: Path = DEFAULT_STATE_DIR) -> Target:
    try:
        return resolve(kind, state_dir)
    except TargetUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


# -- local cloud -----------------------------------------------------------------------------------


@local_app.command("up")
def local_up(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    port: Annotated[int, typer.Option(envvar="PIPECTL_LOCAL_PORT")] = 4577,
    contract: Annotated[str, typer.Option(envvar="PRICEPIPE_CONTRACT")] = "hotel_rates",
    timeout: float = 120.0,
) -> None:
    """Start the local cloud in the background (no-op when it already runs)."""
    try:
        target = local_target(state_dir)
        console.print(f"local cloud already running at {target.endpoint}")
        return
    except TargetUnavailable:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "localcloud.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipectl.localcloud.daemon",
                *("--state-dir", str(state_dir), "--port", str(port), "--contract", contract),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    with console.status("starting the local cloud (moto, PostgreSQL, functions, state machines)…"):
        while time.monotonic() < deadline:
            if process.poll() is not None:
                console.print(f"[red]the local cloud failed to start; its log, {log_path}:[/red]")
                console.print(log_path.read_text()[-3000:])
                raise typer.Exit(1)
            try:
                target = local_target(state_dir)
                break
            except TargetUnavailable:
                time.sleep(0.2)
        else:
            process.terminate()
            console.print(f"[red]the local cloud did not come up within {timeout:.0f} s; see {log_path}[/red]")
            raise typer.Exit(1)
    console.print(f"local cloud up at [bold]{target.endpoint}[/bold] (state in {state_dir}, log {log_path})")


@local_app.command("down")
def local_down(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    keep_database: Annotated[bool, typer.Option(help="leave the embedded PostgreSQL running")] = False,
) -> None:
    """Stop the local cloud, saving its S3 objects for the next `local up`."""
    from pipectl.localcloud.postgres import stop_embedded

    state_file = state_dir / "state.json"
    if state_file.exists():
        pid = int(json.loads(state_file.read_text())["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            state_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 60
        while state_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        console.print("local cloud stopped (S3 saved under " + str(state_dir / "s3") + ")")
    else:
        console.print("local cloud is not running")
    if not keep_database and stop_embedded(state_dir):
        console.print("embedded PostgreSQL stopped")


@local_app.command("status")
def local_status(state_dir: StateDirOption = DEFAULT_STATE_DIR) -> None:
    """Say whether the local cloud runs, and what it holds."""
    target = _target("local", state_dir)
    table = Table(title=f"local cloud at {target.endpoint}")
    table.add_column("resource")
    table.add_column("name / ARN")
    for label, value in (
        ("landing bucket", target.landing_bucket),
        ("lake bucket", target.lake_bucket),
        ("artifacts bucket", target.artifacts_bucket),
        ("database", _redact(target.database_url or "")),
    ):
        table.add_row(label, value)
    for key, arn in {**target.state_machines}.items():
        table.add_row(f"state machine {key}", arn)
    for key, arn in target.functions.items():
        table.add_row(f"function {key}", arn)
    console.print(table)


# -- data ------------------------------------------------------------------------------------------


@app.command()
def land(
    target_kind: TargetOption = "local",
    date: Annotated[dt.datetime | None, typer.Option("--date", formats=["%Y-%m-%d"])] = None,
    start: Annotated[dt.datetime | None, typer.Option("--from", formats=["%Y-%m-%d"])] = None,
    end: Annotated[dt.datetime | None, typer.Option("--to", formats=["%Y-%m-%d"])] = None,
    days: Annotated[int | None, typer.Option("--days", help="the first N days of the data")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="land a CSV of your own instead")] = None,
) -> None:
    """Drop hotel_rates days (or a file of your own) into the landing bucket, as an upstream would."""
    target = _target(target_kind)
    s3 = target.client("s3")
    if file is not None:
        landed = datasource.land_file(s3, target.landing_bucket, LANDING_PREFIX, file)
        console.print(f"landed s3://{target.landing_bucket}/{landed.key}")
        return
    try:
        chosen = datasource.select_days(
            date.date() if date else None, start.date() if start else None, end.date() if end else None, days
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    _land(target, chosen)


def _land(target: Target, days: list[dt.date]) -> list[datasource.LandedFile]:
    with Progress(
        TextColumn("landing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), console=console
    ) as progress:
        task = progress.add_task("", total=len(days))
        landed = datasource.land_days(
            target.client("s3"),
            target.landing_bucket,
            LANDING_PREFIX,
            days,
            progress=lambda f: progress.update(task, advance=1, description=f"{f.day} ({f.rows} rows)"),
        )
    console.print(
        f"landed {len(landed)} file(s), {sum(f.rows for f in landed)} rows, into s3://{target.landing_bucket}/"
    )
    return landed


@app.command()
def etl(
    target_kind: TargetOption = "local",
    prefix: Annotated[str, typer.Option(help="landing prefix to take files from")] = LANDING_PREFIX,
) -> None:
    """Run the ETL state machine and report what became of every file."""
    target = _target(target_kind)
    result = _run_etl(target, prefix)
    if not result.succeeded:
        raise typer.Exit(1)


def _run_etl(target: Target, prefix: str) -> flows.Execution:
    with console.status("ETL: starting") as status:
        execution = flows.run(target, "etl", {"prefix": prefix}, on_state=lambda s: status.update(f"ETL: {s}"))
    if execution.succeeded:
        _print_etl_summary(execution.output)
    else:
        console.print(f"[red]ETL {execution.status}: {execution.error}: {execution.cause}[/red]")
        if isinstance(execution.output, dict):
            _print_etl_summary(execution.output)
    return execution


def _print_etl_summary(summary: dict[str, Any]) -> None:
    if not summary.get("files_total"):
        console.print("ETL: no new landing files (everything landed was already taken)")
        return
    table = Table(title=f"ETL run {summary['run_id']}")
    for column in ("day", "file", "status", "in", "loaded", "quarantined", "duplicate"):
        table.add_column(column, justify="right" if column in ("in", "loaded", "quarantined", "duplicate") else "left")
    for f in sorted(summary["files"], key=lambda f: (f.get("event_date_min") or "", f["key"])):
        table.add_row(
            f.get("event_date_min") or "-",
            f["key"].rsplit("/", 1)[-1],
            f["status"] if not f.get("error") else f"{f['status']}: {f['error']}",
            str(f["rows_in"]),
            str(f["rows_loaded"]),
            str(f["rows_quarantined"]),
            str(f["rows_duplicate"]),
        )
    table.add_section()
    table.add_row(
        "total",
        f"{summary['files_total']} file(s)",
        f"{summary['files_failed']} failed" if summary["files_failed"] else "",
        str(summary["rows_in"]),
        str(summary["rows_loaded"]),
        str(summary["rows_quarantined"]),
        str(summary["rows_duplicate"]),
    )
    console.print(table)


def _print_destinations(target: Target) -> None:
    """Where the data is now: PostgreSQL tables, the lake and the quarantine."""
    s3 = target.client("s3")

    def count(bucket: str, prefix: str) -> int:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)

    table = Table(title="where the data went")
    table.add_column("destination")
    table.add_column("holds", justify="right")
    if target.database_url:
        import psycopg

        with psycopg.connect(target.database_url) as conn:
            for name in ("price_data.raw_data", "price_data.processed_features", "price_data.ingestion_ledger"):
                rows = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
                table.add_row(f"PostgreSQL {name}", f"{rows[0] if rows else 0:,} rows")
    table.add_row(
        f"Parquet lake s3://{target.lake_bucket}/processed_features/",
        f"{count(target.lake_bucket, 'processed_features/'):,} files",
    )
    table.add_row(
        f"quarantine s3://{target.landing_bucket}/quarantine/", f"{count(target.landing_bucket, 'quarantine/'):,} files"
    )
    console.print(table)


# -- training --------------------------------------------------------------------------------------


@app.command()
def train(
    target_kind: TargetOption = "local",
    window_days: Annotated[int | None, typer.Option(help="days of data up to the latest loaded day")] = None,
    holdout_days: Annotated[int | None, typer.Option(help="most recent days held out for the comparison")] = None,
    time_budget_s: Annotated[float | None, typer.Option(help="wall clock for the hyperparameter search")] = None,
) -> None:
    """Run the training state machine: Batch job, MLflow registration, challenger vs champion."""
    target = _target(target_kind)
    request = {"window_days": window_days, "holdout_days": holdout_days, "time_budget_s": time_budget_s}
    execution = _run_training(target, {k: v for k, v in request.items() if v is not None} | {"reason": "pipectl train"})
    if not execution.succeeded:
        raise typer.Exit(1)


def _run_training(target: Target, request: dict[str, Any]) -> flows.Execution:
    with console.status("training: starting") as status:
        execution = flows.run(target, "training", request, on_state=lambda s: status.update(f"training: {s}"))
    if not execution.succeeded:
        console.print(f"[red]training {execution.status}: {execution.error}: {execution.cause}[/red]")
        return execution
    _print_training(execution.output)
    return execution


def _print_training(output: dict[str, Any]) -> None:
    if output.get("ready") is False:
        console.print(f"training skipped: {output.get('why')}")
        return
    evaluation = output["outcome"]["evaluation"]
    table = Table(title=f"training: {evaluation['decision'].upper()} ({evaluation['reason']})")
    table.add_column("model")
    table.add_column("version", justify="right")
    for metric in ("rmse", "mae", "mape", "r2"):
        table.add_column(metric.upper(), justify="right")
    for role in ("challenger", "champion"):
        entry = evaluation.get(role)
        if entry:
            m = entry["metrics"]
            table.add_row(role, entry["version"], *(f"{m[k]:.3f}" for k in ("rmse", "mae", "mape", "r2")))
    holdout = evaluation["holdout"]
    table.caption = f"same holdout for both: {holdout['start']}..{holdout['end']}, {holdout['rows']} rows"
    console.print(table)


@app.command("mlflow-ui")
def mlflow_ui(
    port: Annotated[int, typer.Option(help="port of the MLflow UI on 127.0.0.1")] = 5000,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
) -> None:
    """Open the local cloud's MLflow tracking and registry (PostgreSQL store, artifacts in its S3)."""
    from pricepipe.registry import mlflow_uri_from_dsn

    target = _target("local", state_dir)
    assert target.database_url and target.endpoint
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": target.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": target.region,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    uri = mlflow_uri_from_dsn(target.database_url)
    console.print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
    os.execvpe(  # noqa: S606 - replaces this process with the MLflow UI, arguments fixed here
        sys.executable,
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        env,
    )


# -- the demo --------------------------------------------------------------------------------------


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="days of hotel_rates to replay")] = 7,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
) -> None:
    """Replay hotel_rates into the local cloud and run the ETL state machine; safe to run again."""
    local_up(state_dir=state_dir)
    target = _target("local", state_dir)
    console.rule(f"1. land {days} day(s) of hotel_rates")
    _land(target, datasource.select_days(days=days))
    console.rule("2. ETL state machine")
    execution = _run_etl(target, LANDING_PREFIX)
    _print_destinations(target)
    if not execution.succeeded:
        raise typer.Exit(1)
    console.print(
        "The local cloud keeps running: `pipectl etl`, `pipectl land --days 14`, `pipectl local status`; "
        "stop it with `pipectl local down`."
    )


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", maxsplit=1)[0].rsplit("//", maxsplit=1)[-1]:
        user = url.rsplit("//", maxsplit=1)[-1].split(":", maxsplit=1)[0]
        return url.split("//", maxsplit=1)[0] + "//" + user + ":***@" + url.split("@", 1)[1]
    return url


def main() -> None:
    app()


if __name__ == "__main__":
    main()
