"""Sort-free, exact k-th-smallest selection: masks, thresholds, counts.

Every pruning mask in :mod:`jaxcomp.prune` comes from one primitive: "mark the
``k`` smallest scores" over one array or over a group of arrays (a global
threshold); percentile calibration and any other "the k-th value of a
sharded array" question use the same kernels. Sorting a sharded array all-gathers it, and a global top-k over a
concatenated model is the worst case, so nothing here sorts, calls
``lax.top_k`` or concatenates leaves. Instead:

1. Scores are mapped to unsigned 32-bit *ordered keys*: the float32 bit
   pattern, with the sign bit flipped for non-negative values and all bits
   flipped for negative ones, so that ``a < b`` as floats iff
   ``key(a) < key(b)`` as integers (``-0.0`` is first made ``+0.0``; NaN maps
   to the largest key, i.e. ranks above ``+inf``).
2. The k-th smallest key is found by a multi-way search on the integer range
   (``ways - 1`` pivots per pass, so ``ceil(32 / log2(ways))`` passes). Each
   pass needs only counts ``sum(key <= pivot)``: scalar reductions that XLA
   partitions across devices (a ``psum`` of partial counts), never a gather.
3. Ties at the threshold are broken by flat index, again sort-free: among
   elements equal to the threshold the ones with the *lowest* flat indices
   are pruned first (over a group: the earlier leaf first, then the lower
   index), found by a second search on indices. It makes no trip unless some
   leaf really has a partial tie, so continuous scores pay nothing.

The result is exact: exactly ``k`` elements are marked, and every mark keeps
its input's shape and sharding. Rounding: ``k = round(sparsity * n)`` with
halves to even (:func:`num_pruned`).

NaN scores: with concrete inputs the public functions raise ``ValueError``
(``check_finite=True``); under ``jit`` the values cannot be inspected, so NaN
scores rank above ``+inf`` (they are kept, never pruned). Call
:func:`check_finite` on the tree before jitting to get the error.

Scores are compared in float32 (bfloat16/float16 convert exactly; float64
and integer scores are rounded to float32 first, so values equal in float32
are ties; backends that flush subnormals, like XLA on CPU, treat subnormal
scores as zero). A leaf may hold at most ``2**31 - 1`` elements and a global group at
most ``2**31 - 1`` selected elements in total.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.errors import check_in_range
from jaxcomp.select.paths import leaves_with_paths

__all__ = [
    "DEFAULT_WAYS",
    "bottomk_mask",
    "bottomk_mask_unsharded",
    "check_finite",
    "count_true",
    "is_tracer",
    "kth_smallest",
    "num_pruned",
    "ordered_key",
    "smallest_k_masks",
    "threshold_mask",
    "topk_mask",
    "validate_sparsity",
]

#: Pivots per pass are ``ways - 1``; 2 ways is plain bisection (one count per pass),
#: which measured fastest on CPU (sibling counts are not fused into one pass).
DEFAULT_WAYS = 2
#: Largest chunk split off an axis for the uint8 partial counts (see ``count_true``).
_MAX_CHUNK = 32
_U32_MAX = np.uint32(0xFFFFFFFF)
_SIGN = np.uint32(0x80000000)
_INT32_MAX = 2**31 - 1


def is_tracer(x: Any) -> bool:
    """Whether ``x`` is a traced value (inside ``jit``, ``grad``, ...), not a concrete one.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> is_tracer(jnp.ones(2)), jax.jit(lambda x: is_tracer(x))(jnp.ones(2))
      (False, Array(True, dtype=bool))
    """
    return isinstance(x, jax.core.Tracer)


def ordered_key(scores: jax.typing.ArrayLike) -> jax.Array:
    """Maps scores to ``uint32`` keys with the same order as the float values.

    ``-0.0`` and ``+0.0`` get the same key; NaN gets the largest key
    (``2**32 - 1``), above ``+inf``.

    Args:
      scores: any real array (converted to float32).

    Returns:
      A ``uint32`` array of the same shape (and sharding).

    Example:
      >>> import jax.numpy as jnp
      >>> k = ordered_key(jnp.array([-2.0, -0.0, 0.0, 1.5, jnp.inf]))
      >>> bool(k[0] < k[1]), bool(k[1] == k[2]), bool(k[3] < k[4])
      (True, True, True)
    """
    x = jnp.asarray(scores)
    if x.dtype != jnp.float32:
        x = x.astype(jnp.float32)
    x = jnp.where(x == 0, jnp.zeros_like(x), x)  # -0.0 -> +0.0
    b = lax.bitcast_convert_type(x, jnp.uint32)
    key = jnp.where((b & _SIGN) != 0, ~b, b | _SIGN)
    return jnp.where(jnp.isnan(x), _U32_MAX, key)


def _key_to_float(key: jax.Array) -> jax.Array:
    b = jnp.where((key & _SIGN) != 0, key & ~_SIGN, ~key)
    return lax.bitcast_convert_type(b.astype(jnp.uint32), jnp.float32)


def _flat_le(shape: tuple[int, ...], j: jax.Array) -> jax.Array:
    """``flat_index <= j`` for every element (row-major), ``j`` a uint32 in ``[0, size)``.

    Compared axis by axis against ``j``'s coordinates, so that inside a loop
    body it is one fused pass of iotas and scalar compares that XLA does not
    hoist into a materialised index array.
    """
    coords, rest = [], j
    for d in range(len(shape) - 1, -1, -1):
        coords.append(rest % np.uint32(shape[d]))
        rest = rest // np.uint32(shape[d])
    coords.reverse()
    out = None
    for d in range(len(shape) - 1, -1, -1):
        io = lax.broadcasted_iota(jnp.uint32, shape, d)
        out = io <= coords[d] if out is None else (io < coords[d]) | ((io == coords[d]) & out)
    return out


def _tie_cut(key: jax.Array, t: jax.Array, r: jax.Array, partial: jax.Array) -> jax.Array:
    """The flat index of the ``r``-th element equal to ``t`` (row-major), when ``partial``.

    Bisection on the index with ``count(key == t and index <= j)``; when the
    tie is not partial the loop makes no trip and the result is ``size - 1``
    (every tie taken). The keys pass through an ``optimization_barrier`` tied
    to the loop carry, so XLA cannot hoist the comparison out of the loop and
    materialise it: a conditional holding this search (the mask update of a
    training step) then needs no temporaries of the array's size, which on
    XLA:CPU slow every step of a small model, even steps that skip it.
    """
    last = np.uint32(key.size - 1)

    def body(carry):
        lo, hi = carry
        piv = lo + (hi - lo) // np.uint32(2)
        k = lax.optimization_barrier((key, lo))[0]
        ok = count_true((k == t) & _flat_le(key.shape, piv)) >= r
        return jnp.where(ok, lo, piv + np.uint32(1)), jnp.where(ok, piv, hi)

    start = (jnp.uint32(0), jnp.where(partial, last, jnp.uint32(0)))
    _, j = lax.while_loop(lambda c: c[0] < c[1], body, start)
    return jnp.where(partial, j, last)


_DECIMALS = 10**6  # sparsities with up to six decimals are counted from their decimal value


def _round_div_decimal(m: jax.Array, size: int) -> jax.Array:
    """``round_half_even(m * size / 10**6)`` exactly, with int32 arithmetic only.

    ``m`` is a traced int32 in ``[0, 10**6]`` and ``size < 2**31`` is static.
    Writing ``size = a*D + b`` and ``m = m1*2**10 + m0`` keeps every
    intermediate product below ``2**31``.
    """
    d = _DECIMALS
    a, b = divmod(int(size), d)
    m = m.astype(jnp.int32)
    m1, m0 = m >> 10, m & 1023
    u = m1 * b  # < 2**30
    uq, ur = u // d, u % d
    v = ur * 1024 + m0 * b  # < 2**31
    vq, r = v // d, v % d
    q = m * a + uq * 1024 + vq
    up = (2 * r > d) | ((2 * r == d) & (q % 2 == 1))
    return q + up.astype(jnp.int32)


def num_pruned(sparsity: Any, size: int) -> Any:
    """How many of ``size`` elements a ``sparsity`` prunes: ``round(sparsity * size)``.

    The same integer comes out eagerly and under ``jit`` (both compute from
    the float32 value of the sparsity, as a compressor's state holds it), and
    it is exact for large ``size``: a sparsity whose float32 value is that of
    a decimal with at most six places (0.9, 0.75, 0.123456) counts as that
    decimal, ``round(d * size)`` in exact integer arithmetic (ResNet-50's
    25,557,032 weights at 0.9 prune 23,001,329); any other value (a gradual
    schedule between its end points) as ``round(float32(s) * size)``. Halves
    round to even (Python's and ``jnp.round``'s rule). The result is clipped
    to ``[0, size]``; a concrete sparsity gives a Python int.

    Example:
      >>> num_pruned(0.5, 5), num_pruned(0.9, 1000), num_pruned(0.9, 25_557_032)
      (2, 900, 23001329)
    """
    if not 0 <= int(size) < 2**31:
        raise ValueError(f"num_pruned: size={size} must lie in [0, 2**31)")
    size = int(size)
    if is_tracer(sparsity) or isinstance(sparsity, jax.Array) and not _concrete_scalar(sparsity):
        s = jnp.asarray(sparsity, jnp.float32)
        m = jnp.round(s * np.float32(_DECIMALS))
        is_decimal = (m >= 0) & (m <= _DECIMALS) & (
            m.astype(jnp.float32) / np.float32(_DECIMALS) == s)
        exact = _round_div_decimal(jnp.clip(m, 0, _DECIMALS).astype(jnp.int32), size)
        approx_f = jnp.round(s * np.float32(size))
        big = approx_f >= np.float32(size)  # also where float32(size) rounds above size
        approx = jnp.where(big, size, jnp.where(big, np.float32(0), approx_f).astype(jnp.int32))
        return jnp.clip(jnp.where(is_decimal, exact, approx), 0, size).astype(jnp.int32)
    # the same float32 operations on the host (IEEE single ops round alike), exact integers
    s = np.float32(sparsity)
    m = float(np.round(s * np.float32(_DECIMALS)))
    if 0 <= m <= _DECIMALS and np.float32(m) / np.float32(_DECIMALS) == s:
        k = round(Fraction(int(m), _DECIMALS) * size)
    else:
        k = int(np.round(s * np.float32(size)))
    return min(max(k, 0), size)


def _concrete_scalar(x: Any) -> bool:
    try:
        float(x)
        return True
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


def check_finite(tree: Any, what: str = "scores") -> None:
    """Raises ``ValueError`` naming the first path holding NaN or Inf.

    A no-op for traced values (inside ``jit``): call it on concrete arrays
    before jitting to catch non-finite parameters or scores.

    Example:
      >>> import jax.numpy as jnp
      >>> check_finite({"w": jnp.ones(2)})
      >>> check_finite({"w": jnp.array([1.0, jnp.nan])})
      Traceback (most recent call last):
        ...
      ValueError: scores at 'w' contain NaN or Inf (1 of 2 values); ...
    """
    for p, leaf in leaves_with_paths(tree):
        if is_tracer(leaf) or not hasattr(leaf, "dtype"):
            continue
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        bad = int(jnp.sum(~jnp.isfinite(leaf)))
        if bad:
            raise ValueError(
                f"{what} at '{p or '<root>'}' contain NaN or Inf ({bad} of {leaf.size} values); "
                "pruning thresholds are undefined for them. Fix the training divergence, or "
                "replace them (e.g. jnp.nan_to_num) before pruning."
            )


def _chunk_plan(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A reshape and the axes to sum in uint8 (<= 255 ones each) for a fast count.

    Leading axes whose product stays <= 255 are summed whole; the next axis
    ``d`` is split as ``(d // b, b)`` with ``b <= 32`` a divisor of ``d``, so
    a shard boundary on ``d`` (sharded ``s`` ways with ``b | d / s``) stays
    a boundary of the major part and no data moves between devices.
    """
    prod, axes, new_shape = 1, [], []
    for i, d in enumerate(shape):
        if prod * d <= 255:
            prod *= d
            axes.append(len(new_shape))
            new_shape.append(d)
            continue
        cap = min(_MAX_CHUNK, 255 // prod)
        b = max(c for c in range(1, cap + 1) if d % c == 0)
        if b > 1:
            new_shape.extend([d // b, b])
            axes.append(len(new_shape) - 1)
        else:
            new_shape.append(d)
        new_shape.extend(shape[i + 1:])
        break
    return tuple(new_shape), tuple(axes)


def count_true(pred: jax.Array) -> jax.Array:
    """``sum(pred)`` as int32, computed fast: uint8 partial sums, then int32.

    XLA's CPU backend vectorises a uint8 reduction over a major axis far
    better than a fused compare-and-sum in int32 (about 4-6x here), and the
    reshape only splits one axis, keeping shard boundaries.

    Example:
      >>> import jax.numpy as jnp
      >>> int(count_true(jnp.arange(3000).reshape(300, 10) % 3 == 0))
      1000
    """
    pred = jnp.asarray(pred, bool)
    if pred.ndim == 0:
        return pred.astype(jnp.int32)
    new_shape, axes = _chunk_plan(tuple(pred.shape))
    if not axes:
        return jnp.sum(pred, dtype=jnp.int32)
    part = pred.reshape(new_shape).astype(jnp.uint8).sum(axes, dtype=jnp.uint8)
    return jnp.sum(part, dtype=jnp.int32)


def _pivots(lo: jax.Array, hi: jax.Array, ways: int) -> jax.Array:
    """``ways - 1`` pivots splitting ``[lo, hi]`` (uint32) evenly; shape ``lo.shape + (w-1,)``."""
    span = hi - lo  # no overflow: hi >= lo
    j = jnp.arange(1, ways, dtype=jnp.uint32)
    w = np.uint32(ways)
    step = (span // w)[..., None] * j + ((span % w)[..., None] * j) // w
    return lo[..., None] + step


def _search(
    key_fns: Sequence[Any],
    groups: Sequence[int],
    n_groups: int,
    targets: jax.Array,
    ways: int,
) -> jax.Array:
    """Per group g, the smallest t with ``sum_{l in g} count(key_l <= t) >= targets[g]``.

    ``key_fns[l]()`` returns leaf ``l``'s uint32 keys (called inside the loop
    body so XLA may fuse the key computation into each counting pass).
    """
    if ways < 2:
        raise ValueError(f"ways={ways} must be at least 2")
    members = [[i for i, g in enumerate(groups) if g == gi] for gi in range(n_groups)]
    targets = targets.astype(jnp.int32)

    def counts(pivots):  # pivots: (G, ways-1) -> (G, ways-1) int32
        rows = []
        for gi in range(n_groups):
            c = jnp.zeros((ways - 1,), jnp.int32)
            for li in members[gi]:
                key = key_fns[li]()
                c = c + jnp.stack([count_true(key <= pivots[gi, j]) for j in range(ways - 1)])
            rows.append(c)
        return jnp.stack(rows)

    def cond(carry):
        lo, hi = carry
        return jnp.any(lo < hi)

    def body(carry):
        lo, hi = carry
        piv = _pivots(lo, hi, ways)
        ok = counts(piv) >= targets[:, None]  # monotone in j
        new_hi = jnp.min(jnp.where(ok, piv, hi[:, None]), axis=1)
        new_lo = jnp.max(jnp.where(ok, lo[:, None], piv + np.uint32(1)), axis=1)
        new_lo = jnp.maximum(new_lo, lo)
        return new_lo, new_hi

    lo = jnp.zeros((n_groups,), jnp.uint32)
    hi = jnp.full((n_groups,), _U32_MAX, jnp.uint32)
    _, hi = lax.while_loop(cond, body, (lo, hi))
    return hi


def smallest_k_masks(
    scores: Sequence[jax.typing.ArrayLike],
    ks: Sequence[Any],
    *,
    groups: Sequence[int] | None = None,
    ways: int = DEFAULT_WAYS,
) -> list[jax.Array]:
    """Marks exactly ``k`` smallest scores per group of arrays, without sorting.

    The building block of every mask: with one group per array it is a
    layerwise selection; with all arrays in one group it is a global one (one
    threshold over all of them).

    Args:
      scores: the score arrays (any shapes, any sharding).
      ks: one count per group (Python ints or traced int scalars), each in
        ``[0, group size]``.
      groups: group id of each array (``0..len(ks)-1``); default one group
        per array.
      ways: pivots per counting pass plus one (2 = bisection).

    Returns:
      One bool array per input, True at the selected (smallest) elements.
      Ties at the threshold are taken lowest flat index first, earlier arrays
      of a group first.

    Example:
      >>> import jax.numpy as jnp
      >>> a, b = smallest_k_masks([jnp.array([3.0, 1.0]), jnp.array([2.0, 0.0])], [2], groups=[0, 0])
      >>> a.tolist(), b.tolist()
      ([False, True], [False, True])
    """
    scores = [jnp.asarray(s) for s in scores]
    if groups is None:
        groups = list(range(len(scores)))
    groups = [int(g) for g in groups]
    n_groups = len(ks)
    if len(groups) != len(scores):
        raise ValueError(f"groups has {len(groups)} entries for {len(scores)} score arrays")
    if any(g < 0 or g >= n_groups for g in groups):
        raise ValueError(f"group ids must lie in [0, {n_groups}), got {sorted(set(groups))}")
    sizes = [int(s.size) for s in scores]
    for gi in range(n_groups):
        tot = sum(n for n, g in zip(sizes, groups) if g == gi)
        if tot > _INT32_MAX:
            raise ValueError(
                f"a threshold group holds {tot} elements, more than 2**31 - 1 (int32 counts); "
                "use scope='layerwise' or split the selection with where="
            )
    if not scores:
        return []
    if all(n == 0 for n in sizes):
        return [jnp.zeros(s.shape, bool) for s in scores]
    ks = jnp.stack([jnp.asarray(k, jnp.int32) for k in ks])
    return list(_smallest_k_kernel(tuple(scores), ks, tuple(groups), n_groups, int(ways)))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _smallest_k_kernel(scores, ks, groups, n_groups, ways):
    # Compiled once per shapes/shardings so eager calls hit the cache; inside a
    # caller's jit it is inlined like any jnp function.
    keys = [ordered_key(s) for s in scores]
    # 1. the k-th smallest key per group.
    thr = _search([lambda k=k: k for k in keys], groups, n_groups, ks, ways)
    t_leaf = [thr[g] for g in groups]
    less = [count_true(k < t) for k, t in zip(keys, t_leaf)]
    tie = [count_true(k == t) for k, t in zip(keys, t_leaf)]

    # 2. how many tied elements each leaf gives up: earlier leaves first.
    need = [ks[gi] - sum((less[i] for i, g in enumerate(groups) if g == gi), jnp.int32(0))
            for gi in range(n_groups)]
    r, before = [], [jnp.int32(0)] * n_groups
    for i, g in enumerate(groups):
        r.append(jnp.clip(need[g] - before[g], 0, tie[i]))
        before[g] = before[g] + tie[i]
    # 3. among ties, the lowest flat indices: a search that makes no trip unless the leaf's
    #    tie is partial (at most one leaf per group for a global threshold).
    out = []
    for i, (k, t) in enumerate(zip(keys, t_leaf)):
        ties = (k == t) & (r[i] > 0)
        if k.ndim and k.size:
            partial = (r[i] > 0) & (r[i] < tie[i])
            ties = ties & _flat_le(k.shape, _tie_cut(k, t, r[i], partial))
        out.append((k < t) | ties)
    return out


def validate_sparsity(sparsity: Any, what: str = "sparsity") -> None:
    """Raises ``ValueError`` naming ``what`` unless a concrete ``sparsity`` lies in ``[0, 1)``.

    A traced sparsity cannot be inspected and passes (the mask functions then
    treat it as given).

    Example:
      >>> validate_sparsity(0.5)
      >>> validate_sparsity(1.0)
      Traceback (most recent call last):
        ...
      ValueError: sparsity=1.0 is outside [0.0, 1.0)
    """
    if is_tracer(sparsity):
        return
    check_in_range(what, float(sparsity), 0.0, 1.0, high_inclusive=False)


def _maybe_check(scores: Any, check: bool) -> None:
    if check and not is_tracer(scores):
        check_finite(scores)


def bottomk_mask(scores: jax.typing.ArrayLike, k: Any, *, check_finite: bool = True) -> jax.Array:
    """True at exactly the ``k`` smallest scores (ties: lowest flat index first).

    Args:
      scores: a real array.
      k: how many to mark, in ``[0, scores.size]`` (int or traced int).
      check_finite: with concrete scores, raise on NaN/Inf.

    Example:
      >>> import jax.numpy as jnp
      >>> bottomk_mask(jnp.array([1.0, 1.0, 0.5, 1.0]), 2).tolist()
      [True, False, True, False]
    """
    scores = jnp.asarray(scores)
    _check_k(k, scores.size)
    _maybe_check(scores, check_finite)
    return smallest_k_masks([scores], [k])[0]


def topk_mask(scores: jax.typing.ArrayLike, k: Any, *, check_finite: bool = True) -> jax.Array:
    """True at exactly the ``k`` largest scores; the complement of ``bottomk_mask(n - k)``.

    Ties: higher flat indices are kept first (lower ones are pruned first).
    Sort-free and sharding-preserving (see the module docstring).

    Args:
      scores: a real array; ``-inf`` entries are never kept unless needed.
      k: how many to keep, in ``[0, scores.size]``.
      check_finite: with concrete scores, raise on NaN (``-inf`` is allowed).

    Example:
      >>> import jax.numpy as jnp
      >>> topk_mask(jnp.array([0.1, 0.9, 0.5, 0.7]), 2).tolist()
      [False, True, False, True]
    """
    scores = jnp.asarray(scores)
    n = scores.size
    _check_k(k, n)
    if check_finite and not is_tracer(scores) and bool(jnp.any(jnp.isnan(scores))):
        raise ValueError("topk_mask: scores contain NaN; replace them (jnp.nan_to_num) first")
    return ~smallest_k_masks([scores], [n - k])[0]


def threshold_mask(
    scores: jax.typing.ArrayLike, sparsity: Any, *, check_finite: bool = True
) -> jax.Array:
    """Keep-mask pruning exactly ``round(sparsity * size)`` of the smallest scores.

    Args:
      scores: a real array (e.g. ``|w|``).
      sparsity: fraction to prune, in ``[0, 1)``; may be traced.
      check_finite: with concrete scores, raise ``ValueError`` on NaN/Inf.

    Returns:
      A bool array (True = kept) with the shape and sharding of ``scores``.

    Raises:
      ValueError: sparsity outside ``[0, 1)`` or non-finite concrete scores.

    Example:
      >>> import jax.numpy as jnp
      >>> threshold_mask(jnp.array([0.3, -0.1, 0.2, 0.4]), 0.5).tolist()
      [True, False, False, True]
    """
    scores = jnp.asarray(scores)
    validate_sparsity(sparsity)
    _maybe_check(scores, check_finite)
    return ~smallest_k_masks([scores], [num_pruned(sparsity, scores.size)])[0]


def kth_smallest(scores: jax.typing.ArrayLike, k: Any) -> jax.Array:
    """The ``k``-th smallest score (1-based), found without sorting.

    Example:
      >>> import jax.numpy as jnp
      >>> float(kth_smallest(jnp.array([5.0, -1.0, 3.0, 2.0]), 2))
      2.0
    """
    scores = jnp.asarray(scores)
    if not is_tracer(k) and not 1 <= int(k) <= scores.size:
        raise ValueError(f"kth_smallest: k={k} must lie in [1, {scores.size}]")
    key = ordered_key(scores)
    t = _search([lambda: key], [0], 1, jnp.asarray([k]), DEFAULT_WAYS)
    return _key_to_float(t[0])


def _check_k(k: Any, n: int) -> None:
    if is_tracer(k):
        return
    if isinstance(k, bool) or int(k) != k or not 0 <= int(k) <= n:
        raise ValueError(f"k={k!r} must be an integer in [0, {n}] (the array has {n} elements)")



def bottomk_mask_unsharded(scores: jax.Array, k: Any) -> jax.Array:
    """True at exactly ``k`` smallest scores (ties: lowest flat index first), for loop bodies.

    The selection of :func:`bottomk_mask` in a form that compiles quickly
    inside a ``lax.scan``/``fori_loop`` body: a fixed 32-pass bisection on
    :func:`ordered_key` (no ``while_loop``) and a cumulative sum over the
    tied elements. The cumulative sum runs over the flattened array, which
    gathers a sharded array: use it on blocks held by one device (a layer
    solver's column block), and :func:`smallest_k_masks` elsewhere. No
    checks: ``k`` must lie in ``[0, scores.size]``.

    Example:
      >>> import jax.numpy as jnp
      >>> bottomk_mask_unsharded(jnp.array([1.0, 1.0, 0.5, 1.0]), 2).tolist()
      [True, False, True, False]
    """
    scores = jnp.asarray(scores)
    key = ordered_key(scores)

    def step(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // np.uint32(2)
        ok = jnp.sum(key <= mid, dtype=jnp.int32) >= k
        return jnp.where(ok, lo, mid + np.uint32(1)), jnp.where(ok, mid, hi)

    _, t = lax.fori_loop(0, 32, step, (jnp.uint32(0), jnp.uint32(_U32_MAX)))
    below = key < t
    need = k - jnp.sum(below, dtype=jnp.int32)
    tie = (key == t).reshape(-1)
    rank = jnp.cumsum(tie, dtype=jnp.int32) - 1
    return below | (tie & (rank < need)).reshape(scores.shape)
