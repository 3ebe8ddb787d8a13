"""Resetting optimizer moments of regrown weights, for any optax optimizer.

Dynamic sparse training grows new connections at zero; their first moment
(momentum), second moment (Adam's ν), accumulated gradients (``MultiSteps``)
and so on should restart from zero too, or the stale history of a weight
that was pruned long ago moves it at once. optax states are arbitrary
pytrees (``ScaleByAdamState``, ``TraceState``, ``InjectHyperparamsState``,
``MultiStepsState``, ``MaskedState``, chains of them), so instead of a
whitelist of state types the functions here walk the whole state and
recognise *moment trees by path and shape*: a state leaf whose key path
ends with a parameter's path (``…/mu/fc1/kernel`` ends with
``fc1/kernel``) and whose shape equals that parameter's is a per-parameter
moment, zeroed where ``reset`` is True. Everything else (step counts,
learning rates, scalars) is left alone.

* :func:`reset_optimizer_state` — the function.
* :func:`reset_regrown` — wraps an optax optimizer so it resets moments at
  the ``regrown`` masks of a :class:`~jaxcomp.prune.compressors.dst.DSTState`
  found in the ``compressor_state`` it is given (as
  :func:`jaxcomp.train.make_train_step` passes it), once per drop/grow update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcomp.core.base import MaskedNode
from jaxcomp.select.paths import is_leaf, leaves_with_paths, path_str

__all__ = ["ResetRegrownState", "moment_paths", "reset_optimizer_state", "reset_regrown"]


def _reset_map(params: Any, reset: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    shapes = {p: tuple(jnp.shape(x)) for p, x in leaves_with_paths(params)}
    out = {}
    for p, m in leaves_with_paths(reset):
        if isinstance(m, MaskedNode) or m is None:
            continue
        if p not in shapes:
            raise ValueError(f"reset_optimizer_state: reset has path '{p}' that params lack")
        if tuple(jnp.shape(m)) != shapes[p]:
            raise ValueError(f"reset_optimizer_state: reset '{p}' has shape {jnp.shape(m)}, the "
                             f"parameter {shapes[p]}")
        out[p] = (shapes[p], m)
    return out


def _match(opt_path: str, shape: tuple[int, ...], targets: dict) -> str | None:
    best = None
    for p, (pshape, _) in targets.items():
        suffix = p == "" or opt_path == p or opt_path.endswith("/" + p)  # "": a bare array
        if (pshape == shape and suffix
                and (best is None or len(p) > len(best))):
            best = p
    return best


def moment_paths(opt_state: Any, params: Any) -> dict[str, str]:
    """``{optimizer-state path: parameter path}`` of the leaves recognised as moments.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(3)}
      >>> sorted(moment_paths(optax.adam(1e-3).init(params), params))
      ['0/mu/w', '0/nu/w']
    """
    targets = {p: (tuple(jnp.shape(x)), None) for p, x in leaves_with_paths(params)}
    out = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_leaf)[0]:
        p = path_str(kp)
        hit = _match(p, tuple(jnp.shape(leaf)), targets) if hasattr(leaf, "shape") else None
        if hit is not None and jnp.ndim(leaf) > 0:
            out[p] = hit
    return out


def reset_optimizer_state(opt_state: Any, params: Any, reset: Any) -> Any:
    """Zeros every per-parameter moment of ``opt_state`` where ``reset`` is True.

    Args:
      opt_state: any optax state pytree.
      params: the parameters (paths and shapes identify the moments).
      reset: bool tree with the params' structure (``MaskedNode`` or None
        at leaves to leave alone), True where moments restart.

    Returns:
      The state with the same structure; only matching leaves change.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(3)}
      >>> tx = optax.adam(1e-2)
      >>> s = tx.init(params)
      >>> _, s = tx.update({"w": jnp.ones(3)}, s)
      >>> s = reset_optimizer_state(s, params, {"w": jnp.array([False, True, False])})
      >>> s[0].mu["w"].tolist(), int(s[0].count)
      ([0.10000000149011612, 0.0, 0.10000000149011612], 1)
    """
    targets = _reset_map(params, reset)
    if not targets:
        return opt_state

    def fix(kp, leaf):
        if not hasattr(leaf, "shape") or jnp.ndim(leaf) == 0:
            return leaf
        hit = _match(path_str(kp), tuple(jnp.shape(leaf)), targets)
        if hit is None:
            return leaf
        return jnp.where(targets[hit][1], jnp.zeros((), leaf.dtype), leaf)

    return jax.tree_util.tree_map_with_path(fix, opt_state, is_leaf=is_leaf)


class ResetRegrownState(NamedTuple):
    """State of :func:`reset_regrown`: the wrapped state and the last handled update count."""

    inner: Any
    seen: jax.Array


def _find_dst_states(tree: Any) -> list[Any]:
    from jaxcomp.prune.compressors.dst import DSTState

    found = []

    def visit(x):
        if isinstance(x, DSTState):
            found.append(x)
            return True
        return False

    jax.tree_util.tree_leaves(tree, is_leaf=visit)
    return found


def reset_regrown(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``tx`` to reset the moments of weights a DST compressor just regrew.

    On each call, the ``compressor_state`` keyword (which
    :func:`jaxcomp.train.make_train_step` passes to ``tx.update``) is searched
    for :class:`~jaxcomp.prune.compressors.dst.DSTState` entries (also inside
    chains);
    when one has made a drop/grow update that this wrapper has not handled
    yet, the wrapped state's moments are zeroed at its ``regrown`` masks
    before ``tx`` runs. Works for any optax optimizer (see
    :func:`reset_optimizer_state`). Put it around the optimizer and keep
    :func:`jaxcomp.keep_compressed` last::

        tx = optax.chain(reset_regrown(optax.adam(1e-3)), jaxcomp.keep_compressed(comp))

    The reset is a select on every step (XLA fuses it into the optimizer's
    own elementwise pass); it bites only on the first step after each
    update. The ``regrown`` masks must have the params' structure (a DST
    compressor used directly or as a stage of :func:`jaxcomp.chain`); one
    DST compressor per wrapper.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxcomp.prune.compressors.dst import rigl_pruning
      >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 4))}
      >>> comp = rigl_pruning(0.5, update_every=1, end_step=5)
      >>> tx = reset_regrown(optax.sgd(0.1, momentum=0.9))
      >>> cs, opt = comp.init(params), tx.init(params)
      >>> g = {"w": jnp.ones((4, 4))}
      >>> _, opt = tx.update(g, opt, params, compressor_state=cs)
      >>> params, cs = comp.update(params, cs, step=1, grads={"w": jnp.arange(16.0).reshape(4, 4)})
      >>> _, opt = tx.update(g, opt, params, compressor_state=cs)   # resets, then updates
      >>> bool(jnp.all(jnp.where(cs.regrown["w"], opt.inner[0].trace["w"], 1.0) == 1.0))
      True
    """

    def init(params):
        return ResetRegrownState(tx.init(params), jnp.zeros((), jnp.int32))

    def update(updates, state, params=None, *, compressor_state=None, **extra):
        inner, seen = state.inner, state.seen
        dsts = [] if compressor_state is None else _find_dst_states(compressor_state)
        if dsts:
            if params is None:
                raise ValueError("reset_regrown needs params= in tx.update (paths and shapes "
                                 "identify the moments): tx.update(grads, opt_state, params, "
                                 "compressor_state=cstate)")
            if len(dsts) > 1:
                raise ValueError("reset_regrown: compressor_state holds several DST states; "
                                 "one reset_regrown handles one DST compressor")
            # A select on every step, not a lax.cond: XLA fuses it into the optimizer's
            # elementwise update (a cond would materialise the whole optimizer state).
            dst = dsts[0]
            fresh = dst.count > seen
            reset = jax.tree.map(lambda m: m & fresh, dst.regrown)
            inner = reset_optimizer_state(inner, params, reset)
            seen = jnp.maximum(seen, dst.count)
        upd, inner = tx.update(updates, inner, params, **extra) if not isinstance(
            tx, optax.GradientTransformationExtraArgs) else tx.update(
            updates, inner, params, compressor_state=compressor_state, **extra)
        return upd, ResetRegrownState(inner, seen)

    return optax.GradientTransformationExtraArgs(init, update)
