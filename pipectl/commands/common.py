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

from pipectl.target import DEFAULT_STATE_DIR, Target
from pricepipe.settings import DEFAULTS

console = Console()

# The options several commands share. At module level: typer resolves the (postponed) annotations
# against the defining module's globals, so a closure variable would not be found.
TargetOption = Annotated[str, typer.Option("--target", "-t", envvar="PIPECTL_TARGET", help="local or aws")]
StateDirOption = Annotated[Path, typer.Option("--state-dir", envvar="PIPECTL_STATE_DIR", help="local cloud state")]
LANDING_PREFIX = DEFAULTS.landing_prefix


class ResolveTarget(Protocol):
    """The deployment a command acts on, by kind (``local`` or ``aws``); exits the CLI when it is unavailable."""

    def __call__(self, kind: str, state_dir: Path = DEFAULT_STATE_DIR) -> Target: ...
