"""Model storage accounting: bits per leaf under a storage spec, and Deep Compression stages.

:func:`model_size_bytes` charges every leaf of a parameter tree the bits it
takes when stored as a :class:`StorageSpec` says (value width, sparse index
format, shared-value codebook, Huffman coding), counted exactly from the
actual data with the encoders of :mod:`jaxcomp.encode`.
:func:`~jaxcomp.metrics.deep_compression_report` gives the three stages Han et al. report:
pruning with relative indices (P), plus quantized shared values (P+Q), plus
Huffman coding of both streams (P+Q+H).

Conventions:

* **Baseline.** ``ratio = 32 * n_weights / total_bits`` where ``n_weights``
  counts the elements of every dense tensor (compressed leaves count their
  dense size): compression against 32-bit floats, as in Han et al.
* **Leaves without a spec** (``spec=None``, an unmatched rule, or a callable
  returning ``None``) are stored dense at their own dtype width (32 bits for
  float32, 16 for bfloat16, ...).
* **Compressed leaves** (:class:`~jaxcomp.core.leaves.CompressedLeaf`) are
  charged their own ``storage_bits()``; a spec that matches them is ignored
  and the row says so. For a ``Codebook`` the bits are split into indices
  (value bits) and centroids (codebook bits), for a ``QArray`` into codes
  (value bits) and scales/zero points (side bits).
* **Value widths.** A spec charges every stored value ``bits`` bits (with a
  codebook of ``k`` values, ``bits`` defaults to ``ceil(log2 k)`` and the
  ``k`` centroids cost ``k * codebook_bits`` more). The counts describe what
  storage *would* take at that width; if a leaf holds more distinct stored
  values than the codes can name (``2**bits``, or ``k`` with a codebook;
  filler zeros and, in the dense format, zeros count as a value), the row
  gets a note and the report a warning (``strict=True`` raises instead).
* **Huffman** (``huffman=True``) codes the value stream (symbols = the
  distinct stored values, so these are the actual codebook indices) and, for
  the ``relative`` and ``csr`` formats, the index stream (relative fields or
  column indices). CSR row pointers and bitmask masks stay fixed-width. Each
  coded stream costs its Huffman payload plus the code table
  (:meth:`~jaxcomp.encode.HuffmanCode.table_bits`, alphabet ``2**bits``/``k``
  for values, ``2**index_bits`` for indices), or its fixed-width size when
  that is smaller, plus one bit per stream saying which. Huffman counting
  needs real symbols: a leaf whose stored values do not fit the codes raises
  ``ValueError`` (quantize it first) — values are never re-quantized here.
* **Count headers.** A ``relative`` or ``csr`` leaf also charges one field
  of ``ceil(log2(n + 1))`` bits (``n`` = its element count) holding its
  number of entries (relative: non-zeros plus fillers; csr: non-zeros): a
  reader needs it to find where the leaf's streams end. Shapes, dtypes and
  the spec itself are known to the reader and are not charged.
* ``total_bytes`` is ``ceil(total_bits / 8)``: the model as one bit-packed
  stream, exactly the size of the file :func:`jaxcomp.quant.sharing.model_file.export_model`
  writes for the same tree and spec.

References:
  Han, Mao, Dally, "Deep compression: compressing deep neural networks with
  pruning, trained quantization and Huffman coding", arXiv:1510.00149.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import list_paths
from jaxcomp.core.leaves import Codebook, CompressedLeaf, QArray, dtype_bits
from jaxcomp.encode.huffman import huffman_code
from jaxcomp.encode.sparse import SPARSE_FORMATS, encode_sparse
from jaxcomp.metrics.counting import check_count_leaf, is_abstract
from jaxcomp.select.leafrules import LeafRule, is_mapping
from jaxcomp.select.paths import leaves_with_paths

__all__ = [
    "BASELINE_BITS",
    "STORAGE_FORMATS",
    "StorageReport",
    "StorageRow",
    "StorageSpec",
    "count_header_bits",
    "model_size_bytes",
    "resolve_specs",
]

STORAGE_FORMATS = SPARSE_FORMATS
BASELINE_BITS = 32

SpecLike = Union[
    None,
    "StorageSpec",
    Mapping[Any, "StorageSpec | None"],
    Sequence[tuple[Any, "StorageSpec | None"]],
    Callable[[str, Any], "StorageSpec | None"],
]


def _bits_for(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def int_field(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        # ValueError by design: every invalid StorageSpec field raises ValueError.
        raise ValueError(  # noqa: TRY004
            f"StorageSpec.{name} must be an integer in [{low}, {high}], got {value!r}"
        )
    if not low <= int(value) <= high:
        raise ValueError(f"StorageSpec.{name}={int(value)} is outside [{low}, {high}]")
    return int(value)


@dataclasses.dataclass(frozen=True)
class StorageSpec:
    """How to store a dense leaf.

    Attributes:
      bits: bits per stored value, in [1, 32]. Defaults to 32, or with a
        codebook to ``ceil(log2 codebook)`` (the index width); with a codebook
        it may be set wider but not narrower. Always an int after
        construction.
      format: ``"dense"``, ``"bitmask"``, ``"csr"`` or ``"relative"`` (see
        :mod:`jaxcomp.encode.sparse` for the exact layouts).
      index_bits: width of a relative index field, in [1, 32]; Han et al. use
        5 for fully connected and 8 for convolutional layers. Used by
        ``"relative"`` only.
      codebook: ``None`` or the number ``k >= 1`` of shared values; the values
        are then ``bits``-bit indices into a table of ``k`` centroids.
      huffman: Huffman-code the value indices and the relative/CSR index
        stream (table included; see the module docstring).
      codebook_bits: bits per centroid, in [1, 64] (default 32).

    Example:
      >>> StorageSpec(format="relative", codebook=64).bits
      6
      >>> StorageSpec(format="coo")
      Traceback (most recent call last):
      ...
      ValueError: StorageSpec.format='coo' is not one of dense, bitmask, csr, relative
    """

    bits: int | None = None
    format: str = "dense"
    index_bits: int = 5
    codebook: int | None = None
    huffman: bool = False
    codebook_bits: int = 32

    def __post_init__(self):
        if self.format not in STORAGE_FORMATS:
            raise ValueError(
                f"StorageSpec.format={self.format!r} is not one of {', '.join(STORAGE_FORMATS)}"
            )
        int_field("index_bits", self.index_bits, 1, 32)
        int_field("codebook_bits", self.codebook_bits, 1, 64)
        if not isinstance(self.huffman, (bool, np.bool_)):
            raise ValueError(f"StorageSpec.huffman must be a bool, got {self.huffman!r}")  # noqa: TRY004
        if self.codebook is not None:
            k = int_field("codebook", self.codebook, 1, 2**32)
            need = _bits_for(k)
            if self.bits is None:
                bits = need
            else:
                bits = int_field("bits", self.bits, 1, 32)
                if bits < need:
                    raise ValueError(
                        f"StorageSpec.bits={bits} cannot index a codebook of {k} values "
                        f"(needs {need} bits); leave bits unset or raise it"
                    )
        else:
            bits = 32 if self.bits is None else int_field("bits", self.bits, 1, 32)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "huffman", bool(self.huffman))

    @property
    def capacity(self) -> int:
        """How many distinct values the stored codes can name (``k`` or ``2**bits``)."""
        return int(self.codebook) if self.codebook is not None else 1 << self.bits

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StorageRow:
    """Storage of one leaf.

    Attributes:
      path: canonical path.
      shape: dense shape.
      dtype: dense dtype name.
      leaf_type: ``"array"`` or the compressed leaf's kind.
      format: the storage format, or ``"compressed"`` for compressed leaves.
      spec: the :class:`StorageSpec` applied (``None``: dense at dtype width,
        or a compressed leaf).
      n_weights: dense element count.
      n_stored: stored entries (values incl. fillers; scalars held by a
        compressed leaf).
      nnz: non-zeros of the dense view.
      n_filler: filler zeros (relative format).
      value_bits: bits of the value stream (after Huffman, if any).
      index_bits: bits of all index data (after Huffman, if any).
      codebook_bits: bits of the shared-value table.
      side_bits: other stored data (a ``QArray``'s scales and zero points).
      huffman_saving_bits: fixed-width minus Huffman-coded stream bits (0
        without Huffman; tables and flag bits are charged against it).
      total_bits: ``value_bits + index_bits + codebook_bits + side_bits +
        header_bits``.
      notes: remarks (spec ignored, values not representable, ...).
      header_bits: the entry-count field of a ``relative`` or ``csr`` leaf
        (``ceil(log2(n + 1))`` bits), 0 otherwise.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    leaf_type: str
    format: str
    spec: StorageSpec | None
    n_weights: int
    n_stored: int
    nnz: int
    n_filler: int
    value_bits: int
    index_bits: int
    codebook_bits: int
    side_bits: int
    huffman_saving_bits: int
    total_bits: int
    notes: tuple[str, ...] = ()
    header_bits: int = 0

    @property
    def bits_per_weight(self) -> float:
        """``total_bits / n_weights`` (0 for an empty leaf)."""
        return self.total_bits / self.n_weights if self.n_weights else 0.0

    @property
    def density(self) -> float:
        """``nnz / n_weights`` (0 for an empty leaf)."""
        return self.nnz / self.n_weights if self.n_weights else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["shape"] = list(self.shape)
        d["spec"] = None if self.spec is None else self.spec.to_dict()
        d["notes"] = list(self.notes)
        d["bits_per_weight"] = self.bits_per_weight
        d["density"] = self.density
        return d


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class StorageReport:
    """Storage of a whole tree: per-leaf rows and totals.

    Attributes:
      rows: one :class:`StorageRow` per leaf, in flattening order.
      warnings: report-level remarks (e.g. values not representable).
    """

    rows: tuple[StorageRow, ...]
    warnings: tuple[str, ...] = ()

    @property
    def total_bits(self) -> int:
        return sum(r.total_bits for r in self.rows)

    @property
    def total_bytes(self) -> int:
        """``ceil(total_bits / 8)``."""
        return -(-self.total_bits // 8)

    @property
    def n_weights(self) -> int:
        """Dense elements over all leaves."""
        return sum(r.n_weights for r in self.rows)

    @property
    def nnz(self) -> int:
        return sum(r.nnz for r in self.rows)

    @property
    def dense_bits(self) -> int:
        """The baseline: ``32 * n_weights``."""
        return BASELINE_BITS * self.n_weights

    @property
    def bits_per_weight(self) -> float:
        """``total_bits / n_weights`` (0 for an empty tree)."""
        return self.total_bits / self.n_weights if self.n_weights else 0.0

    @property
    def ratio(self) -> float:
        """Compression ratio ``32 * n_weights / total_bits`` (inf if nothing is stored)."""
        if self.total_bits == 0:
            return math.inf if self.n_weights else 1.0
        return self.dense_bits / self.total_bits

    def totals(self) -> dict[str, Any]:
        """The totals as a dict."""
        keys = ("value_bits", "index_bits", "codebook_bits", "side_bits", "header_bits",
                "huffman_saving_bits")
        out = {k: sum(getattr(r, k) for r in self.rows) for k in keys}
        out.update(
            n_weights=self.n_weights,
            nnz=self.nnz,
            n_filler=sum(r.n_filler for r in self.rows),
            total_bits=self.total_bits,
            total_bytes=self.total_bytes,
            bits_per_weight=self.bits_per_weight,
            ratio=finite_or_none(self.ratio),
            dense_bits=self.dense_bits,
        )
        return out

    def row(self, path: str) -> StorageRow:
        """The row of ``path``.

        Raises:
          KeyError: listing the available paths.
        """
        for r in self.rows:
            if r.path == path:
                return r
        paths = [r.path for r in self.rows]
        raise KeyError(f"no leaf '{path}' in the report; available:\n{list_paths(paths, path)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite ratios become ``None``)."""
        return {
            "rows": [r.to_dict() for r in self.rows],
            "totals": self.totals(),
            "warnings": list(self.warnings),
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict(), **kwargs)

    def format_table(self) -> str:
        """A plain-text table, one line per leaf plus the total."""
        head = f"{'path':<40} {'format':<10} {'weights':>10} {'nnz':>10} {'bits':>12} {'bits/w':>7}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.path[-40:]:<40} {r.format:<10} {r.n_weights:>10} {r.nnz:>10} "
                f"{r.total_bits:>12} {r.bits_per_weight:>7.3f}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<40} {'':<10} {self.n_weights:>10} {self.nnz:>10} {self.total_bits:>12} "
            f"{self.bits_per_weight:>7.3f}   ratio {self.ratio:.2f}x, {self.total_bytes} bytes"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


# --------------------------------------------------------------------------------------------
# Spec resolution


def _check_spec(value: Any, label: str) -> StorageSpec | None:
    if value is not None and not isinstance(value, StorageSpec):
        raise TypeError(f"{label} must be a StorageSpec or None, got {type(value).__name__}")
    return value


def count_header_bits(fmt: str, n: int) -> int:
    """Bits of the entry-count field a leaf of ``n`` elements needs in format ``fmt``.

    ``relative`` and ``csr`` streams end after a data-dependent number of
    entries, so they carry the count in ``ceil(log2(n + 1))`` bits (enough
    for ``0..n``); ``dense`` and ``bitmask`` need none.

    Example:
      >>> count_header_bits("relative", 16), count_header_bits("csr", 15), count_header_bits("dense", 16)
      (5, 4, 0)
    """
    return int(n).bit_length() if fmt in ("relative", "csr") else 0


def resolve_specs(spec: Any, items: list[tuple[str, Any]]) -> list[StorageSpec | None]:
    """One spec per ``(path, leaf)``: a :func:`jaxcomp.select.per_leaf` rule, unmatched leaves None.

    Accepts every ``spec`` form of :func:`model_size_bytes`.

    Example:
      >>> resolve_specs([("w", StorageSpec(bits=8))], [("w", None), ("b", None)])[1] is None
      True
    """
    if (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str)
            and isinstance(spec[1], StorageSpec)):
        spec = [spec]  # a single (regex, StorageSpec) pair
    if not (spec is None or isinstance(spec, (StorageSpec, list, tuple)) or is_mapping(spec)
            or callable(spec)):
        raise TypeError(
            f"spec must be None, a StorageSpec, a mapping or list of (regex, StorageSpec), or a "
            f"callable (path, leaf) -> StorageSpec; got {type(spec).__name__}"
        )
    return LeafRule(spec, what="spec", validate=_check_spec).resolve(items, default=None)


# --------------------------------------------------------------------------------------------
# Per-leaf accounting


def _dense_host(path: str, leaf: Any) -> np.ndarray:
    check_count_leaf(path, leaf)
    if is_abstract(leaf):
        raise TypeError(
            f"parameter '{path}' is abstract ({type(leaf).__name__}); storage accounting needs "
            "concrete arrays"
        )
    arr = np.asarray(leaf.materialize() if isinstance(leaf, CompressedLeaf) else leaf)
    # jnp.issubdtype also knows the ml_dtypes types (bfloat16, float8, int4, ...).
    real = arr.dtype == np.bool_ or any(
        jnp.issubdtype(arr.dtype, t) for t in (jnp.integer, jnp.floating)
    )
    if not real:
        raise TypeError(
            f"parameter '{path}' has dtype {arr.dtype}; storage accounting needs real numbers"
        )
    if jnp.issubdtype(arr.dtype, jnp.floating) and not np.isfinite(arr).all():
        raise ValueError(
            f"parameter '{path}' holds {int(np.isnan(arr).sum())} NaN and "
            f"{int(np.isinf(arr).sum())} infinite values; storage of non-finite weights is "
            "undefined"
        )
    return arr


def _stream_huffman(symbols: np.ndarray, fixed_bits: int, alphabet: int) -> int:
    """Bits of one stream under the Huffman option: min(coded + table, fixed) + 1 flag bit."""
    code = huffman_code(symbols)
    coded = code.encoded_bits(symbols) + code.table_bits(alphabet)
    return min(coded, fixed_bits) + 1


def _compressed_row(path: str, leaf: CompressedLeaf, spec: StorageSpec | None) -> StorageRow:
    arr = _dense_host(path, leaf)
    total = int(leaf.storage_bits())
    value = total
    codebook = side = 0
    if isinstance(leaf, Codebook):
        value = min(total, int(np.size(leaf.indices)) * leaf.index_bits)
        codebook = total - value
    elif isinstance(leaf, QArray):
        value = min(total, int(np.size(leaf.values)) * leaf.bits)
        side = total - value
    notes = [f"compressed leaf ({leaf.kind}): charged its own storage_bits()"]
    if spec is not None:
        notes.append("the matching StorageSpec was ignored for this compressed leaf")
    return StorageRow(
        path=path,
        shape=tuple(int(s) for s in leaf.shape),
        dtype=np.dtype(leaf.dtype).name,
        leaf_type=leaf.kind,
        format="compressed",
        spec=None,
        n_weights=int(leaf.size),
        n_stored=int(sum(int(np.size(a)) for a in leaf.arrays())),
        nnz=int(np.count_nonzero(arr)),
        n_filler=0,
        value_bits=value,
        index_bits=0,
        codebook_bits=codebook,
        side_bits=side,
        huffman_saving_bits=0,
        total_bits=total,
        notes=tuple(notes),
    )


def _array_row(
    path: str, leaf: Any, spec: StorageSpec | None, strict: bool
) -> tuple[StorageRow, list[str]]:
    arr = _dense_host(path, leaf)
    shape = tuple(int(s) for s in arr.shape)
    n = int(arr.size)
    nnz = int(np.count_nonzero(arr))
    if spec is None:
        w = dtype_bits(arr.dtype)
        row = StorageRow(
            path=path,
            shape=shape,
            dtype=arr.dtype.name,
            leaf_type="array",
            format="dense",
            spec=None,
            n_weights=n,
            n_stored=n,
            nnz=nnz,
            n_filler=0,
            value_bits=n * w,
            index_bits=0,
            codebook_bits=0,
            side_bits=0,
            huffman_saving_bits=0,
            total_bits=n * w,
            notes=(f"no spec: dense at the dtype width ({w} bits)",),
        )
        return row, []

    enc = encode_sparse(arr, spec.format, value_bits=spec.bits, index_bits=spec.index_bits)
    distinct, symbols = np.unique(enc.values, return_inverse=True)
    symbols = symbols.reshape(-1)
    notes: list[str] = []
    warnings: list[str] = []
    if distinct.size > spec.capacity:
        what = (
            f"a codebook of {spec.codebook} values"
            if spec.codebook is not None
            else f"{spec.bits}-bit codes ({spec.capacity} values)"
        )
        msg = (
            f"'{path}' stores {distinct.size} distinct values (zeros that are stored count) but "
            f"{what} can name only {spec.capacity}"
        )
        if spec.huffman:
            raise ValueError(
                msg + "; Huffman counting needs the actual symbols — quantize the weights to at "
                "most that many values first (e.g. with a Codebook or a quantizer), or widen bits"
            )
        if strict:
            raise ValueError(msg + "; quantize the weights first or widen bits (strict=True)")
        notes.append(msg + "; the count assumes they will be quantized")
        warnings.append(msg)

    value_bits = enc.value_bits_total
    index_bits = enc.index_bits_total
    saving = 0
    if spec.huffman:
        fixed_v = value_bits
        value_bits = _stream_huffman(symbols, fixed_v, spec.capacity)
        saving += fixed_v - value_bits
        if spec.format in ("relative", "csr"):
            fixed_i = int(enc.indices.size) * enc.index_bits
            coded_i = _stream_huffman(enc.indices, fixed_i, 1 << enc.index_bits)
            index_bits = index_bits - fixed_i + coded_i
            saving += fixed_i - coded_i
        notes.append(
            "Huffman: values" + (" and indices" if spec.format in ("relative", "csr") else "")
        )
    codebook_bits = int(spec.codebook) * spec.codebook_bits if spec.codebook is not None else 0
    header = count_header_bits(spec.format, n)
    row = StorageRow(
        path=path,
        shape=shape,
        dtype=arr.dtype.name,
        leaf_type="array",
        format=spec.format,
        spec=spec,
        n_weights=n,
        n_stored=enc.n_entries,
        nnz=nnz,
        n_filler=enc.n_filler,
        value_bits=int(value_bits),
        index_bits=int(index_bits),
        codebook_bits=codebook_bits,
        side_bits=0,
        huffman_saving_bits=int(saving),
        total_bits=int(value_bits + index_bits + codebook_bits + header),
        notes=tuple(notes),
        header_bits=header,
    )
    return row, warnings


def model_size_bytes(params: Any, spec: SpecLike = None, *, strict: bool = False) -> StorageReport:
    """Counts the bits a parameter tree takes when stored.

    Args:
      params: a parameter tree (linen variables dict, boxed or not; nnx state
        or pure dict; any pytree of arrays and compressed leaves).
      spec: how to store dense leaves:

        * ``None``: every leaf dense at its dtype width;
        * a :class:`StorageSpec`: applied to every dense leaf;
        * a mapping or list of ``(pattern, StorageSpec | None)``: the first
          pattern (a regex, full match on the canonical path, or a
          Selector) that matches wins; leaves no rule matches, or matched by
          a ``None`` rule, are dense at their dtype width (add ``".*"`` last
          for a default). Every pattern must give some leaf its spec (see
          :func:`jaxcomp.select.per_leaf`);
        * a callable ``(path, leaf) -> StorageSpec | None``.

        Compressed leaves always report their own ``storage_bits()``.
      strict: raise instead of warning when a leaf holds more distinct values
        than its spec's codes can name.

    Returns:
      A :class:`StorageReport`: ``total_bits``, ``total_bytes``,
      ``bits_per_weight``, ``ratio`` (vs 32-bit dense) and per-leaf rows.

    Raises:
      ValueError: a regex matching no path (the message lists the paths), an
        invalid regex, NaN/Inf weights (naming the path), values that do not
        fit the codes under ``huffman=True`` (or ``strict=True``).
      TypeError: malformed specs or non-array leaves.

    Example:
      A 4 x 4 matrix with 3 non-zeros, 8-bit values, CSR: the non-zero count
      in 5 bits (it may be 0..16), 5 row pointers of 2 bits (they hold
      0..3), 3 column indices of 2 bits and 3 values.

      >>> import numpy as np
      >>> w = np.zeros((4, 4), np.float32); w[0, 1], w[2, 2], w[3, 0] = 1, 2, 3
      >>> rep = model_size_bytes({"w": w, "b": np.zeros(4, np.float32)},
      ...                        [("w", StorageSpec(bits=8, format="csr"))])
      >>> rep.row("w").total_bits, rep.row("b").total_bits, rep.total_bits
      (45, 128, 173)
      >>> rep.total_bytes, round(rep.ratio, 4)  # 32 * 20 / 173
      (22, 3.6994)

    References:
      Han, Mao, Dally, "Deep compression", arXiv:1510.00149.
    """
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {strict!r}")
    items = leaves_with_paths(params)
    for path, leaf in items:
        check_count_leaf(path, leaf)
    specs = resolve_specs(spec, items)
    rows: list[StorageRow] = []
    warnings: list[str] = []
    for (path, leaf), s in zip(items, specs):
        if isinstance(leaf, CompressedLeaf):
            rows.append(_compressed_row(path, leaf, s))
        else:
            row, w = _array_row(path, leaf, s, strict)
            rows.append(row)
            warnings.extend(w)
    return StorageReport(rows=tuple(rows), warnings=tuple(warnings))
