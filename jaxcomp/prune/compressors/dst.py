"""Dynamic sparse training: SET and RigL (drop / grow at constant sparsity).

Training starts sparse (random masks at layerwise-uniform or ERK
sparsities) and every ``update_every`` steps ``t`` with ``0 < t <
end_step``, each selected layer drops ``k = round(f(t) · active)`` of its
active weights (the smallest ``|w|``) and grows exactly ``k`` inactive ones
(the just-dropped included): at random (SET) or where the dense gradient
``|∂L/∂w|`` is largest (RigL). The drop fraction decays as
``f(t) = f0/2 · (1 + cos(π t / end_step))``; there are no updates from
``end_step`` on. Dropped = grown per layer, so every layer's sparsity stays
exactly what ``init`` set.

Regrown weights start at exactly zero (RigL's choice: the network function
does not jump). Their optimizer moments should restart too, or the moments
a pruned weight collected meanwhile move it at once:
:func:`~jaxcomp.prune.compressors.optim_reset.reset_regrown` wraps any optax
optimizer to zero them, using the state's ``regrown`` masks.

The growth signal. ``apply`` (the forward view) is the masked weight with a
straight-through gradient (:func:`~jaxcomp.ops.ste.ste_masked_weight`):
its value is ``where(m, w, 0)`` but ``∂view/∂w = 1``, so the gradient of the
loss with respect to the *stored* params, which
:func:`jaxcomp.train.make_train_step` passes to ``update(grads=...)``, is
the dense gradient ``∂L/∂view`` at every position, pruned ones included.
(A plain ``where`` view would give zeros there and RigL could not grow.)
The optimizer therefore also sees dense gradients: put
:func:`jaxcomp.keep_compressed` last in the optax chain so the stored
pruned weights stay exactly zero (``project`` is the constraint).

Selection is sort-free and exact (:func:`~jaxcomp.ops.kth.smallest_k_masks`,
ties by lowest flat index; NaN scores count as 0), the update runs under
``lax.cond`` on the step, and the masks are data: nothing recompiles when
they change. ``make_train_step(compressor_every=c)`` only calls ``update``
on multiples of ``c``, so choose ``update_every`` as a multiple of ``c``.

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
from jaxcomp.core.errors import check_in_range
from jaxcomp.ops.kth import check_finite, is_tracer, num_pruned, smallest_k_masks
from jaxcomp.ops.ste import masked_weight, ste_masked_weight
from jaxcomp.prune.allocation import erk_sparsities
from jaxcomp.prune.compressors.engine import masks_info
from jaxcomp.prune.masks import select_prunable

__all__ = ["DSTState", "drop_fraction", "rigl_pruning", "set_pruning"]

_BIG = float(np.finfo(np.float32).max)


def _finite_score(x: jax.Array) -> jax.Array:
    """``|x|`` in float32 with NaN -> 0 and +inf -> the largest finite float32.

    Keeps the active/inactive separation (by ``±inf``) in the drop and grow
    selections exact whatever the weights or gradients hold.
    """
    a = jnp.abs(x.astype(jnp.float32))
    return jnp.where(jnp.isnan(a), 0.0, jnp.minimum(a, _BIG))


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
    """The cosine-decayed drop fraction ``f(t) = initial/2 · (1 + cos(π t / end_step))``.

    ``f(t) = 0`` for ``t >= end_step`` (no updates there).

    Args:
      step: the training step ``t`` (int, may be traced).
      initial: ``f(0)``, the drop fraction of the first update.
      end_step: ``T_end``, the step from which nothing is dropped.

    Returns:
      ``f(t)`` as a float32 scalar.

    Example:
      >>> [round(float(drop_fraction(t, initial=0.3, end_step=100)), 4) for t in (0, 50, 100, 150)]
      [0.3, 0.15, 0.0, 0.0]

    References:
      Evci et al. 2020, arXiv:1911.11134 (Eq. 1).
    """
    t = jnp.asarray(step, jnp.float32)
    f = 0.5 * initial * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, end_step) / end_step))
    return jnp.where(t < end_step, f, 0.0)


def _check(sparsity, drop_frac, update_every, end_step, allocation, name):
    try:
        check_in_range(f"{name}: sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    except ValueError:
        raise ValueError(f"{name}: sparsity={sparsity!r} must be a fraction of zeros in [0, 1) "
                         "(e.g. 0.9)") from None
    try:
        check_in_range(f"{name}: drop_fraction", drop_frac, 0.0, 1.0, low_inclusive=False)
    except ValueError:
        raise ValueError(f"{name}: drop_fraction={drop_frac!r} must lie in (0, 1] (RigL uses "
                         "0.3)") from None
    for arg, v in (("update_every", update_every), ("end_step", end_step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: {arg}={v!r} must be a positive int (steps)")
    if allocation not in ("uniform", "erk"):
        raise ValueError(f"{name}: allocation={allocation!r} must be 'uniform' or 'erk'")


def _dst(sparsity, *, drop_frac, update_every, end_step, allocation, where, key, grow, name):
    _check(sparsity, drop_frac, update_every, end_step, allocation, name)
    if key is None:
        key = jax.random.key(0)

    def select(params):
        return select_prunable(params, where, name)

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
        return DSTState(masks=sel.masked([~p for p in pruned]),
                        regrown=sel.masked([jnp.zeros(jnp.shape(x), bool) for x in leaves]),
                        count=jnp.zeros((), jnp.int32), last_update=jnp.full((), -1, jnp.int32),
                        key=k_state)

    def apply(params, state):
        sel = select(params)
        ms = sel.of_masked(state.masks, "the state's masks")
        return sel.rebuild([ste_masked_weight(w, m) for w, m in zip(sel.sel_leaves, ms)])

    def project(params, state):
        sel = select(params)
        ms = sel.of_masked(state.masks, "the state's masks")
        return sel.rebuild([masked_weight(w, m) for w, m in zip(sel.sel_leaves, ms)])

    def update(params, state, *, step, grads=None, **extra):
        del extra
        sel = select(params)
        ms = sel.of_masked(state.masks, "the state's masks")
        leaves = sel.sel_leaves
        if grow == "gradient" and grads is None:
            raise ValueError(f"{name}.update needs grads= (RigL grows where |grad| is largest); "
                             "jaxcomp.train.make_train_step passes them")
        g = sel.of(grads, "grads") if grads is not None else None
        step = jnp.asarray(step, jnp.int32)

        def drop_grow():
            f = drop_fraction(step, initial=drop_frac, end_step=end_step)
            ks = [jnp.round(f * jnp.sum(m, dtype=jnp.int32).astype(jnp.float32)).astype(jnp.int32)
                  for m in ms]
            # Drop: the k smallest |w| among the active (inactive rank last, at +inf; NaN
            # weights rank first), so exactly k active weights go.
            drops = smallest_k_masks([jnp.where(m, _finite_score(w), jnp.inf)
                                      for w, m in zip(leaves, ms)], ks)
            after = [m & ~d for m, d in zip(ms, drops)]
            if grow == "gradient":
                gs = [_finite_score(gi) for gi in g]
            else:
                k_grow = jax.random.fold_in(state.key, step)
                gs = [jax.random.uniform(jax.random.fold_in(k_grow, i), jnp.shape(w))
                      for i, w in enumerate(leaves)]
            # Grow: the k largest scores among the inactive (the just-dropped included, as in
            # RigL) = the k smallest of the negated scores, active ones ranked last.
            grows = smallest_k_masks([jnp.where(a, jnp.inf, -s) for a, s in zip(after, gs)], ks)
            return [a | gr for a, gr in zip(after, grows)], grows

        def hold():
            return list(ms), [jnp.zeros(jnp.shape(m), bool) for m in ms]

        do = (step > 0) & (step % update_every == 0) & (step < end_step)
        # Only the masks pass through the cond; the weights are zeroed by a select outside it,
        # which XLA fuses with the rest of the step (weights returned by a cond are
        # materialised on every step).
        if is_tracer(do):
            new, grown = lax.cond(do, drop_grow, hold)
            ws = [jnp.where(do & (gr | ~n), jnp.zeros((), w.dtype), w)
                  for w, n, gr in zip(leaves, new, grown)]
        elif bool(do):
            new, grown = drop_grow()
            ws = [jnp.where(gr | ~n, jnp.zeros((), w.dtype), w)
                  for w, n, gr in zip(leaves, new, grown)]
        else:
            (new, grown), ws = hold(), list(leaves)
        new_state = state._replace(
            masks=sel.masked(new), regrown=sel.masked(grown),
            count=state.count + jnp.asarray(do, jnp.int32),
            last_update=jnp.where(do, step, state.last_update))
        return sel.rebuild(ws), new_state

    def drop_grow_step(step):
        return (step > 0) & (step % update_every == 0) & (step < end_step)

    def due(step):
        # the step after a drop/grow clears `regrown` (the optimizer has reset those moments)
        return drop_grow_step(step) | drop_grow_step(step - 1)

    return Compressor(init, apply, update, project, due)


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

    Every ``update_every`` steps ``t < end_step`` each selected layer drops
    ``round(f(t) · active)`` weights of smallest ``|w|`` and grows as many
    inactive ones with the largest ``|∂L/∂w|`` (the ``grads=`` that
    :func:`jaxcomp.train.make_train_step` passes: dense, thanks to the
    straight-through view, see the module docstring). Grown weights start at
    zero; wrap the optimizer in
    :func:`~jaxcomp.prune.compressors.optim_reset.reset_regrown` to restart their
    moments, and put :func:`jaxcomp.keep_compressed` last in the chain.

    Args:
      sparsity: fraction of each selected layer's weights inactive (the
        overall fraction with ``allocation="erk"``), in ``[0, 1)``.
      drop_fraction: ``f0``, the fraction of active weights replaced at the
        first update, in ``(0, 1]``; decays as ``f0/2 · (1 + cos(π t / end_step))``.
      update_every: steps between drop/grow updates (RigL's ΔT), ``>= 1``.
      end_step: no updates from this step on (RigL: 75% of training).
      allocation: ``"uniform"`` (every layer at ``sparsity``) or ``"erk"``
        (Erdős–Rényi-kernel per-layer sparsities, same total).
      where: which leaves are sparse (default: float arrays with ``ndim >= 2``).
      key: PRNG key of the random initial masks (default ``jax.random.key(0)``,
        so configs without a key are reproducible).

    Returns:
      A :class:`jaxcomp.Compressor` with state :class:`DSTState` and ``project``.

    Raises:
      ValueError: for a sparsity outside ``[0, 1)``, a drop fraction outside
        ``(0, 1]``, a non-positive ``update_every``/``end_step``, an unknown
        allocation, a ``where`` that selects nothing (at ``init``), or
        ``update`` without ``grads=``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
      >>> comp = rigl_pruning(0.75, update_every=1, end_step=10, key=jax.random.key(1))
      >>> s = comp.init(params)
      >>> int(s.masks["w"].sum())
      16
      >>> grads = {"w": jnp.arange(64.0).reshape(8, 8)}    # grow at the largest |g|
      >>> p, s = comp.update(comp.project(params, s), s, step=1, grads=grads)
      >>> int(s.masks["w"].sum()), int(s.regrown["w"].sum()), bool(s.regrown["w"][7, 7])
      (16, 5, True)

    References:
      Evci et al. 2020, Rigging the lottery: making all tickets winners,
      arXiv:1911.11134.
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

    Arguments, state and errors as :func:`rigl_pruning`, except that growth
    needs no gradient: update ``c`` at step ``t`` draws its uniform growth
    scores from ``fold_in(key', t)`` (``key'`` split off ``key`` at
    ``init``), so the same ``key`` gives the same masks. SET uses
    Erdős–Rényi allocation, the default here; the original keeps the drop
    fraction constant (use a large ``end_step`` for a slow decay).

    Example:
      >>> import jax
      >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
      >>> comp = set_pruning(0.5, update_every=1, end_step=10, allocation="uniform",
      ...                    key=jax.random.key(1))
      >>> s = comp.init(params)
      >>> p, s = comp.update(comp.project(params, s), s, step=1)
      >>> int(s.masks["w"].sum()), int(s.regrown["w"].sum())
      (32, 9)

    References:
      Mocanu et al. 2018, Scalable training of artificial neural networks
      with adaptive sparse connectivity inspired by network science,
      arXiv:1707.04780.
    """
    return _dst(sparsity, drop_frac=drop_fraction, update_every=update_every, end_step=end_step,
                allocation=allocation, where=where, key=key, grow="random", name="set_pruning")


