"""Per-prediction explanations of a lean model: path-dependent TreeSHAP with numpy alone.

Each prediction is split into one contribution per feature: the SHAP values of path-dependent
TreeSHAP (Lundberg, Erion and Lee, "Consistent individualized feature attribution for tree
ensembles", 2018, Algorithm 2), as LightGBM's ``predict(..., pred_contrib=True)`` computes them. A
feature outside a coalition follows both children of a split on it, weighted by the training
samples each child received (the artifact's ``cover``). Per row, ``base_value`` (every tree's
cover-weighted mean leaf, summed, plus the base score) plus the contributions is the model's output.

How it is vectorised. Algorithm 2 walks each tree, extending a "unique path" of (feature, zero
fraction, one fraction) elements at every split and unwinding it at every leaf. Only the one
fractions depend on the row: a leaf's path, its features and its zero fractions (the share of the
cover the path keeps through the splits on each feature) are the tree's, and a one fraction is 1
when the row follows the path through every split on that feature, else 0. The weights EXTEND
builds are symmetric in the elements, so the state at a leaf depends only on the set of elements,
merged by feature as the algorithm's unwinding of a repeated feature merges them. So the tables
built here hold, per leaf, its path's merged features, zero fractions and the edges whose
indicators multiply into each one fraction, and EXTEND and UNWOUND-PATH-SUM run on arrays of
(path elements x rows x leaves), the leaves grouped by their path's length.

And since a leaf's ``m`` one fractions are bits, its contributions take one of ``2**m`` values: for
paths up to ``_TABLE_MAX_LENGTH`` features (the trainers' trees here are at most 8 deep) those are
computed once, when the explainer is built (the "v2" of Yang, "Fast TreeSHAP", 2021), and a call
decides every split for every row at once, packs each leaf's bits into a pattern and gathers: ~0.1 ms
a row rather than ~3 ms of the recurrences above, which longer paths still take.

Imported only when an explanation is asked for: the prediction path never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pricepipe.lean_model import LeanModelError, _bits

if TYPE_CHECKING:
    from pricepipe.lean_model import TreeArrays

_CHUNK_CELLS = 1 << 19  # path elements x rows x leaves per step (~4 MB a float array), for any batch
_REACH_CELLS = 1 << 22  # rows x nodes of split decisions held at once
_TABLE_MAX_LENGTH = 10  # paths of up to this many distinct features get their patterns tabulated ...
_TABLE_CELLS = 1 << 21  # ... while the tables hold at most this many floats (16 MB) in all


@dataclass(frozen=True)
class Explanation:
    """Contributions (rows x features, in ``features`` order) and the base value they add up from."""

    features: tuple[str, ...]
    contributions: np.ndarray
    base_value: float
    scale: str  # "price" or "log_price": what the model's summed output measures

    def records(self) -> list[dict[str, float]]:
        """One ``{feature: contribution}`` per row, every feature in each."""
        names = self.features
        return [dict(zip(names, row, strict=True)) for row in self.contributions.tolist()]

    def outputs(self) -> np.ndarray:
        """Per row, base value plus contributions: the model's output in :attr:`scale`."""
        return self.base_value + self.contributions.sum(axis=1)

    def mean_abs(self) -> dict[str, float]:
        """Mean absolute contribution per feature over the rows (a global importance)."""
        means = np.abs(self.contributions).mean(axis=0) if len(self.contributions) else np.zeros(len(self.features))
        return {name: float(v) for name, v in zip(self.features, means, strict=True)}


