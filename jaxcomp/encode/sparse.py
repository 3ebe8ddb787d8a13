"""Sparse index formats for weight arrays, with exact bit counts.

Every encoder takes an array (numpy, JAX or anything ``numpy.asarray``
accepts), keeps its non-zero entries and returns an :class:`Encoded` record:
the stored values and index data, exact bit counts, and
:meth:`Encoded.decode` back to the dense array. Values are kept exactly as
given; ``value_bits`` is the width each stored value is *charged*, so the
counts describe storage at that width (quantize the values first for them to
be representable). The array's shape is metadata and is not charged.

Formats (``n`` elements, ``nnz`` non-zeros, ``b`` = ``value_bits``):

``dense``
  all ``n`` values: ``n * b`` bits, no index.

``bitmask``
  one bit per element (1 = non-zero) plus the ``nnz`` non-zero values in
  row-major order: ``n + nnz * b`` bits.

``csr``
  compressed sparse rows of the matrix view ``(shape[0], n // shape[0])``
  (a 1-D array is one row, a scalar a 1 x 1 matrix): ``rows + 1`` row pointers
  of ``ceil(log2(nnz + 1))`` bits each (enough to hold ``0..nnz``), ``nnz``
  column indices of ``ceil(log2(n_cols))`` bits each, and the ``nnz`` values.
  Every field is at least one bit wide.

``relative`` (Deep Compression, Han et al., arXiv:1510.00149, Sec. 2 and Fig. 2)
  the row-major flattened array is stored as a list of entries, each a value
  plus an ``index_bits``-bit field holding the number of zeros skipped since
  the previous entry (the position difference minus one; the first entry
  counts from the start of the array). A field holds ``0 .. 2**index_bits - 1``,
  so a run of more than ``2**index_bits - 1`` zeros cannot be skipped in one
  step: the encoder then stores a *filler zero*, an entry of value 0 whose
  field is the maximum ``2**index_bits - 1``, placed ``2**index_bits``
  positions after the previous entry, and repeats until the run fits. A run of
  ``z`` zeros before a non-zero thus costs ``z // 2**index_bits`` fillers.
  Fillers are stored entries and are charged value bits and index bits. Zeros
  after the last non-zero cost nothing (the length is known from the shape).

  The paper's Figure 2 (3-bit example) labels each entry with its position
  difference ``1, 3, 8, 3``; the 3-bit fields hold these differences minus
  one, i.e. the skipped-zero counts, and the filler lands at the same
  position as in the figure (8 after the previous non-zero). In words of
  zero runs: with ``index_bits=3`` a gap of 7 zeros fits in one field and a
  gap of 8 zeros needs a filler.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = [
    "SPARSE_FORMATS",
    "Encoded",
    "bitmask_encode",
    "csr_encode",
    "csr_view_shape",
    "decode_sparse",
    "dense_encode",
    "encode_all",
    "encode_sparse",
    "relative_encode",
]

SPARSE_FORMATS = ("dense", "bitmask", "csr", "relative")


def _field_bits(n: int) -> int:
    """Bits of a field that holds ``n`` distinct values (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        # ValueError by design: a bad width is a bad value of a configuration field.
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")  # noqa: TRY004
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is outside [{low}, {high}]")
    return value


def _as_array(x: Any, where: str | None = None) -> np.ndarray:
    at = f" at '{where}'" if where else ""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:  # e.g. a tracer
        raise TypeError(f"cannot convert {type(x).__name__}{at} to a numpy array: {e}") from None
    # jnp.issubdtype also knows the ml_dtypes types (bfloat16, float8, int4, ...).
    if arr.dtype == np.bool_ or jnp.issubdtype(arr.dtype, jnp.integer):
        return arr
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"sparse encoding needs a real numeric array{at}, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(
            f"array{at} holds {n_nan} NaN and {n_inf} infinite values; storage of non-finite "
            "weights is undefined — fix the weights first"
        )
    return arr


def csr_view_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``(rows, cols)`` matrix view CSR uses: ``(shape[0], prod(shape[1:]))``.

    A 1-D array is one row; a scalar is ``(1, 1)``.

    Example:
      >>> csr_view_shape((3, 3, 16, 32)), csr_view_shape((5,)), csr_view_shape(())
      ((3, 1536), (1, 5), (1, 1))
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, shape[0])
    return (shape[0], math.prod(shape[1:]))


