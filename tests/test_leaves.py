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
