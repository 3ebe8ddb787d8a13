"""The compressor protocol and its combinators."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import jaxcomp as jc
from jaxcomp import select


class ThresholdState(NamedTuple):
    masks: dict
    count: jax.Array


def threshold_zeroing(threshold):
    """A small stateful test compressor: zero |w| < threshold, re-masked on update."""

    def masks_for(params):
        return jax.tree.map(lambda w: jnp.abs(w) >= threshold, params)

    def init(params):
        return ThresholdState(masks_for(params), jnp.zeros((), jnp.int32))

    def apply(params, state):
        return jax.tree.map(lambda w, m: w * m, params, state.masks)

    def update(params, state, *, step, grads=None, **extra):
        masks = masks_for(params)
        new = jax.tree.map(lambda w, m: w * m, params, masks)
        return new, ThresholdState(masks, state.count + 1)

    return jc.Compressor(init, apply, update)


class MaxState(NamedTuple):
    max_abs: dict


def max_recorder():
    """Records max|w| of its input at init and update; apply is the identity."""

    def init(params):
        return MaxState(jax.tree.map(lambda w: jnp.max(jnp.abs(w)), params))

    def apply(params, state):
        return params

    def update(params, state, *, step, grads=None, **extra):
        return params, init(params)

    return jc.Compressor(init, apply, update)


def _p():
    return {"a": jnp.array([0.1, -2.0, 0.5]), "b": jnp.array([3.0, -0.2])}


def test_identity_and_stateless():
    p = _p()
    c = jc.identity()
    s = c.init(p)
    assert c.apply(p, s) is p
    new, s2 = c.update(p, s, step=0)
    assert new is p and s2 == s
    neg = jc.stateless(lambda t: jax.tree.map(jnp.negative, t))
    assert neg.apply(p, neg.init(p))["a"].tolist() == pytest.approx([-0.1, 2.0, -0.5])
    with pytest.raises(TypeError, match="function params -> params"):
        jc.stateless(3)


def test_chain_applies_in_order_and_inits_on_the_view():
    p = _p()
    c = jc.chain(threshold_zeroing(1.0), max_recorder())
    s = c.init(p)
    # the recorder saw the thresholded view: a's max is 2.0, b's 3.0
    assert float(s[1].max_abs["a"]) == 2.0
    out = c.apply(p, s)
    assert out["a"].tolist() == [0.0, -2.0, 0.0]
    # order matters: double then +1 = 3, +1 then double = 4
    double = jc.stateless(lambda t: jax.tree.map(lambda x: 2 * x, t))
    inc = jc.stateless(lambda t: jax.tree.map(lambda x: x + 1, t))
    one = {"w": jnp.ones(())}
    assert float(jc.chain(double, inc).apply(one, jc.chain(double, inc).init(one))["w"]) == 3
    assert float(jc.chain(inc, double).apply(one, jc.chain(inc, double).init(one))["w"]) == 4
    assert float(jc.chain([inc, double]).apply(one, ((), ()))["w"]) == 4


def test_chain_update_projects_first_stage_and_updates_states():
    p = _p()
    c = jc.chain(threshold_zeroing(1.0), max_recorder())
    s = c.init(p)
    grown = {"a": jnp.array([5.0, -2.0, 0.5]), "b": jnp.array([3.0, -0.2])}
    new, s2 = c.update(grown, s, step=1)
    assert new["a"].tolist() == [5.0, -2.0, 0.0]  # projected by stage 0
    assert int(s2[0].count) == 1 and float(s2[1].max_abs["a"]) == 5.0


def test_chain_writes_back_disjoint_later_projections():
    p = _p()
    c = jc.chain(jc.masked(threshold_zeroing(1.0), "a"), jc.masked(threshold_zeroing(1.0), "b"))
    s = c.init(p)
    new, _ = c.update(p, s, step=0)
    assert new["a"].tolist() == [0.0, -2.0, 0.0]
    assert new["b"].tolist() == [3.0, 0.0]  # stage 1 projection written back


def test_chain_refuses_to_lose_a_later_projection():
    p = _p()
    c = jc.chain(jc.stateless(lambda t: jax.tree.map(lambda x: 2 * x, t)), threshold_zeroing(1.0))
    s = c.init(p)
    with pytest.raises(ValueError, match="cannot be written back.*\n.*a"):
        c.update(p, s, step=0)


def test_chain_state_errors():
    c = jc.chain(jc.identity(), jc.identity())
    with pytest.raises(ValueError, match="expected a state tuple of 2"):
        c.apply(_p(), (jc.EmptyState(),))


def test_named_chain():
    c = jc.named_chain(("prune", threshold_zeroing(1.0)), ("stats", max_recorder()))
    s = c.init(_p())
    assert list(s) == ["prune", "stats"]
    assert c.apply(_p(), s)["b"].tolist() == [3.0, 0.0]
    with pytest.raises(ValueError, match="'x' repeat"):
        jc.named_chain(("x", jc.identity()), ("x", jc.identity()))
    with pytest.raises(TypeError, match="\\(name, compressor\\) pair"):
        jc.named_chain(jc.identity())
    with pytest.raises(ValueError, match="do not match the stages"):
        c.apply(_p(), {"other": None})


def test_masked_hides_unselected_leaves():
    seen = []

    def spy(params):
        seen.append(select.paths(params))
        return params

    p = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
    c = jc.masked(jc.stateless(spy), r"kernel")
    out = c.apply(p, c.init(p))
    assert seen[-1] == ["kernel"]
    assert out["bias"] is p["bias"]
    with pytest.raises(ValueError, match="matches no parameter"):
        jc.masked(jc.identity(), "nothing").init(p)
    assert jc.masked(jc.identity(), "nothing", allow_empty=True).init(p)


def test_masked_passes_masked_grads():
    got = {}

    def init(params):
        return ()

    def update(params, state, *, step, grads=None, **extra):
        got["grads"] = select.paths(grads)
        return params, state

    c = jc.masked(jc.Compressor(init, lambda p, s: p, update), "kernel")
    p = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
    c.update(p, c.init(p), step=0, grads=jax.tree.map(jnp.ones_like, p))
    assert got["grads"] == ["kernel"]


def test_masked_keeps_flax_boxes():
    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
            return nn.Dense(3, kernel_init=init, name="fc")(x)

    params = Lin().init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    c = jc.masked(threshold_zeroing(10.0), r".*/kernel")
    out = c.apply(params, c.init(params))
    assert isinstance(out["fc"]["kernel"], nn.Partitioned)
    assert out["fc"]["kernel"].names == (None, "model")
    assert float(jnp.abs(out["fc"]["kernel"].value).sum()) == 0.0
    y = Lin().apply({"params": out}, jnp.ones((1, 2)))
    np.testing.assert_allclose(y, jnp.broadcast_to(params["fc"]["bias"], (1, 3)))


def test_partition_by_rules():
    p = {"conv": {"kernel": jnp.array([0.5, 2.0])}, "fc": {"kernel": jnp.array([0.5, 2.0]),
                                                          "bias": jnp.array([0.1])}}
    c = jc.partition(
        {"conv": threshold_zeroing(1.0), "fc": threshold_zeroing(0.3), "rest": jc.identity()},
        select.rules([(r"conv/.*", "conv"), (r".*kernel", "fc")], default="rest"),
    )
    s = c.init(p)
    out = c.apply(p, s)
    assert out["conv"]["kernel"].tolist() == [0.0, 2.0]
    assert out["fc"]["kernel"].tolist() == [0.5, 2.0]
    assert out["fc"]["bias"] is p["fc"]["bias"]
    new, s2 = jax.jit(lambda p, s: c.update(p, s, step=3))(p, s)
    assert int(s2.inner_states["conv"].count) == 1
    assert new["conv"]["kernel"].tolist() == [0.0, 2.0]


def test_partition_errors():
    p = {"a": jnp.ones(1), "b": jnp.ones(1)}
    with pytest.raises(ValueError, match="no compressor for label\\(s\\) 'y'.*\n.*b"):
        jc.partition({"x": jc.identity()}, {"a": "x", "b": "y"}).init(p)
    with pytest.raises(TypeError, match="labels must be strings"):
        jc.partition({"x": jc.identity()}, {"a": "x", "b": 1}).init(p)
    with pytest.raises(ValueError, match="does not match the params structure"):
        jc.partition({"x": jc.identity()}, {"a": "x"}).init(p)
    with pytest.raises(TypeError, match="non-empty dict"):
        jc.partition({}, {"a": "x"})
    with pytest.raises(TypeError, match="call the factory"):
        jc.partition({"x": threshold_zeroing}, {"a": "x", "b": "x"})


def test_chain_is_differentiable_and_jittable():
    p = _p()
    c = jc.chain(threshold_zeroing(1.0), jc.stateless(lambda t: jax.tree.map(jnp.square, t)))
    s = c.init(p)

    def loss(params):
        return sum(jnp.sum(x) for x in jax.tree.leaves(c.apply(params, s)))

    for f in (jax.grad(loss), jax.jit(jax.grad(loss))):
        g = f(p)
        np.testing.assert_allclose(g["a"], [0.0, -4.0, 0.0])
        np.testing.assert_allclose(g["b"], [6.0, 0.0])


def test_inject_hyperparams_follows_schedule_without_retracing():
    traces = []

    def scaling(factor, where=None):
        traces.append(1)
        return jc.masked(jc.stateless(lambda t: jax.tree.map(lambda x: x * factor, t)),
                         where or r".*")

    inj = jc.inject_hyperparams(scaling)
    c = inj(factor=optax.linear_schedule(1.0, 0.0, 10), where="a")
    p = _p()
    s = c.init(p)
    assert float(s.hyperparams["factor"]) == 1.0
    upd = jax.jit(lambda p, s, step: c.update(p, s, step=step))
    for step in (2, 5, 8):
        _, s = upd(p, s, step)
        assert float(s.hyperparams["factor"]) == pytest.approx(1 - step / 10)
    out = c.apply(p, s)
    np.testing.assert_allclose(out["a"], np.asarray(p["a"]) * 0.2, rtol=1e-6)
    assert out["b"] is p["b"]
    n = len(traces)
    upd(p, s, 9)
    assert len(traces) == n  # a new step value does not retrace

    const = jc.inject_hyperparams(scaling)(0.5)
    assert float(const.init(p).hyperparams["factor"]) == 0.5
    with pytest.raises(TypeError, match="inject_hyperparams\\(scaling\\)"):
        jc.inject_hyperparams(scaling)(1.0, nope=2)


def test_validate_compressor_messages():
    with pytest.raises(TypeError, match="got int"):
        jc.validate_compressor(3)

    class Triple:
        init = staticmethod(lambda p: ())
        apply = staticmethod(lambda p, s: p)
        update = staticmethod(lambda p, s, **k: (p, s))

    assert isinstance(jc.validate_compressor(Triple()), jc.Compressor)


def test_compressors_keep_the_input_sharding_on_a_mesh():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", "model"))
    w = jax.device_put(jax.random.normal(jax.random.key(0), (16, 32)), sharding)
    b = jax.device_put(jnp.ones(32), NamedSharding(mesh, P("model")))
    params = {"fc": {"kernel": w, "bias": b}}
    comp = jc.chain(jc.masked(threshold_zeroing(0.5), r".*/kernel"), max_recorder())
    state = jax.jit(comp.init)(params)
    assert state[0].inner_state.masks["fc"]["kernel"].sharding.is_equivalent_to(sharding, 2)
    view = jax.jit(comp.apply)(params, state)
    assert view["fc"]["kernel"].sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_array_equal(view["fc"]["kernel"],
                                  np.where(np.abs(np.asarray(w)) >= 0.5, np.asarray(w), 0))
    new, _ = jax.jit(lambda p, s: comp.update(p, s, step=0))(params, state)
    assert new["fc"]["kernel"].sharding.is_equivalent_to(sharding, 2)


def projecting_threshold(threshold):
    """threshold_zeroing with a project constraint: masked weights stay zero."""
    base = threshold_zeroing(threshold)
    return base._replace(project=lambda p, s: jax.tree.map(lambda w, m: w * m, p, s.masks))


@pytest.mark.parametrize(
    "opt",
    [
        optax.adamw(0.05, weight_decay=0.1),
        optax.sgd(0.1, momentum=0.9),
        optax.lion(0.01, weight_decay=0.1),
        optax.inject_hyperparams(optax.adam)(learning_rate=0.05),
        optax.MultiSteps(optax.adam(0.05), every_k_schedule=2),
    ],
    ids=["adamw", "sgd_momentum", "lion", "inject_adam", "multisteps"],
)
def test_keep_compressed_keeps_pruned_weights_exactly_zero(opt):
    key = jax.random.key(0)
    params = {"fc": {"kernel": jax.random.normal(key, (8, 8)), "bias": jnp.ones(8)}}
    comp = jc.masked(projecting_threshold(0.8), r".*/kernel")
    cstate = comp.init(params)
    pruned = cstate.inner_state.masks["fc"]["kernel"] == 0
    assert 0 < int(pruned.sum()) < 64
    params = comp.project(params, cstate)
    tx = optax.chain(opt, jc.keep_compressed(comp))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, i):
        grads = jax.tree.map(lambda x: jnp.cos(x + i) + 1.0, params)  # never zero
        upd, opt_state = tx.update(grads, opt_state, params, compressor_state=cstate)
        return optax.apply_updates(params, upd), opt_state

    start = params
    for i in range(100):
        params, opt_state = step(params, opt_state, i)
    k = params["fc"]["kernel"]
    assert jnp.all(k[pruned] == 0.0)                    # exactly zero, every step
    assert jnp.all(k[~pruned] != start["fc"]["kernel"][~pruned])  # the rest trained
    assert not jnp.allclose(params["fc"]["bias"], 1.0)  # unselected leaves trained


def test_keep_compressed_errors_and_no_projection():
    comp = projecting_threshold(0.5)
    tx = jc.keep_compressed(comp)
    p = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match="compressor_state=cstate"):
        tx.update(p, tx.init(p), p)
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(p, tx.init(p), compressor_state=comp.init(p))
    plain = jc.keep_compressed(jc.identity())
    upd, _ = plain.update(p, plain.init(p))
    assert upd is p


def test_project_propagates_through_combinators():
    p = _p()
    proj = projecting_threshold(1.0)
    for comp in (
        jc.chain(jc.identity(), proj),
        jc.masked(proj, r"a"),
        jc.partition({"x": proj, "y": jc.identity()}, {"a": "x", "b": "y"}),
        jc.inject_hyperparams(projecting_threshold)(1.0),
        jc.named_chain(("p", proj)),
    ):
        s = comp.init(p)
        out = comp.project(p, s)
        assert out["a"].tolist() == [0.0, -2.0, 0.0]
    assert jc.chain(jc.identity(), jc.identity()).project is None
    assert jc.masked(proj, "b").project(p, jc.masked(proj, "b").init(p))["a"] is p["a"]
