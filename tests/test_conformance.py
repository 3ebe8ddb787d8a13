"""Conformance suite: every compressor factory through the same generic checks.

One row per factory (and per mode that changes the protocol's behaviour). A
new method adds a row; ``test_every_registered_factory_has_a_row`` fails
until it does. Each row is checked for:

* ``init``/``apply``/``update``/``project``/``due``/``reached`` under ``jit``;
  state structure, shapes and dtypes stable across updates; params' dtypes
  preserved (float32 and bfloat16 leaves);
* ``due``: the host answer (plain Python for an int step) equals the traced
  one, and on steps that are not due ``update`` changes nothing beyond
  ``project`` (so loops may skip it);
* ``project`` idempotent; ``reached`` a bool that turns true once the target
  is in effect;
* composition with ``chain``, ``masked``, ``partition`` and
  ``inject_hyperparams`` (same view and state contents as the bare compressor).
"""

from __future__ import annotations

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conformance_kit import SCHED, STEPS, Row, grads_at, masks_of, params0, toy_loss

import jaxcomp as jc
import jaxcomp.prune as jp
from jaxcomp.config import COMPRESSORS

ROWS = [
    Row("identity", jc.identity),
    Row("stateless", lambda: jc.stateless(lambda p: jax.tree.map(lambda x: x * 0.5, p))),
    Row("magnitude_pruning", lambda: jp.magnitude_pruning(SCHED),
        injectable={"sparsity": 0.5, "update_every": 2}, factory=jp.magnitude_pruning),
    Row("magnitude_pruning", lambda: jp.magnitude_pruning(SCHED, mode="project"),
        label="magnitude_pruning/project"),
    Row("magnitude_pruning", lambda: jp.magnitude_pruning(SCHED, scope="global", mode="ste"),
        label="magnitude_pruning/global-ste"),
    Row("magnitude_pruning", lambda: jp.magnitude_pruning(SCHED, mode="sr_ste",
                                                          sr_ste_decay=2e-4),
        label="magnitude_pruning/sr_ste"),
    Row("magnitude_pruning", lambda: jp.magnitude_pruning(None, pattern=jp.NM(2, 4, axis=-1)),
        label="magnitude_pruning/nm"),
    Row("random_pruning", lambda: jp.random_pruning(SCHED, key=jax.random.key(3)),
        injectable={"sparsity": 0.25, "key": jax.random.key(3), "update_every": 2},
        factory=jp.random_pruning),
    Row("saliency_pruning", lambda: jp.saliency_pruning(SCHED), grads=True),
    Row("movement_pruning", lambda: jp.movement_pruning(SCHED), grads=True, every_step=True),
    Row("obd_pruning", lambda: jp.obd_pruning(SCHED, loss_fn=toy_loss, n_samples=2,
                                              key=jax.random.key(4))),
    Row("rigl_pruning", lambda: jp.rigl_pruning(0.5, update_every=2, end_step=6,
                                                key=jax.random.key(1)), grads=True),
    Row("set_pruning", lambda: jp.set_pruning(0.5, update_every=2, end_step=6,
                                              key=jax.random.key(1))),
    Row("fixed_mask", lambda: jp.fixed_mask(masks_of(params0())), restrictable=False),
]



def _family_rows() -> list[Row]:
    """Rows from every ``tests/conformance_<family>.py`` (a list named ``ROWS``)."""
    out = []
    for path in sorted(pathlib.Path(__file__).parent.glob("conformance_*.py")):
        if path.stem != "conformance_kit":
            out += importlib.import_module(path.stem).ROWS
    return out


ROWS += _family_rows()


def _update(comp, p, s, t, row):
    g = grads_at(t) if row.grads else None
    return comp.update(p, s, step=t, grads=g)


