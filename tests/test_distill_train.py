"""Tests for the distillation loss builder, precomputed teacher logits and a tiny KD run.

The optax loops here are written out by hand (``jaxcomp.train`` is not used).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcomp.distill import (
    attention_transfer_loss,
    distillation_loss,
    fsp_loss,
    hint_loss,
    kd_loss,
    linen_taps,
    multi_teacher_kd_loss,
    precompute_logits,
    rkd_angle_loss,
    rkd_distance_loss,
    split_distill_params,
)
from jaxcomp.models import ModelSpec, get_model

RNG = np.random.default_rng(0)
KEY = jax.random.key(0)


def np_init(spec, scale=1.0):
    """Random variables from NumPy (fast; no initialiser compilation)."""
    shapes = spec.eval_init(1)

    def fill(path, s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        std = scale / np.sqrt(fan_in) if len(s.shape) > 1 else 0.0
        value = RNG.normal(size=s.shape) * std
        if "var" in jax.tree_util.keystr(path):
            value = np.ones(s.shape)
        return value.astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def mlp_spec(hidden, d_in=16, classes=4):
    return get_model(
        "mnist1d_mlp", in_features=d_in, hidden=tuple(hidden), num_classes=classes, residual=False
    )


@pytest.fixture(scope="module")
def pair():
    t, s = mlp_spec((32, 32)), mlp_spec((8, 8))
    x = RNG.normal(size=(12, 16)).astype(np.float32)
    y = RNG.integers(0, 4, size=12).astype(np.int32)
    return t, np_init(t, 2.0), s, np_init(s), {"x": x, "y": y}


def test_teacher_gets_no_gradient(pair):
    t, tv, s, sv, batch = pair

    def loss_of_teacher(tv):
        fn = distillation_loss(s.apply_fn, t.apply_fn, tv, temperature=2.0, hints=[("fc1", "fc1")])
        params = {
            **sv["params"],
            "distill": {"hint_0": {"kernel": jnp.ones((8, 32)), "bias": jnp.zeros(32)}},
        }
        return fn(params, {}, batch, KEY)[0]

    g = jax.jit(jax.grad(loss_of_teacher))(tv)
    assert all(float(jnp.abs(leaf).sum()) == 0.0 for leaf in jax.tree.leaves(g))

    # Teacher carried in model_state: no gradient and unchanged by optax steps.
    fn = distillation_loss(s.apply_fn, t.apply_fn, None, temperature=2.0, alpha=0.5)
    params, state = dict(sv["params"]), {"teacher": tv}
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, state):
        (_loss, (state, _)), (gp, gs) = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(
            params, state, batch, KEY
        )
        upd, opt = tx.update(gp, opt, params)
        return optax.apply_updates(params, upd), opt, state, gs

    for _ in range(3):
        new_params, opt, state, gs = step(params, opt, state)
    assert all(float(jnp.abs(leaf).sum()) == 0.0 for leaf in jax.tree.leaves(gs))
    jax.tree.map(np.testing.assert_array_equal, state["teacher"], tv)
    assert not np.allclose(new_params["fc1"]["kernel"], sv["params"]["fc1"]["kernel"])


def test_precomputed_logits_match_in_step(pair):
    t, tv, s, sv, batch = pair
    logits = precompute_logits(t.apply_fn, tv, batch["x"], batch_size=5)  # 5 + 5 + 2 (padded)
    assert isinstance(logits, np.ndarray) and logits.shape == (12, 4)
    direct = np.asarray(jax.jit(t.apply_fn)(tv, batch["x"]))
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-6)

    in_step = distillation_loss(s.apply_fn, t.apply_fn, tv, temperature=3.0, alpha=0.7)
    pre = distillation_loss(s.apply_fn, temperature=3.0, alpha=0.7, precomputed=True)
    # Two teachers: logits stacked on axis 1.
    tv2 = np_init(t, 1.0)
    multi = distillation_loss(
        s.apply_fn, temperature=3.0, teachers=[(t.apply_fn, tv), (t.apply_fn, tv2)]
    )
    multi_pre = distillation_loss(
        s.apply_fn, temperature=3.0, precomputed=True, teachers=[(None, None), (None, None)]
    )
    stacked = np.stack([logits, precompute_logits(t.apply_fn, tv2, batch["x"])], axis=1)

    @jax.jit
    def run(params):
        a = in_step(params, {}, batch, KEY)
        b = pre(params, {}, {**batch, "teacher_logits": logits}, KEY)
        c = multi(params, {}, batch, KEY)
        d = multi_pre(params, {}, {**batch, "teacher_logits": stacked}, KEY)
        return a, b, c, d

    (la, (_, ma)), (lb, (_, mb)), (lc, (_, _mc)), (ld, (_, _md)) = run(sv["params"])
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    for k in ma:
        np.testing.assert_allclose(ma[k], mb[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lc, ld, rtol=1e-6)
    assert not np.isclose(float(la), float(lc))


def test_loss_composition_matches_primitives(pair):
    t, tv, s, sv, batch = pair
    mask = np.array([1.0] * 9 + [0.0] * 3, np.float32)
    batch = {**batch, "mask": mask}
    fn = distillation_loss(
        s.apply_fn,
        t.apply_fn,
        tv,
        temperature=4.0,
        alpha=0.3,
        hints=[("fc1", "fc1"), ("fc2", "fc2")],
        hint_weight=0.5,
    )
    params = fn.init_params(KEY, sv["params"], batch["x"][:1])
    assert set(params["distill"]) == {"hint_0", "hint_1"}
    assert params["distill"]["hint_1"]["kernel"].shape == (8, 32)
    student, distill = split_distill_params(params)
    assert set(student) == set(sv["params"])

    @jax.jit
    def run(params):
        loss, (_state, metrics) = fn(params, {}, batch, KEY)
        sl, st = linen_taps(s.apply_fn, {"params": student}, batch["x"], where=["fc1", "fc2"])
        tl, tt = linen_taps(t.apply_fn, tv, batch["x"], where=["fc1", "fc2"])
        kd = kd_loss(sl, tl, temperature=4.0, mask=mask)
        ce = optax.softmax_cross_entropy_with_integer_labels(sl, batch["y"])
        ce = jnp.sum(ce * mask) / mask.sum()
        hint = sum(
            hint_loss(st[p], tt[p], distill[f"hint_{i}"], mask=mask)
            for i, p in enumerate(["fc1", "fc2"])
        )
        acc = jnp.sum((jnp.argmax(sl, -1) == batch["y"]) * mask) / mask.sum()
        agree = jnp.sum((jnp.argmax(sl, -1) == jnp.argmax(tl, -1)) * mask) / mask.sum()
        return loss, metrics, (0.3 * kd + 0.7 * ce + 0.5 * hint, kd, ce, hint, acc, agree)

    loss, metrics, (want, kd, ce, hint, acc, agree) = run(params)
    assert sorted(metrics) == ["accuracy", "agreement", "ce", "hint", "kd", "loss"]
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], loss)
    for k, v in {"kd": kd, "ce": ce, "hint": hint, "accuracy": acc, "agreement": agree}.items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-5, err_msg=k)


def test_padded_examples_do_not_change_the_loss(pair):
    t, tv, s, sv, batch = pair
    fn = distillation_loss(s.apply_fn, t.apply_fn, tv, temperature=2.0, hints=[("fc2", "fc2")])
    params = fn.init_params(KEY, sv["params"], batch["x"][:1])
    padded = {
        "x": np.concatenate([batch["x"], 50 * np.ones((4, 16), np.float32)]),
        "y": np.concatenate([batch["y"], np.full(4, 3, np.int32)]),
        "mask": np.concatenate([np.ones(12), np.zeros(4)]).astype(np.float32),
    }
    run = jax.jit(lambda p, b: fn(p, {}, b, KEY))
    (a, (_, ma)), (b, (_, mb)) = run(params, batch), run(params, padded)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for k in ma:
        np.testing.assert_allclose(ma[k], mb[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_kd_end_to_end_student_learns_teacher():
    """Teacher trained on a synthetic task, then a small student distilled from it (< 5 s)."""
    t, s = mlp_spec((64, 64)), mlp_spec((16,))
    w_true = RNG.normal(size=(16, 4)).astype(np.float32)
    x_train = RNG.normal(size=(512, 16)).astype(np.float32)
    x_test = RNG.normal(size=(512, 16)).astype(np.float32)
    y_train = np.argmax(x_train @ w_true, -1).astype(np.int32)
    xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)
    tx = optax.adam(3e-3)

    def train(loss_fn, params, steps):
        def body(carry, i):
            params, opt = carry
            idx = (jnp.arange(128) + 128 * i) % 512
            b = {"x": xs[idx], "y": ys[idx]}
            grads, _ = jax.grad(loss_fn, has_aux=True)(params, {}, b, KEY)
            upd, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, upd), opt), None

        run = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), jnp.arange(steps))[0][0])
        return run(params)

    def ce_loss(params, state, b, rng):
        logits = t.apply_fn({"params": params}, b["x"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()
        return ce, (state, {})

    teacher = train(ce_loss, np_init(t)["params"], 300)
    t_pred = np.argmax(jax.jit(t.apply_fn)({"params": teacher}, x_test), -1)
    assert np.mean(t_pred == np.argmax(x_test @ w_true, -1)) > 0.85  # a competent teacher

    kd = distillation_loss(s.apply_fn, t.apply_fn, {"params": teacher}, temperature=4.0, alpha=1.0)
    student0 = np_init(s)["params"]
    student = train(kd, student0, 300)
    agree = [
        np.mean(np.argmax(jax.jit(s.apply_fn)({"params": p}, x_test), -1) == t_pred)
        for p in (student0, student)
    ]
    print("teacher agreement at init / after KD:", agree)
    assert agree[1] > 0.85 and agree[1] > agree[0] + 0.3, agree


class _ConvNet(nn.Module):
    width: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        h1 = nn.relu(nn.Conv(self.width, (3, 3), name="conv1")(x))
        h2 = nn.relu(nn.Conv(self.width, (3, 3), name="conv2")(h1))
        emb = nn.Dense(6, name="embed")(h2.mean((1, 2)))
        return nn.Dense(3, name="head")(emb)


def conv_spec(width):
    return ModelSpec(
        name="tiny_conv",
        module=_ConvNet(width),
        input_shape=(6, 6, 2),
        num_classes=3,
        description="test conv net",
    )


def test_attention_fsp_and_relational_terms():
    t, s = conv_spec(4), conv_spec(4)
    tv, sv = np_init(t, 2.0), np_init(s)
    x = RNG.normal(size=(5, 6, 6, 2)).astype(np.float32)
    batch = {"x": x, "y": RNG.integers(0, 3, size=5).astype(np.int32)}
    fn = distillation_loss(
        s.apply_fn,
        t.apply_fn,
        tv,
        temperature=2.0,
        alpha=0.5,
        hint_regressor=None,
        attention=[("conv1", "conv1"), ("conv2", "conv2")],
        attention_beta=10.0,
        fsp=[(("conv1", "conv2"), ("conv1", "conv2"))],
        fsp_weight=0.1,
        relational=("embed", "embed"),
        relational_weights=(2.0, 3.0),
    )
    params = fn.init_params(KEY, sv["params"], x[:1])
    assert params["distill"] == {}
    paths = ["conv1", "conv2", "embed"]

    @jax.jit
    def run(params):
        (loss, (_, m)), g = jax.value_and_grad(fn, has_aux=True)(params, {}, batch, KEY)
        sl, st = linen_taps(s.apply_fn, {"params": split_distill_params(params)[0]}, x, where=paths)
        tl, tt = linen_taps(t.apply_fn, tv, x, where=paths)
        at = attention_transfer_loss(
            [st["conv1"], st["conv2"]], [tt["conv1"], tt["conv2"]], beta=10.0
        )
        fsp = fsp_loss([(st["conv1"], st["conv2"])], [(tt["conv1"], tt["conv2"])])
        rd = rkd_distance_loss(st["embed"], tt["embed"])
        ra = rkd_angle_loss(st["embed"], tt["embed"])
        ce = optax.softmax_cross_entropy_with_integer_labels(sl, batch["y"]).mean()
        want = 0.5 * kd_loss(sl, tl, temperature=2.0) + 0.5 * ce + at + 0.1 * fsp
        return loss, m, g, (want + 2.0 * rd + 3.0 * ra, at, fsp, rd, ra)

    loss, m, g, (want, at, fsp, rd, ra) = run(params)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for k, v in {"attention": at, "fsp": fsp, "rkd_distance": rd, "rkd_angle": ra}.items():
        np.testing.assert_allclose(m[k], v, rtol=1e-5, err_msg=k)
        assert float(v) > 0
    assert float(jnp.abs(g["conv1"]["kernel"]).sum()) > 0


def test_multi_teacher_hints_and_learned_weights(pair):
    t, tv, s, sv, batch = pair
    t2 = mlp_spec((24, 24))
    tv2 = np_init(t2, 2.0)
    fn = distillation_loss(
        s.apply_fn,
        temperature=2.0,
        alpha=0.5,
        hints=[("fc1", "fc1")],
        teachers=[(t.apply_fn, tv), (t2.apply_fn, tv2)],
        teacher_weights="learned",
    )
    params = fn.init_params(KEY, sv["params"], batch["x"][:1])
    assert set(params["distill"]) == {"hint_0_teacher_0", "hint_0_teacher_1", "teacher_weights"}
    assert params["distill"]["hint_0_teacher_1"]["kernel"].shape == (8, 24)
    params["distill"]["teacher_weights"] = jnp.array([0.3, -0.2])

    @jax.jit
    def run(params):
        (_loss, (_, m)), g = jax.value_and_grad(fn, has_aux=True)(params, {}, batch, KEY)
        sl = s.apply_fn({"params": split_distill_params(params)[0]}, batch["x"])
        w = jax.nn.softmax(params["distill"]["teacher_weights"])
        kd = multi_teacher_kd_loss(
            sl,
            [t.apply_fn(tv, batch["x"]), t2.apply_fn(tv2, batch["x"])],
            temperature=2.0,
            weights=w,
        )
        return m, g, kd

    m, g, kd = run(params)
    np.testing.assert_allclose(m["kd"], kd, rtol=1e-5)
    assert float(jnp.abs(g["distill"]["teacher_weights"]).sum()) > 0
    assert float(jnp.abs(g["distill"]["hint_0_teacher_1"]["kernel"]).sum()) > 0

    fixed = distillation_loss(
        s.apply_fn,
        temperature=2.0,
        teachers=[(t.apply_fn, tv), (t2.apply_fn, tv2)],
        teacher_weights=[1.0, 0.0],
    )
    single = distillation_loss(s.apply_fn, t.apply_fn, tv, temperature=2.0)
    a, b = jax.jit(lambda p: (fixed(p, {}, batch, KEY)[0], single(p, {}, batch, KEY)[0]))(
        sv["params"]
    )
    np.testing.assert_allclose(a, b, rtol=1e-5)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(8, name="fc1")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5, name="bn")(h)
        return nn.Dense(4, name="fc2")(nn.relu(h))


def test_batchnorm_student_state_is_updated(pair):
    t, tv, _, _, batch = pair
    s = ModelSpec(
        name="bn_mlp",
        module=_BNNet(),
        input_shape=(16,),
        num_classes=4,
        description="test",
        uses_batch_norm=True,
    )
    sv = np_init(s)
    fn = distillation_loss(s.apply_fn, t.apply_fn, None, temperature=2.0)
    state = {"batch_stats": sv["batch_stats"], "teacher": tv}
    _, (new_state, _) = jax.jit(fn)(sv["params"], state, batch, KEY)
    assert set(new_state) == {"batch_stats", "teacher"}
    assert not np.allclose(new_state["batch_stats"]["bn"]["mean"], sv["batch_stats"]["bn"]["mean"])
    jax.tree.map(np.testing.assert_array_equal, new_state["teacher"], tv)


def test_builder_errors(pair):
    t, tv, s, sv, batch = pair
    with pytest.raises(ValueError, match="precomputed=True supplies only"):
        distillation_loss(s.apply_fn, precomputed=True, hints=[("fc1", "fc1")])
    with pytest.raises(ValueError, match="not both"):
        distillation_loss(s.apply_fn, t.apply_fn, tv, teachers=[(t.apply_fn, tv)])
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s.apply_fn, t.apply_fn, tv, temperature=0.0)
    with pytest.raises(TypeError, match="teacher_apply must be callable"):
        distillation_loss(s.apply_fn, None, tv)
    with pytest.raises(ValueError, match="pair"):
        distillation_loss(s.apply_fn, t.apply_fn, tv, hints=["fc1"])
    with pytest.raises(ValueError, match="teacher_weights"):
        distillation_loss(s.apply_fn, teachers=[(t.apply_fn, tv)] * 2, teacher_weights=[1.0])
    pre = distillation_loss(s.apply_fn, precomputed=True)
    with pytest.raises(ValueError, match="teacher_logits"):
        pre(sv["params"], {}, batch, KEY)
    no_vars = distillation_loss(s.apply_fn, t.apply_fn, None)
    with pytest.raises(ValueError, match="model_state"):
        no_vars(sv["params"], {}, batch, KEY)
    hinted = distillation_loss(s.apply_fn, t.apply_fn, tv, hints=[("fc1", "fc1")])
    with pytest.raises(ValueError, match="init_params"):
        jax.eval_shape(lambda: hinted(sv["params"], {}, batch, KEY))
    with pytest.raises(TypeError, match="variables"):
        hinted.init_params(KEY, sv, batch["x"][:1])
    bad_path = distillation_loss(s.apply_fn, t.apply_fn, tv, hints=[("fc9", "fc1")])
    with pytest.raises(ValueError, match="closest first"):
        bad_path.init_params(KEY, sv["params"], batch["x"][:1])
    with pytest.raises(ValueError, match="batch_size"):
        precompute_logits(t.apply_fn, tv, batch["x"], batch_size=0)


def test_plain_flax_models_get_the_adapter_hint():
    import jaxcomp as jc

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    net = Net()
    variables = net.init(jax.random.key(0), jnp.ones((1, 4)))
    with pytest.raises(TypeError, match=r"student_apply: got a flax.linen Module.*linen_apply"):
        jc.distill.distillation_loss(net, jc.train.linen_apply(net), variables)
    with pytest.raises(TypeError, match=r"teacher_apply: got Net.apply.*linen_apply"):
        jc.distill.distillation_loss(jc.train.linen_apply(net), net.apply, variables)
    loss = jc.distill.distillation_loss(jc.train.linen_apply(net), jc.train.linen_apply(net),
                                        variables)
    assert callable(loss)
