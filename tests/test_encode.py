"""Tests of jaxcomp.encode: canonical Huffman coding and sparse index formats."""

import dataclasses
import heapq
import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxcomp.encode import (
    SPARSE_FORMATS,
    HuffmanCode,
    bitmask_encode,
    csr_encode,
    decode_sparse,
    encode_all,
    encode_sparse,
    entropy_bits,
    huffman_code,
    relative_encode,
)

# ----------------------------------------------------------------------------------------------
# Huffman


def _optimal_cost_brute_force(counts):
    """Minimum of sum(count * length) over all length vectors obeying Kraft's inequality."""
    n = len(counts)
    if n == 1:
        return counts[0]  # a single symbol still needs one bit
    best = math.inf
    for lengths in itertools.product(range(1, n), repeat=n):
        if sum(2.0**-l for l in lengths) <= 1.0:
            best = min(best, sum(c * l for c, l in zip(counts, lengths)))
    return best


def _merge_cost(counts):
    """Huffman cost computed independently: the sum of all merged weights."""
    if len(counts) == 1:
        return counts[0]
    heap = list(counts)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def _is_prefix_free(words):
    return not any(a != b and b.startswith(a) for a in words for b in words)


def test_huffman_hand_example_abracadabra():
    # a:5 b:2 c:1 d:1 r:2. Merges (ties -> smaller node number first):
    # c+d=2, b+r=4, (cd)+(br)=6, a+6=11  -> a:1 bit, b, c, d, r: 3 bits.
    # 5*1 + (2+1+1+2)*3 = 23 bits.
    text = np.frombuffer(b"abracadabra", np.uint8)
    code = huffman_code(text)
    assert dict(zip(code.symbols.tolist(), code.lengths.tolist())) == {
        97: 1,
        98: 3,
        99: 3,
        100: 3,
        114: 3,
    }
    # Canonical codewords: ordered by (length, symbol).
    assert code.as_dict() == {97: "0", 98: "100", 99: "101", 100: "110", 114: "111"}
    assert code.encoded_bits(text) == 23
    data, n_bits = code.encode(text)
    assert n_bits == 23 and len(data) == 3
    assert code.decode(data, n_bits).tolist() == text.tolist()
    assert code.average_length == pytest.approx(23 / 11)


def test_huffman_dyadic_example_meets_entropy():
    code = huffman_code({0: 4, 1: 2, 2: 1, 3: 1})
    assert code.as_dict() == {0: "0", 1: "10", 2: "110", 3: "111"}
    assert code.average_length == pytest.approx(1.75)
    assert code.entropy == pytest.approx(1.75)  # dyadic probabilities: Huffman is exact


def test_huffman_ties_are_deterministic():
    code = huffman_code({40: 1, 10: 1, 30: 1, 20: 1})
    assert code.as_dict() == {10: "00", 20: "01", 30: "10", 40: "11"}
    assert huffman_code([3, 1, 2, 3, 1, 2]).as_dict() == huffman_code([1, 2, 3, 1, 2, 3]).as_dict()


def test_huffman_one_symbol_and_empty():
    code = huffman_code([7, 7, 7])
    assert code.as_dict() == {7: "0"}
    assert code.encoded_bits([7, 7, 7]) == 3
    assert code.decode(*code.encode([7, 7])).tolist() == [7, 7]
    assert code.table_bits() == 8 + 32 + 1 * (32 + 1)
    with pytest.raises(ValueError, match="invalid Huffman codeword"):
        code.decode_bits([0, 1])

    empty = huffman_code([])
    assert empty.n_symbols == 0 and empty.average_length == 0.0 and empty.entropy == 0.0
    assert empty.encode([]) == (b"", 0)
    assert empty.encoded_bits(np.zeros(0, np.int32)) == 0
    assert empty.decode(b"", 0).tolist() == []
    assert empty.table_bits(alphabet_size=16) == 0
    with pytest.raises(ValueError, match="empty"):
        empty.encode([1])


def test_huffman_table_bits_convention():
    code = huffman_code([0, 0, 1, 2])  # lengths 1, 2, 2 -> length fields of w = 2 bits
    # known alphabet K = 4: header 8 + layout flag 1 + min(dense 4 * 2, sparse 32 + 3 * (2 + 2))
    assert code.table_bits(alphabet_size=4) == 8 + 1 + 8
    # unknown alphabet: header 8 + count 32 + 3 * (32-bit symbol + 2)
    assert code.table_bits() == 8 + 32 + 3 * 34
    # a huge alphabet picks the sparse layout: 8 + 1 + 32 + 3 * (32 + 2)
    assert code.table_bits(alphabet_size=2**32) == 8 + 1 + 32 + 3 * 34
    with pytest.raises(ValueError, match="outside the alphabet"):
        code.table_bits(alphabet_size=2)


