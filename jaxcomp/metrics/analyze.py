"""Compression-aware compute and memory accounting of any JAX function.

:func:`analyze` traces a function to a jaxpr, counts its multiply-accumulates
analytically (see :mod:`jaxcomp.metrics.jaxpr_count` for the conventions),
finds which operand of every dense/conv/einsum is a weight and which
parameter it comes from, measures how sparse that weight actually is, folds
in what the compression state and compressed leaves say (bit widths, rank
fractions), and optionally asks XLA for its own FLOP, byte and memory
figures. 1 MAC = 2 FLOPs throughout.

Layer names come from JAX name stacks. Flax linen runs every module method
under ``jax.named_scope`` by default (``flax.config.flax_profile``, on by
default; ``nn.enable_named_call()`` re-enables it if switched off), so a layer
is named by its module path (``block_0/Conv_0``); the root module's class
name that linen puts first is removed when the weights' parameter paths show
it is a prefix. Flax nnx and plain JAX emit no name stacks: such layers are
named after their weight's parameter path (``linear1`` for
``linear1/kernel``), or the primitive when there is no weight; wrap calls in
``jax.named_scope("...")`` to name them yourself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcomp.core.errors import list_paths
from jaxcomp.core.info import LeafInfo, compression_info
from jaxcomp.core.leaves import dtype_bits, is_compressed
from jaxcomp.metrics import report as reports
from jaxcomp.metrics.jaxpr_count import count_jaxpr
from jaxcomp.metrics.xla import MemoryStats, xla_cost
from jaxcomp.select.paths import leaves_with_paths

__all__ = ["Analysis", "Layer", "analyze"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One MAC-bearing operation of an analysed function.

    Attributes:
      name: module path the op was traced under (see the module docstring).
      op: ``"dense"``, ``"conv"``, ``"einsum"``, ``"fft"`` or ``"weight_transform"``.
      input_shape, weight_shape, output_shape: operand and result shapes
        (for ops without a weight, ``weight_shape`` is the second operand).
      macs: dense MACs, loop trip counts included (``multiplier``).
      multiplier: product of the trip counts of the enclosing loops.
      weight_path: canonical parameter path of the weight, or None.
      density: fraction of non-zero weights used (1.0 when unknown).
      compute_fraction: MACs of the executed compressed form over dense.
      weight_bits, act_bits: operand bit widths for BOPs.
      effective_macs: ``macs * density * compute_fraction``.
      bops: ``effective_macs * weight_bits * act_bits``.
      scope: the raw (wrapper-stripped) name stack.
      primitive: the JAX primitive.
    """

    name: str
    op: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...]
    macs: int
    multiplier: int
    weight_path: str | None
    density: float
    compute_fraction: float
    weight_bits: int
    act_bits: int
    effective_macs: float
    bops: float
    scope: str = ""
    primitive: str = ""

    @property
    def flops(self) -> int:
        """Dense FLOPs (1 MAC = 2 FLOPs)."""
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["flops"] = self.flops
        return d


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Result of :func:`analyze` (1 MAC = 2 FLOPs).

    Attributes:
      macs: dense MACs per call of all dense/conv/einsum/fft ops (weight
        transforms excluded).
      flops: ``2 * macs``.
      effective_macs: sum over layers of ``macs * density * compute_fraction``.
      effective_flops: ``2 * effective_macs``.
      bops: sum over layers of ``effective_macs * weight_bits * act_bits``.
      fft_flops: real FLOPs of FFTs (half of it is included in ``macs``).
      weight_transform_macs: MACs of ops between weights only (e.g. ``u @ v``
        of a materialized low-rank factorisation), not in ``macs``.
      elementwise_flops: elementwise and reduction FLOPs on data (not in ``flops``).
      layers: one :class:`Layer` per MAC-bearing op.
      xla_flops: XLA's own FLOP count, None when not compiled or not reported.
      xla_bytes_accessed: XLA's bytes accessed, likewise.
      memory: XLA's :class:`~jaxcomp.metrics.xla.MemoryStats`, likewise.
      compile_seconds: lowering + XLA compile time (None when not compiled).
      analysis_seconds: time of tracing and counting, compilation excluded.
      warnings: what could not be determined exactly.
    """

    macs: int
    flops: int
    effective_macs: float
    effective_flops: float
    bops: float
    fft_flops: int
    weight_transform_macs: int
    elementwise_flops: int
    layers: tuple[Layer, ...]
    xla_flops: float | None = None
    xla_bytes_accessed: float | None = None
    memory: MemoryStats | None = None
    compile_seconds: float | None = None
    analysis_seconds: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def effective_fraction(self) -> float:
        """``effective_macs / macs`` (1.0 for an empty function)."""
        return self.effective_macs / self.macs if self.macs else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layers"] = [l.to_dict() for l in self.layers]
        d["memory"] = None if self.memory is None else self.memory.to_dict()
        d["warnings"] = list(self.warnings)
        d["convention"] = reports.CONVENTION
        return json.loads(json.dumps(d))  # tuples -> lists, numpy scalars rejected early

    def to_json(self, **kwargs: Any) -> str:
        """The analysis as a JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def table(self, max_rows: int | None = None) -> Any:
        """A ``rich.table.Table`` (title states "1 MAC = 2 FLOPs")."""
        return reports.analysis_table(self, max_rows=max_rows)

    def __str__(self) -> str:
        return reports.render_text(self.table())


