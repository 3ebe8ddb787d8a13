"""jaxcomp.train: TrainState, train/eval steps, losses, mesh helpers."""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp as jc
from jaxcomp import train

# ---------------------------------------------------------------- helpers


class MLP(nn.Module):
    hidden: int = 16
    classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.classes)(nn.relu(nn.Dense(self.hidden)(x)))


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(3)(nn.relu(x))


def make_apply(module):
    def apply_fn(variables, x, train=False, rng=None, return_state=False):
        if train and "batch_stats" in variables:
            out, st = module.apply(variables, x, train=True, mutable=["batch_stats"])
            st = dict(st)
        else:
            out, st = module.apply(variables, x, train=train), {}
        return (out, st) if return_state else out

    return apply_fn


def data(n=32, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, d)).astype(np.float32),
            "y": rng.integers(0, classes, n).astype(np.int32)}


def mlp_setup(tx=None, d=5, **kw):
    module = MLP(**kw)
    params = module.init(jax.random.key(0), jnp.zeros((1, d)))["params"]
    tx = tx or optax.sgd(0.1, momentum=0.9)
    return module, params, tx


class ThreshState(NamedTuple):
    mask: Any
    count: jax.Array
    last_step: jax.Array


def threshold_masking(threshold, ste=False):
    """A test compressor: mask |w| < threshold (masks only shrink), with a project.

    With ``ste`` the masked view passes gradients straight through to pruned weights.
    """

    def init(params):
        return ThreshState(jax.tree.map(lambda p: jnp.abs(p) >= threshold, params),
                           jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))

    def apply(params, state):
        if ste:
            return jax.tree.map(lambda p, m: p + jax.lax.stop_gradient(p * m - p), params,
                                state.mask)
        return jax.tree.map(lambda p, m: p * m, params, state.mask)

    def update(params, state, *, step, grads=None, **extra):
        mask = jax.tree.map(lambda p, m: m & (jnp.abs(p) >= threshold), params, state.mask)
        new = ThreshState(mask, state.count + 1, jnp.asarray(step, jnp.int32))
        return apply(params, new), new

    return jc.Compressor(init, apply, update, apply)


def ce_loss(apply_fn):
    def loss(params, batch):
        logits = apply_fn({"params": params}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss


# ---------------------------------------------------------------- TrainState


def test_train_state_create_and_pytree():
    _, params, tx = mlp_setup()
    comp = threshold_masking(0.1)
    s = train.TrainState.create(params, tx, key=jax.random.key(1), compressor=comp)
    assert int(s.step) == 0 and s.step.dtype == jnp.int32
    assert s.model_state == {}
    assert isinstance(s.compressor_state, ThreshState)
    leaves = jax.tree.leaves(s)
    assert len(leaves) > 4
    s2 = jax.tree.map(lambda x: x, s)
    assert isinstance(s2, train.TrainState)
    assert jax.jit(lambda s: s.replace(step=s.step + 1))(s).step == 1
    v = {"params": params, "batch_stats": {"m": jnp.zeros(2)}}
    s3 = train.TrainState.from_variables(v, tx, key=jax.random.key(0))
    assert list(s3.model_state) == ["batch_stats"]


def test_train_state_bad_inputs():
    _, params, tx = mlp_setup()
    with pytest.raises(TypeError, match="PRNG key"):
        train.TrainState.create(params, tx, key=0)
    with pytest.raises(TypeError, match="GradientTransformation"):
        train.TrainState.create(params, "adam", key=jax.random.key(0))
    with pytest.raises(TypeError, match="Compressor"):
        train.TrainState.create(params, tx, key=jax.random.key(0), compressor=threshold_masking)
    with pytest.raises(ValueError, match="'params' key"):
        train.TrainState.from_variables(params, tx, key=jax.random.key(0))
    # raw uint32 keys are accepted
    train.TrainState.create(params, tx, key=jax.random.PRNGKey(0))


# ---------------------------------------------------------------- train step


def test_train_step_equals_hand_written_optax_step():
    module, params, tx = mlp_setup(optax.adam(1e-2))
    apply_fn = make_apply(module)
    batches = [data(seed=i) for i in range(5)]

    state = train.TrainState.create(params, tx, key=jax.random.key(0))
    step = jax.jit(train.make_train_step(train.supervised_loss(apply_fn), tx))
    for b in batches:
        state, metrics = step(state, b)

    def loss(p, b):  # the same loss function, written out as a plain optax loop
        return train.supervised_loss(apply_fn)(p, {}, b, None)[0]

    @jax.jit
    def hand(p, o, b):
        lv, g = jax.value_and_grad(loss)(p, b)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, lv

    p, o = params, tx.init(params)
    for b in batches:
        p, o, lv = hand(p, o, b)
    assert int(state.step) == 5
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metrics["loss"], lv)


