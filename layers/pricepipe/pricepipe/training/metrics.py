"""Holdout metrics of a price model, computed the same way for every candidate and registered model."""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("rmse", "mae", "mape", "r2")


def regression_metrics(actual: Any, predicted: Any) -> dict[str, float]:
    """RMSE, MAE, MAPE (over rows with a non-zero actual price, as a fraction) and R², plus the row count.

    R² is NaN when the actuals do not vary; MAPE is NaN when every actual is zero.
    """
    y = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"actual and predicted must be 1-d and of one length, got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("no rows to score")
    error = p - y
    nonzero = y != 0
    spread = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "mape": float(np.mean(np.abs(error[nonzero] / y[nonzero]))) if nonzero.any() else float("nan"),
        "r2": 1.0 - float(np.sum(error**2)) / spread if spread > 0 else float("nan"),
        "rows": float(len(y)),
    }