def _normalize_argnums(params_argnums: Any, nargs: int) -> tuple[int, ...]:
    if params_argnums is None:
        return (0,) if nargs >= 2 else ()
    nums = (params_argnums,) if isinstance(params_argnums, int) else tuple(params_argnums)
    out = []
    for a in nums:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"params_argnums must be ints, got {a!r}")
        if not -nargs <= a < nargs:
            raise ValueError(
                f"params_argnums={params_argnums!r} is out of range for {nargs} positional "
                f"argument(s); pass the index of the parameter argument(s), e.g. 0"
            )
        a = int(a) % nargs
        if a not in out:
            out.append(a)
    return tuple(out)


def _concrete(x: Any) -> Any:
    if isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer)):
        return None
    if hasattr(x, "__array__") or isinstance(x, (int, float, complex, bool, np.generic)):
        return x
    return None


def _match_info(infos: dict[str, LeafInfo], paths: list[str]) -> dict[str, LeafInfo]:
    """Maps each info path to a parameter path: exact, else a unique '/'-suffix match."""
    pathset = set(paths)
    out: dict[str, LeafInfo] = {}
    for key, info in infos.items():
        if key in pathset:
            hit = key
        else:
            cands = [p for p in paths if p.endswith("/" + key) or (p and key.endswith("/" + p))]
            if len(cands) != 1:
                why = "matches several parameters" if cands else "names no parameter"
                raise ValueError(
                    f"compression info for '{key}' {why} of the analysed params; "
                    f"available paths:\n{list_paths(cands or paths, close_to=key)}\n"
                    "Pass the compression state built for these params (or a dict "
                    "path -> LeafInfo using these paths)."
                )
            hit = cands[0]
        out[hit] = out[hit].combine(info) if hit in out else info
    return out


def _strip_root(names: list[str], weight_dirs: list[str | None]) -> list[str]:
    """Removes the root-module prefix linen adds, as voted by weight paths."""
    votes: Counter = Counter()
    for name, wdir in zip(names, weight_dirs):
        if not name or wdir is None:
            continue
        n, d = name.split("/"), wdir.split("/") if wdir else []
        for k in range(min(len(n) - 1, len(d)), 0, -1):
            if n[-k:] == d[-k:]:
                votes["/".join(n[:-k])] += 1
                break
    if not votes:
        return names
    prefix, _ = votes.most_common(1)[0]
    out = []
    for name in names:
        if name.startswith(prefix + "/") and len(name) > len(prefix) + 1:
            out.append(name[len(prefix) + 1 :])
        else:
            out.append(name)
    return out


