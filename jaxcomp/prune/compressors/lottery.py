"""Lottery tickets: iterative magnitude pruning with rewinding.

A round of iterative magnitude pruning (IMP) trains the masked network,
then prunes a fraction ``rate`` of the weights that *survive* in every
selected leaf (smallest magnitudes first) and resets the survivors to their
initial values θ0 — or to an early iterate θk of the dense run ("rewinding",
Frankle et al. 2020) — before the next round. After ``r`` rounds a leaf
keeps ``(1 - rate)^r`` of its weights (up to rounding per round).

* :func:`imp_round_masks` — one pruning round on a mask tree (exact counts:
  ``round(rate * alive)`` more zeros per leaf, ties broken by index, no sort).
* :func:`rewind` — survivors reset to the rewind point, pruned weights 0.
* :func:`random_ticket` — the control: the same number of survivors per
  leaf at random positions.
* :func:`fixed_mask` — a :class:`jaxcomp.Compressor` that holds a mask fixed
  during a round's training (masked view, ``project`` for
  :func:`jaxcomp.keep_compressed`).
* :func:`lottery_ticket` — the driver over rounds, around a user
  ``train_fn(params, masks)``.

Masks are bool trees with the params' structure; leaves outside ``where``
are all-True, as :func:`jaxcomp.prune.magnitude_mask` returns them.

References:
  Frankle & Carbin 2019, The lottery ticket hypothesis, arXiv:1803.03635.
  Frankle, Dziugaite, Roy & Carbin 2020, Linear mode connectivity and the
  lottery ticket hypothesis (rewinding), arXiv:1912.05671.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcomp.core.base import Compressor, EmptyState, never_due
from jaxcomp.ops.kth import num_pruned, smallest_k_masks, topk_mask
from jaxcomp.prune.masks import check_finite_leaf, select_prunable
from jaxcomp.select.leafrules import per_leaf
from jaxcomp.select.paths import is_leaf
from jaxcomp.select.selection import Selected, flatten

__all__ = [
    "LotteryResult",
    "fixed_mask",
    "imp_round_masks",
    "lottery_ticket",
    "random_ticket",
    "rewind",
]


def _check_rate(rate: Any, name: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1), got {rate!r}")
    if not 0.0 < float(rate) < 1.0:
        raise ValueError(f"{name}={rate!r} must lie in (0, 1): the fraction of the surviving "
                         "weights pruned in each round (Frankle & Carbin use 0.2)")
    return float(rate)


_MASKS_FIX = ("Masks must have the params' tree structure and shapes: build them from these "
              "params (e.g. imp_round_masks(params, None, r)).")


def _all(tree: Any, what: str) -> Selected:
    return flatten(tree, True, what=what, allow_empty=True)


def _check_bool(what: str, paths: list[str], mleaves: list[Any]) -> None:
    for p, m in zip(paths, mleaves):
        if jnp.asarray(m).dtype != jnp.bool_:
            raise TypeError(f"{what}: mask '{p}' has dtype {jnp.asarray(m).dtype}; masks are "
                            "bool (True = kept)")


def _check_masks(params: Any, masks: Any, what: str) -> tuple[Selected, list[Any]]:
    """Every leaf of ``params`` and the masks' leaves (same paths and shapes, bool)."""
    sel = _all(params, what)
    mleaves = sel.leaves_of(masks, "masks", fix=_MASKS_FIX)
    _check_bool(what, sel.paths, mleaves)
    return sel, mleaves


