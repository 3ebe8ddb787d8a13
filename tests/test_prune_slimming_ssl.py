"""Network slimming (L1 on norm scales) and structured-sparsity group lasso."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcomp.models import get_model
from jaxcomp.prune.channels.slimming import (
    scale_to_kernel_masks,
    slimming_masks,
    slimming_penalty,
    slimming_regularizer,
)
from jaxcomp.prune.channels.ssl import (
    channel_lasso,
    depth_lasso,
    filter_lasso,
    group_lasso,
    group_norms,
    shape_lasso,
    ssl_regularizer,
)


def _vgg_params():
    spec = get_model("vgg_small")
    return jax.eval_shape(spec.init, jax.random.key(0))["params"]


def test_default_where_finds_every_bn_scale_and_nothing_else():
    p = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), _vgg_params())
    n_scales = sum(v["scale"].size for k, v in p.items() if k.startswith("bn"))
    assert float(slimming_penalty(p)) == n_scales
    p2 = jax.tree.map(lambda x: x, p)
    for k in p2:
        if k.startswith("bn"):
            p2[k] = {**p2[k], "scale": -2.0 * p2[k]["scale"]}
    assert float(slimming_penalty(p2)) == 2 * n_scales  # |γ|, kernels untouched


def test_penalty_gradient_is_sign():
    p = {"bn": {"scale": jnp.array([0.5, -0.3, 2.0])}, "conv": {"kernel": jnp.ones((2, 3))}}
    g = jax.grad(lambda q: slimming_penalty(q))(p)
    assert g["bn"]["scale"].tolist() == [1.0, -1.0, 1.0]
    assert float(jnp.abs(g["conv"]["kernel"]).sum()) == 0.0


def _scales(seed, sizes):
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    return {f"bn{i}": {"scale": jax.random.normal(k, (n,))} for i, (k, n) in
            enumerate(zip(keys, sizes))}


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 0.95), st.integers(1, 3))
def test_global_masks_match_numpy_oracle(seed, ratio, min_channels):
    sizes = [7, 13, 5]
    p = _scales(seed, sizes)
    m = slimming_masks(p, ratio, min_channels=min_channels)
    s = [np.abs(np.asarray(p[f"bn{i}"]["scale"])) for i in range(3)]
    flat = np.concatenate(s)
    k = round(ratio * flat.size)
    order = np.argsort(flat, kind="stable")  # ties: lower index pruned first
    keep = np.ones(flat.size, bool)
    keep[order[:k]] = False
    offs = np.cumsum([0, *sizes])
    for i in range(3):
        layer = keep[offs[i]:offs[i + 1]].copy()
        short = min_channels - layer.sum()
        if short > 0:  # restore the largest pruned |γ| of the layer
            cand = np.where(layer, -np.inf, s[i])
            layer[np.argsort(-cand, kind="stable")[:short]] = True
        np.testing.assert_array_equal(np.asarray(m[f"bn{i}"]["scale"]), layer)


def test_layerwise_and_min_channels():
    p = {"bn1": {"scale": jnp.array([0.01, 0.02, 0.03, 0.04])},
         "bn2": {"scale": jnp.array([5.0, 6.0, 7.0, 8.0])}}
    lw = slimming_masks(p, 0.5, scope="layerwise")
    assert lw["bn1"]["scale"].tolist() == [False, False, True, True]
    assert lw["bn2"]["scale"].tolist() == [False, False, True, True]
    # global 50%: all of bn1 would go; min_channels=2 restores its two largest
    g = slimming_masks(p, 0.5, min_channels=2)
    assert g["bn1"]["scale"].tolist() == [False, False, True, True]
    assert g["bn2"]["scale"].tolist() == [True] * 4
    g1 = slimming_masks(p, 0.5)
    assert g1["bn1"]["scale"].tolist() == [False, False, False, True]
    ties = slimming_masks({"bn": {"scale": jnp.ones(4)}}, 0.5)
    assert ties["bn"]["scale"].tolist() == [False, False, True, True]


def test_scale_to_kernel_masks_pairs_by_name():
    p = {"conv1": {"kernel": jnp.ones((3, 3, 1, 4))}, "bn1": {"scale": jnp.ones(4)},
         "block": {"Conv_0": {"kernel": jnp.ones((1, 1, 4, 2))},
                   "BatchNorm_0": {"scale": jnp.ones(2)}},
         "fc": {"kernel": jnp.ones((2, 3))}}
    m = jax.tree.map(lambda x: jnp.ones(x.shape, bool), p)
    m["bn1"]["scale"] = jnp.array([True, False, True, False])
    m["block"]["BatchNorm_0"]["scale"] = jnp.array([False, True])
    out = scale_to_kernel_masks(p, m)
    assert out["conv1"].tolist() == [True, False, True, False]
    assert out["block/Conv_0"].tolist() == [False, True]
    p["odd"] = {"scale": jnp.ones(3)}
    m["odd"] = {"scale": jnp.array([True, False, True])}
    with pytest.raises(ValueError, match="no producer kernel found for 'odd'"):
        scale_to_kernel_masks(p, m)
    assert scale_to_kernel_masks(p, m, pairs={"odd": "fc"})["fc"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="'odd' has 3 channels but 'conv1/kernel' outputs 4"):
        scale_to_kernel_masks(p, m, pairs={"odd": "conv1"})
    with pytest.raises(ValueError, match="which has no kernel"):
        scale_to_kernel_masks(p, m, pairs={"odd": "nothing"})


def test_slimming_training_drives_scales_down():
    """Training with the penalty leaves many more near-zero scales than without."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            h = nn.Dense(32, name="conv1")(x)
            h = nn.BatchNorm(use_running_average=not train, name="bn1")(h)
            return nn.Dense(3, name="fc")(nn.relu(h))

    net = Net()
    x = jax.random.normal(jax.random.key(0), (64, 8))
    y = jnp.argmax(x[:, :3], -1)
    v = net.init(jax.random.key(1), x)

    def base(params, state, batch, rng):
        logits, new = net.apply({"params": params, **state}, batch["x"], mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, (new, {"loss": loss})

    def train(lam):
        loss_fn = slimming_regularizer(base, lam)
        tx = optax.adam(1e-2)
        params, state = v["params"], {"batch_stats": v["batch_stats"]}
        opt = tx.init(params)

        @jax.jit
        def step(params, opt, state):
            (_, (state, m)), g = jax.value_and_grad(loss_fn, has_aux=True)(
                params, state, {"x": x, "y": y}, None)
            u, opt = tx.update(g, opt)
            return optax.apply_updates(params, u), opt, state, m

        for _ in range(150):
            params, opt, state, m = step(params, opt, state)
        return params, m

    p0, m0 = train(0.0)
    p1, m1 = train(0.05)
    small0 = int(jnp.sum(jnp.abs(p0["bn1"]["scale"]) < 0.05))
    small1 = int(jnp.sum(jnp.abs(p1["bn1"]["scale"]) < 0.05))
    assert "slimming_l1" in m1 and float(m1["slimming_l1"]) < float(m0["slimming_l1"])
    assert small1 >= small0 + 8


def test_slimming_errors():
    p = {"bn": {"scale": jnp.ones(3)}}
    with pytest.raises(ValueError, match=r"ratio=1.0 must be a fraction in \[0, 1\)"):
        slimming_masks(p, 1.0)
    with pytest.raises(ValueError, match="scope"):
        slimming_masks(p, 0.5, scope="row")
    with pytest.raises(ValueError, match="min_channels"):
        slimming_masks(p, 0.5, min_channels=0)
    with pytest.raises(ValueError, match="selects no normalisation scale"):
        slimming_penalty({"fc": {"kernel": jnp.ones((2, 2))}})
    with pytest.raises(ValueError, match="'fc/kernel' has shape"):
        slimming_penalty({"fc": {"kernel": jnp.ones((2, 2))}}, where=r"fc/kernel")
    with pytest.raises(ValueError, match="bn/scale"):
        slimming_masks({"bn": {"scale": jnp.array([1.0, jnp.nan])}}, 0.5)
    with pytest.raises(ValueError, match="lambda_"):
        slimming_regularizer(lambda *a: None, -1.0)


# ------------------------------------------------------------------ group lasso


def test_group_values_hand_computed():
    w = jnp.arange(24.0).reshape(2, 2, 3, 2)  # (kh, kw, in, out)
    a = np.asarray(w)
    p = {"c": {"kernel": w}}
    filt = sum(np.linalg.norm(a[..., o]) for o in range(2))
    chan = sum(np.linalg.norm(a[:, :, i, :]) for i in range(3))
    shape = sum(np.linalg.norm(a[h, k, i, :]) for h in range(2) for k in range(2) for i in range(3))
    np.testing.assert_allclose(float(filter_lasso(p)), filt, rtol=1e-6)
    np.testing.assert_allclose(float(channel_lasso(p)), chan, rtol=1e-6)
    np.testing.assert_allclose(float(shape_lasso(p)), shape, rtol=1e-6)
    np.testing.assert_allclose(float(depth_lasso(p, weight=0.5)), 0.5 * np.linalg.norm(a),
                               rtol=1e-6)
    np.testing.assert_allclose(float(filter_lasso(p, scale_by_size=True)),
                               np.sqrt(12) * filt, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(group_norms(p, "channel")["c/kernel"]),
                               [np.linalg.norm(a[:, :, i, :]) for i in range(3)], rtol=1e-6)


def test_group_gradients_analytic_and_zero_group_safe():
    w = jnp.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]])  # Dense (2, 3): filter 1 is all zero
    p = {"fc": {"kernel": w}}
    g = jax.grad(lambda q: filter_lasso(q))(p)["fc"]["kernel"]
    expect = np.array([[0.6, 0.0, 1 / np.sqrt(2)], [0.8, 0.0, 1 / np.sqrt(2)]])
    np.testing.assert_allclose(np.asarray(g), expect, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda q: depth_lasso(q))(
        {"fc": {"kernel": jnp.zeros((2, 2))}})["fc"]["kernel"])))
    # finite differences on a random kernel
    k = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
    f = lambda x: shape_lasso({"c": {"kernel": x}})
    d = jax.random.normal(jax.random.key(1), k.shape)
    eps = 1e-3
    fd = (f(k + eps * d) - f(k - eps * d)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(jax.grad(f)(k), d)), float(fd), rtol=2e-2)


