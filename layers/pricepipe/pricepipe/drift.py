"""Drift of a current window against the production model's training reference.

The reference is the small JSON document :mod:`pricepipe.training.reference` writes per model
version; the current window is a pandas DataFrame or a mapping of column name to numpy array. The
core is numpy only (pandas is touched only to take columns out of a DataFrame), so it runs in a
small Lambda function; p-values are computed here too, because scipy is not in the function's layers.

Metrics, per feature
--------------------
numeric
    ``psi``: population stability index over the reference's quantile bins,
    ``sum((c - r) * ln(c / r))`` with ``r`` the reference share and ``c`` the current share of each bin.
    Both shares are clipped to at least :data:`EPSILON` (1e-4), so an empty bin scores a large but
    finite term instead of infinity; 1e-4 is the usual choice and keeps one empty bin out of ten
    from deciding the result on its own.
    ``ks``: the two-sample Kolmogorov-Smirnov statistic, the largest gap between the reference and
    current CDFs. The reference CDF is the document's 101-point quantile sketch interpolated
    linearly (a run of equal quantiles becomes a jump, so discrete features keep their steps); the
    current CDF is exact. Within each 1% band the true reference CDF is unknown, so the statistic can
    be off by up to about 0.01, far below any threshold worth using.
    ``ks_pvalue``: asymptotic Kolmogorov p-value with the effective size n*m/(n+m) (Stephens'
    small-sample correction), m being the reference's non-missing rows.
categorical
    ``psi`` over category shares, with ``chi2`` / ``chi2_pvalue``: Pearson's test of homogeneity of
    the 2 x k table of current counts and reference counts (the reference's shares times its rows).
    Categories the reference pooled as ``other_fraction`` and categories it never saw are pooled in
    one ``(other)`` bucket, and so are reference categories too rare to expect 5 current rows (the
    usual validity rule for chi-square; it also keeps PSI from scoring noise in rare categories).

A feature drifts when an effect size (``psi`` or ``ks``) crosses its threshold **and** its test's
p-value is below ``drift_pvalue``. Predictions are checked as a numeric feature against the
document's ``prediction`` summary. Performance compares RMSE and MAE over the rows whose actual price
has arrived with the model's training holdout metrics, as ratios.

The dataset drifts when the share of drifted features reaches ``drift_share_threshold``, or the
predictions drift, or performance does. Too few current rows is a result ("not enough data", not
drifted), not an error; so is too few rows with actuals for the performance check.
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

from pricepipe.errors import PricePipeError

if TYPE_CHECKING:
    import psycopg

    from pricepipe.contract import Contract
    from pricepipe.settings import Settings

# Equal to pricepipe.training.reference.FORMAT / FORMAT_VERSION (a test holds them equal). Importing
# them would load pandas through pricepipe.training's package init, which this module avoids.
REFERENCE_FORMAT = "pricepipe.reference-stats"
REFERENCE_FORMAT_VERSION = 1

EPSILON = 1e-4
MIN_EXPECTED = 5.0  # current rows a category must be expected to hold to be scored on its own
OTHER = "(other)"
SKETCH_POINTS = 101

Kind = Literal["feature", "prediction", "performance"]


class DriftInputError(PricePipeError):
    """The reference document or the current data cannot be compared (named in the message)."""


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
class Coded:
    """A categorical column as integer codes into ``labels``; -1 marks a missing value."""

    codes: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.codes)


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

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest for a state machine's Choice state and for logs."""
        return {
            "check_id": self.check_id,
            "checked_at": self.checked_at.isoformat(),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "window_end": self.window_end.isoformat() if self.window_end else None,
            "status": self.status,
            "drifted": self.drifted,
            "feature_drift": self.feature_drift,
            "prediction_drift": self.prediction_drift,
            "performance_drift": self.performance_drift,
            "drift_share": round(self.drift_share, 6),
            "drifted_features": list(self.drifted_features),
            "checked_features": len(self.checked_features),
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "reasons": list(self.reasons),
        }


# -- statistics ------------------------------------------------------------------------------------


