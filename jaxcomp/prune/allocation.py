"""Sparsity allocation: how a target sparsity is split across layers.

* ``"uniform"`` — every selected leaf gets the target sparsity (exact per leaf).
* ``"erk"`` / ``"er"`` — Erdős–Rényi(-Kernel) (Evci et al. 2020): density of
  a leaf ∝ ``sum(dims) / prod(dims)`` (``"erk"``: all dims, kernel sizes
  included; ``"er"``: the last two dims only). The proportionality constant
  is solved so the overall sparsity equals the target; leaves whose density
  would exceed 1 are made dense and the rest re-solved (the largest-ratio
  leaves first). Prune counts are then rounded by the largest-remainder
  method so that the total number pruned is exactly ``round(target * N)``.
* ``{regex: sparsity}`` — a per-path map: the first regex that fully matches
  a leaf's canonical path gives its sparsity (a number, or a schedule
  ``step -> sparsity`` in compressors); unmatched selected leaves take the
  target sparsity passed alongside (the ``default``), or are an error when
  there is none. A regex that matches no selected leaf is an error.

A global threshold (``scope="global"``) is not an allocation: one threshold
over all selected leaves decides each leaf's share.

Everything works with a traced target sparsity (schedules under ``jit``):
the ERK solve is vectorised over the possible dense sets (there are only
``L + 1`` of them for ``L`` leaves).

References:
  Evci et al., Rigging the lottery, arXiv:1911.11134 (ERK).
  Mocanu et al., Scalable training of artificial neural networks with
  adaptive sparse connectivity, arXiv:1707.04780 (ER).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import check_in_range
from jaxcomp.ops.kth import is_tracer, num_pruned
from jaxcomp.select.leafrules import REQUIRED, is_mapping, per_leaf
from jaxcomp.select.selection import flatten
from jaxcomp.select.selectors import Where, ndim

__all__ = [
    "erk_densities",
    "erk_sparsities",
    "largest_remainder",
    "path_sparsities",
]


def _ratio(shape: Sequence[int], kernel: bool) -> float:
    dims = [int(d) for d in shape]
    if not kernel and len(dims) > 2:
        dims = dims[-2:]
    prod = float(np.prod(dims)) if dims else 1.0
    return (float(sum(dims)) / prod) if prod else 0.0


def erk_densities(shapes: Sequence[Sequence[int]], sparsity: Any, *, kernel: bool = True) -> Any:
    """Per-leaf ERK densities whose size-weighted mean is ``1 - sparsity``.

    Args:
      shapes: the leaves' shapes.
      sparsity: overall target in ``[0, 1)``; may be traced.
      kernel: ``True`` for ERK (all dims), ``False`` for ER (last two dims).

    Returns:
      A float array of densities in ``[0, 1]`` (numpy when ``sparsity`` is
      concrete, jnp when traced).

    Example:
      >>> d = erk_densities([(100, 100), (10, 1000), (1000, 10)], 0.9)
      >>> [round(float(x), 4) for x in d]
      [0.027, 0.1365, 0.1365]
    """
    traced = is_tracer(sparsity)
    # the same float32 operations eagerly and under jit, so eager and jitted counts agree
    with contextlib.nullcontext() if traced else jax.ensure_compile_time_eval():
        out = _erk_densities(shapes, sparsity, kernel)
    return out if traced else np.asarray(out)


def _erk_densities(shapes: Sequence[Sequence[int]], sparsity: Any, kernel: bool) -> jax.Array:
    xp = jnp
    sizes = np.asarray([float(np.prod(s)) for s in shapes])
    ratios = np.asarray([_ratio(s, kernel) for s in shapes])
    n_leaves = len(shapes)
    if n_leaves == 0:
        return xp.zeros((0,))
    order = np.argsort(-ratios, kind="stable")  # static: largest ratio first
    s_sorted, r_sorted = sizes[order], ratios[order]
    total = sizes.sum()
    # j dense leaves (the j largest ratios), j = 0..L.
    dense_size = np.concatenate([[0.0], np.cumsum(s_sorted)])
    rest_mass = np.concatenate([np.cumsum((s_sorted * r_sorted)[::-1])[::-1], [0.0]])
    next_ratio = np.concatenate([r_sorted, [0.0]])
    s = xp.asarray(sparsity, dtype=xp.float32)
    budget = (1.0 - s) * total - dense_size
    safe_mass = np.where(rest_mass > 0, rest_mass, 1.0)
    eps = budget / safe_mass
    valid = (eps * next_ratio <= 1.0 + 1e-9) & (budget >= -1e-6 * total)
    valid = valid | (np.arange(n_leaves + 1) == n_leaves)
    j = xp.argmax(valid)
    eps_j = eps[j]
    dens_sorted = xp.where(np.arange(n_leaves) < j, 1.0, xp.clip(eps_j * r_sorted, 0.0, 1.0))
    inv = np.argsort(order)
    return dens_sorted[inv]


def largest_remainder(ideal: Any, total: Any, caps: Sequence[int]) -> Any:
    """Integer counts ``k_l`` close to ``ideal`` with ``sum(k_l) == total``, ``0 <= k_l <= caps``.

    Each leaf gets ``floor(ideal)``; the remaining units go to the leaves with
    the largest fractional parts (earlier leaves first on ties). Works on a
    traced ``ideal`` (the vector has one entry per leaf, not per weight).

    Example:
      >>> largest_remainder([0.5, 1.5, 2.2], 4, [10, 10, 10]).tolist()
      [1, 1, 2]
    """
    traced = is_tracer(ideal) or is_tracer(total)
    # float32 on both sides (see erk_densities)
    with contextlib.nullcontext() if traced else jax.ensure_compile_time_eval():
        caps_a = np.asarray(caps)
        z = jnp.clip(jnp.asarray(ideal, dtype=jnp.float32), 0, caps_a)
        base = jnp.floor(z)
        frac = jnp.where(base < caps_a, z - base, -1.0)
        extra = jnp.asarray(total) - base.sum()
        order = jnp.argsort(-frac, stable=True)
        rank = jnp.argsort(order)
        k = jnp.clip(base + (rank < extra), 0, caps_a)
    return k.astype(jnp.int32) if traced else np.asarray(k).astype(np.int64)


def erk_counts(sizes_groups: Sequence[int], shapes: Sequence[Sequence[int]], sparsity: Any,
               *, kernel: bool = True) -> list[Any]:
    """Prune counts per leaf (in groups) with ERK densities and an exact total."""
    dens = erk_densities(shapes, sparsity, kernel=kernel)
    groups = np.asarray(sizes_groups, np.float32)  # float32 on both sides (see erk_densities)
    traced = is_tracer(dens)
    ideal = (np.float32(1.0) - dens) * groups
    total = num_pruned(sparsity, int(sum(int(g) for g in sizes_groups)))
    ks = largest_remainder(ideal, total, [int(g) for g in sizes_groups])
    if traced:
        return [ks[i] for i in range(len(sizes_groups))]
    return [int(k) for k in ks]


class PathMap:
    """A resolved ``{regex: sparsity_or_schedule}`` map for a list of paths.

    The map is a :func:`jaxcomp.select.per_leaf` rule: keys are regexes (full
    match) or Selectors, the first that matches a path gives its value, and
    every key must give some path its value. ``has_default`` says whether
    unmatched paths may take the caller's target sparsity; if not, unmatched
    paths are an error.
    """

    def __init__(self, mapping: Mapping[str, Any], paths: Sequence[str], has_default: bool):
        if not is_mapping(mapping) or not mapping:
            raise TypeError("a per-path sparsity map must be a non-empty dict {regex: sparsity}")
        # None: take the default
        self.values: list[Any] = per_leaf(
            mapping, paths=list(paths), default=None if has_default else REQUIRED,
            what="sparsity map", noun="selected parameter", validate=_check_map_value,
            hint="Add a regex for them (full match on the path), pass a default sparsity, or "
                 "exclude them with where=.")

    @property
    def has_schedules(self) -> bool:
        return any(callable(v) for v in self.values)

    def at(self, step: Any, default: Any = None) -> list[Any]:
        """Per-leaf sparsity at ``step``: schedules evaluated, unmatched -> ``default``."""
        out = []
        for v in self.values:
            if v is None:
                out.append(default)
            elif callable(v):
                if step is None:
                    raise ValueError(
                        "the per-path sparsity map holds schedules but no step is known here; "
                        "use numbers, or a compressor (which evaluates schedules at update steps)"
                    )
                out.append(jnp.clip(jnp.asarray(v(step), jnp.float32), 0.0, 1.0))
            else:
                out.append(v)
        return out


def _check_map_value(value: Any, label: str) -> Any:
    if not callable(value):
        check_in_range(label, value, 0.0, 1.0, high_inclusive=False)
    return value


def _selected(params: Any, where: Where, what: str) -> list[tuple[str, Any]]:
    return flatten(params, where, what=what, default=ndim(min=2)).pairs


def erk_sparsities(params: Any, sparsity: float, *, where: Where = None,
                   kernel: bool = True) -> dict[str, float]:
    """The per-leaf sparsities ERK (or ER with ``kernel=False``) gives, by path.

    Sparsities are ``k_l / n_l`` with integer prune counts ``k_l`` whose total
    is exactly ``round(sparsity * N)``.

    Args:
      params: the parameter tree (arrays or shape-dtype structs).
      sparsity: the overall target in ``[0, 1)``.
      where: the leaves to prune (default: every leaf with ``ndim >= 2``).
      kernel: ERK (True) or ER (False).

    References:
      Evci et al. 2020, arXiv:1911.11134.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"a": jnp.ones((100, 100)), "b": jnp.ones((10, 1000)), "c": jnp.ones(5)}
      >>> {k: round(v, 4) for k, v in erk_sparsities(p, 0.9).items()}
      {'a': 0.9669, 'b': 0.8331}
    """
    check_in_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    sel = _selected(params, where, "erk_sparsities")
    shapes = [tuple(x.shape) for _, x in sel]
    sizes = [int(np.prod(s)) for s in shapes]
    ks = erk_counts(sizes, shapes, sparsity, kernel=kernel)
    return {p: (k / n if n else 0.0) for (p, _), k, n in zip(sel, ks, sizes)}


def path_sparsities(params: Any, mapping: Mapping[str, float], *, default: float | None = None,
                    where: Where = None) -> dict[str, float]:
    """Resolves a ``{regex: sparsity}`` map against the selected leaves, by path.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"conv": {"kernel": jnp.ones((3, 3, 4, 4))}, "fc": {"kernel": jnp.ones((4, 2))}}
      >>> path_sparsities(p, {r"conv/.*": 0.5}, default=0.8)
      {'conv/kernel': 0.5, 'fc/kernel': 0.8}
    """
    sel = _selected(params, where, "path_sparsities")
    if default is not None:
        check_in_range("default", default, 0.0, 1.0, high_inclusive=False)
    pm = PathMap(mapping, [p for p, _ in sel], default is not None)
    return {p: float(v) for (p, _), v in zip(sel, pm.at(None, default))}


Allocation = str | Mapping[str, Any] | Callable[..., Any]