def test_train_step_eager_equals_jit():
    def apply_fn(v, x, train=False, rng=None, return_state=False):
        out = jnp.tanh(x @ v["params"]["w1"]) @ v["params"]["w2"]
        return (out, {}) if return_state else out

    tx = optax.adam(0.1)
    params = {"w1": jax.random.normal(jax.random.key(0), (5, 4)), "w2": jnp.ones((4, 3))}
    step = train.make_train_step(train.supervised_loss(apply_fn), tx, accumulate=2)
    s0 = train.TrainState.create(params, tx, key=jax.random.key(0))
    a, _ = step(s0, data())
    b, _ = jax.jit(step)(s0, data())
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("masked", [False, True])
def test_accumulation_equals_big_batch(masked):
    module, params, tx = mlp_setup(optax.sgd(0.5))
    loss_fn = train.supervised_loss(make_apply(module))
    batch = data(n=32)
    if masked:  # unequal numbers of real examples per micro-batch
        mask = np.ones(32, np.float32)
        mask[[1, 2, 3, 9, 30]] = 0
        batch["mask"] = mask
    s0 = train.TrainState.create(params, tx, key=jax.random.key(0))
    big, m_big = jax.jit(train.make_train_step(loss_fn, tx))(s0, batch)
    acc, m_acc = jax.jit(train.make_train_step(loss_fn, tx, accumulate=4))(s0, batch)
    for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_big["loss"], m_acc["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_big["accuracy"], m_acc["accuracy"], rtol=1e-5)
    assert not np.allclose(jax.tree.leaves(big.params)[0], jax.tree.leaves(params)[0])


def test_accumulation_indivisible_batch_errors():
    module, params, tx = mlp_setup()
    step = train.make_train_step(train.supervised_loss(make_apply(module)), tx, accumulate=3)
    s0 = train.TrainState.create(params, tx, key=jax.random.key(0))
    with pytest.raises(ValueError, match="not divisible by 3"):
        step(s0, data(n=32))


def test_compressor_view_and_update_schedule():
    module, params, tx = mlp_setup(optax.sgd(0.1))
    apply_fn = make_apply(module)
    comp = threshold_masking(0.3)
    loss_fn = train.supervised_loss(apply_fn)
    step = jax.jit(train.make_train_step(loss_fn, tx, compressor=comp, compressor_every=3))
    s = train.TrainState.create(params, tx, key=jax.random.key(0), compressor=comp)
    b = data()
    # the loss is computed on the masked view
    expected = ce_loss(apply_fn)(comp.apply(params, s.compressor_state), b)
    s1, m = step(s, b)
    np.testing.assert_allclose(m["loss"], expected, rtol=1e-6)
    view = comp.apply(params, s.compressor_state)
    np.testing.assert_allclose(m["sparsity"], train.view_sparsity(view), rtol=1e-6)
    assert 0.2 < float(m["sparsity"]) < 0.9
    # update ran at step 0, then steps 3 and 6 of 8 (one compiled step, no retracing)
    assert int(s1.compressor_state.count) == 1 and int(s1.compressor_state.last_step) == 0
    s = s1
    for i in range(1, 8):
        s, _ = step(s, b)
        if i == 3:
            assert int(s.compressor_state.last_step) == 3
    assert int(s.compressor_state.count) == 3
    assert int(s.compressor_state.last_step) == 6
    assert step._cache_size() == 1
    # the update's projection zeroed masked weights in the stored params
    for p, mk in zip(jax.tree.leaves(s.params), jax.tree.leaves(s.compressor_state.mask)):
        assert np.all(np.asarray(p)[~np.asarray(mk)] == 0)


def test_masked_gradients_do_not_flow_to_pruned_weights():
    module, params, tx = mlp_setup(optax.sgd(0.1))
    comp = threshold_masking(0.3)
    step = jax.jit(train.make_train_step(
        train.supervised_loss(make_apply(module)), tx, compressor=comp, compressor_every=1000))
    s = train.TrainState.create(params, tx, key=jax.random.key(0), compressor=comp)
    s, _ = step(s, data())  # update at step 0 zeroes the pruned weights
    s, _ = step(s, data(seed=1))  # no update: plain sgd, masked grads are exactly zero
    for p, mk in zip(jax.tree.leaves(s.params), jax.tree.leaves(s.compressor_state.mask)):
        assert np.all(np.asarray(p)[~np.asarray(mk)] == 0)


def test_step_projects_every_step_without_keep_compressed():
    # the step applies compressor.project after every optimizer step, whether or not the
    # update is due, so weight decay and momentum cannot revive a pruned weight
    module, params, _ = mlp_setup()
    comp = threshold_masking(0.3, ste=True)._replace(due=lambda t: t == 0)
    tx = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9))
    s = train.TrainState.create(params, tx, key=jax.random.key(0), compressor=comp)
    step = jax.jit(train.make_train_step(train.supervised_loss(make_apply(module)), tx,
                                         compressor=comp))
    for i in range(30):
        s, _ = step(s, data(seed=i % 7))
    assert int(s.compressor_state.count) == 1  # the update ran once, at step 0
    for p, m in zip(jax.tree.leaves(s.params), jax.tree.leaves(s.compressor_state.mask)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)


