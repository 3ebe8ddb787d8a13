"""Loading study configs and applying command-line overrides.

A config file is a Python module with ``get_config()`` returning an
``ml_collections.ConfigDict`` of plain data (numbers, strings, lists, nested
dicts; methods named by registry strings, ``where=`` as regex strings).
Overrides use the dotted form ``--config.prune.sparsity=0.9`` (list entries by
index: ``--config.stages.0.bits=4``); values are parsed as Python literals and
must keep the field's type (an int field accepts ``3``, not ``0.5``; a float
field accepts ``3``).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from jaxcomp.config.extras import require_extra
from jaxcomp.config.registry import ConfigError, did_you_mean

__all__ = ["apply_overrides", "get_field", "load_config", "require"]

_MISSING = object()


def _mlc() -> Any:
    return require_extra("ml_collections", "loading study configs")


def _is_config_dict(x: Any) -> bool:
    mod = sys.modules.get("ml_collections")  # no ConfigDict exists before it is imported
    return mod is not None and isinstance(x, mod.ConfigDict)


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> Any:
    """Imports ``path``, calls its ``get_config()`` and applies ``overrides``.

    Args:
      path: a ``configs/<study>.py`` file, optionally followed by
        ``:VARIANT`` (``configs/hinton_kd.py:smoke``), which calls
        ``get_config("VARIANT")`` as ml_collections' config flags do.
      overrides: strings ``config.a.b=value`` (a leading ``--`` is allowed).

    Returns:
      The ConfigDict, with ``config_path`` set to the absolute file path.

    Raises:
      ConfigError: the file is missing, has no ``get_config``, or an override
        names an unknown field or a value of the wrong type.
      MissingExtraError: ``ml_collections`` is not installed (``pip install
        "jaxcomp[research]"``).
    """
    ml_collections = _mlc()
    variant = None
    head, sep, tail = str(path).rpartition(":")
    if sep and head and tail and not pathlib.Path(path).is_file() and not {"/", "\\"} & set(tail):
        path, variant = head, tail
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    name = f"_jaxcomp_config_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a config file must define get_config()")
    if variant is None:
        config = module.get_config()
    elif not inspect.signature(module.get_config).parameters:
        raise ConfigError(f"{path}:{variant}: this get_config() takes no variant argument")
    else:
        try:
            config = module.get_config(variant)
        except ValueError as e:
            raise ConfigError(f"{path}:{variant}: {e}") from None
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    with config.unlocked():
        config.config_path = str(path.resolve())
    return apply_overrides(config, overrides)


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string


def _child(node: Any, part: str, dotted: str) -> Any:
    if isinstance(node, (list, tuple)):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"{dotted}: index {part!r} is out of range for a list of {len(node)}")
        return node[int(part)]
    if isinstance(node, dict) or _is_config_dict(node):
        keys = list(node.keys())
        if part not in keys:
            raise ConfigError(f"{dotted}: no such field{did_you_mean(part, keys)}")
        return node[part]
    raise ConfigError(f"{dotted}: cannot descend into a {type(node).__name__}")


def _coerce(old: Any, new: Any, dotted: str) -> Any:
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ConfigError(f"{dotted}: expected True or False, got {new!r}")
        return new
    if isinstance(old, int) and not isinstance(new, bool) and isinstance(new, int):
        return new
    if isinstance(old, float) and not isinstance(new, bool) and isinstance(new, (int, float)):
        return float(new)
    if isinstance(old, str) and isinstance(new, str):
        return new
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return type(old)(new)
    if (isinstance(old, dict) or _is_config_dict(old)) and isinstance(new, dict):
        return new
    raise ConfigError(
        f"{dotted}: expected a value of type {type(old).__name__} (like {old!r}), got {new!r}"
    )


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """Applies ``config.a.b=value`` overrides in order (returns the same object).

    Example:
      >>> import ml_collections
      >>> c = ml_collections.ConfigDict({"prune": {"sparsity": 0.5}, "steps": 10})
      >>> apply_overrides(c, ["--config.prune.sparsity=0.9", "config.steps=20"]).prune.sparsity
      0.9
      >>> apply_overrides(c, ["--config.prune.sparsty=0.9"])
      Traceback (most recent call last):
      ...
      jaxcomp.config.registry.ConfigError: config.prune.sparsty: no such field; did you mean 'sparsity'?
    """
    for raw in overrides:
        text = raw.removeprefix("--")
        if "=" not in text or not text.startswith("config."):
            raise ConfigError(f"override {raw!r} must look like --config.field.sub=value")
        dotted, value_text = text.split("=", 1)
        parts = dotted.split(".")[1:]
        if not parts or not all(parts):
            raise ConfigError(f"override {raw!r}: empty field name")
        node = config
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, "config." + ".".join(parts[: i + 1]))
        last = parts[-1]
        old = _child(node, last, dotted)
        new = _coerce(old, _parse_value(value_text), dotted)
        if isinstance(node, list):
            node[int(last)] = new
        else:
            with config.unlocked() if _is_config_dict(config) else _Null():
                try:
                    node[last] = new
                except TypeError as e:
                    raise ConfigError(f"{dotted}: {e}") from None
    return config


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def get_field(config: Any, dotted: str, default: Any = _MISSING) -> Any:
    """Reads ``a.b.c`` from a config (``default`` when absent, else an error)."""
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        try:
            node = _child(node, part, "config." + ".".join(parts[: i + 1]))
        except ConfigError:
            if default is not _MISSING:
                return default
            raise
    return node


def require(config: Any, dotted: str, types: type | tuple[type, ...], *,
            check: Any = None, hint: str = "") -> Any:
    """Reads a required field and checks its type (and an optional predicate).

    Raises:
      ConfigError: naming ``config.<dotted>`` when missing, mistyped or invalid.

    Example:
      >>> import ml_collections
      >>> require(ml_collections.ConfigDict({"steps": 10}), "steps", int, check=lambda v: v > 0)
      10
    """
    value = get_field(config, dotted)
    ok_types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in ok_types:
        ok = False
    else:
        ok = isinstance(value, ok_types) or (float in ok_types and isinstance(value, int))
    if not ok:
        names = "/".join(t.__name__ for t in ok_types)
        raise ConfigError(f"config.{dotted}: expected {names}, got {value!r}")
    if check is not None and not check(value):
        raise ConfigError(f"config.{dotted}: invalid value {value!r}{'; ' + hint if hint else ''}")
    return value
