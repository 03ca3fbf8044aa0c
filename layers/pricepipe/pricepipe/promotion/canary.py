"""Canary: the new version gets a share of the live traffic (:func:`start_canary`), then its health is
judged (:func:`check`) on what its own Lambda version did while it baked, against the champion beside it.

Three checks, each on the canary's function version alone (the alias splits traffic at random, so
both versions see the same mix of requests over the same window):

- **error rate**: Lambda's ``Errors`` (an invocation that failed) plus the API's own 5xx answers
  (:data:`API_SERVER_ERRORS`; FastAPI under Mangum turns an exception into a 500 that Lambda never
  counts), over Lambda's ``Invocations``: above ``canary_max_error_rate`` fails;
- **latency**: p99 of Lambda's ``Duration``: above ``canary_max_p99_ms`` fails;
- **prediction shift**: the canary's logged predictions (``monitoring.predictions``) against the
  champion's over the champion's decile bins: PSI above the allowance *and* a chi-square p-value
  below ``drift_pvalue`` fails. An absurd model rarely errs or slows down; its prices give it away.
  The allowance is ``canary_max_prediction_psi`` plus the shift the training evaluation already
  saw and approved (:func:`expected_shift`: challenger against champion on the same holdout), since
  a retraining after drift is *meant* to price differently from the champion it beats; a canary
  promoted without an evaluation gets no such credit.

Lambda publishes ``Invocations``, ``Errors`` and ``Duration`` per version reached through an alias
(dimension ``ExecutedVersion``), which is exactly what a canary needs; the local cloud publishes
them the same way. :mod:`pricepipe.promotion.cloudwatch` reads them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pricepipe.errors import PromotionRefused
from pricepipe.promotion import deployer
from pricepipe.promotion.cloudwatch import LambdaTraffic, api_server_errors, lambda_traffic
from pricepipe.promotion.history import iso, now, reason_for, record
from pricepipe.promotion.plan import Serving, check_alias_unchanged
from pricepipe.serving.prediction_log import API_SERVER_ERRORS

if TYPE_CHECKING:
    import numpy as np
    import psycopg
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_lambda import LambdaClient

    from pricepipe.promotion.steps import (
        CanaryCheck,
        CanaryStarted,
        CanaryVerdict,
        Deployment,
        Plan,
        PromotionState,
        ServingChampion,
    )
    from pricepipe.settings import Settings

PSI_BINS = 10  # deciles of the champion's predictions
MAX_PREDICTION_ROWS = 200_000  # per version and check: plenty for PSI, bounded memory


def start_canary(
    conn: psycopg.Connection[Any],
    lam: LambdaClient,
    settings: Settings,
    plan: Plan,
    deployment: Deployment,
) -> CanaryStarted:
    """Give the new version ``canary_percent`` of the live traffic; the champion keeps the rest."""
    serving = Serving.from_settings(settings)
    canary = deployment["function_version"]
    current = deployer.alias_state(lam, serving.function, serving.alias)
    check_alias_unchanged(current, plan, canary)
    champion = _champion(plan)
    stable = champion["function_version"]
    state = deployer.set_canary(
        lam,
        serving.function,
        serving.alias,
        stable_version=stable,
        canary_version=canary,
        percent=float(plan["canary_percent"]),
        revision_id=current["revision_id"],
    )
    started = now()
    try:
        with conn.transaction():
            record(
                conn,
                model_name=plan["model_name"],
                version=plan["model_version"],
                previous_version=champion["version"],
                action="canary-started",
                strategy=plan["strategy"],
                traffic_percent=float(plan["canary_percent"]),
                function_version=canary,
                reason=reason_for(
                    plan,
                    f"{plan['canary_percent']:g}% of {serving.alias} to version {canary}, the rest to {stable}"
                    f" (champion {champion['version']}); health check after {plan['bake_seconds']} s",
                ),
                actor=plan["actor"],
                actor_source=plan["actor_source"],
                execution_arn=plan["execution_arn"],
                details={"alias": state},
            )
    except BaseException:
        deployer.switch(lam, serving.function, serving.alias, stable)
        raise
    return {"started_at": iso(started), "alias": state}


def predictions_since(
    conn: psycopg.Connection[Any], model_name: str, function_version: str, since: dt.datetime
) -> np.ndarray:
    import numpy as np

    rows = conn.execute(
        "SELECT prediction FROM monitoring.predictions WHERE model_name = %s AND function_version = %s"
        " AND predicted_at >= %s ORDER BY predicted_at DESC LIMIT %s",
        (model_name, function_version, since, MAX_PREDICTION_ROWS),
    ).fetchall()
    return np.array([r[0] for r in rows], dtype=np.float64)


def prediction_shift(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> tuple[float, float]:
    """(PSI, chi-square p-value) of ``current`` against ``reference`` over the reference's quantile bins,
    open-ended at both ends so predictions outside the reference's range land in its outer bins."""
    import numpy as np

    from pricepipe.drift.stats import chi2_homogeneity, psi

    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate(([-np.inf], inner, [np.inf]))
    ref_counts = np.histogram(reference, edges)[0]
    cur_counts = np.histogram(current, edges)[0]
    return psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()), chi2_homogeneity(cur_counts, ref_counts)[
        2
    ]


