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

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcomp.core.base import Compressor, EmptyState, never_due
from jaxcomp.prune.masks import _split, check_finite_leaf
from jaxcomp.prune.threshold import num_pruned, smallest_k_masks, topk_mask
from jaxcomp.select.paths import is_leaf, path_str

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


def _flat(tree: Any) -> tuple[list[str], list[Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [path_str(kp) for kp, _ in flat], [x for _, x in flat], treedef


def _check_masks(params: Any, masks: Any, what: str) -> tuple[list[str], list[Any], list[Any], Any]:
    paths, leaves, treedef = _flat(params)
    mpaths, mleaves, mdef = _flat(masks)
    if mdef != treedef:
        missing = sorted(set(paths) ^ set(mpaths))
        raise ValueError(f"{what}: masks do not have the params' tree structure"
                         + (f"; paths in only one of them: {missing[:8]}" if missing else "")
                         + ". Build masks from these params (e.g. imp_round_masks(params, None, r)).")
    for p, x, m in zip(paths, leaves, mleaves):
        if jnp.shape(m) != jnp.shape(x):
            raise ValueError(f"{what}: mask '{p}' has shape {jnp.shape(m)}, the parameter "
                             f"{jnp.shape(x)}")
        if jnp.asarray(m).dtype != jnp.bool_:
            raise TypeError(f"{what}: mask '{p}' has dtype {jnp.asarray(m).dtype}; masks are "
                            "bool (True = kept)")
    return paths, leaves, mleaves, treedef


def _rate_for(path: str, rate: float, rates: Mapping[str, float] | None) -> float:
    for pattern, r in (rates or {}).items():
        if re.fullmatch(pattern, path):
            return _check_rate(r, f"rates[{pattern!r}]")
    return rate


def imp_round_masks(
    params: Any,
    masks: Any | None,
    rate: float,
    *,
    where: Any = None,
    rates: Mapping[str, float] | None = None,
) -> Any:
    """One round of iterative magnitude pruning: prune ``rate`` of each leaf's survivors.

    For every selected leaf with ``alive`` surviving weights, exactly
    ``round(rate * alive)`` more weights are pruned: the survivors of
    smallest ``|w|`` (ties: lowest flat index first). Pruned weights stay
    pruned. Thresholds come from :func:`jaxcomp.prune.threshold.smallest_k_masks`
    (no sort); works under ``jit``.

    Args:
      params: the trained parameters of this round.
      masks: the current bool keep-masks (params structure), or None for
        the first round (everything alive).
      rate: fraction of the survivors pruned, in ``(0, 1)``.
      where: which leaves to prune (default: float arrays with ``ndim >= 2``);
        the others get all-True masks.
      rates: optional ``{regex: rate}`` per path (first full match wins),
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
    treedef, leaves, paths, flags = _split(params, where, "imp_round_masks")
    if masks is None:
        mleaves = [jnp.ones(jnp.shape(x), bool) for x in leaves]
    else:
        _, _, mleaves, _ = _check_masks(params, masks, "imp_round_masks")
    sel = [i for i, f in enumerate(flags) if f]
    scores, ks = [], []
    for i in sel:
        check_finite_leaf(paths[i], leaves[i])
        m = jnp.asarray(mleaves[i])
        r = _rate_for(paths[i], rate, rates)
        # Already-pruned positions score -1 (below every |w|), so they are the first picked.
        scores.append(jnp.where(m, jnp.abs(jnp.asarray(leaves[i], jnp.float32)), -1.0))
        alive = jnp.sum(m, dtype=jnp.int32)
        try:
            n_alive = int(alive)
            ks.append(m.size - n_alive + num_pruned(r, n_alive))
        except jax.errors.ConcretizationTypeError:
            ks.append(m.size - alive + jnp.round(r * alive).astype(jnp.int32))
    pruned = smallest_k_masks(scores, ks)
    out = [jnp.asarray(m) for m in mleaves]
    for i, p in zip(sel, pruned):
        out[i] = ~p
    return jax.tree_util.tree_unflatten(treedef, out)


def rewind(params: Any, masks: Any) -> Any:
    """Survivors reset to ``params`` (θ0 or an early iterate), pruned weights exactly 0.

    Example:
      >>> import jax.numpy as jnp
      >>> rewind({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})["w"].tolist()
      [1.0, 0.0]
    """
    _paths, leaves, mleaves, treedef = _check_masks(params, masks, "rewind")
    out = [jnp.where(m, x, jnp.zeros_like(x)) for x, m in zip(leaves, mleaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


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
    paths, mleaves, treedef = _flat(masks)
    out = []
    for i, (p, m) in enumerate(zip(paths, mleaves)):
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_:
            raise TypeError(f"random_ticket: mask '{p}' has dtype {m.dtype}; masks are bool")
        u = jax.random.uniform(jax.random.fold_in(key, i), m.shape)
        out.append(topk_mask(u, jnp.sum(m, dtype=jnp.int32), check_finite=False))
    return jax.tree_util.tree_unflatten(treedef, out)


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
    _, mleaves, mdef = _flat(masks)
    for m in mleaves:
        if jnp.asarray(m).dtype != jnp.bool_:
            raise TypeError("fixed_mask: masks must be bool trees (True = kept)")

    def _mask(params: Any) -> Any:
        _paths, leaves, treedef = _flat(params)
        if treedef != mdef:
            raise ValueError("fixed_mask: params do not have the masks' tree structure; build "
                             "the masks from these params")
        out = [jnp.where(m, x, jnp.zeros_like(x)) for x, m in zip(leaves, mleaves)]
        return jax.tree_util.tree_unflatten(treedef, out)

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
    _, _, _paths, flags = _split(params, where, "lottery_ticket")
    mleaves = jax.tree_util.tree_leaves(masks)
    n = sum(int(m.size) for m, f in zip(mleaves, flags) if f)
    kept = sum(int(jnp.sum(m)) for m, f in zip(mleaves, flags) if f)
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
    _split(params_init, where, "lottery_ticket")  # validates where early
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

