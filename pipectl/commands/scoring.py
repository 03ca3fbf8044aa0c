"""``pipectl score``: the batch scoring state machine over a prefix of CSV or Parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipectl import flows
from pipectl.commands.common import ResolveTarget, TargetOption, console
from pipectl.target import Target
from pricepipe.settings import DEFAULTS


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``score`` to the CLI."""

    @app.command()
    def score(
        input_: Annotated[
            str,
            typer.Option(
                "--input",
                help=f"s3://<landing>/{DEFAULTS.scoring_input_prefix}..., a prefix there, or local .csv/.parquet files"
                " (a file or a folder: uploaded there first)",
            ),
        ],
        target_kind: TargetOption = "local",
        version: Annotated[
            str | None, typer.Option("--version", help="a model version, or champion | challenger | previous")
        ] = None,
        interval: Annotated[
            float | None, typer.Option(help="also each row's prediction interval at this level")
        ] = None,
        run: Annotated[
            str | None, typer.Option(help="the run id (default: the execution's name); rerun to resume")
        ] = None,
    ) -> None:
        """Score every row of the input with a registered model (default: the champion); predictions
        go to s3://<artifacts>/scores/<run>/ and the run's totals to monitoring.scoring_runs."""
        target = resolve_target(target_kind)
        request: dict[str, Any] = {"input": stage_input(target, input_, run)}
        for name, value in (("model", version), ("interval", interval), ("run", run)):
            if value is not None:
                request[name] = value
        execution = run_scoring(target, request)
        if not execution.succeeded:
            raise typer.Exit(1)


def stage_input(target: Target, given: str, run: str | None) -> str:
    """The input as the flow takes it: local files are uploaded under the scoring folder first."""
    path = Path(given)
    if given.startswith("s3://") or not path.exists():
        return given
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.suffix in (".csv", ".parquet"))
    if not files:
        console.print(f"[red]no .csv or .parquet files at {given}[/red]")
        raise typer.Exit(2)
    prefix = f"{DEFAULTS.scoring_input_prefix}{run or flows.execution_name('upload')}/"
    s3 = target.client("s3")
    for file in files:
        s3.upload_file(str(file), target.landing_bucket, f"{prefix}{file.name}")
    console.print(f"uploaded {len(files)} file(s) to s3://{target.landing_bucket}/{prefix}")
    return f"s3://{target.landing_bucket}/{prefix}"


def run_scoring(target: Target, request: dict[str, Any]) -> flows.Execution:
    """Run the scoring state machine and print the run's summary."""
    with console.status("scoring: starting") as status:
        execution = flows.run(target, "scoring", request, on_state=lambda s: status.update(f"scoring: {s}"))
    if isinstance(execution.output, dict):
        print_summary(execution.output)
    if not execution.succeeded:
        console.print(f"[red]scoring {execution.status}: {execution.error}: {execution.cause}[/red]")
    return execution


def print_summary(summary: dict[str, Any]) -> None:
    model = summary.get("model") or {}
    table = Table(title=f"scoring run {summary.get('run')}: {model.get('name')} version {model.get('version')}")
    for column in ("rows in", "scored", "rejected", "parts", "failed parts"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{summary.get('rows_in', 0):,}",
        f"{summary.get('rows_scored', 0):,}",
        f"{summary.get('rows_rejected', 0):,}",
        str(summary.get("parts", 0)),
        str(summary.get("parts_failed", 0)),
    )
    console.print(table)
    for part in summary.get("rejected_parts", []):
        console.print(f"  {part['key']}: {part['reason']}")
    console.print(f"predictions: {summary.get('output')}predictions/  rejected rows: {summary.get('output')}rejected/")
