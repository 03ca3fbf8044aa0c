"""Training reference statistics: what the drift checks compare production data against.

One small JSON document per model version, holding for

- every numeric feature, the target and the model's predictions: quantile bin edges with the share of
  values in each bin (for PSI), a 101-point quantile sketch and a seeded sample (for a two-sample KS
  test), and count, missing share, mean, std, min, max;
- every categorical feature: the share of each category (for PSI / chi-square), most frequent first,
  with rarer ones pooled as ``other_fraction``.

Binning rule (the drift side must use the same): with interior ``bin_edges`` e, a value v falls in
bin ``i = number of edges strictly below v`` (``numpy.searchsorted(e, v, side="left")``), so bin 0 is
v <= e[0] and the last bin v > e[-1]; proportions are over non-missing values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from pricepipe.contract import Contract

FORMAT = "pricepipe.reference-stats"
FORMAT_VERSION = 1


def numeric_summary(values: Any, *, bins: int = 10, sample_size: int = 200, seed: int = 0) -> dict[str, Any]:
    """Distribution summary of one numeric column (see the module docstring)."""
    x = np.asarray(values, dtype=np.float64)
    present = x[~np.isnan(x)]
    out: dict[str, Any] = {
        "count": len(x),
        "missing_fraction": float(1 - len(present) / len(x)) if len(x) else 0.0,
    }
    if len(present) == 0:
        return {**out, "bin_edges": [], "bin_proportions": [], "quantiles": [], "sample": []}
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    rng = np.random.default_rng(seed)
    sample = present if len(present) <= sample_size else rng.choice(present, sample_size, replace=False)
    return {
        **out,
        "mean": float(present.mean()),
        "std": float(present.std()),
        "min": float(present.min()),
        "max": float(present.max()),
        "bin_edges": edges.tolist(),
        "bin_proportions": (counts / len(present)).tolist(),
        "quantiles": np.quantile(present, np.linspace(0, 1, 101)).tolist(),
        "sample": np.sort(sample).tolist(),
    }


def categorical_summary(values: Any, *, top: int = 100) -> dict[str, Any]:
    """Category shares of one categorical column, most frequent first (ties by value)."""
    import pandas as pd

    series = pd.Series(values, dtype=object)
    present = series.dropna()
    counts = sorted(present.value_counts(sort=False).items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    n = len(present)
    kept = counts[:top]
    return {
        "count": len(series),
        "missing_fraction": float(1 - n / len(series)) if len(series) else 0.0,
        "frequencies": {str(k): int(v) / n for k, v in kept} if n else {},
        "other_fraction": float(sum(int(v) for _, v in counts[top:]) / n) if n else 0.0,
    }


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
    """The reference document: features and target over the training rows, predictions as given."""
    numeric = {}
    for i, name in enumerate(contract.numeric_features):
        column = train[name]
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        numeric[name] = numeric_summary(values, bins=bins, sample_size=sample_size, seed=seed + i)
    categorical = {
        name: categorical_summary(train[name].astype(object).where(train[name].notna(), None))
        for name in contract.categorical_features
    }
    target = train[contract.target].to_numpy(dtype=np.float64, na_value=np.nan)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "contract": {"name": contract.name, "version": contract.version},
        "rows": len(train),
        "binning": "bin = count of bin_edges strictly below the value (numpy.searchsorted side='left')",
        "numeric": numeric,
        "categorical": categorical,
        "target": {"name": contract.target, **numeric_summary(target, bins=bins, sample_size=sample_size, seed=seed)},
        "prediction": {
            "source": prediction_source,
            **numeric_summary(predictions, bins=bins, sample_size=sample_size, seed=seed + 1),
        },
    }