class _Group:
    """The leaves whose paths hold ``m`` distinct features, as arrays over (element, leaf)."""

    __slots__ = ("edges", "m", "offsets", "order", "present", "starts", "table", "value", "zero")

    def __init__(
        self,
        m: int,
        leaves: list[tuple[int, tuple[int, ...], tuple[float, ...], tuple[tuple[int, ...], ...]]],
        value: np.ndarray,
        always: int,
        edge_of: np.ndarray,
    ) -> None:
        self.m = m
        self.value = value[[leaf for leaf, _, _, _ in leaves]]  # (leaves,)
        features = np.array([feats for _, feats, _, _ in leaves], dtype=np.int64).T  # (m, leaves)
        self.zero = np.array([zeros for _, _, zeros, _ in leaves], dtype=np.float64).T[:, None, :]  # (m, 1, leaves)
        width = max(len(e) for _, _, _, edges in leaves for e in edges)
        # the child nodes a row must reach for each element's one fraction to be 1; padding: a
        # column of the reach matrix that is always true
        edges = np.full((m, len(leaves), width), always, dtype=np.int64)
        for j, (_, _, _, path) in enumerate(leaves):
            for i, element in enumerate(path):
                edges[i, j, : len(element)] = element
        self.edges = edge_of[edges]  # as columns of the decisions (TreeShap._reach)
        # contributions come out as (rows, leaf * m + element): summing them per feature is a
        # gather into feature order and one reduceat
        flat = features.T.ravel()
        self.order = np.argsort(flat, kind="stable")
        ordered = flat[self.order]
        self.starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        self.present = ordered[self.starts]
        # (leaves * 2**m, m): row leaf * 2**m + pattern holds the leaf's contributions for the one
        # fractions whose bits the pattern sets (bit i: element i); None: computed per call
        self.table: np.ndarray | None = None
        self.offsets = np.arange(len(leaves), dtype=np.int64) << m


