"""Combinators that build compressors out of compressors.

``chain`` composes views, ``partition`` and ``masked`` restrict a compressor
to some leaves, ``identity``/``stateless`` make trivial ones, and
``inject_hyperparams`` turns hyperparameters into state driven by optax
schedules.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.base import (
    Compressor,
    EmptyState,
    MaskedNode,
    Params,
    State,
    never_due,
    project_params,
    validate_compressor,
)
from jaxcomp.core.errors import join_names, list_paths
from jaxcomp.select.paths import is_leaf, leaves_with_paths, path_str
from jaxcomp.select.selectors import Rules, Selector, Where, mask_tree, resolve

__all__ = [
    "InjectHyperparamsState",
    "MaskedState",
    "PartitionState",
    "chain",
    "identity",
    "inject_hyperparams",
    "masked",
    "named_chain",
    "partition",
    "stateless",
]


def identity() -> Compressor:
    """A compressor that changes nothing.

    Example:
      >>> import jax.numpy as jnp
      >>> c = identity()
      >>> p = {"w": jnp.ones(2)}
      >>> c.apply(p, c.init(p)) is p
      True
    """

    def init(params):
        del params
        return EmptyState()

    def apply(params, state):
        del state
        return params

    def update(params, state, *, step, grads=None, **extra):
        del step, grads, extra
        return params, state

    return Compressor(init, apply, update, due=never_due)


def stateless(fn: Callable[[Params], Params]) -> Compressor:
    """Wraps a pure function of the params as a compressor with no state.

    Args:
      fn: ``params -> params``; must be differentiable where gradients are
        needed and jittable.

    Example:
      >>> import jax.numpy as jnp
      >>> clip = stateless(lambda p: jax.tree.map(lambda x: jnp.clip(x, -1, 1), p))
      >>> clip.apply({"w": jnp.array([-3.0, 0.5])}, EmptyState())["w"].tolist()
      [-1.0, 0.5]
    """
    if not callable(fn):
        raise TypeError(f"stateless expects a function params -> params, got {type(fn).__name__}")

    def init(params):
        del params
        return EmptyState()

    def apply(params, state):
        del state
        return fn(params)

    def update(params, state, *, step, grads=None, **extra):
        del step, grads, extra
        return params, state

    return Compressor(init, apply, update, due=never_due)


# ------------------------------------------------------------- due / reached


def any_due(dues: Sequence[Any]) -> Any:
    """The ``due`` of a compressor made of parts: due when any part is due.

    ``None`` (a part due at any step) wins; parts that are never due drop
    out. For a Python int step the combined function answers in Python.

    Example:
      >>> d = any_due([lambda t: t % 2 == 0, lambda t: t % 3 == 0])
      >>> [t for t in range(7) if d(t)]
      [0, 2, 3, 4, 6]
    """
    if any(d is None for d in dues):
        return None
    dues = [d for d in dues if d is not never_due]
    if not dues:
        return never_due
    if len(dues) == 1:
        return dues[0]

    def due(step):
        outs = [d(step) for d in dues]
        if all(isinstance(o, (bool, np.bool_)) for o in outs):
            return any(bool(o) for o in outs)
        return functools.reduce(jnp.logical_or, [jnp.asarray(o, bool) for o in outs])

    return due


def all_reached(parts: Sequence[tuple[Any, Callable[[State], State]]]) -> Any:
    """The ``reached`` of a compressor made of parts: reached when every part is.

    Args:
      parts: ``(reached_fn_or_None, state -> part_state)`` pairs.

    Returns:
      ``reached(state)`` or ``None`` when no part has a target.
    """
    parts = [(r, get) for r, get in parts if r is not None]
    if not parts:
        return None

    def reached(state):
        outs = [jnp.asarray(r(get(state)), bool) for r, get in parts]
        return functools.reduce(jnp.logical_and, outs)

    return reached


# ---------------------------------------------------------------------------- chain


def _write_back(stored: Params, before: Params, after: Params, stage: str) -> Params:
    """Writes params changed by a later chain stage back into the stored params.

    A leaf changed by stage ``i > 0`` (``after`` leaf is not the ``before``
    leaf) is written back only when the earlier stages left that leaf untouched
    (``before`` leaf *is* the stored leaf); otherwise the change cannot be
    mapped back and it is an error rather than a silent loss.
    """
    b_flat, b_def = jax.tree_util.tree_flatten_with_path(before, is_leaf=is_leaf)
    a_flat, a_def = jax.tree_util.tree_flatten(after, is_leaf=is_leaf)
    if a_def != b_def:
        raise ValueError(
            f"chain: stage {stage} returned params of a different structure from update; "
            "update must return params with the structure it received"
        )
    changed = [i for i, ((_, b), a) in enumerate(zip(b_flat, a_flat)) if a is not b]
    if not changed:
        return stored
    s_flat, s_def = jax.tree_util.tree_flatten(stored, is_leaf=is_leaf)
    bad = [path_str(b_flat[i][0]) for i in changed
           if s_def != b_def or s_flat[i] is not b_flat[i][1]]
    if bad:
        raise ValueError(
            f"chain: stage {stage} changes these parameters in update, but an earlier stage "
            f"transforms them in apply, so the change cannot be written back:\n{list_paths(bad)}\n"
            "Put the compressor that projects parameters (e.g. pruning) first in the chain, "
            "or give the stages disjoint where= selections."
        )
    for i in changed:
        s_flat[i] = a_flat[i]
    return jax.tree_util.tree_unflatten(s_def, s_flat)


def _chain(compressors: Sequence[Compressor], names: Sequence[str], as_dict: bool) -> Compressor:
    cs = [validate_compressor(c, f"chain stage {n}") for c, n in zip(compressors, names)]

    def states_of(state):
        if as_dict:
            if not isinstance(state, Mapping) or list(state) != list(names):
                raise ValueError(
                    f"named_chain: state keys {list(state) if isinstance(state, Mapping) else state!r}"
                    f" do not match the stages {list(names)}; was it built by another chain?"
                )
            return [state[n] for n in names]
        if not isinstance(state, tuple) or len(state) != len(cs):
            raise ValueError(
                f"chain: expected a state tuple of {len(cs)} stage states, got "
                f"{type(state).__name__}; pass the state returned by this chain's init"
            )
        return list(state)

    def pack(states):
        return dict(zip(names, states)) if as_dict else tuple(states)

    def init(params):
        states, view = [], params
        for i, c in enumerate(cs):
            s = c.init(view)
            states.append(s)
            if i + 1 < len(cs):
                view = c.apply(view, s)
        return pack(states)

    def apply(params, state):
        view = params
        for c, s in zip(cs, states_of(state)):
            view = c.apply(view, s)
        return view

    def update(params, state, *, step, grads=None, **extra):
        stored, view, new_states = params, params, []
        for i, (c, s, n) in enumerate(zip(cs, states_of(state), names)):
            new_view, s = c.update(view, s, step=step, grads=grads, **extra)
            stored = new_view if i == 0 else _write_back(stored, view, new_view, n)
            new_states.append(s)
            if i + 1 < len(cs):
                view = c.apply(new_view, s)
        return stored, pack(new_states)

    project = None
    if any(c.project is not None for c in cs):

        def project(params, state):
            # Constraints hold on the stored params, stage by stage.
            for c, s in zip(cs, states_of(state)):
                params = project_params(c, params, s)
            return params

    reached = all_reached([(c.reached, lambda st, i=i: states_of(st)[i]) for i, c in enumerate(cs)])
    return Compressor(init, apply, update, project, any_due([c.due for c in cs]), reached)


def chain(*compressors: Compressor) -> Compressor:
    """Composes compressors: each stage compresses the view of the previous one.

    ``apply`` is ``c_n.apply(... c_1.apply(params, s_1) ..., s_n)``. Stage
    ``i`` is initialised and updated on the view produced by stages ``< i``
    (so a quantizer after a pruner calibrates on pruned weights). Parameters a
    later stage projects in ``update`` are written back to the stored params
    when no earlier stage transforms them; otherwise it is an error.

    Args:
      *compressors: the stages, first applied first.

    Returns:
      A compressor whose state is a tuple of the stage states.

    Example:
      >>> import jax.numpy as jnp
      >>> double = stateless(lambda p: jax.tree.map(lambda x: 2 * x, p))
      >>> inc = stateless(lambda p: jax.tree.map(lambda x: x + 1, p))
      >>> c = chain(double, inc)
      >>> c.apply({"w": jnp.ones(1)}, c.init({"w": jnp.ones(1)}))["w"].tolist()
      [3.0]
    """
    if len(compressors) == 1 and isinstance(compressors[0], (list, tuple)) and not isinstance(
        compressors[0], Compressor
    ):
        compressors = tuple(compressors[0])
    return _chain(compressors, [str(i) for i in range(len(compressors))], as_dict=False)


def named_chain(*stages: tuple[str, Compressor]) -> Compressor:
    """Like :func:`chain` with named stages; the state is a dict name -> state.

    Example:
      >>> import jax.numpy as jnp
      >>> c = named_chain(("noop", identity()))
      >>> list(c.init({"w": jnp.ones(1)}))
      ['noop']
    """
    names = []
    for i, st in enumerate(stages):
        if not (isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], str)):
            raise TypeError(f"named_chain stage {i} must be a (name, compressor) pair, got {st!r}")
        names.append(st[0])
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"named_chain: stage names must be unique, {join_names(dup)} repeat")
    return _chain([c for _, c in stages], names, as_dict=True)


# ------------------------------------------------------------------ masked / partition


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner compressor's state on the selected leaves."""

    inner_state: State