@dataclasses.dataclass(frozen=True, eq=False)
class Encoded:
    """One array in one storage format, with its exact bit counts.

    Attributes:
      format: one of ``"dense"``, ``"bitmask"``, ``"csr"``, ``"relative"``.
      shape: the dense shape.
      dtype: the dense dtype.
      value_bits: bits charged per stored value.
      index_bits: bits per index field: 0 for dense, 1 (per element) for
        bitmask, the column-index width for csr, ``index_bits`` for relative.
      pointer_bits: width of a CSR row pointer (0 for the other formats).
      values: the stored values in storage order (fillers included).
      indices: the index data: empty for dense, the boolean mask (flat) for
        bitmask, the column indices for csr, the skipped-zero counts (one per
        stored entry) for relative.
      row_ptr: the ``rows + 1`` CSR row pointers (``None`` otherwise).
      nnz: number of non-zero elements of the dense array.
      n_filler: number of filler zeros (relative only).
    """

    format: str
    shape: tuple[int, ...]
    dtype: np.dtype
    value_bits: int
    index_bits: int
    pointer_bits: int
    values: np.ndarray
    indices: np.ndarray
    row_ptr: np.ndarray | None
    nnz: int
    n_filler: int = 0

    @property
    def n_weights(self) -> int:
        """Elements of the dense array."""
        return int(math.prod(self.shape))

    @property
    def n_entries(self) -> int:
        """Stored values (fillers included; all elements for dense)."""
        return int(self.values.size)

    @property
    def value_bits_total(self) -> int:
        """Bits of the value stream: ``n_entries * value_bits``."""
        return self.n_entries * self.value_bits

    @property
    def pointer_bits_total(self) -> int:
        """Bits of the CSR row pointers (0 for the other formats)."""
        return 0 if self.row_ptr is None else int(self.row_ptr.size) * self.pointer_bits

    @property
    def index_bits_total(self) -> int:
        """Bits of all index data (mask, column indices and row pointers, or relative fields)."""
        if self.format == "dense":
            return 0
        if self.format == "bitmask":
            return self.n_weights
        return int(self.indices.size) * self.index_bits + self.pointer_bits_total

    @property
    def total_bits(self) -> int:
        """Index bits plus value bits."""
        return self.index_bits_total + self.value_bits_total

    @property
    def bits_per_weight(self) -> float:
        """``total_bits / n_weights`` (0 for an empty array)."""
        return self.total_bits / self.n_weights if self.n_weights else 0.0

    def decode(self) -> np.ndarray:
        """Rebuilds the dense array from the stored data."""
        return decode_sparse(self)

    def summary(self) -> dict[str, Any]:
        """The counts as a JSON-serialisable dict."""
        return {
            "format": self.format,
            "shape": list(self.shape),
            "n_weights": self.n_weights,
            "nnz": self.nnz,
            "n_entries": self.n_entries,
            "n_filler": self.n_filler,
            "value_bits": self.value_bits,
            "index_bits": self.index_bits,
            "pointer_bits": self.pointer_bits,
            "value_bits_total": self.value_bits_total,
            "index_bits_total": self.index_bits_total,
            "total_bits": self.total_bits,
        }

    def __repr__(self) -> str:
        return (
            f"Encoded(format={self.format!r}, shape={self.shape}, nnz={self.nnz}, "
            f"n_entries={self.n_entries}, n_filler={self.n_filler}, "
            f"index_bits_total={self.index_bits_total}, value_bits_total={self.value_bits_total}, "
            f"total_bits={self.total_bits})"
        )


def dense_encode(x: Any, *, value_bits: int = 32) -> Encoded:
    """All elements at ``value_bits`` bits each, no index.

    Example:
      >>> dense_encode(np.eye(2), value_bits=8).total_bits
      32
    """
    value_bits = _check_int("value_bits", value_bits, 1, 64)
    arr = _as_array(x)
    flat = arr.reshape(-1)
    return Encoded(
        format="dense",
        shape=tuple(arr.shape),
        dtype=arr.dtype,
        value_bits=value_bits,
        index_bits=0,
        pointer_bits=0,
        values=flat.copy(),
        indices=np.zeros((0,), np.int64),
        row_ptr=None,
        nnz=int(np.count_nonzero(flat)),
    )


