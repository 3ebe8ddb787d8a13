"""Structured sparsity learning: group-lasso regularisers on kernels.

Wen et al. add ``λ_g Σ_groups ||w_g||₂`` to the loss for groups that match
hardware-friendly structures, so whole groups are driven to exactly zero
and can be removed. For a Flax kernel ``(*spatial, in, out)`` (a Dense
kernel is ``(in, out)``):

===========  =====================================  ===========================
term         one group per                          removes
===========  =====================================  ===========================
filter       output channel ``[..., :, o]``          filters (output channels)
channel      input channel ``[..., i, :]``           input channels
shape        position ``(*spatial, i)`` over filters  filter-shape entries
depth        the whole kernel                        layers (with a shortcut)
===========  =====================================  ===========================

Each term is ``weight · Σ_g c_g ||w_g||₂`` with ``c_g = sqrt(|g|)`` when
``scale_by_size=True`` (Yuan & Lin's group-size weighting; off by default,
as in Wen et al.). The gradient is ``w_g / ||w_g||`` for non-zero groups
and exactly 0 for all-zero groups (a safe norm: never NaN).

References:
  Wen et al. 2016, Learning structured sparsity in deep neural networks,
  arXiv:1608.03665. Yuan & Lin 2006, Model selection and estimation in
  regression with grouped variables (JRSS B).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcomp.select.selection import flatten

__all__ = [
    "GROUPINGS",
    "channel_lasso",
    "depth_lasso",
    "filter_lasso",
    "group_lasso",
    "group_norms",
    "shape_lasso",
    "ssl_regularizer",
]

GROUPINGS = ("filter", "channel", "shape", "depth")


def _safe_norm(x: jax.Array, axis: Any) -> jax.Array:
    sq = jnp.sum(x * x, axis=axis)
    nz = sq > 0
    return jnp.where(nz, jnp.sqrt(jnp.where(nz, sq, 1.0)), 0.0)


def _grouped(w: jax.Array, grouping: str) -> jax.Array:
    """``(groups, members)`` view of a kernel for one grouping."""
    if grouping == "filter":
        return jnp.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
    if grouping == "channel":
        return jnp.moveaxis(w, -2, 0).reshape(w.shape[-2], -1)
    if grouping == "shape":
        return w.reshape(-1, w.shape[-1])
    return w.reshape(1, -1)


def _kernels(params: Any, where: Any, what: str) -> list[tuple[str, jax.Array]]:
    def check(p: str, x: Any) -> None:
        if jnp.ndim(x) < 2:
            raise ValueError(f"{what}: '{p}' has shape {jnp.shape(x)}; group lasso needs kernels "
                             "with ndim >= 2 ((in, out) or (*spatial, in, out)). Narrow where=.")

    return flatten(params, where, what=what, default=r".*kernel", noun="kernel",
                   hint="Pass e.g. where=r'.*conv.*/kernel'.", leaf_check=check).pairs


def group_norms(params: Any, grouping: str, *, where: Any = None) -> dict[str, jax.Array]:
    """Per-group L2 norms ``{path: (groups,)}`` of the selected kernels.

    Threshold them to find removable filters/channels (e.g. ``norms < 1e-3``).

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[3.0, 0.0], [4.0, 0.0]])          # Dense (in=2, out=2)
      >>> group_norms({"fc": {"kernel": w}}, "filter")["fc/kernel"].tolist()
      [5.0, 0.0]
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping={grouping!r} must be one of {GROUPINGS}")
    return {p: _safe_norm(_grouped(jnp.asarray(x), grouping), 1)
            for p, x in _kernels(params, where, "group_norms")}


