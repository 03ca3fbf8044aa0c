"""Reference statistics: the one builder of the document drift checks compare against, and its check.

Training writes one per model version beside the serving artifact (:func:`reference_statistics`);
benchmarks and tests build one from raw data (:func:`reference_from_data`). The document holds, for

- every numeric feature, the target and the model's predictions: quantile bin edges with the share of
  values in each bin (for PSI), a 101-point quantile sketch and a seeded sample (for KS), and count,
  missing share, mean, std, min, max;
- every categorical feature: the share of each category (for PSI / chi-square), most frequent first,
  with rarer ones pooled as ``other_fraction``.

Binning rule (the checks use the same): with interior ``bin_edges`` e, a value v falls in bin
``i = number of edges strictly below v`` (``numpy.searchsorted(e, v, side="left")``), so bin 0 is
v <= e[0] and the last bin v > e[-1]; proportions are over non-missing values.

Every champion's document is stored in its MLflow run and read back by the drift flow: what is
written changes only with a new :data:`REFERENCE_FORMAT_VERSION` and a reader of the old one.
numpy only, like the checks (pandas is touched only to take columns out of a DataFrame).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pricepipe.drift.columns import Coded, as_columns, numeric_column
from pricepipe.drift.stats import SKETCH_POINTS, sorted_quantiles
from pricepipe.errors import DriftInputError

if TYPE_CHECKING:
    import pandas as pd

    from pricepipe.contract import Contract

REFERENCE_FORMAT = "pricepipe.reference-stats"
REFERENCE_FORMAT_VERSION = 1
BINNING = "bin = count of bin_edges strictly below the value (numpy.searchsorted side='left')"


# -- building --------------------------------------------------------------------------------------


def numeric_summary(values: Any, *, bins: int = 10, sample_size: int = 200, seed: int = 0) -> dict[str, Any]:
    """Distribution summary of one numeric column (see the module doc).

    One sort serves the bin edges, the bin counts and the sketch: several times faster on a million
    rows than partitioning for each quantile call and searching once per value."""
    x = np.asarray(values, dtype=np.float64)
    present = x[~np.isnan(x)]
    out: dict[str, Any] = {
        "count": len(x),
        "missing_fraction": float(1 - len(present) / len(x)) if len(x) else 0.0,
    }
    if len(present) == 0:
        return {**out, "bin_edges": [], "bin_proportions": [], "quantiles": [], "sample": []}
    ordered = np.sort(present)
    edges = np.unique(sorted_quantiles(ordered, np.linspace(0, 1, bins + 1)[1:-1]))
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
        "quantiles": sorted_quantiles(ordered, np.linspace(0, 1, SKETCH_POINTS)).tolist(),
        "sample": np.sort(sample).tolist(),
    }


def categorical_summary(values: Coded, *, top: int = 100) -> dict[str, Any]:
    """Category shares of one coded column, most frequent first (ties by label), the rarest beyond
    ``top`` pooled as ``other_fraction``. Counted by a bincount of the codes rather than by hashing
    every value; labels that print alike count as one category, as they read back from JSON."""
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
    prediction_source: str = "given",
    contract: Contract | None = None,
    bins: int = 10,
    sample_size: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference document of ``data``: summaries of its ``numeric`` and ``categorical`` columns,
    of its ``target`` column and of ``predictions`` when given, named after ``contract`` if any."""
    columns, rows = as_columns(data, numeric, categorical)
    document: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "format_version": REFERENCE_FORMAT_VERSION,
        "contract": {"name": contract.name, "version": contract.version} if contract is not None else None,
        "rows": rows,
        "binning": BINNING,
        "numeric": {
            name: numeric_summary(columns[name], bins=bins, sample_size=sample_size, seed=seed + i)
            for i, name in enumerate(numeric)
        },
        "categorical": {name: categorical_summary(columns[name]) for name in categorical},
    }
    if target is not None:
        values = numeric_column(target, data[target])
        document["target"] = {"name": target, **numeric_summary(values, bins=bins, sample_size=sample_size, seed=seed)}
    if predictions is not None:
        values = numeric_column("prediction", predictions)
        document["prediction"] = {
            "source": prediction_source,
            **numeric_summary(values, bins=bins, sample_size=sample_size, seed=seed + 1),
        }
    return document


def reference_statistics(
    train: pd.DataFrame,
    contract: Contract,
    predictions: Any,
    *,
    prediction_source: str = "holdout",
    bins: int = 10,
    sample_size: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """A trained model's reference: the contract's features and target over its training rows, and
    its predictions as given (``prediction_source`` says on what)."""
    return reference_from_data(
        train,
        numeric=contract.numeric_features,
        categorical=contract.categorical_features,
        target=contract.target,
        predictions=predictions,
        prediction_source=prediction_source,
        contract=contract,
        bins=bins,
        sample_size=sample_size,
        seed=seed,
    )


# -- reading ---------------------------------------------------------------------------------------


def validate_reference(reference: Any) -> None:  # noqa: C901 - one branch per malformed part of a reference, each with its own message
    """Refuse a document that is not reference statistics of the version this code reads."""
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


def present_rows(summary: Mapping[str, Any]) -> int:
    """The non-missing rows a summary was built from."""
    return round(float(summary["count"]) * (1.0 - float(summary["missing_fraction"])))
