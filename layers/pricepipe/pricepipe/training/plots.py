"""Training plots as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: it keeps global figure state and picks a GUI backend, neither wanted in a batch job.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np


def _figure(width: float = 6.4, height: float = 4.8) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def predicted_vs_actual(actual: Any, predicted: Any, title: str) -> bytes:
    y, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    figure = _figure(6.0, 6.0)
    ax = figure.add_subplot()
    ax.scatter(y, p, s=6, alpha=0.4, color="tab:blue", edgecolors="none")
    low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--", label="perfect")
    ax.set(xlabel="actual price", ylabel="predicted price", title=title)
    ax.legend(loc="upper left")
    return _png(figure)


def residuals_over_time(dates: Any, actual: Any, predicted: Any, title: str) -> bytes:
    when = np.asarray(dates, dtype="datetime64[D]")
    residual = np.asarray(predicted, dtype=float) - np.asarray(actual, dtype=float)
    days, inverse = np.unique(when, return_inverse=True)
    daily = np.bincount(inverse, weights=residual) / np.bincount(inverse)
    figure = _figure(8.0, 4.5)
    ax = figure.add_subplot()
    ax.scatter(when, residual, s=5, alpha=0.3, color="tab:gray", edgecolors="none", label="rows")
    ax.plot(days, daily, color="tab:red", linewidth=1.5, marker="o", markersize=3, label="daily mean")
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set(xlabel="event date", ylabel="predicted − actual", title=title)
    ax.legend(loc="upper left")
    figure.autofmt_xdate()
    return _png(figure)


def feature_importance(importance: Mapping[str, float], title: str, top: int = 20) -> bytes:
    ranked = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    total = sum(importance.values()) or 1.0
    figure = _figure(7.0, max(3.0, 0.3 * len(ranked) + 1.2))
    ax = figure.add_subplot()
    ax.barh([name for name, _ in ranked], [value / total for _, value in ranked], color="tab:green")
    ax.set(xlabel="share of total split gain", title=title)
    return _png(figure)


def feature_contributions(mean_abs: Mapping[str, float], title: str, scale: str = "price", top: int = 20) -> bytes:
    """Mean |TreeSHAP contribution| per feature: how far, on average, each feature moves a price."""
    ranked = sorted(mean_abs.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    figure = _figure(7.0, max(3.0, 0.3 * len(ranked) + 1.2))
    ax = figure.add_subplot()
    ax.barh([name for name, _ in ranked], [value for _, value in ranked], color="tab:purple")
    unit = "log price" if scale == "log_price" else "price"
    ax.set(xlabel=f"mean |contribution| to the predicted {unit}", title=title)
    return _png(figure)
