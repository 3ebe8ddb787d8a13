"""Mask updates scheduled by the host: a training step with no ``lax.cond`` in it.

``comp.update`` inside a jitted step decides on the device whether the step
is a mask-update step, with a ``lax.cond`` that holds the whole threshold
search. XLA:CPU compiles that conditional into the step and allocates its
temporaries with the step's, which costs a few percent on every step of a
small, memory-bound model even when the branch is not taken. When the loop
runs in Python anyway, the host knows the step number and can decide
itself: the jitted step keeps the masks fixed (one select, fused into the
optimizer's update), and a separately compiled ``comp.update`` runs only on
the schedule's update steps::

    comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.9, 0, 2000), mode="project")
    pruner = jp.host_scheduled(comp, donate=True)

    @jax.jit
    def train_step(params, opt_state, cstate, batch):
        grads = jax.grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return pruner.project(optax.apply_updates(params, updates), cstate), opt_state

    for t, batch in enumerate(batches):
        params, opt_state = train_step(params, opt_state, cstate, batch)
        params, cstate = pruner(params, cstate, step=t)   # no device work between updates

The result equals calling ``comp.update(params, cstate, step=t)`` after
every step inside the jitted step (tested bit for bit); the masked step then
costs 1.00-1.03x the dense step on LeNet-300-100 where the in-step ``lax.cond``
costs 1.03-1.08x (1.10-1.14x in mask mode; ``benchmarks/prune_train_step.py``,
2 CPU cores).

Compressors whose scores accumulate on every step (``movement_pruning``)
need ``comp.update`` on every step and are refused.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcomp.core.base import Compressor
from jaxcomp.prune.engine import pruning_parts

__all__ = ["HostScheduled", "host_scheduled"]


class HostScheduled:
    """A pruning compressor whose mask updates the host schedules.

    Build it with :func:`host_scheduled`.

    Attributes:
      compressor: the wrapped compressor.
      schedule: its sparsity schedule; :meth:`due` asks it.
      mode: the compressor's mode.
    """

    def __init__(self, compressor: Compressor, *, donate: bool = False):
        parts = pruning_parts(compressor, "host_scheduled",
                              "for others call comp.update inside the training step")
        if parts.accumulates:
            raise ValueError(
                f"host_scheduled: {parts.name} adds to running scores on every step, so its "
                "update must run on every step; call comp.update inside the jitted step "
                "(or use jaxcomp.prune.pruning_optimizer)"
            )
        if not isinstance(donate, bool):
            raise TypeError(f"host_scheduled: donate must be a bool, got {type(donate).__name__}")
        self.compressor = compressor
        self.schedule = parts.schedule
        self.mode = parts.mode
        self.donate = donate
        self._update = jax.jit(self._run_update, donate_argnums=(0, 1) if donate else ())

    def _run_update(self, params, state, step, grads, extra):
        return self.compressor.update(params, state, step=step, grads=grads, **extra)

    def due(self, step: int) -> bool:
        """Whether ``step`` is one of the schedule's mask-update steps (host-side)."""
        return self.schedule.due(step)

    def project(self, params: Any, state: Any) -> Any:
        """The in-step part: zero the pruned stored weights with the current masks.

        Use it inside the jitted step after ``optax.apply_updates``: a select
        that XLA fuses into the optimizer's update. In ``mode="ste"`` and
        ``"sr_ste"`` the stored weights stay dense and this returns
        ``params`` unchanged (the view, ``comp.apply``, is masked).
        """
        if self.compressor.project is None:
            return params
        return self.compressor.project(params, state)

    def __call__(self, params: Any, state: Any, *, step: int, grads: Any = None,
                 **extra: Any) -> tuple[Any, Any]:
        """``comp.update(params, state, step=step, ...)`` when :meth:`due`, else the inputs.

        On update steps one compiled call rescores and remasks (and zeros the
        newly pruned weights); otherwise nothing runs on the device and the
        same ``(params, state)`` objects come back.

        Args:
          params: the params after the step (already projected by
            :meth:`project`).
          state: the compressor state.
          step: the step just taken, a Python int (the schedule's step).
          grads: the step's gradients, for gradient-based scores (saliency,
            OBD's Fisher option).
          **extra: passed to ``comp.update``.

        Returns:
          ``(params, state)``. With ``donate=True`` the inputs of an update
          step are consumed; use the returned ones.

        Raises:
          TypeError: ``step`` is traced or not an int.
          ValueError: ``step`` is negative.
        """
        if not self.due(step):  # validates step: a Python int >= 0
            return params, state
        return self._update(params, state, np.int32(step), grads, extra)

    def __repr__(self) -> str:
        return (f"HostScheduled(mode={self.mode!r}, schedule={self.schedule.description!r}, "
                f"donate={self.donate})")


def host_scheduled(compressor: Compressor, *, donate: bool = False) -> HostScheduled:
    """Wraps a pruning compressor so that the Python loop schedules its mask updates.

    The jitted training step calls ``pruner.project(params, state)`` (fixed
    masks, fused into the optimizer's update; a no-op in STE modes) and the
    loop calls ``pruner(params, state, step=t)`` after it: a compiled
    ``comp.update`` on the schedule's update steps, nothing otherwise. Same
    results as ``comp.update`` inside the step, without the step's
    ``lax.cond`` (see the module docstring for the cost it saves).

    Args:
      compressor: a pruning compressor of :mod:`jaxcomp.prune` whose scores
        do not accumulate (:func:`magnitude_pruning`,
        :func:`random_pruning`, :func:`saliency_pruning`,
        :func:`obd_pruning`).
      donate: donate params and state to the update call (as a training loop
        that never reuses old buffers can).

    Returns:
      A :class:`HostScheduled`.

    Raises:
      TypeError: ``compressor`` is not a pruning compressor of this package,
        or ``donate`` is not a bool.
      ValueError: the compressor accumulates scores on every step
        (:func:`movement_pruning`).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxcomp.prune as jp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
      >>> comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.75, 0, 10, update_every=5),
      ...                             mode="project")
      >>> pruner, tx = jp.host_scheduled(comp), optax.sgd(0.1)
      >>> cstate, opt = comp.init(params), tx.init(params)
      >>> @jax.jit
      ... def step(p, o, s):
      ...     u, o = tx.update(jax.grad(lambda q: jnp.sum(q["w"] ** 2))(p), o, p)
      ...     return pruner.project(optax.apply_updates(p, u), s), o
      >>> for t in range(12):
      ...     params, opt = step(params, opt, cstate)
      ...     params, cstate = pruner(params, cstate, step=t)
      >>> [t for t in range(12) if pruner.due(t)], jp.sparsity_summary(params).sparsity
      ([0, 5, 10], 0.75)

    References:
      Zhu & Gupta 2017, arXiv:1710.01878 (gradual pruning, masks updated
      every Δt steps).
    """
    return HostScheduled(compressor, donate=donate)
