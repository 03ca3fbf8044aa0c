"""The check: a current window against a reference document, and the decision with its reasons.

Per feature PSI with KS (numeric) or chi-square (categorical) as the significance gate, the
predictions as a numeric feature, performance as error ratios to the training holdout; the metrics
and the decision rule are described in :mod:`pricepipe.drift`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pricepipe.drift.columns import Coded, as_columns, numeric_column
from pricepipe.drift.reference import present_rows, reference_from_data, validate_reference
from pricepipe.drift.stats import chi2_homogeneity, ks_against_sketch, ks_pvalue, psi
from pricepipe.errors import DriftInputError

if TYPE_CHECKING:
    from pricepipe.settings import Settings

MIN_EXPECTED = 5.0  # current rows a category must be expected to hold to be scored on its own
OTHER = "(other)"

Kind = Literal["feature", "prediction", "performance"]


# -- thresholds and results --------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    """The thresholds of one drift check; see the ``drift_*`` and ``performance_*`` settings."""

    psi: float
    ks: float
    pvalue: float
    min_rows: int
    share: float
    rmse_ratio: float
    mae_ratio: float
    min_actuals: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftThresholds:
        return cls(
            psi=settings.drift_psi_threshold,
            ks=settings.drift_ks_threshold,
            pvalue=settings.drift_pvalue,
            min_rows=settings.drift_min_rows,
            share=settings.drift_share_threshold,
            rmse_ratio=settings.performance_rmse_ratio_threshold,
            mae_ratio=settings.performance_mae_ratio_threshold,
            min_actuals=settings.performance_min_rows,
        )


@dataclass(frozen=True)
class DriftCheck:
    """One measured value against its threshold: one row of ``monitoring.drift_metrics``."""

    kind: Kind
    feature: str | None
    metric: str
    value: float
    threshold: float | None
    drifted: bool
    note: str = ""


@dataclass(frozen=True)
class Distribution:
    """Reference and current shares of one checked column, bucket by bucket (for reports)."""

    name: str
    kind: Literal["numeric", "categorical"]
    labels: tuple[str, ...]
    reference: tuple[float, ...]
    current: tuple[float, ...]
    reference_missing: float
    current_missing: float
    current_rows: int  # non-missing current values
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    """Everything one drift check found, and its decision with the reasons for it."""

    check_id: str
    checked_at: dt.datetime
    model_name: str | None
    model_version: str | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    reference_rows: int
    current_rows: int
    thresholds: DriftThresholds
    status: Literal["checked", "not_enough_data"]
    checks: tuple[DriftCheck, ...]
    distributions: tuple[Distribution, ...]  # features in reference order, then "prediction"
    checked_features: tuple[str, ...]
    drifted_features: tuple[str, ...]
    skipped_features: tuple[tuple[str, str], ...]  # (feature, why)
    feature_drift: bool
    prediction_drift: bool
    performance_drift: bool
    drifted: bool
    reasons: tuple[str, ...]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_features) / len(self.checked_features) if self.checked_features else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """The report as ``monitoring.drift_metrics`` rows, one per check."""
        common = {
            "check_id": self.check_id,
            "checked_at": self.checked_at,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
        }
        return [
            {
                **common,
                "kind": c.kind,
                "feature": c.feature,
                "metric": c.metric,
                "value": c.value,
                "threshold": c.threshold,
                "drifted": c.drifted,
            }
            for c in self.checks
        ]


# -- the checks --------------------------------------------------------------------------------------


@dataclass
class _Scored:
    checks: list[DriftCheck] = field(default_factory=list)
    distribution: Distribution | None = None
    drifted: bool = False
    skipped: str | None = None
    headline: str = ""


def _numeric_drift(
    kind: Kind, name: str, summary: Mapping[str, Any], values: np.ndarray, t: DriftThresholds
) -> _Scored:
    present = values[~np.isnan(values)]
    n = len(present)
    current_missing = 1.0 - n / len(values) if len(values) else 0.0
    if not summary["quantiles"]:
        return _Scored(skipped="the reference has no values")
    if n < t.min_rows:
        return _Scored(skipped=f"only {n} non-missing current values (fewer than {t.min_rows})")
    edges = np.asarray(summary["bin_edges"], dtype=np.float64)
    reference = np.asarray(summary["bin_proportions"], dtype=np.float64)
    ordered = np.sort(present)
    # bin i holds the values with i edges strictly below them (the reference's binning rule)
    below = np.searchsorted(ordered, edges, side="right")
    current = np.diff(np.concatenate(([0], below, [n]))) / n
    score = psi(reference, current)
    statistic = ks_against_sketch(summary["quantiles"], ordered)
    p = ks_pvalue(statistic, n, present_rows(summary))
    significant = p < t.pvalue
    psi_drift = score >= t.psi and significant
    ks_drift = statistic >= t.ks and significant
    checks = [
        DriftCheck(kind, name, "psi", score, t.psi, psi_drift, _gate_note(score >= t.psi, significant, "KS", p)),
        DriftCheck(kind, name, "ks", statistic, t.ks, ks_drift, _gate_note(statistic >= t.ks, significant, "KS", p)),
        DriftCheck(kind, name, "ks_pvalue", p, t.pvalue, significant),
    ]
    drifted = psi_drift or ks_drift
    distribution = Distribution(
        name,
        "numeric",
        bin_labels(edges),
        tuple(float(v) for v in reference),
        tuple(float(v) for v in current),
        float(summary["missing_fraction"]),
        current_missing,
        n,
        drifted,
    )
    headline = f"{name} (PSI {score:.3g}, KS {statistic:.3g})"
    return _Scored(checks, distribution, drifted, None, headline)


def _categorical_drift(name: str, summary: Mapping[str, Any], values: Coded, t: DriftThresholds) -> _Scored:
    codes = values.codes
    present = codes[codes >= 0]
    n = len(present)
    current_missing = 1.0 - n / len(codes) if len(codes) else 0.0
    if n < t.min_rows:
        return _Scored(skipped=f"only {n} non-missing current values (fewer than {t.min_rows})")
    labels = list(summary["frequencies"])
    shares = np.asarray([float(v) for v in summary["frequencies"].values()], dtype=np.float64)
    if not labels:
        return _Scored(skipped="the reference has no values")
    position = {label: i for i, label in enumerate(labels)}
    per_label = np.bincount(present, minlength=len(values.labels))
    counts = np.zeros(len(labels) + 1, dtype=np.float64)  # reference categories, then the pooled bucket
    target = np.fromiter((position.get(label, len(labels)) for label in values.labels), np.int64, len(values.labels))
    np.add.at(counts, target, per_label)
    reference = np.append(shares, float(summary["other_fraction"]))
    rare = np.append(shares * n < MIN_EXPECTED, False)
    keep = ~rare
    keep[-1] = False
    bucket_labels = [*(label for label, k in zip(labels, keep[:-1], strict=True) if k), OTHER]
    reference = np.append(reference[keep], reference[~keep].sum())
    counts = np.append(counts[keep], counts[~keep].sum())
    if reference[-1] == 0 and counts[-1] == 0:
        bucket_labels, reference, counts = bucket_labels[:-1], reference[:-1], counts[:-1]
    current = counts / n
    score = psi(reference, current)
    statistic, _, p = chi2_homogeneity(counts, reference * present_rows(summary))
    significant = p < t.pvalue
    drifted = score >= t.psi and significant
    checks = [
        DriftCheck(
            "feature", name, "psi", score, t.psi, drifted, _gate_note(score >= t.psi, significant, "chi-square", p)
        ),
        DriftCheck("feature", name, "chi2", statistic, None, significant),
        DriftCheck("feature", name, "chi2_pvalue", p, t.pvalue, significant),
    ]
    distribution = Distribution(
        name,
        "categorical",
        tuple(bucket_labels),
        tuple(float(v) for v in reference),
        tuple(float(v) for v in current),
        float(summary["missing_fraction"]),
        current_missing,
        n,
        drifted,
    )
    return _Scored(checks, distribution, drifted, None, f"{name} (PSI {score:.3g}, chi-square p {p:.2g})")


def _gate_note(over: bool, significant: bool, test: str, p: float) -> str:
    if over and not significant:
        return f"over the threshold but not significant ({test} p={p:.3g}): sampling noise"
    return ""


def performance_checks(
    actual: Any, predicted: Any, reference_metrics: Mapping[str, float], target: str | None, t: DriftThresholds
) -> tuple[list[DriftCheck], bool, str]:
    """RMSE and MAE over rows whose actual has arrived (finite on both sides), as ratios to the
    training holdout's. Too few such rows gives one non-drifted row saying so."""
    y = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise DriftInputError(f"actuals and predictions must be 1-d and of one length, got {y.shape} and {p.shape}")
    known = np.isfinite(y) & np.isfinite(p)
    n = int(known.sum())
    if n < t.min_actuals:
        note = f"not enough rows with actuals ({n} < {t.min_actuals}): performance not assessed"
        return (
            [DriftCheck("performance", target, "rows_with_actuals", float(n), float(t.min_actuals), False, note)],
            False,
            note,
        )
    for key in ("rmse", "mae"):
        value = reference_metrics.get(key)
        if value is None or not math.isfinite(float(value)) or float(value) <= 0:
            raise DriftInputError(f"the reference metrics need a positive {key!r}, got {value!r}")
    error = p[known] - y[known]
    rmse, mae = float(np.sqrt(np.mean(error**2))), float(np.mean(np.abs(error)))
    ref_rmse, ref_mae = float(reference_metrics["rmse"]), float(reference_metrics["mae"])
    rmse_ratio, mae_ratio = rmse / ref_rmse, mae / ref_mae
    rmse_drift, mae_drift = rmse_ratio >= t.rmse_ratio, mae_ratio >= t.mae_ratio
    checks = [
        DriftCheck(
            "performance", target, "rmse", rmse, ref_rmse * t.rmse_ratio, rmse_drift, f"holdout RMSE {ref_rmse:.4g}"
        ),
        DriftCheck("performance", target, "rmse_ratio", rmse_ratio, t.rmse_ratio, rmse_drift),
        DriftCheck("performance", target, "mae", mae, ref_mae * t.mae_ratio, mae_drift, f"holdout MAE {ref_mae:.4g}"),
        DriftCheck("performance", target, "mae_ratio", mae_ratio, t.mae_ratio, mae_drift),
        DriftCheck("performance", target, "rows_with_actuals", float(n), float(t.min_actuals), False),
    ]
    drifted = rmse_drift or mae_drift
    verdict = "drifted" if drifted else "stable"
    text = (
        f"performance {verdict}: RMSE {rmse:.4g} is {rmse_ratio:.2f}x the training holdout's {ref_rmse:.4g} "
        f"(threshold {t.rmse_ratio:.2f}x), MAE {mae:.4g} is {mae_ratio:.2f}x {ref_mae:.4g} "
        f"(threshold {t.mae_ratio:.2f}x), over {n} rows with actuals"
    )
    return checks, drifted, text


