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

Trainable quantities (low-rank factors, learned step sizes) live in params;
everything else lives in the state, so no optimizer ever decays a mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax

__all__ = [
    "ApplyFn",
    "Compressor",
    "EmptyState",
    "InitFn",
    "MaskedNode",
    "Params",
    "ProjectFn",
    "State",
    "UpdateFn",
    "project_params",
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


class Compressor(NamedTuple):
    """A compression method as three pure functions.

    Attributes:
      init: ``init(params) -> state``.
      apply: ``apply(params, state) -> params``, the differentiable forward view.
      update: ``update(params, state, *, step, grads=None, **extra) -> (params, state)``.
      project: optional ``project(params, state) -> params``, the constraint the
        stored params keep between updates (``None``: no constraint).

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
        return Compressor(c.init, c.apply, c.update, getattr(c, "project", None))
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
