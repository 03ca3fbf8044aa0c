"""``pipectl demo``: land, ETL, train, promote and serve on the local cloud, then the drift loop."""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated

import typer

from pipectl import datasource
from pipectl.commands import local
from pipectl.commands.common import (
    LANDING_PREFIX,
    DetailsOption,
    ResolveTarget,
    StateDirOption,
    console,
    require_replayed_dataset,
)
from pipectl.commands.data import land_with_progress, print_destinations, run_etl
from pipectl.commands.drift import last_loaded_day, replay_weeks
from pipectl.commands.promotion import Traffic
from pipectl.commands.serving import predict_sample
from pipectl.commands.training import run_training
from pipectl.target import DEFAULT_STATE_DIR, Target
from pricepipe import champion
from pricepipe.settings import DEFAULTS


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``demo`` to the CLI."""

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
        details: DetailsOption = False,
    ) -> None:
        """Replay hotel_rates into the local cloud: ETL, train, promote and serve, then the loop of
        drift checks, retraining and canary promotion, week by week. Safe to run again."""
        local.up(state_dir=state_dir, port=int(os.environ.get("PIPECTL_LOCAL_PORT", "4577")))
        target = resolve_target("local", state_dir)
        require_replayed_dataset(target, "demo")
        console.rule(f"1. land {days} day(s) of hotel_rates")
        chosen = datasource.select_days(days=days)
        land_with_progress(target, chosen)
        console.rule("2. ETL state machine")
        execution = run_etl(target, LANDING_PREFIX, details=details)
        print_destinations(target)
        if not execution.succeeded:
            raise typer.Exit(1)
        console.rule("3. training state machine (Batch job, MLflow registry), handing over to promotion")
        if _serving_version(target) is None:
            # a canary bakes on live traffic: the demo sends some through the gateway while it does
            training = run_training(
                target, {"time_budget_s": time_budget_s, "reason": "pipectl demo"}, on_bake=Traffic(target)
            )
            if not training.succeeded:
                raise typer.Exit(1)
        else:
            console.print(f"a model already serves (version {_serving_version(target)}): no first training needed")
        if weeks > 0:
            console.rule(f"4. the continuous-training loop: {weeks} week(s) of quotes, ETL, drift checks, retraining")
            replay_weeks(target, weeks, chosen[-1] + dt.timedelta(days=1), skip_loaded=True)
        console.rule(f"5. predictions through the API at {target.api_url}")
        last = last_loaded_day(target) or chosen[-1]
        following = datasource.select_days(start=last + dt.timedelta(days=1))[:1] or [last]
        if not predict_sample(target, 5, following[0], None):
            console.print("(no model serves yet: land more days and run `pipectl train`)")
        console.print(
            f"The local cloud keeps running with the API at {target.api_url} (an access token from"
            f" {target.token_url} and the key {target.api_key}; docs: {target.api_url}/docs). Try `pipectl predict`,"
            " `pipectl client create NAME`, `pipectl replay --weeks 4`, `pipectl deployments`, `make mlflow-ui`,"
            " `pipectl local status`; stop it with `pipectl local down`."
        )


def _serving_version(target: Target) -> str | None:
    """The model version the live alias serves, if any (from the model registry)."""
    if not target.database_url:
        return None
    import psycopg

    with psycopg.connect(target.database_url) as conn:
        serving = champion.current(conn, DEFAULTS.model_name)
    return serving.version if serving else None
