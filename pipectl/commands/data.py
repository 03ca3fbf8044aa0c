"""``pipectl land`` and ``pipectl etl``: files into the landing bucket, and the ETL state machine over them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pipectl import datasource, flows
from pipectl.commands.common import (
    LANDING_PREFIX,
    DetailsOption,
    ResolveTarget,
    TargetOption,
    console,
    require_replayed_dataset,
)
from pipectl.target import Target
from pricepipe.settings import DEFAULTS


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``land`` and ``etl`` to the CLI."""

    @app.command()
    def land(
        target_kind: TargetOption = "local",
        date: Annotated[dt.datetime | None, typer.Option("--date", formats=["%Y-%m-%d"])] = None,
        start: Annotated[dt.datetime | None, typer.Option("--from", formats=["%Y-%m-%d"])] = None,
        end: Annotated[dt.datetime | None, typer.Option("--to", formats=["%Y-%m-%d"])] = None,
        days: Annotated[int | None, typer.Option("--days", help="the first N days of the data")] = None,
        file: Annotated[Path | None, typer.Option("--file", help="land a CSV of your own instead")] = None,
    ) -> None:
        """Drop hotel_rates days (or a file of your own, for the deployed contract) into the landing
        bucket, under the contract's folder (landing/<contract>/), as an upstream would."""
        target = resolve_target(target_kind)
        s3 = target.client("s3")
        if file is not None:
            try:
                landed = datasource.land_file(s3, target.landing_bucket, LANDING_PREFIX, file, target.dataset)
            except ValueError as exc:
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(2) from exc
            console.print(f"landed s3://{target.landing_bucket}/{landed.key}")
            return
        require_replayed_dataset(target, "land --date/--from/--days")
        try:
            chosen = datasource.select_days(
                date.date() if date else None, start.date() if start else None, end.date() if end else None, days
            )
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        land_with_progress(target, chosen)

    @app.command()
    def etl(
        target_kind: TargetOption = "local",
        prefix: Annotated[
            str | None, typer.Option(help="landing prefix to take files from (default: the contract's folder)")
        ] = None,
        details: DetailsOption = False,
    ) -> None:
        """Run the ETL state machine and report what became of the files (every file with --details)."""
        target = resolve_target(target_kind)
        result = run_etl(target, prefix or DEFAULTS.contract_landing_prefix(target.dataset), details=details)
        if not result.succeeded:
            raise typer.Exit(1)


def land_with_progress(target: Target, days: list[dt.date]) -> list[datasource.LandedFile]:
    """Land hotel_rates ``days`` into the landing bucket, with a progress bar and a count at the end."""
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


def run_etl(target: Target, prefix: str, details: bool = False) -> flows.Execution:
    """Run the ETL state machine over ``prefix`` and print its summary (and, with ``details``, every file)."""
    with console.status("ETL: starting") as status:
        execution = flows.run(target, "etl", {"prefix": prefix}, on_state=lambda s: status.update(f"ETL: {s}"))
    if not execution.succeeded:
        console.print(f"[red]ETL {execution.status}: {execution.error}: {execution.cause}[/red]")
    if isinstance(execution.output, dict):
        console.print(etl_summary(execution.output, details=details))
    return execution


def etl_summary(summary: dict[str, Any], details: bool = False) -> RenderableType:
    """An ETL run in a few lines, readable at 80 columns: files and rows by outcome, a line per file
    that failed or was rejected; with ``details``, the table of every file after them."""
    if not summary.get("files_total"):
        return "ETL: no new landing files (everything landed was already taken)"
    files = sorted(summary.get("files") or [], key=lambda f: (f.get("event_date_min") or "", f["key"]))
    days = sorted(d for f in files for d in (f.get("event_date_min"), f.get("event_date_max")) if d)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("files", _counted(summary, "files", ("loaded", "rejected", "failed")))
    grid.add_row(
        "rows",
        f"{summary['rows_in']:,} in: {summary['rows_loaded']:,} loaded, {summary['rows_quarantined']:,} quarantined,"
        f" {summary['rows_duplicate']:,} duplicate",
    )
    if days:
        grid.add_row("days", f"{days[0]} .. {days[-1]}")
    for f in files:
        if f["status"] in ("failed", "rejected"):
            why = f": {f['error']}" if f.get("error") else ""
            grid.add_row(f"[red]{f['status']}[/red]", f"{_file_name(f)} ({f.get('event_date_min') or '-'}){why}")
    parts: list[RenderableType] = [f"ETL run {summary['execution']}", grid]
    if details:
        parts.append(etl_files_table(summary, files))
    else:
        parts.append("[dim](every file: --details)[/dim]")
    return Group(*parts)


def etl_files_table(summary: dict[str, Any], files: list[dict[str, Any]]) -> Table:
    """One row per file of an ETL run (the run lists at most ``files_listed`` of ``files_total``)."""
    listed = int(summary.get("files_listed", len(files)))
    caption = f"{listed} of {summary['files_total']} files listed" if listed < summary["files_total"] else None
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption=caption)
    for column in ("day", "file", "status", "in", "loaded", "quar.", "dup."):
        table.add_column(column, justify="left" if column in ("day", "file", "status") else "right")
    for f in files:
        table.add_row(
            f.get("event_date_min") or "-",
            _file_name(f),
            f["status"],
            *(str(f[k]) for k in ("rows_in", "rows_loaded", "rows_quarantined", "rows_duplicate")),
        )
    return table


def _file_name(file: dict[str, Any]) -> str:
    return str(file["key"]).rsplit("/", 1)[-1]


def _counted(summary: dict[str, Any], what: str, outcomes: tuple[str, ...]) -> str:
    """``12 loaded, 1 failed`` from ``<what>_<outcome>`` counts, naming only outcomes that happened."""
    counts = [f"{summary.get(f'{what}_{o}', 0):,} {o}" for o in outcomes if summary.get(f"{what}_{o}")]
    return f"{summary[f'{what}_total']:,}: " + (", ".join(counts) or "none loaded")


def print_destinations(target: Target) -> None:
    """Where the data is now: PostgreSQL tables, the lake and the quarantine."""
    s3 = target.client("s3")

    def count(bucket: str, prefix: str) -> int:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)

    rows: list[tuple[str, str]] = []
    if target.database_url:
        import psycopg

        with psycopg.connect(target.database_url) as conn:
            for name in ("price_data.raw_data", "price_data.processed_features", "price_data.ingestion_ledger"):
                counted = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
                rows.append((f"PostgreSQL {name}", f"{counted[0] if counted else 0:,} rows"))
    rows.append(
        (
            f"Parquet lake s3://{target.lake_bucket}/{DEFAULTS.lake_prefix}",
            f"{count(target.lake_bucket, DEFAULTS.lake_prefix):,} files",
        )
    )
    quarantine = DEFAULTS.contract_quarantine_prefix(target.dataset)
    rows.append(
        (f"quarantine s3://{target.landing_bucket}/{quarantine}", f"{count(target.landing_bucket, quarantine):,} files")
    )
    console.print(destinations_table(rows))


def destinations_table(rows: list[tuple[str, str]]) -> Table:
    """``(destination, what it holds)`` rows as the table ``print_destinations`` prints."""
    table = Table(title="where the data went", box=box.SIMPLE_HEAD)
    table.add_column("destination")
    table.add_column("holds", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table
