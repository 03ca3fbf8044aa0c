"""``pipectl local up | down | status``: the local cloud (moto + real handlers + PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from infrastructure import catalog
from pipectl.commands.common import ResolveTarget, StateDirOption, console
from pipectl.target import DEFAULT_STATE_DIR, Target, TargetUnavailable, local_target
from pricepipe.settings import DEFAULTS


def up(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    port: Annotated[int, typer.Option(envvar="PIPECTL_LOCAL_PORT")] = 4577,
    contract: Annotated[str, typer.Option(envvar="PRICEPIPE_CONTRACT")] = "hotel_rates",
    timeout: float = 120.0,
) -> None:
    """Start the local cloud in the background; when it already runs, deploy changed function code to it
    (the local ``cdk deploy``: $LATEST only; ``pipectl rollout`` then takes new serving code live)."""
    try:
        target = local_target(state_dir)
    except TargetUnavailable:
        pass
    else:
        _redeploy(target)
        return
    from pipectl.localcloud import ports

    try:
        ports.ensure_free(port)  # before starting anything: a taken port is an error now, not in 120 s
    except ports.PortTaken as exc:
        console.print(f"[red]the local cloud cannot start: {escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "localcloud.log"
    with log_path.open("ab") as log:
        logged_from = log.tell()  # this start's lines, not the previous runs'
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
                _print_failed_start(process.returncode, log_path, logged_from)
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


def _print_failed_start(returncode: int, log_path: Path, logged_from: int) -> None:
    """Why the daemon exited while starting: its own one-line reason for a taken port, else its log."""
    from pipectl.localcloud.ports import FAILED, PORT_TAKEN_EXIT

    with log_path.open("rb") as log:
        log.seek(logged_from)
        logged = log.read().decode(errors="replace")
    failed = [line.split(FAILED, 1)[1] for line in logged.splitlines() if FAILED in line]
    if returncode == PORT_TAKEN_EXIT and failed:
        console.print(f"[red]the local cloud cannot start: {escape(failed[-1])}[/red]", highlight=False)
        return
    console.print(f"[red]the local cloud failed to start (exit status {returncode}); its log, {log_path}:[/red]")
    console.print(logged[-3000:], markup=False, highlight=False)


def _redeploy(target: Target) -> None:
    from pipectl.localcloud.provision import redeploy

    updated = redeploy(target.client("lambda"))
    console.print(f"local cloud already running at {target.endpoint}")
    if not updated:
        console.print("no function's code changed: nothing deployed")
        return
    console.print(f"deployed new code to $LATEST of: {', '.join(updated)} (no alias moved)")
    if catalog.SERVING_FUNCTION in updated:
        console.print("the serving function changed: `pipectl rollout` takes its new code to live traffic by a canary")


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``pipectl local`` and its commands to the CLI."""
    local_app = typer.Typer(help="The local cloud: AWS APIs from moto on loopback, running the real code.")
    app.add_typer(local_app, name="local")
    local_app.command("up")(up)  # at module level: `pipectl demo` starts the local cloud with it too

    @local_app.command("down")
    def local_down(
        state_dir: StateDirOption = DEFAULT_STATE_DIR,
        keep_database: Annotated[bool, typer.Option(help="leave the embedded PostgreSQL running")] = False,
    ) -> None:
        """Stop the local cloud, saving its S3 objects for the next `local up`; returns once the
        daemon and its workers have exited."""
        from pipectl.localcloud.postgres import stop_embedded

        state_file = state_dir / "state.json"
        if state_file.exists():
            _stop_daemon(int(json.loads(state_file.read_text())["pid"]), state_file)
        else:
            console.print("local cloud is not running")
        if not keep_database and stop_embedded(state_dir):
            console.print("embedded PostgreSQL stopped")

    @local_app.command("status")
    def local_status(state_dir: StateDirOption = DEFAULT_STATE_DIR) -> None:
        """Say whether the local cloud runs, and what it holds."""
        target = resolve_target("local", state_dir)
        console.print(status_table(target, _live_routes(target)))


def status_table(target: Target, routes: list[dict[str, Any]]) -> Table:
    """What ``local status`` prints, readable at 80 columns: resources by name (an ARN's last part;
    the rest is the local cloud's account and region), the API, its key and where live traffic goes."""
    table = Table(title=f"local cloud at {target.endpoint}", box=box.SIMPLE_HEAD)
    table.add_column("resource", no_wrap=True)
    table.add_column("name")
    for label, value in (
        ("landing bucket", target.landing_bucket),
        ("contract", f"{target.dataset}: its files land under {DEFAULTS.contract_landing_prefix(target.dataset)}"),
        ("lake bucket", target.lake_bucket),
        ("artifacts bucket", target.artifacts_bucket),
        ("database", _redact(target.database_url or "")),
    ):
        table.add_row(label, value)
    table.add_row("state machines", ", ".join(arn.rsplit(":", 1)[-1] for arn in target.state_machines.values()))
    table.add_row("functions", ", ".join(name.rsplit(":", 1)[-1] for name in target.functions.values()))
    table.add_section()
    table.add_row("API (gateway)", f"{target.api_url} (docs: {target.api_url}/docs)")
    table.add_row("API key", f"{target.api_key} (the x-api-key header, with a token)")
    table.add_row("token endpoint", f"{target.token_url} (client-credentials grant)")
    table.add_row("API client", f"{target.client_id} (`pipectl client create NAME` makes another)")
    for route in routes:
        served = f"model {route['model_version']}" if route["model_version"] else "no model deployed yet"
        table.add_row(
            f"{catalog.LIVE_ALIAS} -> version {route['function_version']}",
            f"{route['traffic_percent']:g}%: {served}",
        )
    return table


DOWN_POLLS = 600  # x 0.2 s: two minutes for the daemon to save S3 and stop its workers


def _stop_daemon(pid: int, state_file: Path) -> None:
    """SIGTERM the daemon ``pid`` and wait, bounded, until it and every worker it had are gone."""
    from pipectl.localcloud import ports

    daemon = ports.daemon(pid)
    if daemon is None:  # it died without cleaning up (or the pid is another program's now)
        state_file.unlink(missing_ok=True)
        console.print("local cloud is not running (its process had exited; removed its stale state file)")
        return
    workers = ports.workers(daemon)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with console.status("stopping the local cloud (saving S3, stopping its workers)…"):
        left = ports.wait_gone([daemon, *workers], DOWN_POLLS)
    if left:
        running = ", ".join(ports.describe(p) for p in left)
        pids = " ".join(str(p.pid) for p in left)
        console.print(
            f"[red]the local cloud did not stop within {DOWN_POLLS * 0.2:.0f} s; still running: {escape(running)}."
            f" End them with `kill -9 {pids}`[/red]",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(f"local cloud stopped (S3 saved under {state_file.parent / 's3'})")


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


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", maxsplit=1)[0].rsplit("//", maxsplit=1)[-1]:
        user = url.rsplit("//", maxsplit=1)[-1].split(":", maxsplit=1)[0]
        return url.split("//", maxsplit=1)[0] + "//" + user + ":***@" + url.split("@", 1)[1]
    return url
