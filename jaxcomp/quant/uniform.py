"""Uniform affine quantization: ranges, scales, fake quantization, integer codes.

A ``bits``-bit uniform quantizer with step ``scale`` (``s``) and integer
``zero_point`` (``z``) maps a real ``x`` to the code
``q = clip(round(x / s) + z, q_min, q_max)`` and back to
``x̂ = (q - z) · s``. :func:`fake_quant` computes ``x̂`` in one
differentiable pass (quantization-aware training); :func:`quantize` keeps
the codes in a :class:`~jaxcomp.core.leaves.QArray`.

**Ranges** (:func:`quant_range`). ``symmetric=True`` uses the signed
*narrow* range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` with ``z = 0``: zero is a
code and the range is symmetric (no ``-128`` for int8), so 1 bit is refused
(its only code would be 0). ``symmetric=False`` uses the unsigned range
``[0, 2^b - 1]`` with an integer zero point; the calibrated range always
contains 0, so zero stays exactly representable and pruned weights stay
exactly zero.

**Granularity** (:func:`compute_scale`):

* per tensor: ``axis=None``, one scale;
* per channel: ``axis`` an int or a tuple of ints (negative allowed): those
  axes keep one scale per index, all other axes are reduced;
* per group: ``group_size=g`` also splits one reduced axis, ``group_axis``,
  into contiguous blocks of ``g`` elements with one scale each. By default
  ``group_axis`` is the last reduced axis: the input axis ``0`` of a
  ``(in, out)`` Dense kernel with ``axis=-1``, the input-channel axis ``2``
  of an ``HWIO`` convolution kernel, the last axis with ``axis=None``.

Scales and zero points keep ``x``'s number of dimensions: size 1 on reduced
axes, the full size on channel axes, and ``size / g`` on a grouped axis (a
*block* scale: index ``i`` along that axis uses scale ``i // g``).
:func:`expand_scale` repeats a block scale to ``x``'s shape; every
function here (and :class:`~jaxcomp.core.leaves.QArray`) accepts block
scales directly. Scales are float32, floored at the smallest normal float32
so an all-zero channel gives codes 0 rather than NaN; zero points are
integer-valued float32.

**Gradients.** Rounding is straight-through (:func:`round_ste`). With
``ste="clipped"`` (default) the gradient w.r.t. ``x`` is 1 inside the
clipping range ``[(q_min - z)s, (q_max - z)s]`` (bounds included) and 0
outside; with ``ste="identity"`` it is 1 everywhere (:func:`clip_ste`). A
scale passed as a traced array is differentiable: ``∂x̂/∂s`` is
``round(x/s) - x/s`` inside the range and ``q_min - z`` or ``q_max - z``
outside, the LSQ step-size gradient. A scale that :func:`fake_quant`
computes itself is a constant (``stop_gradient``).

**Stochastic rounding** (``rounding="stochastic"``, ``key`` required) rounds
``y`` up with probability ``y - floor(y)``, so ``E[q] = y`` inside the range.

All functions keep the input's shape, dtype and sharding (they are
elementwise, plus reductions over non-channel axes); computation runs in
float32 and the result is cast back to ``x.dtype``.

References:
  Jacob et al. 2018, "Quantization and training of neural networks for
  efficient integer-arithmetic-only inference", arXiv:1712.05877.
  Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient
  inference: a whitepaper", arXiv:1806.08342.
  Bengio et al. 2013, straight-through estimator, arXiv:1308.3432.
  Gupta et al. 2015, stochastic rounding, arXiv:1502.02551.
  Esser et al. 2020, LSQ, arXiv:1902.08153.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import concrete
from jaxcomp.core.leaves import QArray

__all__ = [
    "MIN_SCALE",
    "ROUNDINGS",
    "STES",
    "check_finite_weights",
    "clip_ste",
    "compute_scale",
    "dequantize",
    "expand_scale",
    "fake_quant",
    "normalize_axes",
    "quant_range",
    "quantize",
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


def _float_input(x: Any, what: str) -> jax.Array:
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


def _check_options(what: str, rounding: str, key: Any, ste: str) -> None:
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


def _clip_clipped(y: jax.Array, lo: float, hi: float) -> jax.Array:
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


def _block_layout(shape: tuple[int, ...], sshape: tuple[int, ...], what: str) -> tuple[
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
    _block_layout(shape, tuple(scale.shape), "expand_scale")
    s = scale.reshape((1,) * (len(shape) - scale.ndim) + tuple(scale.shape))
    for ax, (d, n) in enumerate(zip(shape, s.shape)):
        if 1 < n < d:
            s = jnp.repeat(s, d // n, axis=ax)
    return jnp.broadcast_to(s, shape)


# --------------------------------------------------------------------------- scales


def _group_layout(shape: tuple[int, ...], keep: tuple[int, ...], group_size: int | None,
                  group_axis: int | None, what: str) -> int | None:
    if group_size is None:
        if group_axis is not None:
            raise ValueError(f"{what}: group_axis={group_axis} needs group_size")
        return None
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
        (g,) = normalize_axes(int(group_axis), len(shape), f"{what}: group_axis")
        if g in keep:
            raise ValueError(f"{what}: group_axis={group_axis} is a channel axis (in axis=); "
                             "groups split an axis that is reduced")
    if shape[g] % group_size:
        raise ValueError(
            f"{what}: group_size={group_size} does not divide axis {g} of x (size {shape[g]}, "
            f"shape {shape}); pick a divisor of {shape[g]} or another group_axis")
    return g


def compute_scale(
    x: jax.typing.ArrayLike,
    *,
    bits: int,
    axis: Axis = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    symmetric: bool = True,
    mask: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Scale and zero point from the range of ``x`` (absmax or min/max).

    Symmetric: ``s = max|x| / q_max``, ``z = 0``. Asymmetric: the range
    ``[min(x, 0), max(x, 0)]`` is spread over ``[0, 2^b - 1]``:
    ``s = (hi - lo) / (2^b - 1)``, ``z = clip(round(-lo / s), 0, 2^b - 1)``.

    Args:
      x: the array to quantize (float).
      bits: bit width in ``[1, 16]`` (``[2, 16]`` symmetric).
      axis: channel axes that keep their own scale (None: per tensor).
      group_size: split ``group_axis`` into blocks of this many elements, each
        with its own scale (see the module docstring).
      group_axis: the reduced axis that ``group_size`` splits (default: the
        last axis not in ``axis``).
      symmetric: absmax with zero point 0 (True) or min/max with an integer
        zero point (False).
      mask: optional bool array of ``x``'s shape; only ``True`` entries
        enter the statistics (pruned weights do not shrink or shift the
        range). A channel with no ``True`` entry gets the floor scale.

    Returns:
      ``(scale, zero_point)``, float32, with ``x``'s number of dimensions
      (see the module docstring for their shapes). The scale is at least
      :data:`MIN_SCALE`.

    Raises:
      ValueError: bad bits, an axis out of range, a group size that does not
        divide the grouped axis, a mask of the wrong shape, concrete NaN/Inf
        in ``x``.
      TypeError: a non-float ``x``, non-integer bits or axes.

    Example:
      >>> w = jnp.array([[1.0, -0.5], [-2.0, 0.25]])
      >>> s, z = compute_scale(w, bits=8, axis=-1)
      >>> (s * 127).round(4).tolist(), z.tolist()
      ([[2.0, 0.5]], [[0.0, 0.0]])
      >>> s, z = compute_scale(jnp.array([-1.0, 3.0]), bits=2, symmetric=False)
      >>> s.tolist(), z.tolist()
      ([1.3333333730697632], [1.0])
    """
    what = "compute_scale"
    x = _float_input(x, what)
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    keep = normalize_axes(axis, x.ndim, f"{what}: axis")
    g = _group_layout(tuple(x.shape), keep, group_size, group_axis, what)
    check_finite_weights(x, what)
    xf = x.astype(jnp.float32)
    m = None
    if mask is not None:
        m = jnp.asarray(mask)
        if m.shape != x.shape:
            raise ValueError(f"{what}: mask of shape {tuple(m.shape)} must have x's shape "
                             f"{tuple(x.shape)}")
        m = m.astype(bool)
    out_shape = [d if i in keep else 1 for i, d in enumerate(x.shape)]
    if g is not None:
        n = x.shape[g] // group_size
        split = x.shape[:g] + (n, group_size) + x.shape[g + 1:]
        xf = xf.reshape(split)
        m = None if m is None else m.reshape(split)
        keep_split = tuple(i if i < g else i + 1 for i in keep) + (g,)
        red = tuple(i for i in range(xf.ndim) if i not in keep_split)
        out_shape[g] = n
    else:
        red = tuple(i for i in range(xf.ndim) if i not in keep)
    if symmetric:
        a = jnp.abs(xf)
        if m is not None:
            a = jnp.where(m, a, 0.0)
        scale = jnp.max(a, axis=red, keepdims=True) / qmax
        zp = jnp.zeros_like(scale)
    else:
        lo_in = xf if m is None else jnp.where(m, xf, jnp.inf)
        hi_in = xf if m is None else jnp.where(m, xf, -jnp.inf)
        lo = jnp.minimum(jnp.min(lo_in, axis=red, keepdims=True), 0.0)
        hi = jnp.maximum(jnp.max(hi_in, axis=red, keepdims=True), 0.0)
        scale = jnp.maximum((hi - lo) / (qmax - qmin), MIN_SCALE)
        zp = jnp.clip(jnp.round(qmin - lo / scale), qmin, qmax)
    scale = jnp.maximum(scale, MIN_SCALE)
    return scale.reshape(out_shape), zp.reshape(out_shape)


