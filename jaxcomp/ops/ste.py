"""Masked forward views and their gradients.

Three ways to use a keep-mask ``m`` in the forward pass:

* :func:`masked_weight` (``mode="mask"``): ``where(m, w, 0)``; pruned
  weights get zero gradient and the stored weights are kept exactly zero.
* :func:`ste_masked_weight` (``mode="ste"``): the same forward value, but the
  gradient passes straight through to every weight (``∂view/∂w = 1``), so
  pruned weights keep training densely and can come back when masks are
  recomputed (Zhou et al.'s STE baseline, movement pruning's hard masks).
* :func:`sr_ste_masked_weight` (``mode="sr_ste"``): straight-through plus a
  decay on the pruned weights, ``g + λ_w · (¬m) ⊙ w`` (Zhou et al. 2021,
  "sparse-refined STE"), implemented as a ``custom_vjp``.

References:
  Bengio et al., Estimating or propagating gradients through stochastic
  neurons, arXiv:1308.3432. Zhou et al., Learning N:M fine-grained structured
  sparse neural networks from scratch, arXiv:2102.04010.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["MODES", "mask_view", "masked_weight", "sr_ste_masked_weight", "ste_masked_weight"]

MODES = ("mask", "project", "ste", "sr_ste")


def masked_weight(w: jax.Array, mask: jax.Array) -> jax.Array:
    """``where(mask, w, 0)``: pruned weights are zero and get zero gradient.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = jnp.array([True, False])
      >>> jax.grad(lambda w: masked_weight(w, m).sum())(jnp.ones(2)).tolist()
      [1.0, 0.0]
    """
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def ste_masked_weight(w: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked forward, identity gradient (straight-through estimator).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = jnp.array([True, False])
      >>> f = lambda w: (ste_masked_weight(w, m) * jnp.array([2.0, 3.0])).sum()
      >>> float(f(jnp.ones(2))), jax.grad(f)(jnp.ones(2)).tolist()
      (2.0, [2.0, 3.0])
    """
    return w + jax.lax.stop_gradient(masked_weight(w, mask) - w)


@jax.custom_vjp
def _sr_ste(w: jax.Array, mask: jax.Array, decay: jax.Array) -> jax.Array:
    return masked_weight(w, mask)


def _sr_ste_fwd(w, mask, decay):
    return masked_weight(w, mask), (w, mask, decay)


def _sr_ste_bwd(res, g):
    w, mask, decay = res
    gw = g + (decay * jnp.where(mask, jnp.zeros((), w.dtype), w)).astype(g.dtype)
    return gw, None, jnp.zeros_like(decay)


_sr_ste.defvjp(_sr_ste_fwd, _sr_ste_bwd)


def sr_ste_masked_weight(w: jax.Array, mask: jax.Array, decay: Any = 2e-4) -> jax.Array:
    """Masked forward; gradient ``g + decay · (¬mask) ⊙ w`` (SR-STE).

    Args:
      w: dense weights.
      mask: keep-mask.
      decay: ``λ_w`` (2e-4 in Zhou et al.); may be traced.

    References:
      Zhou et al. 2021, arXiv:2102.04010.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = jnp.array([True, False])
      >>> jax.grad(lambda w: sr_ste_masked_weight(w, m, 0.5).sum())(jnp.array([2.0, 4.0])).tolist()
      [1.0, 3.0]
    """
    return _sr_ste(w, mask, jnp.asarray(decay, jnp.float32))


def mask_view(w: jax.Array, mask: jax.Array, mode: str, decay: Any = 2e-4) -> jax.Array:
    """The forward view of ``w`` under ``mask`` for a mode in :data:`MODES`."""
    if mode == "mask":
        return masked_weight(w, mask)
    if mode == "project":  # the stored weights already hold the zeros (see the compressors)
        return w
    if mode == "ste":
        return ste_masked_weight(w, mask)
    if mode == "sr_ste":
        return sr_ste_masked_weight(w, mask, decay)
    raise ValueError(f"mode={mode!r} must be one of {MODES}")
