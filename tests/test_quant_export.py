"""jaxcomp.quant.sharing.model_file: model files of exactly model_size_bytes, lossless round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxcomp as jc
from jaxcomp.encode import huffman_code
from jaxcomp.encode.huffman import canonical_code
from jaxcomp.metrics import StorageSpec, model_size_bytes
from jaxcomp.quant.sharing.hashing import HashedArray
from jaxcomp.quant.sharing.model_file import (
    decode_model,
    encode_model,
    huffman_pack,
    huffman_unpack,
)

FORMATS = ["dense", "bitmask", "csr", "relative"]


def _levels(shape, density, n_levels, seed, dtype=np.float32):
    r = np.random.default_rng(seed)
    levels = r.normal(size=n_levels).astype(dtype)
    w = levels[r.integers(0, n_levels, size=shape)]
    w[r.random(shape) >= density] = 0
    return w


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def _round_trip(tree, spec):
    data, rep = encode_model(tree, spec)
    assert len(data) == model_size_bytes(tree, spec).total_bytes == rep.total_bytes
    back = decode_model(data, jax.eval_shape(lambda: tree), spec)
    for (_, a), (_, b) in zip(jc.select.leaves_with_paths(tree),
                              jc.select.leaves_with_paths(back)):
        if isinstance(a, jc.CompressedLeaf):
            assert type(a) is type(b)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                _same(x, y)
        else:
            _same(a, b)
    return data, rep


@given(st.sampled_from(FORMATS), st.booleans(), st.booleans(), st.integers(1, 4),
       st.floats(0.0, 1.0), st.integers(1, 9), st.integers(0, 2**16))
def test_property_round_trip_equals_the_counted_size(fmt, huffman, codebook, index_bits,
                                                     density, n_levels, seed):
    w = _levels((7, 9), density, n_levels, seed)
    if codebook:  # zeros are stored in the dense format, fillers in the relative one
        spec = StorageSpec(format=fmt, codebook=n_levels + 1, index_bits=index_bits,
                           huffman=huffman)
    else:
        spec = StorageSpec(bits=32, format=fmt, index_bits=index_bits, huffman=huffman)
    _round_trip({"w": w, "b": np.arange(3, dtype=np.float32)}, [("w", spec)])


def test_adversarial_trees():
    zeros = np.zeros((5, 6), np.float32)
    one = np.full((5, 6), 0.75, np.float32)
    distinct = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    for fmt in FORMATS:
        for huffman in (False, True):
            raw = StorageSpec(bits=32, format=fmt, index_bits=2, huffman=huffman)
            cb = StorageSpec(format=fmt, codebook=2, index_bits=2, huffman=huffman)
            _round_trip({"w": zeros}, raw)  # all zeros
            _round_trip({"w": one}, cb)  # one symbol
            _round_trip({"w": distinct}, raw)  # every value distinct, raw bit patterns
    # bfloat16 raw values at 16 bits, int8 and bool leaves at their width, an empty leaf
    tree = {"h": jnp.asarray(distinct[:4], jnp.bfloat16), "i": np.arange(-4, 4, dtype=np.int8),
            "m": np.array([True, False, True]), "e": np.zeros((0, 3), np.float32)}
    spec = [("h", StorageSpec(bits=16, format="csr", huffman=True)),
            ("i", StorageSpec(bits=8, format="bitmask", huffman=True))]
    _, rep = _round_trip(tree, spec)
    assert rep.row("m").total_bits == 3 and rep.row("e").total_bits == 0
    # empty tree, a rule that selects nothing
    with pytest.raises(ValueError, match="the tree has no leaves"):
        encode_model({})
    with pytest.raises(ValueError, match="matches no parameter"):
        encode_model({"w": one}, [("v", StorageSpec())])


def test_compressed_leaves_round_trip():
    q = jc.QArray(jnp.array([[-8, 7], [0, -1]], jnp.int8), jnp.float32(0.5), jnp.int8(0), bits=4)
    qu = jc.QArray(jnp.array([0, 3, 2], jnp.uint8), jnp.array([0.1, 0.2, 0.3]),
                   jnp.array([1, 1, 2], jnp.uint8), bits=2)
    tree = {
        "cb": jc.Codebook(jnp.array([-1.0, 0.0, 2.5]), jnp.array([[0, 2, 1], [2, 2, 0]])),
        "q": q, "qu": qu,
        "lr": jc.LowRank(jnp.ones((5, 2)), jnp.arange(6.0).reshape(2, 3)),
        "h": HashedArray(jnp.arange(1.0, 5.0, dtype=jnp.bfloat16), dense_shape=(3, 7), seed=4),
        "bias": jnp.ones(3),
    }
    data, rep = _round_trip(tree, None)
    assert rep.row("q").total_bits == 4 * 4 + 32 + 8 and rep.row("h").total_bits == 4 * 16
    back = decode_model(data, tree)
    np.testing.assert_array_equal(np.asarray(jc.materialize(back)["q"]),
                                  np.asarray(q.materialize()))

    class Odd(jc.CompressedLeaf):
        pass

    odd = jc.compressed_leaf(type("Odd", (Odd,), {
        "__annotations__": {"w": jax.Array},
        "materialize": lambda self: self.w, "storage_bits": lambda self: 1}))(jnp.ones(3))
    with pytest.raises(TypeError, match="no file layout is known"):
        encode_model({"o": odd})


def test_corrupted_files_and_mismatched_specs():
    w = _levels((8, 8), 0.3, 3, seed=5)
    spec = StorageSpec(format="relative", codebook=4, index_bits=3, huffman=True)
    data, _ = encode_model({"w": w}, spec)
    with pytest.raises(ValueError, match="truncated"):
        decode_model(data[:-3], {"w": w}, spec)
    with pytest.raises(ValueError, match="bits are left after the last leaf"):
        decode_model(data + b"\x00", {"w": w}, spec)
    with pytest.raises(ValueError):
        decode_model(data, {"w": w}, StorageSpec(format="csr", codebook=4))
    with pytest.raises(ValueError, match="without a codebook"):
        encode_model({"w": w}, StorageSpec(bits=8, format="csr"))
    with pytest.raises(ValueError, match="codebook_bits=16"):
        encode_model({"w": w}, StorageSpec(format="csr", codebook=4, codebook_bits=16))
    with pytest.raises(ValueError, match="strict"):  # more values than codes: not storable
        encode_model({"w": _levels((8, 8), 1.0, 9, seed=1)}, StorageSpec(format="dense",
                                                                          codebook=4))
    with pytest.raises(TypeError, match="jax.ShapeDtypeStruct"):
        decode_model(data, {"w": 3.0}, spec)
    with pytest.raises(TypeError, match="abstract"):
        jax.jit(lambda v: jnp.float32(len(encode_model({"w": v})[0])))(jnp.ones(2))


def test_huffman_round_trips():
    r = np.random.default_rng(0)
    for syms, k in ((r.integers(0, 8, 500), 8), (np.full(40, 3), 4),  # random, one symbol
                    (r.permutation(300), 1 << 16), (np.array([0]), 1)):  # all distinct, tiny
        _same(huffman_unpack(huffman_pack(syms, alphabet_size=k), alphabet_size=k),
              syms.astype(np.int64))
        code = huffman_code(syms)
        data, n = code.encode(syms)
        _same(code.decode(data, n), syms.astype(np.int64))
        rebuilt = canonical_code(code.symbols, code.lengths)
        assert rebuilt.as_dict() == code.as_dict()
        s, used = code.decode_prefix(np.concatenate([code.encode_bits(syms), [1, 0, 1]]),
                                     syms.size)
        _same(s, syms.astype(np.int64))
        assert used == n
    with pytest.raises(ValueError, match="no symbols to encode"):
        huffman_pack([], alphabet_size=4)
    with pytest.raises(ValueError, match="empty data"):
        huffman_unpack(b"", alphabet_size=4)
    with pytest.raises(ValueError, match="outside the alphabet"):
        huffman_pack([4], alphabet_size=4)
    with pytest.raises(TypeError, match="integers"):
        huffman_pack([0.5], alphabet_size=4)
    with pytest.raises(ValueError, match="truncated"):
        huffman_unpack(huffman_pack(np.arange(64), alphabet_size=64)[:-2], alphabet_size=64)
    with pytest.raises(ValueError, match="Kraft"):
        canonical_code([0, 1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="holds 1 symbols, 2 expected"):
        huffman_code([0, 1]).decode_prefix([0], 2)
    with pytest.raises(ValueError, match="empty"):
        huffman_code([]).decode_prefix([0, 1], 1)
