"""``pipectl``: operate the pipeline on the local cloud or a deployed stack.

pipectl local up | down | status     the local cloud (moto + real handlers + PostgreSQL)
pipectl land --days 7                replay hotel_rates days into the landing bucket
pipectl etl                          run the ETL state machine and report per file
pipectl train                        train, register and (if better) hand over to promotion
pipectl promote 3 --strategy canary  promote a registered version (manual | auto | canary | blue-green)
pipectl approve 3 | reject 3         answer a manual promotion
pipectl rollback                     put the previous champion back on all traffic at once
pipectl deployments                  what changed for live traffic, when and why
pipectl predict                      sample predictions through the API
pipectl score --input s3://…         batch-score files with a registered model (default: the champion)
pipectl demo                         all of the above, end to end
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipectl.commands import data, demo, drift, local, ops, promotion, scoring, serving, training
from pipectl.commands.common import console
from pipectl.target import DEFAULT_STATE_DIR, Target, TargetUnavailable, resolve

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _target(kind: str, state_dir: Path = DEFAULT_STATE_DIR) -> Target:
    try:
        return resolve(kind, state_dir)
    except TargetUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


# in the order `pipectl --help` lists them (typer lists sub-apps such as `local` after the commands)
local.register(app, _target)
data.register(app, _target)
training.register(app, _target)
promotion.register(app, _target)
serving.register(app, _target)
scoring.register(app, _target)
drift.register(app, _target)
demo.register(app, _target)
ops.register(app, _target)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
