"""The compressor protocol.

A :class:`Compressor` is a triple of pure functions over parameter pytrees:

* ``init(params) -> state`` builds what the method needs besides the weights:
  masks, codebooks, calibration statistics, counters.
* ``apply(params, state) -> params`` is the forward view the model sees. It is
  differentiable; straight-through estimators live here.
* ``update(params, state, *, step, grads=None, **extra) -> (params, state)``
  re-estimates the state (re-mask, recalibrate, re-cluster) and may project the
  stored parameters (e.g. zero pruned weights). It is called by training loops
  on a schedule and must be jittable with ``step`` a traced scalar.
* ``project(params, state) -> params`` (optional) is the constraint the
  *stored* parameters must keep between updates, e.g. pruned weights exactly
  zero. :func:`jaxcomp.keep_compressed` applies it after every optimizer
  step, so momentum and weight decay cannot revive a pruned weight.
* ``due(step) -> bool`` (optional) says at which steps ``update`` changes
  anything: a pruner's mask-update steps, a quantizer's recalibration steps.
  Called with a Python int it answers in plain Python (training loops decide
  on the host and skip the call); called with a traced step it returns a
  bool scalar. ``None`` means the update may change the state at any step
  (running scores, EMA statistics), so loops run it on every step.
* ``reached(state) -> bool`` (optional) says whether the compression target
  is reached in ``state`` (a gradual schedule has ended). Model selection
  (early stopping, best checkpoints) never picks a state that has not
  reached it. ``None`` means always reached.

These five functions are the whole protocol: :func:`jaxcomp.chain`,
:func:`~jaxcomp.partition`, :func:`~jaxcomp.masked` and
:func:`~jaxcomp.inject_hyperparams` combine them, and the training loops of
:mod:`jaxcomp.train` use nothing else, whatever family built the compressor.

Trainable quantities (low-rank factors, learned step sizes) live in params;
everything else lives in the state, so no optimizer ever decays a mask.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

__all__ = [
    "ApplyFn",
    "Compressor",
    "DueFn",
    "EmptyState",
    "InitFn",
    "MaskedNode",
    "Params",
    "ProjectFn",
    "ReachedFn",
    "State",
    "UpdateFn",
    "never_due",
    "project_params",
    "target_reached",
    "update_due",
    "validate_compressor",
]

Params = Any
State = Any


class InitFn(Protocol):
    def __call__(self, params: Params) -> State: ...


class ApplyFn(Protocol):
    def __call__(self, params: Params, state: State) -> Params: ...


class ProjectFn(Protocol):
    def __call__(self, params: Params, state: State) -> Params: ...


class UpdateFn(Protocol):
    def __call__(
        self, params: Params, state: State, *, step: Any, grads: Params | None = None, **extra: Any
    ) -> tuple[Params, State]: ...


class DueFn(Protocol):
    def __call__(self, step: Any) -> Any: ...


class ReachedFn(Protocol):
    def __call__(self, state: State) -> Any: ...


class Compressor(NamedTuple):
    """A compression method as pure functions.

    Attributes:
      init: ``init(params) -> state``.
      apply: ``apply(params, state) -> params``, the differentiable forward view.
      update: ``update(params, state, *, step, grads=None, **extra) -> (params, state)``.
      project: optional ``project(params, state) -> params``, the constraint the
        stored params keep between updates (``None``: no constraint).
      due: optional ``due(step) -> bool``: the steps at which ``update``
        changes anything (a Python bool for an int step, a bool scalar for a
        traced one). ``None``: any step (loops run ``update`` every step).
      reached: optional ``reached(state) -> bool``: whether the compression
        target is reached in ``state``. ``None``: always.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp as jc
      >>> halve = jc.stateless(lambda p: {k: v / 2 for k, v in p.items()})
      >>> params = {"w": jnp.ones(2)}
      >>> state = halve.init(params)
      >>> halve.apply(params, state)["w"].tolist()
      [0.5, 0.5]
    """

    init: InitFn
    apply: ApplyFn
    update: UpdateFn
    project: ProjectFn | None = None
    due: DueFn | None = None
    reached: ReachedFn | None = None


class EmptyState(NamedTuple):
    """The state of a compressor that needs none."""


class MaskedNode(NamedTuple):
    """Stands in for a leaf that a compressor must not see.

    It is an empty pytree node, so ``jax.tree.map`` and friends skip it: a
    compressor wrapped by :func:`~jaxcomp.masked` or :func:`~jaxcomp.partition`
    sees only its own leaves and never needs special cases.
    """


def validate_compressor(c: Any, what: str = "compressor") -> Compressor:
    """Checks that ``c`` is a :class:`Compressor` (or a compatible triple).

    Raises:
      TypeError: naming ``what`` and what was passed instead.
    """
    if isinstance(c, Compressor):
        return c
    fields = ("init", "apply", "update")
    if all(callable(getattr(c, f, None)) for f in fields):
        return Compressor(c.init, c.apply, c.update, getattr(c, "project", None),
                          getattr(c, "due", None), getattr(c, "reached", None))
    hint = ""
    if callable(c):
        hint = (
            "; it looks like a factory or a plain function: call the factory, or wrap a "
            "function of params with jaxcomp.stateless(fn)"
        )
    raise TypeError(
        f"{what} must be a jaxcomp.Compressor (init/apply/update), got {type(c).__name__}{hint}"
    )


def _is_masked(x: Any) -> bool:
    return isinstance(x, MaskedNode)


def tree_where(select: Any, on_true: Any, on_false: Any, is_leaf: Callable | None = None) -> Any:
    """Picks leaves from two trees by a static bool tree (same structure)."""
    return jax.tree_util.tree_map(
        lambda s, a, b: a if s else b, select, on_true, on_false, is_leaf=is_leaf
    )


def project_params(compressor: Compressor, params: Params, state: State) -> Params:
    """Applies ``compressor.project`` if it has one; otherwise returns ``params``."""
    if compressor.project is None:
        return params
    return compressor.project(params, state)


def never_due(step: Any) -> bool:
    """The ``due`` of a compressor whose ``update`` never changes anything."""
    del step
    return False


def _host_step(step: Any, what: str) -> int:
    if isinstance(step, jax.core.Tracer):
        raise TypeError(f"{what}: step must be a Python int here, got a traced value; inside jit "
                        "call compressor.due(step) directly")
    if isinstance(step, bool) or not isinstance(step, (numbers.Integral, np.integer)):
        raise TypeError(f"{what}: step must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"{what}: step={step} must be >= 0")
    return int(step)


def update_due(compressor: Compressor, step: int) -> bool:
    """Whether ``compressor.update`` changes anything at ``step``, decided on the host.

    Args:
      compressor: any compressor.
      step: a Python int ``>= 0`` (the index of the step just taken).

    Returns:
      ``compressor.due(step)`` as a Python bool; ``True`` when the compressor
      has no ``due`` (its update may change something at any step).

    Raises:
      TypeError: ``step`` is traced or not an int.
      ValueError: ``step`` is negative.

    Example:
      >>> import jaxcomp as jc
      >>> update_due(jc.identity(), 3)
      False
    """
    step = _host_step(step, "update_due")
    if compressor.due is None:
        return True
    return bool(np.asarray(compressor.due(step)))


def target_reached(compressor: Compressor | None, state: State) -> bool:
    """Whether ``state`` has reached the compressor's compression target (host-side).

    Model selection (early stopping, best checkpoints) must not pick a state
    whose target is not reached: a gradual pruning schedule that has not
    ended gives a denser model than asked for.

    Args:
      compressor: any compressor, or ``None`` (always reached).
      state: its state (concrete arrays).

    Returns:
      ``bool(compressor.reached(state))``; ``True`` when the compressor has
      no ``reached``.

    Example:
      >>> import jaxcomp as jc
      >>> target_reached(jc.identity(), jc.EmptyState())
      True
    """
    if compressor is None or compressor.reached is None:
        return True
    out = compressor.reached(state)
    if isinstance(out, jax.core.Tracer):
        raise TypeError("target_reached runs on the host; inside jit call compressor.reached")
    return bool(np.asarray(out))
