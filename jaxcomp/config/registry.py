"""Named registries that turn plain config data into objects.

A config names methods by string (``"magnitude_pruning"``, ``"adamw"``,
``"cosine_decay_schedule"``); a :class:`Registry` maps those names to
factories and builds them from keyword dicts, checking every keyword against
the factory's signature so that a typo is an error naming the config field,
with close matches suggested.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["ConfigError", "Registry"]


class ConfigError(ValueError):
    """A config field is missing, unknown, or of the wrong type/value.

    The message starts with the dotted field path (``config.train.optimizer``).
    """


def did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class Registry:
    """A name → factory mapping with validated construction.

    Example:
      >>> reg = Registry("optimizer")
      >>> @reg.register("double")
      ... def double(x: int, *, scale: int = 2):
      ...     return x * scale
      >>> reg.build({"name": "double", "x": 3}, field="config.opt")
      6
      >>> reg.build({"name": "dubble", "x": 3}, field="config.opt")
      Traceback (most recent call last):
      ...
      jaxcomp.config.registry.ConfigError: config.opt.name: unknown optimizer 'dubble'; did you mean 'double'? Known: double
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, fn: Callable[..., Any] | None = None):
        """Registers ``fn`` under ``name`` (usable as a decorator)."""

        def deco(f: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(f):
                raise TypeError(f"{self.kind} registry: {name!r} must map to a callable")
            if name in self._entries and self._entries[name] is not f:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = f
            return f

        return deco(fn) if fn is not None else deco

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, *, field: str = "name") -> Callable[..., Any]:
        """Looks up a factory; unknown names raise :class:`ConfigError`."""
        if not isinstance(name, str):
            raise ConfigError(f"{field}: expected a {self.kind} name (string), got {name!r}")
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"{field}: unknown {self.kind} {name!r}{did_you_mean(name, self.names())} "
                f"Known: {', '.join(self.names())}"
            ) from None

    def build(self, spec: Mapping[str, Any], *, field: str, key: str = "name", **fixed: Any) -> Any:
        """Builds ``factory(**kwargs)`` from ``{key: name, **kwargs}``.

        Args:
          spec: a mapping (dict or ConfigDict) with the factory name under
            ``key`` and its keyword arguments.
          field: the dotted config path of ``spec``, used in error messages.
          key: the entry holding the name.
          **fixed: extra arguments supplied by the caller (not from config).

        Raises:
          ConfigError: unknown name, unknown or missing arguments, or the
            factory rejecting a value (its message prefixed with the field).
        """
        if hasattr(spec, "to_dict"):
            spec = spec.to_dict()
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{field}: expected a mapping with a {key!r} entry, got {spec!r}")
        if key not in spec:
            raise ConfigError(f"{field}.{key}: missing; name one of: {', '.join(self.names())}")
        fn = self.get(spec[key], field=f"{field}.{key}")
        kwargs = {k: v for k, v in spec.items() if k != key}
        check_kwargs(fn, kwargs, fixed, field=field)
        try:
            return fn(**fixed, **kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{field} ({spec[key]}): {e}") from e


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], fixed: Mapping[str, Any],
                 *, field: str) -> None:
    """Checks config keywords against ``fn``'s signature (unknown and missing ones)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)]
    for k in kwargs:
        if k not in accepted:
            raise ConfigError(
                f"{field}.{k}: not an argument of {getattr(fn, '__name__', fn)}"
                f"{did_you_mean(k, accepted)} Accepted: {', '.join(a for a in accepted if a not in fixed)}"
            )
    missing = [n for n, p in params.items()
               if p.default is inspect.Parameter.empty
               and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
               and n not in kwargs and n not in fixed]
    if missing:
        raise ConfigError(f"{field}.{missing[0]}: missing (required by "
                          f"{getattr(fn, '__name__', fn)})")
