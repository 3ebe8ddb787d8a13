"""The machinery shared by every pruning compressor: selection, masks, updates.

A pruning compressor is built from four independent parts (scores,
allocation, pattern, schedule) plus a *mode* for the forward view
(:mod:`jaxcomp.ops.ste`). :func:`build_pruning` assembles them into a
:class:`~jaxcomp.Compressor`:

* ``init(params)`` resolves ``where=``, validates shapes against the
  pattern, and builds the masks (pruned at the schedule's step-0 sparsity
  when the score needs nothing but the params; otherwise dense).
* ``apply(params, state)`` is the masked view (gradients by mode).
* ``update(params, state, *, step, grads=None, **extra)`` accumulates
  running scores, recomputes masks when ``schedule.is_update_step(step)``
  (``lax.cond`` under ``jit``, so new masks never retrace; they are scored
  on the stored weights as projected so far) and zeros the newly pruned
  stored weights at those steps. In mask mode the stored weights are left
  alone between updates (:func:`jaxcomp.keep_compressed` keeps them zero; the
  view is masked either way); in project mode they are re-zeroed with the
  current masks on every step, a select that XLA fuses into the optimizer's
  update.
* ``due(step)`` is the schedule's update check (``None`` for scores that
  accumulate on every step), so loops run ``update`` only when it changes
  something; ``reached(state)`` says whether the schedule's final sparsity is
  in effect.
* ``project(params, state)`` (mask and project modes) zeros pruned stored
  weights; with
  :func:`jaxcomp.keep_compressed` last in an optax chain it keeps them exactly
  zero through momentum and weight decay.

Masks are stored in the state with the params' structure; leaves that are
not pruned hold :class:`~jaxcomp.MaskedNode`, so the mask tree's canonical
paths are the params' paths and ``__jaxcomp_info__`` reports per-path
densities to :func:`jaxcomp.metrics.analyze`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

from jaxcomp.core.base import Compressor, EmptyState
from jaxcomp.core.info import LeafInfo
from jaxcomp.ops.kth import check_finite, is_tracer
from jaxcomp.ops.ste import MODES, mask_view, masked_weight
from jaxcomp.prune.masks import MaskConfig, compute_keep, select_prunable
from jaxcomp.prune.patterns import NM
from jaxcomp.prune.schedules import Schedule
from jaxcomp.select.paths import leaves_with_paths
from jaxcomp.select.selection import Selected

__all__ = ["PruningState", "build_pruning", "masks_info"]

# scorer(selection, selected_grads | None, extra, state, accumulated | None)
#   -> list of score arrays, one per selected leaf
Scorer = Callable[[Selected, list | None, dict, Any, list | None], list]


def masks_info(masks: Any) -> dict[str, LeafInfo]:
    """``{path: LeafInfo(density=kept fraction)}`` for the mask leaves of a state."""
    out = {}
    for p, m in leaves_with_paths(masks):
        if is_tracer(m):
            raise ValueError("masks_info needs concrete masks (call it outside jit)")
        out[p] = LeafInfo(density=float(np.mean(np.asarray(m))) if np.size(m) else 1.0)
    return out


class PruningState(NamedTuple):
    """The state of every score-based pruning compressor (magnitude, random, saliency,
    movement, OBD pruning).

    Attributes:
      masks: bool keep-masks with the params' structure, shapes and
        shardings; :class:`~jaxcomp.MaskedNode` at leaves not pruned.
      sparsity: the schedule's target at the last mask update (float32).
      pruned_fraction: fraction of the selected weights the masks prune.
      count: number of mask updates so far (int32).
      last_update: step of the last mask update (-1: none yet).
      scores: the running scores of a factory whose scores accumulate over
        steps (movement pruning's ``-Σ w·g``: float32, the masks' structure);
        an empty :class:`~jaxcomp.EmptyState` for the others.

    ``__jaxcomp_info__`` reports the kept fraction per parameter path to
    :func:`jaxcomp.metrics.analyze` and :func:`jaxcomp.compression_info`.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp.prune as jp
      >>> s = jp.magnitude_pruning(0.5).init({"w": jnp.array([[1.0, -2.0], [0.1, 3.0]])})
      >>> type(s).__name__, s.masks["w"].tolist(), s.scores
      ('PruningState', [[False, True], [False, True]], EmptyState())
      >>> s.__jaxcomp_info__()["w"].density
      0.5
    """

    masks: Any
    sparsity: jax.Array
    pruned_fraction: jax.Array
    count: jax.Array
    last_update: jax.Array
    scores: Any = EmptyState()

    def __jaxcomp_info__(self):
        return masks_info(self.masks)


def build_pruning(
    *,
    name: str,
    schedule: Schedule,
    config: MaskConfig,
    where: Any,
    mode: str,
    decay: Any,
    scorer: Scorer,
    init_scores: Callable[[list], list] | None,
    has_default_sparsity: bool,
    accumulate: Callable[[list, list, list], list] | None = None,
    check_finite_params: bool = True,
) -> Compressor:
    """Assembles a pruning compressor with a :class:`PruningState` (see the module docstring).

    ``accumulate(leaves, grads, scores) -> scores`` makes the state's
    ``scores`` running sums updated on every ``update`` call (and then the
    compressor has no ``due``); without it ``scores`` stays empty.
    """
    if mode not in MODES:
        raise ValueError(f"{name}: mode={mode!r} must be one of {MODES}")
    if mode != "sr_ste" and decay is not None:
        raise ValueError(f"{name}: sr_ste_decay only applies to mode='sr_ste'")

    def select(params):
        sel = select_prunable(params, where, name)
        config.check(sel.sel_paths, [tuple(np.shape(x)) for x in sel.sel_leaves])
        pm = config.path_map(sel.sel_paths, has_default_sparsity)
        return sel, pm

    def init(params):
        sel, pm = select(params)
        leaves = sel.sel_leaves
        if check_finite_params:
            check_finite({p: x for p, x in zip(sel.sel_paths, leaves)}, f"{name}: params")
        step0 = jnp.zeros((), jnp.int32)
        if init_scores is not None:
            s0 = _checked_sparsity(name, schedule(step0), step0)
            keeps, frac = compute_keep(config, init_scores(leaves), sel.sel_paths, s0,
                                       step=step0, path_map=pm)
        else:
            s0 = jnp.zeros((), jnp.float32)
            keeps = [jnp.ones_like(x, dtype=bool) for x in leaves]
            frac = jnp.zeros((), jnp.float32)
        fields = {"masks": sel.masked(keeps), "sparsity": jnp.asarray(s0, jnp.float32),
                  "pruned_fraction": jnp.asarray(frac, jnp.float32),
                  "count": jnp.zeros((), jnp.int32),
                  "last_update": jnp.full((), -1, jnp.int32)}
        if accumulate is not None:
            fields["scores"] = sel.masked([jnp.zeros(jnp.shape(x), jnp.float32)
                                               for x in leaves])
        return PruningState(**fields)

    def apply(params, state):
        sel, _ = select(params)
        ms = sel.of_masked(state.masks, "the state's masks")
        return sel.rebuild([mask_view(w, m, mode, decay) for w, m in zip(sel.sel_leaves, ms)])

    def update(params, state, *, step, grads=None, **extra):
        sel, pm = select(params)
        ms = sel.of_masked(state.masks, "the state's masks")
        leaves = sel.sel_leaves
        g = None if grads is None else sel.of(grads, "grads")
        step = jnp.asarray(step, jnp.int32)
        fields = {}
        acc = None
        if accumulate is not None:
            if g is None:
                raise ValueError(f"{name}.update needs grads= (scores accumulate every update)")
            acc = accumulate(leaves, g, sel.of_masked(state.scores, "the state's scores"))
            fields["scores"] = sel.masked(acc)

        if mode == "project":
            # The optimizer moved the pruned weights: zero them with the current masks. XLA
            # fuses this select into the optimizer's update of the same weights (the masks are
            # inputs of the step), so it costs no pass of its own.
            leaves = [masked_weight(w, m) for w, m in zip(leaves, ms)]
        # mask and project modes route the weights through the cond: the untaken branch
        # passes them through without a copy, and the update branch scores the weights as
        # they are stored and zeros the newly pruned ones (one pass, on update steps only).
        carried = mode in ("mask", "project")

        def recompute(ws):
            scores = scorer(sel.with_selected(ws) if carried else sel, g, extra, state, acc)
            keeps, frac = compute_keep(config, scores, sel.sel_paths, s_now, step=step,
                                       path_map=pm)
            if carried:
                ws = [masked_weight(w, k) for w, k in zip(ws, keeps)]
            return (list(keeps), jnp.asarray(s_now, jnp.float32),
                    jnp.asarray(frac, jnp.float32), list(ws))

        def keep(ws):
            # Between mask updates the stored weights are left alone in mask mode: the forward
            # view is masked anyway, and jaxcomp.keep_compressed keeps them exactly zero.
            return list(ms), state.sparsity, state.pruned_fraction, list(ws)

        s_now = schedule(step)
        do = _valid_sparsity_guard(name, s_now, step, schedule.is_update_step(step))
        operand = list(leaves) if carried else []
        if is_tracer(do):
            keeps, s, frac, new_leaves = lax.cond(do, recompute, keep, operand)
        else:  # eager call: no need to compile both branches
            keeps, s, frac, new_leaves = recompute(operand) if bool(do) else keep(operand)
        do_i = jnp.asarray(do, jnp.int32)
        fields.update(masks=sel.masked(keeps), sparsity=s, pruned_fraction=frac,
                      count=state.count + do_i,
                      last_update=jnp.where(do, step, state.last_update))
        new_state = state._replace(**fields)
        if carried:
            params = sel.rebuild(new_leaves)
        return params, new_state

    project = None
    if mode in ("mask", "project"):

        def project(params, state):
            sel, _ = select(params)
            ms = sel.of_masked(state.masks, "the state's masks")
            return sel.rebuild([masked_weight(w, m) for w, m in zip(sel.sel_leaves, ms)])

    due = None  # scores that accumulate change the state on every step
    if accumulate is None:

        def due(step):
            if isinstance(step, (jax.Array, jax.core.Tracer)):
                return schedule.is_update_step(step)
            return schedule.due(step)

    reached = None
    if schedule.final is not None:
        final = np.float32(schedule.final)

        def reached(state):
            # the sparsity in effect at the last mask update is the schedule's final one
            return state.sparsity >= final

    return Compressor(init, apply, update, project, due, reached)


def _checked_sparsity(name: str, s: jax.Array, step: jax.Array) -> jax.Array:
    """``s`` at ``init``; a traced value outside ``[0, 1)`` becomes 0 (dense) and is reported
    to ``checkify`` (a concrete one is refused by the mask functions)."""
    if not is_tracer(s):
        return s
    valid = (s >= 0.0) & (s < 1.0)
    checkify.debug_check(valid, f"{name}: the sparsity schedule gives {{s}} at step {{t}}, "
                         "outside [0, 1); the masks stay dense", s=s, t=step)
    return jnp.where(valid, s, jnp.zeros_like(s))


def _valid_sparsity_guard(name: str, s: jax.Array, step: jax.Array, do: Any) -> Any:
    """Refuses a sparsity outside ``[0, 1)`` (or NaN) at an update step.

    Concrete: a ``ValueError`` naming the step and the value. Traced (under
    ``jit``, where nothing can be raised): the update is skipped, so the
    masks keep their last valid value, and a ``checkify`` check reports it to
    callers that run the step under :func:`jax.experimental.checkify.checkify`.
    """
    valid = (s >= 0.0) & (s < 1.0)  # False for NaN
    if not (is_tracer(valid) or is_tracer(do)):
        if bool(do) and not bool(valid):
            raise ValueError(
                f"{name}: the sparsity schedule gives {float(s)!r} at step {int(step)}; a "
                "sparsity must lie in [0, 1) (1 would prune every weight). Fix the schedule "
                "(optax schedules are not clipped)."
            )
        return do
    checkify.debug_check(valid | ~do, f"{name}: the sparsity schedule gives {{s}} at step "
                         "{t}, outside [0, 1); the mask update was skipped", s=s, t=step)
    return do & valid


def nm_sparsity_check(pattern: Any, sparsity: Any, name: str) -> None:
    """Rejects a constant sparsity that contradicts an N:M pattern."""
    if isinstance(pattern, NM) and isinstance(sparsity, (int, float)) and not isinstance(
            sparsity, bool) and sparsity not in (0, pattern.sparsity):
        raise ValueError(
            f"{name}: {pattern} prunes exactly 1 - n/m = {pattern.sparsity:g}; got sparsity="
            f"{sparsity!r}. Pass None (always on) or a schedule (N:M is on while it is > 0)."
        )