def _np(x):
    if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _assert_same_tree(a, b, exact=True):
    """Same structure, shapes and dtypes; values equal (``exact``) or within float rounding."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = _np(x), _np(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        if exact or not np.issubdtype(x.dtype, np.inexact):
            np.testing.assert_array_equal(x, y)
        else:  # eager and jitted float arithmetic may differ in the last bits
            np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32),
                                       rtol=1e-5, atol=1e-6)


def _structure(tree):
    return jax.tree.structure(tree), [(np.shape(x), str(jnp.result_type(x)))
                                      for x in jax.tree.leaves(tree)]


_COMPILED: dict[str, tuple] = {}


def _compiled(comp, row, key=None):
    """Jitted init/update/apply/project of ``comp``; the bare row's are shared between tests."""
    if key is not None and key in _COMPILED:
        return _COMPILED[key]
    fns = (jax.jit(comp.init), jax.jit(lambda p, s, t, g: comp.update(p, s, step=t, grads=g)),
           jax.jit(comp.apply),
           None if comp.project is None else jax.jit(comp.project))
    if key is not None:
        _COMPILED[key] = fns
    return fns


def _run_jit(comp, row, steps=STEPS, key=None):
    """init, then jitted update/apply over ``steps``; returns the trajectory."""
    init, upd, app, _ = _compiled(comp, row, key)
    p = params0()
    s = init(p)
    traj = []
    for t in range(steps):
        g = grads_at(t) if row.grads else None
        p, s = upd(p, s, jnp.int32(t), g)
        traj.append((p, s, app(p, s)))
    return traj


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_protocol_under_jit(row):
    comp = row.build()
    assert isinstance(comp, jc.Compressor)
    p = params0()
    s0 = comp.init(p)
    ref = _structure(s0)
    traj = _run_jit(comp, row, key=row.id)
    for p_t, s_t, view in traj:
        assert _structure(s_t) == ref  # state structure, shapes and dtypes stable
        _assert_same_tree(jax.tree.map(jnp.zeros_like, p_t), jax.tree.map(jnp.zeros_like, p))
        _assert_same_tree(jax.tree.map(jnp.zeros_like, view), jax.tree.map(jnp.zeros_like, p))
    # eager equals jit (same trajectory)
    pe, se = p, s0
    for t in range(3):
        pe, se = _update(comp, pe, se, t, row)
    _assert_same_tree(pe, traj[2][0], exact=False)
    _assert_same_tree(se, traj[2][1], exact=False)
    # project is idempotent and jittable
    project = _compiled(comp, row, row.id)[3]
    if project is not None:
        once = project(pe, se)
        _assert_same_tree(project(once, se), once)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_due_and_reached(row):
    comp = row.build()
    init, upd, _, project = _compiled(comp, row, row.id)
    p = params0()
    s = init(p)
    if comp.due is None:
        assert row.every_step, f"{row.id} has no due: mark its row every_step=True"
    else:
        host = [jc.update_due(comp, t) for t in range(STEPS)]
        traced = jax.jit(lambda t: jnp.asarray(comp.due(t), bool))
        assert host == [bool(traced(jnp.int32(t))) for t in range(STEPS)]
        assert all(isinstance(comp.due(t), (bool, np.bool_)) for t in range(STEPS))
    project = project or (lambda p, s: p)
    reached = None if comp.reached is None else jax.jit(comp.reached)
    for t in range(STEPS):
        due = comp.due is None or jc.update_due(comp, t)
        p2, s2 = upd(p, s, jnp.int32(t), grads_at(t) if row.grads else None)
        if not due:  # a skipped update changes nothing beyond the constraint
            _assert_same_tree(s2, s)
            _assert_same_tree(project(p2, s2), project(p, s))
        p, s = project(p2, s2), s2
        if reached is not None:
            r = reached(s)
            assert r.dtype == jnp.bool_ and r.shape == ()
            assert bool(r) == jc.target_reached(comp, s)
    assert jc.target_reached(comp, s)  # every row's target is in effect after STEPS


