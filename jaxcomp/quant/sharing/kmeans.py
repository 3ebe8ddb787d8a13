"""One-dimensional k-means on weight values: the clustering behind weight sharing.

Deep Compression (Han, Mao, Dally) shares weights by clustering the values
of a layer with k-means and storing each weight as the index of its
centroid. Everything here runs in JAX and is jittable (``k``, ``n_iter``,
``n_init``, ``init`` and the shapes are static):

* :func:`kmeans_init` places the ``k`` initial centroids, sorted ascending,
  by one of the three rules Han et al. compare, ``"linear"`` (evenly over
  ``[min, max]``, their best for accuracy), ``"density"`` (at the quantiles
  ``(i + 1/2) / k`` of the values, i.e. evenly spaced on the CDF) and
  ``"random"`` (Forgy: ``k`` distinct weights drawn at random), or by the
  ``"kmeans++"`` seeding of scikit-learn's ``KMeans`` (greedy D² sampling,
  ``2 + ln k`` candidates per centroid), which reaches the lowest
  objective.
* :func:`kmeans_1d` runs ``n_iter`` Lloyd iterations (``lax.fori_loop``):
  each assigns every value to its nearest centroid (a binary search among
  the midpoints of the sorted centroids, ``O(n log k)``) and moves every
  centroid to the mean of its members; a centroid without members takes the value farthest from its own centroid, as in
  scikit-learn. A final assignment pairs the labels with the returned
  centroids; with ``n_init`` restarts of a random init the run of lowest
  objective wins.
* :func:`kmeans_quantize` turns a weight array into a
  :class:`~jaxcomp.Codebook` with ``2**bits`` entries.
* :func:`kmeans_objective` is the within-cluster sum of squares.

Sharding: the values keep their shape throughout (nothing is flattened),
so a parameter sharded over devices stays sharded and is never gathered
with the ``"linear"`` and ``"density"`` inits: assignment is elementwise,
the per-centroid sums and counts are scatter-adds that XLA partitions into
local sums and one ``k``-sized all-reduce, the density quantiles come from a
sort-free bisection on counts, and the empty-cluster relocation uses max
reductions instead of a sort. The labels keep the input's sharding. The
``"random"`` and ``"kmeans++"`` inits draw from the flattened values and so
gather a sharded parameter (once, before the Lloyd iterations).

Pruned weights (``mask`` False) take no part: they move no centroid, get
label ``-1`` from :func:`kmeans_1d`, and in :func:`kmeans_quantize` the
reserved entry 0 of the codebook, which is exactly zero.

Values are clustered in float32 whatever the input dtype (bfloat16 and
float16 convert exactly); centroids come back in the input's dtype from
:func:`kmeans_quantize` and in float32 from :func:`kmeans_1d`.

References:
  Han, Mao, Dally, "Deep compression: compressing deep neural networks with
  pruning, trained quantization and Huffman coding", arXiv:1510.00149.
  Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 1982.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.errors import concrete
from jaxcomp.core.keys import check_key
from jaxcomp.core.leaves import Codebook
from jaxcomp.ops.kth import ordered_key

__all__ = ["INITS", "RANDOM_INITS", "kmeans_1d", "kmeans_init", "kmeans_objective", "kmeans_quantize"]

INITS = ("linear", "density", "random", "kmeans++")
RANDOM_INITS = ("random", "kmeans++")


def _check_int(name: str, value: Any, low: int, high: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{what}: {name} must be a Python int, got {type(value).__name__} "
                        f"{value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{what}: {name}={value} is outside {rng}")
    return value


def check_bits(bits: Any, what: str, label: str = "bits") -> int:
    """``bits`` as an int in ``[1, 16]``, or a clear error naming ``what`` (and ``label``).

    Example:
      >>> check_bits(4, "demo")
      4
      >>> check_bits(0, "demo")
      Traceback (most recent call last):
        ...
      ValueError: demo: bits=0 is outside [1, 16]; pass an integer bit width between 1 and 16 (2**bits shared values)
    """
    if isinstance(bits, bool) or not isinstance(bits, (numbers.Integral, np.integer)):
        raise TypeError(f"{what}: {label} must be a Python int in [1, 16], got "
                        f"{type(bits).__name__} {bits!r}")
    bits = int(bits)
    if not 1 <= bits <= 16:
        raise ValueError(f"{what}: {label}={bits} is outside [1, 16]; pass an integer bit width "
                         "between 1 and 16 (2**bits shared values)")
    return bits


def _values(x: Any, what: str) -> jax.Array:
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what}: the values must be a floating-point array, got dtype "
                        f"{x.dtype}; cast them (e.g. x.astype(jnp.float32)) first")
    host = concrete(x)
    if host is not None:
        bad = int(np.sum(~np.isfinite(np.asarray(host, np.float32))))
        if bad:
            raise ValueError(f"{what}: the values hold NaN or Inf ({bad} of {host.size}); "
                             "k-means is undefined for them. Replace them (e.g. "
                             "jnp.nan_to_num) or fix the training divergence first")
    return jnp.asarray(x)


def _mask(mask: Any, shape: tuple[int, ...], what: str) -> jax.Array | None:
    if mask is None:
        return None
    if not hasattr(mask, "dtype"):
        mask = np.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"{what}: mask must be a bool array (True = takes part), got dtype "
                        f"{mask.dtype}; pass e.g. w != 0")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what}: mask has shape {tuple(mask.shape)} but the values have "
                         f"{tuple(shape)}; pass one flag per weight")
    return jnp.asarray(mask)


def _prepare(x: Any, k: Any, init: str, key: Any, mask: Any, what: str):
    x = _values(x, what)
    k = _check_int("k", k, 1, 1 << 16, what)
    if init not in INITS:
        raise ValueError(f"{what}: init={init!r} must be one of {', '.join(map(repr, INITS))}")
    if init in RANDOM_INITS:
        if key is None:
            raise ValueError(f"{what}: init={init!r} needs key=jax.random.key(...)")
        check_key(key, f"{what}(key=)")
    m = _mask(mask, tuple(x.shape), what)
    flat = x.astype(jnp.float32)  # keeps x's shape (and sharding): nothing below flattens it
    valid = jnp.ones(flat.shape, bool) if m is None else m
    return flat, valid, k


def _quantiles(flat: jax.Array, valid: jax.Array, k: int, n: jax.Array) -> jax.Array:
    """The ``(i + 1/2)/k`` quantiles of the valid values, linearly interpolated, sort-free.

    The order statistics are found by one bisection on the ordered float keys
    (:func:`~jaxcomp.ops.kth.ordered_key`) for all ``2k`` ranks at once; each
    pass only counts values below each pivot, a ``2k``-sized histogram that
    XLA partitions over a sharded array (an all-reduce), never a gather.
    """
    pos = ((jnp.arange(k, dtype=jnp.float32) + 0.5) / k) * (n - 1).astype(jnp.float32)
    lo_i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, flat.size - 1)
    hi_i = jnp.clip(lo_i + 1, 0, jnp.maximum(n - 1, 0))
    frac = pos - lo_i.astype(jnp.float32)
    rank = jnp.concatenate([lo_i, hi_i]) + 1  # 1-based ranks, nondecreasing within each half
    key = jnp.where(valid, ordered_key(flat), np.uint32(0xFFFFFFFF))  # excluded: above all
    m = rank.shape[0]

    def step(_: Any, lohi: tuple) -> tuple:
        lo, hi = lohi
        piv = lo + (hi - lo) // np.uint32(2)
        order = jnp.argsort(piv)
        sp = piv[order]
        # count(key <= sp[j]) = #keys whose number of pivots below them is <= j
        below = jnp.searchsorted(sp, key, side="left", method="compare_all" if m <= 128
                                 else "scan")
        hist = jnp.zeros((m + 1,), jnp.int32).at[below].add(1)
        cnt = jnp.zeros((m,), jnp.int32).at[order].set(jnp.cumsum(hist)[:m])
        ok = cnt >= rank
        return jnp.where(ok, lo, piv + np.uint32(1)), jnp.where(ok, piv, hi)

    lo0 = jnp.zeros((m,), jnp.uint32)
    _, t = lax.fori_loop(0, 32, step, (lo0, jnp.full((m,), 0xFFFFFFFF, jnp.uint32)))
    v = _key_to_float(t)
    a, b = v[:k], v[k:]
    return a + frac * (b - a)


def _key_to_float(key: jax.Array) -> jax.Array:
    b = jnp.where((key & np.uint32(0x80000000)) != 0, key & np.uint32(0x7FFFFFFF), ~key)
    return lax.bitcast_convert_type(b.astype(jnp.uint32), jnp.float32)


def _init(flat: jax.Array, valid: jax.Array, k: int, init: str, key: Any) -> jax.Array:
    n = jnp.sum(valid.astype(jnp.int32))
    if flat.size == 0:
        return jnp.zeros((k,), jnp.float32)
    if init == "linear":
        lo = jnp.min(jnp.where(valid, flat, jnp.inf))
        hi = jnp.max(jnp.where(valid, flat, -jnp.inf))
        t = jnp.linspace(0.0, 1.0, k) if k > 1 else jnp.full((1,), 0.5)
        c = lo + (hi - lo) * t
    elif init == "density":
        # evenly spaced on the CDF: the (i + 1/2)/k quantiles, linear interpolation
        c = _quantiles(flat, valid, k, n)
    elif init == "kmeans++":
        c = _kmeanspp(flat.reshape(-1), valid.reshape(-1), k, key)
    else:  # Forgy: k distinct participants uniformly at random (repeated when n < k)
        flat, valid = flat.reshape(-1), valid.reshape(-1)  # the draw gathers a sharded array
        u = jax.random.uniform(key, flat.shape)
        order = jnp.argsort(jnp.where(valid, -u, jnp.inf))  # participants first, random order
        pick = order[jnp.arange(k) % jnp.maximum(n, 1)]
        c = flat[pick]
    c = jnp.where(n > 0, c, jnp.zeros_like(c))
    return jnp.sort(c)


def _kmeanspp_step(i: Any, carry: tuple) -> tuple:
    c, d2, flat, valid, key, trials = carry
    total = jnp.sum(d2)
    # D² sampling; when every value already sits on a centroid, uniform among participants
    logits = jnp.where(total > 0, jnp.log(jnp.where(d2 > 0, d2, 0.0)),
                       jnp.where(valid, 0.0, -jnp.inf))
    cand = jax.random.categorical(jax.random.fold_in(key, i), logits, shape=trials.shape)
    dc = jnp.minimum(d2[None, :], jnp.square(flat[None, :] - flat[cand][:, None]))
    best = jnp.argmin(jnp.sum(dc, axis=1))
    return c.at[i].set(flat[cand[best]]), dc[best], flat, valid, key, trials


def _kmeanspp(flat: jax.Array, valid: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """Greedy k-means++: each new centroid is the best of ``2 + ln k`` D²-sampled candidates."""
    trials = jnp.zeros((2 + int(np.log(k)),), jnp.int32)  # its shape is the number of trials
    k0, key = jax.random.split(key)
    first = flat[jax.random.categorical(k0, jnp.where(valid, 0.0, -jnp.inf))]
    d2 = jnp.where(valid, jnp.square(flat - first), 0.0)
    c = jnp.zeros((k,), jnp.float32).at[0].set(first)
    c = lax.fori_loop(1, k, _kmeanspp_step, (c, d2, flat, valid, key, trials))[0]
    return c


def _assign(flat: jax.Array, c: jax.Array) -> jax.Array:
    """Index of the nearest centroid of sorted ``c`` (ties to the lower one)."""
    if c.shape[0] == 1:
        return jnp.zeros(flat.shape, jnp.int32)
    mid = 0.5 * (c[1:] + c[:-1])
    # few centroids: count the midpoints below (fused compares); many: binary search
    method = "compare_all" if c.shape[0] <= 64 else "scan"
    return jnp.searchsorted(mid, flat, side="left", method=method).astype(jnp.int32)


def _relocate(flat: jax.Array, valid: jax.Array, c: jax.Array, lab: jax.Array,
              sums: jax.Array, cnt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gives each empty cluster one of the values farthest from their centroid (as scikit-learn).

    The value leaves its old cluster, whose sum and count are corrected.
    """
    k = c.shape[0]
    empty = cnt == 0
    d = jnp.where(valid, jnp.square(flat - c[lab]), -1.0)
    # the farthest values in decreasing distance (ties: lowest row-major index first), one
    # per empty cluster, by repeated max reductions: no sort or top_k, which would gather a
    # sharded array
    size = flat.size
    strides = np.cumprod((1,) + flat.shape[:0:-1])[::-1] if flat.ndim else np.ones(0, int)
    idx = sum((lax.broadcasted_iota(jnp.int32, flat.shape, a) * int(strides[a])
               for a in range(flat.ndim)), jnp.zeros(flat.shape, jnp.int32))
    n_take = jnp.minimum(jnp.sum(empty.astype(jnp.int32)), size)

    def take(carry: tuple) -> tuple:
        r, d, far_d, xs, olds = carry
        top = jnp.max(d)
        at = idx == jnp.min(jnp.where(d == top, idx, size))
        xs = xs.at[r].set(jnp.sum(jnp.where(at, flat, 0.0)))
        olds = olds.at[r].set(jnp.sum(jnp.where(at, lab, 0)))
        return r + 1, jnp.where(at, -1.0, d), far_d.at[r].set(top), xs, olds

    def more(carry: tuple) -> jax.Array:
        r, _, far_d, _, _ = carry
        return (r < n_take) & ((r == 0) | (far_d[jnp.maximum(r - 1, 0)] > 0))

    init = (jnp.int32(0), d, jnp.full((k,), -1.0, jnp.float32), jnp.zeros((k,), jnp.float32),
            jnp.zeros((k,), jnp.int32))
    _, _, far_d, xs, olds = lax.while_loop(more, take, init)
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1
    r = jnp.clip(rank, 0, k - 1)
    ok = empty & (rank < min(k, size)) & (far_d[r] > 0)
    xp = xs[r]
    old = olds[r]
    sums = sums - jax.ops.segment_sum(jnp.where(ok, xp, 0.0), old, num_segments=k)
    cnt = cnt - jax.ops.segment_sum(ok.astype(cnt.dtype), old, num_segments=k)
    return jnp.where(ok, xp, sums), jnp.where(ok, 1.0, cnt)


