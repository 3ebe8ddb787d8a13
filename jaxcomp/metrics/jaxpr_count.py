"""Analytic multiply-accumulate counting over jaxprs.

:func:`count_jaxpr` walks a (closed) jaxpr once, in order, and records one
:class:`OpCount` per multiply-accumulate-bearing equation. Every variable is
classified on the way as *parameter-only* (it depends only on the parameter
inputs and on constants) or *data*; a ``dot_general``/``conv`` operand that
is parameter-only is the layer's weight. Parameter-only values can be
evaluated lazily and exactly once on the concrete arguments (see
:meth:`JaxprCount.weight_density`), which is how :func:`jaxcomp.metrics.analyze.analyze`
measures the density of masked weights.

Counting conventions (1 MAC = 2 FLOPs):

* ``dot_general``: batch dims × free dims of both operands × contracting dims.
* ``conv_general_dilated``: output elements × kernel spatial taps × input
  features per group, i.e. ``prod(out.shape) * prod(kernel.shape) / O``
  where ``O`` is the kernel's output-feature size. This holds for any
  ``dimension_numbers`` layout and for ``feature_group_count`` (depthwise,
  grouped) and ``batch_group_count``. Every tap at every output position
  counts, taps over padding included (fvcore/ptflops convention). A
  transposed convolution (``lhs_dilation > 1``) is counted the same way from
  its output size, so taps that land on the zeros inserted between input
  pixels count too: this is the cost of the dilated direct convolution XLA
  runs, about ``prod(lhs_dilation)`` times fvcore's input-side count.
* ``fft``: 5·N·log2(N) real FLOPs per complex transform (FFT/IFFT) and
  2.5·N·log2(N) per real one (RFFT/IRFFT) of total length N, the FFTW
  benchFFT convention; they add ``fft_flops / 2`` (rounded) to the MACs
  so that FLOPs = 2 × MACs stays true, and are also reported on their own.
* Sub-jaxprs are counted where they run: ``jit``/``pjit``, ``closed_call``,
  ``core_call``, ``remat``/``checkpoint``, ``custom_jvp_call`` and
  ``custom_vjp_call`` once (only their primal computation), ``scan`` body ×
  ``length``, ``while`` body × its trip count when the loop is a counted
  loop (a counter compared with ``lt``/``le``/``gt``/``ge`` against a
  constant, stepped by a constant, with a constant start) and once
  otherwise (with a warning), ``cond`` as its most expensive branch (an upper
  bound; a note is added when branches differ), ``shard_map`` body × the
  number of shards (so counts are global, like for an unsharded function).
* Elementwise arithmetic and transcendental primitives on data count
  1 FLOP per output element, reductions 1 FLOP per input element, in the
  separate ``elementwise_flops`` bucket (never in MACs).
* A dot/conv whose operands are both parameter-only is a
  ``"weight_transform"`` (e.g. ``u @ v`` when a ``LowRank`` weight is
  materialized inside the function): a per-call constant XLA may fold,
  reported in ``weight_transform_macs`` and not in ``macs``.

References:
  fvcore ``fvcore/nn/jit_handles.py`` (conv and matmul counting conventions).
  FFTW benchFFT methodology, http://www.fftw.org/speed/method.html
  (5 N log2 N FLOPs per complex FFT).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

from jaxcomp.metrics.jaxpr_values import (
    DATA,
    EMPTY,
    ArgThunk,
    ConstThunk,
    EqnNode,
    EqnThunk,
    Evaluator,
    Info,
    StackedThunk,
    literal_info,
    meet,
    static_trip_count,
)

__all__ = ["JaxprCount", "OpCount", "clean_scope", "count_jaxpr", "count_macs"]

_CALL_PRIMS = frozenset(
    {
        "jit",
        "pjit",
        "closed_call",
        "core_call",
        "remat",
        "remat2",
        "checkpoint",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
    }
)
_CALL_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")

_ELEMENTWISE = frozenset(
    """add sub mul div rem pow integer_pow max min neg abs sign exp exp2 log log1p
    expm1 tanh logistic sin cos tan asin acos atan atan2 sinh cosh asinh acosh atanh
    sqrt rsqrt cbrt erf erfc erf_inv square select_n clamp add_any floor ceil round
    lgamma digamma""".split()  # noqa: SIM905
)
_REDUCTIONS = frozenset(
    """reduce_sum reduce_max reduce_min reduce_prod argmax argmin cumsum cumprod
    cummax cummin cumlogsumexp""".split()  # noqa: SIM905
)
_WRAPPER = re.compile(r"[A-Za-z_][\w.]*\(([^()]*)\)")


def _split_top(scope: str) -> list[str]:
    """Splits a name stack on '/' outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(scope):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "/" and depth == 0:
            parts.append(scope[start:i])
            start = i + 1
    parts.append(scope[start:])
    return parts


