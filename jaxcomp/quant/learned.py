"""Learned quantizers: LSQ step sizes for weights, PACT clipping levels for activations.

**LSQ** (Esser et al. 2020) learns the step size ``s`` of a uniform
quantizer by gradient descent, with the weights:
``v̂ = round(clip(v / s, -Q_N, Q_P)) · s``. The gradient w.r.t. ``v`` is
straight-through inside the clipping range and 0 outside; w.r.t. ``s`` it is
``-v/s + round(v/s)`` inside, ``-Q_N`` below and ``Q_P`` above, multiplied by
the gradient scale ``g = 1 / sqrt(N · Q_P)`` (``N``: the number of weights
sharing the step). The step starts at ``2 · mean|v| / sqrt(Q_P)``.
Here the signed grid is the narrow range of
:func:`~jaxcomp.quant.grid.quant_range` (``Q_N = Q_P = 2^(b-1) - 1``; the
paper also uses the code ``-2^(b-1)``) and the unsigned grid is
``[0, 2^b - 1]`` (``Q_N = 0``, for non-negative activations).

Step sizes are trainable, so they live in the params: :func:`lsq_params`
replaces the selected weights by :class:`LsqArray` leaves (the float weight
and its step), whose :meth:`~LsqArray.materialize` is the LSQ quantizer. An
optax optimizer then trains weights and steps alike, as in the paper, and
:func:`jaxcomp.materialize` (or
:func:`~jaxcomp.quant.compressors.lsq_quantization`'s ``apply``) gives the
model its quantized weights.

**PACT** (Choi et al. 2018) clips activations to ``[0, α]`` with a learned
``α`` and quantizes the result with ``b`` bits:
``y = clip(x, 0, α)``, ``y_q = round(y · (2^b - 1) / α) · α / (2^b - 1)``;
straight-through rounding gives ``∂y_q/∂α = 1`` where ``x ≥ α``, 0 elsewhere
(:func:`pact`, the linen module :class:`PACT`).

QIL (Jung et al. 2019) learns an interval with a non-linear transformer and
is not provided: its pruning-and-clipping interval and exponent do not fit
the affine step-size shape used here.

References:
  Esser et al. 2020, "Learned step size quantization", arXiv:1902.08153.
  Choi et al. 2018, "PACT: parameterized clipping activation for quantized
  neural networks", arXiv:1805.06085.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.leaves import CompressedLeaf, QArray, compressed_leaf, dtype_bits, static_field
from jaxcomp.quant.grid import (
    MIN_SCALE,
    Axis,
    check_float,
    quant_range,
    reduction_plan,
    validate_bits,
)
from jaxcomp.quant.uniform import fake_quant, quantize

__all__ = [
    "PACT",
    "LsqArray",
    "lsq_fake_quant",
    "lsq_grad_scale",
    "lsq_init_step",
    "pact",
]


def _qp(bits: int, symmetric: bool) -> int:
    return quant_range(bits, symmetric=symmetric)[1]


def lsq_grad_scale(n: int, *, bits: int, symmetric: bool = True) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(N · Q_P)``.

    Args:
      n: number of values sharing one step size.
      bits: bit width.
      symmetric: grid (see the module docstring).

    Example:
      >>> lsq_grad_scale(100, bits=4)  # Q_P = 7
      0.03779644730092272
    """
    if int(n) < 1:
        raise ValueError(f"lsq_grad_scale: n={n} must be >= 1")
    return 1.0 / math.sqrt(int(n) * _qp(bits, symmetric))


