"""The scikit-learn face of a trained model, for MLflow: features frame → encoding → tree model.

MLflow logs this pipeline (sklearn flavour, pyfunc-loadable, with signature and input example) so a
person can load any version with ``mlflow.pyfunc.load_model`` and predict from a frame of contract
features. Serving does not use it: it loads the lean artifact exported from the same fitted trees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.pipeline import Pipeline

from pricepipe.lean_model import FeatureEncoding

# Types MLflow's skops format must be told to trust when it loads these pipelines (it refuses any
# type not on its own list); the list is fixed here rather than taken from whatever a file holds.
SKOPS_TRUSTED_TYPES = [
    "pricepipe.training.pipeline.ContractFeatures",
    "pricepipe.training.pipeline.PriceOutput",
    "lightgbm.sklearn.LGBMRegressor",
    "lightgbm.basic.Booster",
    "collections.OrderedDict",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # HistGradientBoosting's internal categorical preprocessor holds partial(check_array, ...)
    "functools.partial",
    "sklearn.utils.validation.check_array",
]


class ContractFeatures(TransformerMixin, BaseEstimator):
    """Frame of contract features → the float matrix of :class:`FeatureEncoding` (JSON-only state)."""

    def __init__(self, encoding: dict[str, Any] | None = None) -> None:
        self.encoding = encoding

    def fit(self, frame: Any, y: Any = None) -> ContractFeatures:
        self.n_features_in_ = len(self._encoding().features)
        return self

    def _encoding(self) -> FeatureEncoding:
        if self.encoding is None:
            raise ValueError("ContractFeatures needs an encoding")
        return FeatureEncoding.from_dict(self.encoding)

    def transform(self, frame: Any) -> np.ndarray:
        from pricepipe.training.data import encode

        return encode(frame, self._encoding())

    def __sklearn_is_fitted__(self) -> bool:
        return self.encoding is not None


class PriceOutput(RegressorMixin, BaseEstimator):
    """A model already trained on a transform of the price (the log), answering in price."""

    def __init__(self, model: Any = None, transform: str = "identity") -> None:
        self.model = model
        self.transform = transform

    def fit(self, x: Any, y: Any = None) -> PriceOutput:
        return self  # the model comes trained

    def predict(self, x: Any) -> np.ndarray:
        from pricepipe.training.search import to_price

        return to_price(self.transform, np.asarray(self.model.predict(x), dtype=np.float64))

    def __sklearn_is_fitted__(self) -> bool:
        return self.model is not None


def model_pipeline(encoding: FeatureEncoding, model: Any, transform: str = "identity") -> Pipeline:
    """A fitted pipeline from an encoding and a model already trained on its matrix (on ``transform``
    of the price: the pipeline answers in price either way)."""
    final = model if transform == "identity" else PriceOutput(model, transform)
    return Pipeline([("features", ContractFeatures(encoding.to_dict()).fit(None)), ("model", final)])
