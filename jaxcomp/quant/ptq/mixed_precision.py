"""Mixed-precision bit allocation: per-layer sensitivity, then bits under a size or BOPs budget.

HAQ (Wang et al. 2019) gives each layer its own weight bit width under a
hardware budget, found by reinforcement learning. Here the search is a
knapsack over measured or estimated per-layer costs:

1. **Sensitivity** — a :class:`~jaxcomp.quant.ptq.sensitivity.BitSensitivity`
   table ``Δloss[layer, bits]`` (:mod:`jaxcomp.quant.ptq.sensitivity`, names
   re-exported here): measured by :func:`quantization_sensitivity` (the
   loss increase when only that layer is quantized) or estimated by
   :func:`hessian_sensitivity` (HAWQ-v2's Hutchinson trace × quantization
   noise proxy).

2. **Search** — :func:`mixed_precision_search` picks one width per layer
   minimising the summed ``Δloss`` subject to a model-size budget in bytes
   (``Σ n_l · b_l / 8``, weights only) and/or a BOPs budget
   (``Σ MACs_l · b_l · act_bits``, MACs from :func:`layer_macs`):

   * ``method="greedy"``: start at the widest candidate everywhere, repeatedly
     lower the layer whose next narrower width costs the least loss per
     unit of budget saved until the budget holds, then raise layers again
     while leftover budget allows a loss-reducing step;
   * ``method="exact"``: dynamic programming over layers keeping the Pareto
     front of (size, BOPs, loss) partial assignments — optimal, for a small
     number of layers (or few candidate widths).

The result, a :class:`MixedPrecisionPolicy`, holds ``.bits``, a
``{regex: bits}`` rule that every ``bits=`` argument of the family accepts
(``fake_quantization(bits=policy.bits, where=...)``,
``gptq_quantize(..., bits=policy.bits)``), its size and BOPs, a printable
table and a plot.

References:
  Wang, Liu, Lin, Lin & Han, HAQ: Hardware-aware automated quantization
  with mixed precision, arXiv:1811.08886.
  Dong et al., HAWQ-V2: Hessian aware trace-weighted quantization,
  arXiv:1911.03852. Hutchinson, A stochastic estimator of the trace of the
  influence matrix (1989); Avron & Toledo, arXiv:1005.4732.
  van Baalen et al., Bayesian Bits (BOPs), arXiv:2005.07093.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re

import numpy as np

from jaxcomp.quant.ptq.sensitivity import (
    BitSensitivity,
    hessian_sensitivity,
    hessian_trace,
    layer_macs,
    quantization_sensitivity,
)
from jaxcomp.quant.uniform import validate_bits

__all__ = [
    "BitSensitivity",
    "MixedPrecisionPolicy",
    "hessian_sensitivity",
    "hessian_trace",
    "layer_macs",
    "mixed_precision_search",
    "quantization_sensitivity",
]


@dataclasses.dataclass(frozen=True)
class MixedPrecisionPolicy:
    """One bit width per layer, found by :func:`mixed_precision_search`.

    Attributes:
      layer_bits: ``{path: bits}`` (exact paths, in the table's order).
      size_bytes: weight storage ``Σ n_l b_l / 8``.
      bops: ``Σ MACs_l · b_l · act_bits`` (None without MACs).
      loss_increase: the summed predicted ``Δloss`` of the assignment.
      budget_bytes, budget_bops: the budgets searched under.
      method: ``"greedy"`` or ``"exact"``.
      sensitivity: the :class:`BitSensitivity` searched.
      act_bits: activation width used for BOPs.
    """

    layer_bits: dict[str, int]
    size_bytes: float
    bops: int | None
    loss_increase: float
    budget_bytes: float | None
    budget_bops: float | None
    method: str
    sensitivity: BitSensitivity
    act_bits: int = 8

    @property
    def bits(self) -> dict[str, int]:
        """``{re.escape(path): bits}``: a per-path rule for any ``bits=`` argument."""
        return {re.escape(p): b for p, b in self.layer_bits.items()}

    def table(self) -> str:
        """The assignment as a text table (also ``str(policy)``)."""
        s = self.sensitivity
        w = max([len(p) for p in s.paths] + [5])
        head = (f"{'layer':<{w}} {'weights':>9} {'MACs':>11} {'bits':>4} {'Δloss':>10} "
                f"{'bytes':>10}")
        lines = [head, "-" * len(head)]
        for i, p in enumerate(s.paths):
            b = self.layer_bits[p]
            macs = "-" if s.macs is None else f"{s.macs[i]:,}"
            dl = s.values[i, s.bits.index(b)]
            lines.append(f"{p:<{w}} {s.sizes[i]:>9} {macs:>11} {b:>4} {dl:>10.3g} "
                         f"{s.sizes[i] * b / 8:>10.1f}")
        full = sum(s.sizes) * 4
        lines.append("-" * len(head))
        budget = "" if self.budget_bytes is None else f" (budget {self.budget_bytes:,.1f})"
        lines.append(f"size {self.size_bytes:,.1f} bytes{budget}; float32: {full:,} bytes "
                     f"({full / self.size_bytes:.2f}×)")
        if self.bops is not None:
            bb = "" if self.budget_bops is None else f" (budget {self.budget_bops:,.0f})"
            lines.append(f"BOPs {self.bops:,}{bb} at {self.act_bits}-bit activations")
        lines.append(f"predicted Δloss {self.loss_increase:.4g} ({self.method} search, "
                     f"{s.method} sensitivity)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | pathlib.Path, *, title: str | None = None) -> pathlib.Path:
        """Writes a PNG: chosen bits per layer (left) and each layer's Δloss vs bits (right).

        Needs matplotlib (object API, no global backend change).

        Raises:
          ImportError: matplotlib is not installed.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("MixedPrecisionPolicy.plot needs matplotlib; pip install "
                              "matplotlib (or print policy.table())") from e
        s = self.sensitivity
        fig = Figure(figsize=(9.6, 3.8))
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        xs = np.arange(len(s.paths))
        ax1.bar(xs, [self.layer_bits[p] for p in s.paths], color="tab:blue")
        ax1.set_xticks(xs, s.paths, rotation=45, ha="right", fontsize=7)
        ax1.set_ylabel("weight bits")
        ax1.set_title(f"{self.size_bytes:,.0f} bytes, Δloss {self.loss_increase:.3g}")
        for i, p in enumerate(s.paths):
            line = ax2.plot(s.bits, np.maximum(s.values[i], 1e-12), marker="o", ms=3, label=p)
            b = self.layer_bits[p]
            ax2.plot([b], [max(s.values[i, s.bits.index(b)], 1e-12)], marker="*", ms=10,
                     color=line[0].get_color())
        ax2.set_yscale("log")
        ax2.set_xticks(s.bits)
        ax2.set_xlabel("bits of that layer alone")
        ax2.set_ylabel("Δloss")
        ax2.legend(fontsize=6)
        ax2.grid(alpha=0.3)
        fig.suptitle(title or f"Mixed precision ({self.method} search)")
        fig.tight_layout()
        out = pathlib.Path(path)
        fig.savefig(out, dpi=120, format="png")
        return out


# ----------------------------------------------------------------------------- search


def _costs(sens: BitSensitivity, act_bits: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Size in bits and BOPs of every (layer, width): two ``(layers, widths)`` int arrays."""
    b = np.asarray(sens.bits, np.int64)
    size = np.asarray(sens.sizes, np.int64)[:, None] * b[None, :]
    if sens.macs is None:
        return size, None
    return size, np.asarray(sens.macs, np.int64)[:, None] * b[None, :] * act_bits


def _pareto(states: list[tuple]) -> list[tuple]:
    """States ``(size, bops, loss, choice)`` not dominated in (size, bops, loss)."""
    states.sort(key=lambda s: (s[0], s[1], s[2]))
    kept: list[tuple] = []
    for s in states:
        if not any(k[0] <= s[0] and k[1] <= s[1] and k[2] <= s[2] for k in kept):
            kept.append(s)
    return kept


def _exact(v, size, bops, cap_size, cap_bops, max_states):
    n_layers, n_bits = v.shape
    rest_s = np.concatenate([np.cumsum(size.min(1)[::-1])[::-1], [0]])
    rest_o = np.concatenate([np.cumsum(bops.min(1)[::-1])[::-1], [0]])
    states = [(0, 0, 0.0, ())]
    for layer in range(n_layers):
        new = []
        for s, o, loss, ch in states:
            for j in range(n_bits):
                s2, o2 = s + int(size[layer, j]), o + int(bops[layer, j])
                if s2 + rest_s[layer + 1] > cap_size or o2 + rest_o[layer + 1] > cap_bops:
                    continue
                new.append((s2, o2, loss + float(v[layer, j]), (*ch, j)))
        states = _pareto(new)
        if len(states) > max_states:
            raise ValueError(f"mixed_precision_search: the exact search keeps {len(states)} "
                             f"partial assignments after {layer + 1} layers (max_states="
                             f"{max_states}); use method='greedy' or fewer candidate widths")
    best = min(states, key=lambda s: (s[2], s[0], s[1]))
    return list(best[3])


def _greedy(v, size, bops, cap_size, cap_bops):
    n_layers, n_bits = v.shape
    ch = [n_bits - 1] * n_layers

    def totals():
        return (sum(int(size[i, c]) for i, c in enumerate(ch)),
                sum(int(bops[i, c]) for i, c in enumerate(ch)))

    s, o = totals()
    while s > cap_size or o > cap_bops:
        best, best_ratio = None, math.inf
        for i, c in enumerate(ch):
            if c == 0:
                continue
            saved = 0.0
            if s > cap_size:
                saved += (size[i, c] - size[i, c - 1]) / max(cap_size, 1)
            if o > cap_bops:
                saved += (bops[i, c] - bops[i, c - 1]) / max(cap_bops, 1)
            if saved <= 0:
                continue
            ratio = (v[i, c - 1] - v[i, c]) / saved
            if ratio < best_ratio:
                best, best_ratio = i, ratio
        if best is None:  # pragma: no cover - excluded by the feasibility check
            break
        ch[best] -= 1
        s, o = totals()
    while True:  # spend what is left: raise the layer whose step gains most per cost
        best, best_ratio = None, 0.0
        for i, c in enumerate(ch):
            for c2 in range(c + 1, n_bits):
                ds, do = size[i, c2] - size[i, c], bops[i, c2] - bops[i, c]
                gain = v[i, c] - v[i, c2]
                if gain <= 0 or s + ds > cap_size or o + do > cap_bops:
                    continue
                ratio = gain / (ds / max(cap_size, 1) + do / max(cap_bops, 1) + 1e-30)
                if ratio > best_ratio:
                    best, best_ratio = (i, c2), ratio
        if best is None:
            return ch
        ch[best[0]] = best[1]
        s, o = totals()


def mixed_precision_search(
    sensitivity: BitSensitivity,
    *,
    budget_bytes: float | None = None,
    budget_bops: float | None = None,
    method: str = "greedy",
    act_bits: int = 8,
    max_states: int = 200_000,
) -> MixedPrecisionPolicy:
    """Per-layer bit widths minimising the summed ``Δloss`` under a size and/or BOPs budget.

    Args:
      sensitivity: a :class:`BitSensitivity` (:func:`quantization_sensitivity`,
        :func:`hessian_sensitivity`, or built by hand).
      budget_bytes: maximum weight storage ``Σ n_l b_l / 8`` in bytes.
      budget_bops: maximum ``Σ MACs_l · b_l · act_bits`` (needs ``sensitivity.macs``).
      method: ``"greedy"`` or ``"exact"`` (see the module docstring).
      act_bits: activation width for BOPs.
      max_states: the exact search's limit on kept partial assignments.

    Returns:
      A :class:`MixedPrecisionPolicy`.

    Raises:
      ValueError: no budget, a non-positive budget, a budget no assignment
        meets (the smallest possible size/BOPs is named), a BOPs budget
        without MACs, an unknown method, an exact search past ``max_states``.

    Example:
      >>> s = BitSensitivity(("a", "b"), (2, 4, 8), [[5.0, 1.0, 0.0], [0.2, 0.1, 0.0]],
      ...                    (100, 100))
      >>> pol = mixed_precision_search(s, budget_bytes=150, method="exact")
      >>> pol.layer_bits, pol.size_bytes, pol.bits
      ({'a': 8, 'b': 4}, 150.0, {'a': 8, 'b': 4})

    References:
      Wang et al., HAQ, arXiv:1811.08886; van Baalen et al., arXiv:2005.07093.
    """
    if not isinstance(sensitivity, BitSensitivity):
        raise TypeError(f"mixed_precision_search: sensitivity must be a BitSensitivity, got "
                        f"{type(sensitivity).__name__}")
    if method not in ("greedy", "exact"):
        raise ValueError(f"mixed_precision_search: method={method!r} must be 'greedy' or "
                         "'exact'")
    if budget_bytes is None and budget_bops is None:
        raise ValueError("mixed_precision_search: pass budget_bytes= and/or budget_bops=")
    act_bits = validate_bits(act_bits, "act_bits", high=32)
    for name, val in (("budget_bytes", budget_bytes), ("budget_bops", budget_bops)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float))
                                or not val > 0 or not math.isfinite(val)):
            raise ValueError(f"mixed_precision_search: {name}={val!r} must be a positive number")
    if budget_bops is not None and sensitivity.macs is None:
        raise ValueError("mixed_precision_search: budget_bops needs MACs per layer; pass "
                         "macs=layer_macs(apply_fn, variables, x) to the sensitivity function")
    size, bops = _costs(sensitivity, act_bits)
    ops = bops if bops is not None else np.zeros_like(size)
    cap_size = math.inf if budget_bytes is None else math.floor(budget_bytes * 8 + 1e-9)
    cap_bops = math.inf if budget_bops is None else math.floor(budget_bops + 1e-9)
    min_size, min_bops = int(size.min(1).sum()), int(ops.min(1).sum())
    if min_size > cap_size or min_bops > cap_bops:
        lo = sensitivity.bits[0]
        raise ValueError(
            f"mixed_precision_search: no assignment fits: with every layer at {lo} bits the "
            f"weights take {min_size / 8:,.1f} bytes (budget_bytes={budget_bytes}) and "
            f"{min_bops:,} BOPs (budget_bops={budget_bops}); raise the budget or add narrower "
            "candidate widths")
    v = sensitivity.values
    if method == "exact":
        ch = _exact(v, size, ops, cap_size, cap_bops, max_states)
    else:
        ch = _greedy(v, size, ops, cap_size, cap_bops)
    idx = np.arange(len(ch))
    bits = {p: sensitivity.bits[c] for p, c in zip(sensitivity.paths, ch)}
    return MixedPrecisionPolicy(
        bits, float(size[idx, ch].sum()) / 8,
        None if bops is None else int(bops[idx, ch].sum()), float(v[idx, ch].sum()),
        budget_bytes, budget_bops, method, sensitivity, act_bits)