def test_huffman_input_validation():
    with pytest.raises(TypeError, match="integers"):
        huffman_code(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        huffman_code({0: -1, 1: 2})
    code = huffman_code({0: 3, 5: 0, 1: 2})
    assert code.symbols.tolist() == [0, 1]  # zero counts are left out
    with pytest.raises(ValueError, match=r"\[5\] are not in the Huffman code"):
        code.encode([5])
    data, n = code.encode([0, 1, 1])
    with pytest.raises(ValueError):
        code.decode(data, n + 100)
    with pytest.raises(ValueError, match="truncated"):
        huffman_code([0, 1, 2]).decode_bits([1])  # '1' is a prefix of '10' and '11'


@pytest.mark.parametrize("n_symbols", [25, 70])
def test_huffman_long_codes(n_symbols):
    # Fibonacci counts give the deepest tree: lengths up to n - 1 (canonical decoder at 24 bits,
    # string-based encoder at 69 bits).
    fib = [1, 1]
    while len(fib) < n_symbols:
        fib.append(fib[-1] + fib[-2])
    code = huffman_code(dict(enumerate(fib)))
    assert code.max_length == n_symbols - 1
    msg = [0, 1, n_symbols - 1, n_symbols // 2, 0]
    data, n = code.encode(msg)
    assert code.decode(data, n).tolist() == msg
    assert _is_prefix_free(list(code.as_dict().values()))


symbol_lists = st.lists(st.integers(-50, 50), min_size=0, max_size=200)


@given(symbol_lists)
def test_huffman_round_trip(symbols):
    code = huffman_code(symbols)
    data, n_bits = code.encode(symbols)
    assert n_bits == code.encoded_bits(symbols)
    assert len(data) == math.ceil(n_bits / 8)
    assert code.decode(data, n_bits).tolist() == symbols
    assert code.decode_bits(code.encode_bits(symbols)).tolist() == symbols


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=60))
def test_huffman_round_trip_wide_symbols(symbols):
    code = huffman_code(np.array(symbols, np.int64))
    assert code.decode(*code.encode(symbols)).tolist() == symbols


@given(st.dictionaries(st.integers(0, 1000), st.integers(1, 10**6), min_size=1, max_size=40))
def test_huffman_entropy_bounds_prefix_free_and_kraft(counts):
    code = huffman_code(counts)
    h = entropy_bits(list(counts.values()))
    if len(counts) > 1:
        assert h - 1e-9 <= code.average_length < h + 1
        kraft = sum(2.0 ** -int(l) for l in code.lengths)
        assert kraft == pytest.approx(1.0)  # Huffman codes are complete
    words = list(code.as_dict().values())
    assert _is_prefix_free(words)
    # canonical: within one length, codewords increase with the symbol
    for length in set(code.lengths.tolist()):
        ws = [w for s, w in sorted(code.as_dict().items()) if len(w) == length]
        assert ws == sorted(ws)
    # total cost equals the independent merge-cost computation
    syms = np.repeat(list(counts), list(counts.values())) if sum(counts.values()) < 10**5 else None
    cost = int((code.counts * code.lengths).sum())
    assert cost == _merge_cost(list(counts.values()))
    if syms is not None:
        assert code.encoded_bits(syms) == cost


@given(st.lists(st.integers(1, 30), min_size=1, max_size=5))
def test_huffman_is_optimal_against_brute_force(counts):
    code = huffman_code(dict(enumerate(counts)))
    assert int((code.counts * code.lengths).sum()) == _optimal_cost_brute_force(counts)


def test_huffman_code_is_a_frozen_record():
    code = huffman_code([1, 2, 2])
    assert isinstance(code, HuffmanCode)
    with pytest.raises(dataclasses.FrozenInstanceError):
        code.symbols = None
    assert "n_symbols=2" in repr(code)


# ----------------------------------------------------------------------------------------------
# Sparse formats


