"""Parameterised leaves: compressed tensors that know their dense form.

A parameter tree may hold, in place of a dense array, a *compressed leaf*: a
registered pytree dataclass whose array fields are the trainable or stored
pieces (low-rank factors, integer codes and scales, a codebook and indices)
and whose static fields describe the dense tensor it stands for. Every
compressed leaf can

* ``materialize()`` itself into the dense array (differentiably, under jit);
* report ``shape``/``dtype``/``size`` of that dense array;
* report ``storage_bits()``, the bits it needs when stored;
* report ``compute_fraction()``, the fraction of the dense layer's
  multiply-accumulates needed when the compressed form is executed directly,
  and ``weight_bits``, the bit width of its weights for bit-operation counts.

:func:`materialize` turns every compressed leaf in a tree back into a dense
array so that an unchanged model runs on it.

New leaf types subclass :class:`CompressedLeaf` and decorate with
:func:`compressed_leaf`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Codebook",
    "CompressedLeaf",
    "LowRank",
    "QArray",
    "compressed_leaf",
    "dtype_bits",
    "is_compressed",
    "materialize",
    "static_field",
]

T = TypeVar("T")


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is static pytree metadata (not an array child)."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def compressed_leaf(cls: type[T]) -> type[T]:
    """Class decorator: a frozen dataclass registered as a JAX pytree.

    Fields declared with :func:`static_field` become static metadata; all other
    fields are pytree children (arrays that jit traces and grad differentiates).
    The pytree keys are the field names (``GetAttrKey``), as for
    :func:`jax.tree_util.register_dataclass`.

    Validation in ``__post_init__`` runs when code constructs a leaf. JAX
    rebuilding a node from its children (``tree_map``, the outputs of ``jit``,
    gradients, optimizer moments that share the parameters' structure) does
    not call ``__init__``: such a node holds whatever arrays the transformation
    produced (e.g. float Adam moments in the slot of integer codes).

    Example:
      >>> import jax.numpy as jnp
      >>> @compressed_leaf
      ... class Scaled(CompressedLeaf):
      ...     base: jnp.ndarray
      ...     factor: float = static_field(default=2.0)
      ...     def materialize(self):
      ...         return self.base * self.factor
      >>> materialize({"w": Scaled(jnp.ones(3))})["w"].tolist()
      [2.0, 2.0, 2.0]
    """
    if not issubclass(cls, CompressedLeaf):
        raise TypeError(f"{cls.__name__} must subclass jaxcomp.CompressedLeaf")
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static", False) else data).append(f.name)

    def flatten_with_keys(x):
        children = [(jax.tree_util.GetAttrKey(n), getattr(x, n)) for n in data]
        return children, tuple(getattr(x, n) for n in meta)

    def flatten(x):
        return [getattr(x, n) for n in data], tuple(getattr(x, n) for n in meta)

    def unflatten(aux, children):
        # Structural rebuild: no __init__, so no validation of transformed children.
        obj = object.__new__(cls)
        for n, v in zip(meta, aux):
            object.__setattr__(obj, n, v)
        for n, v in zip(data, children):
            object.__setattr__(obj, n, v)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def dtype_bits(dtype: Any) -> int:
    """Bits per element of a dtype (bool counts as 1 bit)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return 1
    if jnp.issubdtype(dtype, jnp.integer) and dtype.name.startswith(("int4", "uint4")):
        return 4
    return dtype.itemsize * 8


def _num_bits_for(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def _is_concrete(x: Any) -> bool:
    """Whether the values of ``x`` can be read now (not a tracer or an abstract shape)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return True
    return (
        isinstance(x, jax.Array)
        and not isinstance(x, jax.core.Tracer)
        and x.is_fully_addressable
    )


def _concrete_range(x: Any) -> tuple[int, int] | None:
    """``(min, max)`` of a concrete, non-empty integer array; None when it cannot be read."""
    if not _is_concrete(x) or int(np.size(x)) == 0:
        return None
    if isinstance(x, (np.ndarray, np.generic)):
        return int(np.min(x)), int(np.max(x))
    # Evaluate now even when a jit trace is active (x itself is concrete).
    with jax.ensure_compile_time_eval():
        return int(jnp.min(x)), int(jnp.max(x))


class CompressedLeaf:
    """Base class of parameterised leaves.

    Subclasses must implement :meth:`materialize` and should override
    :meth:`storage_bits`, :meth:`compute_fraction` and :attr:`weight_bits`
    where the defaults (dense storage of all array children, no compute saving,
    bit width of the dense dtype) are not right.
    """

    kind: ClassVar[str] = "compressed"

    def materialize(self) -> jax.Array:  # pragma: no cover - abstract
        """Returns the dense array this leaf stands for."""
        raise NotImplementedError

    # The dense tensor this leaf stands for.
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(jax.eval_shape(self.materialize).shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(jax.eval_shape(self.materialize).dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def arrays(self) -> list[jax.Array]:
        """The array children of this leaf."""
        return jax.tree_util.tree_leaves(self)

    def storage_bits(self) -> int:
        """Bits needed to store this leaf (default: every child at its dtype)."""
        return int(sum(int(np.size(a)) * dtype_bits(a.dtype) for a in self.arrays()))

    def compute_fraction(self) -> float:
        """MACs of the compressed form over the dense layer's MACs (default 1)."""
        return 1.0

    @property
    def weight_bits(self) -> int:
        """Bit width of the weights when executed (for bit-operation counts)."""
        return dtype_bits(self.dtype)


def is_compressed(x: Any) -> bool:
    """True for a :class:`CompressedLeaf` instance."""
    return isinstance(x, CompressedLeaf)


def materialize(tree: Any) -> Any:
    """Replaces every compressed leaf of a tree by its dense array.

    Differentiable and jittable; other leaves pass through unchanged (the same
    objects).

    Args:
      tree: any pytree, possibly holding :class:`CompressedLeaf` instances.

    Returns:
      The tree with the same structure as the original dense tree.

    Example:
      >>> import jax.numpy as jnp
      >>> lr = LowRank(jnp.ones((4, 2)), jnp.ones((2, 3)))
      >>> materialize({"kernel": lr, "bias": jnp.zeros(3)})["kernel"].shape
      (4, 3)
    """
    return jax.tree_util.tree_map(
        lambda x: x.materialize() if is_compressed(x) else x, tree, is_leaf=is_compressed
    )


def _check_static_shape(shape: tuple[int, ...] | None, size: int, what: str) -> None:
    if shape is not None and math.prod(shape) != size:
        raise ValueError(
            f"{what}: shape {tuple(shape)} has {math.prod(shape)} elements but the factors "
            f"produce {size}; pass the dense shape the factors reshape to"
        )


@compressed_leaf
class LowRank(CompressedLeaf):
    """A matrix (or a reshaped tensor) stored as the product ``u @ v``.

    ``u`` has shape ``(m, r)`` and ``v`` ``(r, n)``; the dense form is
    ``(u @ v).reshape(shape)`` where ``shape`` defaults to ``(m, n)`` and lets a
    conv kernel ``(kh, kw, cin, cout)`` be factorised as ``(kh*kw*cin, cout)``.
    Executed directly, a layer needs ``r (m + n)`` instead of ``m n`` MACs per
    output position.

    Example:
      >>> import jax.numpy as jnp
      >>> w = LowRank(jnp.ones((6, 2)), jnp.ones((2, 4)))
      >>> w.shape, w.rank, round(w.compute_fraction(), 4)
      ((6, 4), 2, 0.8333)

    References:
      Denton et al., "Exploiting linear structure within convolutional
      networks for efficient evaluation", arXiv:1404.0736.
    """

    u: jax.Array
    v: jax.Array
    dense_shape: tuple[int, ...] | None = static_field(default=None)
    dense_dtype: Any = static_field(default=None)

    kind: ClassVar[str] = "lowrank"

    def __post_init__(self):
        u, v = self.u, self.v
        if not (hasattr(u, "shape") and hasattr(v, "shape")):
            return  # placeholder leaves built by tree utilities (e.g. object() sentinels)
        if len(u.shape) != 2 or len(v.shape) != 2:
            raise ValueError(
                f"LowRank: u and v must be matrices, got u{tuple(u.shape)} and v{tuple(v.shape)}"
            )
        if u.shape[1] != v.shape[0]:
            raise ValueError(
                f"LowRank: inner dimensions differ: u{tuple(u.shape)} @ v{tuple(v.shape)}; "
                "u must be (m, r) and v (r, n)"
            )
        _check_static_shape(self.dense_shape, u.shape[0] * v.shape[1], "LowRank")

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        if self.dense_shape is not None:
            return tuple(self.dense_shape)
        return (int(self.u.shape[0]), int(self.v.shape[1]))

    @property
    def dtype(self) -> np.dtype:
        if self.dense_dtype is not None:
            return np.dtype(self.dense_dtype)
        return np.dtype(jnp.result_type(self.u.dtype, self.v.dtype))

    def materialize(self) -> jax.Array:
        w = jnp.matmul(self.u, self.v)
        return w.reshape(self.shape).astype(self.dtype)

    def compute_fraction(self) -> float:
        m, n = int(self.u.shape[0]), int(self.v.shape[1])
        return self.rank * (m + n) / (m * n)


def _fits_blocks(sshape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``sshape`` broadcasts against ``shape``, blocks allowed (sizes that divide)."""
    if len(sshape) > len(shape):
        return False
    sshape = (1,) * (len(shape) - len(sshape)) + sshape
    return all(n in (1, d) or (n > 0 and d % n == 0) for n, d in zip(sshape, shape))


def _expand_blocks(arr: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Repeats the block axes of ``arr`` (``1 < n < size``) so that it broadcasts to ``shape``."""
    if not hasattr(arr, "shape") or len(arr.shape) > len(shape):
        return arr
    lead = len(shape) - len(arr.shape)
    for ax, n in enumerate(arr.shape):
        d = shape[lead + ax]
        if 1 < n < d:
            arr = jnp.repeat(arr, d // n, axis=ax)
    return arr


@compressed_leaf
class QArray(CompressedLeaf):
    """Integer codes with an affine scale: ``dense = (values - zero_point) * scale``.

    ``scale`` and ``zero_point`` broadcast against ``values`` (per-tensor
    scalars, or per-channel with size-1 axes elsewhere), or hold *blocks*: an
    axis of size ``n`` that divides the values' size ``d`` gives one entry
    per contiguous block of ``d / n`` codes (per-group quantization). ``bits`` is the code
    width actually used (``values`` may be held in a wider integer dtype), and
    :meth:`storage_bits` charges ``bits`` per code plus the scales and zero
    points at their dtypes.

    The codes are *signed* when ``values`` has a signed integer dtype (they lie
    in ``[-2**(bits-1), 2**(bits-1) - 1]``) and *unsigned* for an unsigned dtype
    (``[0, 2**bits - 1]``); ``zero_point`` is in code units and is not
    range-checked (asymmetric schemes hold unsigned codes with a non-zero
    zero point). ``bits`` may not exceed the width of ``values``' dtype.

    Validation: when ``values`` is concrete (a NumPy array or a JAX array
    outside a trace), construction checks that it has an integer dtype and
    that every code fits in ``bits`` at that signedness, so ``storage_bits()``
    describes what is really stored. A ``QArray`` constructed inside
    ``jit``/``grad``/``vmap`` sees tracers whose values are unknown: only the
    static checks run (bits, shapes, dtype width), no value is inspected, and
    ``materialize()`` computes the affine map on whatever codes it is given;
    validate the codes before tracing. Nodes that JAX rebuilds from their
    children (``tree_map``, ``jit`` outputs, gradients, optimizer moments) are
    not validated (see :func:`compressed_leaf`).

    Raises:
      ValueError: ``bits`` outside ``[1, 32]`` or wider than ``values``' dtype,
        codes outside the ``bits`` range, ``scale``/``zero_point`` that do not
        broadcast against ``values``.
      TypeError: concrete ``values`` of a non-integer dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> q = QArray(jnp.array([-2, 0, 3], jnp.int8), jnp.float32(0.5), jnp.int8(0), bits=4)
      >>> q.materialize().tolist(), q.storage_bits()
      ([-1.0, 0.0, 1.5], 52)
      >>> nine = jnp.array([9], jnp.int8)  # does not fit in 4 signed bits
      >>> QArray(nine, jnp.float32(1.0), jnp.int8(0), bits=4)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: QArray: values hold codes in [9, 9], outside the signed 4-bit range [-8, 7] ...

    References:
      Jacob et al., "Quantization and training of neural networks for
      efficient integer-arithmetic-only inference", arXiv:1712.05877.
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    bits: int = static_field(default=8)
    dense_dtype: Any = static_field(default=jnp.float32)

    kind: ClassVar[str] = "quantized"

    def __post_init__(self):
        if not (hasattr(self.values, "shape") and hasattr(self.values, "dtype")):
            return  # placeholder leaves built by tree utilities (e.g. object() sentinels)
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 32:
            raise ValueError(f"QArray: bits must be an int in [1, 32], got {self.bits!r}")
        for name in ("scale", "zero_point"):
            arr = getattr(self, name)
            if not hasattr(arr, "shape"):
                continue
            if not _fits_blocks(tuple(arr.shape), tuple(self.values.shape)):
                raise ValueError(
                    f"QArray: {name} of shape {tuple(arr.shape)} does not broadcast against "
                    f"values of shape {tuple(self.values.shape)}; keep size-1 axes for "
                    "per-channel parameters (or a divisor of the size for per-group blocks)"
                )
        self._check_codes()

    def _check_codes(self) -> None:
        dt = np.dtype(self.values.dtype)
        if dt == jax.dtypes.float0:
            return  # a gradient cotangent of integer codes
        if not jnp.issubdtype(dt, jnp.integer):
            if _is_concrete(self.values):
                raise TypeError(
                    f"QArray: values must hold integer codes, got dtype {dt}; quantize first "
                    "(e.g. jnp.round(w / scale) + zero_point, cast to an integer dtype such as "
                    "int8)"
                )
            return
        width = dtype_bits(dt)
        if self.bits > width:
            raise ValueError(
                f"QArray: bits={self.bits} exceeds the {width} bits of values' dtype {dt}; "
                f"pass bits <= {width} or hold the codes in a wider integer dtype"
            )
        rng = _concrete_range(self.values)
        if rng is None:
            return
        signed = jnp.issubdtype(dt, jnp.signedinteger)
        lo, hi = (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if signed else (
            0, (1 << self.bits) - 1)
        if rng[0] < lo or rng[1] > hi:
            kind = "signed" if signed else "unsigned"
            fix = (
                "hold unsigned codes in an unsigned dtype such as uint8"
                if signed
                else "hold signed codes in a signed dtype such as int8"
            )
            raise ValueError(
                f"QArray: values hold codes in [{rng[0]}, {rng[1]}], outside the {kind} "
                f"{self.bits}-bit range [{lo}, {hi}] ({kind} because values has dtype {dt}); "
                f"requantize or clip the codes, raise bits, or {fix}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dense_dtype)

    def materialize(self) -> jax.Array:
        # Narrow float dtypes compute in float32 and round once at the end.
        ct = jnp.promote_types(self.dtype, jnp.float32)
        v = self.values.astype(ct)
        zp = _expand_blocks(self.zero_point, v.shape).astype(ct)
        scale = _expand_blocks(self.scale, v.shape).astype(ct)
        return ((v - zp) * scale).astype(self.dtype)

    def storage_bits(self) -> int:
        side = sum(int(np.size(a)) * dtype_bits(a.dtype) for a in (self.scale, self.zero_point))
        return int(np.size(self.values)) * self.bits + side

    @property
    def weight_bits(self) -> int:
        return self.bits


@compressed_leaf
class Codebook(CompressedLeaf):
    """Weight sharing: ``dense = centroids[indices]``.

    ``centroids`` is a vector of ``k`` shared values; ``indices`` has the dense
    shape and holds integers in ``[0, k)``. Stored with ``ceil(log2 k)`` bits per
    index plus the codebook at its dtype.

    Validation: concrete ``indices`` (a NumPy array or a JAX array outside a
    trace) are checked at construction to lie in ``[0, k)``. Under
    ``jit``/``grad``/``vmap`` the indices are tracers and are not inspected;
    there ``materialize()`` follows ``jnp.take``: an index in ``[-k, 0)``
    wraps around to ``k + index`` and any other out-of-range index gives NaN.
    Validate the indices before tracing. Nodes that JAX rebuilds from their
    children are not validated (see :func:`compressed_leaf`).

    Raises:
      ValueError: ``centroids`` is not a vector, or concrete indices are
        negative or ``>= k``.
      TypeError: non-integer ``indices``.

    Example:
      >>> import jax.numpy as jnp
      >>> c = Codebook(jnp.array([-1.0, 0.0, 2.0]), jnp.array([[0, 2], [1, 1]]))
      >>> c.materialize().tolist(), c.index_bits
      ([[-1.0, 2.0], [0.0, 0.0]], 2)
      >>> Codebook(jnp.array([-1.0, 0.0, 2.0]), jnp.array([0, 3]))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: Codebook: indices span [0, 3] but there are 3 centroids...

    References:
      Han, Mao, Dally, "Deep compression", arXiv:1510.00149.
    """

    centroids: jax.Array
    indices: jax.Array

    kind: ClassVar[str] = "codebook"

    def __post_init__(self):
        if not hasattr(self.centroids, "shape"):
            return
        if len(self.centroids.shape) != 1:
            raise ValueError(
                f"Codebook: centroids must be a vector, got shape {tuple(self.centroids.shape)}"
            )
        if not hasattr(self.indices, "dtype"):
            return
        dt = np.dtype(self.indices.dtype)
        if dt == jax.dtypes.float0:
            return  # a gradient cotangent of integer indices
        if not jnp.issubdtype(dt, jnp.integer):
            raise TypeError(f"Codebook: indices must be integers, got {self.indices.dtype}")
        rng = _concrete_range(self.indices)
        k = int(self.centroids.shape[0])
        if rng is not None and (rng[0] < 0 or rng[1] >= k):
            raise ValueError(
                f"Codebook: indices span [{rng[0]}, {rng[1]}] but there are {k} centroids, "
                f"so every index must lie in [0, {k - 1}]; fix the assignment (negative "
                "indices do not count from the end) or add the missing centroids"
            )

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def index_bits(self) -> int:
        return _num_bits_for(self.num_clusters)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.centroids.dtype)

    def materialize(self) -> jax.Array:
        return jnp.take(self.centroids, self.indices, axis=0)

    def storage_bits(self) -> int:
        return int(np.size(self.indices)) * self.index_bits + self.num_clusters * dtype_bits(
            self.centroids.dtype
        )

    @property
    def weight_bits(self) -> int:
        return self.index_bits
