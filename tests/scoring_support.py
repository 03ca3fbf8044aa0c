"""A small real model for the scoring tests: LightGBM on hotel_rates, exported to the lean artifact
with an interval section, and registered in the registry's mirror (model_registry.models)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pricepipe.contract import Contract
from pricepipe.features import build_features
from pricepipe.lean_interval import ConformalInterval
from pricepipe.lean_model import LeanModel
from pricepipe.training.data import encode, fit_encoding
from pricepipe.training.search import FAMILIES, SearchSettings

MODEL_NAME = "price-model"


def hotel_model(frame: pd.DataFrame, contract: Contract, rows: int = 3000, trees: int = 30) -> LeanModel:
    """A LightGBM model on the first ``rows`` bookings, with a conformal interval section (σ is the
    point model itself: a real, if crude, scale)."""
    train = frame.dropna(subset=["country"]).iloc[:rows]
    features = build_features(train.assign(arrival_date=pd.to_datetime(train["arrival_date"])), contract)
    encoding = fit_encoding(features, contract)
    family = FAMILIES["lightgbm"]
    params = {**family.defaults(SearchSettings()), "max_depth": 5}
    x, y = encode(features, encoding), features[contract.target].to_numpy(dtype=float)
    fitted = family.fit(params, trees, x, y, [encoding.index[n] for n in contract.categorical_features], seed=1)
    info = {"contract": {"name": contract.name, "version": contract.version}, "model_family": "lightgbm"}
    point = LeanModel(family.export(fitted, encoding), encoding, info)
    scale = point.predict_matrix(x)
    scores = np.abs(y - scale) / np.maximum(scale, 1.0)
    return point.with_interval(ConformalInterval(point, scores, 1.0))


def register(conn: Any, s3: Any, bucket: str, model: LeanModel, version: str, stage: str = "champion") -> str:
    """Upload the artifact where MLflow keeps registered models' files and mirror the version."""
    key = f"mlflow/price-model/{version}/serving/model.npz"
    s3.put_object(Bucket=bucket, Key=key, Body=model.to_bytes())
    uri = f"s3://{bucket}/{key}"
    conn.execute(
        "INSERT INTO model_registry.models (model_name, version, stage, serving_artifact_uri) VALUES (%s, %s, %s, %s)",
        (MODEL_NAME, version, stage, uri),
    )
    return uri


def api_predictions(model: LeanModel, contract: Contract, rows: pd.DataFrame) -> np.ndarray:
    """What the API's one-row path prices each row at (feature_row + predict_rows), for comparison."""
    from pricepipe.features import feature_row

    records = rows.drop(columns=[contract.target], errors="ignore").to_dict("records")
    return np.array([model.predict_rows([feature_row(r, contract)])[0] for r in records])
