"""linen_apply / nnx_apply: your own Flax modules in make_train_step, fit and distillation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcomp import data, distill, train

DS = data.synthetic(n_train=64, n_test=32, num_classes=3, input_shape=(5,), separation=3.0)
X = jnp.asarray(DS.x_train[:16])
BATCHES = list(data.batches(DS.x_train, DS.y_train, 16, key=jax.random.key(0), epochs=3))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x)))
        return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(x))


class DeterministicNet(nn.Module):  # the flag the other way round
    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return nn.Dense(3)(nn.Dropout(0.5, deterministic=deterministic)(nn.Dense(16)(x)))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(5, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.fc(x)))))


def train_steps(apply_fn, variables, n=12):
    tx = optax.adam(0.05)
    state = train.TrainState.from_variables(variables, tx, key=jax.random.key(1))
    step = jax.jit(train.make_train_step(train.supervised_loss(apply_fn), tx))
    losses = []
    for batch in BATCHES[:n]:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


def test_linen_apply_trains_a_module_with_batchnorm_and_dropout():
    net = LinenNet()
    variables = net.init(jax.random.key(0), X)
    apply_fn = train.linen_apply(net)
    # training mode: batch statistics update, dropout follows the key
    a, s = apply_fn(variables, X, train=True, rng=jax.random.key(1), return_state=True)
    b, _ = apply_fn(variables, X, train=True, rng=jax.random.key(1), return_state=True)
    c, _ = apply_fn(variables, X, train=True, rng=jax.random.key(2), return_state=True)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    ref, ref_state = net.apply(variables, X, train=True, rngs={"dropout": jax.random.key(1)},
                               mutable=["batch_stats"])
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(s["batch_stats"]["BatchNorm_0"]["mean"],
                                  ref_state["batch_stats"]["BatchNorm_0"]["mean"])
    # inference mode: the running averages, no dropout, no state
    out, s = apply_fn(variables, X, return_state=True)
    assert s == {}
    np.testing.assert_array_equal(out, net.apply(variables, X, train=False))

    state, losses = train_steps(apply_fn, variables)
    assert losses[-1] < losses[0]
    before = variables["batch_stats"]["BatchNorm_0"]["mean"]
    after = state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(before, after)  # the running statistics were trained too
    ev = train.make_eval_step(train.supervised_loss(apply_fn, train=False))
    m = train.evaluate(jax.jit(ev), state, [{"x": DS.x_test, "y": DS.y_test}])
    logits = net.apply({"params": state.params, **state.model_state}, DS.x_test, train=False)
    assert m["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == DS.y_test)))


def test_linen_apply_handles_deterministic_flags_and_rejects_other_modules():
    net = DeterministicNet()
    variables = net.init(jax.random.key(0), X)
    apply_fn = train.linen_apply(net)
    np.testing.assert_array_equal(apply_fn(variables, X),
                                  net.apply(variables, X, deterministic=True))
    a = apply_fn(variables, X, train=True, rng=jax.random.key(1))
    np.testing.assert_array_equal(
        a, net.apply(variables, X, deterministic=False, rngs={"dropout": jax.random.key(1)}))
    _, losses = train_steps(apply_fn, variables)
    assert losses[-1] < losses[0]
    with pytest.raises(TypeError, match="nnx_apply"):
        train.linen_apply(NnxNet(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="variables dict from module.init"):
        apply_fn(variables["params"], X)


def test_nnx_apply_trains_a_module_with_batchnorm_and_dropout():
    module = NnxNet(nnx.Rngs(0))
    apply_fn, variables = train.nnx_apply(module)
    assert sorted(variables) == ["nnx_state", "params"]
    a = apply_fn(variables, X, train=True, rng=jax.random.key(1))
    b = apply_fn(variables, X, train=True, rng=jax.random.key(1))
    c = apply_fn(variables, X, train=True, rng=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # inference equals the module itself in eval mode; the module is not mutated
    module.eval()
    np.testing.assert_allclose(apply_fn(variables, X), module(X), rtol=1e-6)

    mean0 = np.array(variables["nnx_state"]["bn"]["mean"][...])
    state, losses = train_steps(apply_fn, variables)
    assert losses[-1] < losses[0]
    assert not np.allclose(mean0, state.model_state["nnx_state"]["bn"]["mean"][...])
    np.testing.assert_array_equal(mean0, variables["nnx_state"]["bn"]["mean"][...])
    trained = nnx.clone(module)  # load the trained values into a copy of the module
    nnx.update(trained, state.model_state["nnx_state"])
    params_state = nnx.state(trained, nnx.Param)
    nnx.replace_by_pure_dict(params_state, state.params)
    nnx.update(trained, params_state)
    trained.eval()
    np.testing.assert_allclose(apply_fn({"params": state.params, **state.model_state}, X),
                               trained(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="linen_apply"):
        train.nnx_apply(LinenNet())


def test_adapters_work_for_distillation():
    teacher, student = LinenNet(), DeterministicNet()
    tv = teacher.init(jax.random.key(0), X)
    sv = student.init(jax.random.key(1), X)
    loss_fn = distill.distillation_loss(train.linen_apply(student), train.linen_apply(teacher),
                                        tv, temperature=2.0, alpha=0.5)
    tx = optax.adam(0.05)
    state = train.TrainState.from_variables(sv, tx, key=jax.random.key(2))
    step = jax.jit(train.make_train_step(loss_fn, tx))
    kd = []
    for batch in BATCHES[:10]:
        state, metrics = step(state, batch)
        kd.append(float(metrics["kd"]))
    assert kd[-1] < kd[0]


def test_wrong_apply_functions_name_the_adapters():
    net = LinenNet()
    variables = net.init(jax.random.key(0), X)
    for bad, names in [(net.apply, "linen_apply"), (net, "linen_apply"),
                       (NnxNet(nnx.Rngs(0)), "nnx_apply"),
                       (lambda v, x: net.apply(v, x), "linen_apply.*nnx_apply")]:
        with pytest.raises(TypeError, match=names):
            train.supervised_loss(bad)
    batch = {"x": X, "y": jnp.zeros(16, jnp.int32)}

    def forwards(v, x, **kw):  # hands train=, rng=, return_state= to the module
        return net.apply(v, x, **kw)

    loss_fn = train.supervised_loss(forwards)
    with pytest.raises(TypeError, match="called as apply_fn.*linen_apply"):
        loss_fn(variables["params"], {"batch_stats": variables["batch_stats"]}, batch,
                jax.random.key(0))

    def no_state(v, x, train=False, rng=None, return_state=False):
        return net.apply(v, x)

    with pytest.raises(TypeError, match=r"must return \(logits, new_model_state\)"):
        train.supervised_loss(no_state)(variables["params"],
                                        {"batch_stats": variables["batch_stats"]}, batch,
                                        jax.random.key(0))
    with pytest.raises(TypeError, match="must be callable"):
        train.supervised_loss(3)
