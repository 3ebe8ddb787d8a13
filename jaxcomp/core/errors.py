"""Error helpers: messages that say what went wrong, where, and how to fix it."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_MAX_LISTED = 12


def list_paths(paths: Sequence[str], close_to: str | None = None, limit: int = _MAX_LISTED) -> str:
    """Formats a list of parameter paths for an error message.

    Args:
      paths: the available paths.
      close_to: if given, paths most similar to this string are listed first.
      limit: how many paths to list before eliding the rest.

    Returns:
      A multi-line string, one indented path per line.

    Example:
      >>> print(list_paths(["enc/kernel", "dec/kernel", "dec/bias"], close_to="dec/kernal"))
          dec/kernel
          enc/kernel
          dec/bias
      >>> print(list_paths([], close_to="w"))
          (the tree has no leaves)
    """
    paths = list(paths)
    if close_to is not None and paths:
        close = difflib.get_close_matches(close_to, paths, n=len(paths), cutoff=0.0)
        ordered = close + [p for p in paths if p not in close]
    else:
        ordered = paths
    shown = ordered[:limit]
    lines = [f"    {p}" for p in shown]
    if len(ordered) > limit:
        lines.append(f"    ... and {len(ordered) - limit} more")
    if not lines:
        lines = ["    (the tree has no leaves)"]
    return "\n".join(lines)


def require(cond: bool, message: str, exc: type[Exception] = ValueError) -> None:
    """Raises ``exc(message)`` unless ``cond`` holds."""
    if not cond:
        raise exc(message)


def check_in_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    where: str | None = None,
) -> None:
    """Validates a scalar hyperparameter lies in an interval.

    Args:
      name: the argument's name, used in the message.
      value: the value to check (a Python number).
      low: lower bound or None.
      high: upper bound or None.
      low_inclusive: whether ``low`` itself is allowed.
      high_inclusive: whether ``high`` itself is allowed.
      where: optional parameter path the value applies to.

    Raises:
      TypeError: if ``value`` is not a real number.
      ValueError: if ``value`` is outside the interval or NaN.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars, 0-d arrays
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    at = f" (for parameter '{where}')" if where else ""
    if math.isnan(value):
        raise ValueError(f"{name} is NaN{at}; pass a finite number")
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad = (low is not None and (value < low or (value == low and not low_inclusive))) or (
        high is not None and (value > high or (value == high and not high_inclusive))
    )
    if bad:
        raise ValueError(f"{name}={value!r}{at} is outside {interval}")


def join_names(names: Iterable[str]) -> str:
    """Joins names as ``'a', 'b' and 'c'``."""
    names = [f"'{n}'" for n in names]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def concrete(x: Any) -> np.ndarray | None:
    """The values of ``x`` as a NumPy array when they are known now, else None.

    Python numbers, NumPy values and JAX arrays outside a trace are concrete;
    tracers (inside ``jit``, ``grad``, ``vmap``, ``checkify``) are not.
    """
    if isinstance(x, jax.core.Tracer):
        return None
    if isinstance(x, jax.Array):
        return np.asarray(x) if x.is_fully_addressable else None
    if isinstance(x, (numbers.Number, np.ndarray, np.generic)):
        return np.asarray(x)
    return None


def check_class_ids(
    name: str, labels: Any, num_classes: int, *, checked: bool = False
) -> None:
    """Validates integer class ids in ``[0, num_classes)`` (concrete now, traced if ``checked``)."""
    host = concrete(labels)
    if host is not None:
        if host.size and (host.min() < 0 or host.max() >= num_classes):
            raise ValueError(
                f"{name} span [{int(host.min())}, {int(host.max())}] but the logits have "
                f"{num_classes} classes; class ids must lie in [0, {num_classes - 1}] "
                "(negative ids do not count from the end)"
            )
    elif checked:
        labels = jnp.asarray(labels)
        checkify.check(
            jnp.all((labels >= 0) & (labels < num_classes)),
            f"{name} must lie in [0, {num_classes - 1}] (the logits have {num_classes} "
            "classes), got {}",
            labels,
        )