def imp_round_masks(
    params: Any,
    masks: Any | None,
    rate: float,
    *,
    where: Any = None,
    rates: Any = None,
) -> Any:
    """One round of iterative magnitude pruning: prune ``rate`` of each leaf's survivors.

    For every selected leaf with ``alive`` surviving weights, exactly
    ``round(rate * alive)`` more weights are pruned: the survivors of
    smallest ``|w|`` (ties: lowest flat index first). Pruned weights stay
    pruned. Thresholds come from :func:`jaxcomp.ops.kth.smallest_k_masks`
    (no sort); works under ``jit``.

    Args:
      params: the trained parameters of this round.
      masks: the current bool keep-masks (params structure), or None for
        the first round (everything alive).
      rate: fraction of the survivors pruned, in ``(0, 1)``.
      where: which leaves to prune (default: float arrays with ``ndim >= 2``);
        the others get all-True masks.
      rates: optional per-leaf rates in any :func:`jaxcomp.select.per_leaf`
        form, usually ``{regex: rate}`` (first full match wins, unmatched
        leaves take ``rate``, every pattern must match a selected leaf),
        e.g. ``{r".*fc3/kernel": 0.1}`` for the output layer at half rate as
        in Frankle & Carbin.

    Returns:
      The new bool mask tree.

    Raises:
      ValueError: rate outside (0, 1), masks that do not match params, a
        where that selects nothing, NaN/Inf in a selected leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"w": jnp.array([[0.1, -0.5, 0.3, 0.9, -0.2]])}
      >>> m1 = imp_round_masks(p, None, 0.4)            # 2 of 5 pruned
      >>> m1["w"].tolist()
      [[False, True, True, True, False]]
      >>> imp_round_masks(p, m1, 0.4)["w"].tolist()     # round(0.4 * 3) = 1 more
      [[False, True, False, True, False]]

    References:
      Frankle & Carbin 2019, arXiv:1803.03635.
    """
    rate = _check_rate(rate, "rate")
    sel = select_prunable(params, where, "imp_round_masks")
    if masks is None:
        mleaves = [jnp.ones(jnp.shape(x), bool) for x in sel.leaves]
    else:
        mleaves = sel.leaves_of(masks, "masks", fix=_MASKS_FIX)
        _check_bool("imp_round_masks", sel.paths, mleaves)
    per_rate = per_leaf({} if rates is None else rates, sel, default=rate, what="rates",
                        noun="selected parameter", validate=_check_rate)
    scores, ks = [], []
    for i, r in zip(sel.idx, per_rate):
        check_finite_leaf(sel.paths[i], sel.leaves[i])
        m = jnp.asarray(mleaves[i])
        # Already-pruned positions score -1 (below every |w|), so they are the first picked.
        scores.append(jnp.where(m, jnp.abs(jnp.asarray(sel.leaves[i], jnp.float32)), -1.0))
        alive = jnp.sum(m, dtype=jnp.int32)
        try:
            n_alive = int(alive)
            ks.append(m.size - n_alive + num_pruned(r, n_alive))
        except jax.errors.ConcretizationTypeError:
            ks.append(m.size - alive + jnp.round(r * alive).astype(jnp.int32))
    pruned = smallest_k_masks(scores, ks)
    return sel.rebuild([~p for p in pruned], base=[jnp.asarray(m) for m in mleaves])


def rewind(params: Any, masks: Any) -> Any:
    """Survivors reset to ``params`` (θ0 or an early iterate), pruned weights exactly 0.

    Example:
      >>> import jax.numpy as jnp
      >>> rewind({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})["w"].tolist()
      [1.0, 0.0]
    """
    sel, mleaves = _check_masks(params, masks, "rewind")
    return sel.rebuild([jnp.where(m, x, jnp.zeros_like(x)) for x, m in zip(sel.leaves, mleaves)])


def random_ticket(masks: Any, *, key: jax.Array) -> Any:
    """Masks with the same number of survivors per leaf, at uniformly random positions.

    The control of the lottery-ticket experiments (random pruning at the
    ticket's layerwise sparsity). All-True leaves stay all-True.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = {"w": jnp.array([True, False, False, True, False])}
      >>> r = random_ticket(m, key=jax.random.key(0))
      >>> int(r["w"].sum())
      2
    """
    sel = _all(masks, "random_ticket")
    out = []
    for i, (p, m) in enumerate(zip(sel.paths, sel.leaves)):
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_:
            raise TypeError(f"random_ticket: mask '{p}' has dtype {m.dtype}; masks are bool")
        u = jax.random.uniform(jax.random.fold_in(key, i), m.shape)
        out.append(topk_mask(u, jnp.sum(m, dtype=jnp.int32), check_finite=False))
    return sel.rebuild(out)


def fixed_mask(masks: Any) -> Compressor:
    """A compressor that holds ``masks`` fixed: masked forward view and a ``project``.

    With ``jaxcomp.keep_compressed(fixed_mask(m))`` last in the optax chain,
    pruned stored weights stay exactly zero under any optimizer (weight decay
    included); the masked view makes their gradients zero. ``update`` does
    nothing: the masks change only between lottery rounds.

    Example:
      >>> import jax.numpy as jnp
      >>> comp = fixed_mask({"w": jnp.array([True, False])})
      >>> comp.apply({"w": jnp.array([3.0, 4.0])}, comp.init(None))["w"].tolist()
      [3.0, 0.0]
    """
    msel = _all(masks, "fixed_mask")
    _check_bool("fixed_mask", msel.paths, msel.leaves)

    def _mask(params: Any) -> Any:
        sel = _all(params, "fixed_mask")
        mleaves = sel.leaves_of(masks, "masks",
                                fix="Build the masks from these params (the same tree structure).")
        return sel.rebuild([jnp.where(m, x, jnp.zeros_like(x))
                            for x, m in zip(sel.leaves, mleaves)])

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def apply(params: Any, state: Any) -> Any:
        del state
        return _mask(params)

    def update(params: Any, state: Any, *, step: Any, grads: Any = None, **extra: Any):
        del step, grads, extra
        return _mask(params), state

    def project(params: Any, state: Any) -> Any:
        del state
        return _mask(params)

    return Compressor(init, apply, update, project, due=never_due)


