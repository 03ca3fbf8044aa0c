"""``pipectl land`` and ``pipectl etl``: files into the landing bucket, and the ETL state machine over them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pipectl import datasource, flows
from pipectl.commands.common import LANDING_PREFIX, ResolveTarget, TargetOption, console, require_replayed_dataset
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
    ) -> None:
        """Run the ETL state machine and report what became of every file."""
        target = resolve_target(target_kind)
        result = run_etl(target, prefix or DEFAULTS.contract_landing_prefix(target.dataset))
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


def run_etl(target: Target, prefix: str) -> flows.Execution:
    """Run the ETL state machine over ``prefix`` and print what became of every file."""
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
    table = Table(title=f"ETL run {summary['execution']}")
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


def print_destinations(target: Target) -> None:
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
    quarantine = DEFAULTS.contract_quarantine_prefix(target.dataset)
    table.add_row(
        f"quarantine s3://{target.landing_bucket}/{quarantine}", f"{count(target.landing_bucket, quarantine):,} files"
    )
    console.print(table)
