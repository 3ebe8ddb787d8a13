"""Pruning masks for parameter trees and single arrays.

Tree level: :func:`magnitude_mask` and :func:`score_mask` turn a tree (and a
score tree) into a tree of bool keep-masks, with a scope (per-leaf or one
global threshold), an allocation across layers and a pattern. Array level:
:func:`nm_mask`, :func:`block_mask`, :func:`channel_mask` and, in
:mod:`jaxcomp.ops.kth`, :func:`threshold_mask` / :func:`topk_mask`.

Masks are ``True`` where a weight is kept. They are computed with the
sort-free exact selection of :mod:`jaxcomp.ops.kth`, so the achieved
sparsity equals the target exactly — ``round(sparsity * n)`` pruned per leaf
(layerwise) or over all selected leaves (global), counted in groups for
structured patterns — ties are broken by index (lower flat index pruned
first; earlier leaves first for a global threshold), nothing is sorted or
gathered, and every mask has its parameter's shape and sharding.

``where=`` defaults to the float arrays with at least two dimensions
(kernels, embeddings), which skips biases and normalisation scales; leaves
not selected get all-True masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.leaves import CompressedLeaf, is_compressed
from jaxcomp.ops.kth import (
    check_finite,
    is_tracer,
    num_pruned,
    smallest_k_masks,
    validate_sparsity,
)
from jaxcomp.prune import allocation as alloc_rules
from jaxcomp.prune.patterns import NM, Block, Channel, Pattern, Unstructured, as_pattern
from jaxcomp.select import selectors
from jaxcomp.select.leafrules import is_mapping
from jaxcomp.select.paths import is_leaf
from jaxcomp.select.selection import Selected, flatten

__all__ = [
    "MaskConfig",
    "apply_masks",
    "block_mask",
    "channel_mask",
    "default_where",
    "magnitude_mask",
    "nm_mask",
    "score_mask",
    "select_prunable",
]

_SCOPES = ("layerwise", "global")
_NORMALIZE = (None, "l1", "l2", "max", "mean")


def default_where() -> selectors.Selector:
    """The default selection: float arrays with ``ndim >= 2`` that are not compressed leaves."""
    return selectors.ndim(min=2) & selectors.dtype("float") & ~selectors.leaf_type(CompressedLeaf)


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """How masks are computed from scores (all static).

    Attributes:
      scope: ``"layerwise"`` (one threshold per leaf) or ``"global"`` (one
        threshold over all selected leaves).
      pattern: a :mod:`~jaxcomp.prune.patterns` pattern.
      allocation: ``"uniform"``, ``"erk"``, ``"er"`` or a ``{regex: sparsity}``
        map (layerwise only).
      normalize: for ``scope="global"``: divide each leaf's (group) scores by
        its ``"l1"`` (mean absolute value times size), ``"l2"`` norm,
        ``"max"`` absolute value or ``"mean"`` absolute value before comparing
        across leaves, so layers of different scale compete fairly; ``None``
        compares raw scores (the usual global magnitude pruning).
    """

    scope: str = "layerwise"
    pattern: Pattern = dataclasses.field(default_factory=Unstructured)
    allocation: Any = "uniform"
    normalize: str | None = None

    def __post_init__(self):
        if self.scope not in _SCOPES:
            raise ValueError(f"scope={self.scope!r} must be 'layerwise' or 'global'")
        object.__setattr__(self, "pattern", as_pattern(self.pattern))
        alloc = self.allocation
        if is_mapping(alloc):
            object.__setattr__(self, "allocation", dict(alloc.items()))
        elif alloc not in ("uniform", "erk", "er"):
            raise ValueError(
                f"allocation={alloc!r} must be 'uniform', 'erk', 'er' or a {{regex: sparsity}} "
                "dict"
            )
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"normalize={self.normalize!r} must be one of {_NORMALIZE}")
        if self.scope == "global" and self.allocation != "uniform":
            raise ValueError(
                "scope='global' sets each layer's share by one threshold; it cannot be combined "
                f"with allocation={self.allocation!r}. Use scope='layerwise' for ERK or a map."
            )
        if self.normalize is not None and self.scope != "global":
            raise ValueError(
                "normalize= only changes a global threshold (per-leaf rankings do not depend on "
                "a per-leaf scale); pass scope='global' or drop normalize"
            )
        if isinstance(self.pattern, NM) and (self.scope != "layerwise"
                                             or self.allocation != "uniform"):
            raise ValueError(
                f"{self.pattern} keeps a fixed n of every m weights; scope and allocation do not "
                "apply to it: use the defaults (scope='layerwise', allocation='uniform')"
            )

    def check(self, paths: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> None:
        """Validates leaf shapes against the pattern (raises naming the path)."""
        for p, s in zip(paths, shapes):
            self.pattern.check(tuple(s), p)

    def path_map(self, paths: Sequence[str], has_default: bool) -> alloc_rules.PathMap | None:
        if isinstance(self.allocation, dict):
            return alloc_rules.PathMap(self.allocation, paths, has_default)
        return None


def _normalize(g: jax.Array, how: str | None) -> jax.Array:
    if how is None:
        return g
    a = jnp.abs(g.astype(jnp.float32))
    if how == "l2":
        d = jnp.sqrt(jnp.sum(a * a))
    elif how == "l1":
        d = jnp.sum(a)
    elif how == "max":
        d = jnp.max(a)
    else:
        d = jnp.mean(a)
    return g.astype(jnp.float32) / jnp.where(d > 0, d, 1.0)


def compute_keep(
    config: MaskConfig,
    scores: Sequence[jax.Array],
    paths: Sequence[str],
    sparsity: Any,
    *,
    step: Any = None,
    path_map: alloc_rules.PathMap | None = None,
) -> tuple[list[jax.Array], jax.Array]:
    """Keep-masks for score leaves, and the fraction of their elements pruned.

    The engine behind :func:`score_mask` and the pruning compressors.
    ``sparsity`` is the target (traced or concrete; with a path map, the value
    of unmatched leaves; with an N:M pattern, pruning is on iff it is > 0).
    """
    shapes = [tuple(s.shape) for s in scores]
    sizes = [int(np.prod(s)) for s in shapes]
    total = max(sum(sizes), 1)
    pat = config.pattern
    if isinstance(pat, NM):
        keeps = [pat.mask(s) for s in scores]
        on = jnp.asarray(sparsity) > 0
        keeps = [k | ~on for k in keeps]
        frac = jnp.where(on, pat.sparsity, 0.0).astype(jnp.float32)
        return keeps, frac
    groups = [pat.group_scores(s) for s in scores]
    g_sizes = [int(np.prod(g.shape)) for g in groups]
    unit = [pat.group_size(s) for s in shapes]
    if config.scope == "global":
        groups = [_normalize(g, config.normalize) for g in groups]
        ks = [num_pruned(sparsity, sum(g_sizes))]
        group_ids = [0] * len(groups)
    else:
        group_ids = list(range(len(groups)))
        if config.allocation == "uniform":
            ks = [num_pruned(sparsity, n) for n in g_sizes]
        elif config.allocation in ("erk", "er"):
            ks = alloc_rules.erk_counts(g_sizes, shapes, sparsity, kernel=config.allocation == "erk")
        else:
            pm = path_map if path_map is not None else config.path_map(paths, sparsity is not None)
            ks = [num_pruned(s, n) for s, n in zip(pm.at(step, sparsity), g_sizes)]
    pruned = smallest_k_masks(groups, ks, groups=group_ids)
    keeps = [pat.expand(~m, shp) for m, shp in zip(pruned, shapes)]
    if config.scope == "global" and not isinstance(pat, Unstructured):
        # Groups may differ in size across leaves: count the pruned elements.
        n_pruned = sum((jnp.sum(~k, dtype=jnp.int32) for k in keeps), jnp.int32(0))
    elif config.scope == "global":
        n_pruned = jnp.asarray(ks[0], jnp.int32)
    else:
        n_pruned = sum((jnp.asarray(k, jnp.int32) * u for k, u in zip(ks, unit)), jnp.int32(0))
    return keeps, (jnp.asarray(n_pruned, jnp.float32) / total)


def _check_leaf(path: str, leaf: Any, what: str) -> None:
    if is_compressed(leaf):
        raise TypeError(
            f"{what}: parameter '{path}' is a {type(leaf).__name__} (a compressed leaf); pruning "
            "needs dense arrays. Exclude it with where= or jaxcomp.materialize the tree first."
        )
    dt = getattr(leaf, "dtype", None)
    if dt is None or not (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)):
        raise TypeError(
            f"{what}: parameter '{path}' has dtype {dt}; scores must be real numbers. Exclude it "
            "with where=."
        )


_EMPTY_HINT = ("Select at least one (e.g. where=r'.*/kernel'); the default takes float arrays "
               "with ndim >= 2.")


def select_prunable(tree: Any, where: Any, what: str) -> Selected:
    """The leaves ``where`` selects for pruning (default :func:`default_where`), checked.

    An empty selection, and a selected compressed or non-numeric leaf, are
    errors naming ``what`` and the path.

    Example:
      >>> import jax.numpy as jnp
      >>> select_prunable({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, None, "demo").sel_paths
      ['w']
    """
    return flatten(tree, where, what=what, default=default_where(), hint=_EMPTY_HINT,
                   leaf_check=lambda p, x: _check_leaf(p, x, what))


def score_mask(
    scores: Any,
    sparsity: Any,
    *,
    scope: str = "layerwise",
    where: Any = None,
    pattern: Any = "unstructured",
    allocation: Any = "uniform",
    normalize: str | None = None,
    check_finite: bool = True,
) -> Any:
    """Keep-masks that prune the lowest ``scores`` (any score tree).

    Args:
      scores: a tree of real arrays (e.g. from :mod:`jaxcomp.prune.scores`);
        the masks get its structure, shapes and sharding.
      sparsity: fraction pruned in ``[0, 1)`` (traced values allowed). With a
        ``{regex: s}`` allocation it is the sparsity of unmatched leaves
        (``None``: unmatched leaves are an error). With an N:M pattern pass
        ``None`` (or exactly ``1 - n/m``).
      scope: ``"layerwise"`` or ``"global"`` (one threshold for all selected
        leaves; structured patterns then count groups, not weights).
      where: which leaves to prune (default: float arrays with ``ndim >= 2``).
      pattern: ``"unstructured"``, ``"n:m"``, ``"channel"`` or a pattern object.
      allocation: ``"uniform"``, ``"erk"``, ``"er"`` or ``{regex: sparsity}``.
      normalize: per-leaf score normalisation for ``scope="global"``
        (see :class:`MaskConfig`).
      check_finite: with concrete scores, raise ``ValueError`` naming the path
        of NaN/Inf values (under ``jit`` NaN scores rank highest: kept).

    Returns:
      A bool tree; unselected leaves get all-True masks.

    Raises:
      ValueError: bad sparsity, a pattern that does not fit a leaf, a where
        that selects nothing, non-finite concrete scores.
      TypeError: a selected compressed or non-numeric leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> s = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([[0.5, 9.0]])}
      >>> score_mask(s, 0.5, scope="global")["a"].tolist()
      [[False, False], [True, True]]
    """
    config = MaskConfig(scope, pattern, allocation, normalize)
    sel = select_prunable(scores, where, "score_mask")
    if isinstance(config.pattern, NM):
        if sparsity is not None and not is_tracer(sparsity) and not np.isclose(
                float(sparsity), config.pattern.sparsity):
            raise ValueError(
                f"{config.pattern} prunes exactly 1 - n/m = {config.pattern.sparsity:g}; got "
                f"sparsity={sparsity!r}. Pass sparsity=None with an N:M pattern."
            )
        sparsity = config.pattern.sparsity
    elif sparsity is None and not isinstance(config.allocation, dict):
        raise ValueError("sparsity=None is only allowed with a {regex: sparsity} allocation "
                         "or an N:M pattern; pass a fraction in [0, 1)")
    if sparsity is not None:
        validate_sparsity(sparsity)
    if check_finite:
        for p, x in sel.pairs:
            check_finite_leaf(p, x)
    config.check(sel.sel_paths, [tuple(x.shape) for x in sel.sel_leaves])
    keeps, _ = compute_keep(config, [jnp.asarray(x) for x in sel.sel_leaves], sel.sel_paths,
                            sparsity)
    return sel.rebuild(keeps, others=lambda _, x: jnp.ones_like(x, dtype=bool))


def check_finite_leaf(path: str, leaf: Any) -> None:
    check_finite({path: leaf} if path else leaf, "scores")


def magnitude_mask(
    params: Any,
    sparsity: Any,
    *,
    scope: str = "layerwise",
    where: Any = None,
    pattern: Any = "unstructured",
    allocation: Any = "uniform",
    normalize: str | None = None,
    check_finite: bool = True,
) -> Any:
    """Keep-masks that prune the smallest ``|w|``: exact sparsity, sort-free, sharding-native.

    Args:
      params: a parameter tree (plain, Flax linen variables, boxed params).
      sparsity: fraction pruned in ``[0, 1)``: exactly ``round(sparsity * n)``
        weights per selected leaf (``scope="layerwise"``) or over all
        selected leaves (``"global"``). May be traced.
      scope, where, pattern, allocation, normalize, check_finite: as in
        :func:`score_mask`.

    Returns:
      A bool tree with the structure, shapes and shardings of ``params``;
      unselected leaves are all True.

    References:
      Han et al., Learning both weights and connections, arXiv:1506.02626.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([[0.1, -3.0], [0.2, 0.0]]), "b": jnp.zeros(2)}
      >>> m = magnitude_mask(params, 0.5)
      >>> m["w"].tolist(), m["b"].tolist()
      ([[False, True], [True, False]], [True, True])
    """
    scores = jax.tree_util.tree_map(
        lambda x: x if is_compressed(x) or not hasattr(x, "dtype") else jnp.abs(x), params,
        is_leaf=is_leaf)
    return score_mask(scores, sparsity, scope=scope, where=where, pattern=pattern,
                      allocation=allocation, normalize=normalize, check_finite=check_finite)


def nm_mask(w: jax.typing.ArrayLike, n: int, m: int, *, axis: int = -1) -> jax.Array:
    """N:M keep-mask by magnitude: the ``n`` largest ``|w|`` of every ``m`` along ``axis``.

    Ties keep the higher index. Sort-free (pairwise ranks within each group).

    Raises:
      ValueError: ``n > m``, ``n < 1``, or ``m`` not dividing ``w.shape[axis]``.

    References:
      Mishra et al. 2021, arXiv:2104.08378; Zhou et al. 2021, arXiv:2102.04010.

    Example:
      >>> import jax.numpy as jnp
      >>> nm_mask(jnp.array([0.5, -2.0, 0.1, 1.0, 3.0, 0.0, 0.0, -1.0]), 2, 4).tolist()
      [False, True, False, True, True, False, False, True]
    """
    pat = NM(n, m, axis)
    w = jnp.asarray(w)
    pat.check(tuple(w.shape))
    return pat.mask(jnp.abs(w))


def block_mask(w: jax.typing.ArrayLike, sparsity: Any, *, block: tuple[int, int] = (4, 4),
               reduce: str = "l2") -> jax.Array:
    """Keep-mask pruning whole ``block`` tiles of the last two axes by their ``reduce`` of ``|w|``.

    Exactly ``round(sparsity * n_blocks)`` blocks are pruned.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0]])
      >>> block_mask(w, 0.5, block=(2, 2)).tolist()
      [[False, False, True, True], [False, False, True, True]]
    """
    w = jnp.asarray(w)
    pat = Block(*block, reduce=reduce)
    pat.check(tuple(w.shape))
    validate_sparsity(sparsity)
    keeps, _ = compute_keep(MaskConfig(pattern=pat), [jnp.abs(w)], [""], sparsity)
    return keeps[0]


def channel_mask(w: jax.typing.ArrayLike, sparsity: Any, *, axis: int = -1,
                 norm: str = "l2") -> jax.Array:
    """Keep-mask pruning whole channels along ``axis`` by their L1/L2 norm.

    ``axis=-1``: output channels (filters) of a Flax kernel; ``-2``: inputs.
    Exactly ``round(sparsity * n_channels)`` channels are pruned.

    References:
      Li et al., Pruning filters for efficient ConvNets, arXiv:1608.08710.

    Example:
      >>> import jax.numpy as jnp
      >>> channel_mask(jnp.array([[1.0, 0.1, 2.0], [1.0, 0.1, -2.0]]), 1 / 3).tolist()
      [[True, False, True], [True, False, True]]
    """
    w = jnp.asarray(w)
    pat = Channel(axis, norm)
    pat.check(tuple(w.shape))
    validate_sparsity(sparsity)
    keeps, _ = compute_keep(MaskConfig(pattern=pat), [w], [""], sparsity)
    return keeps[0]


def apply_masks(params: Any, masks: Any) -> Any:
    """Zeros the pruned weights: ``where(mask, w, 0)`` leaf by leaf.

    ``masks`` may hold :class:`~jaxcomp.MaskedNode` placeholders (a pruning
    state's masks); those leaves pass through unchanged.

    Example:
      >>> import jax.numpy as jnp
      >>> apply_masks({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})["w"].tolist()
      [1.0, 0.0]
    """
    from jaxcomp.core.base import MaskedNode

    def one(m, w):
        if isinstance(m, MaskedNode):
            return w
        return jnp.where(m, w, jnp.zeros((), w.dtype))

    return jax.tree_util.tree_map(one, masks, params,
                                  is_leaf=lambda x: isinstance(x, MaskedNode))
