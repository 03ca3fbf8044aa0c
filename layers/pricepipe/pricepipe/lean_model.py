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
- ``roots`` (first node of each tree) and ``base_score`` (added to the sum of leaves);
- optionally ``cover``: per node, the training samples that reached it (format version 2). Only
  explanations read it (:meth:`LeanModel.explain_matrix`, path-dependent TreeSHAP in
  :mod:`pricepipe.lean_explain`); an artifact without it is written as version 1, and one of
  either version predicts alike;
- optionally an interval section (format version 3): ``interval.scores`` and the node arrays of a
  second, small ensemble σ(x) as ``interval.sigma.<name>``, with its encoding in the header's
  ``interval`` entry. Only prediction intervals read it (:mod:`pricepipe.lean_interval`); an
  artifact without it is written as version 2 (or 1) exactly as before.

Target transform: ``info["target_transform"]`` names what the trees were trained on, ``"identity"``
(the price; also when nothing is recorded) or ``"log"`` (the log of the price). Predictions are
always prices: for ``"log"`` the exponential of the summed trees. Explanations stay in the trees'
own scale (:attr:`LeanModel.contribution_scale`, ``"log_price"``), where the contributions add up.
An artifact of a log model is written as format version 3, so serving code older than the
transform refuses it instead of serving log prices as prices.

Evaluation. At load, every split is turned into a lookup: each feature's values are cut at the
distinct thresholds the trees use on it (at most 255 for histogram-based trainers), so a value
becomes a small integer *slot* (category codes are slots already; missing is the feature's last
slot), and each node gets one table entry per slot of its feature naming the child that slot leads
to, with where that child reads its own slot. Prediction then walks all trees for all rows at once,
one level per step, with two gathers and two additions per level — no Python per tree or per row —
and the answer equals the original model's to rounding (tests hold the two to 1e-6). Integer
columns (JSON numbers) find their slots through a per-feature table rather than a binary search; a
single row takes a path of its own, in plain Python up to the slots and on one-tree-long arrays after.
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
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import numpy as np

from pricepipe.errors import PricePipeError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from pricepipe.lean_explain import Explanation, TreeShap
    from pricepipe.lean_interval import ConformalInterval

FORMAT = "pricepipe.lean-trees"
# 2 adds the optional node array ``cover``; 3 the optional interval section and a target transform
# applied at predict time (log models). Each artifact is written with the lowest version that
# describes it; older ones are read as ever.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MAX_CATEGORIES = 254  # HistGradientBoosting's ceiling (max_bins 255 less the missing bin)

_SMALL_BATCH = 16  # up to this many rows, encoding in plain Python beats numpy's per-call overhead
_CHUNK_CELLS = 1 << 18  # rows x trees per traversal chunk: memory stays flat for any batch size
_LUT_SPAN = 4096  # integer features whose thresholds span at most this many integers get a lookup table
# the scale of the trees' summed output, by the target transform training recorded in ``info``
# ("target_transform"; none recorded: the price itself)
CONTRIBUTION_SCALES = {"identity": "price", "log": "log_price"}


class LeanModelError(PricePipeError, ValueError):
    """An artifact that cannot be read, or input that cannot be encoded, named in the message."""


