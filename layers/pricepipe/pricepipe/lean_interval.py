"""Prediction intervals from the lean artifact, with numpy alone: locally weighted split conformal.

An interval at level *a* for a row *x* with prediction ŷ is ``ŷ ± q_a · σ(x)``, where

- σ is a second, small tree ensemble exported at training time beside the point model; it predicts
  the absolute error of the point model from the row's features (trained on out-of-fold errors, so
  on rows the model that made them never fitted), floored at ``floor`` so that no row gets a zero
  width;
- ``scores`` are the sorted calibration scores ``|y − ŷ| / σ(x)`` of rows that neither the point
  model that priced them nor σ had fitted (:mod:`pricepipe.training.intervals` says which);
- ``q_a`` is the finite-sample conformal quantile: the ``⌈(n + 1)·a⌉``-th smallest of the *n*
  scores. When that rank is beyond *n* (a level above ``n / (n + 1)``), the calibration rows cannot
  bound the interval at all, and its ends are infinite (JSON null in the API's answer).

Keeping every score (not a quantile grid) makes any level in (0, 1) exact at the cost of 8 bytes a
calibration row. Everything is on the scale of the final predictions (the price), whatever the point
model's trees are summed in: σ is trained on price errors and is always an identity-output model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pricepipe.lean_model import FeatureEncoding, LeanModel, TreeArrays

METHOD = "locally weighted split conformal (|y - prediction| / sigma(x) scores)"
ARRAY_PREFIX = "interval."  # the artifact's arrays of this section: interval.scores, interval.sigma.<node array>


class ConformalInterval:
    """σ(x), the calibration scores and what training measured of them (``info``: holdout coverage).

    ``sigma`` is a lean model, or its (checked) node arrays and encoding: then its lookup tables are
    compiled by the first interval asked for, not at load (a few ms of every cold start otherwise).
    """

    def __init__(
        self,
        sigma: LeanModel | tuple[TreeArrays, FeatureEncoding],
        scores: np.ndarray,
        floor: float,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        from pricepipe.lean_model import LeanModelError

        ordered = np.sort(np.asarray(scores, dtype=np.float64))
        if ordered.ndim != 1 or len(ordered) == 0 or not np.all(np.isfinite(ordered)) or ordered[0] < 0:
            raise LeanModelError("interval calibration scores must be one or more finite, non-negative numbers")
        if not (math.isfinite(floor) and floor > 0):
            raise LeanModelError(f"the interval's sigma floor must be a positive number, got {floor!r}")
        self._sigma = None if isinstance(sigma, tuple) else sigma
        self._parts = sigma if isinstance(sigma, tuple) else (sigma.trees, sigma.encoding)
        self.scores = ordered
        self.floor = float(floor)
        self.info: dict[str, Any] = dict(info or {})

    @property
    def sigma(self) -> LeanModel:
        if self._sigma is None:
            from pricepipe.lean_model import LeanModel

            self._sigma = LeanModel(*self._parts)
        return self._sigma

    @property
    def calibration_rows(self) -> int:
        return len(self.scores)

    def quantile(self, level: float) -> float:
        """``q_a``: the ``⌈(n + 1)·a⌉``-th smallest score, or infinity when that rank exceeds n."""
        if not 0.0 < level < 1.0:
            from pricepipe.lean_model import LeanModelError

            raise LeanModelError(f"an interval level must be strictly between 0 and 1, got {level!r}")
        n = len(self.scores)
        # the 1e-9 keeps (n + 1) * 0.8 = 2400.0000000000005 at rank 2400, as exact arithmetic would
        rank = max(1, math.ceil((n + 1) * level - 1e-9))
        return math.inf if rank > n else float(self.scores[rank - 1])

    def scale_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.maximum(self.sigma.predict_rows(rows), self.floor)

    def scale_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        return np.maximum(self.sigma.predict_columns(columns), self.floor)

    def scale_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """σ of rows encoded with *σ's* encoding (:attr:`sigma`'s, which can differ from the point model's)."""
        return np.maximum(self.sigma.predict_matrix(matrix), self.floor)

    def bounds(self, predictions: np.ndarray, scale: np.ndarray, level: float) -> np.ndarray:
        """``(rows, 2)``: each row's low and high end (``±inf`` when the level is beyond the scores)."""
        half = self.quantile(level) * scale
        return np.stack([predictions - half, predictions + half], axis=1)

    # -- persistence (inside the point model's artifact; see pricepipe.lean_model) --------------------

    def header(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "floor": self.floor,
            "calibration_rows": self.calibration_rows,
            "sigma_encoding": self._parts[1].to_dict(),
            "info": self.info,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"{ARRAY_PREFIX}sigma.{name}": value for name, value in self._parts[0].arrays().items()}
        out[f"{ARRAY_PREFIX}scores"] = self.scores
        return out

    @classmethod
    def from_artifact(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ConformalInterval:
        from pricepipe.lean_model import FeatureEncoding, LeanModelError, TreeArrays

        prefix = f"{ARRAY_PREFIX}sigma."
        sigma_arrays = {name.removeprefix(prefix): value for name, value in arrays.items() if name.startswith(prefix)}
        if f"{ARRAY_PREFIX}scores" not in arrays:
            raise LeanModelError("the artifact's interval section lacks its calibration scores")
        try:
            floor = float(header["floor"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LeanModelError(f"the artifact's interval section is malformed: {exc}") from exc
        trees, encoding = (
            TreeArrays.from_arrays(sigma_arrays),
            FeatureEncoding.from_dict(header.get("sigma_encoding", {})),
        )
        trees.check(len(encoding.features))  # a damaged σ is refused at load, as the point model is
        return cls((trees, encoding), arrays[f"{ARRAY_PREFIX}scores"], floor, header.get("info", {}))
