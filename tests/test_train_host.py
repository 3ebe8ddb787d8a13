"""make_train_step(compressor_update="host"): no lax.cond in the step, same training."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp.prune as jp
from jaxcomp import train
from jaxcomp.config import ConfigError
from jaxcomp.experiment import train_supervised

D, H, C = 6, 16, 3


def init(key):
    k1, k2 = jax.random.split(key)
    return {"params": {"fc1": {"kernel": jax.random.normal(k1, (D, H)), "bias": jnp.zeros(H)},
                       "fc2": {"kernel": jax.random.normal(k2, (H, C)), "bias": jnp.zeros(C)}}}


def apply_fn(variables, x, train=False, rng=None, return_state=False):
    p = variables["params"]
    out = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"]
    out = out + p["fc2"]["bias"]
    return (out, {}) if return_state else out


def batches(n_batches=40, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((16, D)).astype(np.float32),
             "y": rng.integers(0, C, 16).astype(np.int32)} for _ in range(n_batches)]


SCHEDULE = jp.polynomial_schedule(0.0, 0.8, 0, 20, update_every=5)
TX = optax.adamw(1e-2, weight_decay=1e-2)


def run(where, comp, steps=23, every=1, donate=False, chunks=(None,)):
    step = train.make_train_step(train.supervised_loss(apply_fn), TX, compressor=comp,
                                 compressor_every=every, compressor_update=where, donate=donate)
    params = init(jax.random.key(0))["params"]
    state = train.TrainState.create(params, TX, key=jax.random.key(1), compressor=comp)
    data = batches()
    done = 0
    for n in chunks:  # several fit calls resume from state.step
        n = steps - done if n is None else n
        state, _ = train.fit(state, step, data[done:done + n], steps=n, progress=False)
        done += n
    return state


def assert_same_training(a, b):
    for x, y in zip(jax.tree.leaves(a.compressor_state.masks),
                    jax.tree.leaves(b.compressor_state.masks), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(x == 0, y == 0)
    assert int(a.compressor_state.count) == int(b.compressor_state.count)
    assert int(a.compressor_state.last_update) == int(b.compressor_state.last_update)


def test_host_updates_train_like_in_step_updates():
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    a, b = run("step", comp), run("host", comp)
    assert_same_training(a, b)
    assert int(b.compressor_state.count) == 5 and int(b.step) == 23
    k = b.params["fc1"]["kernel"]
    assert int(jnp.sum(k == 0)) == round(0.8 * k.size)


def test_resumed_fit_keeps_the_schedule():
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    once = run("host", comp, steps=23)
    resumed = run("host", comp, steps=23, chunks=(7, 9, None))
    assert_same_training(once, resumed)


def test_compressor_every_never_skips_a_due_update():
    # the schedule is due every 2 steps, compressor_every=3 adds t % 3 == 0: the update runs at
    # 0, 2, 3, 4, 6, 8, 9, 10, 12 and the masks change at the schedule's steps 0, 2, ..., 12
    comp = jp.magnitude_pruning(jp.constant_schedule(0.5, update_every=2), mode="project")
    a, b = run("step", comp, steps=13, every=3), run("host", comp, steps=13, every=3)
    for s in (a, b):
        assert int(s.compressor_state.count) == 7 and int(s.compressor_state.last_update) == 12
    for s in (a, b):  # both modes project every step: stored pruned weights are exactly zero
        k, m = s.params["fc1"]["kernel"], s.compressor_state.masks["fc1"]["kernel"]
        np.testing.assert_array_equal(np.asarray(k) != 0, np.asarray(m))
    # with compressor_every=100 (the old gate) the schedule's updates still all run
    c = run("step", comp, steps=13, every=100)
    assert int(c.compressor_state.count) == 7


def test_mask_mode_and_donation():
    comp = jp.magnitude_pruning(SCHEDULE, mode="mask")
    a, b = run("step", comp), run("host", comp, donate=True)
    for x, y in zip(jax.tree.leaves(a.compressor_state.masks),
                    jax.tree.leaves(b.compressor_state.masks), strict=True):
        np.testing.assert_array_equal(x, y)
    view_a = comp.apply(a.params, a.compressor_state)
    view_b = comp.apply(b.params, b.compressor_state)
    for x, y in zip(jax.tree.leaves(view_a), jax.tree.leaves(view_b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # host mode projects every step, so the stored pruned weights are exactly zero
    k, m = b.params["fc1"]["kernel"], b.compressor_state.masks["fc1"]["kernel"]
    assert np.all(np.asarray(k)[~np.asarray(m)] == 0)


def test_the_compiled_step_holds_no_cond():
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    params = init(jax.random.key(0))["params"]
    state = train.TrainState.create(params, TX, key=jax.random.key(1), compressor=comp)
    batch = batches(1)[0]
    loss = train.supervised_loss(apply_fn)
    host = train.make_train_step(loss, TX, compressor=comp, compressor_update="host")
    in_step = train.make_train_step(loss, TX, compressor=comp)
    assert " cond[" not in str(jax.make_jaxpr(host)(state, batch))
    assert " cond[" in str(jax.make_jaxpr(in_step)(state, batch))
    assert callable(host.host_update) and not hasattr(in_step, "host_update")
    # between updates host_update returns the very same state: no device work
    assert host.host_update(state, 3) is state


def test_errors():
    loss = train.supervised_loss(apply_fn)
    comp = jp.magnitude_pruning(SCHEDULE)
    with pytest.raises(ValueError, match="must be 'step' or 'host'"):
        train.make_train_step(loss, TX, compressor=comp, compressor_update="device")
    with pytest.raises(ValueError, match="needs a compressor"):
        train.make_train_step(loss, TX, compressor_update="host")
    step = train.make_train_step(loss, TX, compressor=comp, compressor_update="host")
    state = train.TrainState.create(init(jax.random.key(0))["params"], TX, key=jax.random.key(1),
                                    compressor=comp)
    with pytest.raises(TypeError, match="step must be an int, got float"):
        step.host_update(state, 5.0)
    with pytest.raises(ValueError, match="step=-1 must be >= 0"):
        step.host_update(state, -1)


def test_train_supervised_config_field():
    model = SimpleNamespace(init=init, apply_fn=apply_fn)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, D)).astype(np.float32)
    y = rng.integers(0, C, 64).astype(np.int32)
    dataset = SimpleNamespace(x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    out = {}
    for where in ("step", "host"):
        cfg = {"optimizer": {"name": "adam", "learning_rate": 1e-2}, "steps": 12,
               "compressor_update": where}
        out[where], _, _ = train_supervised(model, dataset, cfg, key=jax.random.key(0),
                                            batch_size=16, compressor=comp, progress=False)
    assert_same_training(out["step"], out["host"])
    bad = {"optimizer": {"name": "adam", "learning_rate": 1e-2}, "steps": 2,
           "compressor_update": "later"}
    with pytest.raises(ConfigError, match="compressor_update: expected 'step' or 'host'"):
        train_supervised(model, dataset, bad, key=jax.random.key(0), batch_size=16,
                         compressor=comp, progress=False)
