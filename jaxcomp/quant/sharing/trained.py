"""Trained quantization: weights share k-means centroids that training fine-tunes.

Deep Compression (Han, Mao, Dally) clusters each layer's weights into
``2**bits`` groups with k-means, lets every weight of a group use the
group's centroid, and fine-tunes the centroids with the *sum* of the
gradients of their members: ``c_k ← c_k − lr · Σ_{i ∈ k} ∂L/∂w_i``.

:func:`weight_sharing` does this within the compressor protocol, with no
change to the parameter tree and nothing for the optimizer to learn about:

* ``init(params)`` runs :func:`~jaxcomp.quant.sharing.kmeans.kmeans_1d` on the
  non-zero weights of every selected leaf and stores the assignment
  (``indices``) in the state. Zero weights (pruned, e.g. by a
  :func:`jaxcomp.prune.magnitude_pruning` earlier in a :func:`jaxcomp.chain`)
  belong to no cluster and stay exactly zero.
* ``apply(params, state)`` is the shared view: each weight is replaced by
  its cluster's centroid, computed from the stored weights as the mean of
  the members (a weight that has become zero leaves its cluster and is
  zero in the view). Its gradient (a ``custom_vjp``) gives *every member*
  the summed gradient of its cluster, a ``segment_sum`` of the weight
  gradients. So the members of a cluster, tied at the start, receive
  identical updates from any element-wise optimizer and stay tied, and the
  centroid moves exactly as Han's rule says (for SGD ``−lr·Σg``; for Adam
  the step Adam takes on ``Σg``).
* ``project(params, state)`` ties the stored weights to their centroids
  (pruned ones to zero); with :func:`jaxcomp.keep_compressed` last in the
  optax chain the stored params always equal the view.
* ``update`` changes nothing (the assignment is fixed after ``init``, as in
  Deep Compression), so ``due`` is never.

The state reports ``weight_bits = bits`` per parameter path to
:func:`jaxcomp.compression_info` and :func:`jaxcomp.metrics.analyze`.
:func:`shared_codebooks` turns a trained view into
:class:`~jaxcomp.Codebook` leaves for storage.

References:
  Han, Mao, Dally, "Deep compression: compressing deep neural networks with
  pruning, trained quantization and Huffman coding", arXiv:1510.00149.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.base import Compressor, never_due
from jaxcomp.core.errors import concrete
from jaxcomp.core.info import LeafInfo
from jaxcomp.core.keys import check_key
from jaxcomp.core.leaves import Codebook, CompressedLeaf
from jaxcomp.quant.sharing.kmeans import INITS, RANDOM_INITS, check_bits, kmeans_1d
from jaxcomp.select.leafrules import per_leaf
from jaxcomp.select.paths import leaves_with_paths
from jaxcomp.select.selection import Selected, flatten
from jaxcomp.select.selectors import dtype, leaf_type, ndim

__all__ = ["WeightSharingState", "shared_codebooks", "shared_view", "weight_sharing"]


class WeightSharingState(NamedTuple):
    """The state of :func:`weight_sharing`.

    Attributes:
      indices: per selected leaf, the int32 cluster of every weight, with the
        params' structure and shapes (:class:`~jaxcomp.MaskedNode` at leaves
        not shared); ``k = 2**bits`` marks weights that were zero at ``init``
        (pruned), which belong to no cluster.
      centroids: per selected leaf, the ``k`` float32 k-means centroids found
        at ``init`` (sorted ascending). Training moves the centroids of the
        view away from these; :func:`shared_codebooks` reads the current ones.

    ``__jaxcomp_info__`` reports ``LeafInfo(weight_bits=bits)`` per path.

    Example:
      >>> import jax.numpy as jnp
      >>> s = weight_sharing(1).init({"w": jnp.array([[1.0, 0.9], [-2.0, 0.0]])})
      >>> s.indices["w"].tolist(), s.__jaxcomp_info__()["w"].weight_bits
      ([[1, 1], [0, 2]], 1)
    """

    indices: Any
    centroids: Any

    def __jaxcomp_info__(self) -> dict[str, LeafInfo]:
        out = {}
        for path, c in leaves_with_paths(self.centroids):
            out[path] = LeafInfo(weight_bits=int(math.log2(int(np.shape(c)[0]))))
        return out


def _members(w: jax.Array, idx: jax.Array, k: int) -> jax.Array:
    """The cluster of each weight; ``k`` for weights in none (pruned at init, or zero now)."""
    return jnp.where((idx >= 0) & (idx < k) & (w != 0), idx, k)


def _centroids(w: jax.Array, eff: jax.Array, k: int) -> jax.Array:
    """``k + 1`` float32 values: each cluster's mean (0 when empty), then the zero of non-members.

    The mean is taken as ``max + mean(w - max)``, so a cluster whose members are
    equal (tied) gives exactly their value.
    """
    wf = w.astype(jnp.float32).reshape(-1)
    e = eff.reshape(-1)
    member = e < k
    top = jax.ops.segment_max(jnp.where(member, wf, -jnp.inf), e, num_segments=k + 1)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    cnt = jax.ops.segment_sum(member.astype(jnp.float32), e, num_segments=k + 1)
    dev = jax.ops.segment_sum(jnp.where(member, wf - top[e], 0.0), e, num_segments=k + 1)
    c = top + dev / jnp.maximum(cnt, 1.0)
    return jnp.where((cnt > 0) & (jnp.arange(k + 1) < k), c, 0.0)


@functools.partial(jax.jit, static_argnums=(2,))
def _tie(w: jax.Array, idx: jax.Array, k: int) -> jax.Array:
    # one compiled program per shape and k; inlined under an outer jit
    eff = _members(w, idx, k)
    return _centroids(w, eff, k)[eff].astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shared(w: jax.Array, idx: jax.Array, k: int) -> jax.Array:
    return _tie(w, idx, k)


def _shared_fwd(w, idx, k):
    return _tie(w, idx, k), (_members(w, idx, k), idx)


def _shared_bwd(k, res, g):
    eff, idx = res
    total = jax.ops.segment_sum(g.astype(jnp.float32).reshape(-1), eff.reshape(-1),
                                num_segments=k + 1)
    total = total.at[k].set(0.0)
    gw = total[eff].astype(g.dtype)
    return gw, np.zeros(np.shape(idx), jax.dtypes.float0)


_shared.defvjp(_shared_fwd, _shared_bwd)


def shared_view(w: jax.Array, indices: jax.Array, k: int) -> jax.Array:
    """Every weight replaced by the mean of its cluster; gradient: the cluster's summed gradient.

    Args:
      w: the stored weights (any float dtype; the view keeps it).
      indices: integer cluster of each weight (``w``'s shape); values outside
        ``[0, k)`` mean "no cluster" (pruned).
      k: the number of clusters (static).

    Returns:
      The shared view: ``c[indices]`` where ``c_j`` is the mean of the
      non-zero weights of cluster ``j``; zero where ``w`` is zero or the
      index is outside ``[0, k)``. Its vector-Jacobian product sends the
      cotangent ``g`` to ``Σ_{i ∈ j} g_i`` at every member of cluster ``j``
      and to zero elsewhere (reverse mode only, like any ``custom_vjp``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([1.0, 3.0, 0.0, 5.0])
      >>> idx = jnp.array([0, 0, 0, 1])
      >>> shared_view(w, idx, 2).tolist()
      [2.0, 2.0, 0.0, 5.0]
      >>> jax.grad(lambda w: (shared_view(w, idx, 2) * jnp.array([1.0, 2.0, 4.0, 8.0])).sum())(
      ...     w).tolist()
      [3.0, 3.0, 0.0, 8.0]

    References:
      Han, Mao, Dally, arXiv:1510.00149, Section 3.3 (centroid fine-tuning).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"shared_view: k must be a positive Python int, got {k!r}")
    if tuple(np.shape(indices)) != tuple(np.shape(w)):
        raise ValueError(f"shared_view: indices of shape {tuple(np.shape(indices))} for weights "
                         f"of shape {tuple(np.shape(w))}; give one index per weight")
    if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
        raise TypeError(f"shared_view: indices must be integers, got {jnp.result_type(indices)}")
    return _shared(w, jnp.asarray(indices, jnp.int32), int(k))


def _default_where():
    return ndim(min=2) & dtype("float") & ~leaf_type(CompressedLeaf)


def _check_leaf(path: str, leaf: Any, what: str) -> None:
    if isinstance(leaf, CompressedLeaf):
        raise TypeError(f"{what}: parameter '{path}' is a {type(leaf).__name__} (a compressed "
                        "leaf); weight sharing needs dense arrays. Exclude it with where= or "
                        "jaxcomp.materialize the tree first.")
    dt = getattr(leaf, "dtype", None)
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{what}: parameter '{path}' has dtype {dt}; weight sharing needs "
                        "floating-point weights. Exclude it with where=.")


