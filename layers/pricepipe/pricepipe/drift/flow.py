"""The drift state machine's step (infrastructure/statemachines/drift.asl.json): check and decide.

The champion's training reference (its MLflow run's ``reference/reference_stats.json``) against the
most recent loaded days (event days; for a contract without an event time, the days its rows were
loaded, see :mod:`pricepipe.training.data`): feature drift on the window's model-ready rows,
prediction drift of the champion's own predictions on them, and performance drift where the actual
prices are known — the loaded rows carry them, so the champion's error on the newest days is
measured directly. Calendar
features (month, day of year, ...) are left out of feature drift: against a reference that spans
months, a week-long window always "drifts" in them, and the seasonal shift they stand for shows up
where it matters, in the prices and the champion's errors.

The report goes to ``monitoring.drift_metrics`` and, as HTML, to the artifacts bucket.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NotRequired, TypedDict

from pricepipe import storage
from pricepipe.champion import current as champion_of

if TYPE_CHECKING:
    import psycopg
    from mypy_boto3_s3 import S3Client

    from pricepipe.contract import Contract
    from pricepipe.drift.check import DriftReport
    from pricepipe.settings import Settings

Decision = Literal["retrain", "none"]


class DriftRequest(TypedDict, total=False):
    """What a caller may ask of a check (the execution's input): both default sensibly."""

    end: str  # the window's last event (or, without an event time, load) day, ISO; default the newest
    window_days: int  # default the ``drift_window_days`` setting


class DriftEvent(TypedDict):
    """The task's payload, as drift.asl.json builds it."""

    request: NotRequired[DriftRequest]
    execution: str  # the execution's name: the check's id in monitoring.drift_metrics and the report's key


class DriftResult(TypedDict):
    """The task's result: the Choice state reads ``decision``, a retraining ``holdout_days``.

    With no champion or no data only the first keys (and ``holdout_days`` for a first model) are set.
    """

    execution: str
    decision: Decision
    why: str  # the decision and its grounds in words (:func:`decide`): what every caller prints
    drifted: bool | None  # None: nothing was checked
    reasons: list[str]
    holdout_days: NotRequired[int]
    checked_at: NotRequired[str]
    model_name: NotRequired[str | None]
    model_version: NotRequired[str | None]
    window_start: NotRequired[str | None]
    window_end: NotRequired[str | None]
    status: NotRequired[Literal["checked", "not_enough_data"]]
    feature_drift: NotRequired[bool]
    prediction_drift: NotRequired[bool]
    performance_drift: NotRequired[bool]
    drift_share: NotRequired[float]
    drifted_features: NotRequired[list[str]]
    checked_features: NotRequired[int]
    reference_rows: NotRequired[int]
    current_rows: NotRequired[int]
    end: NotRequired[str]
    window_days: NotRequired[int]
    performance: NotRequired[dict[str, float]]
    psi: NotRequired[dict[str, float]]  # PSI per checked feature, and of the predictions
    report_uri: NotRequired[str]


def reference_uri(serving_artifact_uri: str) -> str:
    """Where a version's reference statistics are: beside its serving artifact in the MLflow run."""
    from pricepipe.registry import SERVING_ARTIFACT

    if not serving_artifact_uri.endswith(SERVING_ARTIFACT):
        raise ValueError(f"{serving_artifact_uri} is not a serving artifact of an MLflow run")
    return serving_artifact_uri.removesuffix(SERVING_ARTIFACT) + "reference/reference_stats.json"


def check(
    conn: psycopg.Connection[Any],
    s3: S3Client,
    contract: Contract,
    settings: Settings,
    request: DriftRequest,
    execution: str | None,
) -> DriftResult:
    """Run one drift check; the result says ``decision`` = retrain | none and why.

    ``holdout_days`` is what a retraining it starts holds out to compare on: the drift window, the
    newest days, which neither the champion nor the challenger's comparison fit has seen (a longer
    holdout would keep the very change that triggered the retraining out of the challenger); with
    no champion yet, the configured holdout.
    """
    from pricepipe.drift.check import check_drift
    from pricepipe.drift.report import render_html
    from pricepipe.drift.store import save_report
    from pricepipe.lean_model import load_from_uri
    from pricepipe.training.data import TrainingWindow, frame_columns, latest_event_date_postgres, load_postgres

    execution = execution or str(uuid.uuid4())  # a direct invoke names no execution
    champion = champion_of(conn, settings.model_name)
    if champion is None:
        return {
            "execution": execution,
            "decision": "retrain",
            "why": NO_CHAMPION,
            "drifted": None,
            "reasons": ["no champion model yet"],
            "holdout_days": settings.holdout_days,  # nothing to compare with: the usual holdout
        }
    version, serving_uri, metrics = champion.version, champion.serving_artifact_uri, champion.metrics
    end = dt.date.fromisoformat(request["end"]) if request.get("end") else latest_event_date_postgres(conn, contract)
    if end is None:
        return {
            "execution": execution,
            "decision": "none",
            "why": NO_DATA,
            "drifted": None,
            "reasons": ["no data loaded yet"],
        }
    days = int(request.get("window_days") or settings.drift_window_days)
    window = TrainingWindow.ending(end, days)
    frame = load_postgres(conn, contract, window).frame
    reference = storage.get_json(s3, *storage.split_uri(reference_uri(serving_uri)))
    model = load_from_uri(serving_uri, s3)
    predictions: Any = model.predict_columns(frame_columns(frame, model.encoding)) if len(frame) else []
    calendar = set(contract.date_part_columns)
    features = [f for f in contract.feature_columns if f not in calendar]
    report = check_drift(
        reference,
        frame,
        predictions=predictions,
        actuals=frame[contract.target].to_numpy(dtype=float) if len(frame) else None,
        reference_metrics={k: float(metrics[k]) for k in ("rmse", "mae") if k in metrics},
        features=features,
        model_name=settings.model_name,
        model_version=version,
        window_start=dt.datetime.combine(window.start, dt.time(), tzinfo=dt.UTC),
        window_end=dt.datetime.combine(window.end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC),
        check_id=execution,
    )
    performance = {c.metric: c.value for c in report.checks if c.kind == "performance"}
    verdict = decide(findings_of(report, performance, metrics))
    save_report(conn, report)
    key = f"{settings.drift_report_prefix}{end.isoformat()}/{execution}.html"
    storage.put_bytes(
        s3,
        settings.artifacts_bucket,
        key,
        render_html(
            report,
            title=f"Drift of {settings.model_name} v{version}, {window.start}..{window.end}",
            decision=verdict.why,
        ).encode(),
        "text/html",
    )
    return {
        "execution": execution,
        "checked_at": report.checked_at.isoformat(),
        "model_name": report.model_name,
        "model_version": report.model_version,
        "window_start": report.window_start.isoformat() if report.window_start else None,
        "window_end": report.window_end.isoformat() if report.window_end else None,
        "status": report.status,
        "drifted": report.drifted,
        "feature_drift": report.feature_drift,
        "prediction_drift": report.prediction_drift,
        "performance_drift": report.performance_drift,
        "drift_share": round(report.drift_share, 6),
        "drifted_features": list(report.drifted_features),
        "checked_features": len(report.checked_features),
        "reference_rows": report.reference_rows,
        "current_rows": report.current_rows,
        "reasons": list(report.reasons),
        "decision": verdict.decision,
        "why": verdict.why,
        "end": end.isoformat(),
        "window_days": days,
        "holdout_days": days,  # a retraining compares challenger and champion on the days that drifted
        "performance": performance,
        # the scores a dashboard follows day by day
        "psi": {c.feature: c.value for c in report.checks if c.metric == "psi" and c.feature},
        "report_uri": f"s3://{settings.artifacts_bucket}/{key}",
    }


NO_CHAMPION = "retraining: no champion model yet, so a first one is trained"
NO_DATA = "no retraining: no data loaded yet"


@dataclass(frozen=True)
class Findings:
    """What a check found, as far as the decision goes: its inputs."""

    feature_drift: bool
    prediction_drift: bool
    performance_drift: bool
    rmse: float | None = None  # the champion's RMSE on the window's actual prices; None: none known yet
    holdout_rmse: float | None = None  # its RMSE on its training holdout
    enough_rows: bool = True  # False: too few rows in the window to check the features


class Verdict(NamedTuple):
    decision: Decision
    why: str  # the decision and its grounds, in words that agree with it


def decide(found: Findings) -> Verdict:
    """Retrain when the champion got worse on the newest prices; only when that cannot be measured
    (no actual prices yet) do shifted inputs or predictions alone ask for it. Seasonal inputs move
    every week while the champion may still price them well, and a retraining that cannot win the
    comparison only adds a registered version.

    The one place the decision is put in words: the CLI, the HTML report and the training run's
    reason all say what this says.
    """
    shifted = [
        what for what, flag in (("feature", found.feature_drift), ("prediction", found.prediction_drift)) if flag
    ]
    if shifted:
        inputs = " and ".join(shifted) + " drift found"
    elif not found.enough_rows:
        inputs = "too few rows in the window to check the features"
    else:
        inputs = "no feature or prediction drift"
    if found.rmse is not None:
        errors = f"RMSE {found.rmse:.1f}" + (
            f" vs {found.holdout_rmse:.1f} on the training holdout" if found.holdout_rmse is not None else ""
        )
        if found.performance_drift:
            return Verdict("retrain", f"retraining: performance drifted ({errors}); {inputs}")
        joint = "but" if shifted else "and"
        return Verdict("none", f"no retraining: {inputs} {joint} performance stable ({errors})")
    if shifted:
        return Verdict("retrain", f"retraining: {inputs}, and performance cannot be measured yet (no actual prices)")
    return Verdict("none", f"no retraining: {inputs} (performance not measured: no actual prices yet)")


def findings_of(report: DriftReport, performance: Mapping[str, float], metrics: Mapping[str, Any]) -> Findings:
    """A report's findings: ``performance`` its performance values, ``metrics`` the champion's holdout metrics."""
    measured = "rmse_ratio" in performance and "rmse" in performance
    return Findings(
        feature_drift=report.feature_drift,
        prediction_drift=report.prediction_drift,
        performance_drift=report.performance_drift,
        rmse=float(performance["rmse"]) if measured else None,
        holdout_rmse=float(metrics["rmse"]) if measured and "rmse" in metrics else None,
        enough_rows=report.status != "not_enough_data",
    )


def explain(result: Mapping[str, Any]) -> str:
    """The decision of a check's result in words: its ``why``, or for a result without one (a
    stack deployed before it was added) the same words from its fields."""
    if result.get("why"):
        return str(result["why"])
    if result.get("drifted") is None:
        return f"{'retraining' if result.get('decision') == 'retrain' else 'no retraining'}: " + "; ".join(
            result.get("reasons") or []
        )
    performance = result.get("performance") or {}
    measured = "rmse_ratio" in performance and "rmse" in performance
    return decide(
        Findings(
            feature_drift=bool(result.get("feature_drift")),
            prediction_drift=bool(result.get("prediction_drift")),
            performance_drift=bool(result.get("performance_drift")),
            rmse=float(performance["rmse"]) if measured else None,
            holdout_rmse=float(performance["rmse"]) / float(performance["rmse_ratio"]) if measured else None,
            enough_rows=result.get("status") != "not_enough_data",
        )
    ).why