def psi(reference: Any, current: Any, epsilon: float = EPSILON) -> float:
    """Population stability index of two share vectors over the same buckets (see the module doc)."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), epsilon)
    c = np.maximum(np.asarray(current, dtype=np.float64), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def sketch_cdf(quantiles: Any, x: Any, *, left: bool = False) -> np.ndarray:
    """The CDF a quantile sketch describes, at ``x`` (its left limit when ``left``).

    Quantile ``j`` of ``k + 1`` sits at probability ``j / k``; between two distinct quantiles the CDF
    is linear, and a run of equal quantiles is a jump, as a discrete feature's CDF has.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    points = np.asarray(x, dtype=np.float64)
    last = len(q) - 1
    # index of the last quantile <= x (right-continuous CDF) or < x (its left limit)
    k = np.searchsorted(q, points, side="left" if left else "right") - 1
    inner = np.clip(k, 0, last - 1)
    low, high = q[inner], q[inner + 1]
    span = high - low
    fraction = np.divide(points - low, span, out=np.zeros_like(points), where=span > 0)
    inside = (inner + np.clip(fraction, 0.0, 1.0)) / last
    return np.where(k < 0, 0.0, np.where(k >= last, 1.0, inside))


def ks_against_sketch(quantiles: Any, current_sorted: np.ndarray) -> float:
    """Largest gap between a sketch's CDF and the empirical CDF of sorted, non-empty current values.

    Between two consecutive current values the empirical CDF is flat and the sketch's non-decreasing,
    so the gap there is largest at an end: at a current value itself, or approached from its left.
    Those two limits at every distinct current value give the exact supremum (before the first value
    and after the last the same holds with the empirical CDF at 0 and 1).
    """
    n = len(current_sorted)
    # the ECDF at its own points from the runs of equal values, in O(n) rather than a search
    starts = np.flatnonzero(np.concatenate(([True], current_sorted[1:] != current_sorted[:-1])))
    ends = np.append(starts[1:], n)
    values = current_sorted[starts]
    at = np.abs(ends / n - sketch_cdf(quantiles, values))
    before = np.abs(starts / n - sketch_cdf(quantiles, values, left=True))
    return float(max(at.max(), before.max()))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (the KS statistic's limit law)."""
    if lam <= 0:
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    if lam < 1.18:  # the alternating series below converges too slowly here; this one converges fast
        cdf = math.sqrt(2 * math.pi) / lam * float(np.sum(np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * lam**2))))
        return float(min(1.0, max(0.0, 1.0 - cdf)))
    signs = np.where(k % 2 == 1, 1.0, -1.0)
    return float(min(1.0, max(0.0, 2 * float(np.sum(signs * np.exp(-2 * k**2 * lam**2))))))


def ks_pvalue(statistic: float, n: int, m: int | None) -> float:
    """Asymptotic two-sample KS p-value for sizes n and m (m None: a one-sample test)."""
    size = n * m / (n + m) if m else float(n)
    root = math.sqrt(size)
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * statistic)


def chi2_sf(statistic: float, df: int) -> float:
    """P(X > statistic) for X chi-square with ``df`` degrees of freedom: the regularized upper
    incomplete gamma function Q(df/2, statistic/2), by its series or its continued fraction."""
    if df < 1:
        raise ValueError(f"chi-square needs at least one degree of freedom, got {df}")
    if statistic <= 0:
        return 1.0
    a, x = df / 2.0, statistic / 2.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for the lower function P, Q = 1 - P
        term = total = 1.0 / a
        denominator = a
        for _ in range(100_000):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return float(min(1.0, max(0.0, 1.0 - total * math.exp(log_prefix))))
    tiny = 1e-300  # modified Lentz's method for the continued fraction of Q
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return float(min(1.0, max(0.0, math.exp(log_prefix) * h)))


