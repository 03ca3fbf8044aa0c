"""Which version is the champion, and when a challenger beats it: one definition of each rule.

The champion is the registered version whose ``model_registry.models`` row holds the stage
``champion`` (kept in step with MLflow's alias by :mod:`pricepipe.registry`). A challenger beats it
when its RMSE, measured on the same holdout rows, is at most the champion's less ``margin`` (a
fraction of the champion's RMSE). The training flow's comparison, the promotion flow's metric gate
and every report read these two functions, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

STAGE = "champion"


@dataclass(frozen=True)
class Champion:
    """The registered version serving as champion, as the registry's mirror in PostgreSQL has it."""

    model_name: str
    version: str
    serving_artifact_uri: str
    metrics: dict[str, Any] = field(default_factory=dict)


def current(conn: psycopg.Connection[Any], model_name: str) -> Champion | None:
    """The champion of ``model_name`` (None: no version has been promoted yet)."""
    row = conn.execute(
        "SELECT version, serving_artifact_uri, metrics FROM model_registry.models"
        " WHERE model_name = %s AND stage = %s ORDER BY updated_at DESC LIMIT 1",
        (model_name, STAGE),
    ).fetchone()
    if row is None:
        return None
    return Champion(model_name, str(row[0]), str(row[1] or ""), dict(row[2] or {}))


@dataclass(frozen=True)
class Verdict:
    """Whether the challenger wins, the RMSE it had to reach, and the sentence that says so."""

    wins: bool
    bar: float
    reason: str


def challenger_wins(
    challenger_rmse: float,
    champion_rmse: float,
    margin: float,
    *,
    challenger: str = "challenger",
    champion: str = "champion",
    measured_on: str = "",
) -> Verdict:
    """The challenger wins when its RMSE is at most ``champion_rmse * (1 - margin)``.

    ``challenger`` and ``champion`` name the two sides in the reason ("version 3", "champion 2");
    ``measured_on`` says where both were measured ("on 212 holdout rows").
    """
    bar = champion_rmse * (1 - margin)
    wins = challenger_rmse <= bar
    reason = (
        f"{challenger} RMSE {challenger_rmse:.3f} {'<=' if wins else '>'} {bar:.3f}"
        f" ({champion} {champion_rmse:.3f} less {margin:.1%})"
    )
    return Verdict(wins, bar, f"{reason} {measured_on}" if measured_on else reason)