def bitmask_encode(x: Any, *, value_bits: int = 32) -> Encoded:
    """One mask bit per element plus the non-zero values.

    Example:
      >>> e = bitmask_encode(np.array([0.0, 1.5, 0.0, -2.0]), value_bits=8)
      >>> e.index_bits_total, e.value_bits_total, e.decode().tolist()
      (4, 16, [0.0, 1.5, 0.0, -2.0])
    """
    value_bits = _check_int("value_bits", value_bits, 1, 64)
    arr = _as_array(x)
    flat = arr.reshape(-1)
    mask = flat != 0
    return Encoded(
        format="bitmask",
        shape=tuple(arr.shape),
        dtype=arr.dtype,
        value_bits=value_bits,
        index_bits=1,
        pointer_bits=0,
        values=flat[mask].copy(),
        indices=mask,
        row_ptr=None,
        nnz=int(mask.sum()),
    )


def csr_encode(x: Any, *, value_bits: int = 32) -> Encoded:
    """Compressed sparse rows of the ``(shape[0], -1)`` matrix view.

    Row pointers take ``ceil(log2(nnz + 1))`` bits, column indices
    ``ceil(log2(n_cols))`` bits (each at least 1).

    Example:
      >>> e = csr_encode(np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]]), value_bits=8)
      >>> e.row_ptr.tolist(), e.indices.tolist(), e.pointer_bits, e.index_bits
      ([0, 1, 3], [1, 0, 2], 2, 2)
      >>> e.total_bits  # 3 pointers * 2 + 3 columns * 2 + 3 values * 8
      36
    """
    value_bits = _check_int("value_bits", value_bits, 1, 64)
    arr = _as_array(x)
    rows, cols = csr_view_shape(arr.shape)
    mat = arr.reshape(rows, cols)
    r, c = np.nonzero(mat)
    nnz = int(r.size)
    row_ptr = np.zeros(rows + 1, np.int64)
    np.cumsum(np.bincount(r, minlength=rows), out=row_ptr[1:])
    return Encoded(
        format="csr",
        shape=tuple(arr.shape),
        dtype=arr.dtype,
        value_bits=value_bits,
        index_bits=_field_bits(cols),
        pointer_bits=_field_bits(nnz + 1),
        values=mat[r, c].copy(),
        indices=c.astype(np.int64),
        row_ptr=row_ptr,
        nnz=nnz,
    )


def relative_encode(x: Any, *, index_bits: int = 5, value_bits: int = 32) -> Encoded:
    """Deep Compression relative indices with filler zeros.

    Each stored entry holds the number of zeros skipped since the previous
    entry in ``index_bits`` bits; a run longer than ``2**index_bits - 1`` is
    bridged by filler zeros (see the module docstring for the exact rule).

    Args:
      x: the array (flattened in row-major order).
      index_bits: width of a relative-index field, in [1, 32]. Han et al. use
        5 bits for fully connected and 8 for convolutional layers.
      value_bits: bits charged per stored value (fillers included), in [1, 64].

    Returns:
      The :class:`Encoded` record; ``indices`` holds the skipped-zero counts.

    Example:
      The 3-bit example of the paper's Figure 2: non-zeros at positions 1, 4
      and 15; the 10 zeros between 4 and 15 need a filler at position 12.

      >>> x = np.zeros(16); x[[1, 4, 15]] = [3.4, 0.9, 1.7]
      >>> e = relative_encode(x, index_bits=3)
      >>> e.indices.tolist(), e.values.tolist(), e.n_filler
      ([1, 2, 7, 2], [3.4, 0.9, 0.0, 1.7], 1)
      >>> e.index_bits_total, e.value_bits_total  # 4 entries * 3, 4 entries * 32
      (12, 128)

    References:
      Han, Mao, Dally, "Deep compression", arXiv:1510.00149, Figure 2.
    """
    index_bits = _check_int("index_bits", index_bits, 1, 32)
    value_bits = _check_int("value_bits", value_bits, 1, 64)
    arr = _as_array(x)
    flat = arr.reshape(-1)
    pos = np.flatnonzero(flat).astype(np.int64)
    span = 1 << index_bits  # positions covered by one filler
    prev = np.concatenate([[-1], pos[:-1]]).astype(np.int64)
    skipped = pos - prev - 1
    n_fill = skipped // span
    per_entry = n_fill + 1
    n_entries = int(per_entry.sum())
    codes = np.full(n_entries, span - 1, np.int64)
    values = np.zeros(n_entries, flat.dtype)
    real = np.cumsum(per_entry) - 1
    codes[real] = skipped - n_fill * span
    values[real] = flat[pos]
    return Encoded(
        format="relative",
        shape=tuple(arr.shape),
        dtype=arr.dtype,
        value_bits=value_bits,
        index_bits=index_bits,
        pointer_bits=0,
        values=values,
        indices=codes,
        row_ptr=None,
        nnz=int(pos.size),
        n_filler=int(n_fill.sum()),
    )