def expected_shift(champion_predictions: np.ndarray, challenger_predictions: np.ndarray) -> float:
    """PSI of the challenger's predictions against the champion's on the same rows (the training
    evaluation's holdout): how far apart the two models price the newest days, before any traffic."""
    return float(prediction_shift(champion_predictions, challenger_predictions)[0])


def judge_canary(
    settings: Settings,
    *,
    attempt: int,
    canary: LambdaTraffic,
    server_errors: float,
    canary_predictions: np.ndarray,
    champion_predictions: np.ndarray,
    expected_psi: float | None = None,
) -> CanaryVerdict:
    """The verdict on measured canary health: ``healthy``, ``unhealthy`` or ``wait`` (bake again).

    A check that fails on the evidence there is fails the canary at once, however little traffic it
    saw: an error or a slow answer is evidence. Too little traffic to judge means another bake, up to
    ``canary_max_bakes``; after that ``canary_on_insufficient_traffic`` decides.
    """
    checks: list[CanaryCheck] = []
    invocations = float(canary["invocations"] or 0)
    errors = float(canary["errors"] or 0) + server_errors
    if invocations > 0:
        rate = errors / invocations
        checks.append(
            {
                "check": "error_rate",
                "value": rate,
                "threshold": settings.canary_max_error_rate,
                "passed": rate <= settings.canary_max_error_rate,
                "detail": f"{errors:g} errors in {invocations:g} requests",
            }
        )
    if canary["p99_ms"] is not None:
        p99 = float(canary["p99_ms"])
        checks.append(
            {
                "check": "p99_ms",
                "value": p99,
                "threshold": settings.canary_max_p99_ms,
                "passed": p99 <= settings.canary_max_p99_ms,
            }
        )
    enough_rows = min(len(canary_predictions), len(champion_predictions)) >= settings.canary_min_predictions
    if enough_rows:
        value, pvalue = prediction_shift(champion_predictions, canary_predictions)
        # As the drift checks do: a shift needs both the effect size and significance. Two samples of
        # one distribution differ by chance, and PSI between small ones is biased upwards (about
        # 0.25 for 10 bins and 50 + 120 rows): PSI alone would fail one good canary in ten there.
        allowed = settings.canary_max_prediction_psi + (expected_psi or 0.0)
        shifted = value > allowed and pvalue < settings.drift_pvalue
        approved = "" if expected_psi is None else f"; {expected_psi:.3g} of it expected by the training evaluation"
        checks.append(
            {
                "check": "prediction_psi",
                "value": value,
                "threshold": allowed,
                "passed": not shifted,
                "detail": (
                    f"chi-square p {pvalue:.2g}; mean prediction {canary_predictions.mean():.2f} (canary,"
                    f" {len(canary_predictions)} rows) vs {champion_predictions.mean():.2f} (champion,"
                    f" {len(champion_predictions)} rows){approved}"
                ),
            }
        )
    failed = [c for c in checks if not c["passed"]]

    def describe(check: CanaryCheck) -> str:
        relation = "<=" if check["value"] <= check["threshold"] else ">"
        text = f"{check['check']} {check['value']:.4g} {relation} {check['threshold']:g}"
        return f"{text} ({check['detail']})" if check.get("detail") else text

    summary = "; ".join(describe(c) for c in checks) or "no measurements"
    if failed:
        return {"verdict": "unhealthy", "attempt": attempt, "reason": "canary unhealthy: " + summary, "checks": checks}
    missing = []
    if invocations < settings.canary_min_requests:
        missing.append(f"{invocations:g} canary requests (needs {settings.canary_min_requests})")
    if not enough_rows:
        missing.append(
            f"{len(canary_predictions)} canary and {len(champion_predictions)} champion predictions logged"
            f" (needs {settings.canary_min_predictions} each)"
        )
    if not missing:
        return {"verdict": "healthy", "attempt": attempt, "reason": "canary healthy: " + summary, "checks": checks}
    if attempt < settings.canary_max_bakes:
        return {
            "verdict": "wait",
            "attempt": attempt,
            "reason": f"not enough traffic yet ({'; '.join(missing)}): baking again",
            "checks": checks,
        }
    return {
        "verdict": "healthy" if settings.canary_on_insufficient_traffic == "promote" else "unhealthy",
        "attempt": attempt,
        "reason": (
            f"not enough traffic to judge after {attempt} bake(s): {'; '.join(missing)};"
            f" canary_on_insufficient_traffic={settings.canary_on_insufficient_traffic}"
        ),
        "checks": checks,
    }