def clean_scope(scope: str) -> str:
    """Strips transformation wrappers (``jvp(...)``, ``transpose(...)``) from a name stack.

    A component repeated only because a transformation re-entered the same
    scope (``transpose(jvp(M))/jvp(M)``) is kept once.

    Example:
      >>> clean_scope("transpose(jvp(Model))/block_0/Conv_0")
      'Model/block_0/Conv_0'
      >>> clean_scope("transpose(jvp(M))/jvp(M)/r/Dense_0")
      'M/r/Dense_0'
    """
    out: list[str] = []
    prev_wrapped = False
    for raw in _split_top(scope):
        wrapped = "(" in raw
        text, prev = raw, None
        while prev != text:
            prev, text = text, _WRAPPER.sub(r"\1", text)
        for k, part in enumerate(p for p in text.split("/") if p):
            if k == 0 and out and part == out[-1] and (wrapped or prev_wrapped):
                continue
            out.append(part)
        prev_wrapped = wrapped
    return "/".join(out)


@dataclasses.dataclass(frozen=True)
class OpCount:
    """One multiply-accumulate-bearing equation of a jaxpr.

    Attributes:
      scope: the name stack the equation was traced under (with transformation
        wrappers such as ``jvp(...)`` stripped); ``""`` when there is none.
      op: ``"dense"``, ``"einsum"`` (batch dims, or two data operands),
        ``"conv"``, ``"fft"`` or ``"weight_transform"``.
      primitive: the JAX primitive name.
      input_shape: the activation operand (the first operand if none or both
        are activations).
      weight_shape: the weight operand (the second operand if none is a
        weight); ``None`` for ``fft``.
      output_shape: the result.
      macs: MACs including ``multiplier``.
      multiplier: the product of the trip counts of the enclosing loops.
      weight_sources: ids of the parameter groups the weight depends on.
      input_dtype, weight_dtype: operand dtypes.
      fft_flops: real FLOPs of an ``fft`` (0 otherwise), including ``multiplier``.
    """

    scope: str
    op: str
    primitive: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...]
    macs: int
    multiplier: int
    weight_sources: tuple[int, ...]
    input_dtype: Any
    weight_dtype: Any
    fft_flops: int = 0
    weight_ref: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclasses.dataclass(frozen=True)
class JaxprCount:
    """The result of :func:`count_jaxpr`.

    Attributes:
      ops: one :class:`OpCount` per MAC-bearing equation occurrence.
      macs: total MACs of ``dense``/``einsum``/``conv``/``fft`` ops.
      weight_transform_macs: MACs of weight-only dots/convs (not in ``macs``).
      fft_flops: real FLOPs of FFTs (their half is included in ``macs``).
      elementwise_flops: FLOPs of elementwise ops and reductions on data.
      warnings: things the count could not determine exactly.
    """

    ops: tuple[OpCount, ...]
    macs: int
    weight_transform_macs: int
    fft_flops: int
    elementwise_flops: int
    warnings: tuple[str, ...]
    evaluator: Any = dataclasses.field(default=None, repr=False, compare=False)

    def weight_density(self, op: OpCount) -> float | None:
        """Fraction of non-zeros of ``op``'s weight operand, or None if unknown.

        Evaluates the parameter-only computation of the weight on the concrete
        arguments the first time it is asked for (cached per value).
        """
        if self.evaluator is None or op.weight_ref is None:
            return None
        return self.evaluator.density(op.weight_ref)


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


