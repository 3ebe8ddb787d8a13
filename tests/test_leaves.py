"""Parameterised leaves and materialize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxcomp as jc


def _rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape)


@given(m=st.integers(1, 7), r=st.integers(1, 4), n=st.integers(1, 7), seed=st.integers(0, 99))
def test_lowrank_materialize_matches_numpy(m, r, n, seed):
    u = np.random.default_rng(seed).normal(size=(m, r)).astype(np.float32)
    v = np.random.default_rng(seed + 1).normal(size=(r, n)).astype(np.float32)
    lr = jc.LowRank(jnp.asarray(u), jnp.asarray(v))
    np.testing.assert_allclose(lr.materialize(), u @ v, rtol=1e-5, atol=1e-5)
    assert lr.shape == (m, n) and lr.rank == r
    assert lr.compute_fraction() == pytest.approx(r * (m + n) / (m * n))
    assert lr.storage_bits() == (m * r + r * n) * 32


def test_lowrank_conv_kernel_reshape_and_dtype():
    lr = jc.LowRank(_rand(0, (3 * 3 * 4, 2)), _rand(1, (2, 8)), dense_shape=(3, 3, 4, 8),
                    dense_dtype=jnp.bfloat16)
    w = lr.materialize()
    assert w.shape == (3, 3, 4, 8) and w.dtype == jnp.bfloat16
    assert lr.shape == (3, 3, 4, 8) and lr.size == 288 and lr.ndim == 4


def test_lowrank_gradient_is_analytic():
    u, v, g = _rand(0, (5, 2)), _rand(1, (2, 3)), _rand(2, (5, 3))

    def loss(t):
        return jnp.sum(jc.materialize(t)["w"] * g)

    for f in (jax.grad(loss), jax.jit(jax.grad(loss))):
        grads = f({"w": jc.LowRank(u, v)})["w"]
        np.testing.assert_allclose(grads.u, g @ v.T, rtol=1e-5)
        np.testing.assert_allclose(grads.v, u.T @ g, rtol=1e-5)


@pytest.mark.parametrize(
    "u_shape,v_shape,kw,msg",
    [
        ((4, 2), (3, 5), {}, "inner dimensions differ"),
        ((4,), (1, 5), {}, "must be matrices"),
        ((4, 2), (2, 5), {"dense_shape": (3, 7)}, "shape \\(3, 7\\) has 21 elements"),
    ],
)
def test_lowrank_errors(u_shape, v_shape, kw, msg):
    with pytest.raises(ValueError, match=msg):
        jc.LowRank(jnp.ones(u_shape), jnp.ones(v_shape), **kw)


def test_qarray_per_channel_and_storage():
    values = jnp.array([[-8, 0, 7], [1, 2, 3]], jnp.int8)
    scale = jnp.array([[0.5], [2.0]], jnp.float32)
    zp = jnp.array([[0], [1]], jnp.int8)
    q = jc.QArray(values, scale, zp, bits=4)
    expected = (np.asarray(values, np.float32) - np.asarray(zp)) * np.asarray(scale)
    np.testing.assert_allclose(q.materialize(), expected)
    # 6 codes x 4 bits + 2 float32 scales + 2 int8 zero points
    assert q.storage_bits() == 6 * 4 + 2 * 32 + 2 * 8
    assert q.weight_bits == 4 and q.shape == (2, 3) and q.dtype == np.float32
    # gradients reach the scale (learned step sizes live in params)
    g = jax.grad(lambda s: jc.QArray(values, s, zp, bits=4).materialize().sum())(scale)
    np.testing.assert_allclose(g, (np.asarray(values, np.float32) - np.asarray(zp)).sum(1, keepdims=True))


@pytest.mark.parametrize("bits", [0, 33])
def test_qarray_bits_range(bits):
    with pytest.raises(ValueError, match="bits must be an int in \\[1, 32\\]"):
        jc.QArray(jnp.zeros(3, jnp.int8), jnp.float32(1), jnp.int8(0), bits=bits)


def test_qarray_scale_must_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        jc.QArray(jnp.zeros((2, 3), jnp.int8), jnp.ones((3, 1)), jnp.int8(0))


@pytest.mark.parametrize("k,bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (256, 8), (257, 9)])
def test_codebook_index_bits(k, bits):
    c = jc.Codebook(jnp.arange(k, dtype=jnp.float32), jnp.zeros((10,), jnp.int32))
    assert c.index_bits == bits
    assert c.storage_bits() == 10 * bits + 32 * k


def test_codebook_gradient_sums_members():
    # Deep Compression: a centroid's gradient is the sum of its members' gradients.
    idx = jnp.array([[0, 2, 2], [1, 0, 2]])
    g = _rand(3, (2, 3))
    cent = jnp.array([-1.0, 0.5, 2.0])
    for f in (jax.grad, lambda fn: jax.jit(jax.grad(fn))):
        grad = f(lambda c: jnp.sum(jc.Codebook(c, idx).materialize() * g))(cent)
        expected = np.bincount(np.asarray(idx).ravel(), weights=np.asarray(g).ravel(), minlength=3)
        np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_codebook_errors():
    with pytest.raises(ValueError, match="centroids must be a vector"):
        jc.Codebook(jnp.ones((2, 2)), jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="indices must be integers"):
        jc.Codebook(jnp.ones(2), jnp.zeros(3))


def test_materialize_tree_keeps_other_leaves_and_structure():
    bias = jnp.ones(3)
    tree = {"a": {"kernel": jc.LowRank(jnp.ones((4, 2)), jnp.ones((2, 3))), "bias": bias},
            "b": [jc.Codebook(jnp.array([1.0, 2.0]), jnp.array([1, 0]))]}
    out = jc.materialize(tree)
    assert out["a"]["bias"] is bias
    assert out["a"]["kernel"].shape == (4, 3) and float(out["a"]["kernel"][0, 0]) == 2.0
    assert out["b"][0].tolist() == [2.0, 1.0]
    dense = jax.tree.structure({"a": {"kernel": 0, "bias": 0}, "b": [0]})
    assert jax.tree.structure(out) == dense
    jitted = jax.jit(jc.materialize)(tree)
    np.testing.assert_allclose(jitted["a"]["kernel"], out["a"]["kernel"])


def test_custom_leaf_type_and_decorator_check():
    @jc.compressed_leaf
    class Scaled(jc.CompressedLeaf):
        base: jax.Array
        factor: float = jc.static_field(default=3.0)

        def materialize(self):
            return self.base * self.factor

    leaf = Scaled(jnp.ones(2))
    assert jax.tree.leaves(leaf)[0].shape == (2,)  # factor is static metadata
    assert leaf.shape == (2,) and leaf.dtype == np.float32
    assert jc.materialize([leaf])[0].tolist() == [3.0, 3.0]
    assert leaf.compute_fraction() == 1.0 and leaf.storage_bits() == 64

    with pytest.raises(TypeError, match="must subclass jaxcomp.CompressedLeaf"):
        @jc.compressed_leaf
        class NotALeaf:
            x: int


def _code_range(dtype, bits):
    """The codes a `bits`-wide field holds: every bit pattern, read as two's complement
    for a signed dtype and as a plain binary number for an unsigned one."""
    signed = np.issubdtype(np.dtype(dtype), np.signedinteger)
    codes = [p - 2**bits if signed and p >= 2 ** (bits - 1) else p for p in range(2**bits)]
    return min(codes), max(codes)


@given(
    dtype=st.sampled_from([np.int8, np.uint8, np.int16, np.uint16, np.int32]),
    bits=st.integers(1, 8),
    code=st.integers(-300, 300),
)
def test_qarray_accepts_exactly_the_codes_that_fit(dtype, bits, code):
    info = np.iinfo(dtype)
    if not info.min <= code <= info.max:
        return
    lo, hi = _code_range(dtype, bits)
    values = np.array([0, code], dtype)
    if lo <= code <= hi:
        q = jc.QArray(values, np.float32(1), np.int8(0), bits=bits)
        # storage is honest: packing each code into `bits` bits and unpacking it gives it back
        packed = values.astype(np.int64) & (2**bits - 1)
        unpacked = packed - (packed >> (bits - 1) << bits) if lo < 0 else packed
        np.testing.assert_array_equal(unpacked, values)
        assert q.storage_bits() == 2 * bits + 32 + 8
    else:
        with pytest.raises(ValueError, match=f"outside the .*{bits}-bit range \\[{lo}, {hi}\\]"):
            jc.QArray(values, np.float32(1), np.int8(0), bits=bits)


@pytest.mark.parametrize(
    "values,bits,msg",
    [
        (jnp.array([-9, 0, 7], jnp.int8), 4, r"codes in \[-9, 7\], outside the signed 4-bit"),
        (jnp.array([0, 16], jnp.uint8), 4, r"codes in \[0, 16\], outside the unsigned 4-bit"),
        (jnp.array([200], jnp.int32), 8, r"unsigned dtype such as uint8"),
        (jnp.array([-1], jnp.int8), 1, None),  # -1 is the one negative 1-bit signed code
        (jnp.array([1], jnp.int8), 1, r"signed 1-bit range \[-1, 0\]"),
    ],
)
def test_qarray_rejects_codes_outside_bits(values, bits, msg):
    if msg is None:
        assert jc.QArray(values, jnp.float32(1), jnp.int8(0), bits=bits).storage_bits() == 1 + 40
        return
    with pytest.raises(ValueError, match=msg):
        jc.QArray(values, jnp.float32(1), jnp.int8(0), bits=bits)


def test_qarray_rejects_non_integer_codes_and_bits_wider_than_dtype():
    with pytest.raises(TypeError, match="values must hold integer codes, got dtype float32"):
        jc.QArray(jnp.array([0.5, 1.0]), jnp.float32(1), jnp.int8(0), bits=4)
    with pytest.raises(TypeError, match="integer codes, got dtype bool"):
        jc.QArray(np.array([True, False]), jnp.float32(1), jnp.int8(0), bits=1)
    with pytest.raises(ValueError, match="bits=16 exceeds the 8 bits of values' dtype int8"):
        jc.QArray(jnp.array([1], jnp.int8), jnp.float32(1), jnp.int8(0), bits=16)
    with pytest.raises(ValueError, match="bits must be an int"):
        jc.QArray(jnp.array([1], jnp.int8), jnp.float32(1), jnp.int8(0), bits=4.0)


def test_qarray_concrete_constant_is_checked_inside_jit():
    bad = jnp.array([100], jnp.int8)  # a concrete array closed over by the traced function
    with pytest.raises(ValueError, match="outside the signed 4-bit range"):
        jax.jit(lambda s: jc.QArray(bad, s, jnp.int8(0), bits=4).materialize())(jnp.float32(1))


def test_qarray_under_tracing_is_unchecked_and_does_not_crash():
    # Traced codes cannot be inspected: construction succeeds and materialize is the affine map.
    f = jax.jit(lambda v: jc.QArray(v, jnp.float32(0.5), jnp.int8(1), bits=4).materialize())
    np.testing.assert_allclose(f(jnp.array([100, 2], jnp.int8)), [49.5, 0.5])
    q = jc.QArray(jnp.array([-8, 7], jnp.int8), jnp.float32(0.5), jnp.int8(0), bits=4)
    np.testing.assert_allclose(jax.jit(jc.materialize)(q), [-4.0, 3.5])
    # grad with allow_int gives float0 codes; vmap and tree utilities rebuild the leaf freely
    g = jax.grad(lambda t: jc.materialize(t).sum(), allow_int=True)(q)
    assert g.values.dtype == jax.dtypes.float0 and float(g.scale) == pytest.approx(-1.0)
    batched = jc.QArray(jnp.array([[1, 2], [3, 4]], jnp.int8), jnp.ones((2, 1)), jnp.zeros((2, 1)),
                        bits=4)
    assert jax.vmap(lambda t: t.materialize().sum())(batched).tolist() == [3.0, 7.0]
    assert jax.tree.leaves(jax.tree.map(lambda _: True, q)) == [True, True, True]


@pytest.mark.parametrize("indices", [[0, 3], [-1, 0], [[0, 1], [2, 7]]])
def test_codebook_rejects_out_of_range_indices(indices):
    cent = jnp.array([-1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match=r"there are 3 centroids, so every index must lie in \[0, 2\]"):
        jc.Codebook(cent, jnp.array(indices))
    with pytest.raises(ValueError, match="3 centroids"):
        jc.Codebook(cent, np.array(indices, np.int64))
    ok = jc.Codebook(cent, jnp.array([2, 0, 1]))  # the boundary index k - 1 is fine
    assert ok.materialize().tolist() == [2.0, -1.0, 0.0]


def test_codebook_under_jit_follows_take():
    cent = jnp.array([-1.0, 0.0, 2.0])
    f = jax.jit(lambda i: jc.Codebook(cent, i).materialize())
    out = np.asarray(f(jnp.array([0, -1, 3, -4])))
    assert out[:2].tolist() == [-1.0, 2.0] and np.isnan(out[2:]).all()


def test_rebuilt_nodes_are_not_validated_so_optimizers_can_hold_float_moments():
    # Adam's moments share the params' structure: their QArray/Codebook slots for integer
    # codes and indices hold floats. Rebuilding a node is structural and must not reject them.
    import optax

    params = {
        "q": jc.QArray(jnp.array([[-2, 0], [3, 1]], jnp.int8), jnp.float32(0.5), jnp.int8(0),
                       bits=4),
        "c": jc.Codebook(jnp.array([-1.0, 2.0]), jnp.array([1, 0, 1])),
    }
    tx = optax.adam(0.1)

    @jax.jit
    def step(p, o):
        g = jax.grad(lambda t: sum(jnp.sum(v**2) for v in jax.tree.leaves(jc.materialize(t))),
                     allow_int=True)(p)
        g = jax.tree.map(lambda g, x: jnp.zeros_like(x) if g.dtype == jax.dtypes.float0 else g,
                         g, p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    p, o = step(params, tx.init(params))
    mu = o[0].mu
    assert mu["q"].values.dtype == jnp.float32 and mu["c"].indices.dtype == jnp.float32
    assert p["q"].values.tolist() == [[-2, 0], [3, 1]] and p["c"].indices.tolist() == [1, 0, 1]
    assert float(p["q"].scale) < 0.5  # the learned step size moved
    # a rebuilt node keeps the field names as pytree keys
    keys = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(p["q"])[0]]
    assert keys == [".values", ".scale", ".zero_point"]
