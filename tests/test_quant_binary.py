"""Binary and ternary networks: jaxcomp.quant.binary.sign, binary_core and ternary.

Forward values against NumPy oracles (np.linalg.lstsq for ABC-Net's α,
brute-force loops for XNOR's K), straight-through gradients against central
differences of the surrogate each estimator differentiates (eager and
jitted), the compressors' selection, projection, state and errors, and the
bits the metrics count (hand-computed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcomp as jc
from jaxcomp.config import build_compressor
from jaxcomp.quant.binary.core import BinaryState, binary_export, straight_through
from jaxcomp.quant.binary.sign import (
    binarize,
    binary_activation,
    binary_connect,
    xnor_binarization,
    xnor_input_scale,
    xnor_weights,
)
from jaxcomp.quant.binary.ternary import (
    abc_bases,
    abc_binarization,
    abc_binarize,
    abc_shifts,
    ternarize,
    ternary_weights,
)

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 4)).astype(np.float32)          # (in, out)
CONV = RNG.normal(size=(2, 2, 3, 4)).astype(np.float32)  # (h, w, in, out)
C = RNG.normal(size=W.shape)                             # loss weights


def loss_np(v):
    return np.sum(C * np.sin(v))


def loss(v):
    return jnp.sum(jnp.asarray(C, jnp.float32) * jnp.sin(v.astype(jnp.float32)))


def fd_grad(f, x, eps=1e-6):
    """Central differences of a float64 NumPy function."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def grads_eager_and_jit(fn, w):
    f = lambda w: loss(fn(w))
    return np.asarray(jax.grad(f)(w)), np.asarray(jax.jit(jax.grad(f))(w))


# ----------------------------------------------------------------------- functions


def test_binarize_deterministic_values_and_dtypes():
    w = jnp.array([0.3, -0.2, 0.0, -0.0, 1.5])
    assert binarize(w).tolist() == [1.0, -1.0, 1.0, 1.0, 1.0]
    assert binarize(w, scale=0.25).tolist() == [0.25, -0.25, 0.25, 0.25, 0.25]
    b = binarize(w.astype(jnp.bfloat16), scale=0.1)
    assert b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(b, np.float32),
                                  np.where(np.asarray(w) >= 0, 1, -1) * np.float32(
                                      jnp.bfloat16(0.1)))


@pytest.mark.parametrize("ste,bound", [("identity", None), ("clipped", 0.5)])
def test_binarize_straight_through_gradient(ste, bound):
    w = jnp.asarray(W)
    v0 = np.where(W >= 0, 0.5, -0.5)
    # the STE differentiates v0 + (w - w0), masked to |w| <= scale for "clipped"
    inside = np.ones_like(W) if bound is None else (np.abs(W) <= bound)
    want = fd_grad(lambda w: loss_np(v0 + inside * (w - W)), W)
    for got in grads_eager_and_jit(lambda w: binarize(w, scale=0.5, ste=ste), w):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_binarize_stochastic_frequencies_follow_hard_sigmoid():
    levels = jnp.array([-1.5, -0.5, 0.0, 0.4, 2.0])
    w = jnp.repeat(levels[:, None], 4000, axis=1)
    key = jax.random.key(1)
    b = binarize(w, stochastic=True, key=key)
    assert set(np.unique(np.asarray(b)).tolist()) <= {-1.0, 1.0}
    p = np.clip((np.asarray(levels) + 1) / 2, 0, 1)
    freq = np.mean(np.asarray(b) > 0, axis=1)
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / 4000))
    assert freq[0] == 0.0 and freq[-1] == 1.0
    jitted = jax.jit(lambda w, k: binarize(w, stochastic=True, key=k))(w, key)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(b))
    g = jax.grad(lambda w: binarize(w, stochastic=True, key=key).sum())(w)
    np.testing.assert_array_equal(np.asarray(g), 1.0)


