"""Prediction intervals: the conformal quantile, their coverage on held-out rows of a heteroscedastic
dataset, and the artifact's interval section (format version 3) beside versions 1 and 2."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Any

import numpy as np
import pytest

from pricepipe.lean_interval import ConformalInterval
from pricepipe.lean_model import FeatureEncoding, LeanModel, LeanModelError
from pricepipe.training.intervals import conformal_interval, coverage, fit_sigma, tracking_metrics
from pricepipe.training.search import FAMILIES, SearchSettings

ENCODING = FeatureEncoding(["x", "noise", "kind"], {"kind": ["a", "b", "c"]})
CATEGORICAL = [2]
POINT = {**FAMILIES["lightgbm"].defaults(SearchSettings()), "max_depth": 5}


def heteroscedastic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (encoded), prices, and each row's true noise scale: from 1 at x = 0 to 21 at x = 10."""
    x = rng.uniform(0, 10, n)
    kind = rng.integers(0, 3, n).astype(np.float64)
    scale = 1 + 2 * x
    y = 100 + 8 * x + 15 * (kind == 1) + rng.normal(0, 1, n) * scale
    return np.column_stack([x, rng.uniform(-1, 1, n), kind]), y, scale


def fit_predict(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    family = FAMILIES["lightgbm"]
    return family.predict(family.fit(POINT, 80, x, y, CATEGORICAL, 3), x_new)


@pytest.fixture(scope="module")
def calibrated() -> dict[str, Any]:
    """σ and scores from 4,000 fit and 4,000 validation rows; 5,000 held-out rows priced by a model
    fitted on fit + validation, as the trainer's evaluation model is."""
    rng = np.random.default_rng(20261204)
    (xf, yf, _), (xv, yv, _), (xh, yh, scale) = (heteroscedastic(n, rng) for n in (4000, 4000, 5000))
    interval = conformal_interval((xf, yf), (xv, yv), fit_predict, ENCODING, CATEGORICAL, seed=5)
    predictions = fit_predict(np.vstack([xf, xv]), np.concatenate([yf, yv]), xh)
    return {"interval": interval, "x": xh, "y": yh, "scale": scale, "predictions": predictions}


def test_an_80_percent_interval_covers_77_to_83_percent_of_held_out_rows(calibrated: dict[str, Any]) -> None:
    measured = coverage(calibrated["interval"], calibrated["x"], calibrated["y"], calibrated["predictions"])

    assert 0.77 <= measured["coverage"]["0.8"] <= 0.83
    for level, share in measured["coverage"].items():
        assert abs(share - float(level)) <= 0.04, measured
    widths = [measured["mean_width"][k] for k in ("0.5", "0.8", "0.9", "0.95")]
    assert widths == sorted(widths) and widths[0] > 0


def test_widths_follow_each_rows_own_noise(calibrated: dict[str, Any]) -> None:
    interval: ConformalInterval = calibrated["interval"]
    bounds = interval.bounds(calibrated["predictions"], interval.scale_matrix(calibrated["x"]), 0.8)
    width = bounds[:, 1] - bounds[:, 0]

    assert np.all(bounds[:, 0] < calibrated["predictions"]) and np.all(calibrated["predictions"] < bounds[:, 1])
    assert np.corrcoef(width, calibrated["scale"])[0, 1] > 0.8
    noisy, quiet = calibrated["x"][:, 0] > 8, calibrated["x"][:, 0] < 2
    assert np.median(width[noisy]) > 3 * np.median(width[quiet])


def test_the_conformal_quantile_is_the_finite_sample_rank() -> None:
    sigma = fit_sigma(*heteroscedastic(200, np.random.default_rng(1))[::2], ENCODING, CATEGORICAL, seed=1)
    interval = ConformalInterval(sigma, np.arange(10, 0, -1, dtype=float), floor=0.1)  # scores 1..10, unsorted

    assert interval.calibration_rows == 10
    assert interval.quantile(0.5) == 6.0  # rank ceil(11 * 0.5) = 6
    assert interval.quantile(0.9) == 10.0  # rank ceil(9.9) = 10
    assert interval.quantile(0.01) == 1.0
    assert interval.quantile(0.95) == math.inf  # rank 11 > 10: the calibration rows cannot bound it
    big = ConformalInterval(sigma, np.arange(1, 3000, dtype=float), floor=0.1)  # n = 2999
    assert big.quantile(0.8) == 2400.0  # (n + 1) * 0.8 is 2400.0000000000005 in floats
    bounds = interval.bounds(np.array([100.0]), np.array([2.0]), 0.95)
    assert bounds[0, 0] == -math.inf and bounds[0, 1] == math.inf
    for level in (0.0, 1.0, -0.2, 1.5, math.nan):
        with pytest.raises(LeanModelError, match="strictly between 0 and 1"):
            interval.quantile(level)


def test_bad_calibration_is_refused() -> None:
    sigma = fit_sigma(*heteroscedastic(200, np.random.default_rng(1))[::2], ENCODING, CATEGORICAL, seed=1)
    for scores in (np.array([]), np.array([1.0, math.nan]), np.array([-1.0, 2.0])):
        with pytest.raises(LeanModelError, match="calibration scores"):
            ConformalInterval(sigma, scores, floor=0.1)
    with pytest.raises(LeanModelError, match="floor"):
        ConformalInterval(sigma, np.array([1.0]), floor=0.0)


def test_tracking_metrics_name_each_level() -> None:
    info = {"holdout_coverage": {"0.8": 0.79, "0.95": 0.94}, "holdout_mean_width": {"0.8": 40.0}}

    assert tracking_metrics(info) == {
        "interval.holdout_coverage_80": 0.79,
        "interval.holdout_coverage_95": 0.94,
        "interval.holdout_mean_width_80": 40.0,
    }


# -- the artifact ------------------------------------------------------------------------------------


def _point_model(calibrated: dict[str, Any]) -> LeanModel:
    x, y = calibrated["x"], calibrated["y"]
    family = FAMILIES["lightgbm"]
    return LeanModel(family.export(family.fit(POINT, 20, x, y, CATEGORICAL, 3), ENCODING), ENCODING, {"m": 1})


def _header(data: bytes) -> tuple[dict[str, Any], list[str]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return json.loads(str(arrays["header"])), list(arrays.files)


def test_intervals_round_trip_as_format_version_3(calibrated: dict[str, Any]) -> None:
    interval: ConformalInterval = calibrated["interval"]
    interval.info["holdout_coverage"] = {"0.8": 0.8}
    lean = _point_model(calibrated).with_interval(interval).with_info(model_version="4")

    data = lean.to_bytes()
    loaded = LeanModel.load(data)

    header, files = _header(data)
    assert header["format_version"] == 3 and header["interval"]["calibration_rows"] == interval.calibration_rows
    assert "interval.scores" in files and "interval.sigma.feature" in files
    assert loaded.can_interval and loaded.interval is not None
    assert loaded.info["model_version"] == "4" and loaded.interval.info["holdout_coverage"] == {"0.8": 0.8}
    rows = [dict(zip(ENCODING.features, (r[0], r[1], "abc"[int(r[2])]), strict=True)) for r in calibrated["x"][:40]]
    predictions = loaded.predict_rows(rows)
    expected = interval.bounds(predictions, interval.scale_matrix(calibrated["x"][:40]), 0.8)
    np.testing.assert_allclose(loaded.intervals_rows(rows, predictions, 0.8), expected, rtol=0, atol=1e-9)
    columns = {name: [row[name] for row in rows] for name in ENCODING.features}
    np.testing.assert_allclose(loaded.intervals_columns(columns, predictions, 0.8), expected, rtol=0, atol=1e-9)
    one = loaded.intervals_rows(rows[:1], loaded.predict_rows(rows[:1]), 0.8)
    np.testing.assert_allclose(one, expected[:1], rtol=0, atol=1e-9)


def test_artifacts_without_intervals_are_written_and_read_as_versions_2_and_1(calibrated: dict[str, Any]) -> None:
    lean = _point_model(calibrated)
    version_1 = LeanModel(dataclasses.replace(lean.trees, cover=None), lean.encoding, lean.info)

    for model, version in ((lean, 2), (version_1, 1)):
        header, files = _header(model.to_bytes())
        assert header["format_version"] == version and "interval" not in header
        assert not any(name.startswith("interval.") for name in files)
        old = LeanModel.load(model.to_bytes())
        assert not old.can_interval
        with pytest.raises(LeanModelError, match="cannot answer prediction intervals"):
            old.intervals_rows([{}], np.array([1.0]), 0.8)


def test_a_damaged_interval_section_is_named(calibrated: dict[str, Any]) -> None:
    data = _point_model(calibrated).with_interval(calibrated["interval"]).to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        kept = {name: arrays[name] for name in arrays.files if name != "interval.scores"}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **kept)

    with pytest.raises(LeanModelError, match="interval section lacks its calibration scores"):
        LeanModel.load(buffer.getvalue())