def lsq_init_step(
    w: jax.typing.ArrayLike,
    *,
    bits: int,
    axis: Axis = None,
    symmetric: bool = True,
) -> jax.Array:
    """LSQ's initial step size ``2 · mean|w| / sqrt(Q_P)`` (per tensor or per channel).

    Args:
      w: weights (float).
      bits: bit width.
      axis: channel axes with their own step (None: one step).
      symmetric: grid (see the module docstring).

    Returns:
      float32 steps shaped like :func:`~jaxcomp.quant.uniform.compute_scale`'s
      scales, floored at :data:`~jaxcomp.quant.grid.MIN_SCALE`.

    Example:
      >>> s = lsq_init_step(jnp.array([[1.0, -2.0], [3.0, 0.0]]), bits=4, axis=-1)
      >>> s.shape, [round(v, 4) for v in s[0].tolist()]  # 2 * [2, 1] / sqrt(7)
      ((1, 2), [1.5119, 0.7559])
    """
    w = check_float(w, "lsq_init_step")
    qp = _qp(bits, symmetric)
    plan = reduction_plan(w.shape, axis=axis, what="lsq_init_step")
    m = jnp.mean(jnp.abs(w.astype(jnp.float32)), axis=plan.reduce_axes, keepdims=True)
    return jnp.maximum(2.0 * m / math.sqrt(qp), MIN_SCALE).reshape(plan.scale_shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _scaled_grad(s: jax.Array, g: float) -> jax.Array:
    """``s`` exactly in the forward pass, gradient multiplied by ``g``."""
    return s


@_scaled_grad.defjvp
def _scaled_grad_jvp(g, primals, tangents):
    (s,), (ds,) = primals, tangents
    return s, ds * g


def lsq_fake_quant(
    x: jax.typing.ArrayLike,
    step: jax.typing.ArrayLike,
    *,
    bits: int,
    symmetric: bool = True,
    grad_scale: float | None = None,
) -> jax.Array:
    """LSQ quantize-dequantize of ``x`` with a learnable ``step``.

    Args:
      x: float array (weights, or activations with ``symmetric=False``).
      step: positive step size, per tensor or per channel (any shape that
        broadcasts, including block shapes); differentiable.
      bits: bit width.
      symmetric: signed narrow grid (zero point 0) or unsigned ``[0, 2^b - 1]``
        (zero point 0).
      grad_scale: ``g``; default ``1 / sqrt(N · Q_P)`` with
        ``N = x.size / step.size``.

    Returns:
      ``round(clip(x / s, -Q_N, Q_P)) · s`` with ``x``'s shape and dtype.

    Raises:
      ValueError: bad bits, a concrete step that is not positive, a step
        shape that does not fit ``x``.

    Example:
      >>> x = jnp.array([-1.0, 0.2, 0.5, 3.0])
      >>> lsq_fake_quant(x, jnp.float32(0.25), bits=3).tolist()
      [-0.75, 0.25, 0.5, 0.75]
      >>> g = jax.grad(lambda s: lsq_fake_quant(x, s, bits=3, grad_scale=1.0).sum())
      >>> round(float(g(jnp.float32(0.25))), 4)  # -3 + (1 - 0.8) + 0 + 3
      0.2

    References:
      Esser et al. 2020, arXiv:1902.08153.
    """
    x = check_float(x, "lsq_fake_quant")
    step = jnp.asarray(step)
    if grad_scale is None:
        n = max(1, int(np.size(x)) // max(1, int(np.size(step))))
        grad_scale = lsq_grad_scale(n, bits=bits, symmetric=symmetric)
    s = _scaled_grad(step.astype(jnp.float32), float(grad_scale))
    return fake_quant(x, bits=bits, symmetric=symmetric, scale=s)


@compressed_leaf
class LsqArray(CompressedLeaf):
    """A weight with its learned step size: ``dense = lsq_fake_quant(weight, step)``.

    Both ``weight`` (float, the latent full-precision weight) and ``step``
    (float32, per tensor or per channel) are trainable pytree children.
    :meth:`storage_bits` charges what the exported model stores: ``bits``
    per weight plus the steps (:meth:`to_qarray` exports it).

    Raises:
      ValueError: bits outside ``[2, 16]`` (symmetric) or ``[1, 16]``, a step
        that does not broadcast against the weight.
      TypeError: a non-float weight.

    Example:
      >>> leaf = LsqArray(jnp.array([[0.3, -1.0], [0.1, 0.6]]), jnp.float32(0.25), bits=3)
      >>> leaf.materialize().tolist(), leaf.storage_bits(), leaf.weight_bits
      ([[0.25, -0.75], [0.0, 0.5]], 44, 3)

    References:
      Esser et al. 2020, arXiv:1902.08153.
    """

    weight: jax.Array
    step: jax.Array
    bits: int = static_field(default=8)
    symmetric: bool = static_field(default=True)

    kind: ClassVar[str] = "lsq"

    def __post_init__(self):
        if not (hasattr(self.weight, "shape") and hasattr(self.step, "shape")):
            return  # placeholders built by tree utilities
        validate_bits(self.bits, "LsqArray: bits")
        quant_range(self.bits, symmetric=self.symmetric)
        dt = np.dtype(self.weight.dtype)
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(f"LsqArray: weight must be a float array, got dtype {dt}")
        sshape = tuple(self.step.shape)
        if len(sshape) > self.weight.ndim or any(
                n not in (1, d) and (n < 1 or d % n) for n, d in zip(
                    sshape[::-1], tuple(self.weight.shape)[::-1])):
            raise ValueError(f"LsqArray: step of shape {sshape} does not fit the weight of shape "
                             f"{tuple(self.weight.shape)}; use size-1 axes (per channel)")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.weight.dtype)

    def materialize(self) -> jax.Array:
        return lsq_fake_quant(self.weight, self.step, bits=self.bits, symmetric=self.symmetric)

    def storage_bits(self) -> int:
        return int(np.size(self.weight)) * self.bits + int(np.size(self.step)) * dtype_bits(
            self.step.dtype)

    @property
    def weight_bits(self) -> int:
        return self.bits

    def to_qarray(self) -> QArray:
        """The integer codes and steps as a :class:`~jaxcomp.core.leaves.QArray`."""
        return quantize(self.weight, bits=self.bits, symmetric=self.symmetric,
                        scale=jnp.asarray(self.step, jnp.float32),
                        zero_point=None if self.symmetric else jnp.zeros((), jnp.float32))


# --------------------------------------------------------------------------- PACT


def _pact_clip(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """``clip(x, 0, α)``: gradient 1 w.r.t. ``x`` on ``(0, α)``, 1 w.r.t. ``α`` where ``x ≥ α``."""
    zero = jnp.zeros((), x.dtype)
    return jnp.where(x >= alpha, alpha, jnp.where(x <= zero, zero, x))


def pact(x: jax.typing.ArrayLike, alpha: jax.typing.ArrayLike, *, bits: int) -> jax.Array:
    """PACT: clip to ``[0, α]`` and quantize with ``bits`` bits (``α`` learned).

    Args:
      x: pre-activations (float).
      alpha: the clipping level (a positive scalar or per-channel array that
        broadcasts against ``x``); differentiable.
      bits: bit width in ``[1, 16]`` (``2^b - 1`` steps on ``[0, α]``).

    Returns:
      The quantized activations, ``x``'s shape and dtype.

    Raises:
      ValueError: bad bits, a concrete ``alpha`` that is not positive.

    Example:
      >>> x = jnp.array([-1.0, 0.4, 1.2, 5.0])
      >>> pact(x, jnp.float32(3.0), bits=2).tolist()
      [0.0, 0.0, 1.0, 3.0]
      >>> jax.grad(lambda a: pact(x, a, bits=2).sum())(jnp.float32(3.0)).item()  # x >= α once
      1.0

    References:
      Choi et al. 2018, arXiv:1805.06085.
    """
    x = check_float(x, "pact")
    bits = validate_bits(bits, "pact: bits")
    a = jnp.asarray(alpha)
    host = None if isinstance(a, jax.core.Tracer) else np.asarray(a, np.float32)
    if host is not None and not np.all(host > 0):
        raise ValueError(f"pact: alpha must be > 0, got {host.ravel()[:4].tolist()}; "
                         "initialise it positive (the paper uses 10)")
    a = a.astype(jnp.float32)
    y = _pact_clip(x.astype(jnp.float32), a)
    levels = (1 << bits) - 1
    s = a / levels
    yq = y + jax.lax.stop_gradient(jnp.round(y / s) * s - y)
    return yq.astype(x.dtype)


class PACT(nn.Module):
    """Flax linen PACT activation: ``pact(x, alpha, bits=bits)`` with a learned ``alpha``.

    Attributes:
      bits: activation bit width.
      alpha_init: initial clipping level (the paper uses 10).
      per_channel: one ``alpha`` per channel of the last axis.

    Example:
      >>> m = PACT(bits=4, alpha_init=2.0)
      >>> v = m.init(jax.random.key(0), jnp.ones((2, 3)))
      >>> [round(y, 4) for y in m.apply(v, jnp.array([-1.0, 1.0, 5.0])).tolist()]
      [0.0, 0.9333, 2.0]

    References:
      Choi et al. 2018, arXiv:1805.06085.
    """

    bits: int = 4
    alpha_init: float = 10.0
    per_channel: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1],) if self.per_channel else ()
        alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), shape,
                           jnp.float32)
        return pact(x, alpha, bits=self.bits)

