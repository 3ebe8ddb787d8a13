"""Configs as data: study configs, overrides, and registries of named methods."""

from jaxcomp.config.loading import apply_overrides, get_field, load_config, require
from jaxcomp.config.registry import ConfigError, Registry

__all__ = ["ConfigError", "Registry", "apply_overrides", "get_field", "load_config", "require"]
