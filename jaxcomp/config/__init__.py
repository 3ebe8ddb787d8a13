"""Configs as data: study configs, overrides, and registries of named methods."""

from jaxcomp.config.builders import (
    COMPRESSORS,
    OPTIMIZERS,
    SCHEDULES,
    build_compressor,
    build_optimizer,
    build_schedule,
    register_compressor,
)
from jaxcomp.config.loading import apply_overrides, get_field, load_config, require
from jaxcomp.config.registry import ConfigError, Registry

__all__ = [
    "COMPRESSORS",
    "OPTIMIZERS",
    "SCHEDULES",
    "ConfigError",
    "Registry",
    "apply_overrides",
    "build_compressor",
    "build_optimizer",
    "build_schedule",
    "get_field",
    "load_config",
    "register_compressor",
    "require",
]