@pytest.mark.parametrize("keep", [True, False])
def test_keep_compressed_keeps_masked_weights_zero_for_100_steps(keep):
    module, params, _ = mlp_setup()
    comp = threshold_masking(0.3, ste=True)  # dense straight-through gradients reach pruned weights
    base = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9))
    tx = optax.chain(base, train.keep_compressed(comp)) if keep else base
    # the compressor's update (which zeroes pruned weights) runs only at step 0, and the step's
    # own projection is switched off: afterwards only the optimizer chain can keep them at zero
    comp_no_project = comp._replace(project=None, due=lambda t: t == 0)
    s = train.TrainState.create(params, tx, key=jax.random.key(0), compressor=comp_no_project)
    step = jax.jit(train.make_train_step(
        train.supervised_loss(make_apply(module)), tx, compressor=comp_no_project))
    for i in range(100):
        s, _ = step(s, data(seed=i % 7))
    zeros = [np.asarray(p)[~np.asarray(m)] for p, m in
             zip(jax.tree.leaves(s.params), jax.tree.leaves(s.compressor_state.mask))]
    if keep:
        assert all(np.all(z == 0.0) for z in zeros)
    else:  # weight decay and momentum would revive them: the test is meaningful
        assert any(np.any(z != 0.0) for z in zeros)


