"""The lean serving artifact: a trained tree ensemble loaded and evaluated with numpy alone.

The serving Lambda must fit 100 MB with a cold start under 0.6 s (DESIGN §5): lightgbm + numpy
alone is 176 MB, sklearn 200 MB, and importing mlflow costs a second. So training exports the
chosen model (LightGBM or HistGradientBoosting) into plain node arrays, and this module, which
imports only numpy and the standard library, evaluates them.

Artifact: one ``.npz`` written without pickles (``allow_pickle=False`` on load, so a file cannot run
code) holding

- ``header``: JSON text: format and version, the feature encoding (feature order, category → code
  maps) and free-form ``info`` from training (model name and version, contract, metrics, window);
- per node, in one global numbering over all trees: ``feature``, ``threshold`` (go left when
  ``x <= threshold``), ``left`` / ``right`` children (-1 on leaves), ``missing_left`` (where a
  missing value goes), ``value`` (leaf output), ``cat_index`` (row in ``cat_bitsets`` for a
  categorical split, else -1), ``gain`` (for importances);
- ``cat_bitsets``: one bitset per categorical split, bit *c* set when category code *c* goes left;
  ``cat_known``: per feature, the category codes the model knows (an unknown one goes the missing
  way, as HistGradientBoosting does; LightGBM's splits send everything outside the set right);
- ``roots`` (first node of each tree) and ``base_score`` (added to the sum of leaves).

Evaluation. At load, every split is turned into a lookup: each feature's values are cut at the
distinct thresholds the trees use on it (at most 255 for histogram-based trainers), so a value
becomes a small integer *slot* (category codes are slots already; missing is the last slot), and
each node gets a row ``next[node, slot]`` naming the child to visit. Prediction then walks all trees
for all rows at once, one level per step, with three gathers per level — no Python per tree or
per row, and the answer equals the original model's to rounding (tests hold the two to 1e-6).
"""

from __future__ import annotations

import io
import json
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from pricepipe.errors import PricePipeError

FORMAT = "pricepipe.lean-trees"
FORMAT_VERSION = 1
MAX_CATEGORIES = 254  # HistGradientBoosting's ceiling (max_bins 255 less the missing bin)

_SMALL_BATCH = 16  # up to this many rows, encoding in plain Python beats numpy's per-call overhead
_CHUNK_CELLS = 1 << 18  # rows x trees per traversal chunk: arrays stay in cache, memory stays flat


class LeanModelError(PricePipeError, ValueError):
    """An artifact that cannot be read, or input that cannot be encoded, named in the message."""


# -- feature encoding --------------------------------------------------------------------------------