def _brute_relative_encode(flat, index_bits):
    """Reference encoder: walk the array, insert fillers whenever the zero run is too long."""
    max_skip = 2**index_bits - 1
    entries, last = [], -1
    for i, v in enumerate(flat.tolist()):
        if v == 0:
            continue
        while i - last - 1 > max_skip:
            last += max_skip + 1
            entries.append((max_skip, 0.0))
        entries.append((i - last - 1, v))
        last = i
    return entries


def _brute_relative_decode(codes, values, n):
    """Reference decoder: one entry at a time."""
    out, pos = [0.0] * n, -1
    for c, v in zip(codes.tolist(), values.tolist()):
        assert 0 <= c
        pos += c + 1
        out[pos] = v
    return np.array(out)


def _example_4x4():
    x = np.zeros((4, 4), np.float32)
    x[0, 1], x[2, 2], x[3, 0] = 1.0, 2.0, 3.0  # flat positions 1, 10, 12
    return x


def test_formats_hand_counts_4x4():
    x = _example_4x4()
    enc = encode_all(x, value_bits=8, index_bits=3)
    # dense: 16 values * 8 bits
    assert (enc["dense"].index_bits_total, enc["dense"].value_bits_total) == (0, 128)
    # bitmask: 16 mask bits + 3 values * 8
    assert (enc["bitmask"].index_bits_total, enc["bitmask"].value_bits_total) == (16, 24)
    # csr: row pointers [0,1,1,2,3] -> 5 * ceil(log2(3 + 1)) = 10; columns 3 * ceil(log2 4) = 6
    c = enc["csr"]
    assert c.row_ptr.tolist() == [0, 1, 1, 2, 3] and c.indices.tolist() == [1, 2, 0]
    assert (c.pointer_bits, c.index_bits, c.index_bits_total, c.value_bits_total) == (2, 2, 16, 24)
    # relative, 3 bits: skips 1, 8, 1; the run of 8 zeros (positions 2..9) needs one filler:
    # it skips 7 zeros (2..8) and sits at position 9, 8 after position 1; then 0 zeros to 10.
    # 4 entries * (3 + 8) = 44 bits.
    r = enc["relative"]
    assert r.indices.tolist() == [1, 7, 0, 1]
    assert r.values.tolist() == [1.0, 0.0, 2.0, 3.0]
    assert (r.n_entries, r.n_filler, r.nnz) == (4, 1, 3)
    assert (r.index_bits_total, r.value_bits_total, r.total_bits) == (12, 32, 44)
    for e in enc.values():
        np.testing.assert_array_equal(e.decode(), x)
        assert e.decode().dtype == x.dtype
    # with 4-bit fields the run of 8 fits: 3 entries * (4 + 8)
    assert relative_encode(x, index_bits=4, value_bits=8).total_bits == 36


def test_relative_paper_figure_2():
    # Han et al. Fig. 2: non-zeros at 1, 4, 15; 3-bit fields; the filler lands at position 12,
    # 8 after the previous entry (the figure's differences 1, 3, 8, 3 = stored fields + 1).
    x = np.zeros(16)
    x[[1, 4, 15]] = [3.4, 0.9, 1.7]
    e = relative_encode(x, index_bits=3)
    assert e.indices.tolist() == [1, 2, 7, 2]
    assert e.values.tolist() == [3.4, 0.9, 0.0, 1.7]
    positions = np.cumsum(e.indices + 1) - 1
    assert positions.tolist() == [1, 4, 12, 15]
    assert np.diff(np.concatenate([[0], positions])).tolist() == [1, 3, 8, 3]
    assert e.n_filler == 1 and e.index_bits_total == 4 * 3 and e.value_bits_total == 4 * 32


@pytest.mark.parametrize(
    "gap, fillers", [(0, 0), (7, 0), (8, 1), (9, 1), (15, 1), (16, 2), (23, 2), (24, 3)]
)
def test_relative_filler_rule_index_bits_3(gap, fillers):
    # Two non-zeros separated by `gap` zeros: a 3-bit field skips at most 7 zeros, each filler
    # covers 8 positions, so fillers = gap // 8.
    x = np.zeros(gap + 2)
    x[0], x[-1] = 1.0, 2.0
    e = relative_encode(x, index_bits=3)
    assert e.n_filler == fillers
    assert e.n_entries == 2 + fillers
    assert e.indices.max() <= 7
    np.testing.assert_array_equal(e.decode(), x)


