"""Channel dependency graph of a JAX function, found by tracing its jaxpr.

Every ``dot_general`` or ``conv_general_dilated`` whose weight operand comes
from a parameter *produces* a group of channels (the kernel's output axis).
The labels of those channels are followed through the jaxpr: elementwise
ops (bias adds, normalisation, activations), broadcasts, pooling windows,
transposes and reshapes (a flatten of ``H×W×C`` becomes a channel axis with
an *inner* stride, so the next Dense kernel's input rows are grouped by
``(i // inner) % C``) and calls into sub-jaxprs (``jit``,
``custom_jvp``/``custom_vjp``, ``remat``). Parameters combined elementwise
with a labelled axis (biases, BatchNorm scales, shifts and running
statistics) become *followers* of the group; kernels that contract a
labelled axis become *consumers*. An elementwise op that meets two
different groups on one axis (a residual add) merges them into one coupled
group. Anything the analysis cannot follow safely — a labelled axis that is
reduced over (LayerNorm over channels, softmax), sliced, padded,
concatenated, gathered, contracted against a non-parameter, or returned
from the function — *blocks* the group: its channels cannot be removed.

Parameters are named by their canonical variables paths
(:func:`jaxcomp.select.path_str`: ``params/block_0/conv1/kernel``), and
their modules by :func:`jaxcomp.ops.capture.module_of` of the path within
the collection (``block_0/conv1``), the names :mod:`jaxcomp.ops.capture`
gives modules. The graph itself cannot come from recording module calls:
which parameter axes a channel reaches (a bias, BatchNorm statistics, the
rows of the next kernel behind a flatten, the other branch of a residual
add) is a property of the dataflow between the calls, so it is read from the
jaxpr.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from jaxcomp.select.paths import is_leaf, path_str

__all__ = ["ChannelGroup", "trace_groups"]


@dataclasses.dataclass
class ChannelGroup:
    """One set of coupled channels.

    Attributes:
      size: number of channels.
      producers: ``(path, axis)`` of kernels whose output axis creates them.
      followers: ``(path, axis)`` of parameters indexed by the channel.
      consumers: ``(path, axis, inner)`` of kernels that read them; along
        ``axis`` index ``i`` holds channel ``(i // inner) % size``.
      blocked: reasons the channels cannot be removed (empty: removable).
    """

    size: int
    producers: set = dataclasses.field(default_factory=set)
    followers: set = dataclasses.field(default_factory=set)
    consumers: set = dataclasses.field(default_factory=set)
    blocked: list = dataclasses.field(default_factory=list)


class _Groups:
    def __init__(self):
        self.parent: dict[int, int] = {}
        self.data: dict[int, ChannelGroup] = {}

    def new(self, size: int) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.data[gid] = ChannelGroup(size)
        return gid

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, why: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        da, db = self.data[a], self.data[b]
        if da.size != db.size:
            db.blocked.append(why + f" (sizes {da.size} and {db.size})")
        self.parent[a] = b
        db.producers |= da.producers
        db.followers |= da.followers
        db.consumers |= da.consumers
        db.blocked += da.blocked
        return b

    def get(self, g: int) -> ChannelGroup:
        return self.data[self.find(g)]


@dataclasses.dataclass
class _Info:
    """What a jaxpr value carries: channel labels and parameter origins per axis."""

    labels: dict = dataclasses.field(default_factory=dict)   # axis -> (gid, inner)
    params: dict = dataclasses.field(default_factory=dict)   # axis -> set of (path, param_axis)


_ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem", "select_n", "clamp",
    "add_any", "nextafter", "and", "or", "xor", "eq", "ne", "lt", "le", "gt", "ge",
}
_UNARY = {
    "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan",
    "sqrt", "rsqrt", "cbrt", "abs", "sign", "floor", "ceil", "round", "is_finite", "erf", "erfc",
    "erf_inv", "integer_pow", "square", "reciprocal", "convert_element_type", "stop_gradient",
    "copy", "copy_p", "not", "real", "imag", "reduce_precision", "optimization_barrier",
    "sharding_constraint", "mesh_cast", "pvary", "asinh", "acosh", "atanh", "sinh", "cosh",
}
_WINDOW = {"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window",
           "cumsum", "cummax", "cummin", "cumprod", "cumlogsumexp"}
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
           "reduce_and", "reduce_or"}
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _shape(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _as_jaxpr(j):
    return j.jaxpr if hasattr(j, "jaxpr") and hasattr(j, "consts") else j


class _Tracer:
    def __init__(self):
        self.groups = _Groups()

    def block(self, info: _Info | None, why: str, axes=None) -> None:
        if info is None:
            return
        for ax, (g, _) in info.labels.items():
            if axes is None or ax in axes:
                self.groups.get(g).blocked.append(why)

    def run(self, jaxpr, infos: list[_Info | None]) -> list[_Info | None]:
        env: dict[Any, _Info | None] = {}
        for v, i in zip(jaxpr.invars, infos):
            env[v] = i
        for eqn in jaxpr.eqns:
            ins = [None if isinstance(v, jcore.Literal) else env.get(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [None if isinstance(v, jcore.Literal) else env.get(v) for v in jaxpr.outvars]

    # ------------------------------------------------------------------ primitives
    def eqn(self, eqn, ins):
        name = eqn.primitive.name
        out_shapes = [_shape(v) for v in eqn.outvars]
        in_shapes = [_shape(v) for v in eqn.invars]
        sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
        if sub is not None and name not in ("cond", "while", "scan"):
            jp = _as_jaxpr(sub)
            if len(jp.invars) == len(ins):
                return self.run(jp, ins)
        if name == "dot_general":
            return [self.dot(eqn, ins, in_shapes, out_shapes[0])]
        if name == "conv_general_dilated":
            return [self.conv(eqn, ins, in_shapes, out_shapes[0])]
        if name in _UNARY:
            return [ins[0] if out_shapes[0] == in_shapes[0] else None]
        if name in _ELEMENTWISE:
            return [self.elementwise(ins, in_shapes, out_shapes[0], name)]
        if name == "broadcast_in_dim":
            return [self.broadcast(ins[0], in_shapes[0], out_shapes[0],
                                   eqn.params["broadcast_dimensions"])]
        if name == "reshape":
            return [self.reshape(ins[0], in_shapes[0], out_shapes[0])]
        if name == "squeeze":
            return [self.reshape(ins[0], in_shapes[0], out_shapes[0])]
        if name == "expand_dims":
            return [self.reshape(ins[0], in_shapes[0], out_shapes[0])]
        if name == "transpose":
            perm = eqn.params["permutation"]
            i = ins[0]
            if i is None:
                return [None]
            inv = {old: new for new, old in enumerate(perm)}
            return [_Info({inv[a]: x for a, x in i.labels.items()},
                          {inv[a]: x for a, x in i.params.items()})]
        if name in _WINDOW:
            i = ins[0]
            dims = eqn.params.get("window_dimensions")
            if dims is not None and i is not None:
                self.block(i, f"{name} windows over a channel axis",
                           {a for a, d in enumerate(dims) if d != 1})
            if name.startswith("cum") and i is not None:
                self.block(i, f"{name} over a channel axis", {eqn.params.get("axis")})
            return [_Info(dict(i.labels), {}) if i is not None else None] * len(eqn.outvars)
        if name in _REDUCE:
            i = ins[0]
            axes = set(eqn.params.get("axes", ()))
            if i is None:
                return [None] * len(eqn.outvars)
            self.block(i, f"{name} reduces over the channel axis (e.g. LayerNorm/softmax)", axes)
            keep = [a for a in range(len(in_shapes[0])) if a not in axes]
            new = {n: i.labels[a] for n, a in enumerate(keep) if a in i.labels}
            newp = {n: i.params[a] for n, a in enumerate(keep) if a in i.params}
            return [_Info(new, newp)] * len(eqn.outvars)
        # anything else: channels reaching it cannot be followed
        for i in ins:
            self.block(i, f"'{name}' uses the channels")
        return [None] * len(eqn.outvars)

    def elementwise(self, ins, in_shapes, out_shape, name):
        nd = len(out_shape)
        labels: dict[int, tuple[int, int]] = {}
        params: dict[int, set] = {}
        for i, shp in zip(ins, in_shapes):
            if i is None or len(shp) != nd:
                continue
            for a, (g, inner) in i.labels.items():
                if shp[a] != out_shape[a]:
                    continue
                if a in labels:
                    g0, inner0 = labels[a]
                    if inner0 != inner:
                        self.groups.get(g).blocked.append(f"'{name}' mixes channel layouts")
                        self.groups.get(g0).blocked.append(f"'{name}' mixes channel layouts")
                    labels[a] = (self.groups.union(g0, g, f"'{name}' couples channel groups"),
                                 inner)
                else:
                    labels[a] = (g, inner)
            for a, ps in i.params.items():
                if shp[a] == out_shape[a]:
                    params.setdefault(a, set()).update(ps)
        for a, (g, inner) in labels.items():
            for p in params.get(a, ()):
                if inner != 1:
                    self.groups.get(g).blocked.append(f"parameter {p[0]} meets flattened channels")
                self.groups.get(g).followers.add(p)
        if labels:  # an activation: the parameters it met are recorded as followers
            return _Info(labels, {})
        return _Info({}, params) if params else None

    def broadcast(self, i, in_shape, out_shape, bdims):
        if i is None:
            return None
        lab = {bdims[a]: x for a, x in i.labels.items() if in_shape[a] == out_shape[bdims[a]]}
        par = {bdims[a]: x for a, x in i.params.items() if in_shape[a] == out_shape[bdims[a]]}
        return _Info(lab, par)

    def reshape(self, i, in_shape, out_shape):
        if i is None:
            return None
        # map each non-unit input axis to (output axis, inner) where blocks merge contiguously
        ins = [(a, d) for a, d in enumerate(in_shape) if d != 1]
        outs = [(b, d) for b, d in enumerate(out_shape) if d != 1]
        mapping: dict[int, tuple[int, int]] = {}
        ia = ob = 0
        ok = True
        while ia < len(ins) and ob < len(outs):
            block = [ins[ia]]
            prod = ins[ia][1]
            ia += 1
            while prod < outs[ob][1] and ia < len(ins):
                block.append(ins[ia])
                prod *= ins[ia][1]
                ia += 1
            if prod != outs[ob][1]:
                ok = False
                break
            inner = 1
            for a, d in reversed(block):
                mapping[a] = (outs[ob][0], inner)
                inner *= d
            ob += 1
        if not ok:
            self.block(i, "a reshape splits a channel axis")
            return None
        lab = {}
        for a, (g, inner) in i.labels.items():
            if in_shape[a] == 1 or a not in mapping:
                continue
            b, extra = mapping[a]
            if b in lab:
                self.block(i, "a reshape merges two channel axes")
                return None
            lab[b] = (g, inner * extra)
        par = {}
        for a, ps in i.params.items():
            if a in mapping and mapping[a][1] == 1 and out_shape[mapping[a][0]] == in_shape[a]:
                par[mapping[a][0]] = ps
        return _Info(lab, par)

    def _param_axis(self, info, axis):
        return info.params.get(axis, set()) if info is not None else set()

    def dot(self, eqn, ins, in_shapes, out_shape):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = ins
        nl, nr = len(in_shapes[0]), len(in_shapes[1])
        lfree = [a for a in range(nl) if a not in lc and a not in lb]
        rfree = [a for a in range(nr) if a not in rc and a not in rb]
        labels = {}
        # batch dims first, then lhs free, then rhs free
        for n, (a, b) in enumerate(zip(lb, rb)):
            for info, ax in ((lhs, a), (rhs, b)):
                if info is not None and ax in info.labels:
                    labels[n] = info.labels[ax]
        off = len(lb)
        for side, info, other, free, contr, ocontr in (
                ("lhs", lhs, rhs, lfree, lc, rc), ("rhs", rhs, lhs, rfree, rc, lc)):
            for a, b in zip(contr, ocontr):
                if info is not None and a in info.labels:
                    g, inner = info.labels[a]
                    kernel = self._param_axis(other, b)
                    if kernel and (other is None or b not in other.labels):
                        for p in kernel:
                            self.groups.get(g).consumers.add((p[0], p[1], inner))
                    else:
                        self.groups.get(g).blocked.append(
                            "contracted against a non-parameter (e.g. attention)")
            for n, a in enumerate(free):
                pos = off + n
                if info is not None and a in info.labels:
                    labels[pos] = info.labels[a]
                elif info is not None and a in info.params and not info.labels:
                    gid = self.groups.new(in_shapes[0 if side == "lhs" else 1][a])
                    for p in info.params[a]:
                        self.groups.get(gid).producers.add(p)
                    labels[pos] = (gid, 1)
            off += len(free)
        return _Info(labels, {}) if labels else None

    def conv(self, eqn, ins, in_shapes, out_shape):
        dn = eqn.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        lhs, rhs = ins
        fgc = eqn.params["feature_group_count"]
        bgc = eqn.params["batch_group_count"]
        c_in, c_out = in_shapes[0][lhs_spec[1]], out_shape[out_spec[1]]
        kin, kout = rhs_spec[1], rhs_spec[0]
        labels = {}
        if bgc != 1:
            self.block(lhs, "batch_group_count > 1")
            return None
        kernel_out = self._param_axis(rhs, kout)
        kernel_in = self._param_axis(rhs, kin)
        if lhs is not None and lhs_spec[1] in lhs.labels:
            g, inner = lhs.labels[lhs_spec[1]]
            if fgc == 1 and kernel_in:
                for p in kernel_in:
                    self.groups.get(g).consumers.add((p[0], p[1], inner))
            elif fgc == c_in == c_out and kernel_out:
                for p in kernel_out:  # depthwise: channels pass through, kernel follows
                    self.groups.get(g).followers.add(p)
                labels[out_spec[1]] = (g, inner)
                return _Info(labels, {})
            else:
                self.groups.get(g).blocked.append(f"grouped convolution (feature_group_count={fgc})")
        if fgc == 1 and kernel_out:
            gid = self.groups.new(c_out)
            for p in kernel_out:
                self.groups.get(gid).producers.add(p)
            labels[out_spec[1]] = (gid, 1)
        elif kernel_out:
            gid = self.groups.new(c_out)
            self.groups.get(gid).blocked.append(f"grouped convolution (feature_group_count={fgc})")
            labels[out_spec[1]] = (gid, 1)
        return _Info(labels, {}) if labels else None


def trace_groups(fn, variables: Any, *args: Any) -> list[ChannelGroup]:
    """Channel groups of ``fn(variables, *args)`` (see the module docstring).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2, name="fc2")(nn.relu(nn.Dense(4, name="fc1")(x)))
      >>> v = Net().init(jax.random.key(0), jnp.ones((1, 3)))
      >>> [sorted(g.producers) for g in trace_groups(Net().apply, v, jnp.ones((1, 3)))]
      [[('params/fc1/kernel', 1)], [('params/fc2/kernel', 1)]]
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_leaf)
    paths = [path_str(kp) for kp, _ in flat]
    leaves = [x for _, x in flat]
    closed = jax.make_jaxpr(lambda ls, *a: fn(jax.tree_util.tree_unflatten(treedef, ls), *a))(
        leaves, *args)
    tracer = _Tracer()
    infos: list[_Info | None] = []
    for p, x in zip(paths, leaves):
        nd = np.ndim(x)
        infos.append(_Info({}, {a: {(p, a)} for a in range(nd)}) if nd else None)
    n_args = len(closed.jaxpr.invars) - len(infos)
    outs = tracer.run(closed.jaxpr, infos + [None] * n_args)
    for o in outs:
        tracer.block(o, "the channels are an output of the function")
    roots = sorted({tracer.groups.find(g) for g in tracer.groups.parent})
    return [tracer.groups.data[r] for r in roots if tracer.groups.data[r].producers]
