"""Running a compressor's updates from a training loop, for any compressor.

Three ways to keep compressed parameters up to date, each using only the
protocol fields of :class:`~jaxcomp.Compressor` (``update``, ``project``,
``due``), so they work for every family and survive
:func:`~jaxcomp.chain`, :func:`~jaxcomp.partition`, :func:`~jaxcomp.masked`
and :func:`~jaxcomp.inject_hyperparams`:

* :func:`project_updates` — the optax-side projection behind
  :func:`~jaxcomp.keep_compressed`: rewrite updates so that
  ``params + updates`` satisfies ``project``.
* :func:`compression_optimizer` — wrap any optax optimizer so that its state
  carries the compressor state, runs ``update`` at its own step count and
  projects the step's result inside the optimizer's update.
* :func:`host_scheduled` — let the Python loop decide when an update is due
  (``due(t)`` in plain Python), so the jitted step holds no ``lax.cond``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding

from jaxcomp.core.base import Compressor, State, update_due, validate_compressor

__all__ = [
    "CompressionOptimizerState",
    "HostScheduled",
    "compression_optimizer",
    "host_scheduled",
    "project_updates",
]


def _like(x: jax.Array, ref: jax.Array) -> jax.Array:
    """``x`` resharded like ``ref`` when an explicit-axes mesh types them differently.

    With explicit sharding the grads (so the updates) follow the activations'
    sharding and may differ from the params'; ``where`` needs them to agree.
    """
    sx, sr = jax.typeof(x).sharding, jax.typeof(ref).sharding
    mesh = sx.mesh if sr.mesh.empty else sr.mesh
    explicit = not mesh.empty and any(t == AxisType.Explicit for t in mesh.axis_types)
    if not explicit or sx.spec == sr.spec:
        return x
    return jax.sharding.reshard(x, NamedSharding(mesh, sr.spec))


def project_updates(compressor: Compressor, updates: Any, params: Any, state: State) -> Any:
    """Updates that make ``params + updates`` satisfy ``compressor.project``.

    Where the projection keeps the updated value, the update is unchanged;
    elsewhere it is ``project(params + updates) - params``, computed in the
    wider of the two dtypes, so that ``optax.apply_updates`` lands exactly on
    the projected value (a pruned weight on exactly ``0.0``, even with
    bfloat16 updates on float32 params).

    Args:
      compressor: any compressor; without ``project`` the updates come back
        unchanged.
      updates: optax updates with the params' structure.
      params: the params the updates apply to.
      state: the compressor state whose constraint must hold.

    Returns:
      The fixed updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp as jc
      >>> clip = jc.Compressor(lambda p: None, lambda p, s: p, lambda p, s, **k: (p, s),
      ...                      lambda p, s: jnp.clip(p, -1.0, 1.0))
      >>> project_updates(clip, jnp.array([0.5, 3.0]), jnp.array([0.0, 0.5]), None).tolist()
      [0.5, 0.5]
    """
    if compressor.project is None:
        return updates
    new = optax.apply_updates(params, updates)
    target = compressor.project(new, state)

    def fix(t, p, u, n):
        t, u, n = _like(t, p), _like(u, p), _like(n, p)
        dt = jnp.result_type(u, p)
        return jnp.where(t == n, u.astype(dt), (t.astype(dt) - p.astype(dt)))

    return jax.tree_util.tree_map(fix, target, params, updates, new)


# --------------------------------------------------------------- in the optimizer


class CompressionOptimizerState(NamedTuple):
    """State of :func:`compression_optimizer`.

    Attributes:
      inner_state: the wrapped optimizer's state.
      compressor_state: the compressor's state; pass it to ``comp.apply`` for
        the forward view and to :func:`jaxcomp.metrics.analyze` as
        ``compression=``.
      count: number of ``update`` calls so far (int32): the compressor's step.
    """

    inner_state: Any
    compressor_state: Any
    count: jax.Array


def compression_optimizer(tx: optax.GradientTransformation,
                          compressor: Compressor) -> optax.GradientTransformationExtraArgs:
    """Wraps ``tx`` so that it carries a compressor and keeps the params compressed.

    On every ``update(grads, state, params)``:

    1. ``compressor.update(params, cstate, step=count, grads=grads)`` runs on
       the params the step starts from, with the step's gradients (both taken
       at the same point, which is what gradient scores want); its new state
       is kept (the params it returns are not: the optimizer moves them);
    2. ``tx`` computes its updates;
    3. the updates are projected (:func:`project_updates`) with the new
       state, so ``optax.apply_updates`` lands on params that satisfy the
       compressor's constraint (pruned weights exactly zero through momentum,
       Adam's moments and decoupled weight decay alike).

    The compressor's step is the wrapper's own count of ``update`` calls, so
    no ``step=`` is threaded through the loop. Prune or otherwise project the
    starting params once with ``comp.project(params, opt_state.compressor_state)``.

    Args:
      tx: any optax optimizer (``optax.chain``, ``inject_hyperparams``,
        ``MultiSteps`` ...). Extra keyword arguments of ``update`` go to it.
      compressor: any compressor.

    Returns:
      An optax ``GradientTransformationExtraArgs`` whose state is a
      :class:`CompressionOptimizerState`.

    Raises:
      TypeError: ``tx`` is not an optax transformation or ``compressor`` is
        not a compressor; ``update`` gets another state type.
      ValueError: ``update`` is called without ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxcomp as jc, jaxcomp.prune as jp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8)), "b": jnp.zeros(8)}
      >>> comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.75, 0, 10, update_every=5),
      ...                             mode="project")
      >>> tx = jc.compression_optimizer(optax.adamw(1e-2, weight_decay=1e-2), comp)
      >>> opt = tx.init(params)
      >>> params = comp.project(params, opt.compressor_state)
      >>> @jax.jit
      ... def step(params, opt):
      ...     grads = jax.grad(lambda p: jnp.sum((p["w"] - 1.0) ** 2))(params)
      ...     updates, opt = tx.update(grads, opt, params)
      ...     return optax.apply_updates(params, updates), opt
      >>> for _ in range(12):
      ...     params, opt = step(params, opt)
      >>> float(jnp.mean(params["w"] == 0))
      0.75

    References:
      Zhu & Gupta 2017, arXiv:1710.01878 (gradual pruning inside training).
    """
    if not (hasattr(tx, "init") and hasattr(tx, "update") and callable(tx.update)):
        raise TypeError(f"compression_optimizer: tx must be an optax GradientTransformation, "
                        f"got {type(tx).__name__}")
    compressor = validate_compressor(compressor, "compression_optimizer(compressor)")
    inner = optax.with_extra_args_support(tx)

    def init(params: Any) -> CompressionOptimizerState:
        return CompressionOptimizerState(inner.init(params), compressor.init(params),
                                         jnp.zeros((), jnp.int32))

    def update(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("compression_optimizer needs the current params: call "
                             "tx.update(grads, opt_state, params)")
        if not isinstance(state, CompressionOptimizerState):
            raise TypeError(f"compression_optimizer: state must be the CompressionOptimizerState "
                            f"that tx.init returned, got {type(state).__name__}")
        _, cstate = compressor.update(params, state.compressor_state, step=state.count,
                                      grads=updates)
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
        new_updates = project_updates(compressor, new_updates, params, cstate)
        return new_updates, CompressionOptimizerState(inner_state, cstate, state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)


# -------------------------------------------------------------------- on the host


class HostScheduled:
    """A compressor whose updates the Python loop schedules; see :func:`host_scheduled`.

    Attributes:
      compressor: the wrapped compressor.
      donate: whether update calls donate their inputs.
    """

    def __init__(self, compressor: Compressor, *, due: Callable[[int], Any] | None = None,
                 donate: bool = False):
        compressor = validate_compressor(compressor, "host_scheduled(compressor)")
        if due is not None:
            if not callable(due):
                raise TypeError(f"host_scheduled: due must be a function step -> bool, got "
                                f"{type(due).__name__}")
            compressor = compressor._replace(due=due)
        if compressor.due is None:
            raise ValueError(
                "host_scheduled: the compressor's update may change its state on every step "
                "(compressor.due is None: e.g. scores that accumulate), so the host cannot skip "
                "it; call comp.update inside the jitted step (or use "
                "jaxcomp.compression_optimizer), or pass due= if you know its update steps"
            )
        if not isinstance(donate, bool):
            raise TypeError(f"host_scheduled: donate must be a bool, got {type(donate).__name__}")
        self.compressor = compressor
        self.donate = donate
        self._update = jax.jit(self._run_update, donate_argnums=(0, 1) if donate else ())

    def _run_update(self, params, state, step, grads, extra):
        return self.compressor.update(params, state, step=step, grads=grads, **extra)

    def due(self, step: int) -> bool:
        """Whether ``update`` changes anything at ``step`` (host-side, plain Python).

        Raises:
          TypeError: ``step`` is traced or not an int.
          ValueError: ``step`` is negative.
        """
        return update_due(self.compressor, step)

    def project(self, params: Any, state: Any) -> Any:
        """The in-step part: the constraint between updates (``compressor.project``).

        Use it inside the jitted step after ``optax.apply_updates``: for a
        pruner, one select with fixed masks that XLA fuses into the
        optimizer's update. Without ``project`` it returns ``params``.
        """
        if self.compressor.project is None:
            return params
        return self.compressor.project(params, state)

    def __call__(self, params: Any, state: Any, *, step: int, grads: Any = None,
                 **extra: Any) -> tuple[Any, Any]:
        """``comp.update(params, state, step=step, ...)`` when :meth:`due`, else the inputs.

        On due steps one compiled call runs the update; otherwise nothing
        runs on the device and the same ``(params, state)`` objects come back.

        Args:
          params: the params after the step (already projected by
            :meth:`project`).
          state: the compressor state.
          step: the step just taken, a Python int.
          grads: the step's gradients, for gradient-based updates.
          **extra: passed to ``comp.update``.

        Returns:
          ``(params, state)``. With ``donate=True`` the inputs of an update
          step are consumed; use the returned ones.

        Raises:
          TypeError: ``step`` is traced or not an int.
          ValueError: ``step`` is negative.
        """
        if not self.due(step):
            return params, state
        return self._update(params, state, np.int32(step), grads, extra)

    def __repr__(self) -> str:
        return f"HostScheduled(donate={self.donate})"


def host_scheduled(compressor: Compressor, *, due: Callable[[int], Any] | None = None,
                   donate: bool = False) -> HostScheduled:
    """Wraps a compressor so that the Python loop schedules its updates.

    The jitted training step calls ``sched.project(params, state)`` (the
    constraint between updates, fused into the optimizer's update) and the
    loop calls ``sched(params, state, step=t)`` after it: a compiled
    ``comp.update`` on the steps where ``comp.due(t)`` holds, nothing
    otherwise. The result equals ``comp.update`` inside the step, and the
    step holds no ``lax.cond`` (its cost is measured in
    ``benchmarks/RESULTS.md``).

    Args:
      compressor: any compressor with a ``due`` (or pass ``due=``).
      due: the update steps, ``step -> bool`` (as optax's ``MultiSteps``
        takes ``every_k_schedule``); default: ``compressor.due``.
      donate: donate params and state to the update call (as a training loop
        that never reuses old buffers can).

    Returns:
      A :class:`HostScheduled`.

    Raises:
      TypeError: ``compressor`` is not a compressor, ``due`` is not callable
        or ``donate`` not a bool.
      ValueError: neither the compressor nor the caller says when its update
        is due.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxcomp as jc, jaxcomp.prune as jp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
      >>> comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.75, 0, 10, update_every=5),
      ...                             mode="project")
      >>> sched, tx = jc.host_scheduled(comp), optax.sgd(0.1)
      >>> cstate, opt = comp.init(params), tx.init(params)
      >>> @jax.jit
      ... def step(p, o, s):
      ...     u, o = tx.update(jax.grad(lambda q: jnp.sum(q["w"] ** 2))(p), o, p)
      ...     return sched.project(optax.apply_updates(p, u), s), o
      >>> for t in range(12):
      ...     params, opt = step(params, opt, cstate)
      ...     params, cstate = sched(params, cstate, step=t)
      >>> [t for t in range(12) if sched.due(t)], float(jnp.mean(params["w"] == 0))
      ([0, 5, 10], 0.75)
    """
    return HostScheduled(compressor, due=due, donate=donate)
