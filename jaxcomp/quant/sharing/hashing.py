"""HashedNets: a large virtual weight matrix backed by a few real parameters.

Chen et al. (HashedNets) store ``K`` real parameters ``w`` per layer and
read every entry of the (virtual) weight matrix from one of them through a
hash: ``V[i, j] = ξ(i, j) · w[h(i, j)]`` with a bucket hash ``h`` into
``[0, K)`` and a sign hash ``ξ`` into ``{-1, +1}`` (which makes the inner
products unbiased). Only ``w`` is stored and trained; the hashes are
recomputed from the position.

Here the position of an entry is its row-major flat index ``p`` (``i * n +
j`` for a matrix, the same for kernels of any rank), and both hashes are
integer mixes of ``p`` and a per-layer ``seed`` in 32-bit unsigned
arithmetic (the "lowbias32" multiply-xorshift finaliser), computable in JAX
under ``jit`` and bit for bit in NumPy:

* ``h(p) = mix(p, 2·seed) mod K``;
* ``ξ(p) = +1`` if ``mix(p, 2·seed + 1)`` is even, else ``−1``;
* ``mix(p, s) = f(f(p) xor (s · 0x9E3779B9))`` with
  ``f(x) = ((x ⊕ x≫16)·0x7FEB352D ⊕ …≫15)·0x846CA68B ⊕ …≫16``.

:class:`HashedArray` is the parameterised leaf (``materialize()`` builds
``V``; its gradient w.r.t. ``w`` is the signed sum over each bucket, a
scatter-add); :func:`hash_buckets` gives ``(h, ξ)`` for a shape;
:func:`hash_array` and :func:`hash_kernels` turn dense weights into hashed
leaves at a compression factor (``1/8``, ``1/64``: ``K = round(c · size)``).

References:
  Chen, Wilson, Tyree, Weinberger, Chen, "Compressing neural networks with
  the hashing trick", arXiv:1504.04788.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.keys import check_key
from jaxcomp.core.leaves import CompressedLeaf, compressed_leaf, dtype_bits, static_field
from jaxcomp.select.selection import flatten
from jaxcomp.select.selectors import dtype, leaf_type, ndim

__all__ = ["HashedArray", "hash_array", "hash_buckets", "hash_kernels", "hash_positions"]

_GOLDEN = 0x9E3779B9
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_MAX_SIZE = 1 << 32


def _finalize(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(_M1)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(_M2)
    return x ^ (x >> 16)


def _check_seed(seed: Any, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise TypeError(f"{what}: seed must be a Python int in [0, 2**31), got "
                        f"{type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) < (1 << 31):
        raise ValueError(f"{what}: seed={int(seed)} is outside [0, 2**31)")
    return int(seed)


def _check_shape(shape: Any, what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{what}: shape must be a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"{what}: shape {shape} has a negative dimension")
    if math.prod(shape) > _MAX_SIZE:
        raise ValueError(f"{what}: shape {shape} has more than 2**32 entries; flat positions "
                         "are hashed as 32-bit integers")
    return shape


def hash_positions(positions: jax.typing.ArrayLike, salt: int) -> jax.Array:
    """``mix(p, salt)`` of 32-bit unsigned positions (see the module docstring).

    Args:
      positions: non-negative integer positions (cast to uint32).
      salt: a Python int in ``[0, 2**32)``.

    Returns:
      uint32 hashes with the positions' shape.

    Example:
      >>> import numpy as np
      >>> hash_positions(np.arange(3), 0).tolist()
      [0, 1492470133, 911671261]
    """
    p = jnp.asarray(positions).astype(jnp.uint32)
    s = jnp.uint32((int(salt) * _GOLDEN) & 0xFFFFFFFF)
    return _finalize(_finalize(p) ^ s)


def hash_buckets(shape: Any, k: int, *, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """The bucket ``h`` and sign ``ξ`` of every entry of a virtual array (jittable; static args).

    Args:
      shape: the dense (virtual) shape.
      k: number of real parameters, ``>= 1``.
      seed: per-layer seed in ``[0, 2**31)``.

    Returns:
      ``(index, sign)``: int32 buckets in ``[0, k)`` and float32 signs in
      ``{-1, +1}``, both of ``shape``.

    Example:
      >>> idx, sign = hash_buckets((2, 3), 4, seed=1)
      >>> idx.tolist(), sign.tolist()
      ([[2, 0, 1], [0, 2, 2]], [[-1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])
    """
    shape = _check_shape(shape, "hash_buckets")
    if isinstance(k, bool) or not isinstance(k, (numbers.Integral, np.integer)) or k < 1:
        raise ValueError(f"hash_buckets: k must be a positive int, got {k!r}")
    seed = _check_seed(seed, "hash_buckets")
    return _buckets(shape, int(k), seed)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _buckets(shape: tuple[int, ...], k: int, seed: int) -> tuple[jax.Array, jax.Array]:
    # one compiled program per (shape, k, seed); inlined under an outer jit
    p = jnp.arange(math.prod(shape), dtype=jnp.uint32)
    idx = (hash_positions(p, 2 * seed) % jnp.uint32(k)).astype(jnp.int32)
    sign = jnp.where((hash_positions(p, 2 * seed + 1) & 1) == 0, 1.0, -1.0).astype(jnp.float32)
    return idx.reshape(shape), sign.reshape(shape)


@compressed_leaf
class HashedArray(CompressedLeaf):
    """A virtual array ``V[p] = ξ(p) · weights[h(p)]`` backed by ``K`` real parameters.

    ``weights`` (a vector of ``K`` values) is the only array child: it is what
    training updates and what storage holds (``K`` values at their dtype;
    the hash functions cost nothing). ``dense_shape`` and ``seed`` are static.
    ``materialize()`` computes the hashes under ``jit`` from the positions,
    so the gradient w.r.t. ``weights`` is the signed sum of the virtual
    entries' gradients over each bucket. Executing the layer uses the dense
    virtual matrix (``compute_fraction() == 1``).

    Raises:
      ValueError: ``weights`` not a vector, an invalid shape or seed.

    Example:
      >>> import jax.numpy as jnp
      >>> h = HashedArray(jnp.array([1.0, 2.0, 3.0, 4.0]), dense_shape=(2, 3), seed=1)
      >>> h.materialize().tolist()
      [[-3.0, -1.0, -2.0], [-1.0, 3.0, -3.0]]
      >>> h.storage_bits(), h.shape, h.num_params
      (128, (2, 3), 4)

    References:
      Chen et al., "Compressing neural networks with the hashing trick",
      arXiv:1504.04788.
    """

    weights: jax.Array
    dense_shape: tuple = static_field(default=())
    seed: int = static_field(default=0)

    kind: ClassVar[str] = "hashed"

    def __post_init__(self):
        if not hasattr(self.weights, "shape"):
            return
        if len(self.weights.shape) != 1 or self.weights.shape[0] < 1:
            raise ValueError(f"HashedArray: weights must be a non-empty vector of the K real "
                             f"parameters, got shape {tuple(self.weights.shape)}")
        object.__setattr__(self, "dense_shape", _check_shape(self.dense_shape, "HashedArray"))
        _check_seed(self.seed, "HashedArray")

    @property
    def num_params(self) -> int:
        """``K``, the number of real parameters."""
        return int(self.weights.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dense_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.weights.dtype)

    def materialize(self) -> jax.Array:
        idx, sign = hash_buckets(self.dense_shape, self.num_params, seed=self.seed)
        return jnp.take(self.weights, idx, axis=0) * sign.astype(self.weights.dtype)

    def storage_bits(self) -> int:
        return self.num_params * dtype_bits(self.weights.dtype)

    def compute_fraction(self) -> float:
        return 1.0


INIT_MODES = ("project", "sample")


@functools.partial(jax.jit, static_argnums=(2,))
def _sample(w: jax.Array, key: jax.Array, k: int) -> jax.Array:
    flat = w.reshape(-1)
    return flat[jax.random.permutation(key, flat.shape[0])[:k]]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _project(w: jax.Array, k: int, seed: int) -> jax.Array:
    """The least-squares weights: the signed mean of each bucket (0 when empty)."""
    idx, sign = _buckets(tuple(w.shape), k, seed)
    num = jax.ops.segment_sum(w.reshape(-1).astype(jnp.float32) * sign.reshape(-1),
                              idx.reshape(-1), num_segments=k)
    cnt = jax.ops.segment_sum(jnp.ones((w.size,), jnp.float32), idx.reshape(-1), num_segments=k)
    return (num / jnp.maximum(cnt, 1.0)).astype(w.dtype)


def _num_params(size: int, compression: Any, what: str) -> int:
    if isinstance(compression, bool) or not isinstance(compression, (numbers.Real, np.number)):
        raise TypeError(f"{what}: compression must be a number in (0, 1], got {compression!r}")
    c = float(compression)
    if not 0.0 < c <= 1.0:
        raise ValueError(f"{what}: compression={compression!r} is outside (0, 1]; it is the "
                         "fraction of real parameters kept, e.g. 1/8 or 1/64")
    return max(1, min(size, round(c * size)))


def hash_array(
    w: jax.typing.ArrayLike,
    *,
    compression: float,
    seed: int = 0,
    init: str = "project",
    key: jax.Array | None = None,
) -> HashedArray:
    """A :class:`HashedArray` of ``w``'s shape with ``K = round(compression · size)`` parameters.

    Args:
      w: a dense floating-point array.
      compression: fraction of real parameters, in ``(0, 1]`` (``1/8``,
        ``1/64``); ``K`` is at least 1.
      seed: the hash seed in ``[0, 2**31)``.
      init: ``"project"``: the least-squares fit ``w_k = mean_{h(p)=k} ξ(p)
        W[p]`` (empty buckets 0), to compress a trained layer;
        ``"sample"``: ``K`` entries of ``w`` drawn without replacement, so a
        freshly initialised layer keeps its initializer's distribution (for
        training from scratch, as HashedNets do).
      key: PRNG key, needed by ``"sample"``.

    Returns:
      The hashed leaf, ``weights`` in ``w``'s dtype.

    Raises:
      TypeError: non-float ``w``, a non-number compression.
      ValueError: compression outside ``(0, 1]``, unknown ``init``, a
        missing key, an empty ``w``.

    Example:
      >>> import jax.numpy as jnp
      >>> h = hash_array(jnp.arange(1.0, 9.0).reshape(2, 4), compression=0.5)
      >>> h.num_params, h.materialize().shape
      (4, (2, 4))
    """
    what = "hash_array"
    if not hasattr(w, "dtype"):
        w = np.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{what}: w must be a floating-point array, got dtype {w.dtype}")
    size = int(np.prod(np.shape(w)))
    if size == 0:
        raise ValueError(f"{what}: w is empty (shape {tuple(np.shape(w))}); nothing to hash")
    k = _num_params(size, compression, what)
    seed = _check_seed(seed, what)
    if init not in INIT_MODES:
        raise ValueError(f"{what}: init={init!r} must be 'project' or 'sample'")
    w = jnp.asarray(w)
    if init == "sample":
        if key is None:
            raise ValueError(f"{what}: init='sample' needs key=jax.random.key(...)")
        check_key(key, f"{what}(key=)")
        weights = _sample(w, key, k)
    else:
        weights = _project(w, k, seed)
    return HashedArray(weights, dense_shape=tuple(w.shape), seed=seed)


def hash_kernels(
    params: Any,
    *,
    compression: float,
    where: Any = None,
    seed: int = 0,
    init: str = "project",
    key: jax.Array | None = None,
) -> Any:
    """Replaces the selected dense leaves of a tree by :class:`HashedArray` leaves.

    Selected leaf ``i`` (in flattening order) uses hash seed ``seed + i``
    and, for ``init="sample"``, the key ``fold_in(key, i)``. Other leaves
    are kept. Train the result with a model that sees
    ``jaxcomp.materialize(params)`` (e.g. the compressor
    ``jaxcomp.stateless(jaxcomp.materialize)``): gradients reach the real
    parameters only.

    Args:
      params: a parameter tree.
      compression: fraction of real parameters per leaf, in ``(0, 1]``.
      where: which leaves (default: float arrays with ``ndim >= 2``).
      seed: base hash seed.
      init: ``"project"`` or ``"sample"`` (see :func:`hash_array`).
      key: PRNG key for ``"sample"``.

    Returns:
      The tree with hashed leaves.

    Raises:
      ValueError: an empty selection (listing the paths), or what
        :func:`hash_array` raises, naming the path.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"fc": {"kernel": jnp.ones((16, 8)), "bias": jnp.zeros(8)}}
      >>> h = hash_kernels(p, compression=1 / 8)
      >>> type(h["fc"]["kernel"]).__name__, h["fc"]["kernel"].num_params
      ('HashedArray', 16)

    References:
      Chen et al., arXiv:1504.04788.
    """
    sel = flatten(params, where, what="hash_kernels",
                  default=ndim(min=2) & dtype("float") & ~leaf_type(CompressedLeaf),
                  noun="kernel")
    seed = _check_seed(seed, "hash_kernels")
    out = []
    for i, (path, w) in enumerate(sel.pairs):
        if isinstance(w, CompressedLeaf):
            raise TypeError(f"hash_kernels: '{path}' is a {type(w).__name__}; select dense "
                            "arrays only (or materialize the tree first)")
        try:
            out.append(hash_array(w, compression=compression, seed=seed + i, init=init,
                                  key=None if key is None else jax.random.fold_in(key, i)))
        except (TypeError, ValueError) as e:
            raise type(e)(f"hash_kernels: '{path}': {e}") from None
    return sel.rebuild(out)