class FeatureEncoding:
    """How feature values become the float matrix the trees were trained on.

    Numeric features are floats (missing as NaN; booleans as 0/1). A categorical feature becomes its
    category's position in ``categories[name]``; a missing value, or a category unseen in training,
    becomes NaN, which both trainers route as missing.
    """

    def __init__(self, features: Sequence[str], categories: Mapping[str, Sequence[Any]]) -> None:
        self.features: tuple[str, ...] = tuple(features)
        self.categories: dict[str, tuple[Any, ...]] = {name: tuple(values) for name, values in categories.items()}
        if len(set(self.features)) != len(self.features):
            raise LeanModelError("feature names repeat")
        strays = [name for name in self.categories if name not in self.features]
        if strays:
            raise LeanModelError(f"categories given for {', '.join(strays)}, which are not features")
        self.index = {name: j for j, name in enumerate(self.features)}
        self.codes: dict[str, dict[Any, int]] = {}
        for name, values in self.categories.items():
            if len(values) > MAX_CATEGORIES:
                raise LeanModelError(f"{name} has {len(values)} categories; at most {MAX_CATEGORIES} are supported")
            codes = {value: code for code, value in enumerate(values)}
            if len(codes) != len(values):
                raise LeanModelError(f"categories of {name} repeat")
            self.codes[name] = codes

    def is_categorical(self, name: str) -> bool:
        return name in self.categories

    def encode_columns(self, columns: Mapping[str, Any], n_rows: int | None = None) -> np.ndarray:
        """The float matrix (rows x features) for columns of values, one sequence per feature."""
        n = _column_length(columns, self.features) if n_rows is None else n_rows
        out = np.empty((n, len(self.features)), dtype=np.float64)
        for j, name in enumerate(self.features):
            values = _column(columns, name)
            codes = self.codes.get(name)
            if codes is None:
                out[:, j] = _floats(values, name)
            else:
                out[:, j] = np.fromiter((codes.get(v, math.nan) for v in values), dtype=np.float64, count=n)
        return out

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The float matrix for records (dicts such as :func:`pricepipe.features.feature_row` gives)."""
        return self.encode_columns({name: [row.get(name) for row in rows] for name in self.features}, len(rows))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "categories": {k: list(v) for k, v in self.categories.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoding:
        try:
            return cls(data["features"], data.get("categories", {}))
        except (KeyError, TypeError) as exc:
            raise LeanModelError(f"feature encoding is malformed: {exc}") from exc


def _column(columns: Mapping[str, Any], name: str) -> Any:
    try:
        return columns[name]
    except KeyError:
        raise LeanModelError(f"feature {name!r} is missing from the input") from None


def _column_length(columns: Mapping[str, Any], names: Sequence[str]) -> int:
    lengths = {len(_column(columns, name)) for name in names}
    if len(lengths) > 1:
        raise LeanModelError(f"feature columns differ in length: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _transpose(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Columns from records: one C-level tuple per row, then a zip, rather than a loop per feature."""
    if not names:
        return {}
    if len(names) == 1:
        return {names[0]: [row.get(names[0]) for row in rows]}
    getter = itemgetter(*names)
    try:
        tuples = [getter(row) for row in rows]
    except KeyError:
        tuples = [tuple(row.get(name) for name in names) for row in rows]
    return dict(zip(names, zip(*tuples, strict=True), strict=True)) if tuples else {name: [] for name in names}


class _Slots(dict[Any, int]):
    """Category → slot, where anything unseen (or missing) is the missing slot, without storing it."""

    def __init__(self, codes: Mapping[Any, int], missing: int) -> None:
        super().__init__(codes)
        self.missing = missing

    def __missing__(self, key: Any) -> int:
        return self.missing


