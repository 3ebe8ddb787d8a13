"""Calibration: choosing the clipping range (so the scale) of a uniform quantizer.

A calibration method turns an array into a clipping range ``[lo, hi]`` per
tensor, channel or group (the granularity of
:func:`~jaxcomp.quant.uniform.compute_scale`), and
:func:`~jaxcomp.quant.uniform.scale_from_range` puts that range on the code
grid. Methods (:data:`METHODS`):

* ``"absmax"``: ``[-max|x|, max|x|]``;
* ``"minmax"``: ``[min x, max x]``;
* ``"percentile"``: the ``p``-th percentile of ``|x|`` (symmetric grids)
  or the ``100 - p``-th and ``p``-th percentiles of ``x`` (asymmetric);
  outliers beyond it are clipped;
* ``"mse"``: the clipping ratio ``r`` (the range is ``r`` times the
  absmax/minmax range) from a grid of ``n_grid`` ratios in ``(0, 1]`` that
  minimizes the quantization MSE ``Σ (fake_quant(x) - x)²`` of each
  channel/group (ties: the smallest ratio).

All methods accept a ``mask``: only its ``True`` entries count (pruned
weights neither shrink nor shift a range). They are reductions over the
non-channel axes, so per-channel statistics of an array sharded along its
channel axis need no communication.

For activations during training, :class:`EmaRange` keeps an exponential
moving average of batch minima and maxima (Jacob et al. 2018, Sec. 3):
:func:`ema_range_init`, :func:`ema_range_update` and
:meth:`EmaRange.scale`.

References:
  Jacob et al. 2018, arXiv:1712.05877 (EMA ranges during QAT).
  Krishnamoorthi 2018, arXiv:1806.08342 (min/max, percentile and MSE
  calibration).
  Banner et al. 2019, "Post-training 4-bit quantization of convolution
  networks for rapid-deployment", arXiv:1810.05723 (MSE-optimal clipping).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import check_in_range
from jaxcomp.quant.grid import (
    Axis,
    check_finite_weights,
    check_float,
    quant_range,
    reduction_plan,
)
from jaxcomp.quant.uniform import compute_scale, scale_from_range

__all__ = [
    "METHODS",
    "EmaRange",
    "calibrate",
    "calibration_range",
    "check_method",
    "ema_range_init",
    "ema_range_update",
    "mse_ratio",
]

METHODS = ("absmax", "minmax", "percentile", "mse")
"""The calibration methods of :func:`calibrate`."""


def check_method(method: Any, what: str = "calibration") -> str:
    """Validates a calibration method name.

    Raises:
      ValueError: naming the known methods.

    Example:
      >>> check_method("mse")
      'mse'
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"{what}={method!r} is not a calibration method; use one of "
                         f"{', '.join(METHODS)}")
    return method


def _check_percentile(p: Any) -> None:
    if isinstance(p, (numbers.Real, np.floating)) and not isinstance(p, bool):
        check_in_range("percentile", float(p), 50.0, 100.0, low_inclusive=False)


def _check_n_grid(n_grid: Any) -> int:
    if isinstance(n_grid, bool) or not isinstance(n_grid, (numbers.Integral, np.integer)) or (
            n_grid < 1):
        raise ValueError(f"n_grid={n_grid!r} must be a positive int (the number of clipping "
                         "ratios tried)")
    return int(n_grid)


def _prepare(x: Any, mask: Any, plan: Any, what: str) -> tuple[jax.Array, jax.Array | None]:
    xf = x.astype(jnp.float32).reshape(plan.split_shape)
    if mask is None:
        return xf, None
    m = jnp.asarray(mask)
    if m.shape != x.shape:
        raise ValueError(f"{what}: mask of shape {tuple(m.shape)} must have x's shape "
                         f"{tuple(x.shape)}")
    return xf, m.astype(bool).reshape(plan.split_shape)


def _extremes(xf: jax.Array, m: jax.Array | None, red: tuple[int, ...], symmetric: bool,
              ) -> tuple[jax.Array, jax.Array]:
    """absmax range (symmetric) or min/max range, over the masked entries."""
    if symmetric:
        hi = jnp.max(jnp.abs(xf) if m is None else jnp.where(m, jnp.abs(xf), 0.0), axis=red,
                     keepdims=True)
        return -hi, hi
    lo = jnp.min(xf if m is None else jnp.where(m, xf, jnp.inf), axis=red, keepdims=True)
    hi = jnp.max(xf if m is None else jnp.where(m, xf, -jnp.inf), axis=red, keepdims=True)
    return lo, hi


