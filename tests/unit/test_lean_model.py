"""The lean serving artifact predicts exactly what the trained model predicts, with numpy alone.

Models are trained here on real hotel_rates rows through the pipeline's own search families; rows to
predict include missing values in every feature and categories never seen in training.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pricepipe.contract import Contract
from pricepipe.features import build_features, feature_row
from pricepipe.lean_model import FeatureEncoding, LeanModel, LeanModelError, TreeArrays
from pricepipe.training.data import encode, fit_encoding, frame_columns
from pricepipe.training.search import FAMILIES, SearchSettings, single_threaded

TOLERANCE = 1e-6
FAMILY_NAMES = sorted(FAMILIES)


Frames = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
Trained = tuple[Any, Any, FeatureEncoding, LeanModel]


@pytest.fixture(scope="module")
def frames(hotel_rates: pd.DataFrame, contract: Contract) -> Frames:
    """Features of real bookings: an earlier part to train on, a later part to predict."""
    raw = hotel_rates.dropna(subset=["country"]).iloc[:6000]
    features = build_features(raw.assign(arrival_date=pd.to_datetime(raw["arrival_date"])), contract)
    features = features.reset_index(drop=True)
    train, later = features.iloc[:4500].copy(), features.iloc[4500:].copy().reset_index(drop=True)
    rng = np.random.default_rng(3)
    # training with gaps makes the trainers learn a direction for missing values ...
    for name in contract.feature_columns:
        train[name] = train[name].astype(object).where(rng.random(len(train)) > 0.03, None)
    # ... and the rows to predict have gaps in every feature and unseen categories
    for name in contract.feature_columns:
        later[name] = later[name].astype(object).where(rng.random(len(later)) > 0.08, None)
    for name in ("country", "agent", "meal"):
        later.loc[later.index % 5 == 1, name] = f"unseen-{name}"
    return train, later, raw


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def trained(request: pytest.FixtureRequest, frames: Frames, contract: Contract) -> Trained:
    train, _, _ = frames
    family = FAMILIES[request.param]
    encoding = fit_encoding(train, contract)
    categorical = [encoding.index[name] for name in contract.categorical_features]
    params = family.defaults(SearchSettings())
    x_train = encode(train, encoding)
    model = family.fit(params, 60, x_train, train[contract.target].to_numpy(dtype=float), categorical, seed=1)
    lean = LeanModel(family.export(model, encoding), encoding, {"target": contract.target})
    return family, model, encoding, lean


def test_lean_predictions_equal_the_trained_models_on_real_rows(trained: Trained, frames: Frames) -> None:
    family, model, encoding, lean = trained
    _, later, _ = frames
    matrix = encode(later, encoding)
    assert np.isnan(matrix).any(axis=0).all(), "every feature has missing values to route"

    original = family.predict(model, matrix)

    assert np.max(np.abs(lean.predict_matrix(matrix) - original)) < TOLERANCE


def test_every_input_path_gives_the_same_predictions(trained: Trained, frames: Frames) -> None:
    family, model, encoding, lean = trained
    _, later, _ = frames
    original = family.predict(model, encode(later, encoding))
    columns = frame_columns(later, encoding)
    records = [{name: columns[name][i] for name in encoding.features} for i in range(len(later))]

    assert np.max(np.abs(lean.predict_columns(columns) - original)) < TOLERANCE
    assert np.max(np.abs(lean.predict_rows(records) - original)) < TOLERANCE  # large-batch path
    for i in range(0, 40, 7):  # one-row path (pure Python encoding)
        assert abs(lean.predict_rows([records[i]])[0] - original[i]) < TOLERANCE


def test_integer_columns_small_batches_and_chunks_predict_as_the_float_path(trained: Trained, frames: Frames) -> None:
    """Paths beside the columns-of-floats one: int64 columns (JSON integers) find their slots through
    per-feature lookup tables, even far outside the thresholds' range; 2 to 16 records are encoded in
    Python; a batch larger than one traversal chunk is walked in parts."""
    _, _, encoding, lean = trained
    _, later, _ = frames
    columns = frame_columns(later, encoding)
    rng = np.random.default_rng(5)
    as_int, as_float = {}, {}
    for name, values in columns.items():
        if encoding.is_categorical(name):
            as_int[name] = as_float[name] = values
            continue
        x = np.round(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=3.0)).astype(np.int64)
        x[rng.random(len(x)) < 0.02] = -(10**12)
        x[rng.random(len(x)) < 0.02] = 10**15
        as_int[name], as_float[name] = x, x.astype(np.float64)
    assert np.array_equal(lean.predict_columns(as_int), lean.predict_columns(as_float))

    records = [{name: columns[name][i] for name in encoding.features} for i in range(12)]
    small = lean.predict_rows(records)  # the small-batch path
    assert np.max(np.abs(small - lean.predict_columns({k: v[:12] for k, v in columns.items()}))) < TOLERANCE

    repeats = 1 + (1 << 18) // (lean.n_trees * len(later))  # past one chunk of rows x trees
    tiled = {name: np.tile(np.asarray(values), repeats) for name, values in columns.items()}
    assert np.array_equal(lean.predict_columns(tiled), np.tile(lean.predict_columns(columns), repeats))


def _two_splits() -> TreeArrays:
    """x <= 0.5 → 10; else x <= 100000.5 → 20; else 30 (thresholds too far apart for a lookup table)."""
    return TreeArrays(
        feature=np.array([0, -1, 0, -1, -1]),
        threshold=np.array([0.5, np.nan, 100000.5, np.nan, np.nan]),
        left=np.array([1, -1, 3, -1, -1]),
        right=np.array([2, -1, 4, -1, -1]),
        missing_left=np.array([False, False, True, False, False]),
        value=np.array([0.0, 10.0, 0.0, 20.0, 30.0]),
        cat_index=np.array([-1, -1, -1, -1, -1]),
        cat_bitsets=np.zeros((0, 1)),
        cat_known=np.zeros((1, 1)),
        roots=np.array([0]),
        gain=np.array([1.0, 0.0, 1.0, 0.0, 0.0]),
    )


def test_integers_beyond_a_lookup_tables_span_are_searched() -> None:
    lean = LeanModel(_two_splits(), FeatureEncoding(["x"], {}))
    values = [-5, 0, 1, 100000, 100001, 10**18]

    assert lean.predict_columns({"x": np.array(values, dtype=np.int64)}).tolist() == [10, 10, 20, 20, 30, 30]
    assert lean.predict_columns({"x": [float(v) for v in values]}).tolist() == [10, 10, 20, 20, 30, 30]
    assert lean.predict_rows([{"x": None}, {"x": float("nan")}]).tolist() == [20.0, 20.0]  # missing: right, then left


def test_an_unseen_category_is_read_as_missing(trained: Trained, frames: Frames) -> None:
    _, _, encoding, lean = trained
    _, later, _ = frames
    record = {name: frame_columns(later.iloc[[0]], encoding)[name][0] for name in encoding.features}

    unseen = lean.predict_rows([{**record, "country": "atlantis"}])[0]
    missing = lean.predict_rows([{**record, "country": None}])[0]

    assert unseen == missing


def test_serving_feature_rows_predict_like_the_training_frame(
    trained: Trained, frames: Frames, contract: Contract
) -> None:
    """features.feature_row (serving, one raw record at a time) feeds the model as build_features did."""
    _, _, encoding, lean = trained
    _, _, raw = frames
    records = raw.iloc[5000:5020].to_dict(orient="records")
    frame = build_features(raw.iloc[5000:5020].assign(arrival_date=pd.to_datetime(raw["arrival_date"])), contract)

    served = lean.predict_rows([feature_row(record, contract) for record in records])

    assert np.max(np.abs(served - lean.predict_matrix(encode(frame, encoding)))) < TOLERANCE


def test_the_artifact_round_trips_through_bytes(trained: Trained, frames: Frames) -> None:
    _, _, encoding, lean = trained
    _, later, _ = frames
    matrix = encode(later, encoding)

    loaded = LeanModel.load(lean.with_info(model_version="7").to_bytes())

    assert np.array_equal(loaded.predict_matrix(matrix), lean.predict_matrix(matrix))
    assert loaded.info["model_version"] == "7"
    assert loaded.features == encoding.features
    assert loaded.encoding.categories == encoding.categories


def test_feature_importance_covers_every_feature(trained: Trained) -> None:
    _, _, encoding, lean = trained
    importance = lean.feature_importance()
    assert list(importance) == list(encoding.features)
    assert sum(importance.values()) > 0


def test_a_missing_feature_is_named(trained: Trained) -> None:
    _, _, encoding, lean = trained
    columns = {name: [0.0] for name in encoding.features if name != "lead_time"}
    with pytest.raises(LeanModelError, match="'lead_time' is missing"):
        lean.predict_columns(columns)


def test_a_non_numeric_value_is_named(trained: Trained, frames: Frames) -> None:
    _, _, encoding, lean = trained
    _, later, _ = frames
    record = {name: frame_columns(later.iloc[[0]], encoding)[name][0] for name in encoding.features}
    with pytest.raises(LeanModelError, match="'lead_time' must be numeric"):
        lean.predict_rows([{**record, "lead_time": "soon"}])


def test_load_refuses_what_is_not_an_artifact() -> None:
    with pytest.raises(LeanModelError, match="not a lean model artifact"):
        LeanModel.load(b"definitely not a zip file")


def _single_split(left: int, right: int) -> TreeArrays:
    return TreeArrays(
        feature=np.array([0, -1, -1]),
        threshold=np.array([1.5, np.nan, np.nan]),
        left=np.array([left, -1, -1]),
        right=np.array([right, -1, -1]),
        missing_left=np.array([True, False, False]),
        value=np.array([0.0, 10.0, 20.0]),
        cat_index=np.array([-1, -1, -1]),
        cat_bitsets=np.zeros((0, 1)),
        cat_known=np.zeros((1, 1)),
        roots=np.array([0]),
        gain=np.array([1.0, 0.0, 0.0]),
    )


def test_a_hand_built_split_routes_values_and_missing() -> None:
    lean = LeanModel(_single_split(1, 2), FeatureEncoding(["x"], {}))
    assert lean.predict_columns({"x": [1.0, 1.5, 2.0, None]}).tolist() == [10.0, 10.0, 20.0, 10.0]


def test_arrays_that_are_not_a_forest_are_refused() -> None:
    with pytest.raises(LeanModelError, match="forest"):
        LeanModel(_single_split(0, 2), FeatureEncoding(["x"], {}))  # node 0 is its own child


def test_a_newer_format_version_is_refused(trained: Trained) -> None:
    import io
    import json

    _, _, _, lean = trained
    with np.load(io.BytesIO(lean.to_bytes())) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays.pop("header")))
    header["format_version"] = 99
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array(json.dumps(header)), **arrays)

    with pytest.raises(LeanModelError, match="format version 99 is not supported"):
        LeanModel.load(buffer.getvalue())


def test_the_serving_module_imports_numpy_and_nothing_heavy() -> None:
    code = (
        "import sys, pricepipe.lean_model\n"
        "heavy = {'pandas', 'sklearn', 'lightgbm', 'mlflow', 'scipy', 'pyarrow', 'matplotlib', 'psycopg'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tree_count_respects_the_serving_cap(frames: Frames, contract: Contract) -> None:
    """fit_scored caps trees at max_tree_levels // max_depth (the lean evaluator's cost)."""
    train, later, _ = frames
    encoding = fit_encoding(train, contract)
    categorical = [encoding.index[name] for name in contract.categorical_features]
    settings = SearchSettings(max_tree_levels=40, early_stopping_rounds=1000)
    later = later.dropna(subset=[contract.target])
    for family in FAMILIES.values():
        params = {**family.defaults(SearchSettings()), "max_depth": 4}
        n_trees, _ = family.fit_scored(
            params,
            "identity",
            encode(train, encoding),
            train[contract.target].to_numpy(dtype=float),
            encode(later, encoding),
            later[contract.target].to_numpy(dtype=float),
            categorical,
            settings,
        )
        assert n_trees <= 10


