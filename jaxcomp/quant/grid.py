"""The integer grid of a uniform quantizer: bit widths, code ranges, axes, rounding, blocks.

Shared by every uniform quantizer of :mod:`jaxcomp.quant`:

* validation of static arguments (:func:`validate_bits`, :func:`normalize_axes`,
  :func:`check_float`, :func:`check_rounding`) and of weights
  (:func:`check_finite_weights`);
* the code range of a bit width (:func:`quant_range`);
* straight-through rounding and clipping (:func:`round_ste`,
  :func:`clip_ste`, :func:`clip_inside`, :func:`stochastic_round`);
* per-channel and per-group layouts: :func:`reduction_plan` says which axes a
  statistic reduces for a given ``axis``/``group_size``/``group_axis``, and
  :func:`block_layout`/:func:`expand_scale` make a *block* scale (one entry
  per contiguous group) broadcast against the array it quantizes.

References:
  Bengio et al. 2013, straight-through estimator, arXiv:1308.3432.
  Gupta et al. 2015, stochastic rounding, arXiv:1502.02551.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import concrete

__all__ = [
    "MIN_SCALE",
    "ROUNDINGS",
    "STES",
    "ReductionPlan",
    "block_layout",
    "check_finite_weights",
    "check_float",
    "check_rounding",
    "clip_inside",
    "clip_ste",
    "expand_scale",
    "normalize_axes",
    "quant_range",
    "reduction_plan",
    "round_ste",
    "stochastic_round",
    "validate_bits",
]

ROUNDINGS = ("nearest", "stochastic")
STES = ("clipped", "identity")
MIN_SCALE = float(np.finfo(np.float32).tiny)
"""The floor of computed scales (the smallest normal float32)."""

Axis = int | Sequence[int] | None


# --------------------------------------------------------------------------- validation


def validate_bits(bits: Any, what: str = "bits", *, low: int = 1, high: int = 16) -> int:
    """Checks a static bit width and returns it as a Python int.

    Args:
      bits: the bit width (a Python or NumPy integer, not traced).
      what: how messages name it (``"bits for 'fc/kernel'"``).
      low: smallest allowed value.
      high: largest allowed value.

    Returns:
      ``int(bits)``.

    Raises:
      TypeError: ``bits`` is not an integer (a float, a bool, a traced array).
      ValueError: ``bits`` outside ``[low, high]``.

    Example:
      >>> validate_bits(8)
      8
      >>> validate_bits(17)
      Traceback (most recent call last):
        ...
      ValueError: bits=17 is outside [1, 16]; pass an integer bit width between 1 and 16
    """
    if isinstance(bits, bool) or not isinstance(bits, (numbers.Integral, np.integer)):
        raise TypeError(f"{what} must be a Python int (a static bit width), got "
                        f"{type(bits).__name__} {bits!r}")
    bits = int(bits)
    if not low <= bits <= high:
        raise ValueError(f"{what}={bits} is outside [{low}, {high}]; pass an integer bit width "
                         f"between {low} and {high}")
    return bits


def quant_range(bits: int, *, symmetric: bool = True) -> tuple[int, int]:
    """The integer code range ``(q_min, q_max)`` of a ``bits``-bit quantizer.

    Args:
      bits: bit width in ``[1, 16]`` (``[2, 16]`` when symmetric).
      symmetric: signed narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
        (zero point 0) if True, unsigned ``[0, 2^b - 1]`` otherwise.

    Returns:
      ``(q_min, q_max)`` as Python ints.

    Raises:
      ValueError: bits out of range, or ``bits=1`` with ``symmetric=True``.
      TypeError: non-integer bits.

    Example:
      >>> quant_range(8), quant_range(8, symmetric=False), quant_range(2)
      ((-127, 127), (0, 255), (-1, 1))
    """
    bits = validate_bits(bits)
    if symmetric:
        if bits == 1:
            raise ValueError("bits=1 with symmetric=True leaves only the code 0; use "
                             "symmetric=False (codes {0, 1}) or a binarizing quantizer "
                             "(sign(w) times a scale)")
        half = (1 << (bits - 1)) - 1
        return -half, half
    return 0, (1 << bits) - 1


def normalize_axes(axis: Axis, ndim: int, what: str = "axis") -> tuple[int, ...]:
    """Normalizes ``axis`` (None, an int or a tuple; negative allowed) to sorted non-negative ints.

    Raises:
      ValueError: an axis outside ``[-ndim, ndim)`` or repeated.
      TypeError: a non-integer axis.

    Example:
      >>> normalize_axes(-1, 3), normalize_axes((0, -1), 3), normalize_axes(None, 2)
      ((2,), (0, 2), ())
    """
    if axis is None:
        return ()
    items = (axis,) if isinstance(axis, (numbers.Integral, np.integer)) else axis
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{what} must be None, an int or a tuple of ints, got "
                        f"{type(axis).__name__}") from None
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (numbers.Integral, np.integer)):
            raise TypeError(f"{what} must hold ints, got {a!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{what}={axis!r} is out of range for an array with {ndim} "
                             f"dimensions; pass an axis in [{-ndim}, {ndim - 1}]")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{what}={axis!r} repeats an axis")
    return tuple(sorted(out))


def check_float(x: Any, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what}: x must be a floating-point array, got dtype {x.dtype}; "
                        "cast it (e.g. x.astype(jnp.float32)) before quantizing")
    return x


def check_finite_weights(x: Any, what: str, path: str | None = None) -> None:
    """Raises ``ValueError`` when concrete ``x`` holds NaN or Inf (a no-op for traced ``x``).

    Args:
      x: an array (checked only when its values are known now).
      what: the caller, first word of the message.
      path: the parameter path, if any.

    Raises:
      ValueError: naming ``what``, the path and the count of bad values.

    Example:
      >>> check_finite_weights(jnp.array([1.0, jnp.nan]), "fake_quant", "fc/kernel")
      Traceback (most recent call last):
        ...
      ValueError: fake_quant: 'fc/kernel' holds NaN or Inf (1 of 2 values); quantization ranges are undefined for them. Fix the training divergence or replace them (e.g. jnp.nan_to_num) before quantizing.
    """
    host = concrete(x)
    if host is None or not jnp.issubdtype(host.dtype, jnp.floating):
        return
    bad = int(np.sum(~np.isfinite(np.asarray(host, np.float32))))
    if bad:
        at = f"'{path}'" if path else "x"
        raise ValueError(
            f"{what}: {at} holds NaN or Inf ({bad} of {host.size} values); quantization ranges "
            "are undefined for them. Fix the training divergence or replace them (e.g. "
            "jnp.nan_to_num) before quantizing.")


def check_rounding(what: str, rounding: str, key: Any, ste: str) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"{what}: rounding={rounding!r} must be one of {ROUNDINGS}")
    if ste not in STES:
        raise ValueError(f"{what}: ste={ste!r} must be one of {STES}")
    if rounding == "stochastic" and key is None:
        raise ValueError(f"{what}: rounding='stochastic' needs a PRNG key; pass "
                         "key=jax.random.key(0) (a fresh key per step)")


# --------------------------------------------------------------------------- STE helpers


@jax.custom_jvp
def round_ste(x: jax.Array) -> jax.Array:
    """Round half to even in the forward pass, identity gradient (straight-through).

    Example:
      >>> import jax
      >>> round_ste(jnp.array([0.4, 1.5, 2.5])).tolist(), float(jax.grad(round_ste)(0.4))
      ([0.0, 2.0, 2.0], 1.0)
    """
    return jnp.round(x)


@round_ste.defjvp
def _round_ste_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return jnp.round(x), dx


@jax.custom_jvp
def clip_ste(x: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """``clip(x, lo, hi)`` with the identity gradient w.r.t. ``x`` (and none w.r.t. the bounds).

    Example:
      >>> import jax
      >>> float(clip_ste(3.0, -1.0, 1.0)), float(jax.grad(clip_ste)(3.0, -1.0, 1.0))
      (1.0, 1.0)
    """
    return jnp.clip(x, lo, hi)


@clip_ste.defjvp
def _clip_ste_jvp(primals, tangents):
    x, lo, hi = primals
    dx = tangents[0]
    return jnp.clip(x, lo, hi), dx


def clip_inside(y: jax.Array, lo: float, hi: float) -> jax.Array:
    """``clip(y, lo, hi)`` with gradient 1 on ``[lo, hi]`` (bounds included) and 0 outside."""
    inside = (y >= lo) & (y <= hi)
    return jnp.where(inside, y, jax.lax.stop_gradient(jnp.clip(y, lo, hi)))


def stochastic_round(y: jax.Array, key: jax.Array) -> jax.Array:
    """Rounds ``y`` up with probability ``y - floor(y)`` (unbiased); identity gradient.

    Args:
      y: values to round (float).
      key: a PRNG key.

    Returns:
      ``floor(y + u)`` with ``u ~ U[0, 1)``, shape and dtype of ``y``.

    Example:
      >>> import jax
      >>> r = stochastic_round(jnp.full((4000,), 0.25), jax.random.key(0))
      >>> sorted(set(r.tolist())), abs(float(r.mean()) - 0.25) < 0.03
      ([0.0, 1.0], True)

    References:
      Gupta et al. 2015, arXiv:1502.02551.
    """
    u = jax.random.uniform(key, jnp.shape(y), jnp.float32)
    down = jnp.floor(y)
    r = down + (u < (y - down)).astype(y.dtype)
    return y + jax.lax.stop_gradient(r - y)


# --------------------------------------------------------------------------- block scales


def block_layout(shape: tuple[int, ...], sshape: tuple[int, ...], what: str) -> tuple[
        tuple[int, ...], tuple[int, ...]]:
    """Split shapes that make a (block) scale broadcast against ``x``.

    Returns ``(x_split, s_split)``: ``x`` reshaped so that each axis where the
    scale has ``1 < n < size`` entries becomes ``(n, size / n)``, and the
    scale reshaped with a 1 inserted after it.
    """
    if len(sshape) < len(shape):
        sshape = (1,) * (len(shape) - len(sshape)) + tuple(sshape)
    if len(sshape) > len(shape):
        raise ValueError(f"{what}: a scale/zero_point of shape {sshape} has more dimensions "
                         f"than x of shape {shape}")
    xs, ss = [], []
    for d, n in zip(shape, sshape):
        if n in (1, d):
            xs.append(d)
            ss.append(n)
        elif n > 0 and d % n == 0:
            xs += [n, d // n]
            ss += [n, 1]
        else:
            raise ValueError(
                f"{what}: a scale/zero_point of shape {sshape} does not fit x of shape {shape}; "
                "each of its dimensions must be 1, the size of x's dimension, or a divisor of it "
                "(one entry per contiguous block)")
    return tuple(xs), tuple(ss)


def expand_scale(scale: jax.typing.ArrayLike, shape: Sequence[int]) -> jax.Array:
    """Repeats a (block) scale or zero point so that it has ``shape`` exactly.

    Args:
      scale: per-tensor, per-channel or block scale (see the module docstring).
      shape: the shape of the quantized array.

    Returns:
      An array of ``shape`` holding each element's own scale.

    Raises:
      ValueError: ``scale`` does not fit ``shape``.

    Example:
      >>> expand_scale(jnp.array([[1.0], [2.0]]), (4, 1)).ravel().tolist()
      [1.0, 1.0, 2.0, 2.0]
    """
    scale = jnp.asarray(scale)
    shape = tuple(int(d) for d in shape)
    block_layout(shape, tuple(scale.shape), "expand_scale")
    s = scale.reshape((1,) * (len(shape) - scale.ndim) + tuple(scale.shape))
    for ax, (d, n) in enumerate(zip(shape, s.shape)):
        if 1 < n < d:
            s = jnp.repeat(s, d // n, axis=ax)
    return jnp.broadcast_to(s, shape)


class ReductionPlan(NamedTuple):
    """How a per-tensor, per-channel or per-group statistic reduces an array.

    Attributes:
      split_shape: the array's shape with the grouped axis (if any) split into
        ``(n_groups, group_size)``; reshape the array to it first.
      reduce_axes: the axes of the split array that the statistic reduces
        (with ``keepdims=True``).
      scale_shape: the statistic's final shape (the array's number of
        dimensions; reshape the reduced result to it).
      group_axis: the grouped axis of the original array, or None.
    """

    split_shape: tuple[int, ...]
    reduce_axes: tuple[int, ...]
    scale_shape: tuple[int, ...]
    group_axis: int | None


def reduction_plan(shape: Sequence[int], *, axis: Axis = None, group_size: int | None = None,
                   group_axis: int | None = None, what: str = "reduction_plan") -> ReductionPlan:
    """The reshape and reduction that give one statistic per channel or group.

    Args:
      shape: the array's shape.
      axis: channel axes kept (None: per tensor).
      group_size: split ``group_axis`` into blocks of this many elements.
      group_axis: the reduced axis to split (default: the last axis not in
        ``axis``).
      what: the caller, for messages.

    Returns:
      A :class:`ReductionPlan`.

    Raises:
      ValueError: an axis out of range, ``group_axis`` without
        ``group_size`` or inside ``axis``, no axis left to group, a group
        size that does not divide the grouped axis.
      TypeError: non-integer axes or group size.

    Example:
      >>> reduction_plan((3, 3, 8, 4), axis=-1, group_size=4)
      ReductionPlan(split_shape=(3, 3, 2, 4, 4), reduce_axes=(0, 1, 3), scale_shape=(1, 1, 2, 4), group_axis=2)
    """
    shape = tuple(int(d) for d in shape)
    keep = normalize_axes(axis, len(shape), f"{what}: axis")
    scale_shape = [d if i in keep else 1 for i, d in enumerate(shape)]
    if group_size is None:
        if group_axis is not None:
            raise ValueError(f"{what}: group_axis={group_axis} needs group_size")
        red = tuple(i for i in range(len(shape)) if i not in keep)
        return ReductionPlan(shape, red, tuple(scale_shape), None)
    if isinstance(group_size, bool) or not isinstance(group_size, (numbers.Integral, np.integer)):
        raise TypeError(f"{what}: group_size must be a positive int, got {group_size!r}")
    if group_size < 1:
        raise ValueError(f"{what}: group_size={group_size} must be >= 1")
    reduced = [i for i in range(len(shape)) if i not in keep]
    if not reduced:
        raise ValueError(f"{what}: group_size needs an axis that is not a channel axis; every "
                         f"axis of x (shape {shape}) is in axis=")
    if group_axis is None:
        g = reduced[-1]
    else:
        (g,) = normalize_axes(group_axis, len(shape), f"{what}: group_axis")
        if g in keep:
            raise ValueError(f"{what}: group_axis={group_axis} is a channel axis (in axis=); "
                             "groups split an axis that is reduced")
    if shape[g] % group_size:
        raise ValueError(
            f"{what}: group_size={group_size} does not divide axis {g} of x (size {shape[g]}, "
            f"shape {shape}); pick a divisor of {shape[g]} or another group_axis")
    n = shape[g] // int(group_size)
    split = shape[:g] + (n, int(group_size)) + shape[g + 1:]
    keep_split = tuple(i if i < g else i + 1 for i in keep) + (g,)
    red = tuple(i for i in range(len(split)) if i not in keep_split)
    scale_shape[g] = n
    return ReductionPlan(split, red, tuple(scale_shape), g)