def test_binary_activation_hard_tanh_ste():
    x = jnp.array([-2.0, -1.0, -0.3, 0.0, 0.7, 1.0, 1.2])
    assert binary_activation(x).tolist() == [-1, -1, -1, 1, 1, 1, 1]
    for g in (jax.grad(lambda x: binary_activation(x).sum())(x),
              jax.jit(jax.grad(lambda x: binary_activation(x).sum()))(x)):
        assert g.tolist() == [0, 1, 1, 1, 1, 1, 0]
    g = jax.grad(lambda x: binary_activation(x, ste="identity").sum())(x)
    assert g.tolist() == [1] * 7
    assert binary_activation(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_straight_through_gain_and_errors():
    w = jnp.array([0.5, -2.0])
    g = jax.grad(lambda w: straight_through(w, jnp.zeros(2), gain=3.0).sum())(w)
    assert g.tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="view has shape"):
        straight_through(w, jnp.zeros(3))
    with pytest.raises(ValueError, match="bound=-1.0 must be"):
        straight_through(w, w, bound=-1)


def xnor_np(w, red):
    alpha = np.mean(np.abs(w), axis=red, keepdims=True)
    return alpha * np.where(w >= 0, 1, -1), alpha


def test_xnor_weights_alpha_per_filter_and_per_tensor():
    for w, red in ((W, (0,)), (CONV, (0, 1, 2))):
        np.testing.assert_allclose(xnor_weights(w), xnor_np(w, red)[0], rtol=1e-6)
    np.testing.assert_allclose(xnor_weights(CONV, axis=None), xnor_np(CONV, (0, 1, 2, 3))[0],
                               rtol=1e-6)
    np.testing.assert_allclose(xnor_weights(CONV, axis=(2, 3)), xnor_np(CONV, (0, 1))[0],
                               rtol=1e-6)
    assert xnor_weights(jnp.asarray(W, jnp.bfloat16)).dtype == jnp.bfloat16


