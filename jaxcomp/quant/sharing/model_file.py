"""Model files that hold exactly the bits :func:`jaxcomp.metrics.model_size_bytes` counts.

:func:`export_model` writes a parameter tree (pruned, shared, quantized,
hashed, ...) under a :class:`~jaxcomp.metrics.StorageSpec` as one
bit-packed stream; :func:`load_model` reads it back, given the structure
(``like=``, a tree of arrays or ``jax.ShapeDtypeStruct`` with the same paths,
shapes, dtypes and leaf types) and the same spec. The file holds the data
and nothing else, so its size is ``model_size_bytes(params, spec).total_bytes``
to the byte, and loading gives the same weights bit for bit (a ``-0.0`` that
a sparse format does not store comes back as ``0.0``).

Layout: leaves in flattening order (:func:`jaxcomp.select.leaves_with_paths`),
each as the fields its storage row counts, most significant bit first, the
whole stream zero-padded to a byte:

* a dense leaf without spec: every element's bit pattern at its dtype width;
* a leaf with a spec: the entry count (``relative``: entries incl. fillers;
  ``csr``: non-zeros; ``ceil(log2(n + 1))`` bits; none for ``dense`` and
  ``bitmask``); the codebook (``k`` centroids at ``codebook_bits``, the
  sorted distinct stored values padded with zeros); the index data (bitmask:
  one bit per element; csr: the row pointers, then the column-index stream;
  relative: the skip stream); then the value stream. A value is its rank
  among the codebook's values, or without a codebook its own bit pattern
  (``bits`` must then equal the dtype's width);
* a stream under ``huffman=True``: one flag bit, then either the fixed-width
  fields or a code table and the Huffman payload, whichever
  :func:`~jaxcomp.metrics.model_size_bytes` found smaller (ties: fixed). A
  table is an 8-bit length width ``w``, one layout bit, then the lengths of
  all ``K`` symbols of the alphabet (``w`` bits each) or a 32-bit count of
  ``(symbol, length)`` pairs (:meth:`~jaxcomp.encode.HuffmanCode.table_bits`);
  canonical codewords follow from the lengths;
* a compressed leaf: a :class:`~jaxcomp.Codebook` as its indices at
  ``index_bits`` then its centroids; a :class:`~jaxcomp.QArray` as its codes
  at ``bits`` (two's complement when signed) then scales and zero points;
  any other leaf whose ``storage_bits()`` is the raw size of its arrays
  (``LowRank``, :class:`~jaxcomp.quant.sharing.hashing.HashedArray`, ...) as those
  arrays.

References:
  Han, Mao, Dally, "Deep compression: compressing deep neural networks with
  pruning, trained quantization and Huffman coding", arXiv:1510.00149.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.leaves import Codebook, CompressedLeaf, QArray, dtype_bits
from jaxcomp.encode.huffman import TABLE_COUNT_BITS, TABLE_HEADER_BITS, canonical_code, huffman_code
from jaxcomp.encode.sparse import Encoded, decode_sparse, encode_sparse
from jaxcomp.metrics.storage import (
    StorageReport,
    StorageSpec,
    count_header_bits,
    model_size_bytes,
    resolve_specs,
)
from jaxcomp.select.paths import leaves_with_paths

__all__ = [
    "decode_model",
    "encode_model",
    "export_model",
    "huffman_pack",
    "huffman_unpack",
    "load_model",
]


# ------------------------------------------------------------------------------ bit streams


class _Writer:
    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.n_bits = 0

    def fields(self, values: Any, width: int) -> None:
        v = np.asarray(values).reshape(-1).astype(np.uint64)
        if width == 0 or v.size == 0:
            return
        shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
        bits = ((v[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8).reshape(-1)
        self.bits(bits)

    def bits(self, bits: np.ndarray) -> None:
        self.parts.append(np.asarray(bits, np.uint8).reshape(-1))
        self.n_bits += int(bits.size)

    def getvalue(self) -> bytes:
        if not self.parts:
            return b""
        return np.packbits(np.concatenate(self.parts)).tobytes()


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.bits_ = np.unpackbits(np.frombuffer(bytes(data), np.uint8))
        self.pos = 0
        self.what = what

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > self.bits_.size:
            raise ValueError(f"{self.what}: the data ends after {self.bits_.size} bits but "
                             f"{self.pos + n} are needed; the file is truncated or was written "
                             "for another tree or spec")
        out = self.bits_[self.pos:self.pos + n]
        self.pos += n
        return out

    def fields(self, count: int, width: int) -> np.ndarray:
        if width == 0 or count == 0:
            return np.zeros((count,), np.uint64)
        b = self.take(count * width).reshape(count, width).astype(np.uint64)
        out = np.zeros((count,), np.uint64)
        for j in range(width):
            out = (out << np.uint64(1)) | b[:, j]
        return out

    def field(self, width: int) -> int:
        return int(self.fields(1, width)[0])

    def rest(self) -> np.ndarray:
        return self.bits_[self.pos:]


# ------------------------------------------------------------------------------ values


def _uint_of(itemsize: int) -> Any:
    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize]


def _patterns(arr: np.ndarray) -> np.ndarray:
    """Each element's bit pattern at its dtype width (``dtype_bits``), as uint64."""
    arr = np.ascontiguousarray(arr).reshape(-1)
    dt = arr.dtype
    if dt == np.bool_:
        return arr.astype(np.uint64)
    w = dtype_bits(dt)
    if jnp.issubdtype(dt, jnp.floating):
        return arr.view(_uint_of(dt.itemsize)).astype(np.uint64)
    if w == 64:
        return arr.view(np.uint64)
    return (arr.astype(np.int64) & ((1 << w) - 1)).astype(np.uint64)


