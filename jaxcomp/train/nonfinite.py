"""Guarding training against non-finite losses: :func:`skip_nonfinite` and the host check.

:func:`~jaxcomp.train.fit` takes ``on_nonfinite="raise" | "skip" | "ignore"``:

* ``"raise"`` (default) costs nothing per step: the loss is already in the
  step's metrics, which the loop fetches when it logs (and before every
  checkpoint); the first non-finite loss then stops training with a
  ``FloatingPointError`` naming its step. The steps between that step and
  the fetch have run, but no checkpoint holds them.
* ``"skip"`` wraps the step with :func:`skip_nonfinite`: inside the
  compiled step, an update whose loss or new parameters are not finite is
  dropped.
* ``"ignore"`` keeps training whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.train.state import TrainState

__all__ = ["SKIPPED", "check_finite_losses", "skip_nonfinite"]

SKIPPED = "skipped"


def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    ok = jnp.asarray(True)
    for x in leaves:
        ok = ok & jnp.all(jnp.isfinite(x))
    return ok


def skip_nonfinite(step_fn: Callable[[Any, Mapping[str, Any]], tuple[Any, Mapping[str, Any]]]):
    """Wraps a train step so that an update with a non-finite loss or params is dropped.

    The wrapped step runs ``step_fn`` and checks ``metrics["loss"]`` and
    every floating-point leaf of the new params. If one is not finite, the
    returned state keeps the old params, optimizer state, model state and
    compressor state; ``step`` and ``rng`` advance all the same (so
    ``state.step`` counts the batches seen, and step-indexed schedules and
    checkpoints stay aligned with the data). For a state that is not a
    :class:`~jaxcomp.train.TrainState` the whole old state is kept. The
    metrics gain ``"skipped"``: 1.0 for a dropped update, else 0.0.

    The check is part of the compiled step (one reduction over the params,
    no host transfer). The wrapper keeps ``step_fn``'s ``donate``,
    ``compressor`` and ``host_update`` attributes.

    Args:
      step_fn: ``step(state, batch) -> (state, metrics)`` whose metrics hold
        ``"loss"`` (:func:`~jaxcomp.train.make_train_step`'s do).

    Returns:
      The guarded step, jittable.

    Raises:
      TypeError: ``step_fn`` is not callable.
      ValueError: (when called) the metrics have no ``"loss"``, or the step
        changes the structure or dtypes of the state.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxcomp.train import TrainState, make_train_step
      >>> def loss_fn(p, ms, batch, rng):
      ...     loss = jnp.sum((p["w"] - batch["t"]) ** 2)
      ...     return loss, (ms, {"loss": loss})
      >>> tx = optax.sgd(0.25)
      >>> step = skip_nonfinite(make_train_step(loss_fn, tx))
      >>> state = TrainState.create({"w": jnp.zeros(())}, tx, key=jax.random.key(0))
      >>> state, m = step(state, {"t": jnp.float32(2.0)})
      >>> float(state.params["w"]), float(m["skipped"])
      (1.0, 0.0)
      >>> state, m = step(state, {"t": jnp.float32(jnp.nan)})
      >>> float(state.params["w"]), float(m["skipped"]), int(state.step)
      (1.0, 1.0, 2)
    """
    if not callable(step_fn):
        raise TypeError(f"skip_nonfinite: step_fn must be callable, got {type(step_fn).__name__}")

    def guarded(state, batch):
        new_state, metrics = step_fn(state, batch)
        metrics = dict(metrics)
        if "loss" not in metrics:
            raise ValueError(
                "skip_nonfinite (fit(on_nonfinite='skip')): the step's metrics have no 'loss' "
                f"(they have {sorted(metrics)}); return the loss in the metrics, or use "
                "on_nonfinite='raise'/'ignore'"
            )
        is_train_state = isinstance(state, TrainState) and isinstance(new_state, TrainState)
        params = new_state.params if is_train_state else new_state
        ok = jnp.all(jnp.isfinite(jnp.asarray(metrics["loss"]))) & _all_finite(params)
        if is_train_state:
            new_part = (new_state.params, new_state.opt_state, new_state.model_state,
                        new_state.compressor_state)
            old_part = (state.params, state.opt_state, state.model_state, state.compressor_state)
        else:
            new_part, old_part = new_state, state
        try:
            kept = jax.lax.cond(ok, lambda parts: parts[0], lambda parts: parts[1],
                                (new_part, old_part))
        except TypeError as e:
            raise ValueError(
                "skip_nonfinite: the step changed the structure, shapes or dtypes of the state, so "
                f"the old state cannot stand in for the new one: {e}"
            ) from None
        if is_train_state:
            p, o, m, c = kept
            kept = new_state.replace(params=p, opt_state=o, model_state=m, compressor_state=c)
        metrics[SKIPPED] = (~ok).astype(jnp.float32)
        return kept, metrics

    for name in ("donate", "compressor", "host_update"):
        if hasattr(step_fn, name):
            setattr(guarded, name, getattr(step_fn, name))
    return guarded


def check_finite_losses(metrics: Sequence[Mapping[str, Any]], steps: Sequence[int]) -> None:
    """Raises ``FloatingPointError`` at the first non-finite ``"loss"`` (host values).

    Args:
      metrics: per-step metric dicts already on the host.
      steps: the step number of each (``state.step`` after its update).

    Raises:
      FloatingPointError: naming the first step whose loss is NaN or infinite.

    Example:
      >>> check_finite_losses([{"loss": 1.0}, {"loss": float("inf")}], [7, 8])
      ... # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      FloatingPointError: fit: the training loss is inf at step 8 ...
    """
    for m, t in zip(metrics, steps):
        if "loss" not in m:
            continue
        v = np.asarray(m["loss"], np.float64)
        if SKIPPED in m and float(np.asarray(m[SKIPPED])) > 0:
            continue
        if not np.all(np.isfinite(v)):
            raise FloatingPointError(
                f"fit: the training loss is {float(np.max(v)) if v.size == 1 else v.tolist()} at "
                f"step {t} (the update that made state.step == {t}); training stopped. Lower the "
                "learning rate, clip gradients (optimizer clip_norm), check the data, or pass "
                "fit(on_nonfinite='skip') to drop such updates ('ignore' to train on)"
            )