def chi2_homogeneity(current_counts: Any, reference_counts: Any) -> tuple[float, int, float]:
    """Pearson's chi-square for a 2 x k table; buckets empty on both sides are left out.
    Returns (statistic, degrees of freedom, p-value)."""
    cur = np.asarray(current_counts, dtype=np.float64)
    ref = np.asarray(reference_counts, dtype=np.float64)
    total = cur + ref
    keep = total > 0
    cur, ref, total = cur[keep], ref[keep], total[keep]
    n, m = cur.sum(), ref.sum()
    if len(total) < 2 or n == 0 or m == 0:
        return 0.0, 0, 1.0
    expected_cur = total * (n / (n + m))
    expected_ref = total * (m / (n + m))
    statistic = float(
        np.sum((cur - expected_cur) ** 2 / expected_cur) + np.sum((ref - expected_ref) ** 2 / expected_ref)
    )
    df = len(total) - 1
    return statistic, df, chi2_sf(statistic, df)


# -- reference documents ---------------------------------------------------------------------------


def validate_reference(reference: Any) -> None:
    """Refuse a document that is not reference statistics of the version this module reads."""
    if not isinstance(reference, Mapping):
        raise DriftInputError(f"the reference must be a reference-statistics mapping, got {type(reference).__name__}")
    fmt, version = reference.get("format"), reference.get("format_version")
    if fmt != REFERENCE_FORMAT:
        raise DriftInputError(f"the reference document's format is {fmt!r}, expected {REFERENCE_FORMAT!r}")
    if version != REFERENCE_FORMAT_VERSION:
        raise DriftInputError(
            f"the reference document is {REFERENCE_FORMAT} version {version!r}; this code reads version "
            f"{REFERENCE_FORMAT_VERSION}"
        )
    for section in ("numeric", "categorical"):
        if not isinstance(reference.get(section), Mapping):
            raise DriftInputError(f"the reference document has no {section!r} section")
    for name, summary in reference["numeric"].items():
        _validate_numeric_summary(f"numeric feature {name!r}", summary)
    for name, summary in reference["categorical"].items():
        if not isinstance(summary, Mapping) or not isinstance(summary.get("frequencies"), Mapping):
            raise DriftInputError(f"the reference's categorical feature {name!r} has no frequencies")
        if "other_fraction" not in summary or "count" not in summary:
            raise DriftInputError(f"the reference's categorical feature {name!r} lacks other_fraction or count")
    if reference.get("prediction") is not None:
        _validate_numeric_summary("prediction summary", reference["prediction"])


def _validate_numeric_summary(what: str, summary: Any) -> None:
    if not isinstance(summary, Mapping):
        raise DriftInputError(f"the reference's {what} is not a mapping")
    missing = [
        k for k in ("count", "missing_fraction", "bin_edges", "bin_proportions", "quantiles") if k not in summary
    ]
    if missing:
        raise DriftInputError(f"the reference's {what} lacks {', '.join(missing)}")
    edges, proportions, quantiles = summary["bin_edges"], summary["bin_proportions"], summary["quantiles"]
    if quantiles and (len(proportions) != len(edges) + 1 or len(quantiles) != SKETCH_POINTS):
        raise DriftInputError(
            f"the reference's {what} is malformed: {len(edges)} bin edges need {len(edges) + 1} proportions "
            f"(got {len(proportions)}) and the quantile sketch needs {SKETCH_POINTS} points (got {len(quantiles)})"
        )


def _present_rows(summary: Mapping[str, Any]) -> int:
    return round(float(summary["count"]) * (1.0 - float(summary["missing_fraction"])))


# -- column access -----------------------------------------------------------------------------------


def as_columns(data: Any, numeric: Sequence[str], categorical: Sequence[str]) -> tuple[dict[str, Any], int]:
    """Numeric columns as float64 arrays (NaN = missing) and categorical ones as :class:`Coded`, from
    a pandas DataFrame or a mapping of arrays; the rows counted. Names every missing column."""
    names = list(data.columns) if _is_frame(data) else list(data.keys()) if isinstance(data, Mapping) else None
    if names is None:
        raise DriftInputError(
            f"current data must be a pandas DataFrame or a mapping of arrays, got {type(data).__name__}"
        )
    absent = [name for name in (*numeric, *categorical) if name not in names]
    if absent:
        raise DriftInputError(f"the current data lacks feature(s) the reference has: {', '.join(absent)}")
    out: dict[str, Any] = {}
    lengths = set()
    for name in numeric:
        out[name] = _numeric_column(name, data[name])
        lengths.add(len(out[name]))
    for name in categorical:
        out[name] = _coded_column(name, data[name])
        lengths.add(len(out[name]))
    if len(lengths) > 1:
        raise DriftInputError(f"the current columns differ in length: {sorted(lengths)}")
    rows = lengths.pop() if lengths else (len(data) if _is_frame(data) else 0)
    return out, rows