def _from_patterns(p: np.ndarray, dt: Any, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dt)
    p = np.asarray(p, np.uint64)
    if dt == np.bool_:
        out = p != 0
    elif jnp.issubdtype(dt, jnp.floating):
        out = p.astype(_uint_of(dt.itemsize)).view(dt)
    elif dtype_bits(dt) == 64:
        out = p.view(dt)
    else:
        w = dtype_bits(dt)
        v = p.astype(np.int64)
        if jnp.issubdtype(dt, jnp.signedinteger):
            v = np.where(v >= (1 << (w - 1)), v - (1 << w), v)
        out = v.astype(dt)
    return out.reshape(shape)


def _host(path: str, leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.core.Tracer):
        raise TypeError(f"export: '{path}' is traced; export concrete arrays, outside jit")
    return np.asarray(leaf)


def _field_bits(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


# ------------------------------------------------------------------------------ Huffman streams


def _write_table(out: _Writer, symbols: np.ndarray, lengths: np.ndarray, alphabet: int) -> None:
    """The table layout of :meth:`HuffmanCode.table_bits` (non-empty code)."""
    w = int(lengths.max()).bit_length()
    out.fields([w], TABLE_HEADER_BITS)
    sym_bits = _field_bits(alphabet)
    dense = alphabet * w
    sparse = TABLE_COUNT_BITS + symbols.size * (sym_bits + w)
    if dense <= sparse:
        out.fields([0], 1)
        table = np.zeros(alphabet, np.uint64)
        table[symbols.astype(np.int64)] = lengths
        out.fields(table, w)
    else:
        out.fields([1], 1)
        out.fields([symbols.size], TABLE_COUNT_BITS)
        pairs = (symbols.astype(np.uint64) << np.uint64(w)) | lengths.astype(np.uint64)
        out.fields(pairs, sym_bits + w)


def _read_table(inp: _Reader, alphabet: int) -> Any:
    w = inp.field(TABLE_HEADER_BITS)
    if not 1 <= w <= 7:
        raise ValueError(f"{inp.what}: a Huffman table gives a length width of {w} bits; the "
                         "data is corrupted or was written for another tree or spec")
    sym_bits = _field_bits(alphabet)
    if inp.field(1) == 0:
        table = inp.fields(alphabet, w)
        symbols = np.flatnonzero(table)
        lengths = table[symbols]
    else:
        n = inp.field(TABLE_COUNT_BITS)
        pairs = inp.fields(n, sym_bits + w)
        symbols = (pairs >> np.uint64(w)).astype(np.int64)
        lengths = (pairs & np.uint64((1 << w) - 1)).astype(np.int64)
    try:
        return canonical_code(symbols.astype(np.int64), lengths.astype(np.int64))
    except ValueError as e:
        raise ValueError(f"{inp.what}: {e}") from None


def _write_stream(out: _Writer, stored: np.ndarray, ranks: np.ndarray, width: int,
                  alphabet: int, rank_symbols: np.ndarray | None = None) -> None:
    """One Huffman-optional stream: flag bit, then fixed fields or table + payload.

    The code lengths come from ``huffman_code(ranks)``, as
    :func:`~jaxcomp.metrics.model_size_bytes` counts them; the table and the
    payload use the ``stored`` symbols (``rank_symbols[r]`` is the stored
    symbol of rank ``r``; by default the ranks are stored).
    """
    code = huffman_code(ranks)
    fixed = stored.size * width
    coded = code.encoded_bits(ranks) + code.table_bits(alphabet) if stored.size else 0
    if stored.size and coded < fixed:
        out.fields([1], 1)
        syms = code.symbols if rank_symbols is None else rank_symbols[code.symbols]
        scode = canonical_code(syms, code.lengths)
        _write_table(out, scode.symbols, scode.lengths, alphabet)
        out.bits(scode.encode_bits(stored))
    else:
        out.fields([0], 1)
        out.fields(stored, width)


def _read_stream(inp: _Reader, count: int, width: int, alphabet: int) -> np.ndarray:
    if inp.field(1) == 0:
        return inp.fields(count, width)
    code = _read_table(inp, alphabet)
    try:
        syms, used = code.decode_prefix(inp.rest(), count)
    except ValueError as e:
        raise ValueError(f"{inp.what}: {e}") from None
    inp.pos += used
    return syms.astype(np.uint64)


def huffman_pack(symbols: Any, *, alphabet_size: int) -> bytes:
    """Huffman-codes integer symbols into a self-contained blob: count, code table, payload.

    The layout is the one model files use for a coded stream (a 32-bit
    symbol count first), so it round-trips with :func:`huffman_unpack`.

    Args:
      symbols: integers in ``[0, alphabet_size)``.
      alphabet_size: ``K``, the number of possible symbols (``<= 2**32``).

    Returns:
      The packed bytes.

    Raises:
      ValueError: no symbols (an empty stream needs no code), symbols outside
        the alphabet, more than ``2**32 - 1`` symbols.
      TypeError: non-integer symbols.

    Example:
      >>> blob = huffman_pack([3, 3, 3, 0, 1], alphabet_size=4)
      >>> huffman_unpack(blob, alphabet_size=4).tolist()
      [3, 3, 3, 0, 1]
    """
    syms = np.asarray(symbols)
    if syms.size == 0:
        raise ValueError("huffman_pack: no symbols to encode; an empty stream needs no Huffman "
                         "code (store nothing)")
    if syms.dtype == np.bool_ or not np.issubdtype(syms.dtype, np.integer):
        raise TypeError(f"huffman_pack: symbols must be integers, got dtype {syms.dtype}")
    k = int(alphabet_size)
    if not 1 <= k <= (1 << 32):
        raise ValueError(f"huffman_pack: alphabet_size={alphabet_size!r} must be in [1, 2**32]")
    syms = syms.reshape(-1).astype(np.int64)
    if syms.min() < 0 or syms.max() >= k:
        raise ValueError(f"huffman_pack: symbols span [{int(syms.min())}, {int(syms.max())}], "
                         f"outside the alphabet [0, {k})")
    if syms.size >= (1 << 32):
        raise ValueError("huffman_pack: more than 2**32 - 1 symbols")
    code = huffman_code(syms)
    out = _Writer()
    out.fields([syms.size], 32)
    _write_table(out, code.symbols, code.lengths, k)
    out.bits(code.encode_bits(syms))
    return out.getvalue()


def huffman_unpack(data: bytes, *, alphabet_size: int) -> np.ndarray:
    """Decodes a :func:`huffman_pack` blob (int64 symbols).

    Raises:
      ValueError: empty, truncated or corrupted data.

    Example:
      >>> huffman_unpack(huffman_pack([7], alphabet_size=8), alphabet_size=8).tolist()
      [7]
    """
    if len(data) == 0:
        raise ValueError("huffman_unpack: empty data; huffman_pack never writes an empty blob")
    inp = _Reader(data, "huffman_unpack")
    n = inp.field(32)
    code = _read_table(inp, int(alphabet_size))
    try:
        syms, _ = code.decode_prefix(inp.rest(), n)
    except ValueError as e:
        raise ValueError(f"huffman_unpack: {e}") from None
    return syms


# ------------------------------------------------------------------------------ leaves


def _raw_leaf_check(path: str, leaf: CompressedLeaf) -> None:
    raw = sum(int(np.size(a)) * dtype_bits(a.dtype) for a in leaf.arrays())
    if int(leaf.storage_bits()) != raw:
        raise TypeError(
            f"export: '{path}' is a {type(leaf).__name__} whose storage_bits() "
            f"({int(leaf.storage_bits())}) is not the raw size of its arrays ({raw}); no file "
            "layout is known for it. Materialize it (jaxcomp.materialize) or convert it to a "
            "Codebook or QArray first")


def _write_compressed(out: _Writer, path: str, leaf: CompressedLeaf) -> None:
    if isinstance(leaf, Codebook):
        idx = _host(path, leaf.indices).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= leaf.num_clusters):
            raise ValueError(f"export: '{path}' holds indices outside [0, {leaf.num_clusters})")
        out.fields(idx, leaf.index_bits)
        out.fields(_patterns(_host(path, leaf.centroids)), dtype_bits(leaf.centroids.dtype))
    elif isinstance(leaf, QArray):
        v = _host(path, leaf.values).astype(np.int64)
        out.fields(v & ((1 << leaf.bits) - 1), leaf.bits)
        for a in (leaf.scale, leaf.zero_point):
            out.fields(_patterns(_host(path, a)), dtype_bits(a.dtype))
    else:
        _raw_leaf_check(path, leaf)
        for a in leaf.arrays():
            out.fields(_patterns(_host(path, a)), dtype_bits(a.dtype))


