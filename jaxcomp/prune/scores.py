"""Importance scores: which weights matter. Higher score = more important = kept.

Every score function has the hook signature the pruning factories accept::

    score_fn(params, *, grads=None, **extra) -> score tree

``params`` (and ``grads``) may hold :class:`~jaxcomp.MaskedNode` placeholders
for leaves that are not pruned; ``jax.tree.map`` skips them, so a score
function needs no special case. ``extra`` carries what ``update`` was given
(``key`` for random scores, ``hessian_diag`` for OBD, ...).

Built-in scores:

* :func:`magnitude` — ``|w|`` (Han et al. 2015).
* :func:`random` — uniform noise (needs ``key``): the random-pruning baseline.
* :func:`saliency` — ``|w · g|``, first-order Taylor (Molchanov et al. 2017).
* :func:`movement` — ``-w · g``; accumulated over steps by
  :func:`~jaxcomp.prune.movement_pruning` (Sanh et al. 2020).
* :func:`obd` — ``½ h_kk w_k²`` with the Hessian diagonal ``h`` (LeCun et
  al. 1990), estimated by :func:`hutchinson_diag` (Rademacher probes),
  computed exactly by :func:`exact_hessian_diag` for small models, or
  replaced by the empirical Fisher / Gauss-Newton diagonal
  :func:`fisher_diag` (mean of squared per-example gradients).

References:
  Han et al., arXiv:1506.02626. Molchanov et al., Pruning convolutional
  neural networks for resource efficient inference, arXiv:1611.06440.
  Sanh, Wolf, Rush, Movement pruning, arXiv:2005.07683. LeCun, Denker,
  Solla, Optimal brain damage (NeurIPS 1989/1990). Hutchinson, A stochastic
  estimator of the trace of the influence matrix (1990); Bekas et al., An
  estimator for the diagonal of a matrix (2007).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcomp.select.paths import leaves_with_paths

__all__ = [
    "exact_hessian_diag",
    "fisher_diag",
    "hutchinson_diag",
    "magnitude",
    "movement",
    "obd",
    "random",
    "saliency",
]


def _need(name: str, value: Any, what: str) -> None:
    if value is None:
        raise ValueError(
            f"the {what} score needs {name}=...; pass it to the score function (compressors "
            f"forward it from update(..., {name}=...))"
        )


def _check_same(params: Any, other: Any, name: str) -> None:
    a = jax.tree_util.tree_structure(params)
    b = jax.tree_util.tree_structure(other)
    if a != b:
        pa = [p for p, _ in leaves_with_paths(params)]
        pb = [p for p, _ in leaves_with_paths(other)]
        raise ValueError(
            f"{name} must have the structure of params; params paths {pa[:6]}..., {name} paths "
            f"{pb[:6]}... Pass {name} for the same tree (MaskedNode placeholders included)."
        )


def magnitude(params: Any, *, grads: Any = None, **extra: Any) -> Any:
    """``|w|``.

    Example:
      >>> import jax.numpy as jnp
      >>> magnitude({"w": jnp.array([-2.0, 1.0])})["w"].tolist()
      [2.0, 1.0]
    """
    del grads, extra
    return jax.tree_util.tree_map(jnp.abs, params)


def random(params: Any, *, key: jax.Array | None = None, grads: Any = None, **extra: Any) -> Any:
    """Uniform ``[0, 1)`` noise per weight (leaf ``i`` uses ``fold_in(key, i)``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s = random({"w": jnp.ones(3)}, key=jax.random.key(0))
      >>> bool(((s["w"] >= 0) & (s["w"] < 1)).all())
      True
    """
    del grads, extra
    _need("key", key, "random")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = [jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(x), jnp.float32)
           for i, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def saliency(params: Any, *, grads: Any = None, **extra: Any) -> Any:
    """First-order Taylor saliency ``|w · g|`` (the loss change of removing ``w``).

    Example:
      >>> import jax.numpy as jnp
      >>> saliency({"w": jnp.array([2.0, -1.0])}, grads={"w": jnp.array([0.5, 3.0])})["w"].tolist()
      [1.0, 3.0]
    """
    del extra
    _need("grads", grads, "saliency")
    _check_same(params, grads, "grads")
    return jax.tree_util.tree_map(lambda w, g: jnp.abs(w * g), params, grads)


def movement(params: Any, *, grads: Any = None, **extra: Any) -> Any:
    """One step of the movement score ``-w · g`` (positive when ``w`` moves away from 0).

    Example:
      >>> import jax.numpy as jnp
      >>> movement({"w": jnp.array([2.0, -1.0])}, grads={"w": jnp.array([-0.5, -3.0])})["w"].tolist()
      [1.0, -3.0]
    """
    del extra
    _need("grads", grads, "movement")
    _check_same(params, grads, "grads")
    return jax.tree_util.tree_map(lambda w, g: -w * g, params, grads)


def obd(params: Any, *, hessian_diag: Any = None, grads: Any = None, **extra: Any) -> Any:
    """Optimal Brain Damage saliency ``½ h_kk w_k²``.

    Example:
      >>> import jax.numpy as jnp
      >>> obd({"w": jnp.array([2.0, 1.0])}, hessian_diag={"w": jnp.array([0.5, 4.0])})["w"].tolist()
      [1.0, 2.0]
    """
    del grads, extra
    _need("hessian_diag", hessian_diag, "OBD")
    _check_same(params, hessian_diag, "hessian_diag")
    return jax.tree_util.tree_map(lambda w, h: 0.5 * h * w * w, params, hessian_diag)


def _float_leaf(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def hutchinson_diag(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    *,
    key: jax.Array,
    n_samples: int = 8,
) -> Any:
    """Hutchinson estimate of the Hessian diagonal: ``mean_z z ⊙ (H z)``, ``z`` Rademacher.

    Each sample costs one Hessian-vector product (forward-over-reverse). The
    estimate is unbiased; its variance falls as ``1 / n_samples``.

    Args:
      loss_fn: ``params -> scalar`` (close over the data).
      params: the point at which the Hessian is taken.
      key: PRNG key for the probes.
      n_samples: number of probes.

    Returns:
      A tree like ``params`` (non-float leaves get zeros).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 3.0]) * p["w"] ** 2)   # H = diag(2, 6)
      >>> hutchinson_diag(loss, {"w": jnp.ones(2)}, key=jax.random.key(0), n_samples=4)["w"].tolist()
      [2.0, 6.0]
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples={n_samples!r} must be a positive int")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    grad_fn = jax.grad(loss_fn)

    def probe(i, acc):
        k = jax.random.fold_in(key, i)
        zs = [jax.random.rademacher(jax.random.fold_in(k, j), jnp.shape(x), x.dtype)
              if _float_leaf(x) else jnp.zeros_like(x) for j, x in enumerate(leaves)]
        z = jax.tree_util.tree_unflatten(treedef, zs)
        _, hz = jax.jvp(grad_fn, (params,), (z,))
        hz_l = jax.tree_util.tree_leaves(hz)
        return [a + zi * h for a, zi, h in zip(acc, zs, hz_l)]

    acc0 = [jnp.zeros_like(x) for x in leaves]
    acc = jax.lax.fori_loop(0, n_samples, probe, acc0)
    return jax.tree_util.tree_unflatten(treedef, [a / n_samples for a in acc])


