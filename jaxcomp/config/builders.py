"""Builders from config data to optax optimizers, schedules and compressors.

``OPTIMIZERS`` and ``SCHEDULES`` hold optax's names; ``COMPRESSORS`` is
filled by the method packages (pruning, quantization, ...) through
:func:`register_compressor`. Numbers that may be schedules (a learning rate, a
sparsity) are given either as a number or as a ``{"name": schedule, ...}``
mapping.

Example:
  >>> import jax.numpy as jnp
  >>> tx = build_optimizer({"name": "adamw", "learning_rate": {"name": "cosine_decay_schedule",
  ...                       "init_value": 1e-3, "decay_steps": 100}, "weight_decay": 1e-4},
  ...                      field="config.train.optimizer")
  >>> state = tx.init({"w": jnp.ones(2)})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from jaxcomp.config.registry import ConfigError, Registry

__all__ = [
    "COMPRESSORS",
    "OPTIMIZERS",
    "SCHEDULES",
    "build_compressor",
    "build_optimizer",
    "build_schedule",
    "register_compressor",
]

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")
COMPRESSORS = Registry("compressor")

for _name in ("adam", "adamw", "sgd", "lion", "rmsprop", "adagrad", "adafactor", "nadam",
              "lamb", "lars", "adabelief", "radam", "novograd", "yogi", "sm3", "fromage"):
    if hasattr(optax, _name):
        OPTIMIZERS.register(_name, getattr(optax, _name))

for _name in ("constant_schedule", "linear_schedule", "cosine_decay_schedule",
              "warmup_cosine_decay_schedule", "exponential_decay", "piecewise_constant_schedule",
              "polynomial_schedule", "cosine_onecycle_schedule", "linear_onecycle_schedule",
              "warmup_exponential_decay_schedule", "sgdr_schedule"):
    if hasattr(optax, _name):
        SCHEDULES.register(_name, getattr(optax, _name))


def build_schedule(value: Any, *, field: str) -> Any:
    """A number stays a number; a ``{"name": ...}`` mapping becomes an optax schedule."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return SCHEDULES.build(value, field=field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}: expected a number or a schedule mapping, got {value!r}")
    return value


def build_optimizer(spec: Any, *, field: str = "config.optimizer") -> optax.GradientTransformation:
    """Builds an optax optimizer from ``{"name": ..., "learning_rate": ..., ...}``.

    ``learning_rate`` may be a number or a schedule mapping. An optional
    ``clip_norm`` entry prepends ``optax.clip_by_global_norm``.

    Raises:
      ConfigError: naming the field of an unknown optimizer/schedule or argument.
    """
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{field}: expected a mapping like {{'name': 'adam', "
                          f"'learning_rate': 1e-3}}, got {spec!r}")
    spec = dict(spec)
    clip = spec.pop("clip_norm", None)
    if "learning_rate" in spec:
        spec["learning_rate"] = build_schedule(spec["learning_rate"], field=f"{field}.learning_rate")
    tx = OPTIMIZERS.build(spec, field=field)
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0:
            raise ConfigError(f"{field}.clip_norm: expected a positive number, got {clip!r}")
        tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
    return tx


def register_compressor(name: str, factory: Any = None):
    """Registers a compressor factory for configs (usable as a decorator)."""
    return COMPRESSORS.register(name, factory)


def build_compressor(spec: Any, *, field: str = "config.compression") -> Any:
    """Builds a compressor from a ``{"method": name, **kwargs}`` mapping or a list of them.

    A list builds a :func:`jaxcomp.chain` of its stages, in order.
    """
    from jaxcomp.core.combinators import chain

    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"{field}: an empty list; give at least one stage or omit the field")
        return chain(*[build_compressor(s, field=f"{field}.{i}") for i, s in enumerate(spec)])
    return COMPRESSORS.build(spec, field=field, key="method")


PRUNING_SCHEDULES = Registry("pruning schedule")


def _with_sparsity_schedule(factory: Any, name: str) -> Any:
    """Wraps a pruning factory so ``sparsity`` may be a ``{"name": schedule, ...}`` mapping."""
    import functools

    @functools.wraps(factory)
    def build(sparsity: Any = None, **kwargs: Any) -> Any:
        if hasattr(sparsity, "to_dict"):
            sparsity = sparsity.to_dict()
        if isinstance(sparsity, Mapping):
            sparsity = PRUNING_SCHEDULES.build(sparsity, field=f"config.compression ({name}).sparsity")
        return factory(sparsity, **kwargs)

    return build


def _register_builtins() -> None:
    import jaxcomp.prune as jp

    for key, fn in (("constant", jp.constant_schedule), ("one_shot", jp.one_shot_schedule),
                    ("iterative", jp.iterative_schedule), ("polynomial", jp.polynomial_schedule),
                    ("cubic", jp.cubic_schedule)):
        PRUNING_SCHEDULES.register(key, fn)
    for key, fn in (("magnitude_pruning", jp.magnitude_pruning),
                    ("random_pruning", jp.random_pruning),
                    ("saliency_pruning", jp.saliency_pruning),
                    ("movement_pruning", jp.movement_pruning),
                    ("obd_pruning", jp.obd_pruning)):
        COMPRESSORS.register(key, _with_sparsity_schedule(fn, key))
    for key, fn in (("rigl_pruning", jp.rigl_pruning), ("set_pruning", jp.set_pruning)):
        COMPRESSORS.register(key, fn)


_register_builtins()
