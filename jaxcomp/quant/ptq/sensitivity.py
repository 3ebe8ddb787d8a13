"""Per-layer quantization sensitivity: how much the loss grows when one layer is quantized.

The first half of a mixed-precision search
(:func:`jaxcomp.quant.ptq.mixed_precision.mixed_precision_search`): a
:class:`BitSensitivity` table ``Δloss[layer, bits]`` from

* :func:`quantization_sensitivity`: the loss increase on calibration data
  when *only* that layer is quantized to ``b`` bits (the others float);
* :func:`hessian_sensitivity`: the second-order proxy of HAWQ-v2,
  ``½ · Tr(H_l)/n_l · ||Q_b(W_l) - W_l||²``, with each layer's Hessian
  trace estimated by Hutchinson's method (:func:`hessian_trace`,
  ``E[vᵀHv]`` over Rademacher ``v``). At a minimum of a quadratic loss
  both tables agree exactly;

and, for BOPs budgets, :func:`layer_macs` (multiply-accumulates per example
of each Dense/Conv kernel of a linen model).

References:
  Wang, Liu, Lin, Lin & Han, HAQ, arXiv:1811.08886.
  Dong et al., HAWQ-V2: Hessian aware trace-weighted quantization,
  arXiv:1911.03852. Hutchinson, A stochastic estimator of the trace of the
  influence matrix (1989); Avron & Toledo, arXiv:1005.4732.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.keys import check_key
from jaxcomp.ops.capture import capture_linen, module_of
from jaxcomp.quant.uniform import fake_quant, validate_bits
from jaxcomp.select import selectors
from jaxcomp.select.selection import flatten

__all__ = [
    "BitSensitivity",
    "hessian_sensitivity",
    "hessian_trace",
    "layer_macs",
    "quantization_sensitivity",
]

_DEFAULT_WHERE = selectors.path(r"(.*/)?kernel") & selectors.ndim(min=2)


@dataclasses.dataclass(frozen=True)
class BitSensitivity:
    """Predicted loss increase of quantizing one layer alone, per candidate bit width.

    Attributes:
      paths: the layers' parameter paths (rows).
      bits: candidate widths (columns), ascending.
      values: ``(len(paths), len(bits))`` loss increases.
      sizes: weights per layer.
      macs: multiply-accumulates per example per layer (None: no BOPs budget).
      baseline: the float model's loss (0 for proxies that do not evaluate it).
      method: how ``values`` were obtained.

    Raises:
      ValueError: inconsistent shapes, unsorted or out-of-range bits,
        non-finite values, non-positive sizes or negative MACs.

    Example:
      >>> s = BitSensitivity(("a", "b"), (2, 4), [[1.0, 0.1], [0.5, 0.0]], (10, 20))
      >>> s.row("a")
      {2: 1.0, 4: 0.1}
    """

    paths: tuple[str, ...]
    bits: tuple[int, ...]
    values: Any
    sizes: tuple[int, ...]
    macs: tuple[int, ...] | None = None
    baseline: float = 0.0
    method: str = "given"

    def __post_init__(self):
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        bits = tuple(validate_bits(b, "BitSensitivity: bits") for b in self.bits)
        if not bits or list(bits) != sorted(set(bits)):
            raise ValueError(f"BitSensitivity: bits={self.bits!r} must be non-empty, ascending "
                             "and without repeats")
        object.__setattr__(self, "bits", bits)
        v = np.asarray(self.values, np.float64)
        if v.shape != (len(self.paths), len(bits)):
            raise ValueError(f"BitSensitivity: values has shape {v.shape}, expected "
                             f"({len(self.paths)}, {len(bits)}) (layers × bit widths)")
        if not np.all(np.isfinite(v)):
            raise ValueError("BitSensitivity: values hold NaN or Inf; the loss diverged for "
                             "some layer and width (drop that width or fix the loss)")
        object.__setattr__(self, "values", v)
        sizes = tuple(int(n) for n in self.sizes)
        if len(sizes) != len(self.paths) or any(n < 1 for n in sizes):
            raise ValueError(f"BitSensitivity: sizes={self.sizes!r} must hold one positive "
                             "count per layer")
        object.__setattr__(self, "sizes", sizes)
        if self.macs is not None:
            macs = tuple(int(m) for m in self.macs)
            if len(macs) != len(self.paths) or any(m < 0 for m in macs):
                raise ValueError(f"BitSensitivity: macs={self.macs!r} must hold one "
                                 "non-negative count per layer")
            object.__setattr__(self, "macs", macs)

    def row(self, path: str) -> dict[int, float]:
        """``{bits: Δloss}`` of one layer."""
        if path not in self.paths:
            raise KeyError(f"path {path!r} is not in the table; layers: {list(self.paths)}")
        return dict(zip(self.bits, self.values[self.paths.index(path)].tolist()))

    def __str__(self) -> str:
        w = max([len(p) for p in self.paths] + [5])
        head = f"{'layer':<{w}} {'weights':>9} " + " ".join(f"{f'{b}-bit':>10}" for b in self.bits)
        title = (f"Δloss when only one layer is quantized ({self.method}; baseline "
                 f"{self.baseline:.4g})")
        lines = [title, head, "-" * len(head)]
        for p, n, r in zip(self.paths, self.sizes, self.values):
            lines.append(f"{p:<{w}} {n:>9} " + " ".join(f"{v:>10.3g}" for v in r))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- sensitivity


def _candidate_bits(bits: Sequence[int]) -> tuple[int, ...]:
    if isinstance(bits, (int, np.integer)):
        bits = (bits,)
    out = sorted({validate_bits(b, "bits") for b in bits})
    if not out:
        raise ValueError("bits is empty; pass candidate widths, e.g. (2, 4, 8)")
    return tuple(out)


def _fq(w, *, bits):
    return fake_quant(w, bits=bits, axis=-1)


_fake_quant_jit = jax.jit(_fq, static_argnames=("bits",))


def _default_quantizer(w: jax.Array, bits: int) -> jax.Array:
    return _fake_quant_jit(w, bits=bits)


def _scalar(v: Any, what: str) -> float:
    if np.ndim(v) != 0:
        raise TypeError(f"loss_fn must return a scalar; got shape {np.shape(v)} {what}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"loss_fn returned {v} {what}; return a finite loss")
    return v


def _select(params: Any, where: Any, what: str):
    sel = flatten(params, where, what=what, default=_DEFAULT_WHERE,
                  hint="Select the quantized kernels, e.g. where=r'.*/kernel'.")
    for p, x in zip(sel.sel_paths, sel.sel_leaves):
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            raise TypeError(f"{what}: parameter '{p}' has dtype {jnp.asarray(x).dtype}; select "
                            "float weights only")
    return sel


def _macs_of(macs: Mapping[str, int] | None, paths: Sequence[str]) -> tuple[int, ...] | None:
    if macs is None:
        return None
    missing = [p for p in paths if p not in macs]
    if missing:
        raise ValueError(f"macs has no entry for {missing}; pass {{path: MACs}} for every "
                         "selected layer (layer_macs computes it for linen models)")
    return tuple(int(macs[p]) for p in paths)


def quantization_sensitivity(
    loss_fn: Callable[[Any], Any],
    params: Any,
    *,
    bits: Sequence[int] = (2, 3, 4, 6, 8),
    where: Any = None,
    quantizer: Callable[[jax.Array, int], jax.Array] | None = None,
    macs: Mapping[str, int] | None = None,
) -> BitSensitivity:
    """Measures ``loss(only layer l quantized to b bits) - loss(float)`` for every layer and width.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` on calibration data (jit it
        yourself; it is called ``1 + layers × widths`` times with the same
        structure).
      params: the float parameters.
      bits: candidate widths.
      where: the layers (default: leaves named ``kernel`` with ``ndim >= 2``).
      quantizer: ``quantizer(w, bits) -> ŵ`` (default: per-output-channel
        symmetric :func:`~jaxcomp.quant.uniform.fake_quant`, ``axis=-1``, the
        grid of ``fake_quantization``'s defaults; its widths are ``>= 2``).
      macs: ``{path: MACs per example}`` for BOPs budgets (:func:`layer_macs`).

    Returns:
      A :class:`BitSensitivity` with ``method="loss"``.

    Raises:
      ValueError: bad widths, a where that selects nothing, a non-finite loss
        (naming the layer and width), missing MACs.
      TypeError: a non-scalar loss, non-float selected leaves.

    Example:
      >>> import jax.numpy as jnp
      >>> a0, b0 = jnp.array([[0.3], [-1.0]]), jnp.ones((2, 1))
      >>> params = {"a": {"kernel": a0}, "b": {"kernel": b0}}
      >>> loss = lambda p: (jnp.sum((p["a"]["kernel"] - a0) ** 2)
      ...                   + jnp.sum((p["b"]["kernel"] - b0) ** 2))
      >>> s = quantization_sensitivity(loss, params, bits=(2, 8))  # 2 bits: 0.3 -> 0
      >>> s.paths, s.values.round(4).tolist()
      (('a/kernel', 'b/kernel'), [[0.09, 0.0], [0.0, 0.0]])

    References:
      Wang et al., HAQ, arXiv:1811.08886.
    """
    cands = _candidate_bits(bits)
    sel = _select(params, where, "quantization_sensitivity")
    q = _default_quantizer if quantizer is None else quantizer
    baseline = _scalar(loss_fn(params), "for the float parameters")
    leaves = sel.sel_leaves
    values = np.zeros((len(leaves), len(cands)))
    for i, (p, w) in enumerate(zip(sel.sel_paths, leaves)):
        for j, b in enumerate(cands):
            new = list(leaves)
            wq = q(jnp.asarray(w), b)
            if jnp.shape(wq) != jnp.shape(w):
                raise ValueError(f"quantizer returned shape {jnp.shape(wq)} for '{p}' of shape "
                                 f"{jnp.shape(w)}")
            new[i] = wq
            values[i, j] = _scalar(loss_fn(sel.rebuild(new)), f"with '{p}' at {b} bits") - baseline
    return BitSensitivity(tuple(sel.sel_paths), cands, values,
                          tuple(int(np.size(w)) for w in leaves),
                          _macs_of(macs, sel.sel_paths), baseline, "loss")


def hessian_trace(
    loss_fn: Callable[[Any], Any],
    params: Any,
    *,
    key: jax.Array,
    n_samples: int = 32,
    where: Any = None,
) -> dict[str, float]:
    """Hutchinson estimates of each selected layer's Hessian trace ``Tr(∂²L/∂W_l²)``.

    With Rademacher ``v`` over all selected layers, ``v_lᵀ(Hv)_l`` has
    expectation ``Tr(H_ll)`` (the cross terms average out); ``Hv`` is one
    forward-over-reverse product, run for the ``n_samples`` draws in one
    compiled loop and averaged.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, differentiable.
      params: the point to expand around.
      key: PRNG key for the probe vectors.
      n_samples: number of probes (> 0).
      where: the layers (default: leaves named ``kernel`` with ``ndim >= 2``).

    Returns:
      ``{path: trace}``.

    Raises:
      ValueError: ``n_samples < 1``, a where that selects nothing.
      TypeError: a bad key, non-float selected leaves.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"a": {"kernel": jnp.ones((2, 3))}}
      >>> loss = lambda p: 1.5 * jnp.sum(p["a"]["kernel"] ** 2)  # H = 3 I
      >>> hessian_trace(loss, params, key=jax.random.key(0), n_samples=2)
      {'a/kernel': 18.0}

    References:
      Hutchinson 1989; Avron & Toledo, arXiv:1005.4732; HAWQ-V2, arXiv:1911.03852.
    """
    key = check_key(key, "hessian_trace: key")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"hessian_trace: n_samples={n_samples!r} must be a positive int")
    sel = _select(params, where, "hessian_trace")
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(n_samples))
    leaves = list(sel.leaves)
    for i in sel.idx:
        leaves[i] = jnp.asarray(leaves[i])
    try:
        hash(loss_fn)
    except TypeError:  # compiled per call instead of cached by loss_fn
        loss_fn = functools.partial(loss_fn.__call__)
    total = np.asarray(_probes(loss_fn, sel.treedef, tuple(sel.idx), leaves, keys),
                       np.float64).sum(0)
    return {p: float(t / n_samples) for p, t in zip(sel.sel_paths, total)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _probes(loss_fn, treedef, idx, leaves, keys):
    """``v_lᵀ(Hv)_l`` of the selected leaves for one Rademacher probe per key, in one loop."""
    def loss_of(sel_leaves):
        full = list(leaves)
        for i, x in zip(idx, sel_leaves):
            full[i] = x
        return loss_fn(jax.tree_util.tree_unflatten(treedef, full))

    sel = [leaves[i] for i in idx]

    def probe(k):
        ks = jax.random.split(k, len(sel))
        vs = [jax.random.rademacher(kk, x.shape, x.dtype) for kk, x in zip(ks, sel)]
        _, hv = jax.jvp(jax.grad(loss_of), (sel,), (vs,))
        return jnp.stack([jnp.sum(v.astype(jnp.float32) * h.astype(jnp.float32))
                          for v, h in zip(vs, hv)])

    return jax.lax.map(probe, keys)  # one probe vector in memory at a time


def hessian_sensitivity(
    loss_fn: Callable[[Any], Any],
    params: Any,
    *,
    key: jax.Array,
    bits: Sequence[int] = (2, 3, 4, 6, 8),
    n_samples: int = 32,
    where: Any = None,
    quantizer: Callable[[jax.Array, int], jax.Array] | None = None,
    macs: Mapping[str, int] | None = None,
) -> BitSensitivity:
    """HAWQ-v2's proxy ``½ · Tr(H_l)/n_l · ||Q_b(W_l) - W_l||²`` for every layer and width.

    The second-order Taylor term of the loss increase, with the layer's
    Hessian replaced by its average eigenvalue (:func:`hessian_trace`); it
    needs one probe per sample instead of one loss evaluation per layer and
    width.

    Args:
      loss_fn, params, key, n_samples, where: see :func:`hessian_trace`.
      bits, quantizer, macs: see :func:`quantization_sensitivity`.

    Returns:
      A :class:`BitSensitivity` with ``method="hessian"``.

    Raises:
      ValueError, TypeError: as :func:`hessian_trace` and :func:`quantization_sensitivity`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> a0 = jnp.array([[0.3], [-1.0]])
      >>> params = {"a": {"kernel": a0}}
      >>> loss = lambda p: jnp.sum((p["a"]["kernel"] - a0) ** 2)  # H = 2 I: proxy = ||Δ||²
      >>> s = hessian_sensitivity(loss, params, key=jax.random.key(0), bits=(2,), n_samples=1)
      >>> s.values.round(4).tolist()
      [[0.09]]

    References:
      Dong et al., HAWQ-V2, arXiv:1911.03852.
    """
    cands = _candidate_bits(bits)
    traces = hessian_trace(loss_fn, params, key=key, n_samples=n_samples, where=where)
    sel = _select(params, where, "hessian_sensitivity")
    q = _default_quantizer if quantizer is None else quantizer
    values = np.zeros((len(traces), len(cands)))
    for i, (p, w) in enumerate(zip(sel.sel_paths, sel.sel_leaves)):
        w = jnp.asarray(w)
        for j, b in enumerate(cands):
            d = np.asarray(q(w, b), np.float64) - np.asarray(w, np.float64)
            values[i, j] = 0.5 * traces[p] / w.size * float(np.sum(d * d))
    return BitSensitivity(tuple(sel.sel_paths), cands, values,
                          tuple(int(np.size(w)) for w in sel.sel_leaves),
                          _macs_of(macs, sel.sel_paths), 0.0, "hessian")


def layer_macs(apply_fn: Callable[..., Any], variables: Any, x: Any, *,
               where: Any = None) -> dict[str, int]:
    """Multiply-accumulates per example of each selected Dense/Conv kernel (1 MAC = 2 FLOPs).

    A kernel's MACs are its size times the number of positions its layer is
    applied at (output elements per example ÷ output features, summed over
    calls), so grouped convolutions and repeated calls count correctly.

    Args:
      apply_fn: ``apply_fn(variables, x)`` running Flax linen modules.
      variables: what ``apply_fn`` takes; paths are those of its params.
      x: an input batch ``(N, ...)``.
      where: kernels (default: leaves named ``kernel`` with ``ndim >= 2``).

    Returns:
      ``{path: MACs per example}``.

    Raises:
      ValueError: a selected kernel whose module never ran; a where that selects nothing.
      TypeError: a kernel of a module other than ``nn.Dense``/``nn.Conv``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> layer_macs(model.apply, v, jnp.ones((2, 4)))
      {'fc1/kernel': 32, 'fc2/kernel': 24}
    """
    has_params = isinstance(variables, Mapping) and "params" in variables
    params = variables["params"] if has_params else variables
    sel = _select(params, where, "layer_macs")
    mods = {module_of(p) for p in sel.sel_paths}
    cap = capture_linen(apply_fn, variables, x, where=[re.escape(m) for m in mods],
                        record="outputs")
    n = int(jnp.shape(x)[0]) if not isinstance(x, (list, tuple)) else int(jnp.shape(x[0])[0])
    out = {}
    for p, w in zip(sel.sel_paths, sel.sel_leaves):
        mod = cap.modules[module_of(p)].module
        if not isinstance(mod, (nn.Dense, nn.Conv)):
            raise TypeError(f"layer_macs: parameter '{p}' belongs to a {type(mod).__name__}; "
                            "only nn.Dense and nn.Conv kernels are counted")
        cout = int(jnp.shape(w)[-1])
        positions = sum(int(np.size(o)) for o in cap.outputs[module_of(p)]) // (n * cout)
        out[p] = positions * int(np.size(w))
    return out