def _select(params: Any, where: Any, what: str) -> Selected:
    return flatten(params, where, what=what, default=_default_where(),
                   hint="Select at least one (e.g. where=r'.*/kernel'); the default takes "
                        "float arrays with ndim >= 2.",
                   leaf_check=lambda p, x: _check_leaf(p, x, what))


def _check_finite(path: str, w: Any, what: str) -> None:
    host = concrete(w)
    if host is None:
        return
    bad = int(np.sum(~np.isfinite(np.asarray(host, np.float32))))
    if bad:
        raise ValueError(f"{what}: '{path}' holds NaN or Inf ({bad} of {host.size} values); "
                         "k-means is undefined for them. Fix the training divergence or replace "
                         "them (e.g. jnp.nan_to_num) first.")


def weight_sharing(
    bits: Any,
    *,
    where: Any = None,
    init: str = "linear",
    n_iter: int = 30,
    n_init: int = 1,
    key: jax.Array | None = None,
) -> Compressor:
    """Trained quantization (Deep Compression): ``2**bits`` shared, fine-tuned values per layer.

    Args:
      bits: bits per weight index, in ``[1, 16]``: an int, a ``{regex:
        bits}`` mapping or list of ``(pattern, bits)`` pairs (first match
        wins; every selected leaf must match) or a callable ``(path, leaf)
        -> bits`` (see :func:`jaxcomp.select.per_leaf`). Han et al.: 8 for
        convolutions, 5 for fully connected layers.
      where: which leaves share weights (default: float arrays with
        ``ndim >= 2``).
      init: k-means initialisation: ``"linear"`` (Han et al.'s best),
        ``"density"``, ``"random"`` or ``"kmeans++"``.
      n_iter: Lloyd iterations at ``init``.
      n_init: k-means restarts of a random init.
      key: PRNG key for the random inits (leaf ``i`` uses ``fold_in(key, i)``).

    Returns:
      A :class:`~jaxcomp.Compressor` with state :class:`WeightSharingState`
      (see the module docstring). Put pruning first in a chain
      (``jc.chain(jp.magnitude_pruning(...), weight_sharing(...))``) so the
      clusters form on the surviving weights, and
      :func:`jaxcomp.keep_compressed` last in the optax chain.

    Raises:
      ValueError: ``bits`` outside ``[1, 16]``, an unknown ``init``, a random
        init without ``key``, ``n_iter < 0``, ``n_init < 1`` (at the
        factory); an empty selection or NaN weights (at ``init``).
      TypeError: non-int ``bits``, a selected compressed or non-float leaf.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxcomp as jc
      >>> params = {"w": jnp.array([[0.9, 1.1, 0.0], [-2.1, -1.9, 1.0]])}
      >>> comp = weight_sharing(1)
      >>> state = comp.init(params)
      >>> comp.apply(params, state)["w"].tolist()
      [[1.0, 1.0, 0.0], [-2.0, -2.0, 1.0]]
      >>> g = jax.grad(lambda p: comp.apply(p, state)["w"][0, 0])(params)["w"]
      >>> g.tolist()  # every member of the cluster gets the cluster's summed gradient
      [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    References:
      Han, Mao, Dally, "Deep compression", arXiv:1510.00149.
    """
    name = "weight_sharing"
    if not callable(bits) and not isinstance(bits, (dict, list, tuple)) and not hasattr(
            bits, "items"):
        check_bits(bits, name)
    if init not in INITS:
        raise ValueError(f"{name}: init={init!r} must be one of {', '.join(map(repr, INITS))}")
    if init in RANDOM_INITS:
        if key is None:
            raise ValueError(f"{name}: init={init!r} needs key=jax.random.key(...)")
        check_key(key, f"{name}(key=)")
    for arg, value, low in (("n_iter", n_iter, 0), ("n_init", n_init, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: {arg} must be an int >= {low}, got {value!r}")

    def leaf_bits(sel: Selected) -> list[int]:
        return per_leaf(bits, sel, what="bits", noun="shared parameter",
                        validate=lambda v, label: check_bits(v, name, label))

    def ks_of(sel: Selected, state: WeightSharingState) -> list[int]:
        return [int(np.shape(c)[0]) for c in sel.of_masked(state.centroids, "the state's "
                                                           "centroids", check_shapes=False)]

    def init_fn(params):
        sel = _select(params, where, name)
        idxs, cents = [], []
        for i, ((path, w), b) in enumerate(zip(sel.pairs, leaf_bits(sel))):
            _check_finite(path, w, name)
            k = 1 << b
            leaf_key = None if key is None else jax.random.fold_in(key, i)
            c, lab = kmeans_1d(w, k=k, init=init, key=leaf_key, n_iter=n_iter, n_init=n_init,
                               mask=w != 0)
            idxs.append(jnp.where(lab < 0, k, lab).astype(jnp.int32))
            cents.append(c)
        return WeightSharingState(sel.masked(idxs), sel.masked(cents))

    def leaves_and_indices(params, state):
        sel = _select(params, where, name)
        idxs = sel.of_masked(state.indices, "the state's indices")
        return sel, idxs, ks_of(sel, state)

    def apply(params, state):
        sel, idxs, ks = leaves_and_indices(params, state)
        return sel.rebuild([_shared(w, i, k) for w, i, k in zip(sel.sel_leaves, idxs, ks)])

    def update(params, state, *, step, grads=None, **extra):
        del step, grads, extra
        return params, state

    def project(params, state):
        sel, idxs, ks = leaves_and_indices(params, state)
        return sel.rebuild([_tie(w, i, k) for w, i, k in zip(sel.sel_leaves, idxs, ks)])

    return Compressor(init_fn, apply, update, project, due=never_due)


def shared_codebooks(params: Any, state: WeightSharingState, *, where: Any = None) -> Any:
    """The shared leaves of ``params`` as :class:`~jaxcomp.Codebook` leaves (host-side).

    Each shared leaf becomes ``Codebook(centroids, indices)`` holding the
    current centroids (the means of the members in ``params``) and the
    cluster of every weight. A leaf with weights outside every cluster
    (pruned zeros) gets one more centroid, exactly ``0.0``, at index ``k``;
    so it needs ``ceil(log2(k + 1))`` index bits. Other leaves are returned
    as they are. ``jaxcomp.materialize`` of the result equals the view
    ``weight_sharing(...).apply(params, state)``.

    Args:
      params: the stored params (or the view) the state belongs to.
      state: a :class:`WeightSharingState`.
      where: the ``where=`` given to :func:`weight_sharing`.

    Returns:
      The tree with Codebook leaves in place of the shared arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp as jc
      >>> p = {"w": jnp.array([[1.0, 3.0], [0.0, 5.0]])}
      >>> s = weight_sharing(1).init(p)
      >>> cb = shared_codebooks(p, s)["w"]
      >>> cb.centroids.tolist(), cb.indices.tolist()
      ([2.0, 5.0, 0.0], [[0, 0], [2, 1]])
    """
    if not isinstance(state, WeightSharingState):
        raise TypeError(f"shared_codebooks: state must be a WeightSharingState, got "
                        f"{type(state).__name__}; pass the state of weight_sharing (for a chain, "
                        "its stage, e.g. state[1])")
    sel = _select(params, where, "shared_codebooks")
    idxs = sel.of_masked(state.indices, "the state's indices")
    cents = sel.of_masked(state.centroids, "the state's centroids", check_shapes=False)
    out = []
    for w, idx, c0 in zip(sel.sel_leaves, idxs, cents):
        k = int(np.shape(c0)[0])
        eff = _members(w, idx, k)
        c = _centroids(w, eff, k).astype(w.dtype)
        if not bool(np.any(np.asarray(eff) == k)):
            c = c[:k]
        dt = np.uint8 if c.shape[0] <= 256 else np.uint16
        out.append(Codebook(c, jnp.asarray(np.asarray(eff).astype(dt))))
    return sel.rebuild(out)
