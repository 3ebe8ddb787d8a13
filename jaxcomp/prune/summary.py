"""Per-parameter sparsity tables for params or masks."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxcomp.core.leaves import is_compressed
from jaxcomp.select.selection import flatten

__all__ = ["SparsityRow", "SparsitySummary", "sparsity_summary"]


@dataclasses.dataclass(frozen=True)
class SparsityRow:
    """One leaf: ``zeros`` are zero weights (params) or False entries (bool masks)."""

    path: str
    shape: tuple[int, ...]
    size: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "shape": list(self.shape), "size": self.size,
                "zeros": self.zeros, "sparsity": self.sparsity}


@dataclasses.dataclass(frozen=True)
class SparsitySummary:
    """Rows per leaf and totals (see :func:`sparsity_summary`)."""

    rows: tuple[SparsityRow, ...]

    @property
    def size(self) -> int:
        return sum(r.size for r in self.rows)

    @property
    def zeros(self) -> int:
        return sum(r.zeros for r in self.rows)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0

    @property
    def nonzero(self) -> int:
        return self.size - self.zeros

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows],
                "total": {"size": self.size, "zeros": self.zeros, "sparsity": self.sparsity}}

    def table(self, title: str = "sparsity"):
        """A ``rich.table.Table`` of the rows and the total."""
        from rich.table import Table

        t = Table(title=title)
        for col, just in (("path", "left"), ("shape", "left"), ("size", "right"),
                          ("zeros", "right"), ("sparsity", "right")):
            t.add_column(col, justify=just)
        for r in self.rows:
            t.add_row(r.path, "×".join(map(str, r.shape)) or "()", f"{r.size:,}",
                      f"{r.zeros:,}", f"{100 * r.sparsity:.2f}%")
        t.add_section()
        t.add_row("total", "", f"{self.size:,}", f"{self.zeros:,}", f"{100 * self.sparsity:.2f}%")
        return t

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        w = max([len(r.path) for r in self.rows] + [5])
        lines = [f"{'path':<{w}}  {'size':>12}  {'zeros':>12}  sparsity"]
        for r in self.rows:
            lines.append(f"{r.path:<{w}}  {r.size:>12,}  {r.zeros:>12,}  {100 * r.sparsity:6.2f}%")
        lines.append(f"{'total':<{w}}  {self.size:>12,}  {self.zeros:>12,}  "
                     f"{100 * self.sparsity:6.2f}%")
        return "\n".join(lines)


def sparsity_summary(params_or_masks: Any, where: Any = None) -> SparsitySummary:
    """Counts zeros per leaf: zero weights in params, ``False`` entries in bool masks.

    A pruning state's ``masks`` can be passed directly (its
    :class:`~jaxcomp.MaskedNode` placeholders are skipped).

    Args:
      params_or_masks: a tree of arrays (concrete values).
      where: which leaves to list, any ``where=`` form of
        :func:`jaxcomp.select.flatten` (default: every leaf).

    Returns:
      A :class:`SparsitySummary` with ``rows``, totals, ``to_dict()``,
      ``table()`` (rich) and a plain-text ``str``.

    Raises:
      ValueError: a ``where`` that selects nothing (naming
        ``sparsity_summary`` and listing the paths, closest first).

    Example:
      >>> import jax.numpy as jnp
      >>> s = sparsity_summary({"w": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.ones(2)})
      >>> [(r.path, r.zeros, r.sparsity) for r in s.rows], s.sparsity
      ([('b', 0, 0.0), ('w', 3, 0.75)], 0.5)
    """
    sel = flatten(params_or_masks, where, what="sparsity_summary", default=True,
                  allow_empty=where is None, noun="leaf")
    rows = []
    for path, x in sel.pairs:
        if is_compressed(x):
            x = x.materialize()
        a = np.asarray(x)
        zeros = int(a.size - np.count_nonzero(a))
        rows.append(SparsityRow(path, tuple(a.shape), int(a.size), zeros))
    return SparsitySummary(tuple(rows))