class PartitionState(NamedTuple):
    """State of :func:`partition`: one inner state per label."""

    inner_states: dict[str, State]


def _merge(flags: Any, inner: Params, outer: Params) -> Params:
    """Takes selected leaves from ``inner`` and the rest from ``outer`` (same objects)."""
    return jax.tree_util.tree_map(
        lambda f, a, b: a if f else b,
        flags,
        inner,
        outer,
        is_leaf=lambda x: is_leaf(x) or isinstance(x, MaskedNode),
    )


def _check_structure(flags: Any, params: Params, what: str) -> None:
    f_def = jax.tree_util.tree_structure(flags, is_leaf=is_leaf)
    p_def = jax.tree_util.tree_structure(params, is_leaf=is_leaf)
    if f_def != p_def:
        raise ValueError(
            f"{what}: the params passed now do not have the structure seen at init "
            f"({p_def.num_leaves} leaves vs {f_def.num_leaves}). Paths now:\n"
            f"{list_paths([p for p, _ in leaves_with_paths(params)])}\n"
            "Re-run init on the new params."
        )


def masked(compressor: Compressor, where: Where, *, allow_empty: bool = False) -> Compressor:
    """Restricts a compressor to the leaves ``where`` selects.

    The inner compressor sees a tree in which unselected leaves are replaced by
    :class:`~jaxcomp.core.base.MaskedNode` (an empty pytree node), so it
    cannot touch them; they pass through ``apply`` and ``update`` as the same
    objects.

    Args:
      compressor: the compressor to restrict.
      where: any ``where=`` form (see :mod:`jaxcomp.select`).
      allow_empty: allow a pattern that selects nothing.

    Example:
      >>> import jax.numpy as jnp
      >>> zero = stateless(lambda p: jax.tree.map(jnp.zeros_like, p))
      >>> c = masked(zero, r".*kernel")
      >>> p = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
      >>> out = c.apply(p, c.init(p))
      >>> out["kernel"].tolist(), out["bias"].tolist()
      ([0.0, 0.0], [1.0, 1.0])
    """
    compressor = validate_compressor(compressor, "masked(compressor)")

    def flags_for(params):
        return resolve(where, params, allow_empty=allow_empty)

    def init(params):
        sub = mask_tree(flags_for(params), params)
        return MaskedState(compressor.init(sub))

    def apply(params, state):
        flags = flags_for(params)
        out = compressor.apply(mask_tree(flags, params), state.inner_state)
        return _merge(flags, out, params)

    def update(params, state, *, step, grads=None, **extra):
        flags = flags_for(params)
        sub_grads = None if grads is None else mask_tree(flags, grads)
        new, inner = compressor.update(
            mask_tree(flags, params), state.inner_state, step=step, grads=sub_grads, **extra
        )
        return _merge(flags, new, params), MaskedState(inner)

    project = None
    if compressor.project is not None:

        def project(params, state):
            flags = flags_for(params)
            new = compressor.project(mask_tree(flags, params), state.inner_state)
            return _merge(flags, new, params)

    reached = all_reached([(compressor.reached, lambda st: st.inner_state)])
    return Compressor(init, apply, update, project, compressor.due, reached)


