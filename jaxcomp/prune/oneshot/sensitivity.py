"""Per-layer pruning sensitivity: prune one layer at a time, evaluate, tabulate.

Han et al. (2015) chose per-layer pruning thresholds from a sensitivity
curve: each layer is pruned alone (all others dense) at increasing
sparsities and the validation accuracy is recorded. Layers whose accuracy
holds up take high sparsity; sensitive ones (often the first conv and the
last classifier) take less. :func:`sensitivity_scan` produces that table
for any user evaluation function; :meth:`SensitivityTable.suggest` turns it
into a ``{regex: sparsity}`` map accepted by every ``allocation=`` argument
(``magnitude_pruning``, ``magnitude_mask``) and by
:func:`jaxcomp.prune.oneshot.obs_model.obs_prune`.

References:
  Han, Pool, Tran & Dally, Learning both weights and connections for
  efficient neural networks, arXiv:1506.02626 (Section 3.4 / Figure 5).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import check_in_range, list_paths
from jaxcomp.prune.masks import score_mask, select_prunable
from jaxcomp.prune.patterns import NM, as_pattern

__all__ = ["SensitivityTable", "sensitivity_scan"]

_METHODS = ("magnitude", "random")


@dataclasses.dataclass(frozen=True)
class SensitivityTable:
    """Metric after pruning one parameter at a time (others dense).

    Attributes:
      paths: the scanned parameter paths (rows), in tree order.
      sparsities: the sparsities tried (columns), ascending.
      values: ``(len(paths), len(sparsities))`` metric values.
      baseline: the metric of the unpruned parameters.
      metric: the metric's name (for tables and plots).
      higher_is_better: True for accuracies, False for losses.
      method: how weights were ranked (``"magnitude"``, ``"random"``, ...).
    """

    paths: tuple[str, ...]
    sparsities: tuple[float, ...]
    values: np.ndarray
    baseline: float
    metric: str = "metric"
    higher_is_better: bool = True
    method: str = "magnitude"

    @property
    def drops(self) -> np.ndarray:
        """How much worse than the baseline each entry is (positive = worse)."""
        v = np.asarray(self.values, np.float64)
        return self.baseline - v if self.higher_is_better else v - self.baseline

    def row(self, path: str) -> dict[float, float]:
        """``{sparsity: metric}`` for one path."""
        if path not in self.paths:
            raise KeyError(f"path {path!r} was not scanned; scanned:\n{list_paths(self.paths)}")
        i = self.paths.index(path)
        return dict(zip(self.sparsities, (float(v) for v in self.values[i])))

    def suggest(self, max_drop: float = 0.01, *, relative: bool = False) -> dict[str, float]:
        """Per-path sparsity: the largest tried sparsity whose drop (and that of every
        smaller sparsity) stays within ``max_drop``; 0.0 if even the smallest fails.

        Args:
          max_drop: tolerated metric loss (absolute, or a fraction of the
            baseline with ``relative=True``).
          relative: interpret ``max_drop`` relative to ``|baseline|``.

        Returns:
          ``{re.escape(path): sparsity}``: pass it as ``allocation=`` to
          ``magnitude_pruning`` / ``magnitude_mask`` or as ``sparsity=`` to
          ``obs_prune``.
        """
        check_in_range("max_drop", max_drop, 0.0, None)
        tol = max_drop * abs(self.baseline) if relative else max_drop
        tol += 1e-6 * max(1.0, abs(self.baseline))  # float32 metrics: ignore rounding noise
        out = {}
        for p, d in zip(self.paths, self.drops):
            best = 0.0
            for s, di in zip(self.sparsities, d):
                if not di <= tol:
                    break
                best = s
            out[re.escape(p)] = float(best)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": float(self.baseline),
                "higher_is_better": self.higher_is_better, "method": self.method,
                "sparsities": [float(s) for s in self.sparsities],
                "rows": {p: [float(v) for v in r] for p, r in zip(self.paths, self.values)}}

    def to_json(self, indent: int | None = 2) -> str:
        """The table as JSON: metric, baseline, sparsities, ``rows: {path: [values]}``."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> SensitivityTable:
        d = json.loads(text)
        rows = d["rows"]
        return cls(tuple(rows), tuple(d["sparsities"]), np.asarray(list(rows.values()), float),
                   d["baseline"], d["metric"], d["higher_is_better"], d["method"])

    def __str__(self) -> str:
        w = max([len(p) for p in self.paths] + [4])
        head = f"{'path':<{w}}  " + "  ".join(f"{s:>7.3f}" for s in self.sparsities)
        lines = [(f"{self.metric} after pruning one parameter ({self.method}); "
                 f"baseline {self.baseline:.4f}"), head, "-" * len(head)]
        for p, r in zip(self.paths, self.values):
            lines.append(f"{p:<{w}}  " + "  ".join(f"{v:>7.4f}" for v in r))
        return "\n".join(lines)

    def plot(self, path: str | pathlib.Path, *, title: str | None = None) -> pathlib.Path:
        """Writes a PNG: metric vs sparsity, one line per parameter, baseline dashed.

        Uses matplotlib's object API (no pyplot, no global backend change).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        xs = [0.0, *self.sparsities] if self.sparsities[0] > 0 else list(self.sparsities)
        for p, r in zip(self.paths, self.values):
            ys = [self.baseline, *r] if len(xs) > len(r) else list(r)
            ax.plot(xs, ys, marker="o", ms=3, label=p)
        ax.axhline(self.baseline, color="k", ls="--", lw=0.8, label="dense")
        ax.set_xlabel("sparsity of the pruned parameter")
        ax.set_ylabel(self.metric)
        ax.set_title(title or f"Pruning sensitivity ({self.method})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = pathlib.Path(path)
        fig.savefig(out, dpi=120, format="png")
        return out


def _metric(eval_fn: Callable[[Any], Any], params: Any, where: str) -> float:
    v = eval_fn(params)
    if np.ndim(v) != 0:
        raise TypeError(f"eval_fn must return a scalar; got shape {np.shape(v)} {where}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"eval_fn returned {v} {where}; return a finite metric")
    return v


def sensitivity_scan(
    eval_fn: Callable[[Any], Any],
    params: Any,
    *,
    sparsities: Sequence[float] = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95),
    where: Any = None,
    method: str | Callable[[jax.Array], jax.Array] = "magnitude",
    pattern: Any = "unstructured",
    key: jax.Array | None = None,
    higher_is_better: bool = True,
    metric: str = "metric",
) -> SensitivityTable:
    """Prunes each selected leaf alone at each sparsity and evaluates the model.

    Args:
      eval_fn: ``eval_fn(params) -> float`` on a tree shaped like ``params``
        (jit inside it if you like; the library does not).
      params: the tree to scan (a params tree or a variables dict).
      sparsities: values in ``[0, 1)``; sorted and de-duplicated.
      where: leaves to scan (default: float arrays with ``ndim >= 2``).
      method: ``"magnitude"`` (smallest ``|w|`` pruned), ``"random"`` (needs
        ``key``) or a callable ``w -> scores`` (lowest scores pruned).
      pattern: ``"unstructured"``, ``"channel"``, ``Block(...)`` (not N:M,
        whose sparsity is fixed).
      key: PRNG key for ``method="random"``.
      higher_is_better: False for losses (drops are then increases).
      metric: a name for the table and plot.

    Returns:
      A :class:`SensitivityTable` with ``len(paths) × len(sparsities)`` evaluations.

    Raises:
      ValueError: a sparsity outside ``[0, 1)``, a where that selects
        nothing, a non-finite metric (naming the path and sparsity).
      TypeError: a non-scalar metric, an unknown method.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"a": jnp.arange(1.0, 5.0).reshape(2, 2), "b": jnp.ones((2, 2))}
      >>> t = sensitivity_scan(lambda p: float(p["a"].sum() + p["b"].sum()), params,
      ...                      sparsities=(0.5,))
      >>> t.values.tolist(), t.suggest(max_drop=2.5)
      ([[11.0], [12.0]], {'a': 0.0, 'b': 0.5})

    References:
      Han et al., arXiv:1506.02626.
    """
    sp = sorted({float(s) for s in sparsities})
    if not sp:
        raise ValueError("sparsities is empty; pass e.g. (0.5, 0.8, 0.9)")
    for s in sp:
        check_in_range("sparsities", s, 0.0, 1.0, high_inclusive=False)
    pat = as_pattern(pattern)
    if isinstance(pat, NM):
        raise TypeError(f"{pat} has a fixed sparsity; scan unstructured, block or channel "
                        "patterns")
    if isinstance(method, str):
        if method not in _METHODS:
            raise TypeError(f"method={method!r} must be one of {_METHODS} or a callable "
                            "w -> scores")
        if method == "random" and key is None:
            raise ValueError("method='random' needs key=jax.random.key(...)")
        name = method
    elif callable(method):
        name = getattr(method, "__name__", "custom")
    else:
        raise TypeError(f"method must be a string or a callable, got {type(method).__name__}")
    selection = select_prunable(params, where, "sensitivity_scan")
    paths, leaves, sel = selection.paths, selection.leaves, selection.idx
    for i in sel:
        pat.check(tuple(np.shape(leaves[i])), paths[i])
    baseline = _metric(eval_fn, params, "for the unpruned params")
    values = np.zeros((len(sel), len(sp)))
    for r, i in enumerate(sel):
        w = jnp.asarray(leaves[i])
        if name == "magnitude":
            scores = jnp.abs(w)
        elif isinstance(method, str):  # random
            scores = jax.random.uniform(jax.random.fold_in(key, i), w.shape)
        else:
            scores = jnp.asarray(method(w))
            if scores.shape != w.shape:
                raise ValueError(f"method returned scores of shape {scores.shape} for "
                                 f"'{paths[i]}' of shape {w.shape}")
        for c, s in enumerate(sp):
            keep = score_mask({paths[i]: scores}, s, where=True, pattern=pat)[paths[i]]
            new = selection.sel_leaves
            new[r] = jnp.where(keep, w, jnp.zeros((), w.dtype))
            values[r, c] = _metric(eval_fn, selection.rebuild(new),
                                   f"with '{paths[i]}' pruned to sparsity {s}")
    return SensitivityTable(tuple(paths[i] for i in sel), tuple(sp), values, baseline, metric,
                            bool(higher_is_better), name)