def test_batchnorm_model_state_updates():
    module = BNNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 5)))
    apply_fn = make_apply(module)
    tx = optax.sgd(0.1)
    s = train.TrainState.from_variables(variables, tx, key=jax.random.key(0))
    b = data()
    s1, _ = jax.jit(train.make_train_step(train.supervised_loss(apply_fn), tx))(s, b)
    _, expected = module.apply(variables, b["x"], train=True, mutable=["batch_stats"])
    for a, e in zip(jax.tree.leaves(s1.model_state), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, e, rtol=1e-6)
    assert not np.allclose(s1.model_state["batch_stats"]["BatchNorm_0"]["mean"], 0.0)
    # eval uses the running averages and does not change model_state
    ev = jax.jit(train.make_eval_step(train.supervised_loss(apply_fn, train=False)))
    m = ev(s1, b)
    logits = module.apply({"params": s1.params, **s1.model_state}, b["x"])
    np.testing.assert_allclose(m["accuracy"], np.mean(np.argmax(logits, -1) == b["y"]),
                               rtol=1e-6)


def test_accumulation_threads_batchnorm_state():
    module = BNNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 5)))
    tx = optax.sgd(0.1)
    s = train.TrainState.from_variables(variables, tx, key=jax.random.key(0))
    b = data(n=16)
    s1, _ = jax.jit(train.make_train_step(
        train.supervised_loss(make_apply(module)), tx, accumulate=2))(s, b)
    v = variables
    for half in (slice(0, 8), slice(8, 16)):
        _, st = module.apply(v, b["x"][half], train=True, mutable=["batch_stats"])
        v = {"params": variables["params"], **st}
    for a, e in zip(jax.tree.leaves(s1.model_state), jax.tree.leaves(v["batch_stats"])):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_mask_weighted_eval_equals_unpadded_eval():
    module, params, tx = mlp_setup()
    apply_fn = make_apply(module)
    s = train.TrainState.create(params, tx, key=jax.random.key(0))
    ev_fn = train.make_eval_step(train.supervised_loss(apply_fn, train=False))
    full = data(n=21)
    for ev in (ev_fn, jax.jit(ev_fn)):
        ref = ev(s, full)
        padded = {k: np.concatenate([v, v[:11]]) for k, v in full.items()}
        padded["mask"] = np.r_[np.ones(21), np.zeros(11)].astype(np.float32)
        got = ev(s, padded)
        for k in ("loss", "accuracy"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6)
        assert float(got["num_examples"]) == 21
        # split into padded batches of 8 and aggregate exactly
        parts = []
        for i in range(0, 21, 8):
            part = {k: v[i:i + 8] for k, v in full.items()}
            n = len(part["y"])
            part = {k: np.concatenate([v, v[: 8 - n]]) if n < 8 else v for k, v in part.items()}
            part["mask"] = (np.arange(8) < n).astype(np.float32)
            parts.append(ev(s, part))
        agg = train.aggregate_metrics(parts)
        np.testing.assert_allclose(agg["loss"], ref["loss"], rtol=1e-6)
        np.testing.assert_allclose(agg["accuracy"], ref["accuracy"], rtol=1e-6)
        assert agg["num_examples"] == 21.0
    # hand-computed accuracy
    logits = apply_fn({"params": params}, full["x"])
    np.testing.assert_allclose(ref["accuracy"], np.mean(np.argmax(logits, -1) == full["y"]))


def test_eval_step_uses_compressed_view():
    module, params, tx = mlp_setup()
    apply_fn = make_apply(module)
    comp = threshold_masking(0.3)
    s = train.TrainState.create(params, tx, key=jax.random.key(0), compressor=comp)
    ev = train.make_eval_step(train.supervised_loss(apply_fn, train=False), compressor=comp)
    b = data()
    expected = ce_loss(apply_fn)(comp.apply(params, s.compressor_state), b)
    np.testing.assert_allclose(ev(s, b)["loss"], expected, rtol=1e-6)


def test_rng_split_per_step_is_deterministic():
    def loss_fn(params, ms, batch, rng):
        loss = jnp.sum(params["w"] ** 2)
        return loss, (ms, {"loss": loss, "u": jax.random.uniform(rng)})

    tx = optax.sgd(0.1)

    def run():
        s = train.TrainState.create({"w": jnp.ones(2)}, tx, key=jax.random.key(7))
        step = jax.jit(train.make_train_step(loss_fn, tx))
        us = []
        for _ in range(4):
            s, m = step(s, {"x": jnp.zeros((2, 1))})
            us.append(float(m["u"]))
        return us, s

    us1, s1 = run()
    us2, s2 = run()
    assert us1 == us2 and len(set(us1)) == 4
    np.testing.assert_array_equal(jax.random.key_data(s1.rng), jax.random.key_data(s2.rng))


