"""Checks of a study config's top level before anything runs.

A generic supervised config (no ``entry``) may only hold the fields that
:func:`jaxcomp.experiment.run_experiment` reads (:data:`GENERIC_FIELDS`): a
misspelt one (``config.compresion``) would otherwise be ignored silently,
training a different model than asked for. A study with ``entry`` reads its
own fields, so only the common ones (:data:`COMMON_FIELDS`) are checked
there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxcomp.config.registry import ConfigError, did_you_mean

__all__ = ["COMMON_FIELDS", "GENERIC_FIELDS", "check_config"]

COMMON_FIELDS = ("name", "seeds", "entry", "config_path")
GENERIC_FIELDS = ("name", "seeds", "data", "model", "train", "compression", "config_path")


def _keys(config: Any) -> list[str]:
    if hasattr(config, "keys"):
        return [str(k) for k in config]
    raise ConfigError(f"config: expected a ConfigDict or a mapping, got {type(config).__name__}")


def _check_common(config: Any) -> None:
    name = config.get("name", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"config.name: expected a string, got {name!r}")
    entry = config.get("entry", None)
    if entry is not None and (not isinstance(entry, str) or not entry):
        raise ConfigError(f"config.entry: expected a path such as 'research/<study>/main.py', "
                          f"got {entry!r}")
    if "seeds" not in _keys(config):
        if entry:
            return  # a study may do without seeds
        raise ConfigError("config.seeds: missing; give a list of integer seeds such as [0, 1, 2]")
    seeds = config["seeds"]
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ConfigError(f"config.seeds: expected a non-empty list of integers, got {seeds!r}")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"config.seeds.{i}: expected an integer, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.seeds: repeated seeds in {list(seeds)}; each seed runs once")


def check_config(config: Any) -> None:
    """Validates the top level of a study config.

    Generic configs: every top-level field must be one of
    :data:`GENERIC_FIELDS` (an unknown one is an error with a did-you-mean
    suggestion). All configs: ``name`` is a string, ``entry`` a non-empty
    string, ``seeds`` (required without ``entry``) a non-empty list of distinct
    integers.

    Raises:
      ConfigError: naming the first offending field.

    Example:
      >>> check_config({"seeds": [0], "data": {}, "model": {}, "train": {}})
      >>> check_config({"seeds": [0], "train": {}, "compresion": []})
      Traceback (most recent call last):
      ...
      jaxcomp.config.registry.ConfigError: config.compresion: unknown field; did you mean 'compression'? Known: name, seeds, data, model, train, compression, config_path (a study with its own fields sets config.entry)
    """
    if not isinstance(config, Mapping) and not hasattr(config, "keys"):
        raise ConfigError(f"config: expected a ConfigDict or a mapping, got {type(config).__name__}")
    keys = _keys(config)
    if not config.get("entry", None):
        for k in keys:
            if k not in GENERIC_FIELDS:
                raise ConfigError(
                    f"config.{k}: unknown field{did_you_mean(k, list(GENERIC_FIELDS)) or ';'} Known: "
                    f"{', '.join(GENERIC_FIELDS)} (a study with its own fields sets config.entry)"
                )
    _check_common(config)
