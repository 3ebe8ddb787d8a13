"""Tests for feature distillation: FitNets hints, attention transfer, FSP and relational KD.

Oracles are NumPy re-implementations (loops where that is clearer); each test
runs its JAX side in one ``jax.jit``.
"""

import itertools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcomp.distill import (
    apply_regressor,
    attention_map,
    attention_transfer_loss,
    fsp_loss,
    fsp_matrix,
    hint_loss,
    init_regressor,
    multi_teacher_hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
)

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def np_masked_mean(per, mask):
    return per.mean() if mask is None else (per * mask).sum() / mask.sum()


# ----------------------------------------------------------------------------- hints


def test_init_regressor_shapes_and_errors():
    key = jax.random.key(0)
    conv = init_regressor(key, (2, 4, 4, 8), (2, 4, 4, 16))
    assert conv["kernel"].shape == (8, 16) and conv["bias"].shape == (16,)
    assert np.all(np.asarray(conv["bias"]) == 0)
    lin = init_regressor(
        key, jax.ShapeDtypeStruct((2, 3, 3, 2), jnp.float32), (2, 5), kind="linear"
    )
    assert lin["kernel"].shape == (18, 5)
    with pytest.raises(ValueError, match="kind"):
        init_regressor(key, (2, 3), (2, 4), kind="mlp")
    with pytest.raises(ValueError, match="batch axis"):
        init_regressor(key, (3,), (2, 4))
    with pytest.raises(TypeError, match="shape"):
        init_regressor(key, "abc", (2, 4))


def test_hint_loss_matches_numpy_with_mask():
    s, t = randn(4, 3, 3, 5), randn(4, 3, 3, 7)
    reg = {"kernel": randn(5, 7), "bias": randn(7)}
    mask = np.array([1, 0, 1, 1], np.float32)
    got, got_nomask = jax.jit(lambda s, t, r: (hint_loss(s, t, r, mask=mask), hint_loss(s, t, r)))(
        s, t, reg
    )
    per = ((s @ reg["kernel"] + reg["bias"] - t) ** 2).reshape(4, -1).mean(-1)
    np.testing.assert_allclose(got, np_masked_mean(per, mask), rtol=1e-5)
    np.testing.assert_allclose(got_nomask, per.mean(), rtol=1e-5)


def test_hint_linear_regressor_on_feature_maps_and_identity():
    s, t = randn(2, 2, 2, 3), randn(2, 4, 5)
    reg = init_regressor(jax.random.key(1), s.shape, t.shape, kind="linear")
    got = jax.jit(hint_loss)(s, t, reg)
    pred = s.reshape(2, -1) @ np.asarray(reg["kernel"]) + np.asarray(reg["bias"])
    np.testing.assert_allclose(got, ((pred - t.reshape(2, -1)) ** 2).mean(), rtol=1e-5)
    same = randn(2, 6)
    assert float(jax.jit(hint_loss)(same, same)) == 0.0


def test_hint_loss_gradients_reach_student_and_regressor():
    s, t = randn(3, 2, 2, 4), randn(3, 2, 2, 6)
    reg = init_regressor(jax.random.key(2), s.shape, t.shape)
    gs, gr = jax.jit(jax.grad(hint_loss, argnums=(0, 2)))(s, t, reg)
    assert np.abs(gs).sum() > 0 and np.abs(gr["kernel"]).sum() > 0
    # d/dbias of mean((s W + b - t)^2) = 2 * mean over positions and examples of the residual.
    resid = s @ np.asarray(reg["kernel"]) - t
    np.testing.assert_allclose(gr["bias"], 2 * resid.reshape(-1, 6).mean(0) / 6, rtol=1e-4)