def _percentiles(xf: jax.Array, m: jax.Array | None, red: tuple[int, ...], p: Any,
                 symmetric: bool) -> tuple[jax.Array, jax.Array]:
    p = jnp.asarray(p, jnp.float32)
    if symmetric:
        a = jnp.abs(xf) if m is None else jnp.where(m, jnp.abs(xf), jnp.nan)
        hi = jnp.nanpercentile(a, p, axis=red, keepdims=True)
        hi = jnp.where(jnp.isnan(hi), 0.0, hi)
        return -hi, hi
    v = xf if m is None else jnp.where(m, xf, jnp.nan)
    lo = jnp.nanpercentile(v, 100.0 - p, axis=red, keepdims=True)
    hi = jnp.nanpercentile(v, p, axis=red, keepdims=True)
    return jnp.where(jnp.isnan(lo), 0.0, lo), jnp.where(jnp.isnan(hi), 0.0, hi)


def _mse_search(xf: jax.Array, m: jax.Array | None, red: tuple[int, ...], bits: int,
                symmetric: bool, n_grid: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(lo, hi, ratio) minimizing the masked quantization MSE per channel/group."""
    lo0, hi0 = _extremes(xf, m, red, symmetric)
    qmin, qmax = quant_range(bits, symmetric=symmetric)
    ratios = jnp.arange(1, n_grid + 1, dtype=jnp.float32) / n_grid

    def err(r):
        s, z = scale_from_range(lo0 * r, hi0 * r, bits=bits, symmetric=symmetric)
        q = jnp.clip(jnp.round(xf / s + z), qmin, qmax)
        e = jnp.square((q - z) * s - xf)
        if m is not None:
            e = jnp.where(m, e, 0.0)
        return jnp.sum(e, axis=red, keepdims=True)

    errs = jax.lax.map(err, ratios)  # (n_grid, *stat_shape), one ratio at a time
    best = jnp.argmin(errs, axis=0)
    r = ratios[best]
    return lo0 * r, hi0 * r, r


def calibration_range(
    x: jax.typing.ArrayLike,
    *,
    method: str = "absmax",
    bits: int = 8,
    axis: Axis = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    symmetric: bool = True,
    mask: jax.typing.ArrayLike | None = None,
    percentile: float = 99.99,
    n_grid: int = 100,
) -> tuple[jax.Array, jax.Array]:
    """The clipping range ``(lo, hi)`` a calibration method picks for ``x``.

    Args:
      x: float array.
      method: one of :data:`METHODS`.
      bits: bit width (used by ``"mse"``, which quantizes).
      axis, group_size, group_axis: granularity, as in
        :func:`~jaxcomp.quant.uniform.compute_scale`.
      symmetric: the grid (``"absmax"`` and ``"percentile"`` of ``|x|``
        give symmetric ranges; ``"mse"`` scales the absmax range when True,
        the min/max range when False).
      mask: optional bool array of ``x``'s shape; only ``True`` entries count.
      percentile: ``p`` in ``(50, 100]`` for ``"percentile"`` (may be a
        traced scalar).
      n_grid: number of clipping ratios ``k / n_grid`` tried by ``"mse"``.

    Returns:
      ``(lo, hi)`` float32 arrays of the statistic's shape (see
      :func:`~jaxcomp.quant.uniform.compute_scale`); an empty channel gives
      ``(0, 0)`` (``(+inf, -inf)`` for ``"minmax"``; both map to the floor
      scale).

    Raises:
      ValueError: unknown method, percentile outside ``(50, 100]``, bad
        ``n_grid``, bits, axes, group size or mask, concrete NaN/Inf.
      TypeError: non-float ``x``.

    Example:
      >>> x = jnp.array([-4.0, -1.0, 0.5, 1.0, 2.0])
      >>> [v.tolist() for v in calibration_range(x, method="minmax")]
      [[-4.0], [2.0]]
      >>> [v.tolist() for v in calibration_range(x, method="percentile", percentile=75.0)]
      [[-2.0], [2.0]]
    """
    what = "calibration_range"
    x = check_float(x, what)
    check_method(method, f"{what}: method")
    quant_range(bits, symmetric=symmetric)
    _check_percentile(percentile)
    n_grid = _check_n_grid(n_grid)
    plan = reduction_plan(x.shape, axis=axis, group_size=group_size, group_axis=group_axis,
                          what=what)
    check_finite_weights(x, what)
    xf, m = _prepare(x, mask, plan, what)
    red = plan.reduce_axes
    if method == "absmax":
        lo, hi = _extremes(xf, m, red, True)
    elif method == "minmax":
        lo, hi = _extremes(xf, m, red, False)
    elif method == "percentile":
        lo, hi = _percentiles(xf, m, red, percentile, symmetric)
    else:
        lo, hi, _ = _mse_search(xf, m, red, bits, symmetric, n_grid)
    return lo.reshape(plan.scale_shape), hi.reshape(plan.scale_shape)


def calibrate(
    x: jax.typing.ArrayLike,
    *,
    bits: int,
    method: str = "absmax",
    axis: Axis = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    symmetric: bool = True,
    mask: jax.typing.ArrayLike | None = None,
    percentile: float = 99.99,
    n_grid: int = 100,
) -> tuple[jax.Array, jax.Array]:
    """Scale and zero point of ``x`` by a calibration method.

    ``calibrate(x, bits=b, method=m, ...)`` is
    ``scale_from_range(*calibration_range(x, method=m, ...), bits=b)``; for
    ``"absmax"`` (symmetric) and ``"minmax"`` (asymmetric) it equals
    :func:`~jaxcomp.quant.uniform.compute_scale`.

    Args:
      x, bits, method, axis, group_size, group_axis, symmetric, mask,
      percentile, n_grid: as in :func:`calibration_range`.

    Returns:
      ``(scale, zero_point)`` float32, shaped like
      :func:`~jaxcomp.quant.uniform.compute_scale`'s.

    Raises:
      ValueError, TypeError: as :func:`calibration_range`.

    Example:
      >>> x = jax.random.laplace(jax.random.key(0), (1000,))  # heavy tails
      >>> round(calibrate(x, bits=3, method="absmax")[0].item(), 3)  # the largest |x| / 3
      3.106
      >>> round(calibrate(x, bits=3, method="mse")[0].item(), 3)  # clips the tails
      1.149

    References:
      Banner et al. 2019, arXiv:1810.05723; Krishnamoorthi 2018, arXiv:1806.08342.
    """
    if method in ("absmax", "minmax") and symmetric == (method == "absmax"):
        check_method(method, "calibrate: method")
        return compute_scale(x, bits=bits, axis=axis, group_size=group_size,
                             group_axis=group_axis, symmetric=symmetric, mask=mask)
    lo, hi = calibration_range(x, method=method, bits=bits, axis=axis, group_size=group_size,
                               group_axis=group_axis, symmetric=symmetric, mask=mask,
                               percentile=percentile, n_grid=n_grid)
    return scale_from_range(lo, hi, bits=bits, symmetric=symmetric)


def mse_ratio(
    x: jax.typing.ArrayLike,
    *,
    bits: int,
    axis: Axis = None,
    symmetric: bool = True,
    mask: jax.typing.ArrayLike | None = None,
    n_grid: int = 100,
) -> jax.Array:
    """The MSE-optimal clipping ratio ``r`` per channel (see the module docstring).

    Example:
      >>> x = jax.random.laplace(jax.random.key(0), (1000,))
      >>> round(mse_ratio(x, bits=3, n_grid=20).item(), 2)
      0.35
    """
    what = "mse_ratio"
    x = check_float(x, what)
    quant_range(bits, symmetric=symmetric)
    n_grid = _check_n_grid(n_grid)
    plan = reduction_plan(x.shape, axis=axis, what=what)
    check_finite_weights(x, what)
    xf, m = _prepare(x, mask, plan, what)
    return _mse_search(xf, m, plan.reduce_axes, bits, symmetric, n_grid)[2].reshape(
        plan.scale_shape)


# --------------------------------------------------------------------------- EMA ranges


class EmaRange(NamedTuple):
    """Exponential moving averages of an activation's minimum and maximum.

    Attributes:
      lo: running minimum (float32; per channel with ``axis``).
      hi: running maximum.
      count: number of updates so far (int32); the first update sets
        ``lo``/``hi`` to the batch's own range.

    Example:
      >>> r = ema_range_init()
      >>> r = ema_range_update(r, jnp.array([-1.0, 3.0]))
      >>> r = ema_range_update(r, jnp.array([-3.0, 1.0]), momentum=0.5)
      >>> r.lo.tolist(), r.hi.tolist(), int(r.count)
      (-2.0, 2.0, 2)
      >>> s, z = r.scale(bits=8)
      >>> round(float(s) * 127, 4), float(z)
      (2.0, 0.0)
    """

    lo: jax.Array
    hi: jax.Array
    count: jax.Array

    def scale(self, *, bits: int, symmetric: bool = True) -> tuple[jax.Array, jax.Array]:
        """Scale and zero point of the running range (see :func:`scale_from_range`)."""
        return scale_from_range(self.lo, self.hi, bits=bits, symmetric=symmetric)


def ema_range_init(shape: tuple[int, ...] = ()) -> EmaRange:
    """An empty :class:`EmaRange` (``count=0``) whose ranges have ``shape``.

    Args:
      shape: ``()`` for one range per tensor, or the statistic's shape for
        per-channel ranges (e.g. ``(1, 1, C)`` for ``axis=-1`` of a
        ``(B, T, C)`` activation).

    Example:
      >>> ema_range_init((1, 4)).lo.shape
      (1, 4)
    """
    shape = tuple(int(d) for d in shape)
    z = jnp.zeros(shape, jnp.float32)
    return EmaRange(z, z, jnp.zeros((), jnp.int32))


def ema_range_update(state: EmaRange, x: jax.typing.ArrayLike, *, momentum: Any = 0.99,
                     axis: Axis = None) -> EmaRange:
    """Folds a batch's min/max into the running range: ``r ← m·r + (1 - m)·batch``.

    Args:
      state: the current :class:`EmaRange`.
      x: the activation batch (float).
      momentum: ``m`` in ``[0, 1)`` (may be traced).
      axis: channel axes with their own range (None: per tensor); the
        result must have ``state``'s shape.

    Returns:
      The new :class:`EmaRange` (jittable; the first update, ``count == 0``,
      takes the batch's range).

    Raises:
      ValueError: a concrete momentum outside ``[0, 1)``, a shape mismatch.
      TypeError: ``state`` is not an :class:`EmaRange`, ``x`` not float.

    References:
      Jacob et al. 2018, arXiv:1712.05877.
    """
    what = "ema_range_update"
    if not isinstance(state, EmaRange):
        raise TypeError(f"{what}: state must be an EmaRange (from ema_range_init), got "
                        f"{type(state).__name__}")
    x = check_float(x, what)
    if isinstance(momentum, (numbers.Real, np.floating)) and not isinstance(momentum, bool):
        check_in_range("momentum", float(momentum), 0.0, 1.0, high_inclusive=False)
    plan = reduction_plan(x.shape, axis=axis, what=what)
    xf = x.astype(jnp.float32)
    lo = jnp.min(xf, axis=plan.reduce_axes, keepdims=True).reshape(plan.scale_shape)
    hi = jnp.max(xf, axis=plan.reduce_axes, keepdims=True).reshape(plan.scale_shape)
    if state.lo.ndim == 0 and lo.size == 1:
        lo, hi = lo.reshape(()), hi.reshape(())
    if lo.shape != state.lo.shape:
        raise ValueError(f"{what}: the batch range has shape {tuple(lo.shape)} but the state's "
                         f"is {tuple(state.lo.shape)}; pass the axis= the state was made for")
    m = jnp.asarray(momentum, jnp.float32)
    first = state.count == 0
    new_lo = jnp.where(first, lo, m * state.lo + (1 - m) * lo)
    new_hi = jnp.where(first, hi, m * state.hi + (1 - m) * hi)
    return EmaRange(new_lo, new_hi, state.count + 1)