class LotteryResult(NamedTuple):
    """What :func:`lottery_ticket` found, one entry per round (round 0 = dense).

    Attributes:
      masks: the mask tree each round trained with.
      params: the trained params of each round.
      sparsity: the fraction of selected weights pruned in each round.
      rewind_params: the rewind point used (θ0 or the early iterate).
    """

    masks: list
    params: list
    sparsity: list
    rewind_params: Any


def _sparsity(masks: Any, where: Any, params: Any) -> float:
    ms = select_prunable(params, where, "lottery_ticket").of(masks, "masks", fix=_MASKS_FIX)
    n = sum(int(m.size) for m in ms)
    kept = sum(int(jnp.sum(m)) for m in ms)
    return 1.0 - kept / max(n, 1)


def lottery_ticket(
    train_fn: Callable[[Any, Any], Any],
    params_init: Any,
    *,
    rounds: int,
    rate: float = 0.2,
    rates: Mapping[str, float] | None = None,
    where: Any = None,
    callback: Callable[[int, Any, Any], None] | None = None,
) -> LotteryResult:
    """Iterative magnitude pruning with rewinding, over ``rounds`` pruning rounds.

    Round 0 trains the dense network: ``train_fn(params_init, all_true_masks)``
    returns the trained params, or ``(trained, early)`` where ``early`` is
    the iterate θk to rewind to (rewinding, Frankle et al. 2020); otherwise
    the survivors are rewound to ``params_init`` (θ0). Each following round
    prunes ``rate`` of the survivors (:func:`imp_round_masks`), rewinds and
    trains again with the masks fixed (use :func:`fixed_mask` in
    ``train_fn``). ``rounds + 1`` trainings in all.

    Args:
      train_fn: ``(params, masks) -> trained`` or ``(trained, early)``.
      params_init: θ0.
      rounds: number of pruning rounds (≥ 1).
      rate: fraction of the survivors pruned per round, in ``(0, 1)``.
      rates: per-path rates ``{regex: rate}``.
      where: which leaves are pruned.
      callback: called as ``callback(round, masks, trained)`` after each
        training.

    Returns:
      :class:`LotteryResult`.

    Example:
      >>> import jax.numpy as jnp
      >>> def train(p, m):                     # "training" that doubles the weights
      ...     return rewind(jax.tree.map(lambda x: 2 * x, p), m)
      >>> p0 = {"w": jnp.arange(1.0, 11.0).reshape(2, 5)}
      >>> res = lottery_ticket(train, p0, rounds=2, rate=0.5)
      >>> res.sparsity                         # 5 pruned, then round(0.5 * 5) = 2 more
      [0.0, 0.5, 0.7]
      >>> res.params[-1]["w"].tolist()
      [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 16.0, 18.0, 20.0]]

    References:
      Frankle & Carbin 2019, arXiv:1803.03635; Frankle et al. 2020,
      arXiv:1912.05671.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be a positive int")
    rate = _check_rate(rate, "rate")
    if not callable(train_fn):
        raise TypeError("train_fn must be callable as train_fn(params, masks)")
    select_prunable(params_init, where, "lottery_ticket")  # validates where early
    masks = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params_init, is_leaf=is_leaf)
    all_masks, all_params, sparsity = [], [], []
    rewind_point = params_init
    start = params_init
    for r in range(rounds + 1):
        out = train_fn(start, masks)
        if isinstance(out, tuple) and len(out) == 2:
            trained, early = out
            if r == 0:
                rewind_point = early
        else:
            trained = out
        all_masks.append(masks)
        all_params.append(trained)
        sparsity.append(round(_sparsity(masks, where, params_init), 6))
        if callback is not None:
            callback(r, masks, trained)
        if r == rounds:
            break
        try:
            masks = imp_round_masks(trained, masks, rate, where=where, rates=rates)
        except ValueError as e:
            raise ValueError(f"lottery_ticket round {r}: {e}") from e
        start = rewind(rewind_point, masks)
    return LotteryResult(all_masks, all_params, sparsity, rewind_point)

