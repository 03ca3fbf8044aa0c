"""``pipectl promote | rollout | approve | reject | rollback | deployments``: who serves live traffic, and why.

``promote`` and ``rollout`` start the same promotion state machine, the one owner of the live alias:
``promote`` a new model on the serving function's current code, ``rollout`` (after a deploy) the
function's current code with the champion's model.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import threading
from typing import Annotated, Any

import typer
from rich.table import Table

from infrastructure import catalog
from pipectl import datasource, flows
from pipectl.commands.common import ResolveTarget, TargetOption, console
from pipectl.commands.serving import post_predict
from pipectl.oauth import client_of
from pipectl.target import Target

PROMOTION_COMMAND = "promotion-command"
CanaryPercentOption = Annotated[float | None, typer.Option(help="canary's share of live traffic, percent")]
BakeSecondsOption = Annotated[int | None, typer.Option(help="canary's bake before its health check")]


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``promote``, ``rollout``, ``approve``, ``reject``, ``rollback`` and ``deployments`` to the CLI."""

    @app.command()
    def promote(
        model_version: Annotated[str, typer.Argument(help="the registered version to promote")],
        target_kind: TargetOption = "local",
        strategy: Annotated[
            str | None, typer.Option(help="manual | auto | canary | blue-green (default: the pipeline's setting)")
        ] = None,
        canary_percent: CanaryPercentOption = None,
        bake_seconds: BakeSecondsOption = None,
        reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "pipectl promote",
    ) -> None:
        """Start the promotion state machine for a registered version and follow it."""
        target = resolve_target(target_kind)
        request: dict[str, Any] = {"model_version": model_version, "reason": reason, **_actor(target)}
        _start_and_follow(target, request, strategy=strategy, canary_percent=canary_percent, bake_seconds=bake_seconds)

    @app.command()
    def rollout(
        target_kind: TargetOption = "local",
        strategy: Annotated[
            str | None, typer.Option(help="canary (default) | blue-green | manual: how the new code meets live traffic")
        ] = None,
        canary_percent: CanaryPercentOption = None,
        bake_seconds: BakeSecondsOption = None,
        reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "pipectl rollout",
    ) -> None:
        """After a deploy: the serving function's new code with the champion's model, through the promotion flow."""
        target = resolve_target(target_kind)
        request: dict[str, Any] = {"kind": "code", "reason": reason, **_actor(target)}
        _start_and_follow(target, request, strategy=strategy, canary_percent=canary_percent, bake_seconds=bake_seconds)

    @app.command()
    def approve(
        model_version: Annotated[str, typer.Argument(help="the version whose promotion waits for approval")],
        target_kind: TargetOption = "local",
        reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "",
    ) -> None:
        """Approve a manual promotion: its version takes all live traffic."""
        _answer_approval(resolve_target(target_kind), "approve", model_version, reason)

    @app.command()
    def reject(
        model_version: Annotated[str, typer.Argument(help="the version whose promotion waits for approval")],
        target_kind: TargetOption = "local",
        reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "",
    ) -> None:
        """Reject a manual promotion: traffic stays as it is; the version is marked rejected."""
        _answer_approval(resolve_target(target_kind), "reject", model_version, reason)

    @app.command()
    def rollback(
        target_kind: TargetOption = "local",
        reason: Annotated[str, typer.Option(help="why, for the deployment history")] = "",
    ) -> None:
        """Put the previous champion back on all live traffic at once (blue-green's way back)."""
        target = resolve_target(target_kind)
        answer = _run_command(target, {"command": "rollback", **_actor(target), "reason": reason or "pipectl rollback"})
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
        target = resolve_target(target_kind)
        rows = _run_command(target, {"command": "history", "limit": limit})
        if not rows:
            console.print("no deployments yet")
            return
        _print_deployments(rows, "model_registry.deployments (newest first)")


class CommandFailed(Exception):
    """A promotion command the pipeline refused; the message says why."""


def _start_and_follow(target: Target, request: dict[str, Any], **options: Any) -> None:
    """Start the promotion state machine with ``request`` and the options given, and follow it."""
    request = request | {key: value for key, value in options.items() if value is not None}
    arn = flows.start(target, "promotion", request)
    console.print(f"{'code rollout' if request.get('kind') == 'code' else 'promotion'} started: {arn}")
    execution = follow_promotion(target, arn)
    if execution.status not in ("SUCCEEDED", "RUNNING"):
        raise typer.Exit(1)


def _actor(target: Target) -> dict[str, str]:
    """Who runs a command, for the deployment history (``actor`` and ``actor_source``, migration 0006):
    on AWS the caller's IAM principal as STS GetCallerIdentity names it (a call every identity may make),
    on the local cloud the operating-system user."""
    if target.kind != "aws":
        return {"actor": f"{getpass.getuser()} (pipectl)", "actor_source": "local-user"}
    try:
        arn = str(target.client("sts").get_caller_identity()["Arn"])
    except Exception as exc:
        console.print(
            f"[red]could not tell who you are (sts:GetCallerIdentity: {exc}): the deployment history records it[/red]"
        )
        raise typer.Exit(1) from exc
    return {"actor": arn, "actor_source": "iam"}


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


def _answer_approval(target: Target, command: str, model_version: str, reason: str) -> None:
    """``approve`` or ``reject`` a version's pending manual approval, then follow its promotion."""
    answer = _run_command(
        target, {"command": command, "model_version": model_version, **_actor(target), "reason": reason}
    )
    arn = answer["execution_arn"]
    done = (
        f"approved version {model_version}; its promotion goes on"
        if command == "approve"
        else (f"rejected version {model_version}")
    )
    console.print(f"{done} ({arn})")
    follow_promotion(target, arn)


def _run_command(target: Target, payload: dict[str, Any]) -> Any:
    try:
        return _command(target, payload)
    except CommandFailed as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def _print_deployments(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("when (UTC)", "version", "action", "strategy", "traffic", "fn", "who", "reason"):
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
            f"{row.get('actor') or ''} ({row.get('actor_source') or 'unverified'})",
            row.get("reason") or "",
        )
    console.print(table)


class Traffic:
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
                post_predict(self.target.api_url or "", client_of(self.target), sample)
                self.sent += 1
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def follow_promotion(target: Target, arn: str, on_bake: Traffic | None = None) -> flows.Execution:
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
    try:
        rows = [r for r in _command(target, {"command": "history", "limit": 50}) if r.get("execution_arn") == arn]
    except CommandFailed as exc:
        console.print(f"[red]could not read the deployment history: {exc}[/red]")
        rows = []
    if execution.status == "RUNNING":
        # a code rollout's request names no version: its history rows do (the champion's)
        version = _execution_input(target, arn).get("model_version") or next((r["version"] for r in rows), None)
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
    if rows:
        _print_deployments(list(reversed(rows)), "what this promotion changed")
    return execution


def _execution_input(target: Target, arn: str) -> dict[str, Any]:
    described = target.client("stepfunctions").describe_execution(executionArn=arn)
    return dict(json.loads(described.get("input") or "{}"))