def test_mixed_precision_keeps_fp32_master_weights():
    dtypes = []

    def loss_fn(params, ms, batch, rng):
        dtypes.append((params["w"].dtype, batch["x"].dtype))
        pred = batch["x"] @ params["w"]
        loss = jnp.mean((pred.astype(jnp.float32) - batch["y"]) ** 2)
        return loss, (ms, {"loss": loss})

    tx = optax.sgd(0.1)
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    s32 = s16 = train.TrainState.create({"w": jnp.zeros(3)}, tx, key=jax.random.key(0))
    st32 = jax.jit(train.make_train_step(loss_fn, tx))
    st16 = jax.jit(train.make_train_step(loss_fn, tx, compute_dtype=jnp.bfloat16))
    for _ in range(30):
        s32, _ = st32(s32, {"x": x, "y": y})
        s16, m = st16(s16, {"x": x, "y": y})
    assert (jnp.bfloat16, jnp.bfloat16) in dtypes
    assert s16.params["w"].dtype == jnp.float32
    np.testing.assert_allclose(s16.params["w"], s32.params["w"], atol=0.05)
    assert m["loss"].dtype == jnp.float32


def test_make_train_step_argument_errors():
    tx = optax.sgd(0.1)
    f = train.supervised_loss(lambda *a, **k: None)
    with pytest.raises(ValueError, match="compressor_every"):
        train.make_train_step(f, tx, compressor_every=0)
    with pytest.raises(ValueError, match="accumulate"):
        train.make_train_step(f, tx, accumulate=1.5)
    with pytest.raises(ValueError, match="compute_dtype"):
        train.make_train_step(f, tx, compute_dtype=jnp.int8)
    with pytest.raises(TypeError, match="GradientTransformation"):
        train.make_train_step(f, None)
    with pytest.raises(TypeError, match="loss_fn"):
        train.make_train_step(None, tx)
    with pytest.raises(ValueError, match="label_smoothing"):
        train.supervised_loss(lambda *a, **k: None, label_smoothing=1.0)

    def bad_loss(params, ms, batch, rng):
        return jnp.sum(params["w"])

    s = train.TrainState.create({"w": jnp.ones(2)}, tx, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"\(loss, \(new_model_state, metrics\)\)"):
        train.make_train_step(bad_loss, tx)(s, {"x": jnp.ones((2, 1))})
    with pytest.raises(TypeError, match="dict"):
        train.make_train_step(bad_loss, tx)(s, (1, 2))
    comp = threshold_masking(0.1)
    with pytest.raises(ValueError, match="compressor_state is None"):
        train.make_train_step(bad_loss, tx, compressor=comp)(s, {"x": jnp.ones((2, 1))})


def test_supervised_loss_label_smoothing_and_soft_labels():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    apply_fn = lambda v, x, train=False, rng=None, return_state=False: (logits, {})
    y = jnp.array([0, 2])
    loss, (_, m) = train.supervised_loss(apply_fn, label_smoothing=0.3)(
        {}, {}, {"x": jnp.zeros((2, 1)), "y": y}, None)
    t = np.full((2, 3), 0.1)
    t[0, 0] += 0.7
    t[1, 2] += 0.7
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(loss, -np.mean(np.sum(t * logp, -1)), rtol=1e-6)
    assert float(m["accuracy"]) == 0.5
    soft = jax.nn.one_hot(y, 3)
    loss2, _ = train.supervised_loss(apply_fn)({}, {}, {"x": jnp.zeros((2, 1)), "y": soft}, None)
    loss3, _ = train.supervised_loss(apply_fn)({}, {}, {"x": jnp.zeros((2, 1)), "y": y}, None)
    np.testing.assert_allclose(loss2, loss3, rtol=1e-6)


