"""Lazy evaluation of parameter-only jaxpr values (private to jaxcomp.metrics).

The jaxpr walk of :mod:`jaxcomp.metrics.jaxpr_count` attaches to each
parameter-only variable a *thunk*: a recipe that evaluates it on the concrete
arguments when (and only when) a weight density is asked for, each value at
most once. Values inside a ``scan`` that come from its stacked inputs are
evaluated for all iterations at once (the primitive is ``vmap``-ed), so the
density of a scanned weight is its mean over iterations. Also here: the
static trip count of counted ``while`` loops.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

EMPTY: frozenset = frozenset()


# Primitives whose output has exactly the non-zero fraction of their one input.
_DENSITY_PRESERVING = frozenset(
    "reshape transpose broadcast_in_dim squeeze expand_dims rev copy copy_p pvary".split()  # noqa: SIM905
)


class _Unknown(Exception):
    """A parameter-only value that cannot be evaluated concretely."""


class Evaluator:
    """Lazily evaluates parameter-only values once each (memoised)."""

    def __init__(self, flat_values: list[Any] | None):
        self.values = flat_values
        self._density: dict[int, float | None] = {}
        self.errors: list[str] = []

    def density(self, thunk: _Thunk | None) -> float | None:
        if thunk is None:
            return None
        key = id(thunk)
        if key in self._density:
            return self._density[key]
        src = thunk
        while isinstance(src, (EqnThunk, StackedThunk)):
            if isinstance(src, StackedThunk):
                src = src.inner
                continue
            if src.node.eqn.primitive.name in _DENSITY_PRESERVING and len(src.node.ins) == 1:
                src = src.node.ins[0]
                continue
            if src.node.eqn.primitive.name == "convert_element_type":
                new = np.dtype(src.node.eqn.params["new_dtype"])
                if np.issubdtype(new, np.inexact):
                    src = src.node.ins[0]
                    continue
            break
        try:
            value, _ = src.value(self)
            arr = np.asarray(value)
            d = float(np.count_nonzero(arr)) / arr.size if arr.size else 1.0
        except _Unknown:
            d = None
        except Exception as e:  # noqa: BLE001 - any evaluation failure means "unknown"
            self.errors.append(f"{type(e).__name__}: {e}")
            d = None
        self._density[key] = d
        return d


class _Thunk:
    __slots__ = ()

    def value(self, ev: Evaluator) -> tuple[Any, bool]:  # pragma: no cover - abstract
        raise NotImplementedError


class ConstThunk(_Thunk):
    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val

    def value(self, ev):
        return self.val, False


class ArgThunk(_Thunk):
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def value(self, ev):
        if ev.values is None or ev.values[self.index] is None:
            raise _Unknown("abstract argument")
        return ev.values[self.index], False


class StackedThunk(_Thunk):
    """The per-iteration slice of a scanned value: evaluates to the whole stack."""

    __slots__ = ("inner",)

    def __init__(self, inner: _Thunk):
        self.inner = inner

    def value(self, ev):
        v, stacked = self.inner.value(ev)
        if stacked:
            raise _Unknown("nested stacked scan inputs")
        return v, True


class EqnNode:
    __slots__ = ("eqn", "ins", "result")

    def __init__(self, eqn, ins):
        self.eqn, self.ins, self.result = eqn, ins, None

    def outputs(self, ev: Evaluator) -> tuple[list[Any], bool]:
        if self.result is None:
            vals = [t.value(ev) for t in self.ins]
            prim = self.eqn.primitive
            bp = prim.get_bind_params(self.eqn.params)
            # Older JAX returns (subfuns, params); newer returns params only.
            subfuns, bind_params = bp if isinstance(bp, tuple) else ((), bp)
            args = [v for v, _ in vals]
            stacked = any(s for _, s in vals)

            def run(*a):
                out = prim.bind(*subfuns, *a, **bind_params)
                return list(out) if prim.multiple_results else [out]

            if stacked:
                axes = [0 if s else None for _, s in vals]
                outs = jax.vmap(run, in_axes=axes)(*args)
            else:
                outs = run(*args)
            self.result = (outs, stacked)
        return self.result


class EqnThunk(_Thunk):
    __slots__ = ("index", "node")

    def __init__(self, node: EqnNode, index: int):
        self.node, self.index = node, index

    def value(self, ev):
        outs, stacked = self.node.outputs(ev)
        return outs[self.index], stacked


class Info:
    """What the walk knows about one jaxpr variable."""

    __slots__ = ("param", "sources", "thunk")

    def __init__(self, param: bool, sources: frozenset = EMPTY, thunk: _Thunk | None = None):
        self.param, self.sources, self.thunk = param, sources, thunk


DATA = Info(False)


def literal_info(v) -> Info:
    return Info(True, EMPTY, ConstThunk(v.val))


def meet(a: Info, b: Info) -> Info:
    if a.param and b.param:
        return Info(True, a.sources | b.sources, None)
    return Info(False)


def _const_value(info: Info) -> Any:
    """The value of a constant (no parameter or data dependence), else raises _Unknown."""
    if not info.param or info.sources or info.thunk is None:
        raise _Unknown("not a constant")
    v, stacked = info.thunk.value(Evaluator(None))
    if stacked:
        raise _Unknown("stacked")
    return v


def _scalar(v) -> float:
    arr = np.asarray(v)
    if arr.shape != ():
        raise _Unknown("not a scalar")
    return float(arr)


_FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}


def static_trip_count(params, cconsts: list[Info], init: list[Info]) -> int | None:
    """Trip count of a counted while loop, or None when it is not static."""
    try:
        cj, bj = params["cond_jaxpr"], params["body_jaxpr"]
        cjaxpr = cj.jaxpr if isinstance(cj, jex.ClosedJaxpr) else cj
        bjaxpr = bj.jaxpr if isinstance(bj, jex.ClosedJaxpr) else bj
        cconst_vals = dict(zip(cjaxpr.constvars, getattr(cj, "consts", [])))
        out = cjaxpr.outvars[0]
        eqn = next((e for e in cjaxpr.eqns if out in e.outvars), None)
        if eqn is None or eqn.primitive.name not in _FLIP:
            return None
        cn = params["cond_nconsts"]
        pos = {v: i for i, v in enumerate(cjaxpr.invars)}
        casts = {
            e.outvars[0]: e.invars[0]
            for e in cjaxpr.eqns
            if e.primitive.name in ("convert_element_type", "copy", "copy_p")
        }

        def uncast(v):
            while not isinstance(v, jex.Literal) and v in casts:
                v = casts[v]
            return v

        def carry_index(v):
            v = uncast(v)
            if isinstance(v, jex.Literal):
                return None
            i = pos.get(v)
            return i - cn if i is not None and i >= cn else None

        def const_of(v):
            v = uncast(v)
            if isinstance(v, jex.Literal):
                return _scalar(v.val)
            if v in cconst_vals:
                return _scalar(cconst_vals[v])
            i = pos.get(v)
            if i is not None and i < cn:
                return _scalar(_const_value(cconsts[i]))
            if i is not None:  # a loop-invariant carry (older fori_loop lowering)
                j = i - cn
                if bjaxpr.outvars[j] is bjaxpr.invars[params["body_nconsts"] + j]:
                    return _scalar(_const_value(init[j]))
            raise _Unknown("bound")

        a, b = eqn.invars
        op = eqn.primitive.name
        k = carry_index(a)
        if k is None:
            k, op, b = carry_index(b), _FLIP[op], a
            if k is None:
                return None
        bound = const_of(b)
        start = _scalar(_const_value(init[k]))
        counter_in = bjaxpr.invars[params["body_nconsts"] + k]
        counter_out = bjaxpr.outvars[k]
        step_eqn = next((e for e in bjaxpr.eqns if counter_out in e.outvars), None)
        if step_eqn is None or step_eqn.primitive.name not in ("add", "sub"):
            return None
        x, y = step_eqn.invars
        if x is counter_in and isinstance(y, jex.Literal):
            step = _scalar(y.val)
        elif y is counter_in and isinstance(x, jex.Literal) and step_eqn.primitive.name == "add":
            step = _scalar(x.val)
        else:
            return None
        if step_eqn.primitive.name == "sub":
            step = -step
        if op in ("lt", "le") and step > 0:
            span = (bound - start) / step
        elif op in ("gt", "ge") and step < 0:
            span = (start - bound) / -step
        else:
            return None
        n = math.floor(span) + 1 if op in ("le", "ge") else math.ceil(span)
        return max(0, int(n))
    except (_Unknown, KeyError, ValueError, TypeError, IndexError, StopIteration):
        return None