def test_hint_spatial_mismatch_error_and_pooling():
    s, t = randn(2, 4, 4, 3), randn(2, 2, 2, 3)
    with pytest.raises(ValueError, match="pool='avg'"):
        hint_loss(s, t)
    got_avg, got_max = jax.jit(
        lambda s, t: (hint_loss(s, t, pool="avg"), hint_loss(s, t, pool="max"))
    )(s, t)
    blocks = s.reshape(2, 2, 2, 2, 2, 3)
    np.testing.assert_allclose(got_avg, ((blocks.mean((2, 4)) - t) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(got_max, ((blocks.max((2, 4)) - t) ** 2).mean(), rtol=1e-5)
    # The teacher may be the larger one too.
    np.testing.assert_allclose(jax.jit(lambda: hint_loss(t, s, pool="avg"))(), got_avg, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple"):
        hint_loss(randn(2, 5, 5, 3), t, pool="avg")


def test_hint_bad_regressor_and_batch():
    s, t = randn(2, 4), randn(2, 6)
    with pytest.raises(ValueError, match="does not fit"):
        hint_loss(s, t, {"kernel": np.zeros((5, 6)), "bias": np.zeros(6)})
    with pytest.raises(ValueError, match="init_regressor"):
        hint_loss(s, t)  # widths differ and no regressor
    with pytest.raises(TypeError, match="regressor_params"):
        apply_regressor(s, np.zeros((4, 6)))
    with pytest.raises(ValueError, match="batch"):
        hint_loss(randn(3, 4), t)


def test_multi_teacher_hint_loss_is_weighted_sum():
    s, t1, t2 = randn(3, 4), randn(3, 5), randn(3, 6)
    r1 = init_regressor(jax.random.key(3), s.shape, t1.shape)
    r2 = init_regressor(jax.random.key(4), s.shape, t2.shape)

    @jax.jit
    def f():
        return (
            multi_teacher_hint_loss(s, [t1, t2], [r1, r2], weights=[1.0, 3.0]),
            hint_loss(s, t1, r1),
            hint_loss(s, t2, r2),
        )

    got, h1, h2 = f()
    np.testing.assert_allclose(got, 0.25 * h1 + 0.75 * h2, rtol=1e-6)


# ------------------------------------------------------------------ attention transfer


def np_attention(f, p=2):
    q = (np.abs(f) ** p).sum(-1).reshape(f.shape[0], -1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def test_attention_map_and_losses_match_numpy():
    s1, t1 = randn(3, 4, 4, 5), randn(3, 4, 4, 8)
    s2, t2 = randn(3, 2, 2, 6), randn(3, 2, 2, 9)
    mask = np.array([1, 1, 0], np.float32)
    beta = 7.0

    @jax.jit
    def f():
        return (
            attention_map(s1),
            attention_map(s1, p=1.0),
            attention_transfer_loss([s1, s2], [t1, t2], beta=beta, mask=mask),
            attention_transfer_loss([s1, s2], [t1, t2], beta=beta, squared=False, mask=mask),
        )

    q2, q1, sq, norm = f()
    np.testing.assert_allclose(q2, np_attention(s1), rtol=1e-5)
    np.testing.assert_allclose(q1, np_attention(s1, p=1), rtol=1e-5)
    want_sq = want_norm = 0.0
    for s, t in [(s1, t1), (s2, t2)]:
        d = np_attention(s) - np_attention(t)
        want_sq += np_masked_mean((d**2).mean(-1), mask)
        want_norm += np_masked_mean(np.linalg.norm(d, axis=-1), mask)
    np.testing.assert_allclose(sq, beta / 2 * want_sq, rtol=1e-5)
    np.testing.assert_allclose(norm, beta / 2 * want_norm, rtol=1e-5)


def test_attention_zero_maps_and_invariances():
    zero = np.zeros((2, 3, 3, 4), np.float32)
    f = randn(2, 3, 3, 4)

    @jax.jit
    def run(f):
        g = jax.grad(lambda z: attention_transfer_loss(z, f, squared=False))(zero)
        return attention_map(zero), g, attention_transfer_loss(f, 3.0 * f)

    q, g, scaled = run(f)
    assert np.all(np.asarray(q) == 0) and np.all(np.isfinite(g))
    assert abs(float(scaled)) < 1e-6


def test_attention_errors():
    with pytest.raises(ValueError, match="spatial"):
        attention_transfer_loss(randn(2, 4, 4, 3), randn(2, 2, 2, 3))
    with pytest.raises(ValueError, match="spatial"):
        attention_map(randn(2, 3))
    with pytest.raises(ValueError, match="empty"):
        attention_transfer_loss([randn(2, 2, 2, 3)], [])
    with pytest.raises(ValueError, match="entries"):
        attention_transfer_loss([randn(2, 2, 2, 3)], [randn(2, 2, 2, 3)] * 2)
    with pytest.raises(ValueError, match="beta"):
        attention_transfer_loss(randn(2, 2, 2, 3), randn(2, 2, 2, 3), beta=-1.0)


# ----------------------------------------------------------------------------- FSP


def np_fsp(f1, f2):
    b, h, w, c1 = f1.shape
    out = np.zeros((b, c1, f2.shape[-1]))
    for n, i, j in itertools.product(range(b), range(c1), range(f2.shape[-1])):
        out[n, i, j] = sum(f1[n, x, y, i] * f2[n, x, y, j] for x in range(h) for y in range(w))
    return out / (h * w)


def test_fsp_matrix_and_loss_brute_force():
    s1, s2 = randn(2, 3, 3, 2), randn(2, 3, 3, 3)
    t1, t2 = randn(2, 3, 3, 2), randn(2, 3, 3, 3)
    u1, u2 = randn(2, 2, 2, 2), randn(2, 2, 2, 4)
    mask = np.array([0.0, 1.0], np.float32)

    @jax.jit
    def f():
        pairs_s, pairs_t = [(s1, s2), (u1, u2)], [(t1, t2), (u2[..., :2], u1)]
        return (
            fsp_matrix(s1, s2),
            fsp_loss(pairs_s[:1], pairs_t[:1]),
            fsp_loss(pairs_s[:1], pairs_t[:1], reduction="mean", mask=mask),
            fsp_loss([(s1, s2), (u1, u1)], [(t1, t2), (u2[..., :2], u1)], weights=[1.0, 0.5]),
        )

    g, total, mean_masked, weighted = f()
    gs, gt = np_fsp(s1, s2), np_fsp(t1, t2)
    np.testing.assert_allclose(g, gs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, ((gs - gt) ** 2).sum((1, 2)).mean(), rtol=1e-5)
    np.testing.assert_allclose(mean_masked, ((gs - gt) ** 2).mean((1, 2))[1], rtol=1e-5)
    second = ((np_fsp(u1, u1) - np_fsp(u2[..., :2], u1)) ** 2).sum((1, 2)).mean()
    np.testing.assert_allclose(weighted, total + 0.5 * second, rtol=1e-5)


def test_fsp_errors():
    a, b = randn(2, 3, 3, 2), randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="equal channel counts"):
        fsp_loss([(a, b)], [(a, a)])
    with pytest.raises(ValueError, match="spatial"):
        fsp_matrix(a, randn(2, 2, 2, 3))
    with pytest.raises(ValueError, match="reduction"):
        fsp_loss([(a, b)], [(a, b)], reduction="max")
    with pytest.raises(ValueError, match="entries"):
        fsp_loss([(a, b)], [(a, b), (a, b)])


# ------------------------------------------------------------------------ relational


def np_huber(x):
    ax = np.abs(x)
    return np.where(ax < 1, 0.5 * x**2, ax - 0.5)


def np_rkd(s, t, mask):
    """Loops over pairs and distinct triplets of valid examples."""
    idx = [i for i in range(len(s)) if mask[i]]
    pairs = [(i, j) for i in idx for j in idx if i != j]
    ds = {p: np.linalg.norm(s[p[0]] - s[p[1]]) for p in pairs}
    dt = {p: np.linalg.norm(t[p[0]] - t[p[1]]) for p in pairs}
    mus, mut = np.mean(list(ds.values())), np.mean(list(dt.values()))
    dist = np.mean([np_huber(ds[p] / mus - dt[p] / mut) for p in pairs])

    def cos(e, i, j, k):
        a, b = e[i] - e[j], e[k] - e[j]
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    trip = [(i, j, k) for i in idx for j in idx for k in idx if len({i, j, k}) == 3]
    angle = np.mean([np_huber(cos(s, *x) - cos(t, *x)) for x in trip])
    return dist, angle


def test_rkd_matches_brute_force_with_mask():
    s, t = randn(6, 3).astype(np.float64), randn(6, 5).astype(np.float64) * 4
    mask = np.array([1, 1, 0, 1, 1, 1], np.float32)

    @jax.jit
    def f(s, t):
        return (
            rkd_distance_loss(s, t, mask=mask),
            rkd_angle_loss(s, t, mask=mask),
            rkd_loss(s, t, mask=mask),
            rkd_distance_loss(s, t),
        )

    d, a, both, d_all = f(s.astype(np.float32), t.astype(np.float32))
    want_d, want_a = np_rkd(s, t, mask)
    np.testing.assert_allclose(d, want_d, rtol=1e-4)
    np.testing.assert_allclose(a, want_a, rtol=1e-4)
    np.testing.assert_allclose(both, 25 * want_d + 50 * want_a, rtol=1e-4)
    np.testing.assert_allclose(d_all, np_rkd(s, t, np.ones(6))[0], rtol=1e-4)


def test_rkd_gradients_finite_with_duplicate_embeddings():
    s = randn(4, 3)
    s[1] = s[0]  # zero distance pair
    t = randn(4, 3)
    g = jax.jit(jax.grad(lambda s: rkd_loss(s, t)))(s)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


@jax.jit
def _rkd_pair(s, t):
    return rkd_distance_loss(s, t), rkd_angle_loss(s, t)


@given(
    hnp.arrays(np.float32, (5, 3), elements=st.floats(-3, 3, width=32)),
    st.floats(0.2, 5.0),
    st.floats(0.0, 6.3),
)
def test_rkd_invariant_to_similarity_transforms(e, scale, theta):
    # Distinct points, so every relation is well defined.
    e = e + np.arange(5, dtype=np.float32)[:, None] * np.array([1.0, 2.0, 3.0], np.float32)
    c, s_ = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]], np.float32)
    moved = scale * e @ rot.T + np.array([1.0, -2.0, 0.5], np.float32)
    d, a = _rkd_pair(moved, e)
    assert float(d) < 1e-4 and float(a) < 1e-4


def test_rkd_errors():
    with pytest.raises(ValueError, match="examples"):
        rkd_distance_loss(randn(3, 2), randn(4, 2))
    with pytest.raises(ValueError, match="mask"):
        rkd_angle_loss(randn(3, 2), randn(3, 2), mask=np.ones(4))
    with pytest.raises(ValueError, match="batch"):
        rkd_distance_loss(randn(3), randn(3))