def test_relative_leading_and_trailing_zeros():
    x = np.zeros(30)
    x[8] = 5.0  # 8 leading zeros: one filler with 3-bit fields; 21 trailing zeros cost nothing
    e = relative_encode(x, index_bits=3)
    assert e.indices.tolist() == [7, 0] and e.values.tolist() == [0.0, 5.0]
    x0 = np.zeros(5)
    x0[0] = 1.0
    assert relative_encode(x0, index_bits=1).indices.tolist() == [0]
    zero = relative_encode(np.zeros(100), index_bits=2)
    assert (zero.n_entries, zero.total_bits) == (0, 0)
    np.testing.assert_array_equal(zero.decode(), np.zeros(100))


def test_lenet_300_100_layer_relative_counts_match_brute_force():
    # A 784 x 300 FC layer at 8% density, 6-bit values, 5-bit relative indices (Han et al.).
    rng = np.random.default_rng(0)
    w = np.zeros(784 * 300, np.float32)
    keep = rng.choice(w.size, size=int(0.08 * w.size), replace=False)
    w[keep] = rng.integers(1, 64, size=keep.size).astype(np.float32) / 64.0
    w = w.reshape(784, 300)
    e = relative_encode(w, index_bits=5, value_bits=6)
    ref = _brute_relative_encode(w.reshape(-1), 5)
    assert e.n_entries == len(ref)
    assert e.indices.tolist() == [c for c, _ in ref]
    assert e.nnz == keep.size == 18816
    # zero runs from the dense array: a run of z zeros before a non-zero costs z // 32 fillers
    pos = np.flatnonzero(w.reshape(-1))
    runs = np.diff(np.concatenate([[-1], pos])) - 1
    assert e.n_filler == int((runs // 32).sum())
    assert e.total_bits == (e.nnz + e.n_filler) * (5 + 6)
    decoded = _brute_relative_decode(e.indices, e.values, w.size).reshape(w.shape)
    np.testing.assert_array_equal(decoded, w)
    np.testing.assert_array_equal(e.decode(), w)
    # about 11 bits per kept weight plus ~7% fillers: ~0.95 bits per dense weight
    assert 0.9 < e.bits_per_weight < 1.0


def test_csr_shapes_and_conventions():
    x = np.zeros((2, 3, 4))
    x[1, 2, 3] = 1.0
    x[0, 0, 0] = -2.0
    e = csr_encode(x, value_bits=16)
    # matrix view (2, 12): 3 pointers of ceil(log2 3) = 2 bits, 2 columns of ceil(log2 12) = 4
    assert e.row_ptr.tolist() == [0, 1, 2] and e.indices.tolist() == [0, 11]
    assert (e.pointer_bits, e.index_bits, e.total_bits) == (2, 4, 3 * 2 + 2 * 4 + 2 * 16)
    np.testing.assert_array_equal(e.decode(), x)
    v = csr_encode(np.array([0.0, 3.0, 0.0]))  # a vector is one row
    assert v.row_ptr.tolist() == [0, 1] and v.indices.tolist() == [1]
    s = csr_encode(np.float32(2.5))  # a scalar is 1 x 1, every field at least 1 bit
    assert (s.index_bits, s.pointer_bits, s.total_bits) == (1, 1, 2 * 1 + 1 + 32)
    np.testing.assert_array_equal(s.decode(), np.float32(2.5))
    zero = csr_encode(np.zeros((3, 5)), value_bits=8)
    assert zero.total_bits == 4 * 1  # four 1-bit pointers, nothing else


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_empty_arrays(shape, fmt):
    x = np.zeros(shape, np.float32)
    e = encode_sparse(x, fmt)
    assert e.n_weights == 0 and e.nnz == 0 and e.value_bits_total == 0
    assert e.decode().shape == shape


def test_integer_bool_and_jax_inputs():
    xi = np.array([[0, 3], [-1, 0]], np.int8)
    xb = np.array([True, False, True])
    xj = jnp.array([0.0, 1.5, 0.0])
    xh = np.asarray(jnp.array([[0.0, 1.5], [0.0, -2.0]], jnp.bfloat16))
    for fmt in SPARSE_FORMATS:
        out = encode_sparse(xh, fmt).decode()
        assert out.dtype == xh.dtype
        np.testing.assert_array_equal(out.astype(np.float32), xh.astype(np.float32))
        np.testing.assert_array_equal(encode_sparse(xi, fmt).decode(), xi)
        np.testing.assert_array_equal(encode_sparse(xb, fmt).decode(), xb)
        np.testing.assert_array_equal(encode_sparse(xj, fmt).decode(), np.asarray(xj))
    assert bitmask_encode(xb, value_bits=1).total_bits == 3 + 2


def test_validation():
    x = np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        encode_sparse(np.array([np.nan, 1.0]), "relative")
    with pytest.raises(ValueError, match="infinite"):
        encode_sparse(np.array([np.inf, 1.0]), "dense")
    with pytest.raises(ValueError, match="infinite"):
        encode_sparse(np.asarray(jnp.array([-jnp.inf], jnp.bfloat16)), "csr")
    for bad in (0, 33, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="index_bits"):
            encode_sparse(x, "relative", index_bits=bad)
    for bad in (0, 65, 1.0):
        with pytest.raises(ValueError, match="value_bits"):
            encode_sparse(x, "bitmask", value_bits=bad)
    with pytest.raises(ValueError, match="unknown sparse format 'coo'"):
        encode_sparse(x, "coo")
    with pytest.raises(TypeError, match="real numeric"):
        encode_sparse(np.array([1 + 2j]), "dense")
    with pytest.raises(TypeError, match="real numeric"):
        encode_sparse(np.array(["a"]), "dense")


def test_decode_rejects_corrupt_records():
    e = relative_encode(np.array([0.0, 1.0, 0.0, 2.0]), index_bits=2)
    bad = type(e)(**{**e.__dict__, "indices": np.array([1, 5])})
    with pytest.raises(ValueError, match="does not fit"):
        decode_sparse(bad)
    bad = type(e)(**{**e.__dict__, "indices": np.array([3, 3])})
    with pytest.raises(ValueError, match="past the end"):
        decode_sparse(bad)
    assert e.summary()["total_bits"] == e.total_bits


sparse_arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12),
    elements=st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -0.5, 2.25]),
)


