"""Sparsity schedules: values, update steps, traced steps, optax schedules, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import jaxcomp.prune as jp


def zhu_gupta(t, si, sf, t0, n, dt):
    """The paper's formula at update steps t = t0 + j*dt."""
    return sf + (si - sf) * (1 - (t - t0) / (n * dt)) ** 3


def test_polynomial_matches_zhu_gupta_at_update_steps():
    s = jp.polynomial_schedule(0.1, 0.9, 200, 1200, update_every=100)
    steps = jnp.arange(0, 1500)
    vals = np.asarray(jax.jit(jax.vmap(s))(steps))
    upd = np.asarray(jax.jit(jax.vmap(s.is_update_step))(steps))
    assert list(np.flatnonzero(upd)) == list(range(200, 1201, 100))
    for t in range(200, 1201, 100):
        assert vals[t] == pytest.approx(zhu_gupta(t, 0.1, 0.9, 200, 10, 100), abs=1e-6)
        assert (vals[t:t + 100 if t < 1200 else 1500] == vals[t]).all()  # held between updates
    assert (vals[:200] == 0).all() and vals[-1] == pytest.approx(0.9)
    assert np.all(np.diff(vals) >= 0)
    # end_step not on the Δt grid still gets a final update
    s2 = jp.polynomial_schedule(0.0, 0.5, 0, 250, update_every=100)
    assert [bool(s2.is_update_step(t)) for t in (0, 100, 200, 250, 300)] == [True] * 4 + [False]
    assert float(s2(249)) < 0.5 and float(s2(250)) == pytest.approx(0.5)
    c = jp.cubic_schedule(0.0, 0.8, 0, 100, update_every=10)
    assert float(c(50)) == pytest.approx(0.8 * (1 - 0.5 ** 3))


def test_constant_one_shot_iterative():
    c = jp.constant_schedule(0.3, update_every=7)
    assert float(c(1000)) == pytest.approx(0.3)
    assert [bool(c.is_update_step(t)) for t in (0, 6, 7, 14)] == [True, False, True, True]
    o = jp.one_shot_schedule(0.5, step=10)
    assert [float(o(t)) for t in (0, 9, 10, 99)] == [0.0, 0.0, 0.5, 0.5]
    assert [bool(o.is_update_step(t)) for t in (9, 10, 11)] == [False, True, False]
    it = jp.iterative_schedule([5, 10, 20], [0.2, 0.5, 0.8])
    f = jax.jit(lambda t: (it(t), it.is_update_step(t)))
    got = [(round(float(v), 3), bool(u)) for v, u in map(f, [0, 5, 9, 10, 19, 20, 100])]
    assert got == [(0.0, False), (0.2, True), (0.2, False), (0.5, True), (0.5, False),
                   (0.8, True), (0.8, False)]


def test_as_schedule_accepts_optax_and_numbers():
    s = jp.as_schedule(optax.linear_schedule(0.0, 0.6, 60), update_every=20)
    assert float(s(30)) == pytest.approx(0.3) and bool(s.is_update_step(40))
    assert float(jp.as_schedule(0.25)(5)) == 0.25
    assert bool(jp.as_schedule(0.25).is_update_step(100)) and not jp.as_schedule(0.25)\
        .is_update_step(50)
    assert jp.as_schedule(jnp.float32(0.5)).final == 0.5


def test_schedule_errors():
    with pytest.raises(ValueError, match="outside"):
        jp.constant_schedule(1.0)
    with pytest.raises(ValueError, match="end_step"):
        jp.polynomial_schedule(0.0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="strictly increasing"):
        jp.iterative_schedule([5, 5], [0.1, 0.2])
    with pytest.raises(ValueError, match="must not decrease"):
        jp.iterative_schedule([1, 2], [0.5, 0.2])
    with pytest.raises(ValueError, match="update_every"):
        jp.as_schedule(jp.one_shot_schedule(0.5), update_every=3)
    with pytest.raises(TypeError, match="schedule"):
        jp.as_schedule("0.5")
    with pytest.raises(ValueError, match="update_every=0"):
        jp.constant_schedule(0.5, update_every=0)


# ------------------------------------------------- schedules outside [0, 1), other paths


def test_polynomial_schedule_refuses_decreasing_sparsity():
    with pytest.raises(ValueError, match="initial_sparsity=0.8 is above final_sparsity=0.5"):
        jp.polynomial_schedule(0.8, 0.5, 0, 100)


def _tree():
    return {"a": {"kernel": jax.random.normal(jax.random.key(0), (8, 8))},
            "b": {"kernel": jax.random.normal(jax.random.key(1), (8, 8))}}


def test_optax_schedule_above_one_is_an_error_not_a_clip():
    comp = jp.magnitude_pruning(optax.linear_schedule(0.5, 1.5, 10), update_every=5)
    p = _tree()
    s = comp.init(p)
    p, s = comp.update(p, s, step=0)  # 0.5: fine
    # 1.0 at step 5: refused, never "prune everything"
    with pytest.raises(ValueError, match=r"gives 1\.0 at step 5; a sparsity must lie in"):
        comp.update(p, s, step=5)


def test_traced_sparsity_outside_range_skips_the_update_and_checkify_reports_it():
    comp = jp.magnitude_pruning(optax.linear_schedule(0.5, 1.5, 10), update_every=5)
    p = _tree()
    s = comp.init(p)
    upd = jax.jit(lambda p, s, t: comp.update(p, s, step=t))
    p, s = upd(p, s, jnp.int32(0))
    before = jax.tree.map(np.asarray, s.masks)
    assert np.mean(before["a"]["kernel"]) == 0.5
    _, s2 = upd(p, s, jnp.int32(5))  # 1.0: skipped, masks unchanged (not all pruned)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(s2.masks)):
        np.testing.assert_array_equal(x, y)
    assert float(s2.sparsity) == 0.5
    checked = jax.jit(checkify.checkify(lambda p, s, t: comp.update(p, s, step=t)))
    err, _ = checked(p, s, jnp.int32(5))
    with pytest.raises(checkify.JaxRuntimeError, match=r"outside \[0, 1\)"):
        err.throw()
    err, _ = checked(p, s, jnp.int32(0))
    err.throw()  # in range: no error


def test_traced_sparsity_of_one_point_five_prunes_nothing():
    def run(sp, p):
        comp = jp.magnitude_pruning(sp, update_every=1)
        s = comp.init(p)
        return comp.update(p, s, step=1)[1].masks

    masks = jax.jit(run)(jnp.float32(1.5), _tree())
    assert all(bool(np.all(m)) for m in jax.tree.leaves(masks))  # not "prune everything"
    err, _ = jax.jit(checkify.checkify(run))(jnp.float32(1.5), _tree())
    with pytest.raises(checkify.JaxRuntimeError, match=r"outside \[0, 1\)"):
        err.throw()
    masks = jax.jit(run)(jnp.float32(0.25), _tree())
    assert np.mean(np.asarray(masks["a"]["kernel"])) == 0.75  # kept fraction


def test_state_for_other_paths_with_the_same_shapes_is_refused():
    comp = jp.magnitude_pruning(0.5)
    s = comp.init(_tree())
    other = {"c": _tree()["a"], "d": _tree()["b"]}  # same shapes, other paths
    with pytest.raises(ValueError, match="does not have the paths of the selected parameters"):
        comp.apply(other, s)
    with pytest.raises(ValueError, match="only in the state.s masks"):
        comp.update(other, s, step=0)