NO_INTERVAL = (
    "this model cannot answer prediction intervals: its artifact has no interval section (an error"
    " model and calibration scores, exported since format version 3); retrain the model to get an"
    " artifact that can"
)
NO_COVER = (
    "this model cannot explain its predictions: its artifact has no node covers (the training samples"
    " per tree node, which TreeSHAP weighs paths by), as artifacts exported before format version 2 have"
    " not; retrain the model to get an artifact that can"
)


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
    cover: np.ndarray | None = None  # optional: training samples per node (explanations only)
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
        if self.cover is not None:
            self.cover = np.ascontiguousarray(self.cover, dtype=np.float64)

    @property
    def n_nodes(self) -> int:
        return len(self.feature)

    def check(self, n_features: int) -> None:  # noqa: C901, PLR0912 - one branch per inconsistency an artifact can have, each named in its error
        """Refuse arrays that are inconsistent or do not form a forest; computes :attr:`depth`."""
        n = self.n_nodes
        for name in ("threshold", "left", "right", "missing_left", "value", "cat_index", "gain"):
            if getattr(self, name).shape != (n,):
                raise LeanModelError(f"node array {name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.cat_bitsets.ndim != 2 or self.cat_known.ndim != 2 or self.cat_known.shape[0] != n_features:
            raise LeanModelError("categorical bitsets have the wrong shape")
        if self.cat_bitsets.shape[1] != self.cat_known.shape[1]:
            raise LeanModelError("categorical bitsets and known-category sets differ in width")
        if self.cover is not None and (self.cover.shape != (n,) or not np.all(self.cover >= 0)):
            raise LeanModelError(f"node array cover must hold {n} counts, none negative or NaN")
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
        if self.cover is not None:
            out["cover"] = self.cover
        return out

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray]) -> TreeArrays:
        names = [f.name for f in fields(cls) if f.name not in ("depth", "cover")]
        missing = [name for name in names if name not in data]
        if missing:
            raise LeanModelError(f"artifact lacks {', '.join(missing)}")
        arrays: dict[str, Any] = {name: data[name] for name in names if name != "base_score"}
        return cls(**arrays, base_score=float(data["base_score"]), cover=data.get("cover"))