def check(
    conn: psycopg.Connection[Any],
    cloudwatch: CloudWatchClient,
    settings: Settings,
    state: PromotionState,
    now: dt.datetime | None = None,
) -> CanaryVerdict:
    """Measure the canary since it started (Lambda metrics, the API's 5xx, logged predictions) and judge."""
    plan, deployment = state["plan"], state["deployment"]
    previous = state.get("canary")
    attempt = (int(previous["attempt"]) if previous else 0) + 1
    started = dt.datetime.fromisoformat(str(state["canary_started"]["started_at"]))
    end = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=1)
    canary_version = deployment["function_version"]
    champion_version = _champion(plan)["function_version"]
    canary = lambda_traffic(cloudwatch, plan["function"], plan["alias"], canary_version, started, end)
    champion = lambda_traffic(cloudwatch, plan["function"], plan["alias"], champion_version, started, end)
    server_errors = api_server_errors(
        cloudwatch, settings.metrics_namespace, API_SERVER_ERRORS, plan["function"], canary_version, started, end
    )
    verdict = judge_canary(
        settings,
        attempt=attempt,
        canary=canary,
        server_errors=server_errors,
        canary_predictions=predictions_since(conn, plan["model_name"], canary_version, started),
        champion_predictions=predictions_since(conn, plan["model_name"], champion_version, started),
        expected_psi=_evaluated_shift(plan),
    )
    return {
        **verdict,
        "window": {"start": iso(started), "end": iso(end)},
        "traffic": {"canary": {**canary, "server_errors": server_errors}, "champion": champion},
    }


def _champion(plan: Plan) -> ServingChampion:
    """What a canary is compared with (the route is ``canary`` only when a model serves)."""
    champion = plan["champion"]
    if champion is None:
        raise PromotionRefused(f"a canary of version {plan['model_version']} needs a serving champion beside it")
    return champion


def _evaluated_shift(plan: Plan) -> float | None:
    """The shift the training evaluation measured for this very version against this very champion."""
    evaluation = plan.get("evaluation") or {}
    shift = evaluation.get("prediction_shift")
    if not shift or str((evaluation.get("challenger") or {}).get("version")) != str(plan.get("model_version")):
        return None
    serving = plan.get("champion")
    champion = serving["version"] if serving else None  # the model version live traffic is on
    if champion is not None and str(shift.get("champion_version")) != str(champion):
        return None
    return float(shift["psi"])