@given(sparse_arrays, st.integers(1, 6), st.integers(1, 32))
def test_round_trip_and_counts_all_formats(x, index_bits, value_bits):
    n, nnz = x.size, int(np.count_nonzero(x))
    enc = encode_all(x, value_bits=value_bits, index_bits=index_bits)
    for fmt, e in enc.items():
        out = e.decode()
        np.testing.assert_array_equal(out, x)
        assert out.dtype == x.dtype and e.nnz == nnz and e.format == fmt
        assert e.total_bits == e.index_bits_total + e.value_bits_total
    assert enc["dense"].total_bits == n * value_bits
    assert enc["bitmask"].total_bits == n + nnz * value_bits
    rows = x.shape[0]
    cols = n // rows
    col_bits = max(1, math.ceil(math.log2(cols))) if cols > 1 else 1
    ptr_bits = max(1, math.ceil(math.log2(nnz + 1))) if nnz + 1 > 1 else 1
    if x.ndim == 1:
        rows, cols = 1, n
        col_bits = max(1, math.ceil(math.log2(cols))) if cols > 1 else 1
    assert enc["csr"].total_bits == (rows + 1) * ptr_bits + nnz * (col_bits + value_bits)
    r = enc["relative"]
    ref = _brute_relative_encode(x.reshape(-1), index_bits)
    assert r.indices.tolist() == [c for c, _ in ref]
    assert r.values.tolist() == [v for _, v in ref]
    assert r.total_bits == len(ref) * (index_bits + value_bits)
    np.testing.assert_array_equal(
        _brute_relative_decode(r.indices, r.values, n).reshape(x.shape), x
    )


def _replace(e, **fields):
    return dataclasses.replace(e, **fields)


def _expect_corrupt(e, match):
    with pytest.raises(ValueError, match=match):
        decode_sparse(e)


