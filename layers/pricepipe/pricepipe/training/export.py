"""Export fitted LightGBM and HistGradientBoosting models into the lean serving format.

Each exporter reads the trainer's own tree structures (LightGBM's ``dump_model()``, scikit-learn's
``TreePredictor`` node arrays) and resolves its missing-value rules into one ``missing_left`` flag per
node, so the lean evaluator needs no trainer-specific branches. Both also record each node's
``cover``, the training samples that reached it (LightGBM's ``internal_count`` / ``leaf_count``,
scikit-learn's ``count``), which per-prediction explanations weigh paths by.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pricepipe.lean_model import FeatureEncoding, LeanModelError, TreeArrays, bitset_words


class _Nodes:
    """Growing node arrays in one global numbering."""

    def __init__(self) -> None:
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.missing_left: list[bool] = []
        self.value: list[float] = []
        self.cat_index: list[int] = []
        self.gain: list[float] = []
        self.cover: list[float] = []
        self.cat_sets: list[list[int]] = []

    def add(self) -> int:
        self.feature.append(-1)
        self.threshold.append(np.nan)
        self.left.append(-1)
        self.right.append(-1)
        self.missing_left.append(False)
        self.value.append(0.0)
        self.cat_index.append(-1)
        self.gain.append(0.0)
        self.cover.append(0.0)
        return len(self.feature) - 1

    def add_category_set(self, codes: list[int]) -> int:
        self.cat_sets.append(codes)
        return len(self.cat_sets) - 1

    def finish(
        self, encoding: FeatureEncoding, roots: list[int], known: dict[int, list[int]], base_score: float
    ) -> TreeArrays:
        words = bitset_words(max([len(v) for v in encoding.categories.values()] + [1]))
        bitsets = np.zeros((len(self.cat_sets), words), dtype=np.uint32)
        for row, codes in enumerate(self.cat_sets):
            _set_bits(bitsets[row], codes)
        known_sets = np.zeros((len(encoding.features), words), dtype=np.uint32)
        for j, codes in known.items():
            _set_bits(known_sets[j], codes)
        return TreeArrays(
            feature=np.array(self.feature),
            threshold=np.array(self.threshold),
            left=np.array(self.left),
            right=np.array(self.right),
            missing_left=np.array(self.missing_left),
            value=np.array(self.value),
            cat_index=np.array(self.cat_index),
            cat_bitsets=bitsets,
            cat_known=known_sets,
            roots=np.array(roots),
            gain=np.array(self.gain),
            base_score=base_score,
            cover=np.array(self.cover),
        )


def _set_bits(row: np.ndarray, codes: list[int]) -> None:
    for code in codes:
        if code < 0 or code >= 32 * len(row):
            raise LeanModelError(f"category code {code} is outside the encoding")
        row[code >> 5] |= np.uint32(1 << (code & 31))


def lightgbm_trees(booster: Any, encoding: FeatureEncoding) -> TreeArrays:
    """Node arrays of a trained ``lightgbm.Booster`` fed the encoding's matrix."""
    dump = booster.dump_model()
    if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("num_class", 1) != 1:
        raise LeanModelError("only single-output (regression) LightGBM models can be exported")
    if dump.get("average_output"):
        raise LeanModelError("averaged-output (random forest) LightGBM models are not supported")
    if len(dump["feature_names"]) != len(encoding.features):
        raise LeanModelError(
            f"the booster has {len(dump['feature_names'])} features, the encoding {len(encoding.features)}"
        )
    nodes = _Nodes()
    roots = []
    for tree in dump["tree_info"]:
        root = nodes.add()
        roots.append(root)
        stack = [(tree["tree_structure"], root)]
        while stack:
            spec, i = stack.pop()
            if "leaf_value" in spec:
                nodes.value[i] = float(spec["leaf_value"])
                # a tree that is one leaf has no count: it only ever adds its value
                nodes.cover[i] = float(spec.get("leaf_count", 0))
                continue
            nodes.feature[i] = int(spec["split_feature"])
            nodes.cover[i] = float(spec["internal_count"])
            nodes.gain[i] = float(spec.get("split_gain", 0.0))
            if spec["decision_type"] == "==":
                # LightGBM sends missing and every category outside the set to the right
                codes = [int(c) for c in str(spec["threshold"]).split("||")]
                nodes.cat_index[i] = nodes.add_category_set(codes)
                nodes.missing_left[i] = False
            else:
                threshold = float(spec["threshold"])
                nodes.threshold[i] = threshold
                kind = spec["missing_type"]
                if kind == "NaN":
                    nodes.missing_left[i] = bool(spec["default_left"])
                elif kind == "None":
                    # no missing values in training: LightGBM reads NaN as 0.0
                    nodes.missing_left[i] = threshold >= 0.0
                else:
                    raise LeanModelError(f"LightGBM missing_type {kind!r} (zero_as_missing) is not supported")
            left, right = nodes.add(), nodes.add()
            nodes.left[i], nodes.right[i] = left, right
            stack.append((spec["left_child"], left))
            stack.append((spec["right_child"], right))
    known = {encoding.index[name]: list(range(len(values))) for name, values in encoding.categories.items()}
    return nodes.finish(encoding, roots, known, 0.0)


