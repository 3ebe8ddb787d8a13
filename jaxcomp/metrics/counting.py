"""Parameter counts: totals, non-zeros and a per-leaf table.

Works on any parameter tree: Flax linen variables dicts (boxed
``nn.Partitioned`` values are unwrapped), nnx states and pure dicts, and plain
pytrees of arrays. Leaves are named by their canonical path
(:func:`jaxcomp.select.paths.leaves_with_paths`); compressed leaves
(:class:`~jaxcomp.core.leaves.CompressedLeaf`) are single leaves.

Two sizes exist for a compressed leaf: the *dense* size (elements of the
tensor it stands for) and the *stored* size (scalars actually held: for a
``LowRank`` ``u.size + v.size``; for a ``QArray`` the codes plus its scales
and zero points; for a ``Codebook`` the indices plus the centroids). For a
plain array both are its size.

Leaves must be arrays (numpy or JAX arrays, numpy scalars), compressed
leaves, or abstract ``jax.ShapeDtypeStruct`` values (which count but have no
non-zeros). Anything else raises ``TypeError`` naming the leaf's path.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxcomp.core.leaves import CompressedLeaf
from jaxcomp.select.paths import leaves_with_paths

__all__ = [
    "KINDS",
    "KindTotals",
    "ParamRow",
    "ParamSummary",
    "count_nonzero",
    "count_params",
    "default_classify",
    "param_table",
    "summarize_params",
]

KINDS = ("weight", "bias", "norm", "embedding", "other")

# A path component naming a normalization module (or its statistics collection).
_NORM_MODULE = re.compile(r".*norm.*|(bn|ln|gn)(\d+|_.*)?|batch_stats", re.IGNORECASE)


def is_abstract(x: Any) -> bool:
    return isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer))


def check_count_leaf(path: str, leaf: Any) -> None:
    if isinstance(leaf, CompressedLeaf):
        return
    if isinstance(leaf, (np.ndarray, np.generic, jax.Array)) or is_abstract(leaf):
        return
    raise TypeError(
        f"parameter '{path}' is a {type(leaf).__name__}, not an array; counting needs array "
        "leaves (numpy/JAX arrays or compressed leaves) — remove or convert non-array leaves"
    )


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in leaf.shape)


def _dense_size(leaf: Any) -> int:
    return int(math.prod(_shape(leaf)))


def _stored_size(leaf: Any) -> int:
    if isinstance(leaf, CompressedLeaf):
        return int(sum(int(np.size(a)) for a in leaf.arrays()))
    return _dense_size(leaf)


def dense_values(path: str, leaf: Any) -> np.ndarray:
    """The dense host array of a leaf (compressed leaves are materialized).

    Raises:
      TypeError: for non-array or abstract leaves, naming ``path``.
    """
    check_count_leaf(path, leaf)
    if is_abstract(leaf):
        raise TypeError(
            f"parameter '{path}' is abstract ({type(leaf).__name__}); non-zero counts need "
            "concrete arrays (call outside jit, not on eval_shape output)"
        )
    if isinstance(leaf, CompressedLeaf):
        leaf = leaf.materialize()
    return np.asarray(leaf)


def _nonzero(path: str, leaf: Any) -> int:
    return int(np.count_nonzero(dense_values(path, leaf)))


def count_params(tree: Any, *, dense: bool = False) -> int:
    """Counts parameters.

    Args:
      tree: a parameter tree.
      dense: if False (default), count the scalars actually stored (a
        ``LowRank`` counts ``u.size + v.size``); if True, count the elements
        of the dense tensors the leaves stand for.

    Returns:
      The number of parameters.

    Raises:
      TypeError: for a non-array leaf (the message names its path).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcomp.core.leaves import LowRank
      >>> tree = {"w": LowRank(jnp.ones((100, 2)), jnp.ones((2, 50))), "b": jnp.zeros(50)}
      >>> count_params(tree), count_params(tree, dense=True)  # 200 + 100 + 50, 5000 + 50
      (350, 5050)
    """
    total = 0
    for path, leaf in leaves_with_paths(tree):
        check_count_leaf(path, leaf)
        total += _dense_size(leaf) if dense else _stored_size(leaf)
    return total


def count_nonzero(tree: Any) -> int:
    """Counts non-zero elements of the dense view (compressed leaves are materialized).

    Example:
      >>> import numpy as np
      >>> count_nonzero({"a": np.array([0.0, 1.0, -2.0]), "b": np.eye(2)})
      4
    """
    return sum(_nonzero(path, leaf) for path, leaf in leaves_with_paths(tree))


def default_classify(path: str, leaf: Any) -> str:
    """The default rule that assigns a leaf one of :data:`KINDS`.

    With ``name`` the last path component and ``modules`` the others, the
    first rule that applies wins:

    1. ``"norm"``: a module component names a normalization layer (contains
       ``norm``, e.g. ``BatchNorm_0``, ``LayerNorm_0``, ``RMSNorm``, ``norm1``;
       or is ``bn``/``ln``/``gn`` optionally followed by digits or ``_...``;
       or is the ``batch_stats`` collection);
    2. ``"embedding"``: ``name`` contains ``embed`` (``nn.Embed``'s
       ``embedding``);
    3. ``"bias"``: ``name`` is ``bias`` or starts or ends with ``bias_``/``_bias``;
    4. ``"weight"``: the leaf has ``ndim >= 2``;
    5. ``"other"`` otherwise (e.g. a free-standing 1-D ``scale``, scalars).

    Matching is case-insensitive.

    Example:
      >>> import numpy as np
      >>> [default_classify(p, np.zeros(s)) for p, s in [
      ...     ("params/Dense_0/kernel", (3, 4)), ("params/Dense_0/bias", (4,)),
      ...     ("params/BatchNorm_0/scale", (4,)), ("params/Embed_0/embedding", (9, 4)),
      ...     ("alpha", ())]]
      ['weight', 'bias', 'norm', 'embedding', 'other']
    """
    parts = path.split("/") if path else [""]
    name = parts[-1].lower()
    if any(_NORM_MODULE.fullmatch(m) for m in parts[:-1]):
        return "norm"
    if "embed" in name:
        return "embedding"
    if name == "bias" or name.startswith("bias_") or name.endswith("_bias"):
        return "bias"
    if len(_shape(leaf)) >= 2:
        return "weight"
    return "other"


@dataclasses.dataclass(frozen=True)
class ParamRow:
    """One leaf of :func:`param_table`.

    Attributes:
      path: canonical path.
      shape: dense shape.
      dtype: dense dtype name.
      size: dense element count.
      stored: scalars actually stored (differs from ``size`` for compressed leaves).
      nonzero: non-zeros of the dense view (``None`` for abstract leaves).
      density: ``nonzero / size`` (0.0 for empty leaves; ``None`` when unknown).
      kind: one of :data:`KINDS`.
      leaf_type: ``"array"``, ``"abstract"`` or the compressed leaf's kind
        (``"lowrank"``, ``"quantized"``, ``"codebook"``, ...).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    size: int
    stored: int
    nonzero: int | None
    density: float | None
    kind: str
    leaf_type: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


