"""The metric gate of the ``auto`` strategy: does the version beat the champion, on the same rows?

The rule itself is :func:`pricepipe.champion.challenger_wins`, the training flow's; this step only
finds the two measurements (the training evaluation's, or a fresh holdout scored now).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pricepipe import registry
from pricepipe.champion import challenger_wins
from pricepipe.champion import current as champion_of
from pricepipe.promotion.history import model_row

if TYPE_CHECKING:
    import psycopg
    from mypy_boto3_s3 import S3Client

    from pricepipe.contract import Contract
    from pricepipe.promotion.steps import GateResult, Plan
    from pricepipe.settings import Settings


def _evaluation_uri(serving_uri: str) -> str:
    """The lean fit that never saw its holdout sits beside the serving one (pricepipe.registry's layout)."""
    if serving_uri.endswith(registry.SERVING_ARTIFACT):
        return serving_uri[: -len(registry.SERVING_ARTIFACT)] + registry.EVALUATION_ARTIFACT
    return serving_uri


def gate(conn: psycopg.Connection[Any], s3: S3Client, contract: Contract, settings: Settings, plan: Plan) -> GateResult:
    """Pass when the version beats the champion on the same recent holdout by ``promotion_margin``
    and its own holdout R² reaches ``auto_min_r2``.

    The comparison is the training flow's when the run was started by it for this version (its
    ``evaluation``); otherwise both lean artifacts are scored now on the latest ``holdout_days``.
    """
    from pricepipe.lean_model import load_from_uri

    model_name, version = plan["model_name"], plan["model_version"]
    row = model_row(conn, model_name, version)
    assert row is not None
    r2 = float((row["metrics"] or {}).get("r2", math.nan))
    if not r2 >= settings.auto_min_r2:
        return {
            "passed": False,
            "reason": f"holdout R² {r2:.3f} is below the auto gate's floor {settings.auto_min_r2:.3f}",
            "source": "registered-metrics",
        }
    evaluation = plan.get("evaluation") or {}
    if str((evaluation.get("challenger") or {}).get("version")) == version and evaluation.get("decision"):
        passed = evaluation["decision"] == "promote"
        return {"passed": passed, "reason": str(evaluation.get("reason", "")), "source": "training-evaluation"}

    champion = champion_of(conn, model_name)
    if champion is None or champion.version == version:
        return {"passed": True, "reason": "no champion yet", "source": "no-champion"}

    from pricepipe.registry import evaluate_artifact
    from pricepipe.training.data import TrainingWindow, in_holdout, latest_event_date_postgres, load_postgres

    end = latest_event_date_postgres(conn, contract)
    if end is None:
        return {"passed": False, "reason": "no data to compare the two versions on", "source": "fresh-holdout"}
    frame = load_postgres(conn, contract, TrainingWindow.ending(end, settings.holdout_days)).frame
    if contract.event_time is None:  # the latest loads' rows, of the keys training holds out
        frame = frame[in_holdout(frame, contract, fraction=settings.holdout_fraction, seed=settings.seed)]
    try:
        challenger_model = load_from_uri(_evaluation_uri(str(row["serving_artifact_uri"])), s3)
    except Exception:  # noqa: BLE001 - a version without an evaluation artifact is scored as it serves
        challenger_model = load_from_uri(str(row["serving_artifact_uri"]), s3)
    challenger = evaluate_artifact(challenger_model, frame, contract.target)
    incumbent = evaluate_artifact(load_from_uri(champion.serving_artifact_uri, s3), frame, contract.target)
    verdict = challenger_wins(
        challenger["rmse"],
        incumbent["rmse"],
        settings.promotion_margin,
        challenger=f"version {version}",
        champion=f"champion {champion.version}",
        measured_on=f"on the latest {settings.holdout_days} days, {len(frame)} rows",
    )
    return {
        "passed": verdict.wins,
        "reason": verdict.reason,
        "source": "fresh-holdout",
        "challenger": challenger,
        "champion": {"version": champion.version, **incumbent},
    }