class _Walker:
    def __init__(self):
        self.ops: list[OpCount] = []
        self.elementwise = 0
        self.warnings: list[str] = []

    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    # -- the walk ------------------------------------------------------------

    def walk(self, jaxpr, consts, ins, mult: int, prefix: str, emit: bool) -> list[Info]:
        env: dict[Any, Info] = {}
        constvars = jaxpr.constvars
        if consts is None:
            consts = [Info(True) for _ in constvars]
        for v, info in zip(constvars, consts):
            env[v] = info
        for v, info in zip(jaxpr.invars, ins):
            env[v] = info
        literal = jex.Literal

        def read(v):
            return literal_info(v) if isinstance(v, literal) else env.get(v, DATA)

        for eqn in jaxpr.eqns:
            in_infos = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            ns = str(eqn.source_info.name_stack)
            scope = f"{prefix}/{ns}" if prefix and ns else (prefix or ns)
            if name in _CALL_PRIMS and any(k in eqn.params for k in _CALL_KEYS):
                outs = self._call(eqn, in_infos, mult, scope, emit)
            elif name == "scan":
                outs = self._scan(eqn, in_infos, mult, scope, emit)
            elif name == "while":
                outs = self._while(eqn, in_infos, mult, scope, emit)
            elif name == "cond":
                outs = self._cond(eqn, in_infos, mult, scope, emit)
            elif name == "shard_map" and "jaxpr" in eqn.params and "mesh" in eqn.params:
                outs = self._shard_map(eqn, in_infos, mult, scope, emit)
            else:
                subs = list(jex.jaxprs_in_params(eqn.params)) if eqn.params else []
                if subs:
                    self._unknown_sub(eqn, subs, in_infos, mult, scope, emit)
                outs = self._generic(eqn, in_infos)
                if emit:
                    self._count(eqn, in_infos, mult, scope)
            for v, info in zip(eqn.outvars, outs):
                env[v] = info
        return [read(v) for v in jaxpr.outvars]

    def _generic(self, eqn, in_infos: list[Info]) -> list[Info]:
        n = len(eqn.outvars)
        if all(i.param for i in in_infos):
            sources = frozenset().union(*(i.sources for i in in_infos)) if in_infos else EMPTY
            if all(i.thunk is not None for i in in_infos):
                node = EqnNode(eqn, [i.thunk for i in in_infos])
                return [Info(True, sources, EqnThunk(node, k)) for k in range(n)]
            return [Info(True, sources, None) for _ in range(n)]
        return [DATA] * n

    @staticmethod
    def _split_closed(j):
        if isinstance(j, jex.ClosedJaxpr):
            return j.jaxpr, [Info(True, EMPTY, ConstThunk(c)) for c in j.consts]
        return j, None

    def _call(self, eqn, in_infos, mult, scope, emit):
        sub = next(eqn.params[k] for k in _CALL_KEYS if k in eqn.params)
        jaxpr, consts = self._split_closed(sub)
        if len(jaxpr.invars) != len(in_infos):
            self._unknown_sub(eqn, [sub], in_infos, mult, scope, emit)
            return self._generic(eqn, in_infos)
        return self.walk(jaxpr, consts, in_infos, mult, scope, emit)

    def _carry_fixpoint(self, body, pre, carry, post, n_carry, out_offset=0):
        carry = [Info(c.param, c.sources, None) for c in carry]
        for _ in range(n_carry + 1):
            outs = self.walk(body[0], body[1], pre + carry + post, 1, "", emit=False)
            new = [meet(c, o) for c, o in zip(carry, outs[out_offset : out_offset + n_carry])]
            if all(a.param == b.param and a.sources == b.sources for a, b in zip(new, carry)):
                break
            carry = new
        return carry

    def _scan(self, eqn, in_infos, mult, scope, emit):
        p = eqn.params
        nc, ncar, length = p["num_consts"], p["num_carry"], int(p["length"])
        body = self._split_closed(p["jaxpr"])
        consts, init, xs = in_infos[:nc], in_infos[nc : nc + ncar], in_infos[nc + ncar :]
        xs = [
            Info(x.param, x.sources, StackedThunk(x.thunk) if x.thunk is not None else None)
            for x in xs
        ]
        carry = self._carry_fixpoint(body, consts, init, xs, ncar)
        outs = self.walk(body[0], body[1], consts + carry + xs, mult * length, scope, emit)
        return self._loop_outs(eqn, in_infos, carry, outs[ncar:])

    def _loop_outs(self, eqn, in_infos, carry, ys):
        whole = self._generic(eqn, in_infos)
        res = []
        for k, info in enumerate(list(carry) + list(ys)):
            if info.param and whole[k].param:
                res.append(whole[k])
            elif info.param:
                res.append(Info(True, info.sources, None))
            else:
                res.append(DATA)
        return res

    def _while(self, eqn, in_infos, mult, scope, emit):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = in_infos[:cn], in_infos[cn : cn + bn], in_infos[cn + bn :]
        body = self._split_closed(p["body_jaxpr"])
        cond = self._split_closed(p["cond_jaxpr"])
        carry = self._carry_fixpoint(body, bconsts, init, [], len(init))
        trips = static_trip_count(p, cconsts, init)
        if trips is None:
            trips = 1
            if emit:
                self._warn(
                    f"while loop at '{clean_scope(scope) or '<top>'}': trip count is not static; "
                    "its body was counted once"
                )
        self.walk(cond[0], cond[1], cconsts + carry, mult * trips, scope, emit)
        self.walk(body[0], body[1], bconsts + carry, mult * trips, scope, emit)
        return self._loop_outs(eqn, in_infos, carry, [])

    def _cond(self, eqn, in_infos, mult, scope, emit):
        ops_in = in_infos[1:]
        results = []
        saved_ops, saved_ew = self.ops, self.elementwise
        for branch in eqn.params["branches"]:
            self.ops, self.elementwise = [], 0
            jaxpr, consts = self._split_closed(branch)
            outs = self.walk(jaxpr, consts, ops_in, mult, scope, emit)
            cost = sum(o.macs for o in self.ops if o.op != "weight_transform")
            results.append((cost, self.ops, self.elementwise, outs))
        self.ops, self.elementwise = saved_ops, saved_ew
        best = max(range(len(results)), key=lambda i: results[i][0])
        cost, ops, ew, _ = results[best]
        self.ops.extend(ops)
        self.elementwise += ew
        if emit and len({r[0] for r in results}) > 1:
            self._warn(
                f"cond at '{clean_scope(scope) or '<top>'}': branches differ in cost; counted the "
                f"most expensive one (branch {best} of {len(results)}, {cost} MACs)"
            )
        whole = self._generic(eqn, in_infos)
        merged = []
        for k in range(len(eqn.outvars)):
            infos = [r[3][k] for r in results]
            if all(i.param for i in infos) and in_infos[0].param:
                merged.append(whole[k])
            elif all(i.param for i in infos):
                merged.append(Info(True, frozenset().union(*(i.sources for i in infos)), None))
            else:
                merged.append(DATA)
        return merged

    def _shard_map(self, eqn, in_infos, mult, scope, emit):
        p = eqn.params
        mesh_shape = dict(getattr(p["mesh"], "shape", {}))
        axes = None
        for key in ("newly_manual_axes", "manual_axes", "axis_names"):
            if p.get(key):
                axes = p[key]
                break
        shards = _prod(mesh_shape.get(a, 1) for a in (axes if axes is not None else mesh_shape))
        jaxpr, consts = self._split_closed(p["jaxpr"])
        if len(jaxpr.invars) != len(in_infos):
            self._unknown_sub(eqn, [p["jaxpr"]], in_infos, mult, scope, emit)
        else:
            # The body runs once per shard on per-shard blocks: count it × shards.
            self.walk(jaxpr, consts, in_infos, mult * max(1, shards), scope, emit)
        return self._generic(eqn, in_infos)

    def _unknown_sub(self, eqn, subs, in_infos, mult, scope, emit):
        for sub in subs:
            jaxpr, consts = self._split_closed(sub)
            ins = in_infos if len(jaxpr.invars) == len(in_infos) else [DATA] * len(jaxpr.invars)
            self.walk(jaxpr, consts, ins, mult, scope, emit)
        if emit:
            self._warn(
                f"primitive '{eqn.primitive.name}' holds sub-computations jaxcomp does not know; "
                "they were counted once"
            )

    # -- counting ------------------------------------------------------------

    def _count(self, eqn, in_infos, mult, scope):
        name = eqn.primitive.name
        if name == "dot_general" or name == "conv_general_dilated":
            self._count_contraction(eqn, in_infos, mult, scope)
        elif name == "fft":
            self._count_fft(eqn, mult, scope)
        elif (name in _ELEMENTWISE or name in _REDUCTIONS) and not all(i.param for i in in_infos):
            avals = eqn.invars if name in _REDUCTIONS else eqn.outvars
            self.elementwise += mult * _prod(avals[0].aval.shape)

    def _count_contraction(self, eqn, in_infos, mult, scope):
        lhs, rhs = eqn.invars[:2]
        li, ri = in_infos[:2]
        lshape, rshape = tuple(lhs.aval.shape), tuple(rhs.aval.shape)
        oshape = tuple(eqn.outvars[0].aval.shape)
        batch = False
        if eqn.primitive.name == "dot_general":
            (_lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            batch = len(lb) > 0
            skip = set(rc) | set(rb)
            macs = _prod(lshape) * _prod(d for i, d in enumerate(rshape) if i not in skip)
            kind = "dense"
        else:
            dn = eqn.params.get("dimension_numbers")
            out_feature_dim = dn.rhs_spec[0] if dn is not None else 0
            macs = _prod(oshape) * _prod(rshape) // max(1, int(rshape[out_feature_dim]))
            kind = "conv"
        if li.param and ri.param:
            kind, w, a = "weight_transform", (ri, rhs), (li, lhs)
            sources = li.sources | ri.sources
        elif ri.param:
            w, a, sources = (ri, rhs), (li, lhs), ri.sources
        elif li.param:
            w, a, sources = (li, lhs), (ri, rhs), li.sources
        else:
            w, a, sources = None, (li, lhs), EMPTY
            if kind == "dense":
                kind = "einsum"
        if kind == "dense" and batch:
            kind = "einsum"
        wvar = w[1] if w is not None else rhs
        self.ops.append(
            OpCount(
                scope=clean_scope(scope),
                op=kind,
                primitive=eqn.primitive.name,
                input_shape=tuple(a[1].aval.shape),
                weight_shape=tuple(wvar.aval.shape),
                output_shape=oshape,
                macs=macs * mult,
                multiplier=mult,
                weight_sources=tuple(sorted(sources)),
                input_dtype=np.dtype(a[1].aval.dtype),
                weight_dtype=np.dtype(wvar.aval.dtype),
                weight_ref=w[0].thunk if w is not None else None,
            )
        )

    def _count_fft(self, eqn, mult, scope):
        x = eqn.invars[0]
        lengths = tuple(int(n) for n in eqn.params["fft_lengths"])
        ftype = int(getattr(eqn.params["fft_type"], "value", eqn.params["fft_type"]))
        n = _prod(lengths)
        in_shape = tuple(x.aval.shape)
        transforms = _prod(in_shape[: len(in_shape) - len(lengths)])
        per = (5.0 if ftype in (0, 1) else 2.5) * n * math.log2(n) if n > 1 else 0.0
        flops = round(per * transforms) * mult
        self.ops.append(
            OpCount(
                scope=clean_scope(scope),
                op="fft",
                primitive="fft",
                input_shape=in_shape,
                weight_shape=None,
                output_shape=tuple(eqn.outvars[0].aval.shape),
                macs=round(flops / 2),
                multiplier=mult,
                weight_sources=(),
                input_dtype=np.dtype(x.aval.dtype),
                weight_dtype=None,
                fft_flops=flops,
            )
        )


def count_jaxpr(
    closed_jaxpr: Any,
    *,
    param_groups: list[int | None] | None = None,
    values: list[Any] | None = None,
) -> JaxprCount:
    """Counts the MACs of a closed jaxpr and classifies its weights.

    Args:
      closed_jaxpr: a ``ClosedJaxpr`` (from :func:`jax.make_jaxpr`).
      param_groups: one entry per jaxpr input: an integer group id (e.g. the
        index of the parameter path it belongs to) for parameter inputs,
        ``None`` for data inputs. ``None``: every input is data.
      values: the concrete input values (``None`` entries for abstract ones),
        used to evaluate weight densities lazily.

    Returns:
      A :class:`JaxprCount`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cj = jax.make_jaxpr(lambda w, x: x @ w)(jnp.ones((3, 4)), jnp.ones((2, 3)))
      >>> res = count_jaxpr(cj, param_groups=[0, None])
      >>> res.macs, res.ops[0].op, res.ops[0].weight_sources
      (24, 'dense', (0,))
    """
    jaxpr = closed_jaxpr.jaxpr
    n = len(jaxpr.invars)
    if param_groups is None:
        param_groups = [None] * n
    if len(param_groups) != n:
        raise ValueError(f"param_groups has {len(param_groups)} entries for {n} jaxpr inputs")
    ins = [
        Info(True, frozenset((g,)), ArgThunk(i)) if g is not None else DATA
        for i, g in enumerate(param_groups)
    ]
    consts = [Info(True, EMPTY, ConstThunk(c)) for c in closed_jaxpr.consts]
    w = _Walker()
    w.walk(jaxpr, consts, ins, 1, "", emit=True)
    macs = sum(o.macs for o in w.ops if o.op != "weight_transform")
    wt = sum(o.macs for o in w.ops if o.op == "weight_transform")
    fft = sum(o.fft_flops for o in w.ops)
    return JaxprCount(
        ops=tuple(w.ops),
        macs=int(macs),
        weight_transform_macs=int(wt),
        fft_flops=int(fft),
        elementwise_flops=int(w.elementwise),
        warnings=tuple(w.warnings),
        evaluator=Evaluator(values),
    )


def count_macs(fn: Any, *args: Any, **kwargs: Any) -> int:
    """Analytic MACs of ``fn(*args, **kwargs)`` (weight-only ops excluded).

    Example:
      >>> import jax.numpy as jnp
      >>> count_macs(lambda x, w: x @ w, jnp.ones((2, 3)), jnp.ones((3, 4)))
      24
    """
    return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs)).macs
