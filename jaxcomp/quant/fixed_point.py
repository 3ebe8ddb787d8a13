"""Fixed-point numbers ⟨IL, FL⟩ with saturation and stochastic rounding (Gupta et al. 2015).

A fixed-point format with word length ``WL = total_bits`` and ``FL =
frac_bits`` fractional bits (``IL = WL - FL`` integer bits, sign included)
represents the multiples of ``ε = 2^-FL`` in
``[-2^(IL-1), 2^(IL-1) - ε]`` (two's complement). :func:`fixed_point` maps a
real ``x`` to that grid:

* values outside the range **saturate** to its ends;
* ``rounding="nearest"`` rounds to the closest multiple of ``ε``, a tie
  going down (the paper's rule: ``⌊x⌋`` when ``x ≤ ⌊x⌋ + ε/2``);
* ``rounding="stochastic"`` rounds up with probability
  ``(x - ⌊x⌋) / ε`` and down otherwise, so ``E[round(x)] = x`` inside the
  range: the rounding that let Gupta et al. train with 16-bit fixed point.

The gradient is straight-through: 1 inside the range, 0 where the value
saturates (``ste="clipped"``), or 1 everywhere (``ste="identity"``).

References:
  Gupta, Agrawal, Gopalakrishnan, Narayanan 2015, "Deep learning with
  limited numerical precision", arXiv:1502.02551.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.quant.grid import (
    check_finite_weights,
    check_float,
    check_rounding,
    clip_inside,
    clip_ste,
    stochastic_round,
    validate_bits,
)

__all__ = ["fixed_point", "fixed_point_range"]


def _check_frac(frac_bits: Any) -> int:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (numbers.Integral, np.integer)):
        raise TypeError(f"fixed_point: frac_bits must be an int, got {frac_bits!r}")
    if not 0 <= int(frac_bits) <= 64:
        raise ValueError(f"fixed_point: frac_bits={frac_bits} is outside [0, 64]")
    return int(frac_bits)


def fixed_point_range(total_bits: int, frac_bits: int) -> tuple[float, float, float]:
    """``(lo, hi, eps)`` of the ⟨IL, FL⟩ format with ``WL = total_bits``, ``FL = frac_bits``.

    Example:
      >>> fixed_point_range(8, 4)  # IL = 4: [-8, 8 - 1/16] in steps of 1/16
      (-8.0, 7.9375, 0.0625)
    """
    wl = validate_bits(total_bits, "fixed_point: total_bits", low=2, high=32)
    fl = _check_frac(frac_bits)
    eps = 2.0 ** -fl
    return -(2.0 ** (wl - 1)) * eps, (2.0 ** (wl - 1) - 1) * eps, eps


def fixed_point(
    x: jax.typing.ArrayLike,
    *,
    total_bits: int = 16,
    frac_bits: int,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    ste: str = "clipped",
) -> jax.Array:
    """Rounds ``x`` to the fixed-point format ⟨total_bits - frac_bits, frac_bits⟩, saturating.

    Args:
      x: float array.
      total_bits: word length ``WL`` in ``[2, 32]`` (sign bit included).
      frac_bits: fractional bits ``FL`` in ``[0, 64]`` (``ε = 2^-FL``; ``FL``
        may exceed ``WL`` for formats of small magnitude).
      rounding: ``"nearest"`` (ties down) or ``"stochastic"`` (unbiased).
      key: PRNG key, required for stochastic rounding.
      ste: ``"clipped"`` or ``"identity"`` gradient (see the module docstring).

    Returns:
      The rounded values, ``x``'s shape and dtype (computed in float32; for
      ``WL > 24`` the grid is finer than float32 and the result is the
      nearest float32).

    Raises:
      ValueError: ``total_bits``/``frac_bits`` out of range, unknown rounding
        or ste, a missing key, concrete NaN/Inf in ``x``.
      TypeError: non-integer bit counts, a non-float ``x``.

    Example:
      >>> x = jnp.array([-9.0, 0.03125, 0.1, 7.99])
      >>> fixed_point(x, total_bits=8, frac_bits=4).tolist()  # ε = 1/16, range [-8, 7.9375]
      [-8.0, 0.0, 0.125, 7.9375]

    References:
      Gupta et al. 2015, arXiv:1502.02551.
    """
    what = "fixed_point"
    x = check_float(x, what)
    lo, hi, eps = fixed_point_range(total_bits, frac_bits)
    check_rounding(what, rounding, key, ste)
    check_finite_weights(x, what)
    qmin, qmax = lo / eps, hi / eps
    y = x.astype(jnp.float32) / jnp.float32(eps)
    yc = clip_inside(y, qmin, qmax) if ste == "clipped" else clip_ste(y, qmin, qmax)
    if rounding == "stochastic":
        q = stochastic_round(yc, key)
    else:  # nearest, a tie going down: ceil(y - 1/2)
        q = yc + jax.lax.stop_gradient(jnp.ceil(yc - 0.5) - yc)
    return (q * jnp.float32(eps)).astype(x.dtype)