def hist_gradient_boosting_trees(model: Any, encoding: FeatureEncoding) -> TreeArrays:
    """Node arrays of a fitted ``HistGradientBoostingRegressor`` fed the encoding's matrix.

    With categorical features, scikit-learn re-encodes its input: categorical columns move to the
    front and their values become ordinal codes of the values seen in training. Node features and
    category bitsets are mapped back to the encoding's columns and codes here.
    """
    n_features = len(encoding.features)
    if model.n_features_in_ != n_features:
        raise LeanModelError(f"the model has {model.n_features_in_} features, the encoding {n_features}")
    if model.n_trees_per_iteration_ != 1:
        raise LeanModelError("only single-output (regression) models can be exported")
    is_cat = model.is_categorical_
    if is_cat is None:
        original = np.arange(n_features)
        seen: list[np.ndarray] = []
    else:
        original = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)])
        ordinal = model._preprocessor.named_transformers_["encoder"]
        seen = [c[~np.isnan(c)].astype(np.int64) for c in ordinal.categories_]
    known: dict[int, list[int]] = {}
    for k, j in enumerate(np.flatnonzero(is_cat) if is_cat is not None else []):
        known[int(j)] = seen[k].tolist()

    nodes = _Nodes()
    roots = []
    for (predictor,) in model._predictors:
        raw = predictor.nodes
        offset = len(nodes.feature)
        for _ in range(len(raw)):
            nodes.add()
        roots.append(offset)
        for local, node in enumerate(raw):
            i = offset + local
            nodes.cover[i] = float(node["count"])
            if node["is_leaf"]:
                nodes.value[i] = float(node["value"])
                continue
            remapped = int(node["feature_idx"])
            nodes.feature[i] = int(original[remapped])
            nodes.left[i] = offset + int(node["left"])
            nodes.right[i] = offset + int(node["right"])
            nodes.missing_left[i] = bool(node["missing_go_to_left"])
            nodes.gain[i] = float(node["gain"])
            if node["is_categorical"]:
                row = predictor.raw_left_cat_bitsets[node["bitset_idx"]]
                bits = np.unpackbits(row.astype("<u4").view(np.uint8), bitorder="little")
                codes = seen[remapped][np.flatnonzero(bits[: len(seen[remapped])])]
                nodes.cat_index[i] = nodes.add_category_set(codes.tolist())
            else:
                nodes.threshold[i] = float(node["num_threshold"])
    return nodes.finish(encoding, roots, known, float(np.ravel(model._baseline_prediction)[0]))