def test_decode_rejects_bad_csr_structure():
    x = np.array([[0.0, 2.0, 0.0, 4.0], [1.0, 0.0, 3.0, 0.0]])
    e = csr_encode(x)
    assert e.row_ptr.tolist() == [0, 2, 4] and e.indices.tolist() == [1, 3, 0, 2]
    # one column index for four values would broadcast into a wrong array
    _expect_corrupt(_replace(e, indices=e.indices[:1]), "1 column indices for 4 values")
    _expect_corrupt(_replace(e, row_ptr=e.row_ptr[:2]), r"2 row pointers for 2 rows \(need 3\)")
    _expect_corrupt(_replace(e, row_ptr=np.array([1, 2, 4])), "must start at 0")
    _expect_corrupt(_replace(e, row_ptr=np.array([0, 3, 2])), "never decrease")
    _expect_corrupt(_replace(e, row_ptr=np.array([0, 2, 3])), "last row pointer is 3")
    _expect_corrupt(_replace(e, values=e.values[:3], indices=e.indices[:3]), "nnz=4")
    _expect_corrupt(_replace(e, nnz=3), "nnz=3")
    _expect_corrupt(_replace(e, indices=np.array([1, 1, 0, 2])), "strictly increase within a row")
    _expect_corrupt(_replace(e, indices=np.array([3, 1, 0, 2])), "strictly increase within a row")
    _expect_corrupt(_replace(e, indices=np.array([1, 4, 0, 2])), r"outside \[0, 4\)")
    _expect_corrupt(_replace(e, indices=np.array([1, -1, 0, 2])), r"span \[-1, 2\]")
    _expect_corrupt(_replace(e, indices=e.indices.astype(float)), "1-D integer array")
    _expect_corrupt(_replace(e, row_ptr=None), "row_ptr is missing")
    _expect_corrupt(_replace(e, values=np.array([2.0, 0.0, 1.0, 3.0])), "1 stored value")
    # the last index of one row may exceed the first of the next
    np.testing.assert_array_equal(decode_sparse(e), x)


def test_decode_rejects_bad_bitmask_dense_and_common_fields():
    x = np.array([0.0, 1.5, 0.0, -2.0])
    b = bitmask_encode(x)
    _expect_corrupt(_replace(b, indices=np.array([0, 2, 0, 1])), "1-D bool array")
    _expect_corrupt(_replace(b, indices=b.indices[:3]), "3 bits for 4 elements")
    _expect_corrupt(_replace(b, values=b.values[:1]), "holds 1 values")
    _expect_corrupt(_replace(b, nnz=1), "nnz=1")
    _expect_corrupt(_replace(b, values=np.array([0.0, -2.0])), "are zero")
    _expect_corrupt(_replace(b, values=b.values.reshape(1, 2)), r"values must be 1-D")
    d = encode_sparse(x, "dense")
    _expect_corrupt(_replace(d, values=d.values[:3]), "3 values for 4 elements")
    _expect_corrupt(_replace(d, nnz=3), "2 non-zero values but nnz=3")
    _expect_corrupt(_replace(d, nnz=-1), r"nnz=-1 must be an integer in \[0, 4\]")
    ints = encode_sparse(np.array([0, 3, -1], np.int8), "dense")
    # float values into an int8 record would be truncated silently
    _expect_corrupt(_replace(ints, values=np.array([0.0, 2.5, -1.0])), "cannot be stored as int8")
    _expect_corrupt(_replace(ints, shape=(3, -1)), "non-negative integers")
    with pytest.raises(ValueError, match="unknown sparse format 'coo'"):
        decode_sparse(_replace(ints, format="coo"))


def test_decode_rejects_bad_relative_structure():
    x = np.zeros(16)
    x[[1, 4, 15]] = [3.4, 0.9, 1.7]
    e = relative_encode(x, index_bits=3)
    assert e.indices.tolist() == [1, 2, 7, 2] and e.n_filler == 1
    # a single value would broadcast over every position
    _expect_corrupt(_replace(e, values=e.values[:1]), "4 relative fields for 1 values")
    # dropping the last entry from both streams loses a non-zero
    _expect_corrupt(_replace(e, values=e.values[:3], indices=e.indices[:3]),
                    "2 non-zero entries and 1 fillers, but nnz=3")
    _expect_corrupt(_replace(e, n_filler=0), "n_filler=0")
    _expect_corrupt(_replace(e, indices=np.array([1, 2, 6, 3])), "is not a filler")
    _expect_corrupt(_replace(e, indices=e.indices.reshape(2, 2)), "1-D integer array")


@given(sparse_arrays, st.sampled_from(SPARSE_FORMATS), st.sampled_from(["values", "indices",
       "row_ptr", "both"]), st.integers(1, 3))
def test_truncated_records_never_decode_silently_wrong(x, fmt, field, cut):
    e = encode_sparse(x, fmt, index_bits=2)
    fields = {"values": ["values"], "indices": ["indices"], "row_ptr": ["row_ptr"],
              "both": ["values", "indices"]}[field]
    changes = {}
    for f in fields:
        arr = getattr(e, f)
        if arr is None or arr.size == 0:
            return
        changes[f] = arr[: max(0, arr.size - cut)]
    with pytest.raises(ValueError, match="truncated or corrupted|does not fit|past the end"):
        decode_sparse(_replace(e, **changes))
