"""pruning_optimizer: masks in the optax state, exact zeros, any optimizer, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from prune_toy import SCHEDULE, loss, params0

import jaxcomp.prune as jp


def reference(comp, base, steps):
    """The wrapper's semantics spelled out with the compressor's own functions.

    At step t the state is updated from the params the step starts from, then
    the optimizer step's result is projected onto the new masks.
    """
    p = params0()
    s, o = comp.init(p), base.init(p)
    p = comp.project(p, s)
    for t in range(steps):
        g = jax.grad(lambda q, s=s: loss(comp.apply(q, s)))(p)
        _, s = comp.update(p, s, step=t, grads=g)
        u, o = base.update(g, o, p)
        p = comp.project(optax.apply_updates(p, u), s)
    return p, s


def wrapped(comp, base, steps, jit=True):
    tx = jp.pruning_optimizer(base, comp)
    p = params0()
    o = tx.init(p)
    if comp.project is not None:
        p = comp.project(p, o.compressor_state)

    def step(p, o):
        g = jax.grad(lambda q: loss(comp.apply(q, o.compressor_state)))(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    step = jax.jit(step) if jit else step
    for _ in range(steps):
        p, o = step(p, o)
    return p, o


@pytest.mark.parametrize("mode", ["project", "mask"])
@pytest.mark.parametrize("jit", [True, False])
def test_matches_the_compressor_spelled_out(mode, jit):
    comp = jp.magnitude_pruning(SCHEDULE, mode=mode)
    base = optax.adamw(1e-2, weight_decay=1e-2)
    p_ref, s_ref = reference(comp, base, 25)
    p, o = wrapped(comp, base, 25, jit=jit)
    assert int(o.count) == 25 and int(o.compressor_state.count) == 5
    for a, b in zip(jax.tree.leaves(s_ref.masks), jax.tree.leaves(o.compressor_state.masks)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a == 0, b == 0)
    for name in ("fc1", "fc2"):  # exact target sparsity per layer, biases untouched
        k = p[name]["kernel"]
        assert int(jnp.sum(k == 0)) == jp.num_pruned(0.8, k.size)
        assert bool(jnp.all(p[name]["bias"] != 0)) or name == "fc1"


@pytest.mark.parametrize("make", [
    lambda: optax.adamw(1e-2, weight_decay=0.1),
    lambda: optax.sgd(1e-2, momentum=0.9),
    lambda: optax.lion(1e-3, weight_decay=0.1),
    lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
    lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(0.1),
                        optax.sgd(1e-2, momentum=0.9, nesterov=True)),
])
def test_pruned_weights_stay_exactly_zero_for_100_steps(make):
    comp = jp.magnitude_pruning(0.7, mode="project", update_every=1000)
    p, o = wrapped(comp, make(), 100)
    masks = o.compressor_state.masks
    for name in ("fc1", "fc2"):
        k, m = p[name]["kernel"], masks[name]["kernel"]
        assert bool(jnp.all(k[~m] == 0.0))
        assert int(jnp.sum(~m)) == jp.num_pruned(0.7, k.size)
    # the kept weights did train
    assert not np.allclose(p["fc1"]["kernel"], comp.project(params0(), o.compressor_state)
                           ["fc1"]["kernel"])


def test_masks_change_under_jit_without_retrace_and_schedule_counts_its_own_steps():
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    tx = jp.pruning_optimizer(optax.adam(1e-2), comp)
    traces = []

    @jax.jit
    def step(p, o):
        traces.append(1)
        u, o = tx.update(jax.grad(loss)(p), o, p)
        return optax.apply_updates(p, u), o

    p = params0()
    o = tx.init(p)
    seen = []
    for _ in range(21):
        p, o = step(p, o)
        seen.append(float(o.compressor_state.sparsity))
    assert len(traces) == 1
    # updates at counts 0, 5, 10, 15, 20 (the wrapper's own counter)
    assert [int(o.compressor_state.count), int(o.compressor_state.last_update)] == [5, 20]
    assert seen[4] == seen[0] and seen[5] > seen[4] and seen[20] == pytest.approx(0.8)


def test_gradient_scores_and_ste_mode():
    # saliency needs grads: the wrapper passes the step's grads with the params they belong to
    comp = jp.saliency_pruning(jp.one_shot_schedule(0.5, 3), mode="project")
    p, o = wrapped(comp, optax.adam(1e-2), 6)
    k = p["fc1"]["kernel"]
    assert int(jnp.sum(k == 0)) == jp.num_pruned(0.5, k.size)
    # ste: dense weights keep training, only the view is masked
    comp = jp.magnitude_pruning(0.5, mode="ste")
    p, o = wrapped(comp, optax.adam(1e-2), 5)
    assert int(jnp.sum(p["fc1"]["kernel"] == 0)) == 0
    view = comp.apply(p, o.compressor_state)
    assert int(jnp.sum(view["fc1"]["kernel"] == 0)) == jp.num_pruned(0.5, 12 * 16)


def test_mixed_precision_updates_still_land_on_exact_zero():
    comp = jp.magnitude_pruning(0.5, mode="project", update_every=1000)
    tx = jp.pruning_optimizer(optax.sgd(0.1), comp)
    p = params0()
    o = tx.init(p)
    g = jax.tree.map(lambda x: jnp.ones_like(x, jnp.bfloat16), p)
    u, o = tx.update(g, o, p)
    new = optax.apply_updates(p, u)
    m = o.compressor_state.masks["fc1"]["kernel"]
    assert new["fc1"]["kernel"].dtype == jnp.float32
    assert bool(jnp.all(new["fc1"]["kernel"][~m] == 0.0))


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_masks_keep_the_params_sharding(axis_type):
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    # with explicit axes the grads of fc2 come out sharded like the activations (16@b),
    # unlike fc2's replicated params and masks
    t = AxisType.Explicit if axis_type == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(t, t))
    p = params0()
    sh = NamedSharding(mesh, P("a", "b"))
    p["fc1"]["kernel"] = jax.device_put(p["fc1"]["kernel"], sh)
    comp = jp.magnitude_pruning(0.5, mode="project")
    tx = jp.pruning_optimizer(optax.adam(1e-2), comp)

    @jax.jit
    def step(p, o):
        u, o = tx.update(jax.grad(loss)(p), o, p)
        return optax.apply_updates(p, u), o

    p, o = step(p, tx.init(p))
    p, o = step(p, o)
    for x in (o.compressor_state.masks["fc1"]["kernel"], p["fc1"]["kernel"]):
        assert x.sharding.is_equivalent_to(sh, 2)
    for name in ("fc1", "fc2"):
        k = np.asarray(p[name]["kernel"])
        m = np.asarray(o.compressor_state.masks[name]["kernel"])
        assert (k[~m] == 0).all() and (~m).sum() == jp.num_pruned(0.5, k.size)


def test_errors():
    comp = jp.magnitude_pruning(0.5)
    with pytest.raises(TypeError, match="must be a jaxcomp.Compressor"):
        jp.pruning_optimizer(optax.adam(1e-2), "magnitude")
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        jp.pruning_optimizer(lambda g: g, comp)
    tx = jp.pruning_optimizer(optax.adam(1e-2), comp)
    p = params0()
    o = tx.init(p)
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(p, o)
    with pytest.raises(TypeError, match="CompressionOptimizerState"):
        tx.update(p, optax.adam(1e-2).init(p), p)
    bad = {"fc1": p["fc1"]}
    with pytest.raises(ValueError, match="leaves"):
        tx.update(bad, o, p)
