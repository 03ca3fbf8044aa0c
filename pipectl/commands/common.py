"""What every command module shares: the console, the options several commands take, and the type
of the target resolver ``pipectl.cli`` hands to each ``register``.

Here rather than in ``pipectl.cli``: the CLI runs as ``python -m pipectl.cli``, where that module is
``__main__``, so a command module importing ``pipectl.cli`` would load a second copy of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.console import Console

from pipectl.datasource import DATASET as REPLAYED  # what the demo, replay and sample commands replay
from pipectl.target import DEFAULT_STATE_DIR, Target
from pricepipe.settings import DEFAULTS

console = Console()

# The options several commands share. At module level: typer resolves the (postponed) annotations
# against the defining module's globals, so a closure variable would not be found.
TargetOption = Annotated[str, typer.Option("--target", "-t", envvar="PIPECTL_TARGET", help="local or aws")]
StateDirOption = Annotated[Path, typer.Option("--state-dir", envvar="PIPECTL_STATE_DIR", help="local cloud state")]
DetailsOption = Annotated[bool, typer.Option("--details", help="every row, not just the summary")]
LANDING_PREFIX = DEFAULTS.landing_prefix


def require_replayed_dataset(target: Target, what: str) -> None:
    """Exit with a clear message when ``what`` (a hotel_rates replay) meets a deployment of another contract."""
    if target.dataset != REPLAYED:
        console.print(
            f"[red]{what} replays {REPLAYED}, but this deployment's contract is {target.dataset!r}:"
            f" land its files with `pipectl land --file` and post its rows to /predict[/red]"
        )
        raise typer.Exit(2)


class ResolveTarget(Protocol):
    """The deployment a command acts on, by kind (``local`` or ``aws``); exits the CLI when it is unavailable."""

    def __call__(self, kind: str, state_dir: Path = DEFAULT_STATE_DIR) -> Target: ...
