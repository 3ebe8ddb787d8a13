"""The training state: one pytree with everything a step reads and writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcomp.core.base import Compressor, validate_compressor
from jaxcomp.core.keys import check_key, is_prng_key

__all__ = ["TrainState", "check_key", "is_prng_key"]


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training step reads and writes, as one pytree.

    Attributes:
      step: number of optimizer steps taken so far (``int32`` scalar array).
      params: the stored (master) trainable parameters; may hold compressed
        leaves such as :class:`jaxcomp.LowRank`.
      opt_state: the optax state.
      model_state: non-trainable model collections, e.g. ``{"batch_stats": ...}``
        (``{}`` if none).
      compressor_state: the compressor's state (masks, codebooks, scales), or
        ``None`` when training without a compressor.
      rng: the PRNG key; each step splits it, so runs are reproducible.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> state = TrainState.create({"w": jnp.zeros(3)}, optax.sgd(0.1), key=jax.random.key(0))
      >>> int(state.step), state.model_state, state.compressor_state
      (0, {}, None)
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    compressor_state: Any
    rng: jax.Array

    @classmethod
    def create(
        cls,
        params: Any,
        tx: optax.GradientTransformation,
        *,
        key: jax.Array,
        model_state: Mapping[str, Any] | None = None,
        compressor: Compressor | None = None,
    ) -> TrainState:
        """Builds the initial state: ``tx.init(params)`` and ``compressor.init(params)``.

        Args:
          params: the trainable parameters (``variables["params"]`` of a Flax
            model).
          tx: the optax transformation the step will use.
          key: PRNG key of the run (dropout and other step randomness).
          model_state: non-trainable collections (``{"batch_stats": ...}``);
            ``None`` means ``{}``.
          compressor: optional :class:`jaxcomp.Compressor`; its ``init`` is
            called on ``params``.

        Returns:
          A :class:`TrainState` at step 0.

        Raises:
          TypeError: if ``tx``, ``key`` or ``compressor`` has the wrong type.
        """
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise TypeError(
                f"TrainState.create: tx must be an optax GradientTransformation, got "
                f"{type(tx).__name__}"
            )
        key = check_key(key, "TrainState.create(key=)")
        if model_state is None:
            model_state = {}
        cstate = None
        if compressor is not None:
            compressor = validate_compressor(compressor, "TrainState.create(compressor=)")
            cstate = compressor.init(params)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
            compressor_state=cstate,
            rng=key,
        )

    @classmethod
    def from_variables(
        cls,
        variables: Mapping[str, Any],
        tx: optax.GradientTransformation,
        *,
        key: jax.Array,
        compressor: Compressor | None = None,
    ) -> TrainState:
        """Like :meth:`create` from a Flax variables dict: ``params`` plus other collections.

        Example:
          >>> import jax, jax.numpy as jnp, optax
          >>> v = {"params": {"w": jnp.ones(2)}, "batch_stats": {"mean": jnp.zeros(2)}}
          >>> s = TrainState.from_variables(v, optax.sgd(0.1), key=jax.random.key(0))
          >>> sorted(s.model_state)
          ['batch_stats']
        """
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise ValueError(
                "TrainState.from_variables: variables must be a Flax variables dict with a "
                "'params' key (the result of model.init); use TrainState.create(params, ...) for "
                "a bare params tree"
            )
        rest = {k: v for k, v in variables.items() if k != "params"}
        return cls.create(
            variables["params"], tx, key=key, model_state=rest, compressor=compressor
        )

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    TrainState,
    data_fields=["step", "params", "opt_state", "model_state", "compressor_state", "rng"],
    meta_fields=[],
)
