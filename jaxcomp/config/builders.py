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

import math
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
    "check_learning_rate",
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


_RATE_KEYS = ("value", "init_value", "peak_value", "end_value")


def _bad_number(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)


def check_learning_rate(value: Any, *, field: str) -> None:
    """Rejects a learning rate that is not a positive finite number (or schedule of them).

    A number must be finite and > 0. A schedule mapping's levels
    (``value``, ``init_value``, ``peak_value``, ``end_value``, when given
    as numbers) must be finite and >= 0, and its starting or peak level
    > 0 (a warmup may start at 0, a decay may end at 0).

    Raises:
      ConfigError: naming ``field`` (and the schedule entry).

    Example:
      >>> check_learning_rate(1e-3, field="config.train.optimizer.learning_rate")
      >>> check_learning_rate(-1e-3, field="config.train.optimizer.learning_rate")
      Traceback (most recent call last):
      ...
      jaxcomp.config.registry.ConfigError: config.train.optimizer.learning_rate: must be a positive finite number, got -0.001
    """
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        levels = {k: value[k] for k in _RATE_KEYS if k in value}
        for k, v in levels.items():
            if isinstance(v, (int, float)) and (_bad_number(v) or v < 0):
                raise ConfigError(f"{field}.{k}: a learning-rate level must be a finite number "
                                  f">= 0, got {v!r}")
        tops = [v for k, v in levels.items() if k != "end_value" and isinstance(v, (int, float))]
        if tops and max(tops) <= 0:
            raise ConfigError(f"{field}: the schedule never rises above 0 ({levels}); give a "
                              "positive init_value or peak_value")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{field}: must be a positive finite number, got {value!r}")


def build_optimizer(spec: Any, *, field: str = "config.optimizer") -> optax.GradientTransformation:
    """Builds an optax optimizer from ``{"name": ..., "learning_rate": ..., ...}``.

    ``learning_rate`` may be a number or a schedule mapping (checked by
    :func:`check_learning_rate`). An optional ``clip_norm`` entry prepends
    ``optax.clip_by_global_norm``.

    Raises:
      ConfigError: naming the field of an unknown optimizer/schedule or
        argument, or of a learning rate that is not positive and finite.
    """
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{field}: expected a mapping like {{'name': 'adam', "
                          f"'learning_rate': 1e-3}}, got {spec!r}")
    spec = dict(spec)
    clip = spec.pop("clip_norm", None)
    if "learning_rate" in spec:
        check_learning_rate(spec["learning_rate"], field=f"{field}.learning_rate")
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
    import jaxcomp.quant as jq

    for key, fn in (("fake_quantization", jq.fake_quantization),
                    ("lsq_quantization", jq.lsq_quantization),
                    ("binary_connect", jq.binary_connect),
                    ("xnor_binarization", jq.xnor_binarization),
                    ("ternary_weights", jq.ternary_weights),
                    ("abc_binarization", jq.abc_binarization),
                    ("weight_sharing", jq.weight_sharing)):
        COMPRESSORS.register(key, fn)


_register_builtins()
