"""Dynamic sparse training (SET, RigL) and optimizer-moment resets for any optax optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp as jc
from jaxcomp.models import get_model
from jaxcomp.prune.compressors.dst import drop_fraction, rigl_pruning, set_pruning
from jaxcomp.prune.compressors.optim_reset import moment_paths, reset_optimizer_state, reset_regrown
from jaxcomp.train import TrainState, make_train_step, supervised_loss


def _params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"fc1": {"kernel": jax.random.normal(k1, (12, 10)), "bias": jnp.zeros(10)},
            "fc2": {"kernel": jax.random.normal(k2, (10, 6)), "bias": jnp.zeros(6)}}


def test_drop_fraction_cosine_hand_values():
    vals = [float(drop_fraction(t, initial=0.4, end_step=200)) for t in (0, 100, 150, 200, 250)]
    np.testing.assert_allclose(vals, [0.4, 0.2, 0.2 * (1 + np.cos(0.75 * np.pi)), 0.0, 0.0],
                               atol=1e-7)


# k = round(f(t) * active), f(t) = 0.5/2 * (1 + cos(pi t / 100)), worked by hand for t = 10..90:
# fc1 (24 active): 11.71, 10.85, 9.53, 7.85, 6.00, 4.15, 2.47, 1.15, 0.29
# fc2 (12 active):  5.85,  5.43, 4.76, 3.93, 3.00, 2.07, 1.24, 0.57, 0.15
HAND_K = {"fc1": [12, 11, 10, 8, 6, 4, 2, 1, 0], "fc2": [6, 5, 5, 4, 3, 2, 1, 1, 0]}


@pytest.mark.parametrize("factory", [rigl_pruning, set_pruning])
def test_constant_exact_sparsity_and_counts_follow_schedule(factory):
    p = _params()
    comp = factory(0.8, drop_fraction=0.5, update_every=10, end_step=100, allocation="uniform",
                   key=jax.random.key(5))
    s = comp.init(p)
    active = {"fc1": 120 - 96, "fc2": 60 - 48}
    params = comp.project(p, s)
    update = jax.jit(lambda p, s, t, g: comp.update(p, s, step=t, grads=g))
    for step in range(1, 120):
        g = jax.tree.map(lambda x, st=step: jnp.sin(x * st + 1.0), params)
        before = s.masks
        params, s = update(params, s, jnp.int32(step), g)
        for name in ("fc1", "fc2"):
            new, old = s.masks[name]["kernel"], before[name]["kernel"]
            grown = s.regrown[name]["kernel"]
            assert int(new.sum()) == active[name]
            assert s.masks[name]["bias"] is not None and not hasattr(s.masks[name]["bias"], "shape")
            dropped = old & ~(new & ~grown)  # new = (old - dropped) | grown, grown disjoint
            if step % 10 == 0 and step < 100:
                k = HAND_K[name][step // 10 - 1]
                assert int(grown.sum()) == k and int(dropped.sum()) == k, (name, step)
                assert not bool(jnp.any(grown & (old & ~dropped)))  # grown among the inactive
            else:
                assert bool(jnp.all(new == old)) and int(grown.sum()) == 0
            # pruned and just-grown weights are zero in the stored params
            w = params[name]["kernel"]
            assert bool(jnp.all(jnp.where(~new | grown, w == 0, True)))
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


def _tree_np(t):
    return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x)) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else np.asarray(x), t)


@pytest.mark.parametrize("factory", [set_pruning, rigl_pruning])
def test_jit_matches_eager(factory):
    p = _params(1)
    comp = factory(0.5, update_every=5, end_step=50, allocation="uniform", key=jax.random.key(7))
    s = comp.init(p)
    g = jax.tree.map(lambda x: jnp.cos(3.0 * x), p)
    update = jax.jit(lambda p, s, t: comp.update(p, s, step=t, grads=g))
    for t in (5, 6):  # an update step and a hold step
        a = comp.update(comp.project(p, s), s, step=t, grads=g)
        b = update(comp.project(p, s), s, jnp.int32(t))
        jax.tree.map(np.testing.assert_array_equal, _tree_np(a), _tree_np(b))


def test_set_growth_uses_key_deterministically():
    p = _params(1)

    def grown(key, state_key=None, grads=None):
        comp = set_pruning(0.5, update_every=5, end_step=50, allocation="uniform", key=key)
        s = comp.init(p)
        if state_key is not None:
            s = s._replace(key=state_key)
        _, s2 = comp.update(comp.project(p, s), s, step=5, grads=grads)
        return np.asarray(s.masks["fc1"]["kernel"]), np.asarray(s2.regrown["fc1"]["kernel"])

    m1, g1 = grown(jax.random.key(7))
    m2, g2 = grown(jax.random.key(7))
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(g1, g2)  # same key: same growth
    _, g3 = grown(jax.random.key(7), grads=jax.tree.map(jnp.ones_like, p))
    np.testing.assert_array_equal(g1, g3)  # gradients are ignored
    m4, g4 = grown(jax.random.key(7), state_key=jax.random.key(99))
    np.testing.assert_array_equal(m1, m4)
    assert g4.sum() == g1.sum() and not np.array_equal(g1, g4)  # growth follows the key
    m5, _ = grown(jax.random.key(8))
    assert not np.array_equal(m1, m5)  # so do the initial masks


def test_update_compiles_once_across_updates():
    p = _params()
    comp = rigl_pruning(0.7, update_every=3, end_step=30)
    s = comp.init(p)
    traces = []

    @jax.jit
    def upd(p, s, t):
        traces.append(t)
        return comp.update(p, s, step=t, grads=jax.tree.map(jnp.sin, p))

    params = comp.project(p, s)
    for t in range(1, 20):
        params, s = upd(params, s, jnp.int32(t))
    assert len(traces) == 1 and int(s.count) == 6


def test_gradient_wrt_stored_params_is_dense_at_pruned_positions():
    # make_train_step differentiates loss(comp.apply(params)) w.r.t. the stored params: the
    # straight-through view must pass the gradient of the masked model to the pruned weights.
    p = {"w": jax.random.normal(jax.random.key(0), (6, 4))}
    comp = rigl_pruning(0.75, end_step=10)
    s = comp.init(p)
    x = jax.random.normal(jax.random.key(1), (5, 6))

    y = jax.random.normal(jax.random.key(2), (5, 4))

    def loss(params):
        return jnp.sum((jnp.tanh(x @ params["w"]) - y) ** 2)

    view = comp.apply(p, s)
    np.testing.assert_array_equal(np.asarray(view["w"]), np.asarray(comp.project(p, s)["w"]))
    g = jax.grad(lambda q: loss(comp.apply(q, s)))(p)["w"]
    g_oracle = jax.grad(loss)(comp.project(p, s))["w"]  # the gradient at the masked model
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_oracle), rtol=1e-6)
    pruned = ~np.asarray(s.masks["w"])
    assert np.all(np.asarray(g)[pruned] != 0)


def test_exact_counts_with_nan_ties_and_zero_gradients():
    p = {"w": jax.random.normal(jax.random.key(2), (8, 8))}
    comp = rigl_pruning(0.5, drop_fraction=1.0, update_every=1, end_step=1000)
    s = comp.init(p)
    params = comp.project(p, s)
    params = {"w": params["w"].at[jnp.nonzero(s.masks["w"], size=1)].set(jnp.nan)}
    update = jax.jit(lambda p, s, g: comp.update(p, s, step=1, grads={"w": g}))
    for g in (jnp.zeros((8, 8)), jnp.full((8, 8), jnp.nan), jnp.ones((8, 8))):
        params, s = update(params, s, g)
        assert int(s.masks["w"].sum()) == 32
        assert int(s.regrown["w"].sum()) == 32  # f(1) ~ 1: all 32 actives replaced
        assert not bool(jnp.any(jnp.isnan(params["w"])))  # the NaN weight was dropped


def test_erk_allocation_total():
    p = {"a": {"kernel": jnp.ones((100, 100))}, "b": {"kernel": jnp.ones((100, 4))}}
    s = set_pruning(0.9, end_step=10).init(p)
    kept = int(s.masks["a"]["kernel"].sum()) + int(s.masks["b"]["kernel"].sum())
    assert kept == 10_400 - round(0.9 * 10_400)
    assert float(s.masks["b"]["kernel"].mean()) > float(s.masks["a"]["kernel"].mean())


ALL_PATHS = {"fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias"}
OPTIMIZERS = {
    "adam": (lambda: optax.adam(1e-2), ALL_PATHS),
    "sgd_momentum": (lambda: optax.sgd(1e-2, momentum=0.9), ALL_PATHS),
    "lion": (lambda: optax.lion(1e-3), ALL_PATHS),
    "inject_adam": (lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), ALL_PATHS),
    "multisteps_adam": (lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
                        ALL_PATHS),
    "adamw": (lambda: optax.adamw(1e-2, weight_decay=1e-2), ALL_PATHS),
    "chain_clip_adam": (lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.add_noise(
        0.01, 0.55, 0), optax.scale_by_adam(), optax.scale(-1e-2)), ALL_PATHS),
    "masked_momentum": (lambda: optax.masked(optax.sgd(1e-2, momentum=0.9), {
        "fc1": {"kernel": True, "bias": False}, "fc2": {"kernel": True, "bias": False}}),
        {"fc1/kernel", "fc2/kernel"}),
}


def _path(kp):
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in kp)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_reset_optimizer_state_any_optimizer(name):
    p = _params(2)
    make, expected = OPTIMIZERS[name]
    tx = make()
    st = tx.init(p)
    for i in range(3):
        g = jax.tree.map(lambda x, i=i: jnp.cos(x + i) + 2.0, p)
        _, st = tx.update(g, st, p)
    found = moment_paths(st, p)
    assert set(found.values()) == expected, name
    reset = {"fc1": {"kernel": jnp.zeros((12, 10), bool).at[0, :3].set(True), "bias": None},
             "fc2": {"kernel": jnp.zeros((10, 6), bool), "bias": None}}
    new = reset_optimizer_state(st, p, reset)
    assert jax.tree.structure(new) == jax.tree.structure(st)
    flat_old = dict(jax.tree_util.tree_flatten_with_path(st)[0])
    n_reset = 0
    for kp, leaf in jax.tree_util.tree_flatten_with_path(new)[0]:
        old, path = flat_old[kp], _path(kp)
        leaf, old = _tree_np(leaf), _tree_np(old)  # add_noise holds a PRNG key
        if path in found and found[path] == "fc1/kernel":
            n_reset += 1
            assert np.all(np.asarray(leaf)[0, :3] == 0), (name, path)
            assert np.all(np.asarray(old)[0, :3] != 0), (name, path)
            np.testing.assert_array_equal(np.asarray(leaf)[1:], np.asarray(old)[1:])
            np.testing.assert_array_equal(np.asarray(leaf)[0, 3:], np.asarray(old)[0, 3:])
        else:  # counts, hyperparameters, other params' moments: untouched
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(old))
    assert n_reset >= 1


def test_reset_bare_array_params():
    p = jnp.ones(4)
    tx = optax.sgd(0.1, momentum=0.9)
    _, st = tx.update(jnp.ones(4), tx.init(p), p)
    new = reset_optimizer_state(st, p, jnp.array([True, False, False, True]))
    np.testing.assert_array_equal(np.asarray(new[0].trace), [0.0, 1.0, 1.0, 0.0])


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

    @jax.jit
    def check(state):  # per layer: (kept count, pruned stored weights all exactly zero)
        cs = state.compressor_state
        return [(jnp.sum(cs.masks[n]["kernel"]),
                 jnp.all(jnp.where(cs.masks[n]["kernel"], True, state.params[n]["kernel"] == 0)))
                for n in ("fc1", "fc2", "fc3")]

    losses = []
    for _ in range(60):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
        for (kept, zero), name in zip(check(state), ("fc1", "fc2", "fc3")):
            size = state.params[name]["kernel"].size
            assert int(kept) == size - round(0.8 * size) and bool(zero)
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
    with pytest.raises(ValueError, match=r"sparsity=1.0 must be a fraction of zeros in \[0, 1\)"):
        rigl_pruning(1.0, end_step=10)
    with pytest.raises(ValueError, match="sparsity=-0.1"):
        set_pruning(-0.1, end_step=10)
    with pytest.raises(TypeError, match="sparsity must be a real number"):
        set_pruning([0.5], end_step=10)
    with pytest.raises(ValueError, match=r"drop_fraction=1.5 must lie in \(0, 1\]"):
        set_pruning(0.5, drop_fraction=1.5, end_step=10)
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