def test_xnor_weights_gradient_is_the_chain_rule_through_alpha():
    w = W * 0.8  # some |w| > 1 so the clipped estimator cuts them
    v_sign = np.where(w >= 0, 1.0, -1.0)
    alpha0 = np.mean(np.abs(w), axis=0, keepdims=True)
    clip0 = np.clip(w, -1, 1)

    def surrogate(x):  # α(w)·sign(w0) + α(w0)·(clip(w) - clip(w0))
        a = np.mean(np.abs(x), axis=0, keepdims=True)
        return loss_np(a * v_sign + alpha0 * (np.clip(x, -1, 1) - clip0))

    want = fd_grad(surrogate, w)
    assert (np.abs(w) > 1).any()
    for got in grads_eager_and_jit(xnor_weights, jnp.asarray(w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def k_brute(x, window, strides, pad):
    a = np.mean(np.abs(x), axis=-1)
    a = np.pad(a, ((0, 0), *pad))
    kh, kw = window
    oh = (a.shape[1] - kh) // strides[0] + 1
    ow = (a.shape[2] - kw) // strides[1] + 1
    out = np.zeros((x.shape[0], oh, ow, 1))
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                r, c = i * strides[0], j * strides[1]
                out[n, i, j, 0] = a[n, r:r + kh, c:c + kw].mean()
    return out


def test_xnor_input_scale_matches_brute_force():
    x = RNG.normal(size=(2, 5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(xnor_input_scale(x, window=(3, 2), strides=(2, 1)),
                               k_brute(x, (3, 2), (2, 1), ((0, 0), (0, 0))), rtol=1e-5)
    np.testing.assert_allclose(
        xnor_input_scale(x, window=(3, 3), padding=((1, 1), (1, 1))),
        k_brute(x, (3, 3), (1, 1), ((1, 1), (1, 1))), rtol=1e-5)
    np.testing.assert_allclose(
        xnor_input_scale(x, window=(3, 3), padding="SAME"),
        k_brute(x, (3, 3), (1, 1), ((1, 1), (1, 1))), rtol=1e-5)
    dense = RNG.normal(size=(4, 7)).astype(np.float32)
    np.testing.assert_allclose(xnor_input_scale(dense), np.abs(dense).mean(1, keepdims=True),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"window=\(3,\) must hold 2 positive ints"):
        xnor_input_scale(x, window=(3,))
    with pytest.raises(ValueError, match="channel axis must be the last"):
        xnor_input_scale(x, window=(3, 3), axis=1)
    with pytest.raises(ValueError, match="strides= needs window="):
        xnor_input_scale(dense, strides=(1,))


def ternary_np(w, red, factor=0.7):
    a = np.abs(w)
    keep = a > factor * a.mean(axis=red, keepdims=True)
    cnt = keep.sum(axis=red, keepdims=True)
    alpha = np.where(cnt > 0, (a * keep).sum(axis=red, keepdims=True) / np.maximum(cnt, 1), 0)
    return np.where(keep, np.sign(w), 0) * alpha


def test_ternarize_matches_twn_formulas():
    np.testing.assert_allclose(ternarize(W), ternary_np(W, None), rtol=1e-6)
    np.testing.assert_allclose(ternarize(CONV, axis=-1), ternary_np(CONV, (0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ternarize(W, delta_factor=0.3), ternary_np(W, None, 0.3),
                               rtol=1e-6)
    w = W.copy()
    w[:, 1] = 0.0  # a filter of zeros: α = 0, all zero
    np.testing.assert_array_equal(np.asarray(ternarize(w, axis=-1))[:, 1], 0.0)
    out = ternarize(jnp.asarray(W, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16


@settings(max_examples=10, deadline=None)
@given(shape=st.sampled_from([(3, 4), (2, 3, 4)]), seed=st.integers(0, 2**31 - 1),
       factor=st.floats(0.05, 1.5))
def test_ternarize_property(shape, seed, factor):
    w = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    t = np.asarray(ternarize(w, delta_factor=factor))
    alpha = np.abs(t).max()
    assert set(np.unique(np.abs(t)).tolist()) <= {0.0, float(alpha)}
    nz = t != 0
    assert np.all(np.sign(t[nz]) == np.sign(w[nz]))
    assert np.array_equal(nz, np.abs(w) > factor * np.abs(w).mean())
    np.testing.assert_allclose(t, ternary_np(w, None, factor), rtol=1e-5)


def test_ternarize_gradient_is_identity():
    v0 = ternary_np(W, None)
    want = fd_grad(lambda w: loss_np(v0 + (w - W)), W)
    for got in grads_eager_and_jit(ternarize, jnp.asarray(W)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_abc_bases_least_squares_matches_numpy_lstsq():
    w = W
    for m, shifts in ((1, None), (4, (-1.0, -0.3, 0.4, 1.2)), (3, (0.0, 0.0, 1.0))):
        u = abc_shifts(m) if shifts is None else shifts
        x = w.reshape(-1).astype(np.float64)
        b = np.where(x[None] - x.mean() + np.asarray(u)[:, None] * x.std() >= 0, 1.0, -1.0)
        alpha = np.linalg.lstsq(b.T, x, rcond=None)[0]  # min-norm when bases coincide
        got_b, got_a = abc_bases(w, m, shifts=shifts)
        np.testing.assert_array_equal(np.asarray(got_b).reshape(m, -1), b)
        np.testing.assert_allclose(got_a, alpha, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(abc_binarize(w, m, shifts=shifts),
                                   (alpha @ b).reshape(w.shape), rtol=2e-5, atol=2e-6)
    assert abc_shifts(4) == pytest.approx((-1.0, -1 / 3, 1 / 3, 1.0))


def test_abc_binarize_gradient_scales_by_sum_of_alphas():
    _, alpha = abc_bases(W, 3)
    v0 = np.asarray(abc_binarize(W, 3), np.float64)
    gain = float(np.sum(alpha))
    want = fd_grad(lambda w: loss_np(v0 + gain * (w - W)), W)
    for got in grads_eager_and_jit(lambda w: abc_binarize(w, 3), jnp.asarray(W)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_array_functions_refuse_bad_input():
    nan = jnp.array([1.0, jnp.nan])
    for fn in (binarize, xnor_weights, ternarize, abc_binarize, lambda w: abc_bases(w, 2)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            fn(nan)
        with pytest.raises(TypeError, match="dtype int32"):
            fn(jnp.array([1, 2]))
    with pytest.raises(ValueError, match="needs key="):
        binarize(W, stochastic=True)
    with pytest.raises(TypeError, match="PRNG key"):
        binarize(W, stochastic=True, key=3)
    with pytest.raises(ValueError, match="scale=0.0 must be"):
        binarize(W, scale=0.0)
    with pytest.raises(ValueError, match="ste='soft' must be one of"):
        binarize(W, ste="soft")
    with pytest.raises(ValueError, match="delta_factor=0.0 must be"):
        ternarize(W, delta_factor=0)
    with pytest.raises(ValueError, match="delta_factor=-0.7 must be"):
        ternarize(W, delta_factor=-0.7)
    with pytest.raises(TypeError, match="delta_factor must be a Python number"):
        jax.jit(lambda d: ternarize(W, delta_factor=d))(0.7)
    with pytest.raises(ValueError, match=r"num_bases \(M\) = 0 must lie in \[1, 16\]"):
        abc_bases(W, 0)
    with pytest.raises(TypeError, match="num_bases"):
        abc_binarize(W, 2.0)
    with pytest.raises(ValueError, match="shifts must hold num_bases=3 numbers, got 2"):
        abc_bases(W, 3, shifts=(0.0, 1.0))
    with pytest.raises(ValueError, match="axis=2 is out of range for 'w' with 2 dimensions"):
        xnor_weights(W, axis=2)
    with pytest.raises(ValueError, match="repeats"):
        ternarize(W, axis=(1, -1))


# ---------------------------------------------------------------------- compressors


def mlp_params(names=("fc1", "fc2", "fc3"), dtype=jnp.float32):
    shapes = [(4, 5), (5, 3), (3, 2), (2, 2), (2, 2)]
    out = {}
    for i, n in enumerate(names):
        k = jax.random.normal(jax.random.key(i), shapes[i % len(shapes)]).astype(dtype)
        out[n] = {"kernel": k, "bias": jnp.zeros(k.shape[1], dtype)}
    return out


def test_binary_connect_view_projection_and_training_clip():
    p = mlp_params()
    p["fc1"]["kernel"] = p["fc1"]["kernel"] * 3  # some weights beyond [-1, 1]
    comp = binary_connect()
    s = comp.init(p)
    view = comp.apply(p, s)
    for name in p:
        np.testing.assert_array_equal(view[name]["kernel"],
                                      np.where(p[name]["kernel"] >= 0, 1.0, -1.0))
        np.testing.assert_array_equal(view[name]["bias"], p[name]["bias"])
    proj = comp.project(p, s)
    np.testing.assert_array_equal(proj["fc1"]["kernel"], np.clip(p["fc1"]["kernel"], -1, 1))
    assert comp.due(0) is False and jc.update_due(comp, 5) is False
    # trained through optax with keep_compressed: stored weights stay in [-1, 1]
    tx = optax.chain(optax.sgd(5.0), jc.keep_compressed(comp))

    @jax.jit
    def step(p, opt):
        grad = jax.grad(lambda q: loss(comp.apply(q, s)["fc1"]["kernel"][:3, :4]))(p)
        upd, opt = tx.update(grad, opt, p, compressor_state=s)
        return optax.apply_updates(p, upd), grad

    p2, grad = step(p, tx.init(p))
    assert float(jnp.max(jnp.abs(p2["fc1"]["kernel"]))) <= 1.0 + 1e-6
    assert float(jnp.max(jnp.abs(p2["fc1"]["kernel"] - proj["fc1"]["kernel"]))) > 0.1
    np.testing.assert_array_equal(p2["fc2"]["kernel"], proj["fc2"]["kernel"])  # no gradient
    np.testing.assert_allclose(grad["fc1"]["kernel"][:3, :4],  # straight through
                               C * np.cos(np.where(p["fc1"]["kernel"][:3, :4] >= 0, 1.0, -1.0)),
                               rtol=1e-5)
    # glorot scale: sqrt(1.5 / (fan_in + fan_out)), with the receptive field for convs
    g = binary_connect(scale="glorot")
    conv = {"conv": {"kernel": jnp.asarray(CONV)}}
    v = g.apply(conv, g.init(conv))["conv"]["kernel"]
    h = np.sqrt(1.5 / (4 * 3 + 4 * 4))
    np.testing.assert_allclose(np.abs(v), h, rtol=1e-6)


def test_stochastic_binary_connect_draws_new_noise_each_update():
    p = {"w": jnp.zeros((16, 16))}  # p = 1/2 everywhere
    comp = binary_connect(stochastic=True, key=jax.random.key(0))
    assert comp.due is None
    s = comp.init(p)
    a = comp.apply(p, s)["w"]
    _, s1 = comp.update(p, s, step=0)
    b = comp.apply(p, s1)["w"]
    assert int(s1.count) == 1 and not np.array_equal(a, b)
    np.testing.assert_array_equal(comp.apply(p, s)["w"], a)  # same state, same draw
    q = binary_export(p, s1)["w"]  # stored as the deterministic sign
    assert q.bits == 1 and np.all(np.asarray(q.values) == 1)
    np.testing.assert_array_equal(jc.materialize(q), 1.0)


def test_xnor_default_where_keeps_first_and_last_kernel_full_precision():
    p = mlp_params(("fc1", "fc2", "fc10", "fc9"))
    comp = xnor_binarization()
    s = comp.init(p)
    assert s.method.paths == ("fc2/kernel", "fc9/kernel")  # fc10 is last: numbers as numbers
    view = comp.apply(p, s)
    np.testing.assert_array_equal(view["fc1"]["kernel"], p["fc1"]["kernel"])
    np.testing.assert_array_equal(view["fc10"]["kernel"], p["fc10"]["kernel"])
    np.testing.assert_allclose(view["fc2"]["kernel"], xnor_np(np.asarray(p["fc2"]["kernel"]),
                                                              (0,))[0], rtol=1e-6)
    with pytest.raises(ValueError, match="leaves none of the 2 kernels to binarize"):
        xnor_binarization().init(mlp_params(("fc1", "fc2")))
    assert xnor_binarization(where=r".*/kernel").init(mlp_params(("a", "b"))).method.paths == (
        "a/kernel", "b/kernel")


def test_compressors_refuse_bad_input_naming_the_path():
    p = mlp_params()
    bad = jax.tree.map(lambda x: x, p)
    bad["fc2"]["kernel"] = bad["fc2"]["kernel"].at[0, 0].set(jnp.nan)
    for comp in (binary_connect(), ternary_weights(), abc_binarization(2),
                 xnor_binarization()):
        with pytest.raises(ValueError, match="'fc2/kernel' holds NaN or Inf"):
            comp.init(bad)
    comp = binary_connect()
    s = comp.init(p)
    with pytest.raises(ValueError, match="'fc2/kernel' holds NaN or Inf"):
        comp.apply(bad, s)
    with pytest.raises(ValueError, match="stochastic=True needs key="):
        binary_connect(stochastic=True)
    with pytest.raises(ValueError, match="delta_factor=0.0 must be a finite number > 0"):
        ternary_weights(delta_factor=0.0)
    with pytest.raises(ValueError, match=r"num_bases \(M\) = 0"):
        abc_binarization(0)
    with pytest.raises(ValueError, match="scale='he' must be a positive number or 'glorot'"):
        binary_connect(scale="he")
    with pytest.raises(ValueError, match="act_bits=0"):
        xnor_binarization(act_bits=0)
    with pytest.raises(TypeError, match="axis must be None, an int or a tuple of ints"):
        ternary_weights(axis="last")
    with pytest.raises(ValueError, match="axis=2 is out of range for 'fc1/kernel'"):
        ternary_weights(axis=2).init(p)
    with pytest.raises(TypeError, match="'step' has dtype int32"):
        binary_connect(where=r"step").init({"step": jnp.zeros((2, 2), jnp.int32)})
    with pytest.raises(ValueError, match="matches no parameter"):
        binary_connect(where=r"nope").init(p)
    # a state made for other params or by another compressor
    with pytest.raises(ValueError, match="re-run init"):
        comp.apply(p, binary_connect(where=r"fc1/kernel").init(p))
    with pytest.raises(ValueError, match="made by another compressor"):
        comp.apply(p, ternary_weights().init(p))
    with pytest.raises(TypeError, match="expected the BinaryState"):
        comp.apply(p, jc.EmptyState())


def test_state_reports_bits():
    p = mlp_params(dtype=jnp.bfloat16)
    for comp, bits in ((binary_connect(), 1), (ternary_weights(axis=-1), 2),
                       (abc_binarization(3), 3), (xnor_binarization(act_bits=1), 1)):
        s = comp.init(p)
        assert isinstance(s, BinaryState)
        info = jc.compression_info(s)
        assert set(info) == set(s.method.paths)
        assert {i.weight_bits for i in info.values()} == {bits}
        if comp.project is None:
            assert {i.act_bits for i in info.values()} == ({1} if bits == 1 else {None})


def test_export_materializes_to_the_view_and_counts_the_real_bits():
    p = mlp_params()  # kernels 4x5, 5x3, 3x2 and biases 5, 3, 2; fc2 in bfloat16
    p["fc2"] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p["fc2"])
    bias = 5 * 32 + 3 * 16 + 2 * 32
    cases = [
        # 1 bit per weight; a float32 scale and zero point per kernel
        (binary_connect(scale=0.3), 41 + 3 * (32 + 32)),
        # 2 bits per weight; per filter a float32 α; an int8 zero point per kernel
        (ternary_weights(axis=-1), 2 * 41 + (5 + 3 + 2) * 32 + 3 * 8),
        # fc2 only: 1 bit per weight, 3 per-filter float32 scales, a zero point; fc1, fc3 dense
        (xnor_binarization(), 15 + 3 * 32 + 32 + (20 + 6) * 32),
        # 3-bit indices into 8 centroids per kernel (bfloat16 ones for fc2)
        (abc_binarization(3), 3 * 41 + 8 * (32 + 16 + 32)),
    ]
    for comp, bits in cases:
        s = comp.init(p)
        exported, view = jax.jit(lambda p, s=s, comp=comp: (binary_export(p, s),
                                                            comp.apply(p, s)))(p)
        dense = jc.materialize(exported)
        for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(view)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
        assert jc.metrics.model_size_bytes(exported).total_bits == bits + bias
    q = binary_export(p, ternary_weights().init(p))["fc2"]["kernel"]  # eager: codes validated
    assert isinstance(q, jc.QArray) and q.bits == 2 and q.dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="state must be a BinaryState"):
        binary_export(p, jc.EmptyState())
    with pytest.raises(ValueError, match="no leaf at"):
        binary_export({"fc1": p["fc1"]}, binary_connect().init(p))


def test_analyze_counts_bit_operations_at_the_reported_bits():
    p = mlp_params()  # kernels 4x5, 5x3, 3x2

    # analyze: bit-operations at weight_bits (1 or 2) x 32-bit activations
    def fn(params, x):
        for name in ("fc1", "fc2", "fc3"):
            x = x @ params[name]["kernel"] + params[name]["bias"]
        return x

    x = jnp.ones((1, 4))
    for comp, bits in ((binary_connect(), 1), (ternary_weights(), 2)):
        s = comp.init(p)
        view = comp.apply(p, s)
        a = jc.metrics.analyze(fn, view, x, compression=s, compile=False)
        assert [layer.weight_bits for layer in a.layers] == [bits] * 3
        density = [float(np.mean(np.asarray(view[n]["kernel"]) != 0)) for n in view]
        assert a.bops == pytest.approx(sum(m * d * bits * 32 for m, d in zip((20, 15, 6),
                                                                             density)))
    s = xnor_binarization(act_bits=1).init(p)
    a = jc.metrics.analyze(fn, p, x, compression=s, compile=False)
    assert a.bops == pytest.approx(20 * 32 * 32 + 15 * 1 * 1 + 6 * 32 * 32)


def test_registry_builds_the_factories():
    p = mlp_params()
    comp = build_compressor([{"method": "ternary_weights", "delta_factor": 0.5,
                              "where": "fc1/kernel"},
                             {"method": "abc_binarization", "num_bases": 2,
                              "where": "fc2/kernel"},
                             {"method": "binary_connect", "where": "fc3/kernel"}])
    s = comp.init(p)
    view = comp.apply(p, s)
    np.testing.assert_allclose(view["fc1"]["kernel"],
                               ternary_np(np.asarray(p["fc1"]["kernel"]), None, 0.5), rtol=1e-6)
    info = jc.compression_info(s)
    assert {k: v.weight_bits for k, v in info.items()} == {
        "fc1/kernel": 2, "fc2/kernel": 2, "fc3/kernel": 1}
    assert "xnor_binarization" in jc.config.COMPRESSORS