def group_lasso(params: Any, grouping: str, *, where: Any = None, weight: float = 1.0,
                scale_by_size: bool = False) -> jax.Array:
    """``weight · Σ_kernels Σ_groups c_g ||w_g||₂`` for one ``grouping`` (see module doc).

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[3.0, 1.0], [4.0, 0.0]])
      >>> float(group_lasso({"fc": {"kernel": w}}, "channel"))   # rows: ||(3,1)|| + ||(4,0)||
      7.162277698516846
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"weight={weight!r} must be a number >= 0")
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping={grouping!r} must be one of {GROUPINGS}")
    total = jnp.float32(0.0)
    for _, x in _kernels(params, where, f"{grouping}_lasso"):
        g = _grouped(jnp.asarray(x), grouping)
        c = jnp.sqrt(jnp.float32(g.shape[1])) if scale_by_size else 1.0
        total = total + c * jnp.sum(_safe_norm(g, 1))
    return weight * total


def filter_lasso(params: Any, *, where: Any = None, weight: float = 1.0,
                 scale_by_size: bool = False) -> jax.Array:
    """Group lasso with one group per output filter (``kernel[..., o]``).

    Example:
      >>> import jax.numpy as jnp
      >>> float(filter_lasso({"c": {"kernel": jnp.ones((3, 3, 2, 4))}}))   # 4 filters of norm sqrt(18)
      16.970561981201172
    """
    return group_lasso(params, "filter", where=where, weight=weight, scale_by_size=scale_by_size)


def channel_lasso(params: Any, *, where: Any = None, weight: float = 1.0,
                  scale_by_size: bool = False) -> jax.Array:
    """Group lasso with one group per input channel (``kernel[..., i, :]``).

    Example:
      >>> import jax.numpy as jnp
      >>> float(channel_lasso({"c": {"kernel": jnp.ones((3, 3, 2, 4))}}))  # 2 channels, sqrt(36)
      12.0
    """
    return group_lasso(params, "channel", where=where, weight=weight, scale_by_size=scale_by_size)


def shape_lasso(params: Any, *, where: Any = None, weight: float = 1.0,
                scale_by_size: bool = False) -> jax.Array:
    """Group lasso with one group per filter-shape position ``(*spatial, in)`` across filters.

    Example:
      >>> import jax.numpy as jnp
      >>> float(shape_lasso({"c": {"kernel": jnp.ones((3, 3, 2, 4))}}))    # 18 groups of norm 2
      36.0
    """
    return group_lasso(params, "shape", where=where, weight=weight, scale_by_size=scale_by_size)


def depth_lasso(params: Any, *, where: Any = None, weight: float = 1.0,
                scale_by_size: bool = False) -> jax.Array:
    """Group lasso with each whole kernel one group (drives layers to zero: depth-wise SSL).

    Example:
      >>> import jax.numpy as jnp
      >>> float(depth_lasso({"c": {"kernel": jnp.ones((3, 3, 2, 4))}}))    # sqrt(72)
      8.485280990600586
    """
    return group_lasso(params, "depth", where=where, weight=weight, scale_by_size=scale_by_size)


def ssl_regularizer(loss_fn: Callable[..., Any], terms: Mapping[str, Any]) -> Callable[..., Any]:
    """Adds group-lasso terms to a training-interface loss.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, rng) -> (loss, (state, metrics))``.
      terms: ``{grouping: weight}`` or ``{grouping: {"weight": w, "where": ...,
        "scale_by_size": bool}}`` with groupings from :data:`GROUPINGS`.

    Returns:
      The wrapped loss; each term is reported as ``metrics["ssl_<grouping>"]``
      (weighted).

    Example:
      >>> import jax.numpy as jnp
      >>> base = lambda p, s, b, r: (jnp.float32(1.0), (s, {}))
      >>> loss = ssl_regularizer(base, {"filter": 0.5})
      >>> l, (_, m) = loss({"fc": {"kernel": jnp.array([[3.0], [4.0]])}}, {}, {}, None)
      >>> float(l), float(m["ssl_filter"])
      (3.5, 2.5)
    """
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(params, model_state, batch, rng)")
    specs = {}
    for name, spec in dict(terms).items():
        if name not in GROUPINGS:
            raise ValueError(f"ssl_regularizer: unknown term {name!r}; one of {GROUPINGS}")
        spec = {"weight": spec} if isinstance(spec, (int, float)) else dict(spec)
        unknown = set(spec) - {"weight", "where", "scale_by_size"}
        if unknown:
            raise ValueError(f"ssl_regularizer: terms[{name!r}] has unknown keys {sorted(unknown)}")
        w = spec.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"ssl_regularizer: terms[{name!r}].weight={w!r} must be >= 0")
        specs[name] = spec
    if not specs:
        raise ValueError("ssl_regularizer: terms is empty; give e.g. {'filter': 1e-4}")

    def wrapped(params, model_state, batch, rng):
        loss, (state, metrics) = loss_fn(params, model_state, batch, rng)
        extra = {}
        for name, spec in specs.items():
            extra[f"ssl_{name}"] = group_lasso(params, name, **spec)
            loss = loss + extra[f"ssl_{name}"]
        return loss, (state, {**metrics, **extra})

    return wrapped
