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

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import concrete
from jaxcomp.core.leaves import QArray
from jaxcomp.quant.grid import (
    MIN_SCALE,
    ROUNDINGS,
    STES,
    Axis,
    block_layout,
    check_finite_weights,
    check_float,
    check_rounding,
    clip_inside,
    clip_ste,
    expand_scale,
    normalize_axes,
    quant_range,
    reduction_plan,
    round_ste,
    stochastic_round,
    validate_bits,
)

# The grid helpers are defined in jaxcomp.quant.grid and re-exported here, so that
# ``from jaxcomp.quant.uniform import quant_range, round_ste, ...`` keeps working.
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
    "scale_from_range",
    "stochastic_round",
    "validate_bits",
]


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
    x = check_float(x, what)
    quant_range(bits, symmetric=symmetric)
    plan = reduction_plan(x.shape, axis=axis, group_size=group_size, group_axis=group_axis,
                          what=what)
    check_finite_weights(x, what)
    xf = x.astype(jnp.float32).reshape(plan.split_shape)
    m = None
    if mask is not None:
        m = jnp.asarray(mask)
        if m.shape != x.shape:
            raise ValueError(f"{what}: mask of shape {tuple(m.shape)} must have x's shape "
                             f"{tuple(x.shape)}")
        m = m.astype(bool).reshape(plan.split_shape)
    red = plan.reduce_axes
    if symmetric:
        a = jnp.abs(xf) if m is None else jnp.where(m, jnp.abs(xf), 0.0)
        hi = jnp.max(a, axis=red, keepdims=True)
        lo = -hi
    else:
        lo = jnp.min(xf if m is None else jnp.where(m, xf, jnp.inf), axis=red, keepdims=True)
        hi = jnp.max(xf if m is None else jnp.where(m, xf, -jnp.inf), axis=red, keepdims=True)
    scale, zp = scale_from_range(lo, hi, bits=bits, symmetric=symmetric)
    return scale.reshape(plan.scale_shape), zp.reshape(plan.scale_shape)


def scale_from_range(lo: jax.typing.ArrayLike, hi: jax.typing.ArrayLike, *, bits: int,
                     symmetric: bool = True) -> tuple[jax.Array, jax.Array]:
    """Scale and zero point that put the clipping range ``[lo, hi]`` on the code grid.

    Symmetric: ``s = max(|lo|, |hi|) / q_max``, ``z = 0``. Asymmetric: the
    range is first widened to contain 0 (``[min(lo, 0), max(hi, 0)]``, so
    zero is a code), then ``s = (hi - lo) / (2^b - 1)`` and
    ``z = clip(round(-lo / s), 0, 2^b - 1)``. Scales are floored at
    :data:`~jaxcomp.quant.grid.MIN_SCALE`; an empty range (``lo = +inf``,
    ``hi = -inf``, e.g. a fully masked channel) gives the floor scale.

    Args:
      lo: lower ends (any shape, broadcast with ``hi``).
      hi: upper ends.
      bits: bit width.
      symmetric: the grid (see :func:`quant_range`).

    Returns:
      ``(scale, zero_point)`` in float32.

    Example:
      >>> s, z = scale_from_range(-1.0, 3.0, bits=2, symmetric=False)
      >>> float(s), float(z)
      (1.3333333730697632, 1.0)
      >>> float(scale_from_range(-2.0, 1.0, bits=3)[0])
      0.6666666865348816
    """
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    lo = jnp.asarray(lo, jnp.float32)
    hi = jnp.asarray(hi, jnp.float32)
    lo = jnp.where(jnp.isfinite(lo), jnp.minimum(lo, 0.0), 0.0)
    hi = jnp.where(jnp.isfinite(hi), jnp.maximum(hi, 0.0), 0.0)
    if symmetric:
        scale = jnp.maximum(jnp.maximum(-lo, hi) / qmax, MIN_SCALE)
        return scale, jnp.zeros_like(scale)
    scale = jnp.maximum((hi - lo) / (qmax - qmin), MIN_SCALE)
    return scale, jnp.clip(jnp.round(qmin - lo / scale), qmin, qmax)


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
    block_layout(tuple(x.shape), tuple(s.shape), what)
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


def _resolve_scale(x: jax.Array, bits: int, axis: Axis, group_size: int | None,
                   group_axis: int | None, symmetric: bool, scale: Any, zero_point: Any,
                   what: str) -> tuple[jax.Array, jax.Array]:
    """The scale and zero point to quantize ``x`` with: computed from ``x`` or the given ones."""
    if scale is None:
        if zero_point is not None:
            raise ValueError(f"{what}: zero_point is only used with a given scale=")
        return compute_scale(x, bits=bits, axis=axis, group_size=group_size,
                             group_axis=group_axis, symmetric=symmetric)
    if axis is not None or group_size is not None or group_axis is not None:
        raise ValueError(f"{what}: axis/group_size/group_axis choose how the scale is "
                         "computed; with a given scale= its shape says it, so drop them")
    return _given_scale(x, scale, zero_point, what)


def _codes(x: jax.Array, scale: jax.Array, zp: jax.Array, qmin: int, qmax: int,
           rounding: str, key: Any, ste: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Codes of ``x`` (float32, block-split layout) and the split scale and zero point."""
    xs, ss = block_layout(tuple(x.shape), tuple(scale.shape), "fake_quant")
    padded = (1,) * (x.ndim - scale.ndim) + tuple(scale.shape)
    s = scale.reshape(ss)
    z = jnp.broadcast_to(zp, padded).reshape(ss) if zp.ndim else zp
    y = x.astype(jnp.float32).reshape(xs) / s + z
    yc = clip_inside(y, qmin, qmax) if ste == "clipped" else clip_ste(y, qmin, qmax)
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
    x = check_float(x, what)
    check_rounding(what, rounding, key, ste)
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    check_finite_weights(x, what)
    s, z = _resolve_scale(x, bits, axis, group_size, group_axis, symmetric, scale, zero_point,
                          what)
    if scale is None:  # computed from x: a constant
        s, z = jax.lax.stop_gradient(s), jax.lax.stop_gradient(z)
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
    x = check_float(x, what)
    check_rounding(what, rounding, key, "clipped")
    bits = validate_bits(bits)
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    check_finite_weights(x, what)
    s, z = _resolve_scale(x, bits, axis, group_size, group_axis, symmetric, scale, zero_point,
                          what)
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
