"""Sparsity schedules: ``step -> sparsity`` plus the steps at which masks change.

A :class:`Schedule` is called with a (possibly traced) step and returns the
target sparsity as a float32 scalar; ``is_update_step(step)`` says whether the
masks are recomputed at that step. Pruning compressors evaluate both inside
``update`` and switch with ``lax.cond``, so a changing mask never retraces or
recompiles.

Any callable ``step -> value`` (an optax schedule) and any constant are
accepted where a schedule is expected (:func:`as_schedule`); they update the
masks every ``update_every`` steps.

References:
  Zhu & Gupta, To prune, or not to prune, arXiv:1710.01878 (the polynomial
  gradual schedule). Han et al., Learning both weights and connections,
  arXiv:1506.02626 (iterative prune-retrain). Frankle & Carbin, The lottery
  ticket hypothesis, arXiv:1803.03635 (iterative rounds).
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import check_in_range

__all__ = [
    "Schedule",
    "as_schedule",
    "constant_schedule",
    "cubic_schedule",
    "iterative_schedule",
    "one_shot_schedule",
    "polynomial_schedule",
]

DEFAULT_UPDATE_EVERY = 100


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A sparsity schedule.

    Attributes:
      fn: ``step -> sparsity`` (jnp-traceable; a traced step is fine).
      update_fn: ``step -> bool``: whether masks are recomputed at ``step``.
      final: the sparsity reached eventually, when known (for reports).
      description: a short human-readable form.
    """

    fn: Callable[[Any], Any]
    update_fn: Callable[[Any], Any]
    final: float | None = None
    description: str = "schedule"

    def __call__(self, step: Any) -> jax.Array:
        return jnp.asarray(self.fn(jnp.asarray(step)), jnp.float32)

    def is_update_step(self, step: Any) -> jax.Array:
        """Whether masks are recomputed at ``step`` (a bool scalar array)."""
        return jnp.asarray(self.update_fn(jnp.asarray(step)), bool)

    def due(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``, decided on the host.

        For training loops that schedule mask updates themselves
        (:func:`jaxcomp.prune.host_scheduled`): the built-in schedules answer
        in plain Python, with no device work and no wait for the device.

        Args:
          step: a Python (or numpy) int ``>= 0``.

        Raises:
          TypeError: ``step`` is not an int (a traced step belongs to
            :meth:`is_update_step`).
          ValueError: ``step`` is negative.

        Example:
          >>> s = polynomial_schedule(0.0, 0.9, 0, 300, update_every=100)
          >>> [t for t in range(0, 500, 50) if s.due(t)]
          [0, 100, 200, 300]
        """
        if isinstance(step, jax.core.Tracer):
            raise TypeError(
                "Schedule.due runs on the host and needs a Python int step; inside jit use "
                "is_update_step(step) (or comp.update, which checks it)"
            )
        step = _check_step("step", step)
        out = self.update_fn(step)
        return bool(np.asarray(out))

    def __repr__(self) -> str:
        return f"Schedule({self.description})"


def _check_sparsity(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.generic, np.ndarray)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__}")
    check_in_range(name, float(value), 0.0, 1.0, high_inclusive=False)
    return float(value)


def _check_step(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return int(value)


def _every(update_every: int) -> Callable[[Any], Any]:
    return lambda step: step % update_every == 0


def constant_schedule(sparsity: float, *, update_every: int = DEFAULT_UPDATE_EVERY) -> Schedule:
    """The same sparsity at every step; masks recomputed every ``update_every`` steps.

    Example:
      >>> s = constant_schedule(0.8, update_every=10)
      >>> float(s(123)), bool(s.is_update_step(20)), bool(s.is_update_step(21))
      (0.800000011920929, True, False)
    """
    s = _check_sparsity("sparsity", sparsity)
    n = _check_step("update_every", update_every, 1)
    return Schedule(lambda step: jnp.full((), s, jnp.float32), _every(n), s,
                    f"constant {s}, every {n}")


def one_shot_schedule(sparsity: float, step: int = 0) -> Schedule:
    """Dense before ``step``; pruned once at ``step`` to ``sparsity`` and kept there.

    Masks are computed only at ``step`` (later updates keep them fixed).

    Example:
      >>> s = one_shot_schedule(0.9, step=100)
      >>> float(s(99)), float(s(100)), bool(s.is_update_step(100)), bool(s.is_update_step(200))
      (0.0, 0.8999999761581421, True, False)
    """
    s = _check_sparsity("sparsity", sparsity)
    at = _check_step("step", step)
    return Schedule(
        lambda t: jnp.where(t >= at, jnp.float32(s), jnp.float32(0.0)),
        lambda t: t == at,
        s,
        f"one-shot {s} at step {at}",
    )


def iterative_schedule(steps: Sequence[int], sparsities: Sequence[float]) -> Schedule:
    """Prune-retrain cycles: the sparsity steps up to ``sparsities[i]`` at ``steps[i]``.

    Dense before ``steps[0]``; masks are recomputed only at the given steps.
    For lottery-ticket rounds pruning a fraction ``p`` per round use
    ``sparsities = [1 - (1 - p) ** r for r in range(1, rounds + 1)]``.

    Args:
      steps: strictly increasing steps at which a round prunes.
      sparsities: non-decreasing target sparsities in ``[0, 1)``, one per step.

    Example:
      >>> s = iterative_schedule([0, 100, 200], [0.2, 0.36, 0.488])
      >>> [round(float(s(t)), 3) for t in (0, 99, 100, 250)]
      [0.2, 0.2, 0.36, 0.488]
      >>> [bool(s.is_update_step(t)) for t in (100, 150)]
      [True, False]
    """
    steps = [_check_step(f"steps[{i}]", t) for i, t in enumerate(steps)]
    vals = [_check_sparsity(f"sparsities[{i}]", v) for i, v in enumerate(sparsities)]
    if not steps or len(steps) != len(vals):
        raise ValueError(
            f"iterative_schedule needs as many steps as sparsities (got {len(steps)} and "
            f"{len(vals)}), at least one"
        )
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"iterative_schedule: steps must be strictly increasing, got {steps}")
    if any(b < a for a, b in itertools.pairwise(vals)):
        raise ValueError(
            f"iterative_schedule: sparsities must not decrease, got {vals}; pruned weights do "
            "not come back"
        )
    st = np.asarray(steps, np.int32)
    vs = np.asarray([0.0] + vals, np.float32)

    def fn(t):
        idx = jnp.sum(jnp.asarray(st) <= t)
        return jnp.asarray(vs)[idx]

    def due(t):
        if isinstance(t, (int, np.integer)):  # host-side check: no device work
            return bool(np.any(st == t))
        return jnp.any(jnp.asarray(st) == t)

    return Schedule(fn, due, vals[-1],
                    f"iterative {vals} at {steps}")


def polynomial_schedule(
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    *,
    update_every: int = DEFAULT_UPDATE_EVERY,
    power: float = 3.0,
) -> Schedule:
    """Zhu & Gupta's gradual schedule (cubic by default).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt)) ** power`` for
    ``t0 <= t <= t0 + n Δt`` with ``t0 = begin_step``, ``t0 + n Δt =
    end_step`` and ``Δt = update_every``. Masks are updated every ``Δt``
    steps from ``begin_step`` and at ``end_step``. The value returned at any
    step is the sparsity *in effect*: the formula at the last update step
    (piecewise constant), ``0`` before ``begin_step`` and ``s_f`` from
    ``end_step`` on.

    Args:
      initial_sparsity: ``s_i`` (applied at ``begin_step``).
      final_sparsity: ``s_f``.
      begin_step: ``t0``.
      end_step: the step at which ``s_f`` is reached (``> begin_step``).
      update_every: ``Δt``.
      power: 3 in the paper; 1 gives a linear ramp.

    References:
      Zhu & Gupta 2017, arXiv:1710.01878.

    Example:
      >>> s = polynomial_schedule(0.0, 0.9, 0, 1000, update_every=100)
      >>> [round(float(s(t)), 4) for t in (0, 150, 500, 1000)]
      [0.0, 0.2439, 0.7875, 0.9]
    """
    si = _check_sparsity("initial_sparsity", initial_sparsity)
    sf = _check_sparsity("final_sparsity", final_sparsity)
    t0 = _check_step("begin_step", begin_step)
    t1 = _check_step("end_step", end_step)
    dt = _check_step("update_every", update_every, 1)
    if t1 <= t0:
        raise ValueError(f"end_step={t1} must be greater than begin_step={t0}")
    if si > sf:
        raise ValueError(
            f"polynomial_schedule: initial_sparsity={si} is above final_sparsity={sf}; pruned "
            "weights do not come back, so the sparsity must not decrease (swap them?)"
        )
    if not power > 0:
        raise ValueError(f"power={power!r} must be positive (3 for Zhu & Gupta's cubic schedule)")
    span = float(t1 - t0)

    def fn(t):
        tq = t0 + ((t - t0) // dt) * dt
        frac = jnp.clip((tq - t0).astype(jnp.float32) / span, 0.0, 1.0)
        val = sf + (si - sf) * (1.0 - frac) ** power
        return jnp.where(t < t0, 0.0, jnp.where(t >= t1, sf, val)).astype(jnp.float32)

    def update(t):
        return (t >= t0) & (t <= t1) & (((t - t0) % dt == 0) | (t == t1))

    return Schedule(fn, update, sf, f"polynomial {si}->{sf} over [{t0}, {t1}] every {dt}, "
                    f"power {power}")


def cubic_schedule(
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    *,
    update_every: int = DEFAULT_UPDATE_EVERY,
) -> Schedule:
    """:func:`polynomial_schedule` with ``power=3`` (Zhu & Gupta 2017, arXiv:1710.01878).

    Example:
      >>> round(float(cubic_schedule(0.0, 0.8, 0, 100, update_every=10)(50)), 4)
      0.7
    """
    return polynomial_schedule(initial_sparsity, final_sparsity, begin_step, end_step,
                               update_every=update_every, power=3.0)


def as_schedule(value: Any, *, update_every: int | None = None, what: str = "sparsity") -> Schedule:
    """Turns a number, a :class:`Schedule` or an optax-style callable into a :class:`Schedule`.

    Args:
      value: a sparsity in ``[0, 1)``, a :class:`Schedule`, or any callable
        ``step -> sparsity`` (optax schedules included).
      update_every: mask update period for numbers and plain callables
        (default 100). A :class:`Schedule` carries its own update steps, so
        giving ``update_every`` with one is an error.
      what: the argument name for messages.

    Example:
      >>> import optax
      >>> s = as_schedule(optax.linear_schedule(0.0, 0.5, 100), update_every=10)
      >>> float(s(50)), bool(s.is_update_step(50))
      (0.25, True)
    """
    if isinstance(value, Schedule):
        if update_every is not None:
            raise ValueError(
                f"update_every={update_every} was given with a Schedule ({value.description}); "
                "a Schedule decides its own update steps: set update_every on the schedule"
            )
        return value
    if isinstance(update_every, jax.core.Tracer):
        n = update_every  # injected by jaxcomp.inject_hyperparams (used only in jnp ops)
    elif update_every is None:
        n = DEFAULT_UPDATE_EVERY
    else:
        if isinstance(update_every, (jax.Array, np.ndarray)) and np.ndim(update_every) == 0:
            update_every = int(update_every)
        n = _check_step("update_every", update_every, 1)
    # Values of callables and injected constants are not clipped: a pruning compressor refuses
    # one outside [0, 1) at an update step (an error when concrete; under jit the update is
    # skipped and a checkify check reports it).
    if callable(value):
        fn = value
        return Schedule(lambda t: jnp.asarray(fn(t), jnp.float32),
                        _every(n), None, f"{getattr(fn, '__name__', 'callable')}, every {n}")
    if isinstance(value, jax.core.Tracer) and np.ndim(value) == 0:
        # an injected hyperparameter (jaxcomp.inject_hyperparams): a traced constant
        v = jnp.asarray(value, jnp.float32)
        return Schedule(lambda t: v, _every(n), None, f"injected, every {n}")
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
        value = float(value)
    if not isinstance(value, (numbers.Real, np.generic)) or isinstance(value, bool):
        raise TypeError(
            f"{what} must be a number in [0, 1), a jaxcomp.prune Schedule or a callable "
            f"step -> sparsity (an optax schedule); got {type(value).__name__}"
        )
    return constant_schedule(float(value), update_every=n)
