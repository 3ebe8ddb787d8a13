"""Shared helpers of :mod:`jaxcomp.distill`: masked reductions and argument checks."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxcomp.core.errors import check_in_range


def is_static_number(x: Any) -> bool:
    """Whether ``x`` is a concrete Python/NumPy real number (not a traced array)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_positive(name: str, value: Any) -> None:
    """Validates a strictly positive hyperparameter when it is a static number."""
    if is_static_number(value):
        check_in_range(name, float(value), 0.0, None, low_inclusive=False)


def check_fraction(name: str, value: Any) -> None:
    """Validates a hyperparameter in ``[0, 1]`` when it is a static number."""
    if is_static_number(value):
        check_in_range(name, float(value), 0.0, 1.0)


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
