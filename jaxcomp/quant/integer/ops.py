"""Integer-only arithmetic kernels: int8 products, int32 accumulation, fixed-point requantization.

The integer-arithmetic-only inference of Jacob et al. 2018 represents a real
tensor as ``r = S (q - Z)``. A layer with int8 input codes ``q_x`` (zero point
``Z_x``), symmetric int8 weights ``q_w`` (zero point 0, per-output-channel
scale ``S_w``) and output codes ``q_y`` (``S_y``, ``Z_y``) computes

    ``acc = Σ q_x q_w + b' ``  (int32; :func:`int_dense`, :func:`int_conv`),
    ``b' = round(b / (S_x S_w)) - Z_x Σ q_w``  (the int32 bias with the
    zero-point correction folded in),
    ``q_y = clamp(Z_y + round(M · acc), lo, hi)`` with ``M = S_x S_w / S_y``
    (:func:`requantize`).

``M`` is held as a fixed-point number ``M = M0 · 2^(-31 - n)`` with an int32
``M0 ∈ [2^30, 2^31)`` (``M0 / 2^31 ∈ [0.5, 1)``) and an integer shift
``n`` (:func:`quantize_multiplier`), and ``round(M · acc)`` is computed
exactly with 32-bit integer operations only (:func:`multiply_by_multiplier`:
the 62-bit product ``acc · M0`` is formed from 16-bit limbs, so no int64 and
no ``jax_enable_x64`` is needed), with one rounding, half away from zero.
A fused ReLU is the lower clamp ``lo = max(Z_y, q_min)``.

:func:`fold_batchnorm` folds an inference-mode batch normalization into
the kernel and bias of the layer before it.

References:
  Jacob et al. 2018, "Quantization and training of neural networks for
  efficient integer-arithmetic-only inference", arXiv:1712.05877.
  Ioffe & Szegedy 2015, batch normalization, arXiv:1502.03167.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.errors import concrete

__all__ = [
    "MAX_SHIFT",
    "MIN_SHIFT",
    "fold_batchnorm",
    "int_conv",
    "int_dense",
    "multiply_by_multiplier",
    "quantize_multiplier",
    "requantize",
]

MIN_SHIFT = -30
"""Smallest shift ``n`` (``M < 2^30``): the total right shift ``31 + n`` is at least 1."""
MAX_SHIFT = 31
"""Largest shift ``n`` (``M ≥ 2^-32``); smaller multipliers are stored as ``M0 = 0``."""

_INT32 = np.iinfo(np.int32)


def quantize_multiplier(m: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Splits real multipliers into ``M0 · 2^(-31 - n)`` with int32 ``M0 ∈ [2^30, 2^31)``.

    Computed on the host in float64 (an export-time step): ``m = f · 2^e``
    with ``f ∈ [0.5, 1)``, ``M0 = round(f · 2^31)`` (a carry to ``2^31``
    halves it and bumps ``e``) and ``n = -e``. The relative error of the
    fixed-point multiplier is at most ``2^-31``. Multipliers below
    ``2^-32`` (whose products with any int32 round to 0) become ``M0 = 0,
    n = 0``.

    Args:
      m: real multipliers ``S_x S_w / S_y`` (any shape), finite, ``>= 0``
        and ``< 2^30``.

    Returns:
      ``(m0, shift)``: int32 arrays of ``m``'s shape.

    Raises:
      ValueError: negative, non-finite or too large multipliers.
      TypeError: traced ``m``.

    Example:
      >>> m0, n = quantize_multiplier([0.75, 0.003, 3.0])
      >>> m0.tolist(), n.tolist()
      ([1610612736, 1649267442, 1610612736], [0, 8, -2])
    """
    if isinstance(m, jax.core.Tracer):
        raise TypeError("quantize_multiplier: m must be concrete (it runs at export time, on "
                         "the host); call it outside jit")
    a = np.asarray(m, np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a >= 2.0 ** 30):
        bad = a[~(np.isfinite(a) & (a >= 0) & (a < 2.0 ** 30))].ravel()[:4].tolist()
        raise ValueError(f"quantize_multiplier: multipliers must be finite and in [0, 2^30), got "
                         f"{bad}; a requantization multiplier S_x S_w / S_y this large means "
                         "an output scale far below the input's (check the calibrated ranges)")
    f, e = np.frexp(a)
    m0 = np.round(f * 2.0 ** 31).astype(np.int64)
    carry = m0 == 2 ** 31
    m0 = np.where(carry, m0 // 2, m0)
    e = np.where(carry, e + 1, e)
    shift = -e
    tiny = (a < 2.0 ** -32) | (shift > MAX_SHIFT)
    m0 = np.where(tiny, 0, m0)
    shift = np.where(tiny, 0, shift)
    return jnp.asarray(m0, jnp.int32), jnp.asarray(shift, jnp.int32)


def _u32(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(x.astype(jnp.int32), jnp.uint32)


def multiply_by_multiplier(acc: jax.typing.ArrayLike, m0: jax.typing.ArrayLike,
                           shift: jax.typing.ArrayLike) -> jax.Array:
    """``round(acc · M0 / 2^(31 + n))`` exactly, in 32-bit integer arithmetic.

    Rounds half away from zero and saturates to ``[-(2^31 - 1), 2^31 - 1]``.
    The 62-bit product ``|acc| · M0`` is built from four 16 × 16-bit partial
    products in uint32 with explicit carries; the rounding constant
    ``2^(30 + n)`` is added to that 64-bit pair and the pair shifted right
    by ``31 + n``. No int64 (and no ``jax_enable_x64``) is involved.

    Args:
      acc: int32 accumulators.
      m0: int32 multipliers in ``[0, 2^31)`` (broadcast against ``acc``, e.g.
        one per output channel).
      shift: int32 shifts ``n`` in ``[MIN_SHIFT, MAX_SHIFT]``, broadcast
        like ``m0``.

    Returns:
      int32 array of the broadcast shape.

    Raises:
      TypeError: non-integer inputs.
      ValueError: concrete ``m0`` or ``shift`` out of range.

    Example:
      >>> m0, n = quantize_multiplier(0.3)
      >>> multiply_by_multiplier(jnp.array([10, -10, 5, -5, 1000], jnp.int32), m0, n).tolist()
      [3, -3, 2, -2, 300]
    """
    acc, m0, shift = (jnp.asarray(v) for v in (acc, m0, shift))
    for name, v in (("acc", acc), ("m0", m0), ("shift", shift)):
        if not jnp.issubdtype(v.dtype, jnp.integer):
            raise TypeError(f"multiply_by_multiplier: {name} must be an integer array, got "
                            f"{v.dtype}")
    for name, v, lo, hi in (("m0", m0, 0, _INT32.max), ("shift", shift, MIN_SHIFT, MAX_SHIFT)):
        h = concrete(v)
        if h is not None and h.size and (h.min() < lo or h.max() > hi):
            raise ValueError(f"multiply_by_multiplier: {name} must lie in [{lo}, {hi}], got "
                             f"values in [{h.min()}, {h.max()}]; use quantize_multiplier")
    return _multiply(acc, m0, shift)


@jax.jit
def _multiply(acc: jax.Array, m0: jax.Array, shift: jax.Array) -> jax.Array:
    """The kernel of :func:`multiply_by_multiplier` (inputs checked), compiled as one program."""
    acc = acc.astype(jnp.int32)
    neg = acc < 0
    a = _u32(jnp.where(neg, -acc, acc))  # |INT32_MIN| wraps to 2^31, exact as uint32
    b = _u32(m0)
    lo16 = jnp.uint32(0xFFFF)
    al, ah, bl, bh = a & lo16, a >> 16, b & lo16, b >> 16
    ll, lh, hl, hh = al * bl, al * bh, ah * bl, ah * bh
    mid = lh + hl
    carry_mid = (mid < lh).astype(jnp.uint32)
    low = ll + (mid << 16)
    carry_low = (low < ll).astype(jnp.uint32)
    high = hh + (mid >> 16) + (carry_mid << 16) + carry_low
    s = (shift.astype(jnp.int32) + 31).astype(jnp.uint32)  # total right shift, 1..62
    # add the rounding constant 2^(s-1) to (high, low)
    big = s > 32
    r_lo = jnp.where(big, jnp.uint32(0), jnp.uint32(1) << jnp.minimum(s - 1, 31))
    r_hi = jnp.where(big, jnp.uint32(1) << jnp.clip(s - 33, 0, 31), jnp.uint32(0))
    low2 = low + r_lo
    high2 = high + r_hi + (low2 < low).astype(jnp.uint32)
    # shift right by s
    small_s = jnp.clip(s, 1, 31)
    part = (high2 << (32 - small_s)) | (low2 >> small_s)
    overflow = (high2 >> (small_s - 1)) > 0  # P >> s >= 2^31 when s < 32
    mag_small = jnp.where(overflow, jnp.uint32(_INT32.max), part)
    mag_big = high2 >> jnp.clip(s - 32, 0, 31)
    mag = jnp.where(s >= 32, mag_big, mag_small)
    mag = jnp.minimum(mag, jnp.uint32(_INT32.max))
    out = lax.bitcast_convert_type(mag, jnp.int32)
    return jnp.where(neg, -out, out)


def requantize(acc: jax.typing.ArrayLike, m0: jax.typing.ArrayLike, shift: jax.typing.ArrayLike,
               zero_point: jax.typing.ArrayLike, *, qmin: int = -128, qmax: int = 127,
               relu: bool = False, dtype: jnp.dtype = jnp.int8) -> jax.Array:
    """Output codes ``clamp(Z_y + round(M · acc), lo, qmax)``, ``lo = max(Z_y, qmin)`` with ReLU.

    Args:
      acc: int32 accumulators (bias included).
      m0, shift: the fixed-point multiplier (:func:`quantize_multiplier`).
      zero_point: the output zero point (int, in ``[qmin, qmax]``).
      qmin, qmax: the code range.
      relu: fuse a ReLU as the lower clamp at the zero point.
      dtype: the code dtype.

    Returns:
      Codes of ``dtype``.

    Example:
      >>> m0, n = quantize_multiplier(0.5)
      >>> requantize(jnp.array([-40, 7, 400], jnp.int32), m0, n, -3).tolist()
      [-23, 1, 127]
      >>> requantize(jnp.array([-40, 7, 400], jnp.int32), m0, n, -3, relu=True).tolist()
      [-3, 1, 127]
    """
    if qmin >= qmax:
        raise ValueError(f"requantize: qmin={qmin} must be below qmax={qmax}")
    multiply_by_multiplier(jnp.zeros((), jnp.int32), m0, shift)  # checks m0 and shift
    return _requantize(jnp.asarray(acc), jnp.asarray(m0), jnp.asarray(shift),
                       jnp.asarray(zero_point, jnp.int32), int(qmin), int(qmax), bool(relu),
                       jnp.dtype(dtype))


@partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _requantize(acc: jax.Array, m0: jax.Array, shift: jax.Array, z: jax.Array, qmin: int,
                qmax: int, relu: bool, dtype: Any) -> jax.Array:
    y = _multiply(acc, m0, shift)
    # saturating add of the zero point: |y| < 2^31 and |z| small
    y = jnp.clip(y, _INT32.min + 256, _INT32.max - 256) + z
    lo = jnp.maximum(z, qmin) if relu else jnp.int32(qmin)
    return jnp.clip(y, lo, qmax).astype(dtype)


def _int8(x: jax.typing.ArrayLike, name: str, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype != jnp.int8:
        raise TypeError(f"{what}: {name} must be int8 codes, got {x.dtype}")
    return x


def int_dense(x: jax.typing.ArrayLike, kernel: jax.typing.ArrayLike,
              bias: jax.typing.ArrayLike | None = None) -> jax.Array:
    """``x @ kernel + bias`` with int8 operands and int32 accumulation.

    Args:
      x: int8 codes, shape ``(..., K)``.
      kernel: int8 codes, shape ``(K, N)``.
      bias: optional int32 ``(N,)`` (the zero-point correction folded in).

    Returns:
      int32 accumulators ``(..., N)``.

    Raises:
      TypeError: operands that are not int8 (or an int32 bias).
      ValueError: mismatched contraction sizes.

    Example:
      >>> int_dense(jnp.array([[1, -2]], jnp.int8), jnp.array([[3], [4]], jnp.int8),
      ...           jnp.array([10], jnp.int32)).tolist()
      [[5]]
    """
    what = "int_dense"
    x, kernel = _int8(x, "x", what), _int8(kernel, "kernel", what)
    if kernel.ndim != 2 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(f"{what}: x of shape {x.shape} and kernel of shape {kernel.shape} do "
                         "not contract (need (..., K) and (K, N))")
    acc = _int8_matmul(x, kernel)
    return acc if bias is None else acc + _bias(bias, kernel.shape[-1], what)


def _int8_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` (int8, int32 accumulation) with the contraction padded to a multiple of 4.

    Zero padding adds nothing to the sums; XLA's GPU int8 GEMM returns wrong
    sums for contraction sizes that are not a multiple of 4 (seen with jax
    0.11.2 on an H200), and the padding costs nothing measurable elsewhere.
    """
    k = kernel.shape[0]
    extra = -k % 4
    if extra:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])
        kernel = jnp.pad(kernel, [(0, extra), (0, 0)])
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                           preferred_element_type=jnp.int32)


def _bias(bias: jax.typing.ArrayLike, n: int, what: str) -> jax.Array:
    b = jnp.asarray(bias)
    if b.dtype != jnp.int32 or b.shape != (n,):
        raise TypeError(f"{what}: bias must be int32 of shape ({n},), got {b.dtype} {b.shape}")
    return b


def int_conv(x: jax.typing.ArrayLike, kernel: jax.typing.ArrayLike,
             bias: jax.typing.ArrayLike | None = None, *,
             strides: Sequence[int] | None = None,
             padding: Sequence[tuple[int, int]] | None = None,
             zero_point: int | jax.typing.ArrayLike = 0,
             dilation: Sequence[int] | None = None,
             feature_group_count: int = 1, method: str = "im2col") -> jax.Array:
    """An int8 convolution (``N...C`` inputs, ``...IO`` kernels) with int32 accumulation.

    Padding is explicit and filled with the input zero point (the code of
    the real value 0), followed by a ``VALID`` convolution, so padded
    positions contribute ``Z_x q_w`` exactly as the zero-point correction
    in the bias assumes.

    ``method="im2col"`` (default, ungrouped convolutions) gathers the
    windows into int8 patches ``(N, *out, window · C)`` with strided slices
    and contracts them with the reshaped kernel in one int8 ``dot_general``
    (int32 accumulation): XLA's CPU backend has fast int8 matrix products
    but a slow int8 convolution, and cuDNN has no int8 → int32 convolution
    for these layouts. ``method="conv"`` calls ``lax.conv_general_dilated``
    with ``preferred_element_type=int32`` (grouped convolutions always do).

    Args:
      x: int8 codes, ``(N, *spatial, C)``.
      kernel: int8 codes, ``(*window, C / groups, O)``.
      bias: optional int32 ``(O,)``.
      strides: per spatial axis (default 1).
      padding: ``(low, high)`` per spatial axis (default none).
      zero_point: the value padded positions take.
      dilation: kernel dilation per spatial axis (default 1).
      feature_group_count: grouped convolution.
      method: ``"im2col"`` or ``"conv"`` (see above); same results.

    Returns:
      int32 accumulators ``(N, *out_spatial, O)``.

    Raises:
      TypeError: operands that are not int8.
      ValueError: rank or channel mismatches.

    Example:
      >>> x = jnp.ones((1, 3, 3, 1), jnp.int8)
      >>> k = jnp.ones((3, 3, 1, 1), jnp.int8)
      >>> int_conv(x, k, padding=[(1, 1), (1, 1)], zero_point=-1)[0, :, :, 0].tolist()
      [[-1, 3, -1], [3, 9, 3], [-1, 3, -1]]
    """
    what = "int_conv"
    x, kernel = _int8(x, "x", what), _int8(kernel, "kernel", what)
    nsp = x.ndim - 2
    if not 1 <= nsp <= 3 or kernel.ndim != nsp + 2:
        raise ValueError(f"{what}: x of shape {x.shape} (N, *spatial, C) and kernel of shape "
                         f"{kernel.shape} (*window, C/groups, O) have inconsistent ranks (1 to 3 spatial axes)")
    if x.shape[-1] != kernel.shape[-2] * feature_group_count:
        raise ValueError(f"{what}: x has {x.shape[-1]} channels, the kernel expects "
                         f"{kernel.shape[-2]} x {feature_group_count} groups")
    if method not in ("im2col", "conv"):
        raise ValueError(f"{what}: method={method!r} must be 'im2col' or 'conv'")
    strides = tuple(strides or (1,) * nsp)
    dilation = tuple(dilation or (1,) * nsp)
    if padding is not None and any(lo or hi for lo, hi in padding):
        pads = [(0, 0, 0)] + [(int(lo), int(hi), 0) for lo, hi in padding] + [(0, 0, 0)]
        x = lax.pad(x, jnp.asarray(zero_point, jnp.int8), pads)
    if method == "im2col" and feature_group_count == 1:
        window = kernel.shape[:nsp]
        span = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
        out = [(n - w) // s + 1 for n, w, s in zip(x.shape[1:-1], span, strides)]
        if min(out) < 1:
            raise ValueError(f"{what}: the window {tuple(span)} (dilated) is larger than the "
                             f"padded input {x.shape[1:-1]}")
        patches = []
        for offs in itertools.product(*(range(k) for k in window)):
            start = (0, *(o * d for o, d in zip(offs, dilation)), 0)
            limit = (x.shape[0], *(st + (m - 1) * s + 1 for st, m, s in
                                   zip(start[1:-1], out, strides)), x.shape[-1])
            patches.append(lax.slice(x, start, limit, (1, *strides, 1)))
        cols = jnp.concatenate(patches, axis=-1)
        acc = _int8_matmul(cols, kernel.reshape(-1, kernel.shape[-1]))
        return acc if bias is None else acc + _bias(bias, kernel.shape[-1], what)
    sp = "DHW"[3 - nsp:]
    dn = (f"N{sp}C", f"{sp}IO", f"N{sp}C")
    acc = lax.conv_general_dilated(
        x, kernel, strides, "VALID", rhs_dilation=dilation, dimension_numbers=dn,
        feature_group_count=feature_group_count, preferred_element_type=jnp.int32)
    return acc if bias is None else acc + _bias(bias, kernel.shape[-1], what)


def fold_batchnorm(kernel: jax.typing.ArrayLike, bias: jax.typing.ArrayLike | None, *,
                   mean: jax.typing.ArrayLike, var: jax.typing.ArrayLike,
                   scale: jax.typing.ArrayLike | None = None,
                   offset: jax.typing.ArrayLike | None = None,
                   epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """Folds inference-mode batch normalization into the preceding dense/conv layer.

    ``BN(y) = γ (y - μ) / sqrt(σ² + ε) + β`` applied to ``y = x ⊛ W + b``
    equals ``x ⊛ W' + b'`` with ``W' = W · γ / sqrt(σ² + ε)`` (per output
    channel, the last kernel axis) and ``b' = (b - μ) γ / sqrt(σ² + ε) + β``.

    Args:
      kernel: the layer's kernel, output channels last.
      bias: its bias ``(O,)`` or None (a layer without bias).
      mean, var: BN running statistics ``(O,)`` (flax ``batch_stats``).
      scale, offset: BN ``γ`` and ``β`` ``(O,)`` (None: 1 and 0).
      epsilon: BN's ``ε`` (flax's default ``1e-5``).

    Returns:
      ``(kernel', bias')`` in the kernel's dtype.

    Raises:
      ValueError: statistics whose shape is not ``(O,)``; ``epsilon < 0``.

    Example:
      >>> k, b = fold_batchnorm(jnp.ones((2, 1)), jnp.zeros(1), mean=jnp.array([1.0]),
      ...                       var=jnp.array([4.0]), scale=jnp.array([2.0]), epsilon=0.0)
      >>> k.ravel().tolist(), b.tolist()
      ([1.0, 1.0], [-1.0])
    """
    kernel = jnp.asarray(kernel)
    o = kernel.shape[-1]
    if epsilon < 0:
        raise ValueError(f"fold_batchnorm: epsilon={epsilon} must be >= 0")
    vals = {}
    for name, v, default in (("mean", mean, None), ("var", var, None), ("scale", scale, 1.0),
                             ("offset", offset, 0.0), ("bias", bias, 0.0)):
        a = jnp.full((o,), default, jnp.float32) if v is None else jnp.asarray(v, jnp.float32)
        if a.shape != (o,):
            raise ValueError(f"fold_batchnorm: {name} of shape {a.shape} must be ({o},), one per "
                             "output channel (the kernel's last axis)")
        vals[name] = a
    g = vals["scale"] * lax.rsqrt(vals["var"] + epsilon)
    k = (kernel.astype(jnp.float32) * g).astype(kernel.dtype)
    b = (vals["bias"] - vals["mean"]) * g + vals["offset"]
    return k, b.astype(kernel.dtype)
