"""Tests for jaxcomp.prune.oneshot.obs: OBS oracle, SparseGPT layer solver, Hessians, model driver."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcomp as jc
from jaxcomp.models import mlp
from jaxcomp.prune.masks import magnitude_mask
from jaxcomp.prune.oneshot.obs import (
    accumulate_hessian,
    conv_kernel_2d,
    conv_patches,
    init_hessian,
    layer_hessian,
    obs_remove,
    reconstruction_error,
    sparsegpt_prune,
)
from jaxcomp.prune.oneshot.obs_model import obs_prune
from jaxcomp.prune.patterns import NM


def _correlated(seed, n, d, rho=0.8):
    """Inputs with strongly correlated features (AR(1) covariance), made with numpy."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    mix = rho ** np.abs(np.arange(d)[:, None] - np.arange(d)[None, :])
    return jnp.asarray(z @ np.linalg.cholesky(mix).T, jnp.float32)


def _data(seed, rho=0.8, n=64, d=12, out=4):
    """(x, w) of the one layer shape most solver tests share (so they share compiles)."""
    w = np.random.default_rng(seed + 1000).standard_normal((d, out))
    return _correlated(seed, n, d, rho), jnp.asarray(w, jnp.float32)


def _err(x, w, w_hat):
    return float(jnp.sum((x @ w - x @ w_hat) ** 2))


# ----------------------------------------------------------------------------- Hessian