def bitset_words(n_categories: int) -> int:
    """32-bit words needed for a bitset over ``n_categories`` codes (at least one)."""
    return max(1, (n_categories + 31) // 32)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (NaNs each kept). Not ``np.unique``: its first call imports numpy.ma,
    ~20 ms of a cold start."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _bits(bitsets: np.ndarray, rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Bit ``codes[i]`` of bitset ``rows[i]`` (rows of little-endian uint32 words; beyond them: 0)."""
    words = bitsets.shape[1]
    word = codes >> 5
    picked = bitsets[rows, np.minimum(word, words - 1)]
    return (word < words) & ((picked >> (codes & 31).astype(np.uint32)) & 1).astype(bool)


def _integer_lut(edges: np.ndarray) -> tuple[np.ndarray | None, int]:
    """``(lut, low)`` with ``lut[clip(v, low, low + len(lut) - 1) - low]`` the slot of any integer ``v``
    (``searchsorted(edges, v)``), or ``(None, 0)`` when the thresholds span too many integers.

    Below ``low`` (≤ the first edge) every value is slot 0, above the last entry (> the last edge)
    every value is ``len(edges)``, so clipping keeps the answer exact.
    """
    if not (len(edges) and np.isfinite(edges[0]) and np.isfinite(edges[-1])):
        return None, 0
    low, high = math.floor(edges[0]), math.ceil(edges[-1]) + 1
    if high - low > _LUT_SPAN or max(abs(low), abs(high)) >= 2**31:
        return None, 0
    return np.searchsorted(edges, np.arange(low, high + 1, dtype=np.float64)).astype(np.int32), low


# -- the model ---------------------------------------------------------------------------------------


class _NumericFeature:
    """How one numeric feature's values become slots (see :meth:`LeanModel._compile`). A plain class:
    a dataclass costs ~0.5 ms of every cold start to define."""

    __slots__ = ("column", "edge_list", "edges", "low", "lut", "missing", "name")

    def __init__(self, column: int, name: str, edges: np.ndarray, lut: np.ndarray | None, low: int) -> None:
        self.column = column  # in the slot matrix
        self.name = name
        self.edges = edges  # the distinct thresholds the trees use on it, ascending
        self.edge_list: list[float] = edges.tolist()  # the same, for bisect on the one-row path
        self.missing = len(edges) + 1  # NaN's slot
        # integer values → slot by one gather: lut[clip(v, low, low + len(lut) - 1) - low]; None when
        # the thresholds span too many integers for a small table
        self.lut = lut
        self.low = low


class _CategoricalFeature:
    __slots__ = ("codes", "column", "name")

    def __init__(self, column: int, name: str, codes: _Slots) -> None:
        self.column = column
        self.name = name
        self.codes = codes  # category → slot; anything else → the missing slot, len(categories)


class LeanModel:
    """A tree ensemble ready to predict from feature rows, columns or an encoded matrix."""

    def __init__(
        self,
        trees: TreeArrays,
        encoding: FeatureEncoding,
        info: Mapping[str, Any] | None = None,
        interval: ConformalInterval | None = None,
    ) -> None:
        self.trees = trees
        self.encoding = encoding
        self.info: dict[str, Any] = dict(info or {})
        self._log_target = _scale(self.info) == "log_price"
        self.interval = interval  # optional: what prediction intervals need (format version 3)
        trees.check(len(encoding.features))
        self._compile()
        self._explainer: TreeShap | None = None  # built by the first explanation asked for

    # -- building the lookup tables --------------------------------------------------------------

    def _compile(self) -> None:  # noqa: PLR0915 - the lookup tables are compiled in one pass, kept together so the hot path's layout is visible
        """Turn the node arrays into the tables :meth:`_walk` reads (see the module docstring).

        Slots: only the features some split uses get a column in the slot matrix, numbered in
        feature order, plus one last column that is always 0 (what a leaf reads). Each feature has
        its own slot count: a numeric one ``len(edges) + 2`` (below every threshold … above every
        one, then missing), a categorical one ``len(categories) + 1`` (the codes, then missing).

        Entries: an internal node owns one entry per slot of its feature, a leaf one entry; node
        ``v``'s entries start at ``base[v]``. The entry for (node, slot) holds the child that slot
        leads to as one int64, ``base[child] << column_bits | column the child reads``, so one gather
        per level yields both where the child's slot is and where its entries start, and
        ``value_next`` holds the child's leaf value for the last level. A leaf leads to itself.
        Sizing each node's entries by its own feature keeps the table small (a single width for
        every node, as large as the largest feature's, made it ~15 MB here, most of it never read).
        """
        t, enc = self.trees, self.encoding
        n = t.n_nodes
        internal = t.left >= 0
        cat_node = internal & (t.cat_index >= 0)
        num_node = internal & (t.cat_index < 0)
        categorical = np.array([enc.is_categorical(name) for name in enc.features], dtype=bool)
        if np.any(categorical[t.feature[cat_node]] == False) or np.any(categorical[t.feature[num_node]]):  # noqa: E712
            raise LeanModelError("split kinds disagree with the encoding (categorical vs numeric features)")

        used = _distinct(t.feature[internal]).tolist()
        column_of = np.zeros(len(enc.features), dtype=np.int64)
        column_of[used] = np.arange(len(used))
        widths = np.ones(len(used) + 1, dtype=np.int64)  # slots per column; the last (constant) column: 1
        rank = np.zeros(n, dtype=np.int64)  # a numeric split's threshold's position among its feature's edges
        numeric: list[_NumericFeature] = []
        categories: list[_CategoricalFeature] = []
        for column, j in enumerate(used):
            name = enc.features[j]
            if categorical[j]:
                widths[column] = len(enc.categories[name]) + 1
                categories.append(_CategoricalFeature(column, name, _Slots(enc.codes[name], len(enc.categories[name]))))
                continue
            on_j = num_node & (t.feature == j)
            edges = _distinct(t.threshold[on_j])
            if np.any(np.isnan(edges)):
                raise LeanModelError(f"a split on {name} has no threshold")
            rank[on_j] = np.searchsorted(edges, t.threshold[on_j])
            widths[column] = len(edges) + 2
            numeric.append(_NumericFeature(column, name, edges, *_integer_lut(edges)))

        node_column = np.where(internal, column_of[t.feature], len(used))
        node_width = np.where(internal, widths[node_column], 1)
        # Entries are laid out numeric nodes first, then categorical ones, then leaves (any order
        # works: a node's entries only need to be contiguous). A numeric node's children form three
        # runs — left for slots up to its threshold's rank, right above, then the missing slot's —
        # so its entries come from one np.repeat, not from per-entry work: loading stays ~10 ms
        # (cold start) for ~350,000 entries.
        blocks = (np.flatnonzero(num_node), np.flatnonzero(cat_node), np.flatnonzero(~internal))
        base = np.zeros(n, dtype=np.int64)
        start = 0
        for nodes in blocks:
            ends = np.cumsum(node_width[nodes]) + start
            base[nodes] = ends - node_width[nodes]
            start = int(ends[-1]) if len(nodes) else start
        total = start
        if total >= 2**31:
            raise LeanModelError(f"ensemble too large for the lookup tables ({total} entries)")
        nodes = blocks[0]
        missing_child = np.where(t.missing_left[nodes], t.left[nodes], t.right[nodes])
        lengths = np.stack([rank[nodes] + 1, node_width[nodes] - 2 - rank[nodes], np.ones_like(nodes)], axis=1)
        children = np.stack([t.left[nodes], t.right[nodes], missing_child], axis=1).astype(np.int64)
        numeric_children = np.repeat(children.ravel(), lengths.ravel())
        nodes = blocks[1]
        owner = np.repeat(nodes, node_width[nodes])  # the categorical node each of its entries belongs to
        codes = np.arange(len(owner)) - (base[owner] - base[nodes[0]] if len(nodes) else 0)
        in_left = _bits(t.cat_bitsets, t.cat_index[owner], codes)
        known = _bits(t.cat_known, t.feature[owner], codes)
        missing = codes == node_width[owner] - 1
        go_right = np.where(missing | ~(in_left | known), ~t.missing_left[owner], ~in_left)
        categorical_children = np.where(go_right, t.right[owner], t.left[owner])
        child = np.concatenate([numeric_children, categorical_children, blocks[2]])

        # (one pass each over the ~350,000 entries: at a cold start these are fresh pages, ~1 ms per pass)
        self._column_bits = (len(used) + 1).bit_length()
        # the two fields apart serve one row: unpacking costs two numpy calls per level there, more
        # than the gather they save (~25% of the one-row walk)
        self._entry_base = base.take(child)
        self._entry_column = node_column.take(child)
        self._entries = np.left_shift(self._entry_base, self._column_bits)
        self._entries |= self._entry_column
        self._value_next = np.where(internal, 0.0, t.value).take(child)
        self._root_base = base[t.roots]
        self._root_column = node_column[t.roots]
        self._columns = len(used) + 1
        self._numeric = numeric
        self._categorical = categories
        self._depth = t.depth

    # -- properties ------------------------------------------------------------------------------

    @property
    def features(self) -> tuple[str, ...]:
        return self.encoding.features

    @property
    def n_trees(self) -> int:
        return len(self._root_base)

    @property
    def max_depth(self) -> int:
        return self._depth

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature (zero for features no split uses)."""
        t = self.trees
        internal = t.left >= 0
        totals = np.bincount(t.feature[internal], weights=t.gain[internal], minlength=len(self.features))
        return {name: float(v) for name, v in zip(self.features, totals, strict=True)}

    # -- explanations ----------------------------------------------------------------------------

    @property
    def can_explain(self) -> bool:
        """Whether the artifact carries the node covers that explanations need (format version 2)."""
        return self.trees.cover is not None

    @property
    def contribution_scale(self) -> str:
        """What the trees' summed output, and so each contribution, is measured in: ``"price"``, or
        ``"log_price"`` for a model trained on the log of the price (``info["target_transform"]``
        ``"log"``; none recorded: ``"price"``). Predictions are prices either way."""
        return _scale(self.info)

    def explain_rows(self, rows: Sequence[Mapping[str, Any]]) -> Explanation:
        """:meth:`explain_matrix` for feature records (as :meth:`predict_rows` takes them)."""
        return self.explain_matrix(self.encoding.encode_rows(rows))

    def explain_columns(self, columns: Mapping[str, Any]) -> Explanation:
        """:meth:`explain_matrix` for columns of feature values (as :meth:`predict_columns` takes them)."""
        return self.explain_matrix(self.encoding.encode_columns(columns))

    def explain_matrix(self, matrix: np.ndarray) -> Explanation:
        """Each row's prediction split into one contribution per feature: path-dependent TreeSHAP
        (:mod:`pricepipe.lean_explain`), as LightGBM's ``pred_contrib`` computes it. Per row,
        ``base_value`` plus the contributions is the model's output in :attr:`contribution_scale`.

        Raises :class:`LeanModelError` for an artifact without node covers (:attr:`can_explain`).
        The explainer's tables are built by the first call (a few ms), never at load.
        """
        x = np.asarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise LeanModelError(f"expected a matrix with {len(self.features)} columns, got shape {x.shape}")
        if self._explainer is None:
            if self.trees.cover is None:
                raise LeanModelError(NO_COVER)
            from pricepipe.lean_explain import TreeShap

            enc = self.encoding
            self._explainer = TreeShap(self.trees, {enc.index[name]: len(v) for name, v in enc.categories.items()})
        return self._explainer.explain(x, self.features, self.contribution_scale)

    # -- prediction intervals ----------------------------------------------------------------------

    @property
    def can_interval(self) -> bool:
        """Whether the artifact carries an interval section (format version 3, exported by training)."""
        return self.interval is not None

    def _conformal(self) -> ConformalInterval:
        if self.interval is None:
            raise LeanModelError(NO_INTERVAL)
        return self.interval

    def intervals_rows(self, rows: Sequence[Mapping[str, Any]], predictions: np.ndarray, level: float) -> np.ndarray:
        """``(rows, 2)`` low and high ends at ``level`` around ``predictions`` (this model's, on the
        price scale) for feature records (:mod:`pricepipe.lean_interval`)."""
        conformal = self._conformal()
        return conformal.bounds(predictions, conformal.scale_rows(rows), level)

    def intervals_columns(self, columns: Mapping[str, Any], predictions: np.ndarray, level: float) -> np.ndarray:
        """:meth:`intervals_rows` for columns of feature values."""
        conformal = self._conformal()
        return conformal.bounds(predictions, conformal.scale_columns(columns), level)

    def with_interval(self, interval: ConformalInterval | None) -> LeanModel:
        return LeanModel(self.trees, self.encoding, self.info, interval)

    # -- prediction ------------------------------------------------------------------------------

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Predictions for feature records (dicts keyed by feature name; missing keys are missing values)."""
        if len(rows) == 1:
            return self._to_price(self._walk_one(self._slots_of_row(rows[0])))
        if len(rows) <= _SMALL_BATCH:
            return self._predict_slots(np.array([self._slots_of_row(row) for row in rows], dtype=np.int64))
        names = [f.name for f in self._numeric] + [f.name for f in self._categorical]
        return self.predict_columns(_transpose(rows, names))

    def predict_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Predictions for columns of feature values (one sequence or array per feature)."""
        names = [f.name for f in self._numeric] + [f.name for f in self._categorical]
        n = _column_length(columns, names) if names else _column_length(columns, self.features[:1])
        slots = np.zeros((n, self._columns), dtype=np.int64)
        for f in self._numeric:
            values = _column(columns, f.name)
            if f.lut is not None and isinstance(values, np.ndarray) and values.dtype.kind == "i":
                # JSON integers arrive as int64 arrays: one gather instead of a binary search and a NaN check
                slots[:, f.column] = f.lut.take(np.clip(values, f.low, f.low + len(f.lut) - 1) - f.low)
                continue
            x = _floats(values, f.name)
            found = np.searchsorted(f.edges, x)
            found[np.isnan(x)] = f.missing
            slots[:, f.column] = found
        for c in self._categorical:
            values = _column(columns, c.name)
            try:
                if hasattr(values, "dictionary") and hasattr(values, "indices"):
                    # an Arrow dictionary column (batch scoring): each distinct value looked up once
                    lut = np.fromiter(map(c.codes.__getitem__, values.dictionary.to_pylist()), dtype=np.int64)
                    lut = np.append(lut, c.codes.missing)  # a null index is a missing value
                    slots[:, c.column] = lut.take(values.indices.fill_null(len(lut) - 1).to_numpy())
                    continue
                slots[:, c.column] = np.fromiter(map(c.codes.__getitem__, values), dtype=np.int32, count=n)
            except TypeError as exc:
                raise LeanModelError(f"feature {c.name!r} must hold category values: {exc}") from exc
        return self._predict_slots(slots)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Predictions for an already encoded matrix (:meth:`FeatureEncoding.encode_columns`)."""
        return self._to_price(self.output_matrix(matrix))

    def output_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """The trees' summed output for an encoded matrix, in :attr:`contribution_scale` (the log of
        the price for a log model; what :meth:`predict_matrix` turns into prices)."""
        x_all = np.asarray(matrix, dtype=np.float64)
        if x_all.ndim != 2 or x_all.shape[1] != len(self.features):
            raise LeanModelError(f"expected a matrix with {len(self.features)} columns, got shape {x_all.shape}")
        slots = np.zeros((len(x_all), self._columns), dtype=np.int64)
        index = self.encoding.index
        for f in self._numeric:
            x = x_all[:, index[f.name]]
            found = np.searchsorted(f.edges, x)
            found[np.isnan(x)] = f.missing
            slots[:, f.column] = found
        for c in self._categorical:
            x = x_all[:, index[c.name]]
            known = c.codes.missing
            with np.errstate(invalid="ignore"):
                valid = (x >= 0) & (x < known)
            slots[:, c.column] = np.where(valid, np.nan_to_num(x), known).astype(np.int32)
        return self._output_slots(slots)

    def _slots_of_row(self, row: Mapping[str, Any]) -> list[int]:
        """One record's slots in plain Python (numpy's per-call overhead would cost more here)."""
        slots = [0] * self._columns
        for f in self._numeric:
            value = row.get(f.name)
            if value is None:
                slots[f.column] = f.missing
                continue
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise LeanModelError(f"feature {f.name!r} must be numeric, got {value!r}") from exc
            slots[f.column] = f.missing if math.isnan(number) else bisect_left(f.edge_list, number)
        for c in self._categorical:
            try:
                slots[c.column] = c.codes[row.get(c.name)]
            except TypeError as exc:
                raise LeanModelError(f"feature {c.name!r} must hold category values: {exc}") from exc
        return slots

    def _predict_slots(self, slots: np.ndarray) -> np.ndarray:
        return self._to_price(self._output_slots(slots))

    def _to_price(self, output: np.ndarray) -> np.ndarray:
        """The trees' summed output as prices: its exponential for a model trained on log price."""
        return np.exp(output) if self._log_target else output

    def _output_slots(self, slots: np.ndarray) -> np.ndarray:
        n = len(slots)
        if n == 0:
            return np.empty(0, dtype=np.float64)
        chunk = max(1, _CHUNK_CELLS // self.n_trees)
        if n <= chunk:
            return self._walk(slots)
        return np.concatenate([self._walk(slots[i : i + chunk]) for i in range(0, n, chunk)])

    def _walk(self, slots: np.ndarray) -> np.ndarray:
        """All trees for all rows of ``slots`` (rows x columns, int64, C order), one level per step.

        A step is two gathers and four cheap operations over rows x trees: the entry of (node, slot)
        unpacks into the child's slot column and its entries' base, and base + the row's slot in
        that column is the next entry. Everything is int64: numpy converts any other index type
        before a gather (a pass of its own), and mixed-type arithmetic goes through a slower loop.
        """
        n = len(slots)
        flat = slots.ravel()
        row = np.arange(0, n * self._columns, self._columns, dtype=np.int64)[:, None]  # each row's offset in flat
        slot = slots.take(self._root_column, axis=1)  # (rows, trees): every row's slot at every root
        entry = np.add(self._root_base, slot)
        if self._depth > 1:
            where = np.empty_like(entry)
            packed = np.empty_like(entry)
            bits, mask = self._column_bits, (1 << self._column_bits) - 1
            # every index is in range by construction (checked at load), so "wrap" never wraps; it
            # only skips the bounds check, a third of a gather's time
            for _ in range(self._depth - 1):
                self._entries.take(entry, out=packed, mode="wrap")
                np.bitwise_and(packed, mask, out=where)
                where += row
                flat.take(where, out=slot, mode="wrap")
                np.right_shift(packed, bits, out=entry)
                entry += slot
        return self._value_next.take(entry, mode="wrap").sum(axis=1) + self.trees.base_score

    def _walk_one(self, slots: list[int]) -> np.ndarray:
        """:meth:`_walk` for a single row: ~20 numpy calls on arrays one tree long."""
        flat = np.array(slots, dtype=np.int64)
        entry = self._root_base + flat.take(self._root_column)
        for _ in range(self._depth - 1):
            entry = self._entry_base.take(entry, mode="wrap") + flat.take(self._entry_column.take(entry, mode="wrap"))
        return np.array([self._value_next.take(entry, mode="wrap").sum() + self.trees.base_score])

    # -- persistence -----------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        # without an interval section or a log target the artifact is exactly a version 2 one, and
        # without covers too a version 1 one: older readers still read it
        version = 3 if self.interval is not None or self._log_target else 2 if self.trees.cover is not None else 1
        header = {
            "format": FORMAT,
            "format_version": version,
            "encoding": self.encoding.to_dict(),
            "n_trees": self.n_trees,
            "max_depth": self.max_depth,
            "info": self.info,
        }
        if self.interval is not None:
            header["interval"] = self.interval.header()
        return header

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        header = np.array(json.dumps(self.header(), default=str, sort_keys=True))
        arrays: dict[str, Any] = self.trees.arrays()
        if self.interval is not None:
            arrays.update(self.interval.arrays())
        np.savez_compressed(buffer, header=header, **arrays)
        return buffer.getvalue()

    def with_info(self, **info: Any) -> LeanModel:
        """The same trees with more ``info`` (e.g. the registered version, known only after registering)."""
        return LeanModel(self.trees, self.encoding, {**self.info, **info}, self.interval)

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
        if header.get("format_version") not in READABLE_VERSIONS:
            raise LeanModelError(
                f"lean model format version {header.get('format_version')} is not supported (this code reads"
                f" {', '.join(map(str, READABLE_VERSIONS))}): retrain or upgrade the serving package"
            )
        encoding = FeatureEncoding.from_dict(header.get("encoding", {}))
        return cls(TreeArrays.from_arrays(arrays), encoding, header.get("info", {}), _interval_section(header, arrays))


def _interval_section(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ConformalInterval | None:
    """The artifact's optional interval section (format version 3), or None."""
    section = header.get("interval")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise LeanModelError("the artifact's interval section is malformed: not an object")
    from pricepipe.lean_interval import ConformalInterval

    return ConformalInterval.from_artifact(section, arrays)


def _scale(info: Mapping[str, Any]) -> str:
    """The scale of the trees' summed output, by ``info["target_transform"]`` (none: the price)."""
    transform = info.get("target_transform") or "identity"
    try:
        return CONTRIBUTION_SCALES[transform]
    except (KeyError, TypeError):
        raise LeanModelError(f"unknown target transform {transform!r}: cannot name the output's scale") from None


def load_from_uri(uri: str, s3_client: S3Client | None = None) -> LeanModel:
    """Load an artifact from ``s3://bucket/key`` (with the given client), ``file://`` or a path."""
    if uri.startswith("s3://"):
        if s3_client is None:
            raise LeanModelError(f"{uri} is in S3 but no S3 client was given")
        from pricepipe.storage import split_uri

        bucket, key = split_uri(uri)
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return LeanModel.load(bytes(body))
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise LeanModelError(f"lean model artifact {uri} does not exist")
    return LeanModel.load(path.read_bytes())