def _op_label(op: Any) -> str:
    return op.scope or op.primitive


def _trace_error(fn: Any, e: Exception) -> ValueError:
    name = getattr(fn, "__name__", type(fn).__name__)
    return ValueError(
        f"analyze could not trace {name}: {type(e).__name__}: {e}\n"
        "analyze traces fn with abstract values (jax.make_jaxpr), so Python control flow on "
        "array values, non-array arguments and shape errors fail. Fix: bind static "
        "arguments (shapes, flags, strings, modules) with functools.partial or a lambda, "
        "use jax.lax.cond/while_loop for data-dependent control flow, and check that the "
        "arguments have the shapes fn expects."
    )


def analyze(
    fn: Callable[..., Any],
    *args: Any,
    compression: Any = None,
    params_argnums: int | Sequence[int] | None = None,
    compile: bool = True,
    **kwargs: Any,
) -> Analysis:
    """Counts compute and memory of ``fn(*args, **kwargs)``, aware of compression.

    Weights are the dot/conv operands computed only from the parameter
    arguments (``params_argnums``) and constants; their canonical parameter
    paths (as :func:`jaxcomp.select.paths.leaves_with_paths` names them, prefixed
    by ``"<argnum>/"`` when there are several parameter arguments) name them.
    Per layer:

    * ``density``: from ``compression`` info when it gives one; else the
      fraction of non-zeros of the weight actually used, measured by evaluating
      its parameter-only computation on the concrete arguments (so
      ``w * mask`` inside ``fn`` and pre-zeroed params both count); 1.0 when
      the arguments are abstract (a warning says so).
    * ``compute_fraction``: compression info, else the compressed leaf's
      :meth:`~jaxcomp.core.leaves.CompressedLeaf.compute_fraction` (e.g. a
      ``LowRank`` rank fraction), else 1.
    * ``weight_bits``: compression info, else the compressed leaf's
      ``weight_bits`` (``QArray.bits``, codebook index bits), else the weight
      dtype's bits. ``act_bits``: compression info, else the activation dtype's bits.

    Explicit compression info wins over what is measured or inferred.
    ``effective_macs = macs * density * compute_fraction`` (Han et al. 2015);
    ``bops = effective_macs * weight_bits * act_bits`` (Baskin et al.; van
    Baalen et al.). Dots/convs whose operands are both weights (e.g. the
    ``u @ v`` of a ``LowRank`` materialized inside ``fn``) are per-call
    constants: they are listed with op ``"weight_transform"`` and summed in
    ``weight_transform_macs``, not in ``macs``.

    Args:
      fn: any JAX-traceable function.
      *args: its positional arguments: arrays, pytrees of arrays, or
        ``jax.ShapeDtypeStruct`` placeholders.
      compression: a compressor state, or a dict path -> :class:`LeafInfo`.
      params_argnums: index or indices of the parameter arguments. Default:
        ``0`` when there are at least two positional arguments, else none.
      compile: also lower and compile with XLA for its cost and memory
        analyses (``False`` leaves those fields ``None``).
      **kwargs: keyword arguments of ``fn`` (treated as data).

    Returns:
      An :class:`Analysis`.

    Raises:
      TypeError: ``fn`` is not callable.
      ValueError: ``fn`` cannot be traced, ``params_argnums`` is out of range,
        or ``compression`` names paths that are not in the params.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.ones((784, 300)).at[:392].set(0.0)}
      >>> a = analyze(lambda p, x: x @ p["w"], params, jnp.ones((1, 784)), compile=False)
      >>> a.macs, a.effective_macs, a.layers[0].weight_path, a.layers[0].density
      (235200, 117600.0, 'w', 0.5)

    References:
      fvcore, ``fvcore/nn/flop_count.py`` (counting conventions).
      Han, Pool, Tran, Dally, "Learning both weights and connections for
      efficient neural networks", arXiv:1506.02626 (effective MACs of sparse layers).
      Baskin et al., "UNIQ: uniform noise injection for non-uniform
      quantization of neural networks", arXiv:1804.10969 (BOPs).
      van Baalen et al., "Bayesian bits: unifying quantization and pruning",
      arXiv:2005.07093 (BOPs).
    """
    if not callable(fn):
        raise TypeError(f"analyze needs a callable fn, got {type(fn).__name__}")
    t0 = time.perf_counter()
    argnums = _normalize_argnums(params_argnums, len(args))

    flat, treedef = jax.tree_util.tree_flatten((args, kwargs))
    # Flat index ranges of each positional argument; then leaf path ids of params.
    offsets, pos = [], 0
    for a in args:
        offsets.append(pos)
        pos += len(jax.tree_util.tree_leaves(a))
    paths: list[str] = []
    leaf_objs: list[Any] = []
    groups: list[int | None] = [None] * len(flat)
    for a in argnums:
        i = offsets[a]
        prefix = f"{a}/" if len(argnums) > 1 else ""
        for p, leaf in leaves_with_paths(args[a]):
            n = len(jax.tree_util.tree_leaves(leaf))
            gid = len(paths)
            paths.append(prefix + p)
            leaf_objs.append(leaf)
            for j in range(i, i + n):
                groups[j] = gid
            i += n

    infos = compression_info(compression) if compression is not None else {}
    if infos and not paths:
        raise ValueError(
            "analyze got compression info but no parameter argument to apply it to; pass "
            "params_argnums=<index of the params argument>"
        )
    infos = _match_info(infos, paths)

    def flat_fn(*leaves):
        a, k = jax.tree_util.tree_unflatten(treedef, leaves)
        return fn(*a, **k)

    try:
        closed = jax.make_jaxpr(flat_fn)(*flat)
    except Exception as e:
        raise _trace_error(fn, e) from e

    values = [_concrete(x) for x in flat]
    warnings = []
    values_known = not any(v is None for v, g in zip(values, groups) if g is not None)
    if not values_known:
        warnings.append("parameter arguments are abstract: weight densities unknown, taken as 1.0")
    res = count_jaxpr(closed, param_groups=groups, values=values)
    warnings.extend(res.warnings)

    unknown_density: list[str] = []
    rows: list[dict[str, Any]] = []
    used_paths = set()
    for op in res.ops:
        srcs = op.weight_sources
        wpath = None
        gid = None
        if srcs:
            gid = _pick_weight(srcs, math.prod(op.weight_shape or ()), paths, leaf_objs)
            wpath = paths[gid]
        weighted = op.op in ("dense", "conv", "einsum") and (op.weight_ref is not None or srcs)
        info = infos.get(wpath) if (wpath is not None and op.op != "weight_transform") else None
        leaf = leaf_objs[gid] if (gid is not None and op.op != "weight_transform") else None
        if wpath is not None and op.op != "weight_transform":
            used_paths.add(wpath)
        density = None
        if info is not None and info.density is not None:
            density = float(info.density)
        elif weighted:
            density = res.weight_density(op)
            if density is None and values_known:
                unknown_density.append(wpath or _op_label(op))
        density = 1.0 if density is None else density
        cf = 1.0
        if info is not None and info.compute_fraction is not None:
            cf = float(info.compute_fraction)
        elif leaf is not None and is_compressed(leaf):
            cf = float(leaf.compute_fraction())
        wbits = dtype_bits(op.weight_dtype) if op.weight_dtype is not None else None
        if leaf is not None and is_compressed(leaf):
            wbits = int(leaf.weight_bits)
        if info is not None and info.weight_bits is not None:
            wbits = int(info.weight_bits)
        abits = dtype_bits(op.input_dtype)
        if op.op == "fft":
            abits = abits // 2 if np.issubdtype(op.input_dtype, np.complexfloating) else abits
            wbits = abits
        if info is not None and info.act_bits is not None:
            abits = int(info.act_bits)
        eff = op.macs * density * cf
        rows.append(
            {
                "scope": op.scope,
                "op": op.op,
                "primitive": op.primitive,
                "input_shape": op.input_shape,
                "weight_shape": op.weight_shape,
                "output_shape": op.output_shape,
                "macs": op.macs,
                "multiplier": op.multiplier,
                "weight_path": wpath,
                "density": density,
                "compute_fraction": cf,
                "weight_bits": int(wbits),
                "act_bits": int(abits),
                "effective_macs": float(eff),
                "bops": float(eff * wbits * abits),
            }
        )
    if unknown_density:
        why = f" ({res.evaluator.errors[0]})" if res.evaluator.errors else ""
        warnings.append(
            "weight density could not be evaluated and was taken as 1.0 (weights indexed by "
            "a loop counter or computed inside shard_map are not evaluated) for: "
            f"{', '.join(dict.fromkeys(unknown_density))}{why}"
        )
    if res.macs == 0 and res.weight_transform_macs > 0:
        warnings.append(
            "every dot/conv has only parameter or constant operands, so all were counted as "
            "weight transforms; pass the inputs as arguments (not built inside fn) and check "
            "params_argnums"
        )
    unused = [p for p in infos if p not in used_paths]
    if unused:
        warnings.append(
            "compression info for parameters no MAC-bearing op uses as a weight: "
            + ", ".join(unused[:8])
            + (" ..." if len(unused) > 8 else "")
        )

    wdirs = [r["weight_path"].rpartition("/")[0] if r["weight_path"] else None for r in rows]
    names = _strip_root([r["scope"] for r in rows], wdirs)
    layers = []
    for r, name, wdir in zip(rows, names, wdirs):
        if not name:
            name = wdir or (r["weight_path"] or r["primitive"])
        layers.append(Layer(name=name, **r))
    counted = [l for l in layers if l.op != "weight_transform"]
    macs = res.macs
    eff = float(sum(l.effective_macs for l in counted))
    bops = float(sum(l.bops for l in counted))
    analysis_seconds = time.perf_counter() - t0

    xla_fields: dict[str, Any] = {}
    if compile:
        try:
            c = xla_cost(flat_fn, *flat)
            xla_fields = {
                "xla_flops": c.flops,
                "xla_bytes_accessed": c.bytes_accessed,
                "memory": c.memory,
                "compile_seconds": c.lower_seconds + c.compile_seconds,
            }
        except Exception as e:  # noqa: BLE001 - XLA analyses are best effort
            warnings.append(
                f"XLA compilation failed ({type(e).__name__}: {e}); XLA fields are None"
            )
    return Analysis(
        macs=int(macs),
        flops=2 * int(macs),
        effective_macs=eff,
        effective_flops=2.0 * eff,
        bops=bops,
        fft_flops=res.fft_flops,
        weight_transform_macs=res.weight_transform_macs,
        elementwise_flops=res.elementwise_flops,
        layers=tuple(layers),
        analysis_seconds=analysis_seconds,
        warnings=tuple(warnings),
        **xla_fields,
    )


def _pick_weight(srcs: Sequence[int], size: int, paths: list[str], leaves: list[Any]) -> int:
    """Which of the parameters a weight is computed from names it.

    Prefers a parameter of the weight's size, then one whose name does not say
    "mask", then a floating-point (or compressed) one, then the first.
    """

    def score(s: int) -> tuple:
        leaf = leaves[s]
        dtype = getattr(leaf, "dtype", None)
        floating = is_compressed(leaf) or (
            dtype is not None and np.issubdtype(np.dtype(dtype), np.inexact)
        )
        not_mask = "mask" not in paths[s].rpartition("/")[2].lower()
        return (_dense_size(leaf) == size, not_mask, floating, _dense_size(leaf), -s)

    return max(srcs, key=score)


def _dense_size(leaf: Any) -> int:
    """Elements of the dense tensor a parameter leaf stands for."""
    shape = getattr(leaf, "shape", None)
    if shape is None:
        return int(np.size(leaf))
    return int(math.prod(int(d) for d in shape))