# --------------------------------------------------------------------------- fake quant


def _given_scale(x: jax.Array, scale: Any, zero_point: Any, what: str) -> tuple[jax.Array,
                                                                                  jax.Array]:
    s = jnp.asarray(scale)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        raise TypeError(f"{what}: scale must be a float array, got dtype {s.dtype}")
    host = concrete(scale)
    if host is not None:
        hf = np.asarray(host, np.float32)
        if not np.all(np.isfinite(hf)) or np.any(hf <= 0):
            bad = hf[~(np.isfinite(hf) & (hf > 0))]
            raise ValueError(
                f"{what}: scale must be finite and > 0 everywhere, got {bad.ravel()[:4].tolist()} "
                f"({bad.size} bad of {hf.size}); a zero scale means an all-zero range: floor "
                f"it (e.g. jnp.maximum(scale, {MIN_SCALE:.3g})) or let compute_scale do it")
    _block_layout(tuple(x.shape), tuple(s.shape), what)
    if zero_point is None:
        z = jnp.zeros((), jnp.float32)
    else:
        z = jnp.asarray(zero_point)
        padded = (1,) * max(0, x.ndim - s.ndim) + tuple(s.shape)
        try:
            ok = np.broadcast_shapes(tuple(z.shape), padded) == padded
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{what}: zero_point of shape {tuple(z.shape)} must broadcast to "
                             f"the scale's shape {tuple(s.shape)}")
        zh = concrete(zero_point)
        if zh is not None and np.any(np.round(zh) != zh):
            raise ValueError(f"{what}: zero_point must hold integers (codes), got "
                             f"{np.asarray(zh).ravel()[:4].tolist()}")
    return s.astype(jnp.float32), z.astype(jnp.float32)