# -- explanations (TreeSHAP) ----------------------------------------------------------------------------


@pytest.mark.parametrize("trained", ["lightgbm"], indirect=True)
def test_contributions_equal_lightgbms_pred_contrib(trained: Trained, frames: Frames) -> None:
    """Path-dependent TreeSHAP from the lean artifact is LightGBM's own, on rows with missing values
    in every feature and unseen categories."""
    _, model, encoding, lean = trained
    _, later, _ = frames
    matrix = encode(later, encoding)

    expected = model.booster_.predict(matrix, pred_contrib=True)  # features..., then the expected value
    explanation = lean.explain_matrix(matrix)

    assert explanation.contributions.shape == (len(later), len(encoding.features))
    assert np.max(np.abs(explanation.contributions - expected[:, :-1])) < TOLERANCE
    assert abs(explanation.base_value - expected[0, -1]) < TOLERANCE
    assert explanation.scale == "price"


def test_contributions_add_up_to_the_prediction(trained: Trained, frames: Frames) -> None:
    family, model, encoding, lean = trained
    _, later, _ = frames
    matrix = encode(later, encoding)

    explanation = lean.explain_matrix(matrix)

    assert np.max(np.abs(explanation.outputs() - family.predict(model, matrix))) < TOLERANCE
    assert list(explanation.records()[0]) == list(encoding.features)  # every feature, in order


