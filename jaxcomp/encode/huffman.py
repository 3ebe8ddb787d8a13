"""Canonical Huffman coding of integer symbols (host-side, numpy).

:func:`huffman_code` builds an optimal prefix code from symbols (or from a
``{symbol: count}`` mapping) and returns a :class:`HuffmanCode` that encodes
to packed bytes, decodes back, and reports exact bit counts, including the
bits needed to store the code itself (:meth:`HuffmanCode.table_bits`).

Conventions:

* **Deterministic construction.** Distinct symbols are sorted ascending and
  numbered ``0..n-1``; internal nodes created while merging get the numbers
  ``n, n+1, ...``. The two lightest nodes are merged first, ties broken by the
  smaller node number. Only the resulting code *lengths* are used.
* **Canonical codewords.** Symbols are ordered by ``(length, symbol)``; the
  first gets the all-zero codeword and each next one the previous codeword
  plus one, shifted left when the length grows (the DEFLATE convention). So the
  code is fully determined by the length of each symbol.
* **One distinct symbol** gets a 1-bit code (``"0"``), so every occurrence
  costs one bit; **no symbols** gives an empty code whose streams cost 0 bits.
* Bit order inside packed bytes is most-significant bit first
  (``numpy.packbits`` default); the last byte is zero-padded and the exact
  stream length ``n_bits`` is returned alongside.

References:
  Huffman, "A method for the construction of minimum-redundancy codes",
  Proc. IRE 40(9), 1952.
  Han, Mao, Dally, "Deep compression: compressing deep neural networks with
  pruning, trained quantization and Huffman coding", arXiv:1510.00149.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["HuffmanCode", "canonical_code", "entropy_bits", "huffman_code"]

# Header of a stored code table: the width of one code-length field.
TABLE_HEADER_BITS = 8
# Width of the entry count in the sparse table layout.
TABLE_COUNT_BITS = 32
# Width of an explicit symbol when the alphabet is not known.
TABLE_SYMBOL_BITS = 32
# Windowed (table-driven) decoding is used up to this code length.
_MAX_TABLE_DECODE = 20


def _as_symbols(symbols: Any, what: str = "symbols") -> np.ndarray:
    arr = np.asarray(symbols)
    if arr.size == 0:
        return np.zeros((0,), np.int64)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"Huffman {what} must be integers, got dtype {arr.dtype}; map values to integer "
            "symbols first (e.g. with np.unique(..., return_inverse=True))"
        )
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"Huffman {what} must fit in int64")
    return arr.reshape(-1).astype(np.int64)


def entropy_bits(counts: Any) -> float:
    """Shannon entropy in bits per symbol of a vector of non-negative counts.

    Example:
      >>> entropy_bits([1, 1, 2])
      1.5
    """
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def _code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths for counts (all > 0), with deterministic ties."""
    n = counts.size
    if n == 0:
        return np.zeros((0,), np.int64)
    if n == 1:
        return np.ones((1,), np.int64)
    heap = [(int(c), i) for i, c in enumerate(counts.tolist())]
    heapq.heapify(heap)
    parent = [-1] * (2 * n - 1)
    nxt = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = nxt
        parent[b] = nxt
        heapq.heappush(heap, (w1 + w2, nxt))
        nxt += 1
    depth = [0] * (2 * n - 1)
    # Parents always carry larger numbers than their children: walk downwards.
    for node in range(2 * n - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return np.asarray(depth[:n], np.int64)


def _canonical_codewords(symbols: np.ndarray, lengths: np.ndarray) -> tuple[int, ...]:
    order = sorted(range(symbols.size), key=lambda i: (int(lengths[i]), int(symbols[i])))
    codes = [0] * symbols.size
    code = 0
    prev_len = None
    for i in order:
        length = int(lengths[i])
        if prev_len is not None:
            code = (code + 1) << (length - prev_len)
        codes[i] = code
        prev_len = length
    return tuple(codes)


@dataclasses.dataclass(frozen=True, eq=False)
class HuffmanCode:
    """A canonical Huffman code over integer symbols.

    Build one with :func:`huffman_code`. All arrays are aligned and sorted by
    symbol.

    Attributes:
      symbols: the distinct symbols (int64, ascending).
      lengths: code length in bits of each symbol.
      codewords: the codeword of each symbol as a Python int (its ``length``
        low bits, most significant first).
      counts: the counts the code was built from.
    """

    symbols: np.ndarray
    lengths: np.ndarray
    codewords: tuple[int, ...]
    counts: np.ndarray

    # -- summary -----------------------------------------------------------
    @property
    def n_symbols(self) -> int:
        """Number of distinct symbols in the code."""
        return int(self.symbols.size)

    @property
    def max_length(self) -> int:
        """Longest codeword in bits (0 for the empty code)."""
        return int(self.lengths.max()) if self.lengths.size else 0

    @property
    def total_count(self) -> int:
        """Number of symbols the code was built from."""
        return int(self.counts.sum())

    @property
    def average_length(self) -> float:
        """Expected codeword length in bits under the build counts (0 if empty)."""
        total = self.total_count
        if total == 0:
            return 0.0
        return float((self.counts * self.lengths).sum() / total)

    @property
    def entropy(self) -> float:
        """Entropy in bits per symbol of the build counts (lower bound on the average)."""
        return entropy_bits(self.counts)

    def codeword(self, symbol: int) -> str:
        """The codeword of ``symbol`` as a string of ``'0'``/``'1'``."""
        i = self._index(np.asarray([symbol]))[0]
        length = int(self.lengths[i])
        return format(self.codewords[i], f"0{length}b")

    def as_dict(self) -> dict[int, str]:
        """``{symbol: codeword string}`` for every symbol."""
        return {
            int(s): format(c, f"0{int(n)}b")
            for s, c, n in zip(self.symbols.tolist(), self.codewords, self.lengths.tolist())
        }

    # -- encoding ----------------------------------------------------------
    def _index(self, symbols: np.ndarray) -> np.ndarray:
        symbols = _as_symbols(symbols)
        if symbols.size == 0:
            return np.zeros((0,), np.int64)
        if self.n_symbols == 0:
            raise ValueError("the Huffman code is empty and cannot encode any symbol")
        idx = np.searchsorted(self.symbols, symbols)
        idx = np.minimum(idx, self.n_symbols - 1)
        bad = self.symbols[idx] != symbols
        if bad.any():
            missing = np.unique(symbols[bad])[:8].tolist()
            raise ValueError(
                f"symbols {missing} are not in the Huffman code (it has {self.n_symbols} "
                "symbols); build the code from data that contains them"
            )
        return idx

    def encoded_bits(self, symbols: Any) -> int:
        """Exact length in bits of the encoded stream: ``sum(count * length)``."""
        idx = self._index(symbols)
        return int(self.lengths[idx].sum())

    def encode_bits(self, symbols: Any) -> np.ndarray:
        """Encodes to an unpacked bit array (``uint8`` of 0/1, one entry per bit)."""
        idx = self._index(symbols)
        if idx.size == 0:
            return np.zeros((0,), np.uint8)
        lens = self.lengths[idx]
        total = int(lens.sum())
        if self.max_length <= 62:
            cw = np.asarray(self.codewords, np.int64)[idx]
            starts = np.cumsum(lens) - lens
            owner = np.repeat(np.arange(idx.size), lens)
            j = np.arange(total) - starts[owner]
            shift = lens[owner] - 1 - j
            return ((cw[owner] >> shift) & 1).astype(np.uint8)
        strings = [format(self.codewords[i], f"0{int(self.lengths[i])}b") for i in idx.tolist()]
        return np.frombuffer("".join(strings).encode("ascii"), np.uint8) - ord("0")

    def encode(self, symbols: Any) -> tuple[bytes, int]:
        """Encodes symbols to packed bytes (MSB first).

        Returns:
          ``(data, n_bits)``: the packed stream and its exact length in bits.
        """
        bits = self.encode_bits(symbols)
        return np.packbits(bits).tobytes(), int(bits.size)

    # -- decoding ----------------------------------------------------------
    def decode(self, data: bytes | np.ndarray, n_bits: int) -> np.ndarray:
        """Decodes packed bytes produced by :meth:`encode`.

        Args:
          data: the packed bytes (``bytes`` or a ``uint8`` array).
          n_bits: the exact stream length returned by :meth:`encode`.

        Returns:
          The decoded symbols (int64).

        Raises:
          ValueError: if the stream is truncated or holds an invalid codeword.
        """
        buf = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else data
        n_bits = int(n_bits)
        if n_bits < 0 or n_bits > 8 * buf.size:
            raise ValueError(f"n_bits={n_bits} does not fit in {buf.size} bytes of data")
        return self.decode_bits(np.unpackbits(buf.astype(np.uint8))[:n_bits])

    def decode_bits(self, bits: Any) -> np.ndarray:
        """Decodes an unpacked bit array (as from :meth:`encode_bits`)."""
        bits = np.asarray(bits).reshape(-1)
        if bits.size == 0:
            return np.zeros((0,), np.int64)
        if not np.isin(bits, (0, 1)).all():
            raise ValueError("a bit array must hold only 0 and 1")
        bits = bits.astype(np.int64)
        if self.n_symbols == 0:
            raise ValueError("the Huffman code is empty and cannot decode a non-empty stream")
        m = self.max_length
        if m <= _MAX_TABLE_DECODE:
            out, _ = self._decode_table(bits, m)
        else:
            out, _ = self._decode_canonical(bits)
        return self.symbols[np.asarray(out, np.int64)]

    def decode_prefix(self, bits: Any, count: int) -> tuple[np.ndarray, int]:
        """Decodes the first ``count`` symbols of an unpacked bit array that may go on.

        For streams laid end to end (a file holding several coded streams):
        the caller knows how many symbols to read, not where the stream ends.

        Args:
          bits: unpacked bits (0/1), at least the ``count`` codewords.
          count: how many symbols to decode (``>= 0``).

        Returns:
          ``(symbols, n_bits)``: the decoded symbols (int64) and the number of
          bits they took.

        Raises:
          ValueError: fewer than ``count`` codewords in ``bits`` (truncated
            data), an invalid codeword, or a non-empty request to an empty code.

        Example:
          >>> code = huffman_code([0, 0, 1, 2])
          >>> bits = code.encode_bits([2, 0, 1])
          >>> syms, used = code.decode_prefix(np.concatenate([bits, [1, 1, 0]]), 2)
          >>> syms.tolist(), used
          ([2, 0], 3)
        """
        count = int(count)
        if count < 0:
            raise ValueError(f"count={count} must be >= 0")
        if count == 0:
            return np.zeros((0,), np.int64), 0
        if self.n_symbols == 0:
            raise ValueError("the Huffman code is empty and cannot decode a non-empty stream")
        bits = np.asarray(bits).reshape(-1)[: count * self.max_length]
        if not np.isin(bits, (0, 1)).all():
            raise ValueError("a bit array must hold only 0 and 1")
        bits = bits.astype(np.int64)
        m = self.max_length
        if m <= _MAX_TABLE_DECODE:
            out, pos = self._decode_table(bits, m, limit=count)
        else:
            out, pos = self._decode_canonical(bits, limit=count)
        return self.symbols[np.asarray(out, np.int64)], pos

    def _decode_table(self, bits: np.ndarray, m: int,
                      limit: int | None = None) -> tuple[list[int], int]:
        table = np.full(1 << m, -1, np.int64)
        for i, (code, length) in enumerate(zip(self.codewords, self.lengths.tolist())):
            lo = code << (m - length)
            table[lo : lo + (1 << (m - length))] = i
        n = bits.size
        padded = np.concatenate([bits, np.zeros(m, np.int64)])
        window = np.zeros(n, np.int64)
        for j in range(m):
            window = (window << 1) | padded[j : j + n]
        sym_at = table[window].tolist()
        lengths = self.lengths.tolist()
        out: list[int] = []
        pos = 0
        while pos < n and (limit is None or len(out) < limit):
            i = sym_at[pos]
            if i < 0:
                raise ValueError(f"invalid Huffman codeword at bit {pos}")
            pos += lengths[i]
            if pos > n:
                raise ValueError("the Huffman stream ends inside a codeword (truncated data)")
            out.append(i)
        if limit is not None and len(out) < limit:
            raise ValueError(f"the Huffman stream holds {len(out)} symbols, {limit} expected "
                             "(truncated data)")
        return out, pos

    def _decode_canonical(self, bits: np.ndarray,
                          limit: int | None = None) -> tuple[list[int], int]:
        lookup = {
            (int(length), code): i
            for i, (code, length) in enumerate(zip(self.codewords, self.lengths.tolist()))
        }
        out: list[int] = []
        code = length = 0
        pos = 0
        for b in bits.tolist():
            if limit is not None and len(out) == limit:
                break
            pos += 1
            code = (code << 1) | b
            length += 1
            i = lookup.get((length, code))
            if i is not None:
                out.append(i)
                code = length = 0
            elif length > self.max_length:
                raise ValueError("invalid Huffman codeword in the stream")
        if length:
            raise ValueError("the Huffman stream ends inside a codeword (truncated data)")
        if limit is not None and len(out) < limit:
            raise ValueError(f"the Huffman stream holds {len(out)} symbols, {limit} expected "
                             "(truncated data)")
        return out, pos

    # -- storage of the code itself -----------------------------------------
    def table_bits(self, alphabet_size: int | None = None) -> int:
        """Bits needed to store the code so that a decoder can rebuild it.

        A canonical code is determined by the length of each symbol's codeword,
        so only lengths are stored. Convention:

        * an 8-bit header holding ``w``, the width of one length field,
          ``w = bit_length(max_length)`` (a length field of 0 means "absent");
        * alphabet known (``alphabet_size=K``, symbols in ``[0, K)``): the
          smaller of the *dense* layout, ``K * w`` bits (one length per possible
          symbol), and the *sparse* layout, a 32-bit entry count followed by
          ``n * (ceil(log2 K) + w)`` bits of ``(symbol, length)`` pairs, plus
          one bit saying which layout follows;
        * alphabet unknown: the sparse layout with 32-bit symbols.

        The empty code costs 0 bits.

        Args:
          alphabet_size: the number of possible symbols ``K`` if the symbols
            are known to lie in ``[0, K)`` (e.g. ``2**bits`` codebook indices).

        Returns:
          The table size in bits.

        Example:
          >>> code = huffman_code([0, 0, 1, 2])
          >>> code.max_length, code.table_bits(alphabet_size=4)  # 8 + 1 + 4 * 2
          (2, 17)
        """
        n = self.n_symbols
        if n == 0:
            return 0
        w = self.max_length.bit_length()
        if alphabet_size is None:
            return TABLE_HEADER_BITS + TABLE_COUNT_BITS + n * (TABLE_SYMBOL_BITS + w)
        k = int(alphabet_size)
        if k < 1:
            raise ValueError(f"alphabet_size={alphabet_size!r} must be a positive integer")
        if int(self.symbols[0]) < 0 or int(self.symbols[-1]) >= k:
            raise ValueError(
                f"the code's symbols span [{int(self.symbols[0])}, {int(self.symbols[-1])}], "
                f"outside the alphabet [0, {k})"
            )
        sym_bits = max(1, math.ceil(math.log2(k)))
        dense = k * w
        sparse = TABLE_COUNT_BITS + n * (sym_bits + w)
        return TABLE_HEADER_BITS + 1 + min(dense, sparse)

    def __repr__(self) -> str:
        return (
            f"HuffmanCode(n_symbols={self.n_symbols}, max_length={self.max_length}, "
            f"average_length={self.average_length:.4f})"
        )


def huffman_code(data: Any) -> HuffmanCode:
    """Builds a canonical Huffman code.

    Args:
      data: either integer symbols (any array-like; flattened) or a mapping
        ``{symbol: count}`` with non-negative integer counts (symbols with a
        zero count are left out of the code).

    Returns:
      The :class:`HuffmanCode`; see the module docstring for the tie-breaking
      and canonical-codeword conventions.

    Raises:
      TypeError: for non-integer symbols or counts.
      ValueError: for negative counts.

    Example:
      >>> code = huffman_code([0, 0, 0, 0, 1, 1, 2, 3])
      >>> code.as_dict()
      {0: '0', 1: '10', 2: '110', 3: '111'}
      >>> data, n_bits = code.encode([0, 1, 3])
      >>> n_bits, code.decode(data, n_bits).tolist()
      (6, [0, 1, 3])
      >>> code.average_length, code.entropy
      (1.75, 1.75)

    References:
      Huffman, Proc. IRE 40(9), 1952; Han et al., arXiv:1510.00149.
    """
    if isinstance(data, Mapping):
        items = sorted((int(k), v) for k, v in data.items())
        syms = np.asarray([k for k, _ in items], np.int64)
        counts = np.asarray([v for _, v in items])
        if counts.size and not (
            np.issubdtype(counts.dtype, np.integer)
            or all(float(c) == int(c) for c in counts.tolist())
        ):
            raise TypeError("Huffman counts must be integers")
        counts = counts.astype(np.int64) if counts.size else np.zeros((0,), np.int64)
        if (counts < 0).any():
            raise ValueError("Huffman counts must be non-negative")
        keep = counts > 0
        syms, counts = syms[keep], counts[keep]
    else:
        arr = _as_symbols(data)
        syms, counts = np.unique(arr, return_counts=True)
        syms, counts = syms.astype(np.int64), counts.astype(np.int64)
    lengths = _code_lengths(counts)
    return HuffmanCode(
        symbols=syms,
        lengths=lengths,
        codewords=_canonical_codewords(syms, lengths),
        counts=counts,
    )


def canonical_code(symbols: Any, lengths: Any) -> HuffmanCode:
    """The canonical code with the given codeword length per symbol (what a stored table holds).

    Args:
      symbols: distinct non-negative integer symbols.
      lengths: a codeword length ``>= 1`` per symbol; they must satisfy the
        Kraft inequality ``Σ 2**-length <= 1``.

    Returns:
      The :class:`HuffmanCode` (codewords by the module's canonical rule;
      ``counts`` are zeros, unknown).

    Raises:
      ValueError: repeated or negative symbols, lengths < 1, mismatched
        sizes, or lengths no prefix code can have.

    Example:
      >>> code = huffman_code([5, 5, 5, 7, 9])
      >>> canonical_code(code.symbols, code.lengths).as_dict() == code.as_dict()
      True
    """
    syms = _as_symbols(symbols)
    lens = np.asarray(lengths, np.int64).reshape(-1)
    if syms.size != lens.size:
        raise ValueError(f"canonical_code: {syms.size} symbols but {lens.size} lengths")
    if syms.size == 0:
        return HuffmanCode(symbols=syms, lengths=lens, codewords=(), counts=lens.copy())
    if np.unique(syms).size != syms.size or syms.min() < 0:
        raise ValueError("canonical_code: symbols must be distinct and non-negative")
    if lens.min() < 1:
        raise ValueError(f"canonical_code: every length must be >= 1, got {int(lens.min())}")
    m = int(lens.max())
    if int(sum(1 << (m - int(v)) for v in lens.tolist())) > (1 << m):
        raise ValueError("canonical_code: the lengths violate the Kraft inequality; no prefix "
                         "code has them (the table is corrupted)")
    order = np.argsort(syms, kind="stable")
    syms, lens = syms[order], lens[order]
    return HuffmanCode(symbols=syms, lengths=lens, codewords=_canonical_codewords(syms, lens),
                       counts=np.zeros(syms.size, np.int64))