def _is_frame(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "columns")


def _numeric_column(name: str, values: Any) -> np.ndarray:
    try:
        if hasattr(values, "to_numpy"):
            return np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DriftInputError(
            f"feature {name!r} is numeric in the reference but its current values are not: {exc}"
        ) from exc


def _coded_column(name: str, values: Any) -> Coded:
    if isinstance(values, Coded):
        return values
    if hasattr(values, "cat"):  # pandas categorical: the codes exist already
        return Coded(np.asarray(values.cat.codes, dtype=np.int64), tuple(str(c) for c in values.cat.categories))
    if type(values).__module__.startswith("pandas"):
        import pandas as pd

        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        return Coded(np.asarray(codes, dtype=np.int64), tuple(str(u) for u in uniques))
    array = np.asarray(values)
    if array.ndim != 1:
        raise DriftInputError(f"feature {name!r} must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind == "O":
        missing = np.fromiter((v is None or (isinstance(v, float) and math.isnan(v)) for v in array), bool, len(array))
    elif array.dtype.kind == "f":
        missing = np.isnan(array)
    else:
        missing = np.zeros(len(array), dtype=bool)
    codes = np.full(len(array), -1, dtype=np.int64)
    if (~missing).any():
        labels, inverse = np.unique(array[~missing].astype(str), return_inverse=True)
        codes[~missing] = inverse
        return Coded(codes, tuple(str(v) for v in labels))
    return Coded(codes, ())


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
    # bin i holds the values with i edges strictly below them (training.reference's rule)
    below = np.searchsorted(ordered, edges, side="right")
    current = np.diff(np.concatenate(([0], below, [n]))) / n
    score = psi(reference, current)
    statistic = ks_against_sketch(summary["quantiles"], ordered)
    p = ks_pvalue(statistic, n, _present_rows(summary))
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
    statistic, _, p = chi2_homogeneity(counts, reference * _present_rows(summary))
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


def check_drift(
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
        values = _numeric_column("prediction", predictions)
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


# -- a reference from raw data (benchmarks, tests, ad-hoc comparisons) --------------------------------


def _sorted_quantiles(ordered: np.ndarray, q: np.ndarray) -> np.ndarray:
    """numpy.quantile's default (linear) method on already sorted values, without partitioning again."""
    position = q * (len(ordered) - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(ordered) - 1)
    gamma = position - low
    a, b = ordered[low], ordered[high]
    diff = b - a
    # the same two-sided interpolation numpy uses, so both give identical bits
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def numeric_summary(values: Any, *, bins: int = 10, sample_size: int = 200, seed: int = 0) -> dict[str, Any]:
    """:func:`pricepipe.training.reference.numeric_summary`, from one sort instead of two partitions
    and a pass per value (several times faster on a million rows); a test holds the two equal."""
    x = np.asarray(values, dtype=np.float64)
    present = x[~np.isnan(x)]
    out: dict[str, Any] = {
        "count": len(x),
        "missing_fraction": float(1 - len(present) / len(x)) if len(x) else 0.0,
    }
    if len(present) == 0:
        return {**out, "bin_edges": [], "bin_proportions": [], "quantiles": [], "sample": []}
    ordered = np.sort(present)
    edges = np.unique(_sorted_quantiles(ordered, np.linspace(0, 1, bins + 1)[1:-1]))
    below = np.searchsorted(ordered, edges, side="right")
    counts = np.diff(np.concatenate(([0], below, [len(ordered)])))
    rng = np.random.default_rng(seed)
    sample = present if len(present) <= sample_size else rng.choice(present, sample_size, replace=False)
    return {
        **out,
        "mean": float(present.mean()),
        "std": float(present.std()),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "bin_edges": edges.tolist(),
        "bin_proportions": (counts / len(present)).tolist(),
        "quantiles": _sorted_quantiles(ordered, np.linspace(0, 1, SKETCH_POINTS)).tolist(),
        "sample": np.sort(sample).tolist(),
    }


def categorical_summary(values: Coded, *, top: int = 100) -> dict[str, Any]:
    """:func:`pricepipe.training.reference.categorical_summary` from integer codes (a bincount
    instead of hashing every value); a test holds the two equal."""
    present = values.codes[values.codes >= 0]
    n = len(present)
    per_label = np.bincount(present, minlength=len(values.labels))
    totals: dict[str, int] = {}
    for label, count in zip(values.labels, per_label.tolist(), strict=True):
        if count:
            totals[label] = totals.get(label, 0) + count
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "count": len(values.codes),
        "missing_fraction": float(1 - n / len(values.codes)) if len(values.codes) else 0.0,
        "frequencies": {k: v / n for k, v in ordered[:top]} if n else {},
        "other_fraction": float(sum(v for _, v in ordered[top:]) / n) if n else 0.0,
    }


def reference_from_data(
    data: Any,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    predictions: Any = None,
    target: str | None = None,
    bins: int = 10,
    sample_size: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """A reference document (the training format) built from raw data rather than by training."""
    columns, rows = as_columns(data, numeric, categorical)
    document: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "format_version": REFERENCE_FORMAT_VERSION,
        "contract": None,
        "rows": rows,
        "binning": "bin = count of bin_edges strictly below the value (numpy.searchsorted side='left')",
        "numeric": {
            name: numeric_summary(columns[name], bins=bins, sample_size=sample_size, seed=seed + i)
            for i, name in enumerate(numeric)
        },
        "categorical": {name: categorical_summary(columns[name]) for name in categorical},
    }
    if target is not None:
        values = _numeric_column(target, data[target])
        document["target"] = {"name": target, **numeric_summary(values, bins=bins, sample_size=sample_size, seed=seed)}
    if predictions is not None:
        values = _numeric_column("prediction", predictions)
        document["prediction"] = {
            "source": "given",
            **numeric_summary(values, bins=bins, sample_size=sample_size, seed=seed + 1),
        }
    return document


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


# -- PostgreSQL ------------------------------------------------------------------------------------


def window_ending(last_day: dt.date, days: int) -> tuple[dt.datetime, dt.datetime]:
    """The ``days`` event days up to and including ``last_day``, as [start, end) UTC instants."""
    if days < 1:
        raise ValueError(f"a drift window needs at least one day, got {days}")
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return end - dt.timedelta(days=days), end


_INSERT = (
    "INSERT INTO monitoring.drift_metrics (check_id, checked_at, model_name, model_version, kind, feature, metric,"
    " value, threshold, drifted, window_start, window_end, reference_rows, current_rows) VALUES"
    " (%(check_id)s, %(checked_at)s, %(model_name)s, %(model_version)s, %(kind)s, %(feature)s, %(metric)s,"
    " %(value)s, %(threshold)s, %(drifted)s, %(window_start)s, %(window_end)s, %(reference_rows)s, %(current_rows)s)"
)


def save_report(conn: psycopg.Connection[Any], report: DriftReport) -> int:
    """Write the report to ``monitoring.drift_metrics``, one row per check, all or nothing."""
    rows = report.rows()
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(_INSERT, rows)
    return len(rows)


def load_current_window(
    conn: psycopg.Connection[Any], contract: Contract, start: dt.datetime | dt.date, end: dt.datetime | dt.date
) -> tuple[dict[str, Any], int]:
    """The model-ready rows of ``price_data.model_features`` whose event time is in [start, end), as
    :func:`check_drift` takes them (numeric features float64 arrays, categorical ones :class:`Coded`);
    and the row count. Rows leave the server through COPY and are parsed by Arrow, as training does."""
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv
    from psycopg import sql

    if contract.event_time is None:
        raise DriftInputError(f"contract {contract.name!r} has no event_time: a drift window needs one")
    columns = {name: contract.feature_table_columns[name] for name in contract.feature_columns}
    by_date = contract.columns[contract.event_time].type == "date"
    query = sql.SQL(
        "COPY (SELECT {cols} FROM price_data.model_features WHERE {t} >= {lo} AND {t} < {hi} ORDER BY {order})"
        " TO STDOUT WITH (FORMAT csv, HEADER true)"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        t=sql.Identifier(contract.event_time),
        lo=sql.Literal(_bound(start, by_date)),
        hi=sql.Literal(_bound(end, by_date)),
        order=sql.SQL(", ").join(map(sql.Identifier, (contract.event_time, *contract.key))),
    )
    buffer = io.BytesIO()
    with conn.cursor().copy(query) as copy:
        for chunk in copy:
            buffer.write(chunk)
    schema = contract.arrow_schema(columns)
    # PostgreSQL's CSV writes NULL unquoted and an empty string quoted: keep the two apart
    options = pacsv.ConvertOptions(
        column_types=schema,
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t"],
        false_values=["f"],
    )
    if not buffer.getbuffer().nbytes:
        table = schema.empty_table()
    else:
        table = pacsv.read_csv(io.BytesIO(buffer.getvalue()), convert_options=options)
    out: dict[str, Any] = {}
    for name in columns:
        array = table.column(name).combine_chunks()
        if name in contract.categorical_features and pa.types.is_boolean(array.type):
            # the reference spells booleans as Python does (str(True)), not as Arrow casts them ("true")
            flags = array.fill_null(False).to_numpy(zero_copy_only=False).astype(np.int64)
            nulls = array.is_null().to_numpy(zero_copy_only=False)
            out[name] = Coded(np.where(nulls, -1, flags), ("False", "True"))
        elif name in contract.categorical_features:
            encoded = array.cast(pa.large_string()).dictionary_encode()
            codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            out[name] = Coded(codes, tuple(str(v) for v in encoded.dictionary.to_pylist()))
        else:
            out[name] = array.cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)
    return out, table.num_rows


