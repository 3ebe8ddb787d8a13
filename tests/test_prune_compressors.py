"""Pruning compressors: states, schedules under jit, gradients by mode, optax, Flax, chains."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp as jc
import jaxcomp.prune as jp


def tree(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {"hidden": {"kernel": jax.random.normal(k[0], (12, 16)), "bias": jnp.full(16, 0.1)},
            "out": {"kernel": jax.random.normal(k[1], (16, 4)), "bias": jnp.zeros(4)}}


def forward(p, x):
    h = jnp.tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return h @ p["out"]["kernel"] + p["out"]["bias"]


X = jax.random.normal(jax.random.key(42), (8, 12))


def loss_of(comp, state):
    return lambda p: jnp.mean(forward(comp.apply(p, state), X) ** 2)


def nz(x):
    return int(np.count_nonzero(np.asarray(x)))


def test_state_masks_view_and_info():
    p = tree()
    comp = jp.magnitude_pruning(0.75)
    s = comp.init(p)
    assert isinstance(s, jp.MagnitudePruningState)
    assert isinstance(s.masks["hidden"]["bias"], jc.MaskedNode)
    assert s.masks["hidden"]["kernel"].dtype == bool
    np.testing.assert_array_equal(s.masks["out"]["kernel"],
                                  jp.threshold_mask(jnp.abs(p["out"]["kernel"]), 0.75))
    view = comp.apply(p, s)
    assert nz(view["hidden"]["kernel"]) == 48 and view["hidden"]["bias"] is p["hidden"]["bias"]
    assert float(s.sparsity) == pytest.approx(0.75) and float(s.pruned_fraction) == 0.75
    info = jc.compression_info(s)
    assert set(info) == {"hidden/kernel", "out/kernel"}
    assert info["out/kernel"].density == pytest.approx(0.25)
    a = jc.metrics.analyze(forward, comp.apply(p, s), X[:1], compression=s, compile=False)
    assert a.effective_macs == pytest.approx(0.25 * a.macs)
    # mask mode: update zeros stored weights, project keeps them zero
    p2, s2 = comp.update(p, s, step=0)
    assert nz(p2["hidden"]["kernel"]) == 48 and p2["out"]["bias"] is p["out"]["bias"]
    bumped = jax.tree.map(lambda x: x + 1.0, p2)
    assert nz(comp.project(bumped, s2)["hidden"]["kernel"]) == 48


def test_score_based_factories_share_one_state_type():
    p = tree()
    g = jax.tree.map(lambda x: jnp.cos(3.0 * x), p)
    comps = {
        "magnitude": jp.magnitude_pruning(0.5, update_every=1),
        "random": jp.random_pruning(0.5, key=jax.random.key(0), update_every=1),
        "saliency": jp.saliency_pruning(0.5, update_every=1),
        "movement": jp.movement_pruning(0.5, update_every=1),
        "obd": jp.obd_pruning(0.5, hessian_fn=lambda q: jax.tree.map(jnp.ones_like, q),
                              update_every=1),
    }
    fields = ("masks", "sparsity", "pruned_fraction", "count", "last_update", "scores")
    for name, comp in comps.items():
        s0 = comp.init(p)
        _, s1 = jax.jit(lambda q, s, c=comp: c.update(q, s, step=0, grads=g))(p, s0)
        for s in (s0, s1):
            assert type(s) is jp.PruningState and s._fields == fields, name
        assert jax.tree.structure(s0) == jax.tree.structure(s1), name
        if name == "movement":  # the one factory whose scores accumulate
            assert isinstance(s1.scores["hidden"]["bias"], jc.MaskedNode)
            np.testing.assert_allclose(s1.scores["out"]["kernel"],
                                       -p["out"]["kernel"] * g["out"]["kernel"], rtol=1e-6)
        else:
            assert s0.scores == s1.scores == jc.EmptyState(), name
            assert jax.tree.leaves(s1.scores) == []
        # per-path densities for the metrics, read from the state
        info = jc.compression_info(s1)
        assert set(info) == {"hidden/kernel", "out/kernel"}, name
        for path, leaf in (("hidden/kernel", s1.masks["hidden"]["kernel"]),
                           ("out/kernel", s1.masks["out"]["kernel"])):
            assert info[path].density == pytest.approx(float(np.mean(leaf))) == 0.5, name
    for alias in ("MagnitudePruningState", "RandomPruningState", "SaliencyPruningState",
                  "MovementPruningState", "ObdPruningState"):
        assert getattr(jp, alias) is jp.PruningState
    # a state is a plain pytree: it round-trips through flatten/unflatten and jit
    s = comps["movement"].init(p)
    leaves, treedef = jax.tree.flatten(s)
    assert type(jax.tree.unflatten(treedef, leaves)) is jp.PruningState


def test_schedule_under_jit_without_retrace():
    p = tree()
    sched = jp.polynomial_schedule(0.0, 0.8, 2, 8, update_every=2)
    comp = jp.magnitude_pruning(sched, scope="global")
    traces = []

    @jax.jit
    def upd(p, s, step):
        traces.append(1)
        return comp.update(p, s, step=step)

    s = comp.init(p)
    n_sel = 12 * 16 + 16 * 4
    seen = []
    for t in range(12):
        p, s = upd(p, s, t)
        seen.append((float(s.sparsity), int(s.count), int(s.last_update)))
        zeros = n_sel - nz(p["hidden"]["kernel"]) - nz(p["out"]["kernel"])
        assert zeros == jp.num_pruned(float(sched(t)), n_sel)
    assert len(traces) == 1
    upd_steps = [t for t in range(12) if bool(sched.is_update_step(t))]
    assert upd_steps == [2, 4, 6, 8]
    assert [c for _, c, _ in seen] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert seen[-1][2] == 8 and seen[-1][0] == pytest.approx(0.8)


def test_mask_mode_gradients_are_zero_for_pruned():
    p = tree()
    comp = jp.magnitude_pruning(0.5)
    s = comp.init(p)
    for fn in (jax.grad, lambda f: jax.jit(jax.grad(f))):
        g = fn(loss_of(comp, s))(p)
        m = np.asarray(s.masks["hidden"]["kernel"])
        assert (np.asarray(g["hidden"]["kernel"])[~m] == 0).all()
        assert (np.asarray(g["hidden"]["kernel"])[m] != 0).any()


def numerical_view_grad(view):
    """Central differences of the loss w.r.t. the (sparse) view of out/kernel."""

    def f(w):
        return float(jnp.mean(forward({**view, "out": {**view["out"], "kernel": w}}, X) ** 2))

    w0 = np.asarray(view["out"]["kernel"], np.float64)
    num, eps = np.zeros_like(w0), 1e-3
    for i in range(w0.shape[0]):
        for j in range(w0.shape[1]):
            d = np.zeros_like(w0)
            d[i, j] = eps
            num[i, j] = (f(jnp.asarray(w0 + d, jnp.float32))
                         - f(jnp.asarray(w0 - d, jnp.float32))) / (2 * eps)
    return num


@pytest.mark.parametrize("mode,lam", [("ste", 0.0), ("sr_ste", 0.3)])
def test_ste_and_sr_ste_gradients_numerically(mode, lam):
    p = tree()
    comp = jp.magnitude_pruning(0.5, mode=mode, **({"sr_ste_decay": lam} if lam else {}))
    s = comp.init(p)
    view = comp.apply(p, s)
    assert nz(view["hidden"]["kernel"]) == 96
    m = np.asarray(s.masks["out"]["kernel"])
    want = numerical_view_grad(view) + lam * np.where(m, 0.0, np.asarray(p["out"]["kernel"]))
    for fn in (jax.grad, lambda f: jax.jit(jax.grad(f))):
        g = fn(loss_of(comp, s))(p)["out"]["kernel"]
        np.testing.assert_allclose(np.asarray(g), want, atol=2e-3)
    # STE modes keep the stored weights dense and have no projection
    p2, _ = comp.update(p, s, step=0)
    assert p2["out"]["kernel"] is p["out"]["kernel"] and comp.project is None


def train_pruned(opt, steps=100):
    p = tree()
    comp = jp.magnitude_pruning(jp.iterative_schedule([0, 30, 60], [0.3, 0.6, 0.9]))
    tx = optax.chain(opt, jc.keep_compressed(comp))
    s, o = comp.init(p), tx.init(p)

    @jax.jit
    def step(p, o, s, t):
        g = jax.grad(lambda q: jnp.mean((forward(comp.apply(q, s), X) - 1.0) ** 2))(p)
        u, o = tx.update(g, o, p, compressor_state=s)
        p = optax.apply_updates(p, u)
        p, s = comp.update(p, s, step=t, grads=g)
        return p, o, s

    for t in range(steps):
        p, o, s = step(p, o, s, t)
        yield t, p, s


@pytest.mark.parametrize("opt", [optax.adamw(1e-2, weight_decay=0.1),
                                 optax.sgd(1e-2, momentum=0.9)], ids=["adamw", "sgd_momentum"])
def test_optax_bridge_keeps_pruned_weights_zero(opt):
    for t, p, s in train_pruned(opt):
        for path in ("hidden", "out"):
            w, m = np.asarray(p[path]["kernel"]), np.asarray(s.masks[path]["kernel"])
            assert (w[~m] == 0.0).all()
        if t in (29, 59, 99):
            assert float(s.pruned_fraction) == pytest.approx({29: 0.3, 59: 0.6, 99: 0.9}[t],
                                                             abs=0.01)
    assert nz(p["hidden"]["bias"]) == 16  # biases are trained, never pruned


def test_random_saliency_movement_obd():
    p = tree()
    r = jp.random_pruning(jp.iterative_schedule([0, 5], [0.5, 0.75]), key=jax.random.key(3))
    s0 = r.init(p)
    p1, s1 = r.update(p, s0, step=0)
    np.testing.assert_array_equal(s1.masks["out"]["kernel"], s0.masks["out"]["kernel"])  # nested
    _, s2 = r.update(p1, s1, step=5)
    m1, m2 = np.asarray(s1.masks["out"]["kernel"]), np.asarray(s2.masks["out"]["kernel"])
    assert (m2 <= m1).all() and (~m2).sum() == 48
    # saliency: |w g| with the grads given to update
    g = jax.tree.map(lambda x: jnp.cos(x * 3.0), p)
    sal = jp.saliency_pruning(0.5, update_every=1)
    s = sal.init(p)
    assert bool(s.masks["out"]["kernel"].all())  # dense until the first update
    _, s = sal.update(p, s, step=0, grads=g)
    np.testing.assert_array_equal(
        s.masks["hidden"]["kernel"],
        jp.threshold_mask(jnp.abs(p["hidden"]["kernel"] * g["hidden"]["kernel"]), 0.5))
    with pytest.raises(ValueError, match="grads"):
        sal.update(p, sal.init(p), step=0)
    # movement: scores accumulate -w*g across updates
    mv = jp.movement_pruning(0.5, update_every=3)
    s = mv.init(p)
    q = p
    for t in range(4):
        q, s = mv.update(q, s, step=t, grads=g)
    acc = -4 * p["out"]["kernel"] * g["out"]["kernel"]
    np.testing.assert_allclose(s.scores["out"]["kernel"], acc, rtol=1e-5)
    np.testing.assert_array_equal(s.masks["out"]["kernel"],
                                  jp.threshold_mask(-3 * p["out"]["kernel"] * g["out"]["kernel"],
                                                    0.5))
    # OBD: the Hessian diagonal given to update, or from a loss closure
    h = jax.tree.map(lambda x: jnp.abs(jnp.sin(x)) + 0.1, p)
    ob = jp.obd_pruning(0.5, update_every=1)
    _, s = ob.update(p, ob.init(p), step=0, hessian_diag=h)
    np.testing.assert_array_equal(
        s.masks["out"]["kernel"],
        jp.threshold_mask(0.5 * h["out"]["kernel"] * p["out"]["kernel"] ** 2, 0.5))
    small = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    curv = jnp.array([[10.0, 0.01], [4.0, 0.1]])
    loss = lambda q: jnp.sum(curv * q["w"] ** 2) + jnp.sum(q["w"]) ** 2
    ex = jp.obd_pruning(0.5, loss_fn=loss, hessian="exact", update_every=1)
    _, s = ex.update(small, ex.init(small), step=0)
    hd = 2 * curv + 2  # exact diagonal
    np.testing.assert_array_equal(s.masks["w"],
                                  jp.threshold_mask(0.5 * hd * small["w"] ** 2, 0.5))
    with pytest.raises(ValueError, match="Hessian diagonal"):
        jp.obd_pruning(0.5, update_every=1).update(p, ob.init(p), step=0)


def test_hessian_estimators():
    w = {"a": jax.random.normal(jax.random.key(0), (3, 2)), "b": jnp.array([0.5, -1.0])}
    A = jax.random.normal(jax.random.key(1), (8, 8))

    def loss(q):
        v = jnp.concatenate([q["a"].ravel(), q["b"]])
        return 0.5 * v @ (A @ A.T) @ v + jnp.sum(jnp.sin(v))

    exact = jp.exact_hessian_diag(loss, w)
    est = jax.jit(lambda q: jp.hutchinson_diag(loss, q, key=jax.random.key(2), n_samples=4000))(w)
    for k in w:
        np.testing.assert_allclose(est[k], exact[k], rtol=0.15, atol=0.3)
    with pytest.raises(ValueError, match="max_size"):
        jp.exact_hessian_diag(loss, w, max_size=4)
    # Fisher: mean of squared per-example gradients (linear model: gradient = x * residual)
    xs = jax.random.normal(jax.random.key(3), (16, 3))
    ex_loss = lambda q, x: 0.5 * (x @ q["w"] - 1.0) ** 2
    q = {"w": jnp.array([0.1, 0.2, 0.3])}
    res = xs @ q["w"] - 1.0
    np.testing.assert_allclose(jp.fisher_diag(ex_loss, q, xs)["w"],
                               np.mean((xs * res[:, None]) ** 2, 0), rtol=1e-5)


def test_patterns_allocations_and_custom_scores_in_compressors():
    p = tree()
    nm = jp.magnitude_pruning(None, pattern=jp.NM(2, 4, axis=-2))
    s = nm.init(p)
    km = np.asarray(s.masks["hidden"]["kernel"]).T.reshape(-1, 4)
    assert (km.sum(1) == 2).all() and float(s.pruned_fraction) == 0.5
    off = jp.magnitude_pruning(jp.one_shot_schedule(0.5, step=3), pattern="2:4")
    assert bool(off.init(p).masks["out"]["kernel"].all())  # N:M off until the schedule says on
    erk = jp.magnitude_pruning(0.7, allocation="erk").init(p)
    assert (~np.asarray(erk.masks["hidden"]["kernel"])).sum() + (~np.asarray(
        erk.masks["out"]["kernel"])).sum() == round(0.7 * 256)
    # a per-path map whose values are schedules
    mp = jp.magnitude_pruning(None, allocation={r"hidden/.*": jp.one_shot_schedule(0.5, step=2),
                                                r"out/.*": 0.25}, update_every=1)
    s = mp.init(p)
    assert (~np.asarray(s.masks["hidden"]["kernel"])).sum() == 0
    _, s = jax.jit(lambda p, s, t: mp.update(p, s, step=t))(p, s, 2)
    assert (~np.asarray(s.masks["hidden"]["kernel"])).sum() == 96
    assert (~np.asarray(s.masks["out"]["kernel"])).sum() == 16
    # the public score hook: prune the largest weights instead
    hook = jp.magnitude_pruning(0.5, score_fn=lambda q, *, grads=None, **_: jax.tree.map(
        lambda w: -jnp.abs(w), q), update_every=1)
    _, s = hook.update(p, hook.init(p), step=0)
    np.testing.assert_array_equal(s.masks["out"]["kernel"],
                                  ~jp.threshold_mask(jnp.abs(p["out"]["kernel"]), 0.5))
    # block and channel patterns
    blk = jp.magnitude_pruning(0.5, pattern=jp.Block(4, 4)).init(p)
    b = np.asarray(blk.masks["out"]["kernel"]).reshape(4, 4, 1, 4)
    assert (b.all((1, 3)) | ~b.any((1, 3))).all()
    ch = jp.magnitude_pruning(0.25, pattern="channel").init(p)
    assert (~np.asarray(ch.masks["hidden"]["kernel"]).any(0)).sum() == 4


def test_factory_errors():
    p = tree()
    with pytest.raises(ValueError, match="outside"):
        jp.magnitude_pruning(1.0)
    with pytest.raises(ValueError, match="n <= m"):
        jp.magnitude_pruning(None, pattern=jp.NM(3, 2))
    with pytest.raises(ValueError, match="1 - n/m"):
        jp.magnitude_pruning(0.3, pattern="2:4")
    with pytest.raises(ValueError, match="matches no parameter"):
        jp.magnitude_pruning(0.5, where=r"encoder/.*").init(p)
    with pytest.raises(ValueError, match="multiple of m=8.*'out/kernel'|'out/kernel'"):
        jp.magnitude_pruning(None, pattern="1:8", where=r"out/kernel").init(
            {"out": {"kernel": jnp.ones((3, 12))}})
    with pytest.raises(ValueError, match="key"):
        jp.random_pruning(0.5, key=None)
    with pytest.raises(ValueError, match="sr_ste"):
        jp.magnitude_pruning(0.5, sr_ste_decay=1e-3)
    with pytest.raises(ValueError, match="mode"):
        jp.magnitude_pruning(0.5, mode="soft")
    with pytest.raises(ValueError, match="'hidden/kernel'"):
        bad = jax.tree.map(lambda x: x, p)
        bad["hidden"]["kernel"] = bad["hidden"]["kernel"].at[0, 0].set(jnp.inf)
        jp.magnitude_pruning(0.5).init(bad)
    comp = jp.magnitude_pruning(0.5)
    s = comp.init(p)
    with pytest.raises(ValueError, match="Re-run init"):
        comp.apply({"hidden": p["hidden"], "out": {"kernel": jnp.ones((16, 8)),
                                                   "bias": jnp.zeros(8)}}, s)


def test_flax_linen_boxed_variables():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(16, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                              (None, "model")))(x)
            return nn.Dense(4)(jnp.tanh(x))

    net = Net()
    variables = net.init(jax.random.key(0), X)
    comp = jp.magnitude_pruning(0.5)
    s = comp.init(variables)
    assert isinstance(s.masks["params"]["Dense_0"]["kernel"], nn.Partitioned)
    assert set(jc.compression_info(s)) == {"params/Dense_0/kernel", "params/Dense_1/kernel"}
    view = comp.apply(variables, s)
    out = net.apply(view, X)
    assert out.shape == (8, 4)
    g = jax.grad(lambda v: jnp.sum(net.apply(comp.apply(v, s), X) ** 2))(variables)
    gk = np.asarray(g["params"]["Dense_0"]["kernel"].value)
    assert (gk[~np.asarray(s.masks["params"]["Dense_0"]["kernel"].value)] == 0).all()
    a = jc.metrics.analyze(lambda v, x: net.apply(v, x), view, X[:1], compression=s,
                           compile=False)
    assert a.effective_macs == pytest.approx(0.5 * a.macs)


def test_chain_masked_and_injected():
    p = tree()
    quant = jc.stateless(lambda q: jax.tree.map(lambda x: jnp.round(x * 4) / 4, q))
    comp = jc.chain(jp.magnitude_pruning(0.5), quant)
    s = comp.init(p)
    view = comp.apply(p, s)
    m = np.asarray(s[0].masks["hidden"]["kernel"])
    assert (np.asarray(view["hidden"]["kernel"])[~m] == 0).all()
    np.testing.assert_allclose(np.asarray(view["hidden"]["kernel"])[m],
                               np.round(np.asarray(p["hidden"]["kernel"])[m] * 4) / 4)
    p2, _ = jax.jit(lambda p, s: comp.update(p, s, step=0))(p, s)
    assert nz(p2["hidden"]["kernel"]) == 96
    # inside jc.masked: the inner compressor only sees the selected sub-tree
    mk = jc.masked(jp.magnitude_pruning(0.5, where=True), r"out/.*")
    sm = mk.init(p)
    v = mk.apply(p, sm)
    assert nz(v["out"]["kernel"]) == 32 and nz(v["out"]["bias"]) == 0
    assert v["hidden"]["kernel"] is p["hidden"]["kernel"]
    assert set(jc.compression_info(sm)) == {"out/bias", "out/kernel"}
    # inject_hyperparams: the sparsity lives in the state and follows an optax schedule
    inj = jc.inject_hyperparams(jp.magnitude_pruning)(
        sparsity=optax.linear_schedule(0.0, 0.5, 10), update_every=5)
    si = inj.init(p)
    _, si = jax.jit(lambda p, s, t: inj.update(p, s, step=t))(p, si, 5)
    assert float(si.hyperparams["sparsity"]) == 0.25
    assert float(si.inner_state.pruned_fraction) == pytest.approx(0.25)


def test_masks_keep_the_params_sharding_under_jit():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((2, 4), ("a", "b"))
    p = tree()
    specs = {"hidden": P(None, "b"), "out": P("a", None)}
    p = {k: {"kernel": jax.device_put(v["kernel"], NamedSharding(mesh, specs[k])),
             "bias": v["bias"]} for k, v in p.items()}
    comp = jp.magnitude_pruning(jp.polynomial_schedule(0.2, 0.9, 0, 10, update_every=2),
                                scope="global")
    s = jax.jit(comp.init)(p)
    p2, s2 = jax.jit(lambda p, s, t: comp.update(p, s, step=t))(p, s, 4)
    for k, spec in specs.items():
        for m in (s.masks[k]["kernel"], s2.masks[k]["kernel"], p2[k]["kernel"]):
            assert m.sharding.is_equivalent_to(NamedSharding(mesh, spec), 2)
    assert float(s2.pruned_fraction) == jp.num_pruned(float(s2.sparsity), 256) / 256


def test_project_mode_trains_kept_weights_exactly_like_mask_mode():
    import optax

    import jaxcomp as jc

    key = jax.random.key(0)
    params = {"fc1": {"kernel": jax.random.normal(key, (12, 16)), "bias": jnp.zeros(16)},
              "fc2": {"kernel": jax.random.normal(jax.random.key(1), (16, 3)), "bias": jnp.zeros(3)}}
    x = jax.random.normal(jax.random.key(2), (32, 12))
    y = jax.random.randint(jax.random.key(3), (32,), 0, 3)

    def loss(p):
        h = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
        logits = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def run(mode, keep):
        comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.8, 0, 20, update_every=5),
                                    mode=mode)
        base = optax.adamw(1e-2, weight_decay=1e-2)
        tx = optax.chain(base, jc.keep_compressed(comp)) if keep else base
        p, s = params, comp.init(params)
        p = comp.project(p, s)
        o = tx.init(p)

        @jax.jit
        def step(p, o, s, t):
            g = jax.grad(lambda q: loss(comp.apply(q, s)))(p)
            u, o = (tx.update(g, o, p, compressor_state=s) if keep else tx.update(g, o, p))
            p = optax.apply_updates(p, u)
            p, s = comp.update(p, s, step=t, grads=g)
            return p, o, s

        for t in range(30):
            p, o, s = step(p, o, s, t)
        return p, s

    p_mask, s_mask = run("mask", keep=True)
    p_proj, s_proj = run("project", keep=False)
    for a, b in zip(jax.tree.leaves(s_mask.masks), jax.tree.leaves(s_proj.masks)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(p_mask), jax.tree.leaves(p_proj)):
        # the same training of the kept weights (up to float rounding of fused kernels)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a == 0, b == 0)
    k = p_proj["fc1"]["kernel"]
    assert int(jnp.sum(k == 0)) == round(0.8 * k.size)
