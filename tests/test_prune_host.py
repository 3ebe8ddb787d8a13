"""host_scheduled: the host decides mask-update steps; equal to comp.update in the step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from prune_toy import SCHEDULE, loss, params0

import jaxcomp as jc
import jaxcomp.prune as jp


def in_step(comp, base, steps):
    """comp.update inside the jitted step, on every step (the lax.cond form)."""
    p = params0()
    s, o = comp.init(p), base.init(p)

    @jax.jit
    def step(p, o, s, t):
        g = jax.grad(lambda q: loss(comp.apply(q, s)))(p)
        u, o = base.update(g, o, p)
        p, s = comp.update(optax.apply_updates(p, u), s, step=t, grads=g)
        return p, o, s

    for t in range(steps):
        p, o, s = step(p, o, s, t)
    return p, s


def on_host(comp, base, steps, donate=False, jit=True):
    pruner = jp.host_scheduled(comp, donate=donate)
    p = params0()
    s, o = comp.init(p), base.init(p)

    def step(p, o, s):
        g = jax.grad(lambda q: loss(comp.apply(q, s)))(p)
        u, o = base.update(g, o, p)
        return pruner.project(optax.apply_updates(p, u), s), o, g

    step = jax.jit(step) if jit else step
    for t in range(steps):
        p, o, g = step(p, o, s)
        p, s = pruner(p, s, step=t, grads=g)
    return p, s


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("mode", ["project", "mask", "ste"])
def test_equals_update_inside_the_step(mode):
    comp = jp.magnitude_pruning(SCHEDULE, mode=mode)
    base = optax.adamw(1e-2, weight_decay=1e-2)
    p_ref, s_ref = in_step(comp, base, 23)
    p, s = on_host(comp, base, 23)
    assert int(s.count) == int(s_ref.count) == 5 and int(s.last_update) == 20
    assert_trees_equal(s_ref.masks, s.masks)
    # the model sees the same weights (in mask mode the in-step form leaves pruned stored
    # weights to drift under weight decay; pruner.project zeros them, as keep_compressed does)
    for a, b in zip(jax.tree.leaves(comp.apply(p_ref, s_ref)), jax.tree.leaves(comp.apply(p, s))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    if mode == "project":
        assert_trees_equal(p_ref, p)
    k = p["fc1"]["kernel"]
    if mode == "ste":  # stored weights stay dense; the view is pruned
        assert int(jnp.sum(k == 0)) == 0
        k = comp.apply(p, s)["fc1"]["kernel"]
    assert int(jnp.sum(k == 0)) == round(0.8 * k.size)
    np.testing.assert_array_equal(k != 0, s.masks["fc1"]["kernel"])


def test_gradient_scores_get_the_steps_grads():
    comp = jp.saliency_pruning(SCHEDULE, mode="project")
    base = optax.sgd(0.05, momentum=0.9)
    p_ref, s_ref = in_step(comp, base, 12)
    p, s = on_host(comp, base, 12)
    assert_trees_equal(s_ref.masks, s.masks)
    assert_trees_equal(p_ref, p)


def test_between_updates_nothing_runs_and_inputs_come_back():
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    pruner = jp.host_scheduled(comp)
    p = params0()
    s = comp.init(p)
    p2, s2 = pruner(p, s, step=3)
    assert p2 is p and s2 is s
    p3, s3 = pruner(p, s, step=np.int64(5))
    assert int(s3.count) == 1 and int(s3.last_update) == 5
    assert int(jnp.sum(p3["fc1"]["kernel"] == 0)) == round(float(SCHEDULE(5)) * 12 * 16)


def test_donation_consumes_inputs_only_on_update_steps():
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    pruner = jp.host_scheduled(comp, donate=True)
    p = params0()
    s = comp.init(p)
    p, s = pruner(p, s, step=1)  # not due: nothing donated
    old = p["fc1"]["kernel"]
    p, s = pruner(p, s, step=5)
    assert old.is_deleted()
    assert not p["fc1"]["kernel"].is_deleted()
    p_ref, s_ref = on_host(comp, optax.sgd(0.1), 12, donate=False)
    p_don, s_don = on_host(comp, optax.sgd(0.1), 12, donate=True)
    assert_trees_equal(p_ref, p_don)
    assert_trees_equal(s_ref.masks, s_don.masks)


def test_eager_step_matches_jitted_step():
    comp = jp.magnitude_pruning(SCHEDULE, mode="project")
    p_j, s_j = on_host(comp, optax.adam(1e-2), 11, jit=True)
    p_e, s_e = on_host(comp, optax.adam(1e-2), 11, jit=False)
    assert_trees_equal(s_j.masks, s_e.masks)
    for a, b in zip(jax.tree.leaves(p_j), jax.tree.leaves(p_e)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", [
    SCHEDULE,
    jp.one_shot_schedule(0.5, step=7),
    jp.iterative_schedule([0, 4, 9], [0.2, 0.4, 0.6]),
    jp.constant_schedule(0.5, update_every=3),
    jp.as_schedule(optax.linear_schedule(0.0, 0.5, 10), update_every=4),
])
def test_due_agrees_with_the_traced_check(schedule):
    got = [schedule.due(t) for t in range(40)]
    want = [bool(schedule.is_update_step(t)) for t in range(40)]
    assert got == want and any(got)
    assert all(isinstance(v, bool) for v in got)
    pruner = jp.host_scheduled(jp.magnitude_pruning(schedule))
    assert [pruner.due(t) for t in range(40)] == want


def test_host_check_does_no_device_work():
    # the built-in schedules answer in Python: no jax array is created
    s = jp.iterative_schedule([0, 4, 9], [0.2, 0.4, 0.6])
    assert s.update_fn(4) is True and s.update_fn(5) is False
    p = jp.polynomial_schedule(0.0, 0.9, 0, 300, update_every=100)
    assert p.update_fn(100) is True and p.update_fn(150) is False


def test_errors():
    comp = jp.magnitude_pruning(SCHEDULE)
    pruner = jp.host_scheduled(comp)
    p = params0()
    s = comp.init(p)
    with pytest.raises(TypeError, match="step must be an int, got float"):
        pruner(p, s, step=1.0)
    with pytest.raises(TypeError, match="step must be an int, got bool"):
        pruner(p, s, step=True)
    with pytest.raises(TypeError, match="Python int here, got a traced value"):
        jax.jit(lambda t: pruner(p, s, step=t))(3)
    with pytest.raises(ValueError, match="step=-1 must be >= 0"):
        pruner(p, s, step=-1)
    with pytest.raises(TypeError, match="needs a Python int"):
        jax.jit(lambda t: SCHEDULE.due(t))(3)
    with pytest.raises(ValueError, match="may change its state on every step"):
        jp.host_scheduled(jp.movement_pruning(SCHEDULE))
    no_due = jc.stateless(lambda q: q)._replace(due=None)
    with pytest.raises(ValueError, match="compressor.due is None"):
        jp.host_scheduled(no_due)
    assert jp.host_scheduled(no_due, due=lambda t: t % 4 == 0).due(8)
    with pytest.raises(TypeError, match="due must be a function"):
        jp.host_scheduled(comp, due=3)
    with pytest.raises(TypeError, match="must be a jaxcomp.Compressor"):
        jp.host_scheduled("magnitude")
    with pytest.raises(TypeError, match="donate must be a bool"):
        jp.host_scheduled(comp, donate=1)
    assert repr(pruner) == "HostScheduled(donate=False)"