def test_hessian_chunks_equal_one_shot():
    x = jax.random.normal(jax.random.key(0), (37, 6))
    s = init_hessian(6)
    for a, b in ((0, 5), (5, 20), (20, 37)):
        s = accumulate_hessian(s, x[a:b])
    np.testing.assert_allclose(s.hessian, 2 * x.T @ x / 37, rtol=1e-5, atol=1e-5)
    assert s.count == 37
    np.testing.assert_allclose(layer_hessian(x, chunk_size=8), 2 * x.T @ x / 37, rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        accumulate_hessian(s, jnp.ones((3, 5)))


def test_reconstruction_error_matches_inputs():
    x = jax.random.normal(jax.random.key(1), (50, 5))
    w = jax.random.normal(jax.random.key(2), (5, 3))
    w2 = w.at[0].set(0.0)
    expect = _err(x, w, w2) / float(jnp.sum((x @ w) ** 2))
    assert reconstruction_error(w, w2, layer_hessian(x)) == pytest.approx(expect, rel=1e-4)


# ----------------------------------------------------------------------------- OBS oracle


@pytest.mark.parametrize("q", [0, 3])
def test_obs_remove_matches_brute_force_least_squares(q):
    x = np.asarray(_correlated(3, 40, 5), np.float64)
    w = np.random.default_rng(4).standard_normal((5, 2))
    h = 2 * x.T @ x / 40
    w_new, loss = obs_remove(jnp.asarray(w), jnp.asarray(h), q)
    rest = [i for i in range(5) if i != q]
    sol, *_ = np.linalg.lstsq(x[:, rest], x @ w, rcond=None)  # best fit without input q
    best = np.zeros_like(w)
    best[rest] = sol
    np.testing.assert_allclose(w_new, best, rtol=1e-3, atol=1e-3)
    assert float(w_new[q, 0]) == 0.0
    per_col = np.sum((x @ w - x @ best) ** 2, axis=0) / 40
    np.testing.assert_allclose(loss, per_col, rtol=1e-3)
    zeroed = w.copy()
    zeroed[q] = 0
    assert _err(x, w, np.asarray(w_new)) <= _err(x, w, zeroed) + 1e-6


# ----------------------------------------------------------------------------- SparseGPT


def _reference_sequential_obs(w, h, n, m, percdamp):
    """Non-lazy sequential OBS (float64, explicit inverses) with N:M over the inputs."""
    w = np.asarray(w, np.float64).T.copy()  # (out, in)
    h = np.asarray(h, np.float64).copy()
    d = h.shape[0]
    h += percdamp * np.mean(np.diag(h)) * np.eye(d)
    keep = np.ones_like(w, bool)
    for i in range(d):
        free = np.arange(i, d)
        hinv = np.linalg.inv(h[np.ix_(free, free)])
        if i % m == 0:
            # SparseGPT's saliency uses the Cholesky diagonal of the current inverse.
            u = np.linalg.cholesky(hinv).T
            sc = w[:, i:i + m] ** 2 / np.diag(u)[:m] ** 2
            order = np.argsort(-sc, axis=1, kind="stable")
            grp = np.zeros_like(sc, bool)
            np.put_along_axis(grp, order[:, :n], True, axis=1)
            keep[:, i:i + m] = grp
        err = np.where(keep[:, i], 0.0, w[:, i])
        w[:, i:] -= np.outer(err / hinv[0, 0], hinv[0, :])
        w[:, i] = np.where(keep[:, i], w[:, i], 0.0)
    return w.T, keep.T


def test_sparsegpt_matches_explicit_sequential_obs_any_blocksize():
    x, w = _data(5)
    h = layer_hessian(x)
    ref_w, ref_keep = _reference_sequential_obs(w, h, 2, 4, 0.01)
    for bs in (4, 128):
        got_w, got_keep = sparsegpt_prune(w, h, None, pattern=NM(2, 4, axis=-2), blocksize=bs)
        np.testing.assert_array_equal(got_keep, ref_keep)
        np.testing.assert_allclose(got_w, ref_w, rtol=2e-3, atol=2e-3)


def _reference_unstructured(w, h, sparsity, bs, percdamp):
    """Non-lazy sequential OBS (float64, explicit inverses); mask chosen at each block start."""
    w = np.asarray(w, np.float64).T.copy()  # (out, in)
    h = np.asarray(h, np.float64).copy()
    out, d = w.shape
    h += percdamp * np.mean(np.diag(h)) * np.eye(d)
    u_full = np.linalg.cholesky(np.linalg.inv(h)).T
    keep = np.ones_like(w, bool)
    done = 0
    for i in range(d):
        if i % bs == 0:
            i2 = min(i + bs, d)
            k = round(sparsity * i2 * out) - done
            done += k
            sc = (w[:, i:i2] ** 2 / np.diag(u_full)[i:i2] ** 2).ravel()
            blk = np.ones(sc.size, bool)
            blk[np.argsort(sc, kind="stable")[:k]] = False
            keep[:, i:i2] = blk.reshape(out, i2 - i)
        free = np.arange(i, d)
        hinv = np.linalg.inv(h[np.ix_(free, free)])
        err = np.where(keep[:, i], 0.0, w[:, i])
        w[:, i:] -= np.outer(err / hinv[0, 0], hinv[0, :])
        w[:, i] = np.where(keep[:, i], w[:, i], 0.0)
    return w.T, keep.T


def test_sparsegpt_unstructured_matches_explicit_sequential_obs():
    x, w = _data(40)
    h = layer_hessian(x)
    for bs in (4, 128):
        ref_w, ref_keep = _reference_unstructured(w, h, 0.6, bs, 0.01)
        got_w, got_keep = sparsegpt_prune(w, h, 0.6, blocksize=bs)
        np.testing.assert_array_equal(got_keep, ref_keep)
        np.testing.assert_allclose(got_w, ref_w, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_sparsegpt_not_worse_than_magnitude(sparsity):
    # SparseGPT is a greedy approximation, so "never worse" is not a theorem: at 50% it held
    # for every one of 40 random draws tried; at 80% on this tiny 12x4 layer it failed 3 of
    # 40 (by <= 20%). The test pins: per draw at 50%, and on average over 10 draws at both.
    ratios = []
    for seed in range(10):
        x, w = _data(10 + seed)
        w2, _keep = sparsegpt_prune(w, layer_hessian(x), sparsity)  # one block: a global mask
        mag = jnp.where(magnitude_mask({"w": w}, sparsity)["w"], w, 0.0)
        ratios.append(_err(x, w, w2) / _err(x, w, mag))
        if sparsity == 0.5:
            assert ratios[-1] <= 1.0
    assert np.mean(ratios) < (0.7 if sparsity == 0.5 else 0.9)


def test_sparsegpt_strictly_better_on_duplicated_feature():
    # Inputs 0 and 1 are (nearly) the same feature: magnitude drops w[0] and loses its
    # contribution; OBS moves it onto input 1 and reconstructs almost perfectly.
    z = jnp.asarray(np.random.default_rng(7).standard_normal((100, 3)), jnp.float32)
    x = jnp.concatenate([z[:, :1], z[:, :1] + 1e-3 * z[:, 1:2], z[:, 2:]], axis=1)
    w = jnp.array([[0.5], [2.0], [3.0]])
    w2, keep = sparsegpt_prune(w, layer_hessian(x), 1 / 3, percdamp=1e-6)
    assert keep[:, 0].tolist() == [False, True, True]
    mag = w.at[0].set(0.0)
    assert _err(x, w, w2) < 1e-3 * _err(x, w, mag)
    assert float(w2[1, 0]) == pytest.approx(2.5, abs=1e-2)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_sparsegpt_exact_sparsity(sparsity):
    x, w = _data(8, rho=0.0)
    w2, keep = sparsegpt_prune(w, layer_hessian(x), sparsity, blocksize=4)
    assert int((~keep).sum()) == round(sparsity * w.size)
    assert bool(jnp.all(w2[~keep] == 0))
    assert keep.shape == w.shape and keep.dtype == jnp.bool_


@settings(max_examples=15)
@given(sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 2**16), rho=st.floats(0.0, 0.95))
def test_sparsegpt_invariants_property(sparsity, seed, rho):
    # One shape and blocksize: the counts are traced, so no example recompiles.
    x, w = _data(seed, rho=rho)
    w2, keep = sparsegpt_prune(w, layer_hessian(x), sparsity, blocksize=4)
    assert int((~keep).sum()) == round(sparsity * 48)
    assert bool(jnp.all(w2[~keep] == 0)) and bool(jnp.all(jnp.isfinite(w2)))
    if sparsity == 0.0:
        np.testing.assert_array_equal(w2, w)


@pytest.mark.parametrize("axis", [-1, -2])
def test_sparsegpt_nm_valid(axis):
    x, w = _data(11)
    w2, keep = sparsegpt_prune(w, layer_hessian(x), None, pattern=NM(2, 4, axis=axis),
                               blocksize=4)
    k = np.asarray(keep)
    groups = k.reshape(3, 4, 4).sum(1) if axis == -2 else k.reshape(12, 1, 4).sum(2)
    assert (groups == 2).all()
    assert bool(jnp.all(w2[~keep] == 0))
    assert bool(jnp.all(w2[keep] != 0))
    mag = jnp.where(NM(2, 4, axis=axis).mask(jnp.abs(w)), w, 0.0)
    assert _err(x, w, w2) <= _err(x, w, mag)
    if axis == -1:  # the string form, with sparsity = 1 - n/m, is accepted too
        w3, _ = sparsegpt_prune(w, layer_hessian(x), 0.5, pattern="2:4", blocksize=4)
        np.testing.assert_array_equal(w3, w2)


def test_sparsegpt_sparsity_zero_full_rank_is_identity():
    x, w = _data(13, rho=0.5)
    w2, keep = sparsegpt_prune(w, layer_hessian(x), 0.0, blocksize=4)
    assert bool(keep.all())
    np.testing.assert_array_equal(w2, w)


def test_sparsegpt_dead_inputs_pruned_first():
    x, _ = _data(15)
    x = x.at[:, 2].set(0.0)
    w = jnp.ones((12, 4)) * 5.0
    _w2, keep = sparsegpt_prune(w, layer_hessian(x), 4 / 48)  # one block: a global mask
    assert keep[2].tolist() == [False] * 4
    assert int((~keep).sum()) == 4


def test_sparsegpt_bad_inputs_name_the_path():
    h = jnp.eye(4)
    w = jnp.ones((4, 2))
    for s in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="fc1/kernel"):
            sparsegpt_prune(w, h, s, path="fc1/kernel")
    with pytest.raises(ValueError, match="fc1/kernel.*hessian has shape"):
        sparsegpt_prune(w, jnp.eye(3), 0.5, path="fc1/kernel")
    with pytest.raises(ValueError, match="NaN"):
        sparsegpt_prune(w, h.at[0, 0].set(jnp.nan), 0.5, path="fc1/kernel")
    with pytest.raises(ValueError, match="2-d Dense kernel"):
        sparsegpt_prune(jnp.ones((2, 2, 4, 2)), h, 0.5)
    with pytest.raises(ValueError, match="sparsity=None"):
        sparsegpt_prune(w, h, 0.3, pattern=NM(2, 4, axis=-2), path="fc1/kernel")
    with pytest.raises(ValueError, match="percdamp"):
        sparsegpt_prune(w, jnp.zeros((4, 4)).at[0, 1].set(1.0).at[1, 0].set(1.0), 0.5,
                        percdamp=0.0)