def encode_sparse(
    x: Any, format: str = "relative", *, value_bits: int = 32, index_bits: int = 5
) -> Encoded:
    """Encodes an array in one format.

    Args:
      x: the array.
      format: ``"dense"``, ``"bitmask"``, ``"csr"`` or ``"relative"``.
      value_bits: bits charged per stored value, in [1, 64].
      index_bits: relative-index width, in [1, 32] (validated for every
        format, used by ``"relative"`` only).

    Returns:
      The :class:`Encoded` record.

    Raises:
      ValueError: unknown format, widths out of range, NaN/Inf values.
      TypeError: non-numeric arrays.

    Example:
      >>> x = np.zeros((4, 4)); x[0, 1], x[2, 2], x[3, 0] = 1.0, 2.0, 3.0
      >>> [encode_sparse(x, f, value_bits=8, index_bits=3).total_bits for f in SPARSE_FORMATS]
      [128, 40, 40, 44]

      dense 16*8; bitmask 16 + 3*8; csr 5 pointers*2 + 3 columns*2 + 3*8;
      relative: non-zeros at flat positions 1, 10, 12 skip 1, 8 and 1 zeros,
      the run of 8 needs one filler, so 4 entries * (3 + 8).
    """
    index_bits = _check_int("index_bits", index_bits, 1, 32)
    if format == "dense":
        return dense_encode(x, value_bits=value_bits)
    if format == "bitmask":
        return bitmask_encode(x, value_bits=value_bits)
    if format == "csr":
        return csr_encode(x, value_bits=value_bits)
    if format == "relative":
        return relative_encode(x, index_bits=index_bits, value_bits=value_bits)
    raise ValueError(f"unknown sparse format {format!r}; choose one of {', '.join(SPARSE_FORMATS)}")


def encode_all(x: Any, *, value_bits: int = 32, index_bits: int = 5) -> dict[str, Encoded]:
    """Encodes an array in every format: ``{format: Encoded}``.

    Example:
      >>> {f: e.total_bits for f, e in encode_all(np.eye(3), value_bits=4).items()}
      {'dense': 36, 'bitmask': 21, 'csr': 26, 'relative': 27}
    """
    return {
        f: encode_sparse(x, f, value_bits=value_bits, index_bits=index_bits) for f in SPARSE_FORMATS
    }


def _corrupt(enc: Encoded, problem: str) -> ValueError:
    return ValueError(
        f"{enc.format} record of shape {tuple(enc.shape)}: {problem}; the record is truncated "
        "or corrupted, re-encode the array"
    )


