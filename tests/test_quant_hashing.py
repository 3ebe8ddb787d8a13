"""jaxcomp.quant.sharing.hashing: HashedNets leaves against a NumPy re-implementation of the hash."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxcomp as jc
from jaxcomp.metrics import model_size_bytes
from jaxcomp.quant.sharing.hashing import HashedArray, hash_array, hash_buckets, hash_kernels


def _np_mix(p, salt):
    """lowbias32(lowbias32(p) xor salt * 0x9E3779B9) in NumPy uint32 arithmetic."""

    def f(x):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))

    with np.errstate(over="ignore"):
        return f(f(p.astype(np.uint32)) ^ np.uint32((salt * 0x9E3779B9) & 0xFFFFFFFF))


def _np_buckets(shape, k, seed):
    p = np.arange(int(np.prod(shape)), dtype=np.uint32)
    idx = (_np_mix(p, 2 * seed) % np.uint32(k)).astype(np.int64)
    sign = np.where(_np_mix(p, 2 * seed + 1) & 1 == 0, 1.0, -1.0)
    return idx.reshape(shape), sign.reshape(shape)


_BUCKETS = jax.jit(lambda: hash_buckets((37, 23), 50, seed=7))


def test_hash_matches_numpy_eager_and_jit():
    for seed, k in ((0, 1), (7, 50), (123456, 851)):
        idx, sign = hash_buckets((37, 23), k, seed=seed)
        ref_i, ref_s = _np_buckets((37, 23), k, seed)
        np.testing.assert_array_equal(np.asarray(idx), ref_i)
        np.testing.assert_array_equal(np.asarray(sign), ref_s)
    idx, sign = _BUCKETS()
    ref_i, ref_s = _np_buckets((37, 23), 50, 7)
    np.testing.assert_array_equal(np.asarray(idx), ref_i)
    np.testing.assert_array_equal(np.asarray(sign), ref_s)


def test_buckets_and_signs_are_balanced():
    idx, sign = _np_buckets((256, 256), 64, 3)  # the oracle equals the library (test above)
    counts = np.bincount(idx.ravel(), minlength=64)
    # 1024 expected per bucket; a uniform hash stays within 5 standard deviations (~32)
    assert counts.min() > 1024 - 160 and counts.max() < 1024 + 160
    assert abs(sign.mean()) < 0.02
    # the sign does not follow the bucket: per-bucket sign means near 0
    per = np.bincount(idx.ravel(), weights=sign.ravel(), minlength=64) / counts
    assert np.abs(per).max() < 0.15
    # different seeds give different maps
    assert np.mean(_np_buckets((256, 256), 64, 4)[0] == idx) < 0.05


def test_materialize_and_gradient_match_numpy():
    w = jax.random.normal(jax.random.key(0), (11,))
    h = HashedArray(w, dense_shape=(6, 5), seed=2)
    idx, sign = _np_buckets((6, 5), 11, 2)
    np.testing.assert_allclose(np.asarray(h.materialize()), sign * np.asarray(w)[idx], rtol=1e-6)
    g = np.asarray(jax.random.normal(jax.random.key(1), (6, 5)))
    want = np.zeros(11)
    np.add.at(want, idx.ravel(), (sign * g).ravel())  # signed sum over each bucket
    loss = lambda h: jnp.sum(h.materialize() * g)
    for grad in (jax.grad(loss), jax.jit(jax.grad(loss))):
        gh = grad(h)
        assert isinstance(gh, HashedArray) and gh.dense_shape == (6, 5)
        np.testing.assert_allclose(np.asarray(gh.weights), want, rtol=1e-5, atol=1e-6)
    check_grads(lambda v: jnp.sum(HashedArray(v, dense_shape=(6, 5), seed=2).materialize() ** 3),
                (w,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_storage_counts_only_the_real_parameters():
    h = HashedArray(jnp.zeros(100, jnp.bfloat16), dense_shape=(80, 40), seed=0)
    assert h.storage_bits() == 1600 and h.compute_fraction() == 1.0
    assert h.dtype == jnp.bfloat16 and h.shape == (80, 40) and h.size == 3200
    rep = model_size_bytes({"k": h, "b": jnp.zeros(40)})
    assert rep.row("k").total_bits == 1600 and rep.total_bits == 1600 + 40 * 32
    assert rep.row("k").n_weights == 3200


def test_project_is_the_least_squares_fit_and_sample_keeps_values():
    w = jax.random.normal(jax.random.key(3), (9, 7))
    h = hash_array(w, compression=1 / 4, seed=5)
    k = h.num_params
    assert k == round(63 / 4)
    idx, sign = _np_buckets((9, 7), k, 5)
    a = np.zeros((63, k))
    a[np.arange(63), idx.ravel()] = sign.ravel()  # V = A @ weights
    ref = np.linalg.lstsq(a, np.asarray(w).ravel(), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(h.weights), ref, rtol=1e-5, atol=1e-6)
    s = hash_array(w, compression=1 / 4, init="sample", key=jax.random.key(0))
    vals = np.asarray(s.weights)
    assert len(set(vals.tolist())) == k and set(vals.tolist()) <= set(np.asarray(w).ravel().tolist())
    # compression 1 with a one-to-one hash would be lossless; K never exceeds the size
    assert hash_array(w, compression=1.0).num_params == 63
    assert hash_array(w, compression=1e-6).num_params == 1


def test_hash_kernels_tree():
    k = jax.random.split(jax.random.key(0), 2)
    params = {"fc1": {"kernel": jax.random.normal(k[0], (160, 48)), "bias": jnp.zeros(48)},
              "fc2": {"kernel": jax.random.normal(k[1], (48, 10)), "bias": jnp.zeros(10)}}
    h8 = hash_kernels(params, compression=1 / 8, init="sample", key=jax.random.key(1))
    h64 = hash_kernels(params, compression=1 / 64, seed=10)
    assert h8["fc1"]["kernel"].num_params == 960 and h8["fc2"]["kernel"].num_params == 60
    assert h64["fc1"]["kernel"].num_params == 120 and h64["fc2"]["kernel"].num_params == 8
    assert (h64["fc1"]["kernel"].seed, h64["fc2"]["kernel"].seed) == (10, 11)
    assert h8["fc1"]["bias"] is params["fc1"]["bias"]
    # gradients reach the real parameters only, with the leaves' structure
    g = jax.grad(lambda p: jnp.sum(jc.materialize(p)["fc2"]["kernel"] ** 2))(h64)
    assert isinstance(g["fc2"]["kernel"], HashedArray) and g["fc2"]["kernel"].weights.shape == (8,)


def test_bad_input_errors():
    w = jnp.ones((4, 4))
    with pytest.raises(ValueError, match=r"compression=0 is outside \(0, 1\]"):
        hash_array(w, compression=0)
    with pytest.raises(ValueError, match=r"compression=1.5 is outside"):
        hash_array(w, compression=1.5)
    with pytest.raises(TypeError, match="compression must be a number"):
        hash_array(w, compression="1/8")
    with pytest.raises(ValueError, match="init='zeros' must be 'project' or 'sample'"):
        hash_array(w, compression=0.5, init="zeros")
    with pytest.raises(ValueError, match="init='sample' needs key="):
        hash_array(w, compression=0.5, init="sample")
    with pytest.raises(TypeError, match="floating-point"):
        hash_array(jnp.ones((4, 4), jnp.int32), compression=0.5)
    with pytest.raises(ValueError, match="w is empty"):
        hash_array(jnp.ones((0, 4)), compression=0.5)
    with pytest.raises(ValueError, match=r"seed=-1 is outside"):
        hash_array(w, compression=0.5, seed=-1)
    with pytest.raises(TypeError, match="seed must be a Python int"):
        HashedArray(jnp.ones(3), dense_shape=(2, 2), seed=1.5)
    with pytest.raises(ValueError, match="weights must be a non-empty vector"):
        HashedArray(jnp.ones((3, 1)), dense_shape=(2, 2))
    with pytest.raises(ValueError, match="more than 2\\*\\*32 entries"):
        HashedArray(jnp.ones(3), dense_shape=(1 << 17, 1 << 16))
    with pytest.raises(ValueError, match="k must be a positive int"):
        hash_buckets((2, 2), 0)
    with pytest.raises(ValueError, match="where='kernel' matches no kernel"):
        hash_kernels({"fc": {"kernel": w}}, compression=0.5, where="kernel")
    with pytest.raises(ValueError, match="'fc/kernel': hash_array: compression=2"):
        hash_kernels({"fc": {"kernel": w}}, compression=2)
