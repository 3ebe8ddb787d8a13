"""Lottery tickets: IMP rounds, rewinding, random tickets, fixed masks, the driver."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcomp as jc
from jaxcomp.prune.compressors.lottery import (
    fixed_mask,
    imp_round_masks,
    lottery_ticket,
    random_ticket,
    rewind,
)


def _params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"fc1": {"kernel": jax.random.normal(k1, (20, 10)), "bias": jnp.ones(10)},
            "fc2": {"kernel": jax.random.normal(k2, (10, 4)), "bias": jnp.ones(4)}}


def test_counts_per_round_hand_computed():
    p = _params()
    masks = None
    alive = {"fc1": 200, "fc2": 40}
    for _ in range(5):
        masks = imp_round_masks(p, masks, 0.2, rates={r"fc2/kernel": 0.1})
        for name, r in (("fc1", 0.2), ("fc2", 0.1)):
            alive[name] -= round(r * alive[name])
            assert int(masks[name]["kernel"].sum()) == alive[name]
        # biases are not selected by the default where: all kept
        assert bool(masks["fc1"]["bias"].all()) and bool(masks["fc2"]["bias"].all())
    assert alive == {"fc1": 66, "fc2": 23}  # 200→160→128→102→82→66; 40→36→32→29→26→23


def test_round_prunes_smallest_survivors_and_keeps_pruned_pruned():
    p = _params(1)
    m1 = imp_round_masks(p, None, 0.5)
    w = np.abs(np.asarray(p["fc1"]["kernel"])).ravel()
    expect = np.ones(w.size, bool)
    expect[np.argsort(w, kind="stable")[:100]] = False
    np.testing.assert_array_equal(np.asarray(m1["fc1"]["kernel"]).ravel(), expect)
    # second round on *new* weights: previously pruned stay pruned even if now large
    p2 = jax.tree.map(lambda x: -x * 10.0, p)
    m2 = imp_round_masks(p2, m1, 0.5)
    assert not np.any(np.asarray(m2["fc1"]["kernel"]) & ~np.asarray(m1["fc1"]["kernel"]))
    assert int(m2["fc1"]["kernel"].sum()) == 50


def test_ties_broken_by_index_deterministically():
    p = {"w": jnp.ones((2, 4))}
    m = imp_round_masks(p, None, 0.25)
    assert m["w"].ravel().tolist() == [False, False] + [True] * 6


def test_jit_matches_eager():
    p = _params(2)
    m0 = imp_round_masks(p, None, 0.3)
    eager = imp_round_masks(p, m0, 0.3)
    jitted = jax.jit(lambda p, m: imp_round_masks(p, m, 0.3))(p, m0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), eager, jitted)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 60), st.floats(0.05, 0.95), st.integers(0, 2**16))
def test_property_exact_counts(n, rate, seed):
    w = jax.random.normal(jax.random.key(seed), (n, 1))
    m = imp_round_masks({"w": w}, None, rate)
    assert int(m["w"].sum()) == n - round(rate * n)


def test_rewind_and_random_ticket():
    p = _params(3)
    p0 = _params(4)
    m = imp_round_masks(p, None, 0.6)
    r = rewind(p0, m)
    k = np.asarray(m["fc1"]["kernel"])
    np.testing.assert_array_equal(np.asarray(r["fc1"]["kernel"])[k], np.asarray(p0["fc1"]["kernel"])[k])
    assert np.all(np.asarray(r["fc1"]["kernel"])[~k] == 0.0)
    rt = random_ticket(m, key=jax.random.key(0))
    for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(rt)):
        assert int(a.sum()) == int(b.sum())
    assert not np.array_equal(np.asarray(rt["fc1"]["kernel"]), k)
    rt2 = random_ticket(m, key=jax.random.key(0))
    np.testing.assert_array_equal(rt["fc1"]["kernel"], rt2["fc1"]["kernel"])
    assert bool(rt["fc1"]["bias"].all())


def test_fixed_mask_keeps_zeros_under_adamw_100_steps():
    p = _params(5)
    m = imp_round_masks(p, None, 0.7)
    comp = fixed_mask(m)
    tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), jc.keep_compressed(comp))
    params = rewind(p, m)
    cs, opt = comp.init(params), tx.init(params)
    x = jax.random.normal(jax.random.key(9), (16, 20))

    def loss(q):
        v = comp.apply(q, cs)
        h = jax.nn.relu(x @ v["fc1"]["kernel"] + v["fc1"]["bias"])
        return jnp.mean((h @ v["fc2"]["kernel"] + v["fc2"]["bias"]) ** 2)

    @jax.jit
    def step(params, opt):
        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt, params, compressor_state=cs)
        return optax.apply_updates(params, u), opt

    l0 = loss(params)
    for _ in range(100):
        params, opt = step(params, opt)
    assert np.all(np.asarray(params["fc1"]["kernel"])[~np.asarray(m["fc1"]["kernel"])] == 0.0)
    assert float(loss(params)) < float(l0)


def test_driver_rounds_rewinds_and_early_iterate():
    p0 = _params(6)
    seen = []

    def train(params, masks):
        seen.append(params)
        trained = jax.tree.map(lambda x: x * 3.0 + 0.5, params)
        return rewind(trained, masks), jax.tree.map(lambda x: x + 100.0, p0)

    res = lottery_ticket(train, p0, rounds=3, rate=0.2, where=r".*kernel")
    assert len(res.masks) == 4 and len(res.params) == 4
    # layerwise counts: 200→160→128→102, 40→32→26→21  => overall sparsity on 240 kernel weights
    assert res.sparsity == [0.0, round(1 - 192 / 240, 6), round(1 - 154 / 240, 6),
                            round(1 - 123 / 240, 6)]
    # rounds after the first start from the early iterate (θ0 + 100) on the survivors
    k = np.asarray(res.masks[1]["fc1"]["kernel"])
    np.testing.assert_allclose(np.asarray(seen[1]["fc1"]["kernel"])[k],
                               np.asarray(p0["fc1"]["kernel"])[k] + 100.0)
    assert np.all(np.asarray(seen[1]["fc1"]["kernel"])[~k] == 0.0)
    # biases are not pruned (where=kernel only) and are rewound to the early iterate
    np.testing.assert_allclose(seen[1]["fc1"]["bias"], p0["fc1"]["bias"] + 100.0)
    # masks are nested: each round's survivors are a subset of the previous round's
    for a, b in zip(res.masks[1:], res.masks[2:]):
        assert not np.any(np.asarray(b["fc1"]["kernel"]) & ~np.asarray(a["fc1"]["kernel"]))


def test_errors():
    p = _params()
    with pytest.raises(ValueError, match=r"rate=1.0 must lie in \(0, 1\)"):
        imp_round_masks(p, None, 1.0)
    with pytest.raises(ValueError, match="rate"):
        imp_round_masks(p, None, 0.0)
    with pytest.raises(TypeError, match="rate must be a float"):
        imp_round_masks(p, None, "0.2")
    with pytest.raises(ValueError, match=r"rates\['fc2.\*'\]"):
        imp_round_masks(p, None, 0.2, rates={"fc2.*": 1.5})
    with pytest.raises(ValueError, match="matches no parameter"):
        imp_round_masks(p, None, 0.2, where=r"nothing/.*")
    with pytest.raises(ValueError, match="tree structure"):
        imp_round_masks(p, {"fc1": p["fc1"]}, 0.2)
    bad = jax.tree.map(lambda x: jnp.ones(x.shape, bool), p)
    bad["fc2"]["kernel"] = jnp.ones((4, 10), bool)
    with pytest.raises(ValueError, match="'fc2/kernel' in masks has shape"):
        imp_round_masks(p, bad, 0.2)
    nan = jax.tree.map(lambda x: x, p)
    nan["fc1"]["kernel"] = nan["fc1"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="fc1/kernel"):
        imp_round_masks(nan, None, 0.2)
    with pytest.raises(ValueError, match="rounds"):
        lottery_ticket(lambda p, m: p, p, rounds=0)
    with pytest.raises(TypeError, match="bool"):
        fixed_mask({"w": jnp.ones(3)})


def test_rates_use_the_shared_rule_forms_and_refuse_unused_patterns():
    p = _params()
    by_map = imp_round_masks(p, None, 0.5, rates={r"fc2/.*": 0.25})
    by_pairs = imp_round_masks(p, None, 0.5, rates=[(r"fc2/.*", 0.25)])
    by_fn = imp_round_masks(p, None, 0.5, rates=lambda path, w: 0.25 if w.shape[1] == 4 else 0.5)
    import ml_collections  # study configs hold rates in a ConfigDict

    by_cfg = imp_round_masks(p, None, 0.5,
                             rates=ml_collections.ConfigDict({"r": {"fc2/kernel": 0.25}}).r)
    for m in (by_map, by_pairs, by_fn, by_cfg):
        assert int((~m["fc1"]["kernel"]).sum()) == 100 and int((~m["fc2"]["kernel"]).sum()) == 10
    # a misspelt pattern used to be ignored silently (every leaf then took `rate`)
    with pytest.raises(ValueError, match=r"(?s)rates pattern 'fc3/.\*' matches no selected "
                                         r"parameter path.*fc1/kernel"):
        imp_round_masks(p, None, 0.5, rates={r"fc3/.*": 0.25})
    # biases are not selected: a rate for them is an error too
    with pytest.raises(ValueError, match="matches no selected parameter"):
        imp_round_masks(p, None, 0.5, rates={r".*bias": 0.25})


def test_fixed_mask_refuses_masks_of_another_shape_or_tree():
    comp = fixed_mask({"w": jnp.array([True, False])})
    # a (2,) mask used to broadcast silently over a (3, 2) parameter
    with pytest.raises(ValueError, match=r"'w' in masks has shape \(2,\); the parameter has "
                                         r"\(3, 2\)"):
        comp.apply({"w": jnp.ones((3, 2))}, comp.init(None))
    with pytest.raises(ValueError, match=r"only in masks:\n    w"):
        comp.apply({"v": jnp.ones(2)}, comp.init(None))


def test_sparsity_reads_masks_by_path():
    p = _params()
    m = imp_round_masks(p, None, 0.5)
    res = lottery_ticket(lambda q, mm: q, p, rounds=1, rate=0.5)
    assert res.sparsity == [0.0, 0.5]
    with pytest.raises(ValueError, match="tree structure"):
        rewind(p, {"fc1": m["fc1"], "fc3": m["fc2"]})