def _int_vector(enc: Encoded, name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise _corrupt(enc, f"{name} must be a 1-D integer array, got shape {arr.shape} and "
                            f"dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_nonzero(enc: Encoded, values: np.ndarray) -> None:
    zeros = int(values.size - np.count_nonzero(values))
    if zeros:
        raise _corrupt(enc, f"{zeros} stored value(s) are zero, but this format stores only "
                            "non-zeros")


def _check_record(enc: Encoded) -> tuple[np.ndarray, int]:
    """Checks the fields every format shares; returns the values (1-D) and ``n``."""
    if enc.format not in SPARSE_FORMATS:
        raise ValueError(
            f"unknown sparse format {enc.format!r}; choose one of {', '.join(SPARSE_FORMATS)}"
        )
    shape = tuple(enc.shape)
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        raise _corrupt(enc, f"shape {shape} must hold non-negative integers")
    n = enc.n_weights
    values = np.asarray(enc.values)
    if values.ndim != 1:
        raise _corrupt(enc, f"values must be 1-D, got shape {values.shape}")
    dtype = np.dtype(enc.dtype)
    if values.size and not np.can_cast(values.dtype, dtype, casting="same_kind"):
        raise _corrupt(enc, f"values of dtype {values.dtype} cannot be stored as {dtype} "
                            "without changing them")
    nnz = enc.nnz
    if isinstance(nnz, bool) or not isinstance(nnz, (int, np.integer)) or not 0 <= nnz <= n:
        raise _corrupt(enc, f"nnz={nnz!r} must be an integer in [0, {n}]")
    return values, n


def decode_sparse(enc: Encoded) -> np.ndarray:
    """Rebuilds the dense array of an :class:`Encoded` record.

    The record's structure is checked first, so a truncated or corrupted
    record is an error rather than a silently wrong array: the number of
    values, the mask size and popcount (bitmask), the row pointers (``rows + 1``
    of them, starting at 0, non-decreasing, ending at ``nnz``), the column
    indices (one per value, in range, strictly increasing within a row) for
    csr, and for relative one field per value, every field within
    ``index_bits``, the fillers (zero values with the maximal field) matching
    ``n_filler``, the real entries matching ``nnz`` and the entries ending
    inside the array.

    Raises:
      ValueError: if the record is inconsistent (the message names the field).

    Example:
      >>> e = csr_encode(np.array([[0.0, 2.0], [1.0, 0.0]]))
      >>> decode_sparse(e).tolist()
      [[0.0, 2.0], [1.0, 0.0]]
      >>> import dataclasses
      >>> decode_sparse(dataclasses.replace(e, indices=e.indices[:1]))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: csr record of shape (2, 2): 1 column indices for 2 values; ...
    """
    values, n = _check_record(enc)
    out = np.zeros(n, enc.dtype)
    if enc.format == "dense":
        if values.size != n:
            raise _corrupt(enc, f"{values.size} values for {n} elements")
        if int(np.count_nonzero(values)) != enc.nnz:
            raise _corrupt(enc, f"{int(np.count_nonzero(values))} non-zero values but nnz={enc.nnz}")
        out[:] = values
    elif enc.format == "bitmask":
        mask = np.asarray(enc.indices)
        if mask.dtype != np.bool_ or mask.ndim != 1:
            raise _corrupt(enc, f"the mask must be a 1-D bool array, got shape {mask.shape} and "
                                f"dtype {mask.dtype}")
        if mask.size != n:
            raise _corrupt(enc, f"the mask has {mask.size} bits for {n} elements")
        ones = int(mask.sum())
        if ones != values.size or ones != enc.nnz:
            raise _corrupt(enc, f"the mask marks {ones} non-zeros but the record holds "
                                f"{values.size} values and nnz={enc.nnz}")
        _check_nonzero(enc, values)
        out[mask] = values
    elif enc.format == "csr":
        rows, cols = csr_view_shape(enc.shape)
        if enc.row_ptr is None:
            raise _corrupt(enc, "row_ptr is missing")
        ptr = _int_vector(enc, "row_ptr", enc.row_ptr)
        idx = _int_vector(enc, "column indices", enc.indices)
        if ptr.size != rows + 1:
            raise _corrupt(enc, f"{ptr.size} row pointers for {rows} rows (need {rows + 1})")
        if ptr[0] != 0 or (np.diff(ptr) < 0).any():
            raise _corrupt(enc, f"row pointers must start at 0 and never decrease, got "
                                f"{ptr[:8].tolist()}{' ...' if ptr.size > 8 else ''}")
        if ptr[-1] != enc.nnz or values.size != enc.nnz:
            raise _corrupt(enc, f"the last row pointer is {int(ptr[-1])}, the record holds "
                                f"{values.size} values and nnz={enc.nnz}; all three must agree")
        if idx.size != values.size:
            raise _corrupt(enc, f"{idx.size} column indices for {values.size} values")
        if idx.size and (idx.min() < 0 or idx.max() >= cols):
            raise _corrupt(enc, f"column indices span [{int(idx.min())}, {int(idx.max())}], "
                                f"outside [0, {cols})")
        r = np.repeat(np.arange(rows), np.diff(ptr))
        same_row = r[1:] == r[:-1]
        if (same_row & (np.diff(idx) <= 0)).any():
            raise _corrupt(enc, "column indices must strictly increase within a row")
        _check_nonzero(enc, values)
        out.reshape(rows, cols)[r, idx] = values
    else:  # relative
        codes = _int_vector(enc, "relative fields", enc.indices)
        if codes.size != values.size:
            raise _corrupt(enc, f"{codes.size} relative fields for {values.size} values")
        if codes.size and (codes.min() < 0 or codes.max() >= (1 << enc.index_bits)):
            raise ValueError(f"relative record: a field does not fit in {enc.index_bits} bits")
        filler = values == 0
        n_fill = int(filler.sum())
        if n_fill != enc.n_filler or codes.size - n_fill != enc.nnz:
            raise _corrupt(enc, f"{codes.size - n_fill} non-zero entries and {n_fill} fillers, "
                                f"but nnz={enc.nnz} and n_filler={enc.n_filler}")
        if (codes[filler] != (1 << enc.index_bits) - 1).any():
            raise _corrupt(enc, "a zero value whose field is not the maximal skip is not a filler")
        positions = np.cumsum(codes + 1) - 1
        if positions.size and positions[-1] >= n:
            raise ValueError("relative record: the entries run past the end of the array")
        out[positions] = values
    return out.reshape(enc.shape)