def _read_compressed(inp: _Reader, path: str, like: CompressedLeaf) -> CompressedLeaf:
    children, treedef = jax.tree_util.tree_flatten(like)

    def raw(a):
        return _from_patterns(inp.fields(int(np.prod(a.shape)), dtype_bits(a.dtype)), a.dtype,
                              tuple(a.shape))

    if isinstance(like, Codebook):
        idx = inp.fields(int(np.prod(like.indices.shape)), like.index_bits).astype(np.int64)
        new = {"indices": idx.astype(like.indices.dtype).reshape(like.indices.shape),
               "centroids": raw(like.centroids)}
    elif isinstance(like, QArray):
        vals = inp.fields(int(np.prod(like.values.shape)), like.bits).astype(np.int64)
        if jnp.issubdtype(like.values.dtype, jnp.signedinteger):
            vals = np.where(vals >= (1 << (like.bits - 1)), vals - (1 << like.bits), vals)
        new = {"values": vals.astype(like.values.dtype).reshape(like.values.shape),
               "scale": raw(like.scale), "zero_point": raw(like.zero_point)}
    else:
        raw_bits = sum(int(np.prod(a.shape)) * dtype_bits(a.dtype) for a in children)
        if _concrete(like) and int(like.storage_bits()) != raw_bits:
            _raw_leaf_check(path, like)
        return jax.tree_util.tree_unflatten(treedef, [raw(a) for a in children])
    names = [f.name for f in dataclasses.fields(like) if not f.metadata.get("static", False)]
    return jax.tree_util.tree_unflatten(treedef, [new[n] for n in names])