def _lloyd_step(_: Any, carry: tuple) -> tuple:
    # module level, so that eager calls reuse the loop compiled by an earlier call
    c, flat, valid = carry
    k = c.shape[0]
    lab = _assign(flat, c)
    # scatter-adds on x's own shape: over a sharded array, local sums and one k-sized all-reduce
    sums = jnp.zeros((k,), jnp.float32).at[lab].add(jnp.where(valid, flat, 0.0))
    cnt = jnp.zeros((k,), jnp.float32).at[lab].add(valid.astype(jnp.float32))
    sums, cnt = lax.cond(jnp.any(cnt == 0) & jnp.any(valid), _relocate,
                         lambda *a: (a[4], a[5]), flat, valid, c, lab, sums, cnt)
    new = jnp.where(cnt > 0, sums / jnp.maximum(cnt, 1.0), c)
    return jnp.sort(new), flat, valid


def _lloyd(flat: jax.Array, valid: jax.Array, c: jax.Array, n_iter: int) -> tuple[jax.Array,
                                                                                  jax.Array]:
    c, _, _ = lax.fori_loop(0, n_iter, _lloyd_step, (c, flat, valid))
    return c, _assign(flat, c)


# One compiled program per static configuration: eager calls compile once instead of once per
# primitive, and under an outer jit these inline.
@functools.partial(jax.jit, static_argnums=(3, 4))
def _init_jit(flat: jax.Array, valid: jax.Array, key: Any, k: int, init: str) -> jax.Array:
    return _init(flat, valid, k, init, key)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _kmeans(flat: jax.Array, valid: jax.Array, key: Any, k: int, init: str, n_iter: int,
            n_init: int) -> tuple[jax.Array, jax.Array]:
    def run(key):
        c, lab = _lloyd(flat, valid, _init(flat, valid, k, init, key), n_iter)
        d = flat - c[lab]
        return c, lab, jnp.sum(jnp.where(valid, d * d, 0.0))

    if n_init == 1:
        c, lab, _ = run(key)
    else:
        cs, labs, sse = lax.map(run, jax.random.split(key, n_init))
        best = jnp.argmin(sse)
        c, lab = cs[best], labs[best]
    return c, jnp.where(valid, lab, -1)


