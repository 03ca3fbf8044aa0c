"""``pipectl drift`` and ``pipectl replay``: drift checks, and the continuous-training loop they drive."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from pipectl import datasource, flows
from pipectl.commands.common import LANDING_PREFIX, ResolveTarget, TargetOption, console, require_replayed_dataset
from pipectl.commands.promotion import Traffic, follow_promotion
from pipectl.commands.serving import post_predict
from pipectl.commands.training import print_training
from pipectl.oauth import client_of
from pipectl.target import Target
from pricepipe.drift.flow import explain


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``drift`` and ``replay`` to the CLI."""

    @app.command()
    def drift(
        target_kind: TargetOption = "local",
        window_days: Annotated[int | None, typer.Option(help="newest loaded days to check")] = None,
        follow: Annotated[bool, typer.Option(help="wait for the training and promotion it may start")] = True,
    ) -> None:
        """Run the drift state machine: the newest days against the champion's training reference."""
        target = resolve_target(target_kind)
        request = {"window_days": window_days} if window_days else {}
        step = _run_drift(target, request, follow=follow)
        if step.get("failed"):
            raise typer.Exit(1)

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
        target = resolve_target(target_kind)
        require_replayed_dataset(target, "replay")
        timeline = replay_weeks(target, weeks, start.date() if start else None)
        if any(step.get("failed") for step in timeline):
            raise typer.Exit(1)


def _run_drift(target: Target, request: dict[str, Any], follow: bool, traffic: bool = True) -> dict[str, Any]:
    """Drift check, and when it hands over, the training and promotion it starts. A summary dict."""
    with console.status("drift: starting") as status:
        execution = flows.run(target, "drift", request, on_state=lambda s: status.update(f"drift: {s}"))
    if not execution.succeeded:
        console.print(f"[red]drift {execution.status}: {execution.error}: {execution.cause}[/red]")
        return {"failed": True, "drift": f"check failed: {execution.error}"}
    summary = execution.output
    step: dict[str, Any] = {"decision": summary["decision"], "drift": explain(summary)}
    colour = "yellow" if summary["decision"] == "retrain" else "green"
    console.print(f"[{colour}]drift check: {explain(summary)}[/{colour}]", highlight=False)
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
    print_training(training.output)
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
        followed = follow_promotion(target, promotion, on_bake=Traffic(target) if traffic else None)
        result = (followed.output or {}).get("result") or {} if isinstance(followed.output, dict) else {}
        step["promotion"] = result.get("outcome") or followed.status.lower()
        if not followed.succeeded and followed.status != "RUNNING":
            step["promotion"] = f"{followed.status.lower()}: {followed.error}"
    return step


def last_loaded_day(target: Target) -> dt.date | None:
    """The newest arrival day the ETL has loaded, from the ingestion ledger (None: nothing yet)."""
    if not target.database_url:
        return None
    import psycopg

    with psycopg.connect(target.database_url) as conn:
        row = conn.execute(
            "SELECT max(event_date_max) FROM price_data.ingestion_ledger WHERE status = 'loaded'"
        ).fetchone()
    return row[0] if row else None


def replay_weeks(target: Target, weeks: int, start: dt.date | None, skip_loaded: bool = False) -> list[dict[str, Any]]:
    """Replay ``weeks`` weeks from ``start`` (default: the day after the last loaded one). With
    ``skip_loaded``, weeks already loaded are passed over, so running the demo again adds nothing."""
    loaded_until = last_loaded_day(target) if skip_loaded else None
    if start is None:
        last = last_loaded_day(target)
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
    status, _ = post_predict(target.api_url, client_of(target), coming.sample(min(rows, len(coming)), random_state=0))
    return min(rows, len(coming)) if status == 200 else 0


def _print_timeline(timeline: list[dict[str, Any]]) -> None:
    if timeline:
        console.print(timeline_table(timeline))


def timeline_table(timeline: list[dict[str, Any]]) -> Table:
    """A week per row, readable at 80 columns: what the drift check decided and why, then the
    training and promotion it started, one line each in the last column."""
    table = Table(title="the continuous-training loop, week by week", box=box.SIMPLE_HEAD, show_lines=True)
    table.add_column("week of", no_wrap=True)
    table.add_column("quoted", justify="right", no_wrap=True)
    table.add_column("loaded", justify="right", no_wrap=True)
    table.add_column("what happened")
    for step in timeline:
        happened = [f"drift check: {step.get('drift', '-')}"]
        happened += [f"{what}: {step[what]}" for what in ("training", "promotion") if step.get(what)]
        table.add_row(
            step["week"].split("..", 1)[0],
            str(step.get("quotes", "")),
            str(step.get("loaded", "")),
            "\n".join(happened),
        )
    return table