# ----------------------------------------------------------------------------- im2col


@pytest.mark.parametrize("padding,strides", [("SAME", 2), (((1, 0), (2, 1)), 1)])
def test_conv_patches_reproduce_conv(padding, strides):
    conv = nn.Conv(5, (3, 2), strides=strides, padding=padding, use_bias=False)
    x = jax.random.normal(jax.random.key(16), (2, 7, 6, 3))
    v = conv.init(jax.random.key(17), x)
    y = conv.apply(v, x)
    p = conv_patches(x, conv)
    np.testing.assert_allclose(p @ conv_kernel_2d(v["params"]["kernel"]), y.reshape(-1, 5),
                               rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- model driver


def _np_magnitude(w, sparsity):
    """Test-side magnitude pruning (numpy; ties never occur with random weights)."""
    w = np.asarray(w)
    k = round(sparsity * w.size)
    keep = np.ones(w.size, bool)
    keep[np.argsort(np.abs(w).ravel(), kind="stable")[:k]] = False
    return np.where(keep.reshape(w.shape), w, 0.0)


def _mlp_setup(key=0):
    model = mlp((16, 24, 20, 5))
    v = jax.jit(model.init)(jax.random.key(key), jnp.zeros((1, 16)))
    x = _correlated(key + 1, 256, 16, rho=0.9)
    return model, v, x


def test_obs_prune_model_closer_to_dense_than_magnitude():
    model, v, x = _mlp_setup()
    res = obs_prune(model.apply, v, x, 0.6, blocksize=8)
    dense = model.apply(v, x)
    mag_params = {k: {"kernel": _np_magnitude(d["kernel"], 0.6), "bias": d["bias"]}
                  for k, d in v["params"].items()}
    d_obs = float(jnp.sum((model.apply(res.variables, x) - dense) ** 2))
    d_mag = float(jnp.sum((model.apply({"params": mag_params}, x) - dense) ** 2))
    assert d_obs < d_mag
    assert [s.path for s in res.layers] == ["fc1/kernel", "fc2/kernel", "fc3/kernel"]
    for s in res.layers:
        assert s.sparsity == pytest.approx(0.6, abs=2e-3) and s.error <= s.magnitude_error
    assert res.masks["fc1"]["bias"].all()
    np.testing.assert_array_equal(res.variables["params"]["fc1"]["bias"], v["params"]["fc1"]["bias"])
    p = res.variables["params"]
    assert bool(jnp.all(jnp.where(res.masks["fc2"]["kernel"], 0.0, p["fc2"]["kernel"]) == 0))


def test_obs_prune_is_sequential_and_chunked():
    model, v, x = _mlp_setup(3)
    p = v["params"]
    kw = {"blocksize": 8, "percdamp": 0.01}
    res = obs_prune(model.apply, v, x, 0.5, where=r"fc[12]/kernel", **kw)
    # Manual SparseGPT: fc1 from the raw inputs, fc2 from fc1-pruned hidden activations.
    w1, _ = sparsegpt_prune(p["fc1"]["kernel"], layer_hessian(x), 0.5, **kw)
    h_pruned = jax.nn.relu(x @ w1 + p["fc1"]["bias"])
    w2, _ = sparsegpt_prune(p["fc2"]["kernel"], layer_hessian(h_pruned), 0.5, **kw)
    got = res.variables["params"]
    np.testing.assert_allclose(got["fc1"]["kernel"], w1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["fc2"]["kernel"], w2, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(got["fc3"]["kernel"], p["fc3"]["kernel"])
    # With dense inputs (sequential=False) layer 2 differs and uses the dense activations.
    res_nd = obs_prune(model.apply, v, x, 0.5, where=r"fc[12]/kernel", sequential=False, **kw)
    h_dense = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    w2d, _ = sparsegpt_prune(p["fc2"]["kernel"], layer_hessian(h_dense), 0.5, **kw)
    np.testing.assert_allclose(res_nd.variables["params"]["fc2"]["kernel"], w2d, rtol=1e-3,
                               atol=1e-4)
    assert not np.allclose(w2d, w2, atol=1e-4)
    # Chunked calibration gives the same answer; so does a list of chunks.
    res_c = obs_prune(model.apply, v, x, 0.5, where=r"fc[12]/kernel", chunk_size=100, **kw)
    res_l = obs_prune(model.apply, v, [x[:50], x[50:]], 0.5, where=r"fc[12]/kernel", **kw)
    for r in (res_c, res_l):
        np.testing.assert_allclose(r.variables["params"]["fc2"]["kernel"], w2, rtol=1e-3,
                                   atol=1e-4)


def test_obs_prune_sparsity_map_and_bare_params():
    model, v, x = _mlp_setup(5)
    apply = lambda params, xb: model.apply({"params": params}, xb)
    res = obs_prune(apply, v["params"], x[:64], {r"fc1/kernel": 0.25, r".*": 0.75}, blocksize=8)
    assert [round(s.sparsity, 3) for s in res.layers] == [0.25, 0.75, 0.75]
    assert set(res.variables) == {"fc1", "fc2", "fc3"}


class _TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="conv1")(x))
        x = nn.Conv(8, (3, 3), strides=2, padding="VALID", name="conv2")(x)
        return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