def kmeans_init(
    x: jax.typing.ArrayLike,
    *,
    k: int,
    init: str = "linear",
    key: jax.Array | None = None,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """The ``k`` initial centroids (float32, sorted ascending) of 1-D k-means over ``x``'s values.

    Args:
      x: a floating-point array (all its elements are clustered).
      k: number of centroids, in ``[1, 65536]``.
      init: ``"linear"`` (evenly spaced over ``[min, max]``), ``"density"``
        (the ``(i + 1/2)/k`` quantiles, found without sorting), ``"random"`` (Forgy:
        ``k`` distinct elements; repeated when fewer than ``k`` take part) or
        ``"kmeans++"`` (greedy k-means++ seeding).
      key: PRNG key, needed by ``"random"`` and ``"kmeans++"``.
      mask: optional bool array of ``x``'s shape; False elements take no part.

    Returns:
      A float32 vector of ``k`` centroids. With no element taking part, zeros.

    Raises:
      TypeError: non-float ``x``, non-bool ``mask``, non-int ``k``.
      ValueError: bad ``k`` or ``init``, a missing key, a mask of another
        shape, NaN/Inf in concrete ``x``.

    The centroids are sorted ascending (a random init's draw order is lost).

    Example:
      >>> import jax.numpy as jnp
      >>> kmeans_init(jnp.array([0.0, 1.0, 2.0, 10.0]), k=3).tolist()
      [0.0, 5.0, 10.0]
      >>> kmeans_init(jnp.array([0.0, 1.0, 2.0, 10.0]), k=2, init="density").tolist()
      [0.75, 4.0]

    References:
      Han, Mao, Dally, arXiv:1510.00149, Section 3.2 (centroid initialization).
    """
    flat, valid, k = _prepare(x, k, init, key, mask, "kmeans_init")
    return _init_jit(flat, valid, key, k, init)


def kmeans_1d(
    x: jax.typing.ArrayLike,
    *,
    k: int,
    init: str = "linear",
    key: jax.Array | None = None,
    n_iter: int = 30,
    n_init: int = 1,
    mask: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means on the values of ``x`` (jittable).

    Args:
      x: a floating-point array.
      k: number of clusters, in ``[1, 65536]``.
      init: ``"linear"``, ``"density"``, ``"random"`` or ``"kmeans++"`` (see
        :func:`kmeans_init`).
      key: PRNG key, needed by ``"random"`` and ``"kmeans++"``.
      n_iter: Lloyd iterations (``>= 0``; 0 returns the initial centroids).
      n_init: restarts of a random init (keys split from ``key``); the one of
        lowest objective is returned.
      mask: optional bool array of ``x``'s shape; False elements take no part.

    Returns:
      ``(centroids, labels)``: ``k`` float32 centroids sorted ascending, and
      int32 labels with ``x``'s shape, the index of each element's nearest
      centroid, ``-1`` where ``mask`` is False.

    Raises:
      TypeError, ValueError: as :func:`kmeans_init`; ``n_iter`` negative,
        ``n_init < 1``, or ``n_init > 1`` with a deterministic init.

    Example:
      >>> import jax.numpy as jnp
      >>> c, lab = kmeans_1d(jnp.array([0.0, 0.2, 5.0, 5.2, 9.0]), k=2)
      >>> [round(v, 4) for v in c.tolist()], lab.tolist()
      ([0.1, 6.4], [0, 0, 1, 1, 1])

    References:
      Lloyd 1982; Han, Mao, Dally, arXiv:1510.00149.
    """
    flat, valid, k = _prepare(x, k, init, key, mask, "kmeans_1d")
    n_iter = _check_int("n_iter", n_iter, 0, None, "kmeans_1d")
    n_init = _check_int("n_init", n_init, 1, None, "kmeans_1d")
    if n_init > 1 and init not in RANDOM_INITS:
        raise ValueError(f"kmeans_1d: n_init={n_init} restarts need a random init "
                         f"({' or '.join(map(repr, RANDOM_INITS))}); init={init!r} always "
                         "starts from the same centroids")

    c, lab = _kmeans(flat, valid, key, k, init, n_iter, n_init)
    return c, lab


def kmeans_objective(
    x: jax.typing.ArrayLike,
    centroids: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
) -> jax.Array:
    """Within-cluster sum of squares ``Σ (x_i - c[label_i])²`` over elements with ``label >= 0``.

    Args:
      x: the values (any shape; flattened).
      centroids: the centroid vector.
      labels: one integer label per value; negative labels (pruned) are skipped.

    Returns:
      The float32 objective.

    Raises:
      ValueError: a label count that differs from the value count.

    Example:
      >>> import jax.numpy as jnp
      >>> float(kmeans_objective(jnp.array([0.0, 1.0, 4.0]), jnp.array([0.5, 4.0]),
      ...                        jnp.array([0, 0, 1])))
      0.5
    """
    x = jnp.asarray(x, jnp.float32).reshape(-1)
    lab = jnp.asarray(labels).reshape(-1)
    if lab.shape != x.shape:
        raise ValueError(f"kmeans_objective: {lab.shape[0]} labels for {x.shape[0]} values")
    c = jnp.asarray(centroids, jnp.float32)
    d = x - c[jnp.clip(lab, 0, c.shape[0] - 1)]
    return jnp.sum(jnp.where(lab >= 0, d * d, 0.0))


def kmeans_quantize(
    w: jax.typing.ArrayLike,
    *,
    bits: int,
    init: str = "linear",
    key: jax.Array | None = None,
    n_iter: int = 30,
    n_init: int = 1,
    mask: jax.typing.ArrayLike | str | None = None,
) -> Codebook:
    """Shares the values of ``w`` among ``2**bits`` k-means centroids (jittable).

    Without ``mask`` every weight takes part and the codebook holds
    ``2**bits`` learned centroids. With ``mask`` (a bool array, or
    ``"nonzero"`` for ``w != 0``) the pruned weights take no part: entry 0 of
    the codebook is reserved for them and is exactly zero, and
    ``2**bits - 1`` centroids are learned on the kept weights, so the
    indices still fit in ``bits`` bits.

    Args:
      w: a floating-point weight array.
      bits: index width in ``[1, 16]``.
      init: ``"linear"`` (Han et al.'s best for accuracy), ``"density"``,
        ``"random"`` or ``"kmeans++"`` (lowest objective).
      key: PRNG key, needed by ``"random"`` and ``"kmeans++"``.
      n_iter: Lloyd iterations.
      n_init: restarts of a random init (see :func:`kmeans_1d`).
      mask: ``None``, a bool array of ``w``'s shape (True = kept), or
        ``"nonzero"``.

    With ``init="linear"`` or ``"density"`` a sharded ``w`` is never
    gathered and the indices keep its sharding; ``"random"`` and
    ``"kmeans++"`` gather the values for their draw.

    Returns:
      A :class:`~jaxcomp.Codebook` whose ``centroids`` have ``w``'s dtype
      (sorted ascending after the reserved zero) and whose ``indices``
      (``uint8`` up to 8 bits, else ``uint16``) have ``w``'s shape.

    Raises:
      TypeError: non-float ``w``, non-int ``bits``, a non-bool mask.
      ValueError: ``bits`` outside ``[1, 16]``, an unknown ``init`` or mask
        string, a missing key, NaN/Inf in concrete ``w``.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[0.0, -1.1, 2.0, 0.4], [-0.9, 0.0, 2.2, 0.6]])
      >>> cb = kmeans_quantize(w, bits=2, mask="nonzero")
      >>> [round(v, 2) for v in cb.centroids.tolist()], cb.indices.tolist()
      ([0.0, -1.0, 0.5, 2.1], [[0, 1, 3, 2], [1, 0, 3, 2]])
      >>> cb.index_bits
      2

    References:
      Han, Mao, Dally, "Deep compression", arXiv:1510.00149.
    """
    bits = check_bits(bits, "kmeans_quantize")
    w_arr = _values(w, "kmeans_quantize")
    if isinstance(mask, str):
        if mask != "nonzero":
            raise ValueError(f"kmeans_quantize: mask={mask!r}; pass a bool array, 'nonzero' or "
                             "None")
        mask = w_arr != 0
    k = 1 << bits
    idx_dtype = jnp.uint8 if bits <= 8 else jnp.uint16
    if mask is None:
        c, lab = kmeans_1d(w_arr, k=k, init=init, key=key, n_iter=n_iter, n_init=n_init)
        return Codebook(c.astype(w_arr.dtype), lab.astype(idx_dtype))
    c, lab = kmeans_1d(w_arr, k=k - 1, init=init, key=key, n_iter=n_iter, n_init=n_init,
                       mask=mask)
    centroids = jnp.concatenate([jnp.zeros((1,), jnp.float32), c]).astype(w_arr.dtype)
    return Codebook(centroids, (lab + 1).astype(idx_dtype))
