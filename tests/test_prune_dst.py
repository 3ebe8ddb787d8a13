"""Dynamic sparse training (SET, RigL) and optimizer-moment resets for any optax optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp as jc
from jaxcomp.models import get_model
from jaxcomp.prune.dst import drop_fraction, rigl_pruning, set_pruning
from jaxcomp.prune.optim_reset import moment_paths, reset_optimizer_state, reset_regrown
from jaxcomp.train import TrainState, make_train_step, supervised_loss


def _params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"fc1": {"kernel": jax.random.normal(k1, (12, 10)), "bias": jnp.zeros(10)},
            "fc2": {"kernel": jax.random.normal(k2, (10, 6)), "bias": jnp.zeros(6)}}


def test_drop_fraction_cosine_hand_values():
    vals = [float(drop_fraction(t, initial=0.4, end_step=200)) for t in (0, 100, 150, 200, 250)]
    np.testing.assert_allclose(vals, [0.4, 0.2, 0.2 * (1 + np.cos(0.75 * np.pi)), 0.0, 0.0],
                               atol=1e-7)


def test_constant_exact_sparsity_and_counts_follow_schedule():
    p = _params()
    comp = rigl_pruning(0.8, drop_fraction=0.5, update_every=10, end_step=100)
    s = comp.init(p)
    assert int(s.masks["fc1"]["kernel"].sum()) == 120 - 96
    assert int(s.masks["fc2"]["kernel"].sum()) == 60 - 48
    params = comp.project(p, s)
    for step in range(1, 120):
        g = jax.tree.map(lambda x, st=step: jnp.sin(x * st), params)
        before = s.masks
        params, s = comp.update(params, s, step=step, grads=g)
        assert int(s.masks["fc1"]["kernel"].sum()) == 24
        assert int(s.masks["fc2"]["kernel"].sum()) == 12
        moved = int((s.masks["fc1"]["kernel"] & ~before["fc1"]["kernel"]).sum())
        if step % 10 == 0 and step < 100:
            k = round(float(drop_fraction(step, initial=0.5, end_step=100)) * 24)
            assert int(s.regrown["fc1"]["kernel"].sum()) == k
            assert moved <= k
        else:
            assert moved == 0 and int(s.regrown["fc1"]["kernel"].sum()) == 0
        # pruned and just-grown weights are zero in the stored params
        w = params["fc1"]["kernel"]
        assert bool(jnp.all(jnp.where(~s.masks["fc1"]["kernel"] | s.regrown["fc1"]["kernel"],
                                      w == 0, True)))
    assert int(s.count) == 9 and int(s.last_update) == 90


def test_rigl_grows_topk_gradient_brute_force():
    p = {"w": jax.random.normal(jax.random.key(3), (6, 5))}
    comp = rigl_pruning(0.6, drop_fraction=0.5, update_every=1, end_step=1000)
    s = comp.init(p)
    params = comp.project(p, s)
    g = {"w": jax.random.normal(jax.random.key(4), (6, 5))}
    _, s2 = comp.update(params, s, step=1, grads=g)
    m = np.asarray(s.masks["w"]).ravel()
    w = np.abs(np.asarray(params["w"])).ravel()
    k = round(float(drop_fraction(1, initial=0.5, end_step=1000)) * m.sum())
    active = np.flatnonzero(m)
    drop = active[np.argsort(w[active], kind="stable")[:k]]
    after = m.copy()
    after[drop] = False
    inactive = np.flatnonzero(~after)
    ga = np.abs(np.asarray(g["w"])).ravel()
    grow = inactive[np.argsort(-ga[inactive], kind="stable")[:k]]
    expect = after.copy()
    expect[grow] = True
    np.testing.assert_array_equal(np.asarray(s2.masks["w"]).ravel(), expect)
    regrown = np.zeros_like(m)
    regrown[grow] = True
    np.testing.assert_array_equal(np.asarray(s2.regrown["w"]).ravel(), regrown)


def test_set_growth_deterministic_by_key_and_jit_matches_eager():
    p = _params(1)
    comp = set_pruning(0.5, update_every=5, end_step=50, allocation="uniform",
                       key=jax.random.key(7))
    s = comp.init(p)
    a = comp.update(comp.project(p, s), s, step=5)
    b = jax.jit(lambda p, s: comp.update(p, s, step=jnp.int32(5)))(comp.project(p, s), s)
    a, b = (jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x, t) for t in (a, b))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    other = set_pruning(0.5, update_every=5, end_step=50, allocation="uniform",
                        key=jax.random.key(8))
    so = other.init(p)
    assert not np.array_equal(np.asarray(so.masks["fc1"]["kernel"]),
                              np.asarray(s.masks["fc1"]["kernel"]))


def test_erk_allocation_total():
    p = {"a": {"kernel": jnp.ones((100, 100))}, "b": {"kernel": jnp.ones((100, 4))}}
    s = set_pruning(0.9, end_step=10).init(p)
    kept = int(s.masks["a"]["kernel"].sum()) + int(s.masks["b"]["kernel"].sum())
    assert kept == 10_400 - round(0.9 * 10_400)
    assert float(s.masks["b"]["kernel"].mean()) > float(s.masks["a"]["kernel"].mean())


OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-2),
    "sgd_momentum": lambda: optax.sgd(1e-2, momentum=0.9),
    "lion": lambda: optax.lion(1e-3),
    "inject_adam": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    "multisteps_adam": lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_reset_optimizer_state_any_optimizer(name):
    p = _params(2)
    tx = OPTIMIZERS[name]()
    st = tx.init(p)
    g = jax.tree.map(jnp.ones_like, p)
    for _ in range(3):
        _, st = tx.update(g, st, p)
    found = moment_paths(st, p)
    assert found, name
    assert set(found.values()) == {"fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias"}
    reset = {"fc1": {"kernel": jnp.zeros((12, 10), bool).at[0, :3].set(True), "bias": None},
             "fc2": {"kernel": jnp.zeros((10, 6), bool), "bias": None}}
    new = reset_optimizer_state(st, p, reset)
    flat_old = dict(jax.tree_util.tree_flatten_with_path(st)[0])
    for kp, leaf in jax.tree_util.tree_flatten_with_path(new)[0]:
        old = flat_old[kp]
        path = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                        for k in kp)
        if path.endswith("fc1/kernel") and np.ndim(leaf) == 2:
            assert np.all(np.asarray(leaf)[0, :3] == 0), (name, path)
            np.testing.assert_array_equal(np.asarray(leaf)[1:], np.asarray(old)[1:])
            assert np.any(np.asarray(old)[0, :3] != 0)
        else:
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(old))


def test_reset_errors():
    p = _params()
    st = optax.adam(1e-3).init(p)
    with pytest.raises(ValueError, match="reset 'fc1/kernel' has shape"):
        reset_optimizer_state(st, p, {"fc1": {"kernel": jnp.ones((2, 2), bool)}})
    with pytest.raises(ValueError, match="path 'zzz/kernel' that params lack"):
        reset_optimizer_state(st, p, {"zzz": {"kernel": jnp.ones((2, 2), bool)}})


def test_end_to_end_rigl_with_reset_regrown_in_make_train_step():
    spec = get_model("mnist1d_mlp", hidden=(32, 32))
    v = spec.init(jax.random.key(0))
    comp = rigl_pruning(0.8, update_every=5, end_step=40, where=r".*/kernel")
    tx = optax.chain(reset_regrown(optax.adamw(1e-2, weight_decay=1e-3)),
                     jc.keep_compressed(comp))
    state = TrainState.create(v["params"], tx, key=jax.random.key(1), compressor=comp)
    state = state.replace(params=comp.project(state.params, state.compressor_state))
    step = jax.jit(make_train_step(supervised_loss(spec.apply_fn), tx, compressor=comp))
    x = jax.random.normal(jax.random.key(2), (64, 40))
    y = jnp.argmax(x[:, :10], -1)
    batch = {"x": x, "y": y}
    losses = []
    for _ in range(60):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
        cs = state.compressor_state
        for name in ("fc1", "fc2", "fc3"):
            mask = cs.masks[name]["kernel"]
            assert int(mask.sum()) == mask.size - round(0.8 * mask.size)
            assert bool(jnp.all(jnp.where(mask, True, state.params[name]["kernel"] == 0)))
    assert int(state.compressor_state.count) == 7  # steps 5, 10, ..., 35
    assert losses[-1] < losses[0]
    assert int(state.opt_state[0].seen) == 7


def test_reset_regrown_zeroes_moments_once_per_update():
    p = {"w": jax.random.normal(jax.random.key(0), (5, 4))}
    comp = rigl_pruning(0.5, drop_fraction=0.5, update_every=2, end_step=100)
    tx = reset_regrown(optax.adam(1e-2))
    cs, opt = comp.init(p), tx.init(p)
    g = {"w": jnp.ones((5, 4))}
    _, opt = tx.update(g, opt, p, compressor_state=cs)
    p, cs = comp.update(p, cs, step=2, grads={"w": jnp.arange(20.0).reshape(5, 4)})
    assert int(cs.regrown["w"].sum()) > 0
    mu_before = opt.inner[0].mu["w"]
    _, opt = tx.update(g, opt, p, compressor_state=cs)
    # reset to 0 then one adam step: mu = (1 - b1) * g = 0.1 at regrown positions
    mu = opt.inner[0].mu["w"]
    r = cs.regrown["w"]
    np.testing.assert_allclose(np.asarray(mu)[np.asarray(r)], 0.1, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mu)[~np.asarray(r)],
                               0.9 * np.asarray(mu_before)[~np.asarray(r)] + 0.1, rtol=1e-6)
    # a second optimizer step with the same compressor state does not reset again
    _, opt = tx.update(g, opt, p, compressor_state=cs)
    np.testing.assert_allclose(np.asarray(opt.inner[0].mu["w"])[np.asarray(r)], 0.19, rtol=1e-6)


def test_dst_errors():
    with pytest.raises(ValueError, match="sparsity=1.0"):
        rigl_pruning(1.0, end_step=10)
    with pytest.raises(ValueError, match="drop_fraction=0"):
        rigl_pruning(0.5, drop_fraction=0.0, end_step=10)
    with pytest.raises(ValueError, match="update_every=0"):
        set_pruning(0.5, update_every=0, end_step=10)
    with pytest.raises(ValueError, match="end_step"):
        set_pruning(0.5, end_step=-1)
    with pytest.raises(ValueError, match="allocation"):
        set_pruning(0.5, end_step=10, allocation="er")
    with pytest.raises(ValueError, match="matches no parameter"):
        rigl_pruning(0.5, end_step=10, where=r"nothing").init(_params())
    comp = rigl_pruning(0.5, end_step=10)
    s = comp.init(_params())
    with pytest.raises(ValueError, match="needs grads="):
        comp.update(_params(), s, step=1)
