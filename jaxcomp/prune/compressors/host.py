"""Mask updates scheduled by the host (the pruning name for :func:`jaxcomp.host_scheduled`).

``comp.update`` inside a jitted step decides on the device whether the step
is a mask-update step, with a ``lax.cond`` that holds the whole threshold
search. When the loop runs in Python anyway, the host knows the step number
and can decide itself: the jitted step keeps the masks fixed (one select,
fused into the optimizer's update), and a separately compiled
``comp.update`` runs only on the schedule's update steps (``comp.due(t)``)::

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
every step inside the jitted step. Compressors whose scores accumulate on
every step (``movement_pruning``) have no ``due`` and are refused.
"""

from jaxcomp.core.scheduling import HostScheduled, host_scheduled

__all__ = ["HostScheduled", "host_scheduled"]