def _floats(values: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LeanModelError(f"feature {name!r} must be numeric: {exc}") from exc


# -- the node arrays ---------------------------------------------------------------------------------


@dataclass
class TreeArrays:
    """A tree ensemble as flat node arrays (see the module docstring for each field's meaning)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    cat_index: np.ndarray
    cat_bitsets: np.ndarray
    cat_known: np.ndarray
    roots: np.ndarray
    gain: np.ndarray
    base_score: float = 0.0
    depth: int = field(default=0, compare=False)

    _DTYPES: ClassVar[dict[str, Any]] = {
        "feature": np.int32,
        "threshold": np.float64,
        "left": np.int32,
        "right": np.int32,
        "missing_left": np.bool_,
        "value": np.float64,
        "cat_index": np.int32,
        "cat_bitsets": np.uint32,
        "cat_known": np.uint32,
        "roots": np.int32,
        "gain": np.float64,
    }

    def __post_init__(self) -> None:
        for name, dtype in self._DTYPES.items():
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        self.base_score = float(self.base_score)

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    def check(self, n_features: int) -> None:
        """Refuse arrays that are inconsistent or do not form a forest; computes :attr:`depth`."""
        n = self.n_nodes
        for name in ("threshold", "left", "right", "missing_left", "value", "cat_index", "gain"):
            if getattr(self, name).shape != (n,):
                raise LeanModelError(f"node array {name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.cat_bitsets.ndim != 2 or self.cat_known.ndim != 2 or self.cat_known.shape[0] != n_features:
            raise LeanModelError("categorical bitsets have the wrong shape")
        if self.cat_bitsets.shape[1] != self.cat_known.shape[1]:
            raise LeanModelError("categorical bitsets and known-category sets differ in width")
        if len(self.roots) == 0:
            raise LeanModelError("the ensemble has no trees")
        internal = self.left >= 0
        if np.any(internal != (self.right >= 0)):
            raise LeanModelError("a node has one child")
        for name, bound in (("left", n), ("right", n), ("roots", n)):
            values = getattr(self, name)
            if np.any(values >= bound) or (name == "roots" and np.any(values < 0)):
                raise LeanModelError(f"{name} points outside the node arrays")
        if np.any((self.feature[internal] < 0) | (self.feature[internal] >= n_features)):
            raise LeanModelError("a split names a feature outside the encoding")
        cat = internal & (self.cat_index >= 0)
        if np.any(self.cat_index[cat] >= len(self.cat_bitsets)):
            raise LeanModelError("a categorical split points outside cat_bitsets")
        # every node is reached exactly once from the roots: a forest, so traversal ends
        seen = np.zeros(n, dtype=np.int64)
        frontier = self.roots
        depth = 0
        while True:
            np.add.at(seen, frontier, 1)
            inner = frontier[internal[frontier]]
            if len(inner) == 0:
                break
            frontier = np.concatenate([self.left[inner], self.right[inner]])
            depth += 1
            if depth > n:
                break
        if np.any(seen != 1):
            raise LeanModelError("the node arrays do not form a forest of trees")
        self.depth = depth

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in self._DTYPES}
        out["base_score"] = np.array(self.base_score, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray]) -> TreeArrays:
        names = [f.name for f in fields(cls) if f.name not in ("depth",)]
        missing = [name for name in names if name not in data]
        if missing:
            raise LeanModelError(f"artifact lacks {', '.join(missing)}")
        arrays: dict[str, Any] = {name: data[name] for name in names if name != "base_score"}
        return cls(**arrays, base_score=float(data["base_score"]))


def bitset_words(n_categories: int) -> int:
    """32-bit words needed for a bitset over ``n_categories`` codes (at least one)."""
    return max(1, (n_categories + 31) // 32)


def _unpack(bitsets: np.ndarray, width: int) -> np.ndarray:
    """Bitsets (rows of little-endian uint32 words) as a boolean matrix ``width`` wide."""
    bits = np.unpackbits(bitsets.astype("<u4").view(np.uint8), axis=1, bitorder="little").astype(bool)
    if bits.shape[1] >= width:
        return bits[:, :width]
    return np.pad(bits, ((0, 0), (0, width - bits.shape[1])))


# -- the model ---------------------------------------------------------------------------------------


class LeanModel:
    """A tree ensemble ready to predict from feature rows, columns or an encoded matrix."""

    def __init__(self, trees: TreeArrays, encoding: FeatureEncoding, info: Mapping[str, Any] | None = None) -> None:
        self.trees = trees
        self.encoding = encoding
        self.info: dict[str, Any] = dict(info or {})
        trees.check(len(encoding.features))
        self._compile()

    # -- building the lookup tables --------------------------------------------------------------

    def _compile(self) -> None:
        t, enc = self.trees, self.encoding
        n = t.n_nodes
        internal = t.left >= 0
        cat_node = internal & (t.cat_index >= 0)
        num_node = internal & (t.cat_index < 0)
        categorical = np.array([enc.is_categorical(name) for name in enc.features], dtype=bool)
        if np.any(categorical[t.feature[cat_node]] == False) or np.any(categorical[t.feature[num_node]]):  # noqa: E712
            raise LeanModelError("split kinds disagree with the encoding (categorical vs numeric features)")

        self._edges: dict[int, np.ndarray] = {}
        rank = np.zeros(n, dtype=np.int64)
        for j in np.unique(t.feature[num_node]).tolist():
            on_j = num_node & (t.feature == j)
            edges = np.unique(t.threshold[on_j])
            if np.any(np.isnan(edges)):
                raise LeanModelError(f"a split on {enc.features[j]} has no threshold")
            self._edges[j] = edges
            rank[on_j] = np.searchsorted(edges, t.threshold[on_j])
        most = max([len(e) + 1 for e in self._edges.values()] + [len(v) for v in enc.categories.values()] + [1])
        width = 1 << int(most).bit_length()  # > most, so the last slot is free for "missing"
        self._width_bits = width.bit_length() - 1
        self._missing = width - 1

        go_right = np.zeros((n, width), dtype=bool)
        slots = np.arange(width)
        go_right[num_node] = slots[None, :] > rank[num_node, None]
        if cat_node.any():
            in_left = _unpack(t.cat_bitsets, width)[t.cat_index[cat_node]]
            known = _unpack(t.cat_known, width)[t.feature[cat_node]]
            missing_right = ~t.missing_left[cat_node][:, None]
            go_right[cat_node] = np.where(in_left, False, np.where(known, True, missing_right))
        go_right[internal, self._missing] = ~t.missing_left[internal]
        following = np.where(go_right, t.right[:, None], t.left[:, None])
        following[~internal] = np.flatnonzero(~internal)[:, None]
        if n * width >= 2**31:
            raise LeanModelError(f"ensemble too large for the lookup tables ({n} nodes x {width} slots)")
        self._next = following.astype(np.int32).ravel()
        self._feature = np.where(internal, t.feature, 0).astype(np.int32)
        self._value = np.where(internal, 0.0, t.value)
        self._roots = t.roots
        self._depth = t.depth
        self._num_plan = [(j, enc.features[j], self._edges[j].tolist()) for j in sorted(self._edges)]
        used_cat = sorted(set(t.feature[cat_node].tolist()))
        self._cat_plan = [(j, enc.features[j], _Slots(enc.codes[enc.features[j]], self._missing)) for j in used_cat]

    # -- properties ------------------------------------------------------------------------------

    @property
    def features(self) -> tuple[str, ...]:
        return self.encoding.features

    @property
    def n_trees(self) -> int:
        return len(self._roots)

    @property
    def max_depth(self) -> int:
        return self._depth

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature (zero for features no split uses)."""
        t = self.trees
        internal = t.left >= 0
        totals = np.bincount(t.feature[internal], weights=t.gain[internal], minlength=len(self.features))
        return {name: float(v) for name, v in zip(self.features, totals, strict=True)}

    # -- prediction ------------------------------------------------------------------------------

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Predictions for feature records (dicts keyed by feature name; missing keys are missing values)."""
        if len(rows) <= _SMALL_BATCH:
            return self._predict_slots(self._slots_of_rows(rows))
        return self.predict_columns(_transpose(rows, [name for _, name, _ in self._plans()]))

    def predict_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Predictions for columns of feature values (one sequence or array per feature)."""
        names = [name for _, name, _ in self._plans()]
        n = _column_length(columns, names) if names else _column_length(columns, self.features[:1])
        slots = np.zeros((n, len(self.features)), dtype=np.int32)
        for j, name, _ in self._num_plan:
            x = _floats(_column(columns, name), name)
            slots[:, j] = np.searchsorted(self._edges[j], x, side="left")
            slots[np.isnan(x), j] = self._missing
        for j, name, codes in self._cat_plan:
            try:
                slots[:, j] = np.fromiter(map(codes.__getitem__, _column(columns, name)), dtype=np.int32, count=n)
            except TypeError as exc:
                raise LeanModelError(f"feature {name!r} must hold category values: {exc}") from exc
        return self._predict_slots(slots)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Predictions for an already encoded matrix (:meth:`FeatureEncoding.encode_columns`)."""
        x_all = np.asarray(matrix, dtype=np.float64)
        if x_all.ndim != 2 or x_all.shape[1] != len(self.features):
            raise LeanModelError(f"expected a matrix with {len(self.features)} columns, got shape {x_all.shape}")
        slots = np.zeros(x_all.shape, dtype=np.int32)
        for j, _, _ in self._num_plan:
            x = x_all[:, j]
            slots[:, j] = np.searchsorted(self._edges[j], x, side="left")
            slots[np.isnan(x), j] = self._missing
        for j, _, codes in self._cat_plan:
            x = x_all[:, j]
            with np.errstate(invalid="ignore"):
                valid = (x >= 0) & (x < len(codes))
            slots[:, j] = np.where(valid, np.nan_to_num(x), self._missing).astype(np.int32)
        return self._predict_slots(slots)

    def _plans(self) -> list[tuple[int, str, Any]]:
        return [*self._num_plan, *self._cat_plan]

    def _slots_of_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        missing = self._missing
        out = []
        for row in rows:
            slots = [0] * len(self.features)
            for j, name, edges in self._num_plan:
                value = row.get(name)
                if value is None:
                    slots[j] = missing
                    continue
                try:
                    number = float(value)
                except (TypeError, ValueError) as exc:
                    raise LeanModelError(f"feature {name!r} must be numeric, got {value!r}") from exc
                slots[j] = missing if math.isnan(number) else bisect_left(edges, number)
            for j, name, codes in self._cat_plan:
                try:
                    slots[j] = codes[row.get(name)]
                except TypeError as exc:
                    raise LeanModelError(f"feature {name!r} must hold category values: {exc}") from exc
            out.append(slots)
        return np.array(out, dtype=np.int32).reshape(len(rows), len(self.features))

    def _predict_slots(self, slots: np.ndarray) -> np.ndarray:
        n = len(slots)
        if n == 0:
            return np.empty(0, dtype=np.float64)
        chunk = max(1, _CHUNK_CELLS // self.n_trees)
        if n <= chunk:
            return self._walk(slots)
        return np.concatenate([self._walk(slots[i : i + chunk]) for i in range(0, n, chunk)])

    def _walk(self, slots: np.ndarray) -> np.ndarray:
        n, n_features = slots.shape
        flat = np.ascontiguousarray(slots).ravel()
        row_offset = (np.arange(n, dtype=np.int32) * np.int32(n_features))[:, None]
        node = np.empty((n, self.n_trees), dtype=np.int32)
        node[:] = self._roots
        where = np.empty_like(node)
        slot = np.empty_like(node)
        shift = self._width_bits
        # every index is in range by construction (checked at load), so "wrap" never wraps; it
        # only skips the bounds check, a third of a gather's time
        for _ in range(self._depth):
            np.take(self._feature, node, out=where, mode="wrap")
            np.add(where, row_offset, out=where)
            np.take(flat, where, out=slot, mode="wrap")
            np.left_shift(node, shift, out=node)
            np.bitwise_or(node, slot, out=node)
            np.take(self._next, node, out=node, mode="wrap")
        return self._value.take(node, mode="wrap").sum(axis=1) + self.trees.base_score

    # -- persistence -----------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "encoding": self.encoding.to_dict(),
            "n_trees": self.n_trees,
            "max_depth": self.max_depth,
            "info": self.info,
        }

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        header = np.array(json.dumps(self.header(), default=str, sort_keys=True))
        arrays: dict[str, Any] = self.trees.arrays()
        np.savez_compressed(buffer, header=header, **arrays)
        return buffer.getvalue()

    def with_info(self, **info: Any) -> LeanModel:
        """The same trees with more ``info`` (e.g. the registered version, known only after registering)."""
        return LeanModel(self.trees, self.encoding, {**self.info, **info})

    @classmethod
    def load(cls, source: bytes | str | Path | BinaryIO) -> LeanModel:
        """Read an artifact from bytes, a path or a binary file object."""
        stream: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
        try:
            with np.load(stream, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise LeanModelError(f"not a lean model artifact: {exc}") from exc
        if "header" not in arrays:
            raise LeanModelError("not a lean model artifact: no header")
        try:
            header = json.loads(str(arrays.pop("header")))
        except json.JSONDecodeError as exc:
            raise LeanModelError(f"lean model header is not JSON: {exc}") from exc
        if header.get("format") != FORMAT:
            raise LeanModelError(f"not a lean model artifact: format {header.get('format')!r}")
        if header.get("format_version") != FORMAT_VERSION:
            raise LeanModelError(
                f"lean model format version {header.get('format_version')} is not supported (this code reads"
                f" {FORMAT_VERSION}): retrain or upgrade the serving package"
            )
        encoding = FeatureEncoding.from_dict(header.get("encoding", {}))
        return cls(TreeArrays.from_arrays(arrays), encoding, header.get("info", {}))


def load_from_uri(uri: str, s3_client: Any | None = None) -> LeanModel:
    """Load an artifact from ``s3://bucket/key`` (with the given client), ``file://`` or a path."""
    if uri.startswith("s3://"):
        if s3_client is None:
            raise LeanModelError(f"{uri} is in S3 but no S3 client was given")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return LeanModel.load(bytes(body))
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise LeanModelError(f"lean model artifact {uri} does not exist")
    return LeanModel.load(path.read_bytes())
