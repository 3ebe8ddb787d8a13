"""An optax transformation that keeps stored parameters compressed.

``optax.apply_updates(params, updates)`` knows nothing of masks: momentum,
Adam's moments and decoupled weight decay all move pruned weights away from
zero. :func:`keep_compressed`, placed *last* in an ``optax.chain``, rewrites
the final updates so that ``params + updates`` satisfies the compressor's
``project`` constraint (e.g. pruned weights stay exactly zero).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optax

from jaxcomp.core.base import Compressor, validate_compressor
from jaxcomp.core.scheduling import project_updates

__all__ = ["KeepCompressedState", "keep_compressed"]


class KeepCompressedState(NamedTuple):
    """``keep_compressed`` holds no state of its own."""


def keep_compressed(compressor: Compressor) -> optax.GradientTransformationExtraArgs:
    """Makes updates respect a compressor's ``project`` constraint.

    The compressor state is passed at every step as the extra keyword
    ``compressor_state`` (``optax.chain`` forwards it):
    ``tx.update(grads, opt_state, params, compressor_state=cstate)``. The
    returned updates are ``project(params + updates) - params``; where the
    projection sets a weight to zero, the update is exactly ``-params``, so
    ``optax.apply_updates`` lands on exactly ``0.0``.

    Args:
      compressor: a compressor with a ``project`` function (pruning
        compressors have one; a compressor without one leaves updates as they
        are).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; put it last in the chain.

    Raises:
      ValueError: if ``params`` or ``compressor_state`` is not passed to
        ``update``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxcomp as jc
      >>> class S(NamedTuple):
      ...     mask: jax.Array
      >>> comp = jc.Compressor(lambda p: S(p != 0), lambda p, s: p * s.mask,
      ...                      lambda p, s, **k: (p * s.mask, s), lambda p, s: p * s.mask)
      >>> params = jnp.array([0.0, 1.0])
      >>> tx = optax.chain(optax.adamw(0.1, weight_decay=0.1), keep_compressed(comp))
      >>> opt, cs = tx.init(params), comp.init(params)
      >>> upd, opt = tx.update(jnp.ones(2), opt, params, compressor_state=cs)
      >>> optax.apply_updates(params, upd).tolist()[0]
      0.0
    """
    compressor = validate_compressor(compressor, "keep_compressed(compressor)")

    def init(params: Any) -> KeepCompressedState:
        del params
        return KeepCompressedState()

    def update(updates, state, params=None, *, compressor_state=None, **extra):
        del extra
        if compressor.project is None:
            return updates, state
        if params is None:
            raise ValueError(
                "keep_compressed needs the current params: call tx.update(grads, opt_state, params, "
                "compressor_state=cstate)"
            )
        if compressor_state is None:
            raise ValueError(
                "keep_compressed needs the compressor state: call tx.update(grads, opt_state, "
                "params, compressor_state=cstate)"
            )
        fixed = project_updates(compressor, updates, params, compressor_state)
        return fixed, state

    return optax.GradientTransformationExtraArgs(init, update)
