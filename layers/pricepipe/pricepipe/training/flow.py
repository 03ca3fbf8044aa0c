"""The training state machine's Lambda steps (infrastructure/statemachines/training.asl.json).

``prepare`` decides whether there is enough data and what the Batch job trains on; the job itself
is ``training_jobs.train``; ``evaluate`` scores the new challenger and the current champion on the
same most-recent holdout, through their lean serving artifacts (no MLflow needed in a Lambda), and
decides; ``job_failed`` reports a failed job. None of them touches the champion.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pricepipe import storage
from pricepipe.champion import challenger_wins
from pricepipe.champion import current as champion_of
from pricepipe.lean_model import load_from_uri
from pricepipe.promotion.canary import expected_shift
from pricepipe.training.data import (
    TrainingWindow,
    frame_columns,
    in_holdout,
    latest_event_date_postgres,
    load_postgres,
    rows_in_window_sql,
)

if TYPE_CHECKING:
    import psycopg
    from mypy_boto3_s3 import S3Client

    from pricepipe.contract import Contract
    from pricepipe.settings import Settings

MIN_TRAINING_ROWS = 200  # below this a model says more about noise than about prices


def prepare(
    conn: psycopg.Connection[Any], contract: Contract, settings: Settings, request: dict[str, Any], execution: str
) -> dict[str, Any]:
    """What the job trains on: the window ending at the latest loaded day (event day, or without an
    event time load day), and where it reports."""
    window_days = int(request.get("window_days") or settings.training_window_days)
    holdout_days = int(request.get("holdout_days") or settings.holdout_days)
    validation_days = settings.validation_days or holdout_days
    by_time = contract.event_time is not None
    if by_time and window_days <= holdout_days + validation_days:  # the job's rule (training.job.JobOptions.check)
        raise ValueError(
            f"a {window_days}-day window leaves no training days after a {holdout_days}-day holdout"
            f" and {validation_days} validation days"
        )
    end = request.get("end")
    end_date = dt.date.fromisoformat(end) if end else latest_event_date_postgres(conn, contract)
    result_uri = f"s3://{settings.artifacts_bucket}/{settings.training_results_prefix}{execution}.json"
    time_budget_s = float(request.get("time_budget_s") or settings.time_budget_s)
    if time_budget_s <= 0:
        raise ValueError(f"time_budget_s must be positive, got {time_budget_s}")
    base = {
        "window_days": window_days,
        "holdout_days": holdout_days,
        "time_budget_s": time_budget_s,
        "result_uri": result_uri,
        "job_name": f"train-{execution}"[:128],
        "reason": request.get("reason", "requested"),
    }
    if end_date is None:
        return {**base, "ready": False, "end": None, "rows": 0, "why": "no data has been loaded yet"}
    window = TrainingWindow.ending(end_date, window_days)
    rows = _rows_in(conn, contract, window)
    if by_time:
        # the job fits on what precedes its validation days and holdout (the newest days): count those
        fit_end = end_date - dt.timedelta(days=holdout_days + validation_days)
        fit_rows = _rows_in(conn, contract, TrainingWindow(window.start, fit_end)) if fit_end >= window.start else 0
        before = f"in {window.start}..{fit_end}, before {validation_days} validation and {holdout_days} holdout days"
    else:
        # the job fits on the keys outside its holdout and validation shares: about this many rows
        held = settings.holdout_fraction + (settings.validation_fraction or settings.holdout_fraction)
        fit_rows = int(rows * max(0.0, 1.0 - held))
        before = f"(about) outside the {held:.0%} of keys held out and validating, of the loads"
    ready = fit_rows >= MIN_TRAINING_ROWS
    why = (
        ""
        if ready
        else f"{fit_rows} rows {before} ending {end_date} ({rows} rows in all); training needs {MIN_TRAINING_ROWS}"
    )
    return {**base, "ready": ready, "end": end_date.isoformat(), "rows": rows, "why": why}


def _rows_in(conn: psycopg.Connection[Any], contract: Contract, window: TrainingWindow) -> int:
    from psycopg import sql

    row = conn.execute(
        sql.SQL("SELECT count(*) FROM price_data.processed_features WHERE {}").format(
            rows_in_window_sql(contract, window)
        )
    ).fetchone()
    return int(row[0]) if row else 0


def read_result(s3: S3Client, result_uri: str) -> dict[str, Any]:
    return dict(storage.get_json(s3, *storage.split_uri(result_uri)))


def evaluate(
    conn: psycopg.Connection[Any], s3: S3Client, contract: Contract, settings: Settings, prepared: dict[str, Any]
) -> dict[str, Any]:
    """Challenger vs champion on the same most-recent holdout; promote when the challenger's RMSE is
    lower than the champion's by at least ``settings.promotion_margin`` (or there is no champion)."""
    from pricepipe.registry import evaluate_artifact

    result = read_result(s3, prepared["result_uri"])
    if result.get("status") == "failed":
        raise RuntimeError(f"the training job reported failure: {result.get('error')}")
    # the job's own holdout (its last days with data; without an event time, its keys among the
    # window's loads), so both models are scored where the challenger's metrics were measured
    start, end = (dt.date.fromisoformat(result["holdout"][k]) for k in ("start", "end"))
    holdout = load_postgres(conn, contract, TrainingWindow(start, end)).frame
    if result["holdout"].get("split") == "key_hash":
        rule = result["holdout"]
        holdout = holdout[in_holdout(holdout, contract, fraction=float(rule["fraction"]), seed=int(rule["seed"]))]
        holdout = holdout.reset_index(drop=True)
    # the served artifact is refit on the whole window, holdout included: score the fit that never saw it
    challenger_uri = str(result.get("evaluation_artifact_uri") or result["serving_artifact_uri"])
    challenger_model = load_from_uri(challenger_uri, s3)
    challenger = evaluate_artifact(challenger_model, holdout, contract.target)
    incumbent = champion_of(conn, settings.model_name)
    outcome: dict[str, Any] = {
        "model_name": settings.model_name,
        "challenger": {"version": str(result["model_version"]), "uri": challenger_uri, "metrics": challenger},
        "champion": None,
        "holdout": {
            "start": (end - dt.timedelta(days=int(prepared["holdout_days"]) - 1)).isoformat()
            if contract.event_time
            else start.isoformat(),
            "end": end.isoformat(),
            "rows": len(holdout),
        },
        "margin": settings.promotion_margin,
    }
    if incumbent is None:
        return {**outcome, "decision": "promote", "reason": "no champion yet"}
    champion_model = load_from_uri(incumbent.serving_artifact_uri, s3)
    champion = evaluate_artifact(champion_model, holdout, contract.target)
    outcome["champion"] = {"version": incumbent.version, "uri": incumbent.serving_artifact_uri, "metrics": champion}
    if len(holdout):
        # how differently the two served models price these days: a canary's prediction check allows
        # for the shift approved here (see pricepipe.promotion.canary)
        served_uri = str(result["serving_artifact_uri"])
        served = challenger_model if served_uri == challenger_uri else load_from_uri(served_uri, s3)
        outcome["prediction_shift"] = {
            "psi": expected_shift(
                champion_model.predict_columns(frame_columns(holdout, champion_model.encoding)),
                served.predict_columns(frame_columns(holdout, served.encoding)),
            ),
            "champion_version": incumbent.version,
            "rows": len(holdout),
        }
    verdict = challenger_wins(
        challenger["rmse"], champion["rmse"], settings.promotion_margin, measured_on=f"on {len(holdout)} holdout rows"
    )
    return {**outcome, "decision": "promote" if verdict.wins else "keep", "reason": verdict.reason}


def job_failed(s3: S3Client, prepared: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """What went wrong with a failed job: the job's own report when it wrote one, else Batch's."""
    report: dict[str, Any] = {"error": error.get("Error"), "cause": (error.get("Cause") or "")[:2000]}
    try:
        result = read_result(s3, prepared["result_uri"])
    except Exception:  # noqa: BLE001 - a job killed before reporting leaves no result document
        result = {}
    if result.get("status") == "failed":
        report["job_error"] = f"{result.get('error_type')}: {result.get('error')}"
    return report