class TreeShap:
    """Path-dependent TreeSHAP over a forest's node arrays (see the module docstring)."""

    def __init__(self, trees: TreeArrays, n_categories: Mapping[int, int]) -> None:  # noqa: PLR0915 - the explainer's tables are built in one pass over the trees' arrays
        """``n_categories``: per categorical feature (by index), how many categories it has."""
        t = trees
        if t.cover is None:
            raise LeanModelError("the node arrays carry no cover")
        cover = t.cover
        n = t.n_nodes
        internal = t.left >= 0
        # every node a split weighs: a tree that is a single leaf may carry no count
        weighed = np.concatenate([np.flatnonzero(internal), t.left[internal], t.right[internal]])
        if np.any(cover[weighed] <= 0):
            raise LeanModelError("a node's cover is zero: TreeSHAP cannot weigh the paths through it")
        self.n_features = n_features = t.cat_known.shape[0]
        # Decisions are laid out by edge, not by node: the splits' "goes left" columns, numeric splits
        # first, then the same negated ("goes right"), then one always-true column (a root, padding).
        # So they are written as three contiguous blocks rather than scattered by child.
        num = np.flatnonzero(internal & (t.cat_index < 0))
        cat = np.flatnonzero(internal & (t.cat_index >= 0))
        splits = np.concatenate([num, cat])
        self._n_num, self._n_splits = len(num), len(splits)
        edge_of = np.full(n + 1, 2 * len(splits), dtype=np.int64)
        edge_of[t.left[splits]] = np.arange(len(splits))
        edge_of[t.right[splits]] = len(splits) + np.arange(len(splits))
        self.edge_of = edge_of  # node -> its decision column
        # a numeric split reads its feature with NaN as -inf where missing goes left and as NaN where
        # it goes right (NaN <= anything is false, even a threshold of +inf, which HistGradientBoosting
        # uses to send missing values alone right): one gather from [x, NaN as -inf | x], one comparison
        self._num_column = np.where(t.missing_left[num], t.feature[num], t.feature[num] + n_features)
        self._num_threshold = t.threshold[num]
        # a categorical split looks its slot (code, or the missing slot after them) up in a table
        sizes = np.array([n_categories.get(int(j), 0) for j in t.feature[cat]], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes + 1)[:-1]]).astype(np.int64)
        owner = np.repeat(np.arange(len(cat)), sizes + 1)
        codes = np.arange(len(owner), dtype=np.int64) - offsets[owner]
        in_left = _bits(t.cat_bitsets, t.cat_index[cat][owner], codes)
        known = _bits(t.cat_known, t.feature[cat][owner], codes)
        missing = codes == sizes[owner]
        self._cat_table = np.where(missing | ~(in_left | known), t.missing_left[cat][owner], in_left)
        self._cat_feature, self._cat_sizes, self._cat_offsets = t.feature[cat], sizes.astype(np.float64), offsets

        paths, roots_of_leaves = _paths(t)
        leaves = np.array([leaf for leaf, _, _, _ in paths], dtype=np.int64)
        roots = np.array(roots_of_leaves, dtype=np.int64)
        # each tree's expected output: its leaves weighted by the share of the root's cover they hold
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(leaves == roots, 1.0, cover[leaves] / cover[roots])
        self.base_value = float(np.sum(shares * t.value[leaves]) + t.base_score)
        by_length: dict[int, list[tuple[int, tuple[int, ...], tuple[float, ...], tuple[tuple[int, ...], ...]]]] = {}
        for path in paths:
            if path[1]:  # a tree that is a single leaf adds to the base value only
                by_length.setdefault(len(path[1]), []).append(path)
        self._groups = [_Group(m, by_length[m], t.value, n, edge_of) for m in sorted(by_length)]
        depth = max(by_length, default=0)
        # EXTEND's weights at path length d: new[j] = zero * old[j] * (d - j) / (d + 1)
        # + one * old[j - 1] * j / (d + 1)
        self._keep = [np.arange(d, -1, -1, dtype=np.float64)[:, None, None] / (d + 1) for d in range(depth + 1)]
        self._grow = [np.arange(0, d + 1, dtype=np.float64)[:, None, None] / (d + 1) for d in range(depth + 1)]
        cells = 0
        for group in self._groups:
            size = len(group.value) << group.m
            cells += size * group.m
            if group.m > _TABLE_MAX_LENGTH or cells > _TABLE_CELLS:
                break
            patterns = np.arange(1 << group.m, dtype=np.int64)
            bits = ((patterns[None, :] >> np.arange(group.m)[:, None]) & 1).astype(np.float64)  # (m, patterns)
            one = np.broadcast_to(bits[:, :, None], (group.m, len(patterns), len(group.value)))
            # (patterns, leaves, m) -> (leaves, patterns, m)
            group.table = self._shap(group, one).transpose(1, 0, 2).reshape(size, group.m).copy()

    def explain(self, x: np.ndarray, features: tuple[str, ...], scale: str) -> Explanation:
        """Contributions for the encoded matrix ``x`` (rows x features)."""
        n_rows = len(x)
        phi = np.zeros((n_rows, self.n_features), dtype=np.float64)
        step = max(1, _REACH_CELLS // (2 * self._n_splits + 1))
        for start in range(0, n_rows, step):
            block = x[start : start + step]
            reach = self._reach(block)
            out = phi[start : start + step]
            for group in self._groups:
                rows = max(1, _CHUNK_CELLS // ((group.m + 1) * len(group.value)))
                for first in range(0, len(block), rows):
                    part = reach[first : first + rows]
                    values = self._tabulated(group, part) if group.table is not None else self._direct(group, part)
                    flat = values.reshape(len(part), -1)
                    out[first : first + rows, group.present] += np.add.reduceat(
                        flat.take(group.order, axis=1), group.starts, axis=1
                    )
        return Explanation(features, phi, self.base_value, scale)

    def _reach(self, x: np.ndarray) -> np.ndarray:
        """(rows, edges): whether each row, at each split, takes each edge (see ``__init__``),
        decided as the compiled tables decide (``LeanModel._compile``)."""
        rows, n_num, n_splits = len(x), self._n_num, self._n_splits
        reach = np.empty((rows, 2 * n_splits + 1), dtype=bool)
        filled = np.concatenate([np.where(np.isnan(x), -np.inf, x), x], axis=1)
        with np.errstate(invalid="ignore"):
            np.less_equal(filled.take(self._num_column, axis=1), self._num_threshold, out=reach[:, :n_num])
        if n_splits > n_num:
            values = x.take(self._cat_feature, axis=1)
            with np.errstate(invalid="ignore"):
                valid = (values >= 0) & (values < self._cat_sizes)
            slots = np.where(valid, values, self._cat_sizes).astype(np.int64)
            slots += self._cat_offsets
            self._cat_table.take(slots, out=reach[:, n_num:n_splits])
        np.logical_not(reach[:, :n_splits], out=reach[:, n_splits : 2 * n_splits])
        reach[:, -1] = True
        return reach

    @staticmethod
    def _tabulated(g: _Group, reach: np.ndarray) -> np.ndarray:
        """(rows, leaves, m): ``g``'s contributions, looked up by each leaf's pattern of one fractions."""
        pattern = np.zeros((len(reach), len(g.value)), dtype=np.int32)
        for i in range(g.m):
            follows = reach.take(g.edges[i, :, 0], axis=1)
            for k in range(1, g.edges.shape[2]):
                follows &= reach.take(g.edges[i, :, k], axis=1)
            pattern |= follows.view(np.uint8).astype(np.int32) << i
        pattern = pattern + g.offsets
        assert g.table is not None
        return g.table.take(pattern, axis=0)

    def _direct(self, g: _Group, reach: np.ndarray) -> np.ndarray:
        one = np.empty((g.m, len(reach), len(g.value)), dtype=np.float64)
        for i in range(g.m):
            one[i] = reach[:, g.edges[i]].all(axis=2)
        return self._shap(g, one)

    def _shap(self, g: _Group, one: np.ndarray) -> np.ndarray:
        """(rows, leaves, m): each leaf's contribution to each element's feature, given the one
        fractions ``one`` (m, rows, leaves) of its path's elements."""
        m, rows, width = one.shape
        zero = g.zero
        # EXTEND, element by element (the dummy first element: weight 1)
        weights = np.zeros((m + 1, rows, width), dtype=np.float64)
        weights[0] = 1.0
        for d in range(1, m + 1):
            z, o = zero[d - 1], one[d - 1]
            grown = o * weights[:d] * self._grow[d][1:]  # into positions 1..d
            weights[:d] *= z * self._keep[d][:d]
            weights[1 : d + 1] += grown
        # UNWOUND-PATH-SUM for every element at once: with one fraction 1 a recurrence over the
        # weights; with 0 a plain sum, the same for every element but for the 1 / zero fraction
        total_one = np.zeros((m, rows, width), dtype=np.float64)
        carried = np.broadcast_to(weights[m], (m, rows, width)).copy()
        summed_zero = np.zeros((rows, width), dtype=np.float64)
        for k in range(m - 1, -1, -1):
            portion = carried * ((m + 1) / (k + 1))
            total_one += portion
            carried = weights[k] - portion * zero * ((m - k) / (m + 1))
            summed_zero += weights[k] * ((m + 1) / (m - k))
        unwound = np.where(one > 0, total_one, summed_zero / zero)
        contribution = unwound * (one - zero) * g.value  # (m, rows, leaves)
        return contribution.transpose(1, 2, 0)


def _paths(
    t: TreeArrays,
) -> tuple[list[tuple[int, tuple[int, ...], tuple[float, ...], tuple[tuple[int, ...], ...]]], list[int]]:
    """Per leaf: (leaf, its path's distinct features, their zero fractions, the child nodes on the
    path through splits on each), and each leaf's root. A feature split on again keeps its element:
    the product of its cover shares and the union of its edges, as Algorithm 2's unwinding gives."""
    left, right, feature = t.left.tolist(), t.right.tolist(), t.feature.tolist()
    cover = t.cover.tolist() if t.cover is not None else []
    paths: list[tuple[int, tuple[int, ...], tuple[float, ...], tuple[tuple[int, ...], ...]]] = []
    roots: list[int] = []
    for root in t.roots.tolist():
        stack: list[tuple[int, tuple[int, ...], tuple[float, ...], tuple[tuple[int, ...], ...]]] = [(root, (), (), ())]
        while stack:
            node, feats, zeros, edges = stack.pop()
            low = left[node]
            if low < 0:
                paths.append((node, feats, zeros, edges))
                roots.append(root)
                continue
            f, total = feature[node], cover[node]
            k = feats.index(f) if f in feats else -1
            for child in (low, right[node]):
                share = cover[child] / total
                if k < 0:
                    stack.append((child, (*feats, f), (*zeros, share), (*edges, (child,))))
                else:
                    merged_zero = (*zeros[:k], zeros[k] * share, *zeros[k + 1 :])
                    merged_edges = (*edges[:k], (*edges[k], child), *edges[k + 1 :])
                    stack.append((child, feats, merged_zero, merged_edges))
    return paths, roots