def test_ssl_regularizer_drives_filters_to_zero():
    x = jax.random.normal(jax.random.key(0), (128, 6))
    true_w = jnp.zeros((6, 8)).at[:, :2].set(jax.random.normal(jax.random.key(1), (6, 2)))
    y = x @ true_w

    def base(params, state, batch, rng):
        loss = jnp.mean((batch["x"] @ params["fc"]["kernel"] - batch["y"]) ** 2)
        return loss, (state, {"loss": loss})

    def fit(weight):
        loss_fn = ssl_regularizer(base, {"filter": weight}) if weight else base
        params = {"fc": {"kernel": jax.random.normal(jax.random.key(2), (6, 8))}}
        tx = optax.sgd(0.05)
        opt = tx.init(params)
        grad = jax.jit(jax.grad(lambda p: loss_fn(p, {}, {"x": x, "y": y}, None)[0]))
        for _ in range(400):
            u, opt = tx.update(grad(params), opt)
            params = optax.apply_updates(params, u)
        return group_norms(params, "filter")["fc/kernel"]

    with_ssl, without = fit(0.05), fit(0.0)
    assert int(jnp.sum(with_ssl < 0.02)) >= 5
    assert int(jnp.sum(without < 0.02)) <= 1


def test_ssl_errors():
    p = {"fc": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.ones(2)}}
    with pytest.raises(ValueError, match="grouping="):
        group_lasso(p, "rows")
    with pytest.raises(ValueError, match="weight=-1"):
        filter_lasso(p, weight=-1)
    with pytest.raises(ValueError, match="matches no kernel"):
        filter_lasso(p, where=r"conv/.*")
    with pytest.raises(ValueError, match="'b/bias' has shape"):
        filter_lasso(p, where=r"b/bias")
    with pytest.raises(ValueError, match="unknown term 'rows'"):
        ssl_regularizer(lambda *a: None, {"rows": 1.0})
    with pytest.raises(ValueError, match="unknown keys"):
        ssl_regularizer(lambda *a: None, {"filter": {"wieght": 1.0}})
    with pytest.raises(ValueError, match="terms is empty"):
        ssl_regularizer(lambda *a: None, {})
