"""Shared helpers of :mod:`jaxcomp.distill`: masked reductions and argument checks."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from jaxcomp.core.errors import concrete


def is_static_number(x: Any) -> bool:
    """Whether ``x`` is a concrete Python/NumPy real number (not a traced array)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_real(name: str, value: Any) -> None:
    """Raises TypeError unless ``value`` is a real number or an array of a real dtype."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got the bool {value!r}")
    if isinstance(value, numbers.Real):
        return
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):  # jax.Array covers tracers
        dt = value.dtype
        if jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer):
            return
        raise TypeError(f"{name} must have a real (float or int) dtype, got {dt}")
    raise TypeError(
        f"{name} must be a real number or a real-valued array, got {type(value).__name__} "
        f"{value!r}; pass e.g. {name}=4.0"
    )


def _interval_text(low: float, high: float | None, low_inclusive: bool) -> str:
    return f"{'[' if low_inclusive else '('}{low}, {'inf)' if high is None else f'{high}]'}"


def _check_interval(
    name: str, value: Any, low: float, high: float | None, low_inclusive: bool, checked: bool
) -> None:
    check_real(name, value)
    interval = _interval_text(low, high, low_inclusive)

    def inside(v):
        ok = v > low if not low_inclusive else v >= low
        return ok & (v <= high) if high is not None else ok

    host = concrete(value)
    if host is not None:
        bad = ~inside(host.astype(np.float64))  # NaN compares False: it is outside too
        if bad.any():
            shown = host.item() if host.ndim == 0 else host[bad].reshape(-1)[:4].tolist()
            raise ValueError(f"{name}={shown!r} is outside {interval}")
    elif checked:
        checkify.check(
            jnp.all(inside(jnp.asarray(value))), f"{name} must lie in {interval}, got {{}}", value
        )


def check_positive(name: str, value: Any, *, checked: bool = False) -> None:
    """Validates a strictly positive hyperparameter.

    Concrete values (Python/NumPy numbers, JAX arrays outside a trace) are
    checked now: TypeError for a non-real value (a string, a bool), ValueError
    for a value ``<= 0`` or NaN. A traced value cannot be inspected; with
    ``checked=True`` a :func:`jax.experimental.checkify.check` is staged
    instead, reported when the caller is wrapped in ``checkify.checkify``.
    """
    _check_interval(name, value, 0.0, None, False, checked)


def check_fraction(name: str, value: Any, *, checked: bool = False) -> None:
    """Validates a hyperparameter in ``[0, 1]`` (see :func:`check_positive`)."""
    _check_interval(name, value, 0.0, 1.0, True, checked)


def check_mask(mask: ArrayLike | None, per_example_shape: tuple[int, ...], *, name: str = "mask"):
    """Returns ``mask`` as a float array broadcastable to ``per_example_shape`` (or None).

    ``mask`` must have the leading dimensions of ``per_example_shape`` (usually
    just the batch dimension); trailing dimensions are added.
    """
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != per_example_shape[: mask.ndim] or mask.ndim == 0:
        raise ValueError(
            f"{name} has shape {mask.shape} but the per-example losses have shape "
            f"{per_example_shape}; pass one weight per example (shape "
            f"{per_example_shape[:1]}), 0 for padded examples"
        )
    mask = mask.astype(jnp.float32)
    return mask.reshape(mask.shape + (1,) * (len(per_example_shape) - mask.ndim))


def masked_mean(values: jax.Array, mask: ArrayLike | None, *, name: str = "mask") -> jax.Array:
    """Mean of ``values`` over unmasked entries: ``sum(m * v) / sum(m)`` (0 if all masked).

    ``mask`` holds one weight per example (leading dimensions of ``values``);
    ``None`` means every entry counts.
    """
    values = jnp.asarray(values)
    if mask is None:
        return jnp.mean(values)
    m = jnp.broadcast_to(check_mask(mask, values.shape, name=name), values.shape)
    total = jnp.sum(m)
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(values * m) / safe, 0.0)


def as_list(x: Any, name: str) -> list:
    """A single array or a sequence of arrays → list of arrays."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{name} is empty; pass at least one feature array")
        return list(x)
    return [x]


def check_same_length(a: Sequence, b: Sequence, names: tuple[str, str]) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"{names[0]} has {len(a)} entries but {names[1]} has {len(b)}; pass one "
            "student feature per teacher feature (layer pairs)"
        )


def norm_pairs(name: str, pairs) -> tuple:
    """Validates ``[(student_path, teacher_spec), ...]`` and returns it as a tuple of pairs."""
    out = []
    for i, p in enumerate(pairs or ()):
        if not isinstance(p, (tuple, list)) or len(p) != 2 or isinstance(p[0], int):
            raise ValueError(f"{name}[{i}] must be a (student_path, teacher_path) pair, got {p!r}")
        out.append((p[0], p[1]))
    return tuple(out)


def teacher_path(spec: Any, k: int, n: int, what: str):
    """A teacher-side spec shared by all teachers, or a list with one entry per teacher.

    For ``fsp`` the shared form is a pair of path strings.
    """
    shared = isinstance(spec, str)
    if what == "fsp":
        shared = isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str)
    if shared:
        return spec
    spec = list(spec)
    if len(spec) != n:
        raise ValueError(f"{what}: {len(spec)} teacher paths given for {n} teachers")
    return spec[k]