def param_table(
    tree: Any, *, classify: Callable[[str, Any], str | None] | None = None
) -> list[ParamRow]:
    """One row per leaf: path, shape, dtype, sizes, non-zeros, density and kind.

    Args:
      tree: a parameter tree.
      classify: optional ``(path, leaf) -> kind``; return ``None`` to fall back
        to :func:`default_classify`. Kinds must be in :data:`KINDS`.

    Returns:
      The rows in flattening order.

    Raises:
      TypeError: for a non-array leaf (naming its path).
      ValueError: if ``classify`` returns an unknown kind.

    Example:
      >>> import numpy as np
      >>> rows = param_table({"Dense_0": {"kernel": np.eye(3), "bias": np.zeros(3)}})
      >>> [(r.path, r.kind, r.size, r.nonzero) for r in rows]
      [('Dense_0/bias', 'bias', 3, 0), ('Dense_0/kernel', 'weight', 9, 3)]
    """
    rows = []
    for path, leaf in leaves_with_paths(tree):
        check_count_leaf(path, leaf)
        kind = classify(path, leaf) if classify is not None else None
        if kind is None:
            kind = default_classify(path, leaf)
        if kind not in KINDS:
            raise ValueError(
                f"classify returned {kind!r} for '{path}'; a kind must be one of {', '.join(KINDS)}"
            )
        size = _dense_size(leaf)
        if is_abstract(leaf):
            nonzero, density, leaf_type = None, None, "abstract"
        else:
            nonzero = _nonzero(path, leaf)
            density = nonzero / size if size else 0.0
            leaf_type = leaf.kind if isinstance(leaf, CompressedLeaf) else "array"
        rows.append(
            ParamRow(
                path=path,
                shape=_shape(leaf),
                dtype=np.dtype(leaf.dtype).name,
                size=size,
                stored=_stored_size(leaf),
                nonzero=nonzero,
                density=density,
                kind=kind,
                leaf_type=leaf_type,
            )
        )
    return rows


@dataclasses.dataclass(frozen=True)
class KindTotals:
    """Totals over a group of leaves (``nonzero``/``density`` are ``None`` if any is unknown)."""

    n_leaves: int = 0
    size: int = 0
    stored: int = 0
    nonzero: int | None = 0

    @property
    def density(self) -> float | None:
        if self.nonzero is None:
            return None
        return self.nonzero / self.size if self.size else 0.0

    def add(self, row: ParamRow) -> KindTotals:
        nz = None if self.nonzero is None or row.nonzero is None else self.nonzero + row.nonzero
        return KindTotals(self.n_leaves + 1, self.size + row.size, self.stored + row.stored, nz)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_leaves": self.n_leaves,
            "size": self.size,
            "stored": self.stored,
            "nonzero": self.nonzero,
            "density": self.density,
        }


@dataclasses.dataclass(frozen=True)
class ParamSummary:
    """Totals per kind (every kind in :data:`KINDS` is present) and overall."""

    by_kind: dict[str, KindTotals]
    total: KindTotals
    rows: tuple[ParamRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (without the rows)."""
        return {
            "by_kind": {k: v.to_dict() for k, v in self.by_kind.items()},
            "total": self.total.to_dict(),
        }


def summarize_params(
    tree: Any, *, classify: Callable[[str, Any], str | None] | None = None
) -> ParamSummary:
    """Totals of :func:`param_table` per kind.

    Example:
      >>> import numpy as np
      >>> s = summarize_params({"Dense_0": {"kernel": np.eye(3), "bias": np.zeros(3)}})
      >>> s.by_kind["weight"].size, s.by_kind["bias"].nonzero, s.total.size, s.total.density
      (9, 0, 12, 0.25)
    """
    rows = param_table(tree, classify=classify)
    by_kind = {k: KindTotals() for k in KINDS}
    total = KindTotals()
    for r in rows:
        by_kind[r.kind] = by_kind[r.kind].add(r)
        total = total.add(r)
    return ParamSummary(by_kind=by_kind, total=total, rows=tuple(rows))