def _compose(row):
    comp = row.build()
    kernels = r".*/kernel"
    yield "chain", jc.chain(comp, jc.identity()), lambda s: s[0]
    if row.restrictable and row.name not in ("stateless", "identity"):
        yield "masked", jc.masked(comp, kernels), lambda s: s.inner_state
        labels = jc.select.rules([(kernels, "w")], default="rest")
        yield "partition", jc.partition({"w": comp, "rest": jc.identity()}, labels), (
            lambda s: s.inner_states["w"])


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_composes_with_combinators(row):
    base = row.build()
    ref = _run_jit(base, row, steps=3, key=row.id)[-1]
    for name, comp, inner in _compose(row):
        assert (comp.due is None) == (base.due is None), name
        if base.due is not None:
            assert [jc.update_due(comp, t) for t in range(STEPS)] == [
                jc.update_due(base, t) for t in range(STEPS)], name
        assert (comp.reached is None) == (base.reached is None), name
        p, s, view = _run_jit(comp, row, steps=3)[-1]
        _assert_same_tree(view, ref[2], exact=True)
        _assert_same_tree(p, ref[0], exact=True)
        if name == "chain":
            _assert_same_tree(inner(s), ref[1])
        if base.reached is not None:
            assert jc.target_reached(comp, s) == jc.target_reached(base, ref[1]), name


INJECTABLE = [r for r in ROWS if r.injectable]


@pytest.mark.parametrize("row", INJECTABLE, ids=lambda r: r.id)
def test_inject_hyperparams(row):
    plain = row.factory(**row.injectable)
    injected = jc.inject_hyperparams(row.factory, static_args=("where", "key"))(
        **row.injectable)
    assert [jc.update_due(injected, t) for t in range(STEPS)] == [
        jc.update_due(plain, t) for t in range(STEPS)]
    a = _run_jit(plain, row, steps=3, key=f"{row.id}/plain")[-1]
    b = _run_jit(injected, row, steps=3)[-1]
    _assert_same_tree(b[2], a[2])
    _assert_same_tree(b[1].inner_state, a[1])
    if "sparsity" not in row.injectable:
        return
    # a schedule as hyperparameter: the state records its value at the update steps
    kw = dict(row.injectable, sparsity=optax.linear_schedule(0.0, 0.5, 4))
    sched = jc.inject_hyperparams(row.factory, static_args=("where", "key"))(**kw)
    p, s = params0(), sched.init(params0())
    p, s = sched.update(p, s, step=4)
    assert float(s.hyperparams["sparsity"]) == pytest.approx(0.5)


def test_every_registered_factory_has_a_row():
    rows = {r.name for r in ROWS}
    missing = sorted(set(COMPRESSORS.names()) - rows)
    assert not missing, f"add conformance rows for {missing}"


def test_due_combinators_answer_in_python_for_int_steps():
    a = jp.magnitude_pruning(jp.constant_schedule(0.5, update_every=2))
    b = jp.magnitude_pruning(jp.constant_schedule(0.5, update_every=3))
    c = jc.chain(a, b)
    assert [t for t in range(8) if c.due(t)] == [0, 2, 3, 4, 6]
    assert c.due(5) is False
    assert jc.chain(jc.identity(), jc.stateless(lambda p: p)).due is jc.never_due
    assert jc.chain(a, jp.movement_pruning(0.5)).due is None
    traced = jax.jit(lambda t: c.due(t))
    assert [t for t in range(8) if bool(traced(jnp.int32(t)))] == [0, 2, 3, 4, 6]


def test_reached_follows_the_schedule_through_chain_and_inject():
    comp = jc.chain(jp.magnitude_pruning(SCHED, where=r"fc2/kernel"),
                    jp.magnitude_pruning(0.25, where=r"fc1/kernel"))
    p = params0()
    s = comp.init(p)
    seen = []
    for t in range(8):
        p, s = comp.update(p, s, step=t)
        seen.append(jc.target_reached(comp, s))
    assert seen == [False] * 6 + [True] * 2  # SCHED reaches 0.5 at step 6
    assert jc.target_reached(None, None)