def _concrete(leaf: CompressedLeaf) -> bool:
    return all(isinstance(a, (np.ndarray, jax.Array)) and not isinstance(a, jax.core.Tracer)
               for a in leaf.arrays())


# ------------------------------------------------------------------------------ dense leaves


def _value_symbols(path: str, arr: np.ndarray, spec: StorageSpec, values: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(stored symbols, ranks, rank -> stored symbol, codebook table)`` of a value stream."""
    distinct, ranks = np.unique(values, return_inverse=True)
    ranks = ranks.reshape(-1).astype(np.int64)
    width = dtype_bits(arr.dtype)
    if spec.codebook is not None:
        if spec.codebook_bits != width:
            raise ValueError(
                f"export: '{path}' has dtype {arr.dtype} ({width} bits) but its spec stores "
                f"centroids at codebook_bits={spec.codebook_bits}; a file must hold the "
                f"centroids exactly: use codebook_bits={width} or cast the weights")
        table = np.zeros(spec.codebook, arr.dtype)
        table[:distinct.size] = distinct
        return ranks, ranks, None, table
    if spec.bits != width:
        raise ValueError(
            f"export: '{path}' stores {arr.dtype} values at bits={spec.bits} without a codebook; "
            f"a file can hold them only at their own width (bits={width}) or as indices into a "
            f"codebook (StorageSpec(codebook=k))")
    stored = _patterns(values)
    return stored, ranks, _patterns(distinct), None


def _write_array(out: _Writer, path: str, arr: np.ndarray, spec: StorageSpec | None) -> None:
    if spec is None:
        out.fields(_patterns(arr), dtype_bits(arr.dtype))
        return
    enc = encode_sparse(arr, spec.format, value_bits=spec.bits, index_bits=spec.index_bits)
    stored, ranks, rank_symbols, table = _value_symbols(path, arr, spec, enc.values)
    n = int(arr.size)
    if spec.format == "relative":
        out.fields([enc.n_entries], count_header_bits("relative", n))
    elif spec.format == "csr":
        out.fields([enc.nnz], count_header_bits("csr", n))
    if table is not None:
        out.fields(_patterns(table), spec.codebook_bits)
    if spec.format == "bitmask":
        out.bits(np.asarray(enc.indices, np.uint8))
    elif spec.format == "csr":
        out.fields(enc.row_ptr, enc.pointer_bits)
    if spec.format in ("csr", "relative"):
        idx = np.asarray(enc.indices, np.int64)
        if spec.huffman:
            _write_stream(out, idx, idx, enc.index_bits, 1 << enc.index_bits)
        else:
            out.fields(idx, enc.index_bits)
    if spec.huffman:
        _write_stream(out, stored, ranks, spec.bits, spec.capacity, rank_symbols)
    else:
        out.fields(stored, spec.bits)


def _read_array(inp: _Reader, path: str, shape: tuple[int, ...], dt: np.dtype,
                spec: StorageSpec | None) -> np.ndarray:
    n = int(np.prod(shape))
    if spec is None:
        return _from_patterns(inp.fields(n, dtype_bits(dt)), dt, shape)
    fmt = spec.format
    count = inp.field(count_header_bits(fmt, n)) if fmt in ("relative", "csr") else None
    if count is not None and count > n:
        raise ValueError(f"{inp.what}: '{path}' claims {count} entries for {n} elements; the "
                         "data is corrupted or was written for another tree or spec")
    table = None
    if spec.codebook is not None:
        if spec.codebook_bits != dtype_bits(dt):
            raise ValueError(f"load: '{path}' has dtype {dt} but its spec stores centroids at "
                             f"codebook_bits={spec.codebook_bits}")
        table = _from_patterns(inp.fields(spec.codebook, spec.codebook_bits), dt,
                               (spec.codebook,))
    elif spec.bits != dtype_bits(dt):
        raise ValueError(f"load: '{path}' has dtype {dt} but its spec stores values at "
                         f"bits={spec.bits} without a codebook")
    mask = row_ptr = idx = None
    if fmt == "bitmask":
        mask = inp.take(n).astype(bool)
        count = int(mask.sum())
    elif fmt == "dense":
        count = n
    if fmt == "csr":
        rows, cols = (1, 1) if len(shape) == 0 else (shape[0], n // shape[0] if shape[0] else 0)
        row_ptr = inp.fields(rows + 1, _field_bits(count + 1)).astype(np.int64)
        width = _field_bits(cols)
    elif fmt == "relative":
        width = spec.index_bits
    if fmt in ("csr", "relative"):
        if spec.huffman:
            idx = _read_stream(inp, count, width, 1 << width).astype(np.int64)
        else:
            idx = inp.fields(count, width).astype(np.int64)
    if spec.huffman:
        sym = _read_stream(inp, count, spec.bits, spec.capacity)
    else:
        sym = inp.fields(count, spec.bits)
    if table is not None:
        if sym.size and int(sym.max()) >= spec.codebook:
            raise ValueError(f"{inp.what}: '{path}' refers to codebook entry {int(sym.max())} "
                             f"of {spec.codebook}; the data is corrupted")
        values = table[sym.astype(np.int64)]
    else:
        values = _from_patterns(sym, dt, (count,))
    zero = values == 0
    record = Encoded(
        format=fmt, shape=tuple(shape), dtype=np.dtype(dt), value_bits=spec.bits,
        index_bits={"dense": 0, "bitmask": 1}.get(fmt) if fmt in ("dense", "bitmask") else width,
        pointer_bits=_field_bits(count + 1) if fmt == "csr" else 0,
        values=values.reshape(-1),
        indices=mask if fmt == "bitmask" else (idx if idx is not None else np.zeros(0, np.int64)),
        row_ptr=row_ptr,
        nnz=int(count - zero.sum()) if fmt == "relative" else (
            int(np.count_nonzero(values)) if fmt != "csr" else count),
        n_filler=int(zero.sum()) if fmt == "relative" else 0)
    try:
        return decode_sparse(record)
    except ValueError as e:
        raise ValueError(f"{inp.what}: '{path}': {e}") from None


# ------------------------------------------------------------------------------ models


def _items(tree: Any, what: str) -> list[tuple[str, Any]]:
    items = leaves_with_paths(tree)
    if not items:
        raise ValueError(f"{what}: the tree has no leaves; there is nothing to store")
    return items


def encode_model(params: Any, spec: Any = None) -> tuple[bytes, StorageReport]:
    """The bytes of a model file and the storage report they match.

    Args:
      params: a parameter tree of concrete arrays and compressed leaves.
      spec: how dense leaves are stored, any form of
        :func:`~jaxcomp.metrics.model_size_bytes` (``None``: dense at the
        dtype width). Leaves without a codebook must keep ``bits`` equal to
        their dtype's width; with a codebook, ``codebook_bits`` must equal it
        (the file holds real values, nothing is re-quantized).

    Returns:
      ``(data, report)`` with ``len(data) == report.total_bytes`` and
      ``report == model_size_bytes(params, spec, strict=True)``.

    Raises:
      ValueError: an empty tree; values the codes cannot name (as
        ``model_size_bytes(strict=True)``); widths a file cannot hold
        exactly (see above); NaN/Inf weights.
      TypeError: traced arrays; a compressed leaf with no known layout.

    Example:
      >>> import numpy as np
      >>> w = np.zeros((4, 8), np.float32); w[0, 1], w[2, 5], w[3, 0] = 0.5, -0.25, 0.5
      >>> spec = StorageSpec(format="relative", codebook=4, index_bits=3)
      >>> data, rep = encode_model({"w": w}, spec)
      >>> len(data) == rep.total_bytes, rep.total_bits
      (True, 159)
    """
    items = _items(params, "encode_model")
    report = model_size_bytes(params, spec, strict=True)
    specs = resolve_specs(spec, items)
    out = _Writer()
    for (path, leaf), s, row in zip(items, specs, report.rows):
        start = out.n_bits
        if isinstance(leaf, CompressedLeaf):
            _write_compressed(out, path, leaf)
        else:
            _write_array(out, path, _host(path, leaf), s)
        if out.n_bits - start != row.total_bits:  # the layout is the storage count, field by field
            raise AssertionError(f"encode_model: '{path}' took {out.n_bits - start} bits, its "
                                 f"storage row counts {row.total_bits}")
    return out.getvalue(), report


def decode_model(data: bytes, like: Any, spec: Any = None) -> Any:
    """Rebuilds the parameter tree from :func:`encode_model` bytes.

    Args:
      data: the bytes.
      like: the tree's structure: same paths, leaf types, shapes and dtypes
        (arrays, ``jax.ShapeDtypeStruct`` or compressed leaves holding either,
        e.g. ``jax.eval_shape(lambda: params)``).
      spec: the spec the bytes were written with.

    Returns:
      The tree, NumPy arrays at ``like``'s dtypes (compressed leaves rebuilt
      around them).

    Raises:
      ValueError: truncated or trailing data, a corrupted stream (the
        message names the leaf), an empty tree.

    Example:
      >>> import numpy as np
      >>> w = np.zeros((4, 8), np.float32); w[0, 1], w[2, 5], w[3, 0] = 0.5, -0.25, 0.5
      >>> spec = StorageSpec(format="relative", codebook=4, index_bits=3, huffman=True)
      >>> data, _ = encode_model({"w": w}, spec)
      >>> np.array_equal(decode_model(data, {"w": w}, spec)["w"], w)
      True
    """
    items = _items(like, "decode_model")
    specs = resolve_specs(spec, items)
    inp = _Reader(data, "decode_model")
    leaves = []
    for (path, leaf), s in zip(items, specs):
        if isinstance(leaf, CompressedLeaf):
            leaves.append(_read_compressed(inp, path, leaf))
            continue
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(f"decode_model: like's leaf '{path}' is a {type(leaf).__name__}; give "
                            "arrays or jax.ShapeDtypeStruct with the shapes and dtypes")
        leaves.append(_read_array(inp, path, tuple(int(d) for d in leaf.shape),
                                  np.dtype(leaf.dtype), s))
    left = inp.rest()
    if left.size >= 8 or left.any():
        raise ValueError(f"decode_model: {left.size} bits are left after the last leaf; the data "
                         "was written for another tree or spec")
    treedef = jax.tree_util.tree_structure(like, is_leaf=lambda x: isinstance(x, CompressedLeaf))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def export_model(params: Any, path: str | os.PathLike, spec: Any = None) -> StorageReport:
    """Writes ``params`` to ``path`` under ``spec`` (see :func:`encode_model`).

    Args:
      params: a parameter tree of concrete arrays and compressed leaves.
      path: the file to write (replaced if it exists).
      spec: how dense leaves are stored (any :func:`~jaxcomp.metrics.model_size_bytes` form).

    Returns:
      The storage report; the file's size is exactly ``report.total_bytes``.

    Raises:
      ValueError, TypeError: as :func:`encode_model` (nothing is written then).

    Example:
      >>> import os, tempfile, numpy as np
      >>> w = np.array([[0.0, 1.5], [1.5, -3.0]], np.float32)
      >>> path = os.path.join(tempfile.mkdtemp(), "model.bin")
      >>> rep = export_model({"w": w}, path, StorageSpec(format="bitmask", codebook=2))
      >>> os.path.getsize(path) == rep.total_bytes, load_model(path, {"w": w},
      ...     StorageSpec(format="bitmask", codebook=2))["w"].tolist()
      (True, [[0.0, 1.5], [1.5, -3.0]])
    """
    data, report = encode_model(params, spec)
    with open(path, "wb") as f:
        f.write(data)
    return report


def load_model(path: str | os.PathLike, like: Any, spec: Any = None) -> Any:
    """Reads a file written by :func:`export_model` (see :func:`decode_model`).

    Args:
      path: the file.
      like: the tree's structure, shapes, dtypes and leaf types.
      spec: the spec the file was written with.

    Returns:
      The parameter tree (NumPy arrays).

    Raises:
      ValueError: truncated, trailing or corrupted data (naming the leaf).

    Example:
      >>> import os, tempfile, numpy as np
      >>> path = os.path.join(tempfile.mkdtemp(), "b.bin")
      >>> _ = export_model({"b": np.arange(3, dtype=np.int8)}, path)
      >>> load_model(path, {"b": np.zeros(3, np.int8)})["b"].tolist(), os.path.getsize(path)
      ([0, 1, 2], 3)
    """
    with open(path, "rb") as f:
        return decode_model(f.read(), like, spec)