def _labels_for(labels: Any, params: Params) -> Any:
    if isinstance(labels, Rules) or (callable(labels) and not isinstance(labels, Mapping)):
        labels = labels(params)
    try:
        jax.tree_util.tree_map(lambda _l, _p: None, labels, params, is_leaf=is_leaf)
    except ValueError as e:
        raise ValueError(
            "partition: the labels tree does not match the params structure; give one label "
            f"string per parameter, or a callable / select.rules([...]) that builds them: {e}"
        ) from None
    bad = [(p, l) for (p, _), l in zip(leaves_with_paths(params), jax.tree_util.tree_leaves(labels))
           if not isinstance(l, str)]
    if bad:
        raise TypeError(
            "partition: labels must be strings; these parameters have other labels:\n"
            + list_paths([f"{p}: {l!r}" for p, l in bad])
        )
    return labels


def partition(compressors: Mapping[str, Compressor], labels: Any) -> Compressor:
    """Applies a different compressor to each labelled group of parameters.

    Args:
      compressors: label -> compressor. Use :func:`identity` for groups that
        stay as they are.
      labels: a tree of label strings with the params' structure, or a callable
        ``params -> labels`` such as :func:`jaxcomp.select.rules`.

    Returns:
      A compressor whose state holds one inner state per label.

    Raises:
      ValueError: a parameter whose label has no compressor (listing them).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcomp import select
      >>> zero = stateless(lambda p: jax.tree.map(jnp.zeros_like, p))
      >>> c = partition({"w": zero, "rest": identity()},
      ...               select.rules([(r".*kernel", "w")], default="rest"))
      >>> p = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
      >>> c.apply(p, c.init(p))["kernel"].tolist()
      [0.0, 0.0]
    """
    if not isinstance(compressors, Mapping) or not compressors:
        raise TypeError("partition: compressors must be a non-empty dict label -> compressor")
    cs = {k: validate_compressor(c, f"partition['{k}']") for k, c in compressors.items()}

    def flags_by_label(params):
        lab = _labels_for(labels, params)
        present = set(jax.tree_util.tree_leaves(lab))
        missing = sorted(present - set(cs))
        if missing:
            offenders = [p for (p, _), l in zip(leaves_with_paths(params),
                                                jax.tree_util.tree_leaves(lab)) if l in missing]
            raise ValueError(
                f"partition: no compressor for label(s) {join_names(missing)}, used by:\n"
                f"{list_paths(offenders)}\nAdd them to compressors (identity() to leave as is)."
            )
        return {k: jax.tree_util.tree_map(lambda l, k=k: l == k, lab) for k in cs}

    def init(params):
        flags = flags_by_label(params)
        return PartitionState({k: c.init(mask_tree(flags[k], params)) for k, c in cs.items()})

    def apply(params, state):
        flags = flags_by_label(params)
        out = params
        for k, c in cs.items():
            new = c.apply(mask_tree(flags[k], params), state.inner_states[k])
            out = _merge(flags[k], new, out)
        return out

    def update(params, state, *, step, grads=None, **extra):
        flags = flags_by_label(params)
        out, new_states = params, {}
        for k, c in cs.items():
            sub_grads = None if grads is None else mask_tree(flags[k], grads)
            new, new_states[k] = c.update(
                mask_tree(flags[k], params), state.inner_states[k], step=step, grads=sub_grads,
                **extra,
            )
            out = _merge(flags[k], new, out)
        return out, PartitionState(new_states)

    project = None
    if any(c.project is not None for c in cs.values()):

        def project(params, state):
            flags = flags_by_label(params)
            out = params
            for k, c in cs.items():
                if c.project is not None:
                    new = c.project(mask_tree(flags[k], params), state.inner_states[k])
                    out = _merge(flags[k], new, out)
            return out

    reached = all_reached([(c.reached, lambda st, k=k: st.inner_states[k]) for k, c in cs.items()])
    return Compressor(init, apply, update, project, any_due([c.due for c in cs.values()]), reached)


