"""``pipectl predict``: sample hotel_rates bookings priced through the API."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from pipectl import datasource
from pipectl.commands.common import ResolveTarget, TargetOption, console, require_replayed_dataset
from pipectl.target import Target


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``predict`` to the CLI."""

    @app.command()
    def predict(
        target_kind: TargetOption = "local",
        rows: Annotated[int, typer.Option(help="bookings to price")] = 5,
        date: Annotated[
            dt.datetime | None,
            typer.Option("--date", formats=["%Y-%m-%d"], help="their arrival day (default: the last)"),
        ] = None,
        url: Annotated[str | None, typer.Option(help="the API's URL (default: the local gateway)")] = None,
        api_key: Annotated[str | None, typer.Option(help="its API key (default: the local cloud's)")] = None,
    ) -> None:
        """Price sample hotel_rates bookings through the API (API key, throttling, the live alias)."""
        target = resolve_target(target_kind)
        require_replayed_dataset(target, "predict")
        if not predict_sample(target, rows, date.date() if date else None, url, api_key):
            raise typer.Exit(1)


def post_predict(url: str, api_key: str | None, rows: Any) -> tuple[int, dict[str, Any]]:
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


def predict_sample(target: Target, rows: int, date: dt.date | None, url: str | None, api_key: str | None) -> bool:
    """Price ``rows`` bookings arriving on ``date`` (default: the last day) and print them beside
    their actual prices; False when the API refuses."""
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
    status, answer = post_predict(url, api_key, sample)
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
