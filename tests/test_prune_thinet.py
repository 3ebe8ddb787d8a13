"""Tests for jaxcomp.prune.oneshot.thinet: greedy / LASSO channel selection and refits."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.models import mlp
from jaxcomp.prune.oneshot.thinet import (
    channel_gram,
    greedy_channel_selection,
    lasso_channel_selection,
    least_squares_refit,
    thinet_prune,
    thinet_prune_layer,
)


def _removal_error(x, w, removed):
    """||Σ_{j∈T} x_j w_jᵀ||² computed from the data."""
    idx = list(removed)
    return float(np.sum((x[:, idx] @ w[idx]) ** 2))


def _orthogonal_inputs(seed, n, c):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, c)))
    return q * rng.uniform(0.5, 3.0, size=c) * np.sqrt(n)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_equals_brute_force_on_orthogonal_inputs(seed):
    c, n_prune = 7, 3
    x = _orthogonal_inputs(seed, 50, c)
    w = np.random.default_rng(100 + seed).standard_normal((c, 4))
    g = channel_gram(x.T @ x / 50, w)
    keep = greedy_channel_selection(g, n_prune)
    best = min(itertools.combinations(range(c), n_prune), key=lambda t: _removal_error(x, w, t))
    assert sorted(np.flatnonzero(~keep).tolist()) == sorted(best)


def test_greedy_objective_matches_data_and_general_case_is_sane():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 6)) @ rng.standard_normal((6, 6))
    w = rng.standard_normal((6, 3))
    g = channel_gram(x.T @ x / 80, w)
    t = (1, 4)
    assert g[np.ix_(t, t)].sum() == pytest.approx(_removal_error(x, w, t) / 80, rel=1e-9)
    keep = greedy_channel_selection(g, 2)
    errs = sorted(_removal_error(x, w, s) for s in itertools.combinations(range(6), 2))
    got = _removal_error(x, w, np.flatnonzero(~keep))
    assert got <= errs[len(errs) // 2]  # greedy is at least better than the median subset


def test_channel_gram_groups_features():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 6))
    a = a @ a.T
    w = rng.standard_normal((6, 2))
    g = channel_gram(a, w, np.repeat(np.arange(3), 2))
    full = a * (w @ w.T)
    assert g[1, 2] == pytest.approx(full[2:4, 4:6].sum())


def test_least_squares_refit_and_scale_reduce_error():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((200, 10)) @ rng.standard_normal((10, 10)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((10, 5)), jnp.float32)
    errs = {}
    for refit in ("lstsq", "scale", None):
        r = thinet_prune(w, x, 0.4, refit=refit)
        errs[refit] = r.error
        assert int(r.keep.sum()) == 6
        assert bool(jnp.all(r.kernel[~r.keep] == 0))
    assert errs["lstsq"] <= errs["scale"] + 1e-9 <= errs[None] + 2e-9
    assert errs["lstsq"] < errs[None]
    xn = np.asarray(x, np.float64)
    r = thinet_prune(w, x, 0.4)
    direct = np.sum((xn @ np.asarray(w) - xn @ np.asarray(r.kernel)) ** 2) / np.sum(
        (xn @ np.asarray(w)) ** 2)
    assert r.error == pytest.approx(direct, rel=1e-3)
    # Least squares is optimal: no perturbation of the kept rows does better.
    k = np.asarray(r.keep)
    ref = least_squares_refit(xn.T @ xn, np.asarray(w, np.float64), k)
    sol, *_ = np.linalg.lstsq(xn[:, k], xn @ np.asarray(w, np.float64), rcond=None)
    np.testing.assert_allclose(ref[k], sol, rtol=1e-5, atol=1e-6)


def test_lasso_keeps_informative_channels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8))
    w = rng.standard_normal((8, 4)) * np.array([5, 0.01, 4, 0.02, 3, 0.01, 6, 0.03])[:, None]
    g = channel_gram(x.T @ x / 300, w)
    keep = lasso_channel_selection(g, 4)
    assert np.flatnonzero(keep).tolist() == [0, 2, 4, 6]
    for n_keep in range(9):
        assert int(lasso_channel_selection(g, n_keep).sum()) == n_keep
    r = thinet_prune(jnp.asarray(w, jnp.float32), jnp.asarray(x, jnp.float32), 0.5,
                     method="lasso")
    assert np.flatnonzero(np.asarray(r.keep)).tolist() == [0, 2, 4, 6]


def test_dead_channels_go_first():
    x = np.random.default_rng(4).standard_normal((50, 5))
    x[:, 3] = 0.0
    w = np.ones((5, 2))
    g = channel_gram(x.T @ x / 50, w)
    assert not greedy_channel_selection(g, 1)[3]
    assert not lasso_channel_selection(g, 4)[3]


def test_conv_consumer_via_im2col():
    conv = nn.Conv(4, (3, 3), padding="SAME", use_bias=False)
    x = jax.random.normal(jax.random.key(5), (4, 6, 6, 5))
    v = conv.init(jax.random.key(6), x)
    k = v["params"]["kernel"]
    r = thinet_prune(k, x, 0.4, conv=conv)
    assert int(r.keep.sum()) == 3 and r.kernel.shape == k.shape
    assert bool(jnp.all(r.kernel[:, :, ~r.keep, :] == 0))
    y = conv.apply(v, x)
    y2 = conv.apply({"params": {"kernel": r.kernel}}, x)
    direct = float(jnp.sum((y - y2) ** 2) / jnp.sum(y ** 2))
    assert r.error == pytest.approx(direct, rel=1e-3, abs=1e-6)
    assert r.error <= r.error_no_refit


def test_thinet_prune_layer_zeros_producer_and_refits_consumer():
    model = mlp((10, 16, 12, 3))
    v = model.init(jax.random.key(7), jnp.zeros((1, 10)))
    x = jax.random.normal(jax.random.key(8), (128, 10))
    v2, r = thinet_prune_layer(model.apply, v, x, "fc2", 0.5, producer="fc1")
    p, p2 = v["params"], v2["params"]
    keep = r.keep
    assert int(keep.sum()) == 8
    assert bool(jnp.all(p2["fc1"]["kernel"][:, ~keep] == 0))
    assert bool(jnp.all(p2["fc1"]["bias"][~keep] == 0))
    np.testing.assert_array_equal(p2["fc2"]["kernel"], r.kernel)
    np.testing.assert_array_equal(p2["fc3"]["kernel"], p["fc3"]["kernel"])
    # The error reported is the fc2 pre-activation error on the calibration data.
    h = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    h2 = jax.nn.relu(x @ p2["fc1"]["kernel"] + p2["fc1"]["bias"])
    y, y2 = h @ p["fc2"]["kernel"], h2 @ p2["fc2"]["kernel"]
    assert r.error == pytest.approx(float(jnp.sum((y - y2) ** 2) / jnp.sum(y ** 2)), rel=1e-3)
    # Better than dropping the smallest-norm producer filters without a refit.
    norms = jnp.linalg.norm(p["fc1"]["kernel"], axis=0)
    k_norm = norms >= jnp.sort(norms)[8]
    y3 = jnp.where(k_norm, h, 0) @ p["fc2"]["kernel"]
    assert float(jnp.sum((y - y2) ** 2)) < float(jnp.sum((y - y3) ** 2))


def test_bad_inputs():
    w = jnp.ones((4, 2))
    x = jnp.ones((10, 4))
    for s in (1.0, -0.5):
        with pytest.raises(ValueError, match="fc2/kernel"):
            thinet_prune(w, x, s, path="fc2/kernel")
    with pytest.raises(ValueError, match="NaN"):
        thinet_prune(w, x.at[0, 0].set(jnp.nan), 0.5, path="fc2/kernel")
    with pytest.raises(ValueError, match="fc2/kernel.*3 features"):
        thinet_prune(w, jnp.ones((10, 3)), 0.5, path="fc2/kernel")
    with pytest.raises(ValueError, match="method"):
        thinet_prune(w, x, 0.5, method="random")
    with pytest.raises(ValueError, match="conv="):
        thinet_prune(jnp.ones((3, 3, 4, 2)), jnp.ones((1, 5, 5, 4)), 0.5)
    model = mlp((4, 6, 2))
    v = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="fc9"):
        thinet_prune_layer(model.apply, v, jnp.ones((8, 4)), "fc9", 0.5)
    with pytest.raises(ValueError, match="NaN"):
        thinet_prune_layer(model.apply, v, jnp.full((8, 4), jnp.nan), "fc2", 0.5)