def test_obs_prune_conv_via_im2col():
    model = _TinyCNN()
    x = jax.random.normal(jax.random.key(30), (16, 8, 8, 2))
    v = jax.jit(model.init)(jax.random.key(31), x)
    res = obs_prune(model.apply, v, x, 0.5, blocksize=16, where=r"conv.*/kernel")
    assert [s.path for s in res.layers] == ["conv1/kernel", "conv2/kernel"]
    np.testing.assert_array_equal(res.variables["params"]["fc"]["kernel"],
                                  v["params"]["fc"]["kernel"])
    assert res.layers[1].samples == 16 * 3 * 3
    for s in res.layers:
        assert s.sparsity == pytest.approx(0.5, abs=0.02)
        assert s.error <= s.magnitude_error + 1e-6
    k = res.variables["params"]["conv2"]["kernel"]
    assert k.shape == v["params"]["conv2"]["kernel"].shape
    assert bool(jnp.all(jnp.where(res.masks["conv2"]["kernel"], 0.0, k) == 0))


def test_obs_prune_bad_inputs():
    model, v, x = _mlp_setup()
    with pytest.raises(ValueError, match="chunk 0 contains NaN"):
        obs_prune(model.apply, v, x.at[3, 2].set(jnp.nan), 0.5)
    with pytest.raises(ValueError, match="obs_prune: where='nothing/here' matches no parameter"):
        obs_prune(model.apply, v, x, 0.5, where=r"nothing/here")
    with pytest.raises(ValueError, match="fc2/kernel"):
        obs_prune(model.apply, v, x, {r"fc2/kernel": 1.0, r".*": 0.5})
    with pytest.raises(ValueError, match="fc3/kernel"):
        obs_prune(model.apply, v, x, {r"fc[12]/kernel": 0.5})
    with pytest.raises(TypeError, match="fc1/bias"):
        obs_prune(model.apply, v, x, 0.5, where=r"fc1/.*")
    with pytest.raises(ValueError, match="empty"):
        obs_prune(model.apply, v, x[:0], 0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        obs_prune(model.apply, v, x, 0.5, chunk_size=0)
    # a sparsity pattern that matches no selected kernel used to be ignored silently
    with pytest.raises(ValueError, match=r"(?s)sparsity pattern 'fc4/kernel' matches no selected "
                                         r"kernel path.*fc1/kernel"):
        obs_prune(model.apply, v, x, {r"fc4/kernel": 0.9, r".*": 0.5})


def test_obs_prune_sparsity_rule_forms_and_compressed_leaves():
    model, v, x = _mlp_setup()
    res = obs_prune(model.apply, v, x, [(r"fc1/.*", 0.25), (r".*", 0.5)], blocksize=8)
    assert [(s.path, s.sparsity) for s in res.layers] == [
        ("fc1/kernel", 0.25), ("fc2/kernel", 0.5), ("fc3/kernel", 0.5)]
    res2 = obs_prune(model.apply, v, x, lambda path, w: 0.25 if w.shape[0] == 16 else 0.5,
                     blocksize=8)
    assert [s.sparsity for s in res2.layers] == [0.25, 0.5, 0.5]
    # a compressed leaf elsewhere in the tree is carried over whole
    lr = jc.LowRank(jnp.ones((4, 2)), jnp.ones((2, 3)))
    p = {**v["params"], "extra": {"kernel": lr}}
    res3 = obs_prune(lambda q, xx: model.apply({"params": {k: q[k] for k in v["params"]}}, xx),
                     p, x, 0.5, where=r"fc\d/kernel", blocksize=8)
    assert res3.variables["extra"]["kernel"] is lr
    assert [s.path for s in res3.layers] == ["fc1/kernel", "fc2/kernel", "fc3/kernel"]


def test_block_counts_sum_exactly():
    from jaxcomp.prune.oneshot.obs import _block_counts

    for s, n, o, bs in itertools.product((0.1, 0.33, 0.5, 0.77), (7, 16, 33), (1, 3), (4, 128)):
        assert sum(_block_counts(s, n, o, bs)) == round(s * n * o)
