"""Pruning compressors: magnitude, random, saliency, movement and OBD pruning.

Every factory combines the four axes of :mod:`jaxcomp.prune` — a score, an
allocation across layers, a pattern and a schedule — with a forward mode:

* ``mode="mask"`` (default): the view is ``where(mask, w, 0)``, pruned stored
  weights are set to zero by ``update`` and kept there by ``project``
  (put :func:`jaxcomp.keep_compressed` last in the optax chain).
* ``mode="project"``: the view is the stored params themselves; ``update``
  sets pruned stored weights to zero after *every* optimizer step (and
  ``project`` does so for :func:`jaxcomp.keep_compressed`), so the forward
  pass always sees them at zero without a masking pass. Kept weights train
  exactly as in ``"mask"`` mode; pruned weights' gradients are computed but
  discarded. The fastest mode (one fused pass per step), and correct with or
  without ``keep_compressed``, provided ``update`` runs after every step and
  the params were projected once at the start (``comp.project``).
* ``mode="ste"``: dense weights are kept and trained; the view is masked and
  gradients pass straight through to pruned weights, which can come back
  when masks are recomputed.
* ``mode="sr_ste"``: as ``"ste"`` plus the decay ``sr_ste_decay · w`` on
  pruned weights' gradients (Zhou et al. 2021).

Every factory's state is a :class:`PruningState` (``masks``, ``sparsity``,
``pruned_fraction``, ``count``, ``last_update``, and ``scores``, which only
movement pruning fills); the ``<Factory>State`` names are aliases of it.

Common arguments (keyword-only after the sparsity):

* ``sparsity``: a fraction in ``[0, 1)``, a :class:`~jaxcomp.prune.Schedule`
  (``polynomial_schedule``, ``one_shot_schedule``, ...) or any callable
  ``step -> sparsity`` such as an optax schedule. With
  ``allocation={regex: s}`` it is the sparsity of leaves no regex matches
  (``None``: every selected leaf must match). With an N:M pattern pass
  ``None`` (always on) or a schedule (on while it is > 0).
* ``scope``: ``"layerwise"`` (exact per leaf) or ``"global"`` (one threshold
  over all selected leaves, exact overall).
* ``where``: which leaves (default: float arrays with ``ndim >= 2``).
* ``pattern``: ``"unstructured"``, ``"2:4"``/``NM(n, m, axis)``,
  ``Block(h, w)``, ``"channel"``/``Channel(axis)``.
* ``allocation``: ``"uniform"``, ``"erk"``, ``"er"`` or ``{regex: sparsity}``.
* ``normalize``: per-leaf score normalisation for a global threshold.
* ``update_every``: mask update period when ``sparsity`` is a number or a
  plain callable (default 100); a Schedule carries its own.

``init`` prunes at once (at the schedule's step-0 sparsity) when the score
needs only the weights (magnitude, random); gradient- and Hessian-based
scores start dense and prune at the first update step. ``update`` must be
called with the training step (``step=``) — under ``jit`` the step may be
traced: masks change through ``lax.cond`` without retracing.

References:
  Han et al. 2015, arXiv:1506.02626 · Zhu & Gupta 2017, arXiv:1710.01878 ·
  Evci et al. 2020, arXiv:1911.11134 · Molchanov et al. 2017,
  arXiv:1611.06440 · Sanh et al. 2020, arXiv:2005.07683 · LeCun et al. 1990
  (Optimal Brain Damage) · Zhou et al. 2021, arXiv:2102.04010.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcomp.core.base import Compressor
from jaxcomp.prune import scores as score_fns
from jaxcomp.prune.compressors.engine import PruningState, build_pruning, nm_sparsity_check
from jaxcomp.prune.masks import MaskConfig, apply_masks
from jaxcomp.prune.patterns import NM
from jaxcomp.prune.schedules import Schedule, as_schedule
from jaxcomp.select.selection import Selected

__all__ = [
    "MagnitudePruningState",
    "MovementPruningState",
    "ObdPruningState",
    "PruningState",
    "RandomPruningState",
    "SaliencyPruningState",
    "magnitude_pruning",
    "movement_pruning",
    "obd_pruning",
    "random_pruning",
    "saliency_pruning",
]


# The factories share one state type; these names keep the conventional
# ``<Factory>State`` spelling for code that refers to a factory's state.
MagnitudePruningState = PruningState
RandomPruningState = PruningState
SaliencyPruningState = PruningState
MovementPruningState = PruningState
ObdPruningState = PruningState


def _resolve(name: str, sparsity: Any, *, scope: str, pattern: Any, allocation: Any,
             normalize: Any, update_every: int | None, mode: str,
             sr_ste_decay: Any) -> tuple[Schedule, MaskConfig, Any, bool]:
    config = MaskConfig(scope, pattern, allocation, normalize)
    nm_sparsity_check(config.pattern, sparsity, name)
    has_default = sparsity is not None
    if sparsity is None:
        if isinstance(config.pattern, NM):
            sched = as_schedule(config.pattern.sparsity, update_every=update_every)
        elif isinstance(config.allocation, dict):
            sched = as_schedule(0.0, update_every=update_every)
        else:
            raise ValueError(
                f"{name}: sparsity=None needs allocation={{regex: sparsity}} or an N:M pattern; "
                "pass a fraction in [0, 1) or a schedule"
            )
    else:
        sched = as_schedule(sparsity, update_every=update_every)
    if sr_ste_decay is not None and mode != "sr_ste":
        raise ValueError(f"{name}: sr_ste_decay is only used with mode='sr_ste' (got {mode!r})")
    decay = (2e-4 if sr_ste_decay is None else sr_ste_decay) if mode == "sr_ste" else None
    return sched, config, decay, has_default


def _hook(score_fn: Callable[..., Any], name: str) -> Callable[..., list]:
    """Adapts a public ``score_fn(params, *, grads=None, **extra)`` to the engine."""

    def scorer(sel: Selected, g, extra, state, acc):
        del state, acc
        tree = sel.masked()
        gtree = None if g is None else sel.masked(g)
        out = score_fn(tree, grads=gtree, **extra)
        leaves = jax.tree_util.tree_leaves(out)
        shapes = [jnp.shape(x) for x in sel.sel_leaves]
        if len(leaves) != len(shapes) or any(jnp.shape(a) != s for a, s in zip(leaves, shapes)):
            raise ValueError(
                f"{name}: score_fn must return one score array per pruned leaf with its shape "
                f"(got {len(leaves)} leaves for {len(shapes)}); map over the params it is given "
                "(MaskedNode placeholders are skipped by jax.tree.map)"
            )
        return leaves

    return scorer


def magnitude_pruning(
    sparsity: Any,
    *,
    scope: str = "layerwise",
    where: Any = None,
    pattern: Any = "unstructured",
    allocation: Any = "uniform",
    normalize: str | None = None,
    update_every: int | None = None,
    score_fn: Callable[..., Any] | None = None,
    mode: str = "mask",
    sr_ste_decay: float | None = None,
) -> Compressor:
    """Prunes the weights of smallest magnitude (or of any ``score_fn``).

    Args:
      sparsity: a fraction, schedule or callable (see the module docstring).
      scope, where, pattern, allocation, normalize, update_every: see the
        module docstring.
      score_fn: replaces ``|w|``: ``score_fn(params, *, grads=None, **extra)
        -> score tree`` (``params`` holds MaskedNode at unpruned leaves;
        ``extra`` is what ``update`` receives). With a custom score the
        masks start dense and are computed at update steps.
      mode: ``"mask"``, ``"project"``, ``"ste"`` or ``"sr_ste"``.
      sr_ste_decay: ``λ_w`` for ``mode="sr_ste"`` (default 2e-4).

    Returns:
      A :class:`~jaxcomp.Compressor` with state :class:`PruningState`.

    References:
      Han et al. 2015, arXiv:1506.02626; Zhu & Gupta 2017, arXiv:1710.01878.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp.prune as jp
      >>> params = {"w": jnp.array([[0.1, -3.0], [0.2, 0.5]]), "b": jnp.ones(2)}
      >>> comp = jp.magnitude_pruning(0.5)
      >>> state = comp.init(params)
      >>> comp.apply(params, state)["w"].tolist()
      [[0.0, -3.0], [0.0, 0.5]]
    """
    name = "magnitude_pruning"
    sched, config, decay, has_default = _resolve(
        name, sparsity, scope=scope, pattern=pattern, allocation=allocation,
        normalize=normalize, update_every=update_every, mode=mode, sr_ste_decay=sr_ste_decay)
    if score_fn is None:
        def scorer(sel, g, extra, state, acc):
            return [jnp.abs(x) for x in sel.sel_leaves]
        init_scores = lambda leaves: [jnp.abs(x) for x in leaves]
    else:
        if not callable(score_fn):
            raise TypeError(f"{name}: score_fn must be callable params -> score tree")
        scorer, init_scores = _hook(score_fn, name), None
    return build_pruning(
        name=name, schedule=sched, config=config, where=where,
        mode=mode, decay=decay, scorer=scorer, init_scores=init_scores,
        has_default_sparsity=has_default)


def random_pruning(
    sparsity: Any,
    *,
    key: jax.Array,
    scope: str = "layerwise",
    where: Any = None,
    pattern: Any = "unstructured",
    allocation: Any = "uniform",
    update_every: int | None = None,
    mode: str = "mask",
    sr_ste_decay: float | None = None,
) -> Compressor:
    """Prunes weights at random: the baseline every pruning criterion must beat.

    Masks are nested: at each update, already-pruned weights score lowest, so
    a rising sparsity prunes more and a constant one keeps the mask (the
    noise for update ``c`` comes from ``fold_in(key, c)``).

    Args:
      sparsity: a fraction, schedule or callable.
      key: PRNG key (keyword-only).
      scope, where, pattern, allocation, update_every, mode, sr_ste_decay: as
        in :func:`magnitude_pruning`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcomp.prune as jp
      >>> comp = jp.random_pruning(0.75, key=jax.random.key(0))
      >>> state = comp.init({"w": jnp.ones((4, 4))})
      >>> int(state.masks["w"].sum())
      4
    """
    name = "random_pruning"
    if key is None:
        raise ValueError(f"{name} needs key=jax.random.key(...)")
    sched, config, decay, has_default = _resolve(
        name, sparsity, scope=scope, pattern=pattern, allocation=allocation, normalize=None,
        update_every=update_every, mode=mode, sr_ste_decay=sr_ste_decay)

    def noise(leaves, c, masks=None):
        k = jax.random.fold_in(key, c)
        out = []
        for i, x in enumerate(leaves):
            u = jax.random.uniform(jax.random.fold_in(k, i), jnp.shape(x), jnp.float32)
            out.append(u if masks is None else jnp.where(masks[i], u, -1.0))
        return out

    def scorer(sel, g, extra, state, acc):
        return noise(sel.sel_leaves, state.count + 1, sel.of_masked(state.masks, "the state's masks"))

    return build_pruning(
        name=name, schedule=sched, config=config, where=where,
        mode=mode, decay=decay, scorer=scorer, init_scores=lambda leaves: noise(leaves, 0),
        has_default_sparsity=has_default)


def saliency_pruning(
    sparsity: Any,
    *,
    scope: str = "layerwise",
    where: Any = None,
    pattern: Any = "unstructured",
    allocation: Any = "uniform",
    normalize: str | None = None,
    update_every: int | None = None,
    mode: str = "mask",
    sr_ste_decay: float | None = None,
) -> Compressor:
    """Prunes by first-order Taylor saliency ``|w · g|`` with the ``grads`` given to ``update``.

    Masks start dense; at each update step the gradients passed to
    ``update(..., grads=...)`` (those of the training step) score the weights.

    References:
      Molchanov et al. 2017, arXiv:1611.06440.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp.prune as jp
      >>> comp = jp.saliency_pruning(0.5, update_every=1)
      >>> p = {"w": jnp.array([[1.0, 1.0], [1.0, 1.0]])}
      >>> g = {"w": jnp.array([[0.1, 2.0], [3.0, 0.2]])}
      >>> p, s = comp.update(p, comp.init(p), step=0, grads=g)
      >>> p["w"].tolist()
      [[0.0, 1.0], [1.0, 0.0]]
    """
    name = "saliency_pruning"
    sched, config, decay, has_default = _resolve(
        name, sparsity, scope=scope, pattern=pattern, allocation=allocation,
        normalize=normalize, update_every=update_every, mode=mode, sr_ste_decay=sr_ste_decay)

    def scorer(sel, g, extra, state, acc):
        if g is None:
            raise ValueError(f"{name}.update needs grads= to score the weights")
        return [jnp.abs(w * gi) for w, gi in zip(sel.sel_leaves, g)]

    return build_pruning(
        name=name, schedule=sched, config=config, where=where,
        mode=mode, decay=decay, scorer=scorer, init_scores=None, has_default_sparsity=has_default)


def movement_pruning(
    sparsity: Any,
    *,
    scope: str = "layerwise",
    where: Any = None,
    pattern: Any = "unstructured",
    allocation: Any = "uniform",
    normalize: str | None = None,
    update_every: int | None = None,
    mode: str = "ste",
    sr_ste_decay: float | None = None,
) -> Compressor:
    """Movement pruning: keeps weights moving away from zero, ``S = -Σ_t w_t · g_t``.

    Every ``update`` call adds ``-w · g`` (needs ``grads``) to the scores in
    the state, so call ``update`` every step (``compressor_every=1``); masks
    are recomputed from the accumulated scores at update steps. The default
    mode is ``"ste"`` (Sanh et al.'s hard movement pruning lets gradients
    reach pruned weights, so their scores keep moving); with ``mode="mask"``
    pruned weights are zero and their scores freeze.

    References:
      Sanh, Wolf, Rush 2020, arXiv:2005.07683.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp.prune as jp
      >>> comp = jp.movement_pruning(0.5, update_every=2)
      >>> p = {"w": jnp.array([[1.0, 1.0], [-1.0, -1.0]])}
      >>> g = {"w": jnp.array([[-1.0, 1.0], [1.0, -1.0]])}   # entries 0 and 2 grow in |w|
      >>> s = comp.init(p)
      >>> for t in range(3):
      ...     p, s = comp.update(p, s, step=t, grads=g)
      >>> s.masks["w"].tolist()
      [[True, False], [True, False]]
    """
    name = "movement_pruning"
    sched, config, decay, has_default = _resolve(
        name, sparsity, scope=scope, pattern=pattern, allocation=allocation,
        normalize=normalize, update_every=update_every, mode=mode, sr_ste_decay=sr_ste_decay)

    def accumulate(leaves, g, acc):
        # in float32 whatever the params' dtype: bfloat16 products would round differently
        # eagerly and under jit, and lose the small movements that accumulate
        return [a - w.astype(jnp.float32) * gi.astype(jnp.float32)
                for a, w, gi in zip(acc, leaves, g)]

    def scorer(sel, g, extra, state, acc):
        return acc

    return build_pruning(
        name=name, schedule=sched, config=config, where=where,
        mode=mode, decay=decay, scorer=scorer, init_scores=None, has_default_sparsity=has_default,
        accumulate=accumulate)


def obd_pruning(
    sparsity: Any,
    *,
    loss_fn: Callable[[Any], jax.Array] | None = None,
    hessian_fn: Callable[[Any], Any] | None = None,
    hessian: str = "hutchinson",
    n_samples: int = 8,
    key: jax.Array | None = None,
    scope: str = "layerwise",
    where: Any = None,
    pattern: Any = "unstructured",
    allocation: Any = "uniform",
    normalize: str | None = None,
    update_every: int | None = None,
    mode: str = "mask",
    sr_ste_decay: float | None = None,
) -> Compressor:
    """Optimal Brain Damage: prunes the smallest ``½ h_kk w_k²`` (diagonal Hessian).

    The Hessian diagonal at an update step comes from, in this order:

    1. ``update(..., hessian_diag=tree)`` (a tree like params), e.g. computed
       by the caller with :func:`~jaxcomp.prune.scores.fisher_diag`;
    2. ``hessian_fn(params) -> tree``;
    3. ``loss_fn(params) -> scalar`` (a closure over calibration data),
       evaluated at the masked view: ``hessian="hutchinson"`` estimates the
       diagonal with ``n_samples`` Rademacher probes (needs ``key``; update
       ``c`` uses ``fold_in(key, c)``), ``hessian="exact"`` builds it (small
       models only).

    ``loss_fn``/``hessian_fn`` receive the full params tree: restrict pruning
    with ``where=`` rather than :func:`jaxcomp.masked`. Masks start dense.

    References:
      LeCun, Denker, Solla, Optimal Brain Damage (NeurIPS 1989).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcomp.prune as jp
      >>> curv = jnp.array([[4.0, 0.01], [1.0, 1.0]])
      >>> loss = lambda p: jnp.sum(curv * p["w"] ** 2)              # h = 2 * curv
      >>> comp = jp.obd_pruning(0.25, loss_fn=loss, hessian="exact", update_every=1)
      >>> p = {"w": jnp.ones((2, 2))}
      >>> p, s = comp.update(p, comp.init(p), step=0)
      >>> s.masks["w"].tolist()
      [[True, False], [True, True]]
    """
    name = "obd_pruning"
    if hessian not in ("hutchinson", "exact"):
        raise ValueError(f"{name}: hessian={hessian!r} must be 'hutchinson' or 'exact'")
    if loss_fn is not None and hessian == "hutchinson" and key is None:
        raise ValueError(f"{name}: the Hutchinson estimator needs key=jax.random.key(...) "
                         "(or hessian='exact' for small models)")
    sched, config, decay, has_default = _resolve(
        name, sparsity, scope=scope, pattern=pattern, allocation=allocation,
        normalize=normalize, update_every=update_every, mode=mode, sr_ste_decay=sr_ste_decay)

    def scorer(sel: Selected, g, extra, state, acc):
        params = sel.rebuild(sel.sel_leaves)
        if extra.get("hessian_diag") is not None:
            h = sel.of(extra["hessian_diag"], "hessian_diag")
        elif hessian_fn is not None:
            h = sel.of(hessian_fn(params), "hessian_fn(params)")
        elif loss_fn is not None:
            view_loss = lambda p: loss_fn(apply_masks(p, state.masks))
            if hessian == "exact":
                full = score_fns.exact_hessian_diag(view_loss, params)
            else:
                full = score_fns.hutchinson_diag(view_loss, params, n_samples=n_samples,
                                               key=jax.random.fold_in(key, state.count))
            h = sel.of(full, "the Hessian diagonal")
        else:
            raise ValueError(
                f"{name} needs a Hessian diagonal: pass loss_fn= or hessian_fn= to the factory, "
                "or update(..., hessian_diag=tree)"
            )
        return [0.5 * hi.astype(jnp.float32) * jnp.square(w.astype(jnp.float32))
                for w, hi in zip(sel.sel_leaves, h)]

    return build_pruning(
        name=name, schedule=sched, config=config, where=where,
        mode=mode, decay=decay, scorer=scorer, init_scores=None, has_default_sparsity=has_default)