def test_masked_mean_edge_cases():
    assert float(train.masked_mean(jnp.ones(3), jnp.zeros(3))) == 0.0
    np.testing.assert_allclose(train.masked_mean(jnp.array([1.0, 2.0]), jnp.array([0.5, 1.5])),
                               1.75)
    with pytest.raises(ValueError, match="one weight per example"):
        train.masked_mean(jnp.ones(3), jnp.ones(2))


# ---------------------------------------------------------------- mesh


def test_data_parallel_step_on_8_devices_matches_unsharded():
    assert jax.device_count() == 8
    module, params, tx = mlp_setup(optax.adam(1e-2))
    step = jax.jit(train.make_train_step(train.supervised_loss(make_apply(module)), tx))
    s0 = train.TrainState.create(params, tx, key=jax.random.key(0))
    mesh = train.make_mesh({"data": -1})
    assert mesh.shape["data"] == 8
    batches = [data(n=32, seed=i) for i in range(3)]
    a = s0
    b = train.replicate(s0, mesh)
    for batch in batches:
        a, ma = step(a, batch)
        sb = train.shard_batch(batch, mesh)
        assert sb["x"].sharding.spec == jax.sharding.PartitionSpec("data")
        assert len(sb["x"].addressable_shards) == 8
        b, mb = step(b, sb)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)


def test_mesh_helpers_errors():
    with pytest.raises(ValueError, match="at most one axis"):
        train.make_mesh({"a": -1, "b": -1})
    with pytest.raises(ValueError, match="multiply to"):
        train.make_mesh({"data": 3})
    with pytest.raises(ValueError, match="cannot be split"):
        train.make_mesh({"data": -1, "model": 3})
    mesh = train.make_mesh({"data": 4, "model": 2})
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        train.shard_batch({"x": np.zeros((6, 2))}, mesh)
    with pytest.raises(ValueError, match="no axis 'batch'"):
        train.shard_batch({"x": np.zeros((8, 2))}, mesh, axis="batch")
    r = train.replicate({"w": jnp.ones(3), "k": jax.random.key(0)}, mesh)
    assert r["w"].sharding.is_fully_replicated


def test_supervised_loss_refuses_bad_labels_and_empty_batches():
    from jax.experimental import checkify

    def apply_fn(variables, x, train=False, rng=None, return_state=False):
        logits = x @ variables["params"]["w"]
        return (logits, {}) if return_state else logits

    params = {"w": jnp.eye(3)}
    loss_fn = train.supervised_loss(apply_fn)
    x = jnp.eye(3)
    for bad in ([0, 1, 3], [0, -1, 2]):
        with pytest.raises(ValueError, match=r"batch\[\"y\"\] span .* class ids must lie in \[0, 2\]"):
            loss_fn(params, {}, {"x": x, "y": jnp.array(bad)}, None)
    with pytest.raises(ValueError, match="the batch is empty"):
        loss_fn(params, {}, {"x": jnp.zeros((0, 3)), "y": jnp.zeros((0,), jnp.int32)}, None)
    with pytest.raises(ValueError, match="the batch is empty"):  # shapes are known under jit
        jax.jit(loss_fn)(params, {}, {"x": jnp.zeros((0, 3)), "y": jnp.zeros((0,), jnp.int32)},
                         None)
    checked = train.supervised_loss(apply_fn, checked=True)
    run = jax.jit(checkify.checkify(lambda b: checked(params, {}, b, None)[0]))
    err, _ = run({"x": x, "y": jnp.array([0, 1, 3])})
    with pytest.raises(checkify.JaxRuntimeError, match=r"must lie in \[0, 2\]"):
        err.throw()
    err, loss = run({"x": x, "y": jnp.array([0, 1, 2])})
    err.throw()
    assert np.isfinite(float(loss))