def exact_hessian_diag(
    loss_fn: Callable[[Any], jax.Array], params: Any, *, max_size: int = 4096
) -> Any:
    """The exact Hessian diagonal, for small models (builds the full ``P × P`` Hessian).

    Args:
      loss_fn: ``params -> scalar``.
      params: float leaves (others are treated as constants and get zeros).
      max_size: refuse models with more parameters than this.

    Raises:
      ValueError: more than ``max_size`` parameters (use :func:`hutchinson_diag`).

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p: p["w"][0] ** 2 * p["w"][1] + p["w"][1] ** 2
      >>> exact_hessian_diag(loss, {"w": jnp.array([1.0, 2.0])})["w"].tolist()
      [4.0, 2.0]
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    is_f = [_float_leaf(x) for x in leaves]
    fl = [x for x, f in zip(leaves, is_f) if f]
    flat, unravel = ravel_pytree(fl)
    if flat.size > max_size:
        raise ValueError(
            f"exact_hessian_diag: {flat.size} parameters exceed max_size={max_size} (the Hessian "
            "has P^2 entries); use hutchinson_diag (or raise max_size for a one-off)"
        )

    def f(v):
        it = iter(unravel(v))
        full = [next(it) if f_ else x for x, f_ in zip(leaves, is_f)]
        return loss_fn(jax.tree_util.tree_unflatten(treedef, full))

    diag = jnp.diagonal(jax.hessian(f)(flat))
    it = iter(unravel(diag))
    out = [next(it) if f_ else jnp.zeros_like(x) for x, f_ in zip(leaves, is_f)]
    return jax.tree_util.tree_unflatten(treedef, out)


def fisher_diag(
    example_loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any
) -> Any:
    """Empirical Fisher / Gauss-Newton diagonal: mean of squared per-example gradients.

    Args:
      example_loss_fn: ``(params, example) -> scalar`` for one example.
      params: the parameters.
      batch: a tree whose leaves have a leading batch axis (``vmap``-ed).

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x: p["w"] * x            # per-example gradient = x
      >>> float(fisher_diag(loss, {"w": jnp.array(1.0)}, jnp.array([1.0, 3.0]))["w"])
      5.0
    """
    g = jax.vmap(jax.grad(example_loss_fn), in_axes=(None, 0))(params, batch)
    return jax.tree_util.tree_map(lambda x: jnp.mean(x * x, axis=0), g)