def _bound(moment: dt.datetime | dt.date, by_date: bool) -> dt.datetime | dt.date:
    # a DATE compared with a timestamptz is cast in the session's time zone, which would shift the
    # window by a day east of UTC: compare dates with dates (the UTC date of an instant)
    if isinstance(moment, dt.datetime):
        if moment.tzinfo is None:
            raise DriftInputError(f"window bound {moment.isoformat()} has no time zone")
        return moment.astimezone(dt.UTC).date() if by_date else moment
    return moment if by_date else dt.datetime.combine(moment, dt.time(), tzinfo=dt.UTC)


@dataclass(frozen=True)
class PredictionLog:
    """Predictions served in a window, with the actual price where it has arrived (NaN otherwise)."""

    predictions: np.ndarray
    actuals: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.predictions)

    @property
    def rows_with_actuals(self) -> int:
        return int(np.count_nonzero(np.isfinite(self.actuals)))


def load_prediction_log(
    conn: psycopg.Connection[Any],
    start: dt.datetime,
    end: dt.datetime,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
) -> PredictionLog:
    """``monitoring.predictions`` served in [start, end), optionally of one model (version)."""
    from psycopg import sql

    conditions = [sql.SQL("predicted_at >= %(start)s"), sql.SQL("predicted_at < %(end)s")]
    if model_name is not None:
        conditions.append(sql.SQL("model_name = %(model_name)s"))
    if model_version is not None:
        conditions.append(sql.SQL("model_version = %(model_version)s"))
    query = sql.SQL("SELECT prediction, actual FROM monitoring.predictions WHERE {} ORDER BY predicted_at, id").format(
        sql.SQL(" AND ").join(conditions)
    )
    params = {"start": start, "end": end, "model_name": model_name, "model_version": model_version}
    rows = conn.execute(query, params).fetchall()
    values = np.array([(r[0], np.nan if r[1] is None else r[1]) for r in rows], dtype=np.float64).reshape(-1, 2)
    return PredictionLog(values[:, 0].copy(), values[:, 1].copy())