def test_every_input_path_explains_alike_and_long_paths_are_computed_as_tabulated_ones(
    trained: Trained, frames: Frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows, columns and the matrix explain alike; paths too long for the pattern tables take the
    direct recurrences, which give the tables' values."""
    from pricepipe import lean_explain

    _, _, encoding, lean = trained
    _, later, _ = frames
    part = later.iloc[:40]
    columns = frame_columns(part, encoding)
    records = [{name: columns[name][i] for name in encoding.features} for i in range(len(part))]
    tabulated = lean.explain_matrix(encode(part, encoding)).contributions

    assert np.max(np.abs(lean.explain_columns(columns).contributions - tabulated)) < 1e-9
    assert np.max(np.abs(lean.explain_rows(records).contributions - tabulated)) < 1e-9
    assert np.max(np.abs(lean.explain_rows(records[:1]).contributions - tabulated[:1])) < 1e-9
    monkeypatch.setattr(lean_explain, "_TABLE_MAX_LENGTH", 0)
    direct = LeanModel.load(lean.to_bytes())
    assert np.max(np.abs(direct.explain_matrix(encode(part, encoding)).contributions - tabulated)) < 1e-9


def _exact_shapley(lean: LeanModel, x: np.ndarray) -> np.ndarray:  # noqa: C901 - a brute-force Shapley reference, written plainly to be obviously right
    """Shapley values of the path-dependent value function, by enumerating every coalition of each
    tree's features: v(S) follows the row at splits on S and averages both children by cover
    elsewhere. Exponential, so for small trees only; independent of Algorithm 2's recurrences."""
    from itertools import combinations
    from math import factorial

    from pricepipe.lean_explain import TreeShap

    t = lean.trees
    assert t.cover is not None
    cover = t.cover
    explainer = TreeShap(t, {lean.encoding.index[k]: len(v) for k, v in lean.encoding.categories.items()})
    reach = explainer._reach(x)[:, explainer.edge_of[:-1]]  # per node: does the row go there
    phi = np.zeros((len(x), len(lean.features)))

    def value(goes_left: np.ndarray, node: int, coalition: frozenset[int]) -> float:
        left, right = int(t.left[node]), int(t.right[node])
        if left < 0:
            return float(t.value[node])
        if int(t.feature[node]) in coalition:
            return value(goes_left, left if goes_left[left] else right, coalition)
        both = cover[left] * value(goes_left, left, coalition) + cover[right] * value(goes_left, right, coalition)
        return float(both / cover[node])

    for r in range(len(x)):
        for root in t.roots.tolist():
            stack, used = [root], set()
            while stack:
                node = stack.pop()
                if t.left[node] >= 0:
                    used.add(int(t.feature[node]))
                    stack += [int(t.left[node]), int(t.right[node])]
            n = len(used)
            for i in used:
                others = sorted(used - {i})
                for size in range(n):
                    weight = factorial(size) * factorial(n - size - 1) / factorial(n)
                    for subset in combinations(others, size):
                        s = frozenset(subset)
                        phi[r, i] += weight * (value(reach[r], root, s | {i}) - value(reach[r], root, s))
    return phi


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_contributions_are_the_exact_shapley_values_of_small_trees(
    family_name: str, frames: Frames, contract: Contract
) -> None:
    """For HistGradientBoosting, which has no pred_contrib of its own, and LightGBM alike."""
    train, later, _ = frames
    family = FAMILIES[family_name]
    encoding = fit_encoding(train, contract)
    params = {**family.defaults(SearchSettings()), "max_depth": 3}
    x_train = encode(train, encoding)
    categorical = [encoding.index[name] for name in contract.categorical_features]
    model = family.fit(params, 6, x_train, train[contract.target].to_numpy(dtype=float), categorical, seed=1)
    lean = LeanModel(family.export(model, encoding), encoding)
    x = encode(later.iloc[:8], encoding)

    explanation = lean.explain_matrix(x)

    assert np.max(np.abs(explanation.contributions - _exact_shapley(lean, x))) < TOLERANCE
    assert np.max(np.abs(explanation.outputs() - family.predict(model, x))) < TOLERANCE


def test_covers_round_trip_as_format_version_2(trained: Trained) -> None:
    import io
    import json

    _, _, _, lean = trained
    data = lean.to_bytes()
    with np.load(io.BytesIO(data)) as arrays:
        assert json.loads(str(arrays["header"]))["format_version"] == 2
        assert np.array_equal(arrays["cover"], lean.trees.cover)

    assert LeanModel.load(data).can_explain


def _without_cover(lean: LeanModel) -> bytes:
    """The artifact as format version 1 wrote it: no cover array, version 1 in the header."""
    import dataclasses

    old = LeanModel(dataclasses.replace(lean.trees, cover=None), lean.encoding, lean.info)
    return old.to_bytes()


def test_an_artifact_without_covers_loads_and_predicts_but_refuses_to_explain(trained: Trained, frames: Frames) -> None:
    import io
    import json

    _, _, encoding, lean = trained
    _, later, _ = frames
    matrix = encode(later, encoding)
    data = _without_cover(lean)
    with np.load(io.BytesIO(data)) as arrays:
        assert "cover" not in arrays.files and json.loads(str(arrays["header"]))["format_version"] == 1

    old = LeanModel.load(data)

    assert np.array_equal(old.predict_matrix(matrix), lean.predict_matrix(matrix))
    assert not old.can_explain
    with pytest.raises(LeanModelError, match="cannot explain its predictions: its artifact has no node covers"):
        old.explain_matrix(matrix)


def test_the_contribution_scale_follows_the_recorded_target_transform(trained: Trained) -> None:
    _, _, _, lean = trained
    assert lean.contribution_scale == "price"
    assert lean.with_info(target_transform="log").contribution_scale == "log_price"
    with pytest.raises(LeanModelError, match="unknown target transform 'sqrt'"):
        _ = lean.with_info(target_transform="sqrt").contribution_scale


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_a_log_model_predicts_prices_and_explains_in_log_price(
    family_name: str, frames: Frames, contract: Contract
) -> None:
    """A model trained on the log of the price: every prediction path answers the exponential of the
    trained model's output (within 1e-6 relative), explanations add up to that output in log price,
    and the artifact says so (format version 3, which serving code older than the transform refuses)."""
    import io
    import json

    train, later, _ = frames
    family = FAMILIES[family_name]
    encoding = fit_encoding(train, contract)
    categorical = [encoding.index[name] for name in contract.categorical_features]
    log_prices = np.log(train[contract.target].to_numpy(dtype=float))
    with single_threaded():
        model = family.fit(family.defaults(SearchSettings()), 40, encode(train, encoding), log_prices, categorical, 1)
    lean = LeanModel(family.export(model, encoding), encoding, {"target_transform": "log"})
    matrix = encode(later, encoding)
    output = family.predict(model, matrix)
    expected = np.exp(output)
    columns = frame_columns(later, encoding)
    records = [{name: columns[name][i] for name in encoding.features} for i in range(len(later))]

    loaded = LeanModel.load(lean.to_bytes())
    for prices in (lean.predict_matrix(matrix), lean.predict_columns(columns), loaded.predict_rows(records)):
        assert np.max(np.abs(prices / expected - 1)) < TOLERANCE
    for i in (0, 5, 11):
        assert abs(lean.predict_rows([records[i]])[0] / expected[i] - 1) < TOLERANCE  # one-row path
        assert abs(lean.predict_rows(records[i : i + 3])[0] / expected[i] - 1) < TOLERANCE  # small batch
    assert np.max(np.abs(lean.output_matrix(matrix) - output)) < TOLERANCE
    explanation = loaded.explain_matrix(matrix[:50])
    assert explanation.scale == "log_price"
    assert np.max(np.abs(explanation.outputs() - output[:50])) < TOLERANCE
    if family_name == "lightgbm":
        assert (
            np.max(np.abs(explanation.contributions - model.booster_.predict(matrix[:50], pred_contrib=True)[:, :-1]))
            < TOLERANCE
        )
    with np.load(io.BytesIO(lean.to_bytes())) as arrays:
        assert json.loads(str(arrays["header"]))["format_version"] == 3
    plain = LeanModel(lean.trees, encoding)
    with np.load(io.BytesIO(plain.to_bytes())) as arrays:
        assert json.loads(str(arrays["header"]))["format_version"] == 2
    assert np.array_equal(plain.predict_matrix(matrix), lean.output_matrix(matrix))


def test_predicting_never_imports_the_explainer(trained: Trained, tmp_path: Any) -> None:
    _, _, _, lean = trained
    artifact = tmp_path / "model.npz"
    artifact.write_bytes(lean.to_bytes())
    code = (
        "import sys, pricepipe.lean_model as m\n"
        f"model = m.LeanModel.load(open({str(artifact)!r}, 'rb').read())\n"
        f"model.predict_rows([{{}}]); model.predict_rows([{{}}] * 40)\n"
        "print('pricepipe.lean_explain' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
