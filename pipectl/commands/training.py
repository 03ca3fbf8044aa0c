"""``pipectl train`` and ``pipectl mlflow-ui``: the training state machine, and MLflow's UI over its registry."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from pipectl import flows
from pipectl.commands.common import ResolveTarget, StateDirOption, TargetOption, console
from pipectl.commands.promotion import follow_promotion
from pipectl.target import DEFAULT_STATE_DIR, Target


def register(app: typer.Typer, resolve_target: ResolveTarget) -> None:
    """Add ``train`` and ``mlflow-ui`` to the CLI."""

    @app.command()
    def train(
        target_kind: TargetOption = "local",
        window_days: Annotated[int | None, typer.Option(help="days of data up to the latest loaded day")] = None,
        holdout_days: Annotated[int | None, typer.Option(help="most recent days held out for the comparison")] = None,
        time_budget_s: Annotated[float | None, typer.Option(help="wall clock for the hyperparameter search")] = None,
    ) -> None:
        """Run the training state machine: Batch job, MLflow registration, challenger vs champion."""
        target = resolve_target(target_kind)
        request = {"window_days": window_days, "holdout_days": holdout_days, "time_budget_s": time_budget_s}
        execution = run_training(
            target, {k: v for k, v in request.items() if v is not None} | {"reason": "pipectl train"}
        )
        if not execution.succeeded:
            raise typer.Exit(1)

    @app.command("mlflow-ui")
    def mlflow_ui(
        port: Annotated[int, typer.Option(help="port of the MLflow UI on 127.0.0.1")] = 5000,
        state_dir: StateDirOption = DEFAULT_STATE_DIR,
    ) -> None:
        """Open the local cloud's MLflow tracking and registry (PostgreSQL store, artifacts in its S3)."""
        from pricepipe.registry import mlflow_uri_from_dsn

        target = resolve_target("local", state_dir)
        assert target.database_url and target.endpoint
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": target.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": target.region,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        uri = mlflow_uri_from_dsn(target.database_url)
        console.print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
        os.execvpe(  # noqa: S606 - replaces this process with the MLflow UI, arguments fixed here
            sys.executable,
            [
                sys.executable,
                "-m",
                "mlflow",
                "ui",
                "--backend-store-uri",
                uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env,
        )


def run_training(target: Target, request: dict[str, Any], on_bake: Any = None) -> flows.Execution:
    """Run training; when it hands over to promotion, follow that execution to its end too."""
    with console.status("training: starting") as status:
        execution = flows.run(target, "training", request, on_state=lambda s: status.update(f"training: {s}"))
    if not execution.succeeded:
        console.print(f"[red]training {execution.status}: {execution.error}: {execution.cause}[/red]")
        return execution
    print_training(execution.output)
    promotion = (execution.output or {}).get("promotion") or {}
    if promotion.get("execution_arn"):
        console.print(f"training handed over to promotion: {promotion['execution_arn']}")
        follow_promotion(target, promotion["execution_arn"], on_bake=on_bake)
    return execution


def print_training(output: dict[str, Any]) -> None:
    """The challenger beside the champion, on the same holdout (or why training was skipped)."""
    if output.get("ready") is False:
        console.print(f"training skipped: {output.get('why')}")
        return
    console.print(training_table(output["outcome"]["evaluation"]))


def training_table(evaluation: dict[str, Any]) -> Table:
    """The challenger's and the champion's metrics on their one holdout, and the decision."""
    table = Table(title=f"training: {evaluation['decision'].upper()} ({evaluation['reason']})")
    table.add_column("model")
    table.add_column("version", justify="right")
    for metric in ("rmse", "mae", "mape", "r2"):
        table.add_column(metric.upper(), justify="right")
    for role in ("challenger", "champion"):
        entry = evaluation.get(role)
        if entry:
            m = entry["metrics"]
            table.add_row(role, entry["version"], *(f"{m[k]:.3f}" for k in ("rmse", "mae", "mape", "r2")))
    holdout = evaluation["holdout"]
    table.caption = f"same holdout for both: {holdout['start']}..{holdout['end']}, {holdout['rows']} rows"
    return table
