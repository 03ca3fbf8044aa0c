"""``pipectl``: operate the pipeline on the local cloud or a deployed stack.

pipectl local up | down | status     the local cloud (moto + real handlers + PostgreSQL)
pipectl land --days 7                replay hotel_rates days into the landing bucket
pipectl etl                          run the ETL state machine and report per file
pipectl train                        train, register and (if better) hand over to promotion
pipectl promote 3 --strategy canary  promote a registered version (manual | auto | canary | blue-green)
pipectl approve 3 | reject 3         answer a manual promotion
pipectl rollback                     put the previous champion back on all traffic at once
pipectl deployments                  what changed for live traffic, when and why
pipectl predict                      sample predictions through the API
pipectl demo                         all of the above, end to end
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from infrastructure import catalog
from pipectl import datasource, flows, ops
from pipectl.ops import TargetOption
from pipectl.target import DEFAULT_STATE_DIR, Target, TargetUnavailable, local_target, resolve
from pricepipe import champion
from pricepipe.settings import DEFAULTS

console = Console()
app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
local_app = typer.Typer(help="The local cloud: AWS APIs from moto on loopback, running the real code.")
app.add_typer(local_app, name="local")

StateDirOption = Annotated[Path, typer.Option("--state-dir", envvar="PIPECTL_STATE_DIR", help="local cloud state")]
LANDING_PREFIX = DEFAULTS.landing_prefix


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
    table.add_section()
    table.add_row("API (gateway)", f"{target.api_url}  (docs: {target.api_url}/docs)")
    table.add_row("API key", f"{target.api_key}  (send it as the x-api-key header)")
    for route in _live_routes(target):
        served = f"model {route['model_version']}" if route["model_version"] else "no model deployed yet"
        table.add_row(
            f"{catalog.LIVE_ALIAS} -> version {route['function_version']}", f"{route['traffic_percent']:g}%: {served}"
        )
    console.print(table)


def _live_routes(target: Target) -> list[dict[str, Any]]:
    """Where the live alias sends traffic, from the Lambda API alone: version, share, model."""
    from pricepipe.promotion import deployer

    lam = target.client("lambda")
    function = target.functions.get(catalog.SERVING_FUNCTION, catalog.function(catalog.SERVING_FUNCTION).name)
    alias = deployer.alias_state(lam, function, catalog.LIVE_ALIAS)
    shares = {alias["function_version"]: 1.0 - sum(alias["weights"].values()), **alias["weights"]}
    routes = []
    for version, share in shares.items():
        model = deployer.model_of(deployer.version_configuration(lam, function, version).get("Description"))
        routes.append(
            {
                "function_version": version,
                "traffic_percent": round(share * 100, 2),
                "model_version": model[1] if model else None,
            }
        )
    return routes


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
        f"Parquet lake s3://{target.lake_bucket}/{DEFAULTS.lake_prefix}",
        f"{count(target.lake_bucket, DEFAULTS.lake_prefix):,} files",
    )
    table.add_row(
        f"quarantine s3://{target.landing_bucket}/{DEFAULTS.quarantine_prefix}",
        f"{count(target.landing_bucket, DEFAULTS.quarantine_prefix):,} files",
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


def _run_training(target: Target, request: dict[str, Any], on_bake: Any = None) -> flows.Execution:
    """Run training; when it hands over to promotion, follow that execution to its end too."""
    with console.status("training: starting") as status:
        execution = flows.run(target, "training", request, on_state=lambda s: status.update(f"training: {s}"))
    if not execution.succeeded:
        console.print(f"[red]training {execution.status}: {execution.error}: {execution.cause}[/red]")
        return execution
    _print_training(execution.output)
    promotion = (execution.output or {}).get("promotion") or {}
    if promotion.get("execution_arn"):
        console.print(f"training handed over to promotion: {promotion['execution_arn']}")
        _follow_promotion(target, promotion["execution_arn"], on_bake=on_bake)
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


# -- promotion and serving -------------------------------------------------------------------------

PROMOTION_COMMAND = "promotion-command"


class CommandFailed(Exception):
    """A promotion command the pipeline refused; the message says why."""


def _actor(target: Target) -> str:
    """Who runs a command, for the deployment history: the AWS identity, or the local user."""
    if target.kind == "aws":
        with contextlib.suppress(Exception):  # no STS access: the history then names the OS user
            return str(target.client("sts").get_caller_identity()["Arn"])
    return f"{getpass.getuser()} (pipectl)"


def _command(target: Target, payload: dict[str, Any]) -> Any:
    """Run a promotion command in the pipeline (the database is private on AWS, so it runs there)."""
    function = target.functions.get(PROMOTION_COMMAND, catalog.function(PROMOTION_COMMAND).name)
    answer = target.client("lambda").invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    body = json.loads(answer["Payload"].read() or b"null")
    if answer.get("FunctionError"):
        kind = body.get("errorType", "Error") if isinstance(body, dict) else "Error"
        message = body.get("errorMessage", body) if isinstance(body, dict) else body
        raise CommandFailed(message if kind == "CommandError" else f"{kind}: {message}")
    return body


def _run_command(target: Target, payload: dict[str, Any]) -> Any:
    try:
        return _command(target, payload)
    except CommandFailed as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def _print_deployments(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("when (UTC)", "version", "action", "strategy", "traffic", "fn", "actor", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        traffic = row.get("traffic_percent")
        table.add_row(
            (row.get("created_at") or "")[:19].replace("T", " "),
            str(row.get("version") or "-"),
            row["action"],
            row.get("strategy") or "",
            "" if traffic is None else f"{traffic:g}%",
            str(row.get("function_version") or ""),
            row.get("actor") or "",
            row.get("reason") or "",
        )
    console.print(table)


class _Traffic:
    """Sample predictions sent through the API in the background (the demo's live traffic)."""

    def __init__(self, target: Target, rows_per_request: int = 5, interval_s: float = 0.05) -> None:
        self.target, self.rows, self.interval_s = target, rows_per_request, interval_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and self.target.api_url:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        frame = datasource.api_bookings()
        seed = 0
        while not self._stop.is_set():
            sample = frame.sample(self.rows, random_state=seed)
            seed += 1
            with contextlib.suppress(OSError):
                _post_predict(self.target.api_url or "", self.target.api_key, sample)
                self.sent += 1
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _follow_promotion(target: Target, arn: str, on_bake: _Traffic | None = None) -> flows.Execution:
    """Wait for a promotion (or for it to wait for approval) and say how it ended, with its history."""

    def on_state(state: str) -> None:
        status.update(f"promotion: {state}")
        if state == "Bake" and on_bake is not None:
            on_bake.start()

    try:
        with console.status("promotion: starting") as status:
            execution = flows.wait(target, arn, on_state=on_state, stop_at=("RequestApproval",))
    finally:
        if on_bake is not None:
            on_bake.stop()
    output = execution.output if isinstance(execution.output, dict) else {}
    plan = output.get("plan") or {}
    if execution.status == "RUNNING":
        version = _execution_input(target, arn).get("model_version")
        console.print(
            f"promotion waits for approval: [bold]pipectl approve {version}[/bold] or"
            f" [bold]pipectl reject {version} --reason ...[/bold]"
        )
    elif execution.succeeded and plan.get("route") == "unchanged":
        console.print(f"promotion: nothing to do, {plan.get('note')}")
    elif execution.succeeded:
        result = output.get("result") or {}
        colour = "green" if result.get("outcome") == "promoted" else "yellow"
        console.print(f"[{colour}]promotion {result.get('outcome')}: {result.get('reason')}[/{colour}]")
    else:
        console.print(f"[red]promotion {execution.status}: {execution.error}: {execution.cause}[/red]")
        if "not enough traffic" in (execution.cause or ""):
            console.print(
                "a canary is judged on live traffic: send some while it bakes (`pipectl predict` in a loop),"
                " or promote with --strategy blue-green"
            )
    try:
        rows = [r for r in _command(target, {"command": "history", "limit": 50}) if r.get("execution_arn") == arn]
    except CommandFailed as exc:
        console.print(f"[red]could not read the deployment history: {exc}[/red]")
        rows = []
    if rows:
        _print_deployments(list(reversed(rows)), "what this promotion changed")
    return execution


def _execution_input(target: Target, arn: str) -> dict[str, Any]:
    described = target.client("stepfunctions").describe_execution(executionArn=arn)
    return dict(json.loads(described.get("input") or "{}"))


@app.command()
def promote(
    model_version: Annotated[str, typer.Argument(help="the registered version to promote")],
    target_kind: TargetOption = "local",
    strategy: Annotated[
        str | None, typer.Option(help="manual | auto | canary | blue-green (default: the pipeline's setting)")
    ] = None,
    canary_percent: Annotated[float | None, typer.Option(help="canary's share of live traffic, percent")] = None,
    bake_seconds: Annotated[int | None, typer.Option(help="canary's bake before its health check")] = None,
    reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "pipectl promote",
) -> None:
    """Start the promotion state machine for a registered version and follow it."""
    target = _target(target_kind)
    request: dict[str, Any] = {"model_version": model_version, "reason": reason, "actor": _actor(target)}
    for key, value in (("strategy", strategy), ("canary_percent", canary_percent), ("bake_seconds", bake_seconds)):
        if value is not None:
            request[key] = value
    arn = flows.start(target, "promotion", request)
    console.print(f"promotion started: {arn}")
    execution = _follow_promotion(target, arn)
    if execution.status not in ("SUCCEEDED", "RUNNING"):
        raise typer.Exit(1)


@app.command()
def approve(
    model_version: Annotated[str, typer.Argument(help="the version whose promotion waits for approval")],
    target_kind: TargetOption = "local",
    reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "",
) -> None:
    """Approve a manual promotion: its version takes all live traffic."""
    target = _target(target_kind)
    answer = _run_command(
        target, {"command": "approve", "model_version": model_version, "actor": _actor(target), "reason": reason}
    )
    console.print(f"approved version {model_version}; its promotion goes on ({answer['execution_arn']})")
    _follow_promotion(target, answer["execution_arn"])


@app.command()
def reject(
    model_version: Annotated[str, typer.Argument(help="the version whose promotion waits for approval")],
    target_kind: TargetOption = "local",
    reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "",
) -> None:
    """Reject a manual promotion: traffic stays as it is; the version is marked rejected."""
    target = _target(target_kind)
    answer = _run_command(
        target, {"command": "reject", "model_version": model_version, "actor": _actor(target), "reason": reason}
    )
    console.print(f"rejected version {model_version} ({answer['execution_arn']})")
    _follow_promotion(target, answer["execution_arn"])


@app.command()
def rollback(
    target_kind: TargetOption = "local",
    reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "",
) -> None:
    """Put the previous champion back on all live traffic at once (blue-green's way back)."""
    target = _target(target_kind)
    answer = _run_command(
        target, {"command": "rollback", "actor": _actor(target), "reason": reason or "pipectl rollback"}
    )
    console.print(
        f"[green]rolled back: version {answer['champion']} serves all traffic again (function version"
        f" {answer['function_version']}); version {answer['rolled_back']} is marked rejected[/green]"
    )


@app.command()
def deployments(
    target_kind: TargetOption = "local",
    limit: Annotated[int, typer.Option(help="rows, newest first")] = 20,
) -> None:
    """The deployment history: what changed for live traffic, when, why and by whom."""
    target = _target(target_kind)
    rows = _run_command(target, {"command": "history", "limit": limit})
    if not rows:
        console.print("no deployments yet")
        return
    _print_deployments(rows, "model_registry.deployments (newest first)")


def _post_predict(url: str, api_key: str | None, rows: Any) -> tuple[int, dict[str, Any]]:
    """POST rows (a DataFrame of hotel_rates) to ``<url>/predict``; (status, JSON answer)."""
    import urllib.error
    import urllib.request

    records = datasource.api_rows(rows)
    request = urllib.request.Request(  # noqa: S310 - the URL is the API's, http(s) only
        f"{url}/predict",
        data=json.dumps({"rows": records}).encode(),
        headers={"content-type": "application/json", **({"x-api-key": api_key} if api_key else {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=35) as answer:  # noqa: S310
            return int(answer.status), dict(json.loads(answer.read()))
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return int(exc.code), dict(json.loads(body))
        except ValueError:
            return int(exc.code), {"detail": body.decode(errors="replace")}


def _predict(target: Target, rows: int, date: dt.date | None, url: str | None, api_key: str | None) -> bool:
    url, api_key = url or target.api_url, api_key or target.api_key
    if not url:
        console.print("[red]no API URL for this target: pass --url and --api-key[/red]")
        raise typer.Exit(2)
    frame = datasource.api_bookings()
    day = (date or max(datasource.available_days())).isoformat()
    sample = frame[frame[datasource.EVENT_TIME] == day].head(rows)
    if sample.empty:
        console.print(f"[red]hotel_rates has no arrivals on {day}[/red]")
        raise typer.Exit(2)
    status, answer = _post_predict(url, api_key, sample)
    if status != 200:
        console.print(f"[red]{url}/predict answered {status}: {answer.get('detail') or answer.get('message')}[/red]")
        return False
    table = Table(title=f"{url}/predict: model {answer['model_name']} version {answer['model_version']}")
    for column in ("booking", "arrival", "hotel guests", "actual price", "predicted"):
        table.add_column(column, justify="right")
    for (_, row), key, predicted in zip(sample.iterrows(), answer["keys"], answer["predictions"], strict=True):
        table.add_row(
            key,
            str(row[datasource.EVENT_TIME]),
            f"{row['adults']:g} adults, {row['children']:g} children",
            f"{row['avg_price_per_room']:.2f}",
            f"{predicted:.2f}",
        )
    console.print(table)
    return True


@app.command()
def predict(
    target_kind: TargetOption = "local",
    rows: Annotated[int, typer.Option(help="bookings to price")] = 5,
    date: Annotated[
        dt.datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="their arrival day (default: the last)")
    ] = None,
    url: Annotated[str | None, typer.Option(help="the API's URL (default: the local gateway)")] = None,
    api_key: Annotated[str | None, typer.Option(help="its API key (default: the local cloud's)")] = None,
) -> None:
    """Price sample hotel_rates bookings through the API (API key, throttling, the live alias)."""
    target = _target(target_kind)
    if not _predict(target, rows, date.date() if date else None, url, api_key):
        raise typer.Exit(1)


# -- drift and the continuous-training loop --------------------------------------------------------


@app.command()
def drift(
    target_kind: TargetOption = "local",
    window_days: Annotated[int | None, typer.Option(help="newest loaded days to check")] = None,
    follow: Annotated[bool, typer.Option(help="wait for the training and promotion it may start")] = True,
) -> None:
    """Run the drift state machine: the newest days against the champion's training reference."""
    target = _target(target_kind)
    request = {"window_days": window_days} if window_days else {}
    step = _run_drift(target, request, follow=follow)
    if step.get("failed"):
        raise typer.Exit(1)


def _run_drift(target: Target, request: dict[str, Any], follow: bool, traffic: bool = True) -> dict[str, Any]:
    """Drift check, and when it hands over, the training and promotion it starts. A summary dict."""
    with console.status("drift: starting") as status:
        execution = flows.run(target, "drift", request, on_state=lambda s: status.update(f"drift: {s}"))
    if not execution.succeeded:
        console.print(f"[red]drift {execution.status}: {execution.error}: {execution.cause}[/red]")
        return {"failed": True, "drift": f"check failed: {execution.error}"}
    summary = execution.output
    reasons = "; ".join(summary.get("reasons") or [])
    step: dict[str, Any] = {"decision": summary["decision"], "drift": _drift_digest(summary)}
    colour = "yellow" if summary["decision"] == "retrain" else "green"
    console.print(f"[{colour}]drift: {summary['decision']} — {reasons}[/{colour}]")
    if summary.get("report_uri"):
        console.print(f"  report: {summary['report_uri']}")
    handover = (summary.get("handover") or {}).get("training_execution")
    if not (handover and follow):
        return step
    with console.status("training (started by drift)") as status:
        training = flows.wait(target, handover, on_state=lambda s: status.update(f"training: {s}"))
    if not training.succeeded:
        console.print(f"[red]training {training.status}: {training.error}: {training.cause}[/red]")
        return {**step, "failed": True, "training": f"failed: {training.error}"}
    _print_training(training.output)
    evaluation = (training.output.get("outcome") or {}).get("evaluation") or {}
    step["training"] = (
        f"v{evaluation['challenger']['version']} RMSE {evaluation['challenger']['metrics']['rmse']:.1f}"
        + (f" vs champion {evaluation['champion']['metrics']['rmse']:.1f}" if evaluation.get("champion") else "")
        + f": {evaluation['decision']}"
        if evaluation
        else str(training.output.get("why"))
    )
    promotion = (training.output.get("promotion") or {}).get("execution_arn")
    if promotion:
        followed = _follow_promotion(target, promotion, on_bake=_Traffic(target) if traffic else None)
        result = (followed.output or {}).get("result") or {} if isinstance(followed.output, dict) else {}
        step["promotion"] = result.get("outcome") or followed.status.lower()
        if not followed.succeeded and followed.status != "RUNNING":
            step["promotion"] = f"{followed.status.lower()}: {followed.error}"
    return step


@app.command()
def replay(
    weeks: Annotated[int, typer.Option(help="weeks of hotel_rates to replay after the last loaded day")] = 4,
    start: Annotated[
        dt.datetime | None,
        typer.Option("--from", formats=["%Y-%m-%d"], help="first day (default: after the last loaded)"),
    ] = None,
    target_kind: TargetOption = "local",
) -> None:
    """Replay the timeline week by week: quotes through the API, land, ETL, drift check, and the
    retraining and canary promotion drift starts; then print what happened and why."""
    target = _target(target_kind)
    timeline = _replay(target, weeks, start.date() if start else None)
    if any(step.get("failed") for step in timeline):
        raise typer.Exit(1)


def _drift_digest(summary: dict[str, Any]) -> str:
    """One line per check for the timeline: what moved, by how much."""
    if summary.get("drifted") is None:
        return "; ".join(summary.get("reasons") or [])
    parts = [f"{len(summary.get('drifted_features') or [])}/{summary.get('checked_features')} features"]
    performance = summary.get("performance") or {}
    ratio = performance.get("rmse_ratio")
    if ratio is not None:
        parts.append(f"RMSE {ratio:.2f}x holdout")
    if summary.get("prediction_drift"):
        parts.append("predictions shifted")
    return ", ".join(parts)


def _last_loaded_day(target: Target) -> dt.date | None:
    if not target.database_url:
        return None
    import psycopg

    with psycopg.connect(target.database_url) as conn:
        row = conn.execute(
            "SELECT max(event_date_max) FROM price_data.ingestion_ledger WHERE status = 'loaded'"
        ).fetchone()
    return row[0] if row else None


def _replay(target: Target, weeks: int, start: dt.date | None, skip_loaded: bool = False) -> list[dict[str, Any]]:
    """Replay ``weeks`` weeks from ``start`` (default: the day after the last loaded one). With
    ``skip_loaded``, weeks already loaded are passed over, so running the demo again adds nothing."""
    loaded_until = _last_loaded_day(target) if skip_loaded else None
    if start is None:
        last = _last_loaded_day(target)
        if last is None:
            console.print("[red]nothing loaded yet: pass --from, or run `pipectl demo` first[/red]")
            raise typer.Exit(2)
        start = last + dt.timedelta(days=1)
    ahead = datasource.select_days(start=start)
    timeline: list[dict[str, Any]] = []
    for week in range(weeks):
        days = ahead[week * 7 : week * 7 + 7]
        if not days:
            console.print("the replay reached the end of hotel_rates")
            break
        console.rule(f"week of {days[0]} .. {days[-1]}")
        if loaded_until is not None and days[-1] <= loaded_until:
            console.print(f"already replayed (data loaded up to {loaded_until}): nothing to add")
            continue
        step: dict[str, Any] = {"week": f"{days[0]}..{days[-1]}"}
        step["quotes"] = _quote(target, days)
        datasource.land_days(target.client("s3"), target.landing_bucket, LANDING_PREFIX, days)
        etl_run = flows.run(target, "etl", {"prefix": LANDING_PREFIX})
        if not etl_run.succeeded:
            console.print(f"[red]ETL {etl_run.status}: {etl_run.error}[/red]")
            timeline.append({**step, "failed": True, "drift": "ETL failed"})
            break
        step["loaded"] = etl_run.output["rows_loaded"]
        step.update(_run_drift(target, {}, follow=True))
        timeline.append(step)
    _print_timeline(timeline)
    return timeline


def _quote(target: Target, days: list[dt.date], rows: int = 40) -> int:
    """Price some of the coming week's bookings through the API before their data lands: served
    predictions whose actual prices the ETL joins later."""
    if not target.api_url:
        return 0
    frame = datasource.api_bookings()
    coming = frame[frame[datasource.EVENT_TIME].isin([d.isoformat() for d in days])]
    if coming.empty:
        return 0
    status, _ = _post_predict(target.api_url, target.api_key, coming.sample(min(rows, len(coming)), random_state=0))
    return min(rows, len(coming)) if status == 200 else 0


def _print_timeline(timeline: list[dict[str, Any]]) -> None:
    if not timeline:
        return
    table = Table(title="the continuous-training loop, week by week")
    for column in ("week", "quoted", "loaded", "drift check", "training", "promotion"):
        table.add_column(column, overflow="fold")
    for step in timeline:
        table.add_row(
            step["week"],
            str(step.get("quotes", "")),
            str(step.get("loaded", "")),
            f"{step.get('decision', '')}: {step.get('drift', '')}",
            step.get("training", "-"),
            step.get("promotion", "-"),
        )
    console.print(table)


# -- the demo --------------------------------------------------------------------------------------


@app.command()
def demo(
    days: Annotated[
        int, typer.Option(help="days of hotel_rates to load before the loop (the first model trains on them)")
    ] = 178,
    weeks: Annotated[
        int,
        typer.Option(help="weeks of the continuous-training loop after them (from day 178: the New Year drift)"),
    ] = 2,
    time_budget_s: Annotated[float, typer.Option(help="training's hyperparameter search wall clock")] = 15.0,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
) -> None:
    """Replay hotel_rates into the local cloud: ETL, train, promote and serve, then the loop of
    drift checks, retraining and canary promotion, week by week. Safe to run again."""
    local_up(state_dir=state_dir, port=int(os.environ.get("PIPECTL_LOCAL_PORT", "4577")))
    target = _target("local", state_dir)
    console.rule(f"1. land {days} day(s) of hotel_rates")
    chosen = datasource.select_days(days=days)
    _land(target, chosen)
    console.rule("2. ETL state machine")
    execution = _run_etl(target, LANDING_PREFIX)
    _print_destinations(target)
    if not execution.succeeded:
        raise typer.Exit(1)
    console.rule("3. training state machine (Batch job, MLflow registry), handing over to promotion")
    if _serving_version(target) is None:
        # a canary bakes on live traffic: the demo sends some through the gateway while it does
        training = _run_training(
            target, {"time_budget_s": time_budget_s, "reason": "pipectl demo"}, on_bake=_Traffic(target)
        )
        if not training.succeeded:
            raise typer.Exit(1)
    else:
        console.print(f"a model already serves (version {_serving_version(target)}): no first training needed")
    if weeks > 0:
        console.rule(f"4. the continuous-training loop: {weeks} week(s) of quotes, ETL, drift checks, retraining")
        _replay(target, weeks, chosen[-1] + dt.timedelta(days=1), skip_loaded=True)
    console.rule(f"5. predictions through the API at {target.api_url}")
    last = _last_loaded_day(target) or chosen[-1]
    following = datasource.select_days(start=last + dt.timedelta(days=1))[:1] or [last]
    if not _predict(target, 5, following[0], None, None):
        console.print("(no model serves yet: land more days and run `pipectl train`)")
    console.print(
        f"The local cloud keeps running with the API at {target.api_url} (key: {target.api_key}, docs:"
        f" {target.api_url}/docs). Try `pipectl predict`, `pipectl replay --weeks 4`, `pipectl deployments`,"
        " `make mlflow-ui`, `pipectl local status`; stop it with `pipectl local down`."
    )


def _serving_version(target: Target) -> str | None:
    """The model version the live alias serves, if any (from the model registry)."""
    if not target.database_url:
        return None
    import psycopg

    with psycopg.connect(target.database_url) as conn:
        serving = champion.current(conn, DEFAULTS.model_name)
    return serving.version if serving else None


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", maxsplit=1)[0].rsplit("//", maxsplit=1)[-1]:
        user = url.rsplit("//", maxsplit=1)[-1].split(":", maxsplit=1)[0]
        return url.split("//", maxsplit=1)[0] + "//" + user + ":***@" + url.split("@", 1)[1]
    return url


ops.register(app, _target)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