def _codes(x: jax.Array, scale: jax.Array, zp: jax.Array, qmin: int, qmax: int,
           rounding: str, key: Any, ste: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Codes of ``x`` (float32, block-split layout) and the split scale and zero point."""
    xs, ss = _block_layout(tuple(x.shape), tuple(scale.shape), "fake_quant")
    padded = (1,) * (x.ndim - scale.ndim) + tuple(scale.shape)
    s = scale.reshape(ss)
    z = jnp.broadcast_to(zp, padded).reshape(ss) if zp.ndim else zp
    y = x.astype(jnp.float32).reshape(xs) / s + z
    yc = _clip_clipped(y, qmin, qmax) if ste == "clipped" else clip_ste(y, qmin, qmax)
    q = stochastic_round(yc, key) if rounding == "stochastic" else round_ste(yc)
    return q, s, z


def fake_quant(
    x: jax.typing.ArrayLike,
    *,
    bits: int,
    axis: Axis = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    symmetric: bool = True,
    scale: jax.typing.ArrayLike | None = None,
    zero_point: jax.typing.ArrayLike | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    ste: str = "clipped",
) -> jax.Array:
    """Quantize-dequantize ``x``: ``(clip(round(x/s) + z, q_min, q_max) - z) · s``.

    Args:
      x: float array.
      bits: bit width in ``[1, 16]`` (``[2, 16]`` symmetric).
      axis, group_size, group_axis, symmetric: the granularity and range
        used when ``scale`` is not given (see :func:`compute_scale`).
      scale: a given step size (per tensor, per channel or block); a traced
        scale is differentiable (LSQ). ``None``: computed from ``x`` by
        :func:`compute_scale` and treated as a constant.
      zero_point: integer-valued zero point for a given ``scale`` (default 0).
      rounding: ``"nearest"`` (half to even) or ``"stochastic"``.
      key: PRNG key, required for ``rounding="stochastic"``.
      ste: ``"clipped"`` (gradient 1 inside the clipping range, 0 outside)
        or ``"identity"`` (1 everywhere).

    Returns:
      The dequantized array, with the shape, dtype and sharding of ``x``.

    Raises:
      ValueError: bad bits, axis, group size, rounding or ste; a missing
        key; a concrete scale that is zero, negative or not finite; concrete
        NaN/Inf in ``x``; ``axis``/``group_size`` together with ``scale``.
      TypeError: non-float ``x`` or scale.

    Example:
      >>> x = jnp.array([-1.0, -0.6, 0.2, 0.9])
      >>> fake_quant(x, bits=2).tolist()
      [-1.0, -1.0, 0.0, 1.0]
      >>> fake_quant(x, bits=4, scale=jnp.float32(0.25)).tolist()
      [-1.0, -0.5, 0.25, 1.0]

    References:
      Jacob et al. 2018, arXiv:1712.05877; Bengio et al. 2013, arXiv:1308.3432.
    """
    what = "fake_quant"
    x = _float_input(x, what)
    _check_options(what, rounding, key, ste)
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    check_finite_weights(x, what)
    if scale is None:
        if zero_point is not None:
            raise ValueError(f"{what}: zero_point is only used with a given scale=")
        s, z = compute_scale(x, bits=bits, axis=axis, group_size=group_size,
                             group_axis=group_axis, symmetric=symmetric)
        s, z = jax.lax.stop_gradient(s), jax.lax.stop_gradient(z)
    else:
        if axis is not None or group_size is not None or group_axis is not None:
            raise ValueError(f"{what}: axis/group_size/group_axis choose how the scale is "
                             "computed; with a given scale= its shape says it, so drop them")
        s, z = _given_scale(x, scale, zero_point, what)
    return _fake_quant_scaled(x, s, z, qmin, qmax, rounding, key, ste)


def _fake_quant_scaled(x: jax.Array, s: jax.Array, z: jax.Array, qmin: int, qmax: int,
                       rounding: str, key: Any, ste: str) -> jax.Array:
    q, ss, zs = _codes(x, s, z, qmin, qmax, rounding, key, ste)
    return ((q - zs) * ss).reshape(x.shape).astype(x.dtype)


# --------------------------------------------------------------------------- integer codes


def _code_dtype(bits: int, symmetric: bool) -> np.dtype:
    if symmetric:
        return np.dtype(np.int8 if bits <= 8 else np.int16)
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def quantize(
    x: jax.typing.ArrayLike,
    *,
    bits: int,
    axis: Axis = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    symmetric: bool = True,
    scale: jax.typing.ArrayLike | None = None,
    zero_point: jax.typing.ArrayLike | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
) -> QArray:
    """Quantizes ``x`` to integer codes held in a :class:`~jaxcomp.core.leaves.QArray`.

    Codes are int8/int16 (symmetric) or uint8/uint16 (asymmetric), the
    narrowest that holds ``bits``; the scale is float32; a symmetric zero
    point is stored as one scalar 0 of the codes' dtype, an asymmetric one
    per scale entry. ``quantize(x, ...).materialize()`` equals
    ``fake_quant(x, ...)`` with the same arguments (and the same key).

    Args:
      x, bits, axis, group_size, group_axis, symmetric, scale, zero_point,
      rounding, key: as in :func:`fake_quant`.

    Returns:
      A ``QArray`` with ``bits`` and ``dense_dtype=x.dtype``.

    Raises:
      ValueError, TypeError: as :func:`fake_quant`.

    Example:
      >>> q = quantize(jnp.array([-1.5, 0.5, 0.26]), bits=3)
      >>> q.values.tolist(), q.scale.tolist(), dequantize(q).tolist()
      ([-3, 1, 1], [0.5], [-1.5, 0.5, 0.5])
    """
    what = "quantize"
    x = _float_input(x, what)
    _check_options(what, rounding, key, "clipped")
    bits = validate_bits(bits)
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    check_finite_weights(x, what)
    if scale is None:
        if zero_point is not None:
            raise ValueError(f"{what}: zero_point is only used with a given scale=")
        s, z = compute_scale(x, bits=bits, axis=axis, group_size=group_size,
                             group_axis=group_axis, symmetric=symmetric)
    else:
        if axis is not None or group_size is not None or group_axis is not None:
            raise ValueError(f"{what}: axis/group_size/group_axis choose how the scale is "
                             "computed; with a given scale= its shape says it, so drop them")
        s, z = _given_scale(x, scale, zero_point, what)
    q, _, _ = _codes(x, s, z, qmin, qmax, rounding, key, "clipped")
    dt = _code_dtype(bits, symmetric)
    codes = q.reshape(x.shape).astype(dt)
    if symmetric and zero_point is None:
        zstore = jnp.zeros((), dt)
    else:
        zstore = jnp.broadcast_to(z, s.shape).astype(dt) if z.ndim == 0 else z.astype(dt)
    return QArray(codes, s, zstore, bits=bits, dense_dtype=x.dtype)


def dequantize(q: QArray) -> jax.Array:
    """The dense array a :class:`~jaxcomp.core.leaves.QArray` stands for.

    Example:
      >>> from jaxcomp.core.leaves import QArray
      >>> q = QArray(jnp.array([-2, 3], jnp.int8), jnp.float32(0.5), jnp.int8(0), bits=4)
      >>> dequantize(q).tolist()
      [-1.0, 1.5]
    """
    if not isinstance(q, QArray):
        raise TypeError(f"dequantize: expected a QArray, got {type(q).__name__}")
    return q.materialize()
