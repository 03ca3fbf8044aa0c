"""``pipectl predict``: sample hotel_rates bookings priced through the API; ``pipectl client create``:
a new OAuth2 client of the API (an app client for the client-credentials grant and an API key)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from pipectl import datasource
from pipectl.commands.common import ResolveTarget, TargetOption, console, require_replayed_dataset
from pipectl.oauth import ApiClient, TokenRequestFailed, client_of, create_app_client, token_command
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
        api_key: Annotated[str | None, typer.Option(help="its API key (default: the target's first client's)")] = None,
        client_id: Annotated[str | None, typer.Option(help="the OAuth2 client (default: the target's first)")] = None,
        client_secret: Annotated[
            str | None, typer.Option(envvar="PIPECTL_CLIENT_SECRET", help="its secret (or $PIPECTL_CLIENT_SECRET)")
        ] = None,
    ) -> None:
        """Price sample hotel_rates bookings through the API (an access token, the API key's usage plan,
        the live alias)."""
        target = resolve_target(target_kind)
        require_replayed_dataset(target, "predict")
        try:
            client = client_of(target, client_id, client_secret, api_key)
        except TokenRequestFailed as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        if not predict_sample(target, rows, date.date() if date else None, url, client):
            raise typer.Exit(1)

    clients = typer.Typer(help="OAuth2 clients of the API: app clients of its user pool, each with an API key")
    app.add_typer(clients, name="client")

    @clients.command("create")
    def create_client(
        name: Annotated[str, typer.Argument(help="who the client is (names its app client and API key)")],
        admin: Annotated[bool, typer.Option(help="also the admin scope: GET /model-info and /metrics")] = False,
        target_kind: TargetOption = "local",
    ) -> None:
        """Make a client of the API and print how it gets a token (client-credentials grant)."""
        target = resolve_target(target_kind)
        if not (target.user_pool_id and target.token_url):
            console.print("[red]this target has no API user pool: deploy the serving stack first[/red]")
            raise typer.Exit(2)
        scopes = ("predict", "admin") if admin else ("predict",)
        client_id, secret = create_app_client(target.client("cognito-idp"), target.user_pool_id, name, scopes)
        api_key, plan = client_api_key(target, name)
        console.print(f"client [bold]{name}[/bold]: scopes {', '.join(scopes)}")
        console.print(f"  client id      {client_id}")
        console.print(f"  client secret  {secret}  (shown once: keep it in a secret store)")
        console.print(f"  API key        {api_key}  ({plan})")
        console.print("Get a token (valid one hour), then call the API with it and the key:")
        console.print(f"  export CLIENT_SECRET='{secret}'", soft_wrap=True)
        console.print(f"  TOKEN=$({token_command(target.token_url, client_id)})", soft_wrap=True, markup=False)
        console.print(
            f'  curl -H "Authorization: Bearer $TOKEN" -H "x-api-key: {api_key}" {target.api_url or "<ApiUrl>"}/health',
            soft_wrap=True,
        )
        console.print(
            f"or: pipectl predict --client-id {client_id} --api-key {api_key} (secret in $PIPECTL_CLIENT_SECRET)"
        )


def client_api_key(target: Target, name: str) -> tuple[str, str]:
    """A new API key for client ``name``, in the API's usage plan where there is one (on AWS; the local
    gateway throttles every key alike); returns its value and where it throttles."""
    from infrastructure import catalog

    apigateway = target.client("apigateway")
    key = apigateway.create_api_key(name=f"{catalog.PROJECT}-{name}", enabled=True)
    plans = [p for p in apigateway.get_usage_plans(limit=500).get("items", []) if p["name"] == catalog.API_USAGE_PLAN]
    if not plans:
        return str(key["value"]), "no usage plan here: the gateway's own throttling per key"
    apigateway.create_usage_plan_key(usagePlanId=plans[0]["id"], keyId=key["id"], keyType="API_KEY")
    return str(key["value"]), f"usage plan {catalog.API_USAGE_PLAN}"


def post_predict(url: str, client: ApiClient | None, rows: Any) -> tuple[int, dict[str, Any]]:
    """POST rows (a DataFrame of hotel_rates) to ``<url>/predict`` as ``client`` (its token and API
    key); (status, JSON answer)."""
    import urllib.error
    import urllib.request

    records = datasource.api_rows(rows)
    request = urllib.request.Request(  # noqa: S310 - the URL is the API's, http(s) only
        f"{url}/predict",
        data=json.dumps({"rows": records}).encode(),
        headers={"content-type": "application/json", **(client.headers() if client else {})},
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


def predict_sample(
    target: Target, rows: int, date: dt.date | None, url: str | None, client: ApiClient | None = None
) -> bool:
    """Price ``rows`` bookings arriving on ``date`` (default: the last day) as ``client`` (default: the
    target's first) and print them beside their actual prices; False when the API refuses."""
    url = url or target.api_url
    if not url:
        console.print("[red]no API URL for this target: pass --url[/red]")
        raise typer.Exit(2)
    frame = datasource.api_bookings()
    day = (date or max(datasource.available_days())).isoformat()
    sample = frame[frame[datasource.EVENT_TIME] == day].head(rows)
    if sample.empty:
        console.print(f"[red]hotel_rates has no arrivals on {day}[/red]")
        raise typer.Exit(2)
    status, answer = post_predict(url, client or client_of(target), sample)
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