# ---------------------------------------------------------------- inject_hyperparams


class InjectHyperparamsState(NamedTuple):
    """State of an injected compressor: current hyperparameter values and inner state."""

    hyperparams: dict[str, jax.Array]
    inner_state: State


def _is_numeric(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, numbers.Number):
        return True
    return isinstance(v, (np.ndarray, np.generic, jax.Array)) and np.ndim(v) == 0


def inject_hyperparams(
    factory: Callable[..., Compressor],
    *,
    static_args: Sequence[str] = ("where",),
    due: Any = "inner",
) -> Callable[..., Compressor]:
    """Makes a factory's numeric hyperparameters live in the state.

    Numeric arguments become arrays in the state (so they can be inspected or
    changed without recompiling) and callable arguments are treated as optax
    schedules ``step -> value``, evaluated at every ``update``'s ``step``.
    Strings, bools, selectors and the names in ``static_args`` stay static.
    The factory must accept array-valued hyperparameters.

    The injected compressor's ``due`` is, by default, that of the compressor
    the factory builds from the initial hyperparameter values (for a pruner:
    its schedule's update steps); the hyperparameters recorded in the state
    are refreshed on those steps. Pass ``due=`` explicitly when a
    hyperparameter changes the update steps themselves, or ``due=None`` to
    have loops run ``update`` on every step. ``reached`` is the inner
    compressor's, evaluated with the state's hyperparameters.

    Args:
      factory: a compressor factory, e.g. a pruning or quantization factory.
      static_args: argument names never injected even when callable/numeric.
      due: ``"inner"`` (default: the built compressor's ``due``), ``None``
        (every step) or a function ``step -> bool`` (see
        :class:`~jaxcomp.Compressor`).

    Returns:
      A function with the factory's signature that builds the injected
      compressor.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> def scaling(factor):
      ...     return stateless(lambda p: jax.tree.map(lambda x: x * factor, p))
      >>> c = inject_hyperparams(scaling)(factor=optax.linear_schedule(1.0, 0.0, 10))
      >>> p = {"w": jnp.ones(1)}
      >>> _, s = c.update(p, c.init(p), step=5)
      >>> float(s.hyperparams["factor"])
      0.5
    """
    if not callable(factory):
        raise TypeError("inject_hyperparams expects a compressor factory")
    if not (due is None or callable(due) or (isinstance(due, str) and due == "inner")):
        raise TypeError(
            f"inject_hyperparams: due must be 'inner', None or a function step -> bool, got {due!r}"
        )
    sig = inspect.signature(factory)

    def wrapped(*args, **kwargs) -> Compressor:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"inject_hyperparams({factory.__name__}): {e}") from None
        static, numeric, schedules = {}, {}, {}
        for name, v in bound.arguments.items():
            if sig.parameters[name].kind in (inspect.Parameter.VAR_POSITIONAL,
                                             inspect.Parameter.VAR_KEYWORD):
                raise TypeError(
                    f"inject_hyperparams({factory.__name__}): *args/**kwargs cannot be injected"
                )
            if name in static_args:
                static[name] = v
            elif _is_numeric(v):
                numeric[name] = v
            elif callable(v) and not isinstance(v, Selector):
                schedules[name] = v
            else:
                static[name] = v

        def values_at(step):
            vals = {k: jnp.asarray(v) for k, v in numeric.items()}
            vals.update({k: jnp.asarray(f(step)) for k, f in schedules.items()})
            return vals

        def build(hps):
            return validate_compressor(factory(**static, **hps), f"{factory.__name__}(...)")

        def init(params):
            hps = values_at(jnp.zeros((), jnp.int32))
            return InjectHyperparamsState(hps, build(hps).init(params))

        def apply(params, state):
            return build(state.hyperparams).apply(params, state.inner_state)

        def update(params, state, *, step, grads=None, **extra):
            hps = values_at(step)
            hps = {k: v.astype(state.hyperparams[k].dtype) for k, v in hps.items()}
            new, inner = build(hps).update(
                params, state.inner_state, step=step, grads=grads, **extra
            )
            return new, InjectHyperparamsState(hps, inner)

        def project(params, state):
            return project_params(build(state.hyperparams), params, state.inner_state)

        first = build(values_at(0))
        reached = None
        if first.reached is not None:

            def reached(state):
                return build(state.hyperparams).reached(state.inner_state)

        return Compressor(init, apply, update, project,
                          first.due if isinstance(due, str) else due, reached)

    wrapped.__name__ = f"injected_{getattr(factory, '__name__', 'factory')}"
    wrapped.__doc__ = factory.__doc__
    return wrapped
