"""Dynamic sparse training: SET and RigL (drop / grow at constant sparsity).

Training starts sparse (layerwise-uniform or ERK sparsity, random masks)
and every ``update_every`` steps, until ``end_step``, each selected layer
drops ``k = round(f(t) · active)`` of its active weights (smallest ``|w|``)
and grows ``k`` inactive ones — at random (SET) or where the dense gradient
``|∂L/∂w|`` is largest (RigL). The drop fraction decays as
``f(t) = f0/2 · (1 + cos(π t / end_step))``. Every layer's sparsity stays
exactly constant. Grown weights start at zero (RigL's choice, so the
network function does not jump), and their optimizer moments should be
reset: :func:`jaxcomp.prune.optim_reset.reset_regrown` wraps any optax
optimizer to do it (the state's ``regrown`` masks say where).

The forward view is the masked weight with a straight-through gradient, so
the gradient that :func:`jaxcomp.train.make_train_step` passes to
``update(grads=...)`` is the *dense* gradient at the masked weights — the
RigL growth signal. The stored pruned weights are kept at exactly zero by
``project`` with :func:`jaxcomp.keep_compressed` last in the optax chain.
Selection is sort-free (:mod:`jaxcomp.prune.threshold`) and updates run
under ``lax.cond``: no recompilation as masks change.

References:
  Mocanu et al. 2018, Scalable training of artificial neural networks with
  adaptive sparse connectivity (SET), arXiv:1707.04780. Evci et al. 2020,
  Rigging the lottery: making all tickets winners (RigL), arXiv:1911.11134.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.base import Compressor
from jaxcomp.prune.allocation import erk_sparsities
from jaxcomp.prune.engine import Selection, masks_info
from jaxcomp.prune.ste import masked_weight, ste_masked_weight
from jaxcomp.prune.threshold import _is_tracer, check_finite, num_pruned, smallest_k_masks

__all__ = ["DSTState", "drop_fraction", "rigl_pruning", "set_pruning"]

_BIG = float(np.finfo(np.float32).max)


class DSTState(NamedTuple):
    """State of :func:`set_pruning` / :func:`rigl_pruning`.

    Attributes:
      masks: bool keep-masks (params structure, ``MaskedNode`` at unpruned leaves).
      regrown: bool masks of the weights grown at the last update (all False
        before the first); optimizer moments there should be reset.
      count: number of drop/grow updates so far (int32).
      last_update: step of the last update (-1: none yet).
      key: PRNG key for SET's random growth.
    """

    masks: Any
    regrown: Any
    count: jax.Array
    last_update: jax.Array
    key: jax.Array

    def __jaxcomp_info__(self):
        return masks_info(self.masks)


def drop_fraction(step: Any, *, initial: float, end_step: int) -> jax.Array:
    """Cosine-decayed drop fraction ``initial/2 · (1 + cos(π t / end_step))``, 0 after ``end_step``.

    Example:
      >>> [round(float(drop_fraction(t, initial=0.3, end_step=100)), 4) for t in (0, 50, 100, 150)]
      [0.3, 0.15, 0.0, 0.0]
    """
    t = jnp.asarray(step, jnp.float32)
    f = 0.5 * initial * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, end_step) / end_step))
    return jnp.where(t < end_step, f, 0.0)


def _check(sparsity, drop_frac, update_every, end_step, allocation, name):
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
            0.0 <= sparsity < 1.0):
        raise ValueError(f"{name}: sparsity={sparsity!r} must be a fraction in [0, 1)")
    if isinstance(drop_frac, bool) or not isinstance(drop_frac, (int, float)) or not (
            0.0 < drop_frac <= 1.0):
        raise ValueError(f"{name}: drop_fraction={drop_frac!r} must lie in (0, 1] (RigL: 0.3)")
    for arg, v in (("update_every", update_every), ("end_step", end_step)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {arg}={v!r} must be a positive int")
    if allocation not in ("uniform", "erk"):
        raise ValueError(f"{name}: allocation={allocation!r} must be 'uniform' or 'erk'")


def _dst(sparsity, *, drop_frac, update_every, end_step, allocation, where, key, grow, name):
    _check(sparsity, drop_frac, update_every, end_step, allocation, name)
    if key is None:
        key = jax.random.key(0)

    def select(params):
        return Selection(params, where, name)

    def layer_sparsities(params, sel):
        if allocation == "erk":
            erk = erk_sparsities(params, sparsity, where=lambda p, x: p in set(sel.sel_paths))
            return [erk[p] for p in sel.sel_paths]
        return [float(sparsity)] * len(sel.idx)

    def init(params):
        sel = select(params)
        leaves = sel.sel_leaves
        check_finite({p: x for p, x in zip(sel.sel_paths, leaves)}, f"{name}: params")
        k_masks, k_state = jax.random.split(key)
        sps = layer_sparsities(params, sel)
        scores = [jax.random.uniform(jax.random.fold_in(k_masks, i), jnp.shape(x))
                  for i, x in enumerate(leaves)]
        pruned = smallest_k_masks(scores, [num_pruned(s, int(np.size(x)))
                                           for s, x in zip(sps, leaves)])
        return DSTState(masks=sel.masks_tree([~p for p in pruned]),
                        regrown=sel.masks_tree([jnp.zeros(jnp.shape(x), bool) for x in leaves]),
                        count=jnp.zeros((), jnp.int32), last_update=jnp.full((), -1, jnp.int32),
                        key=k_state)

    def apply(params, state):
        sel = select(params)
        ms = sel.masks_of(state.masks)
        return sel.rebuild([ste_masked_weight(w, m) for w, m in zip(sel.sel_leaves, ms)])

    def project(params, state):
        sel = select(params)
        ms = sel.masks_of(state.masks)
        return sel.rebuild([masked_weight(w, m) for w, m in zip(sel.sel_leaves, ms)])

    def update(params, state, *, step, grads=None, **extra):
        del extra
        sel = select(params)
        ms = sel.masks_of(state.masks)
        leaves = sel.sel_leaves
        if grow == "gradient" and grads is None:
            raise ValueError(f"{name}.update needs grads= (RigL grows where |grad| is largest); "
                             "jaxcomp.train.make_train_step passes them")
        g = sel.of(grads, "grads") if grads is not None else [None] * len(leaves)
        step = jnp.asarray(step, jnp.int32)
        k_grow = jax.random.fold_in(state.key, step)

        def drop_grow(ws):
            f = drop_fraction(step, initial=drop_frac, end_step=end_step)
            actives = [jnp.sum(m, dtype=jnp.int32) for m in ms]
            ks = [jnp.round(f * a.astype(jnp.float32)).astype(jnp.int32) for a in actives]
            drop_scores = [jnp.where(m, jnp.abs(w.astype(jnp.float32)), _BIG)
                           for w, m in zip(ws, ms)]
            drops = smallest_k_masks(drop_scores, ks)
            after = [m & ~d for m, d in zip(ms, drops)]
            if grow == "gradient":
                gs = [jnp.abs(gi.astype(jnp.float32)) for gi in g]
            else:
                gs = [jax.random.uniform(jax.random.fold_in(k_grow, i), jnp.shape(w))
                      for i, w in enumerate(ws)]
            # largest growth score among the inactive = smallest of its negation
            grow_scores = [jnp.where(a, _BIG, -s) for a, s in zip(after, gs)]
            grows = smallest_k_masks(grow_scores, ks)
            new = [a | gr for a, gr in zip(after, grows)]
            ws = [jnp.where(n & ~gr, w, jnp.zeros((), w.dtype)) for w, n, gr in zip(ws, new, grows)]
            return new, grows, ws

        def hold(ws):
            return list(ms), [jnp.zeros(jnp.shape(m), bool) for m in ms], list(ws)

        do = (step > 0) & (step % update_every == 0) & (step < end_step)
        if _is_tracer(do):
            new, grown, ws = lax.cond(do, drop_grow, hold, list(leaves))
        else:
            new, grown, ws = drop_grow(list(leaves)) if bool(do) else hold(list(leaves))
        new_state = state._replace(
            masks=sel.masks_tree(new), regrown=sel.masks_tree(grown),
            count=state.count + jnp.asarray(do, jnp.int32),
            last_update=jnp.where(do, step, state.last_update))
        return sel.rebuild(ws), new_state

    return Compressor(init, apply, update, project)


def rigl_pruning(
    sparsity: float,
    *,
    drop_fraction: float = 0.3,
    update_every: int = 100,
    end_step: int,
    allocation: str = "uniform",
    where: Any = None,
    key: jax.Array | None = None,
) -> Compressor:
    """RigL: drop the smallest active weights, grow where the dense ``|gradient|`` is largest.

    Args:
      sparsity: fraction of each selected layer's weights inactive (average
        with ``allocation="erk"``), in ``[0, 1)``.
      drop_fraction: initial fraction of active weights replaced per update.
      update_every: steps between drop/grow updates (RigL's ΔT).
      end_step: no updates from this step on (RigL: 75% of training).
      allocation: ``"uniform"`` or ``"erk"`` per-layer sparsities.
      where: which leaves are sparse (default: float arrays with ``ndim >= 2``).
      key: PRNG key of the random initial masks (default ``key(0)``).

    Returns:
      A :class:`jaxcomp.Compressor` with state :class:`DSTState` and ``project``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
      >>> comp = rigl_pruning(0.75, update_every=1, end_step=10)
      >>> s = comp.init(params)
      >>> int(s.masks["w"].sum())
      16
      >>> grads = {"w": jnp.arange(64.0).reshape(8, 8)}    # grow at the largest |g|
      >>> p, s = comp.update(comp.project(params, s), s, step=1, grads=grads)
      >>> int(s.masks["w"].sum()), int(s.regrown["w"].sum()), bool(s.regrown["w"][7, 7])
      (16, 5, True)

    References:
      Evci et al. 2020, arXiv:1911.11134.
    """
    return _dst(sparsity, drop_frac=drop_fraction, update_every=update_every, end_step=end_step,
                allocation=allocation, where=where, key=key, grow="gradient", name="rigl_pruning")


def set_pruning(
    sparsity: float,
    *,
    drop_fraction: float = 0.3,
    update_every: int = 100,
    end_step: int,
    allocation: str = "erk",
    where: Any = None,
    key: jax.Array | None = None,
) -> Compressor:
    """SET: drop the smallest active weights, grow as many at random inactive positions.

    Arguments as :func:`rigl_pruning` (``key`` also drives the growth; SET
    uses Erdős–Rényi allocation, the default here).

    Example:
      >>> import jax
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
      >>> comp = set_pruning(0.5, update_every=1, end_step=10, allocation="uniform")
      >>> s = comp.init(params)
      >>> p, s = comp.update(comp.project(params, s), s, step=1)
      >>> int(s.masks["w"].sum()), int(s.regrown["w"].sum())
      (32, 9)

    References:
      Mocanu et al. 2018, arXiv:1707.04780.
    """
    return _dst(sparsity, drop_frac=drop_fraction, update_every=update_every, end_step=end_step,
                allocation=allocation, where=where, key=key, grow="random", name="set_pruning")