def check_drift(  # noqa: C901, PLR0912, PLR0915 - the check orchestrates every feature, prediction and performance test in one pass over the columns
    reference: Mapping[str, Any],
    current: Any,
    *,
    thresholds: DriftThresholds | None = None,
    predictions: Any = None,
    actuals: Any = None,
    reference_metrics: Mapping[str, float] | None = None,
    features: Sequence[str] | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    window_start: dt.datetime | None = None,
    window_end: dt.datetime | None = None,
    check_id: str | None = None,
    checked_at: dt.datetime | None = None,
) -> DriftReport:
    """Feature, prediction and performance drift of a current window against a reference document.

    ``current`` holds the model's features (a DataFrame or a mapping of arrays); ``predictions`` the
    window's predictions; ``actuals`` the actual prices aligned with ``predictions`` (NaN where not
    arrived yet), scored against ``reference_metrics`` (the holdout's ``rmse`` and ``mae``).
    ``features`` limits the check to some of the reference's features. Thresholds default to the
    process settings.
    """
    validate_reference(reference)
    t = thresholds if thresholds is not None else _default_thresholds()
    numeric = [name for name in reference["numeric"] if features is None or name in features]
    categorical = [name for name in reference["categorical"] if features is None or name in features]
    if features is not None:
        unknown = sorted(set(features) - set(numeric) - set(categorical))
        if unknown:
            raise DriftInputError(f"the reference has no statistics for feature(s): {', '.join(unknown)}")
    columns, rows = as_columns(current, numeric, categorical)
    if actuals is not None and reference_metrics is None:
        raise DriftInputError("actuals were given without the reference metrics (holdout rmse and mae) to compare with")
    if actuals is not None and predictions is None:
        raise DriftInputError("actuals were given without the predictions they belong to")

    checks: list[DriftCheck] = []
    distributions: list[Distribution] = []
    reasons: list[str] = []
    checked: list[str] = []
    drifted_names: list[str] = []
    headlines: list[str] = []
    skipped: list[tuple[str, str]] = []
    status: Literal["checked", "not_enough_data"] = "checked"

    if rows < t.min_rows:
        status = "not_enough_data"
        note = f"not enough data: {rows} current rows, fewer than the {t.min_rows} a drift check needs"
        checks.append(DriftCheck("feature", None, "rows", float(rows), float(t.min_rows), False, note))
        reasons.append(note)
        feature_drift = False
    else:
        for name in (*numeric, *categorical):
            if name in reference["numeric"]:
                scored = _numeric_drift("feature", name, reference["numeric"][name], columns[name], t)
            else:
                scored = _categorical_drift(name, reference["categorical"][name], columns[name], t)
            if scored.skipped is not None:
                skipped.append((name, scored.skipped))
                continue
            checked.append(name)
            checks.extend(scored.checks)
            if scored.distribution is not None:
                distributions.append(scored.distribution)
            if scored.drifted:
                drifted_names.append(name)
                headlines.append(scored.headline)
        share = len(drifted_names) / len(checked) if checked else 0.0
        feature_drift = bool(checked) and share >= t.share
        if checked:
            comparison = ">=" if feature_drift else "<"
            listed = f": {', '.join(headlines)}" if headlines else ""
            reasons.append(
                f"feature drift {'detected' if feature_drift else 'below threshold'}: {len(drifted_names)} of "
                f"{len(checked)} features drifted ({share:.0%} {comparison} {t.share:.0%}){listed}"
            )
        else:
            reasons.append("no feature could be checked")
        if skipped:
            reasons.append("not checked: " + "; ".join(f"{n}: {why}" for n, why in skipped))

    prediction_drift = False
    if predictions is None:
        reasons.append("prediction drift not checked: no predictions given")
    elif reference.get("prediction") is None:
        reasons.append("prediction drift not checked: the reference has no prediction summary")
    else:
        values = numeric_column("prediction", predictions)
        scored = _numeric_drift("prediction", "prediction", reference["prediction"], values, t)
        if scored.skipped is not None:
            note = f"prediction drift not checked: {scored.skipped}"
            present = float(np.count_nonzero(~np.isnan(values)))
            checks.append(DriftCheck("prediction", "prediction", "rows", present, float(t.min_rows), False, note))
            reasons.append(note)
        else:
            checks.extend(scored.checks)
            if scored.distribution is not None:
                distributions.append(scored.distribution)
            prediction_drift = scored.drifted
            psi_value, ks_value = scored.checks[0].value, scored.checks[1].value
            reasons.append(
                f"prediction drift {'detected' if prediction_drift else 'not detected'}: PSI {psi_value:.3g} "
                f"(threshold {t.psi:g}), KS {ks_value:.3g} (threshold {t.ks:g}) over {len(values)} predictions"
            )

    performance_drift = False
    if actuals is not None and reference_metrics is not None:
        target = (reference.get("target") or {}).get("name")
        perf, performance_drift, text = performance_checks(actuals, predictions, reference_metrics, target, t)
        checks.extend(perf)
        reasons.append(text)
    else:
        reasons.append("performance drift not checked: no actuals given")

    drifted = feature_drift or prediction_drift or performance_drift
    verdict = "DRIFT: " + ", ".join(
        what
        for what, flag in (
            ("features", feature_drift),
            ("predictions", prediction_drift),
            ("performance", performance_drift),
        )
        if flag
    )
    reasons.insert(0, verdict if drifted else ("not enough data" if status == "not_enough_data" else "no drift"))
    return DriftReport(
        check_id=check_id or uuid.uuid4().hex,
        checked_at=checked_at or dt.datetime.now(dt.UTC),
        model_name=model_name,
        model_version=model_version,
        window_start=window_start,
        window_end=window_end,
        reference_rows=int(reference.get("rows", 0)),
        current_rows=rows,
        thresholds=t,
        status=status,
        checks=tuple(checks),
        distributions=tuple(distributions),
        checked_features=tuple(checked),
        drifted_features=tuple(drifted_names),
        skipped_features=tuple(skipped),
        feature_drift=feature_drift,
        prediction_drift=prediction_drift,
        performance_drift=performance_drift,
        drifted=drifted,
        reasons=tuple(reasons),
    )


def _default_thresholds() -> DriftThresholds:
    from pricepipe.settings import get_settings

    return DriftThresholds.from_settings(get_settings())


def bin_labels(edges: Any) -> tuple[str, ...]:
    """Readable labels of the bins interior ``edges`` make: "<= e0", "(e0, e1]", ..., "> e_last"."""
    e = [_short(float(v)) for v in edges]
    if not e:
        return ("all",)
    return (f"<= {e[0]}", *(f"({a}, {b}]" for a, b in itertools.pairwise(e)), f"> {e[-1]}")


def _short(value: float) -> str:
    return f"{value:.4g}"


def compare_data(
    reference_data: Any,
    current_data: Any,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    thresholds: DriftThresholds | None = None,
    reference_predictions: Any = None,
    current_predictions: Any = None,
    bins: int = 10,
) -> DriftReport:
    """Drift between two raw datasets: the reference summary is built from ``reference_data`` (all
    of it) and the current data checked against it, exactly as a deployed check would."""
    reference = reference_from_data(
        reference_data, numeric=numeric, categorical=categorical, predictions=reference_predictions, bins=bins
    )
    return check_drift(reference, current_data, thresholds=thresholds, predictions=current_predictions)
