"""Tree-level masks: scopes, allocations, patterns, selection, errors, summaries."""

import itertools

import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jaxcomp as jc
import jaxcomp.prune as jp


def tree(seed=0, ties=False):
    k = jax.random.split(jax.random.key(seed), 4)
    p = {"conv": {"kernel": jax.random.normal(k[0], (3, 3, 4, 8)), "bias": jnp.zeros(8)},
         "fc": {"kernel": jax.random.normal(k[1], (32, 16)) * 3, "bias": jnp.ones(16)},
         "out": {"kernel": jax.random.normal(k[2], (16, 4))}}
    if ties:
        p = jax.tree.map(lambda x: jnp.round(x * 2), p)
    return p


def zeros(m):
    return int((~np.asarray(m)).sum())


def test_layerwise_and_global_semantics():
    p = tree(ties=True)
    m = jp.magnitude_mask(p, 0.7)
    for name in ("conv", "fc", "out"):
        w = p[name]["kernel"]
        assert zeros(m[name]["kernel"]) == round(0.7 * w.size)
        np.testing.assert_array_equal(m[name]["kernel"], jp.threshold_mask(jnp.abs(w), 0.7))
    assert m["conv"]["bias"].all() and m["fc"]["bias"].shape == (16,)
    g = jp.magnitude_mask(p, 0.7, scope="global")
    kernels = [p[n]["kernel"] for n in ("conv", "fc", "out")]
    total = sum(w.size for w in kernels)
    assert sum(zeros(g[n]["kernel"]) for n in ("conv", "fc", "out")) == round(0.7 * total)
    # one threshold: every kept |w| >= every pruned |w|
    kept = np.concatenate([np.abs(np.asarray(w))[np.asarray(g[n]["kernel"])]
                           for n, w in zip(("conv", "fc", "out"), kernels)])
    pruned = np.concatenate([np.abs(np.asarray(w))[~np.asarray(g[n]["kernel"])]
                             for n, w in zip(("conv", "fc", "out"), kernels)])
    assert kept.min() >= pruned.max()
    # fc has 3x larger weights: global prunes it less than the others
    assert zeros(g["fc"]["kernel"]) / 512 < zeros(g["conv"]["kernel"]) / 288
    # normalisation by layer scale removes that advantage
    gn = jp.magnitude_mask(p, 0.7, scope="global", normalize="max")
    assert zeros(gn["fc"]["kernel"]) > zeros(g["fc"]["kernel"])


def test_where_and_score_mask():
    p = tree()
    m = jp.magnitude_mask(p, 0.5, where=r"fc/.*")
    assert zeros(m["fc"]["kernel"]) == 256 and zeros(m["fc"]["bias"]) == 8
    assert m["conv"]["kernel"].all()
    s = jax.tree.map(lambda x: -x, p)  # prune the largest positive weights instead
    ms = jp.score_mask(s, 0.25, where=r"out/kernel")
    w = np.asarray(p["out"]["kernel"])
    assert w[~np.asarray(ms["out"]["kernel"])].min() >= w[np.asarray(ms["out"]["kernel"])].max()


def test_nm_mask_brute_force():
    rng = np.random.default_rng(0)
    for (n, m), axis, shape in [((2, 4), -1, (3, 8)), ((1, 4), 0, (8, 3)), ((3, 8), 1, (2, 8, 3)),
                                ((2, 4), -1, (2, 4))]:
        w = rng.integers(-3, 4, size=shape).astype(np.float32)  # ties included
        keep = np.asarray(jp.nm_mask(w, n, m, axis=axis))
        wm = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
        km = np.moveaxis(keep, axis, -1).reshape(-1, m)
        assert (km.sum(1) == n).all()
        for row, krow in zip(wm, km):
            best = max(sum(row[list(c)]) for c in itertools.combinations(range(m), n))
            assert row[krow].sum() == best
            # ties: the higher index is kept
            kept, dropped = np.flatnonzero(krow), np.flatnonzero(~krow)
            for i in kept:
                for j in dropped:
                    assert row[i] > row[j] or (row[i] == row[j] and i > j)


def test_nm_pattern_in_tree_and_errors():
    p = tree()
    m = jp.magnitude_mask(p, None, pattern="2:4")
    for name in ("conv", "fc", "out"):
        km = np.asarray(m[name]["kernel"]).reshape(-1, 4)
        assert (km.sum(1) == 2).all()
    with pytest.raises(ValueError, match="n <= m"):
        jp.NM(5, 4)
    with pytest.raises(ValueError, match="n <= m"):
        jp.nm_mask(jnp.ones(4), 0, 4)
    with pytest.raises(ValueError, match="fc/kernel.*multiple of m=3|multiple of m=3.*fc/kernel"):
        jp.magnitude_mask(p, None, pattern=jp.NM(1, 3), where=r"fc/kernel")
    with pytest.raises(ValueError, match="sparsity=None"):
        jp.magnitude_mask(p, 0.3, pattern="2:4")


def test_block_and_channel_patterns():
    w = jnp.arange(64.0).reshape(8, 8) - 20.0
    keep = np.asarray(jp.block_mask(w, 0.5, block=(2, 4), reduce="l2"))
    blocks = keep.reshape(4, 2, 2, 4).transpose(0, 2, 1, 3).reshape(8, 8)
    assert all(len(set(b)) == 1 for b in blocks)  # whole blocks
    norms = np.sqrt((np.asarray(w).reshape(4, 2, 2, 4) ** 2).sum((1, 3)))
    kept_blocks = keep.reshape(4, 2, 2, 4)[:, 0, :, 0]
    assert kept_blocks.sum() == 4 and norms[kept_blocks].min() >= norms[~kept_blocks].max()
    with pytest.raises(ValueError, match="does not tile"):
        jp.block_mask(jnp.ones((6, 6)), 0.5, block=(4, 4))
    with pytest.raises(ValueError, match="at least 2 axes"):
        jp.magnitude_mask({"v": jnp.ones(8)}, 0.5, pattern=jp.Block(2, 2), where=True)
    # channels: output (last axis) and input (axis -2)
    k = jax.random.normal(jax.random.key(0), (3, 3, 4, 10))
    out = np.asarray(jp.channel_mask(k, 0.3, axis=-1, norm="l1"))
    per = out.reshape(-1, 10)
    assert (per.all(0) | ~per.any(0)).all() and (~per.any(0)).sum() == 3
    l1 = np.abs(np.asarray(k)).sum((0, 1, 2))
    assert l1[per.all(0)].min() >= l1[~per.any(0)].max()
    inp = np.asarray(jp.channel_mask(k, 0.5, axis=-2))
    assert (~inp.reshape(9, 4, 10).any((0, 2))).sum() == 2
    # global channel pruning counts channels
    p = tree()
    g = jp.magnitude_mask(p, 0.5, scope="global", pattern="channel")
    n_pruned = sum(int((~np.asarray(g[n]["kernel"]).reshape(-1, g[n]["kernel"].shape[-1])
                        .any(0)).sum()) for n in ("conv", "fc", "out"))
    assert n_pruned == round(0.5 * (8 + 16 + 4))


def test_erk_and_path_map_allocations():
    p = tree()
    shapes = [(3, 3, 4, 8), (32, 16), (16, 4)]
    m = jp.magnitude_mask(p, 0.8, allocation="erk")
    z = [zeros(m["conv"]["kernel"]), zeros(m["fc"]["kernel"]), zeros(m["out"]["kernel"])]
    total = sum(int(np.prod(s)) for s in shapes)
    assert sum(z) == round(0.8 * total)  # exact overall
    raw = np.array([sum(s) / np.prod(s) for s in shapes])
    dens = 1 - np.array(z) / np.array([np.prod(s) for s in shapes])
    np.testing.assert_allclose(dens / raw, (dens / raw)[0], rtol=0.05)  # density ∝ ERK ratio
    # high sparsity: a tiny layer would exceed density 1 and is made dense
    p2 = {"big": jnp.ones((200, 200)), "tiny": jnp.ones((2, 2))}
    d = jp.erk_densities([(200, 200), (2, 2)], 0.9)
    # densities are float32 (the same eagerly and under jit): within a hundredth of a weight
    assert d[1] == 1.0 and abs(d[0] * 40000 + 4 - 0.1 * 40004) < 1e-2
    s = jp.erk_sparsities(p2, 0.9)
    assert s["tiny"] == 0.0 and round(s["big"] * 40000) == round(0.9 * 40004)
    # ER ignores kernel dims
    d_er = jp.erk_densities([(3, 3, 4, 8), (32, 16)], 0.5, kernel=False)
    ratio = np.asarray(d_er) / np.array([12 / 32, 48 / 512])
    assert abs(ratio[0] - ratio[1]) < 1e-6
    # traced ERK agrees with the static one
    f = jax.jit(lambda s: jp.erk_densities(shapes, s))
    np.testing.assert_allclose(f(0.8), jp.erk_densities(shapes, 0.8), rtol=1e-5)
    # per-path map: first full match wins; unmatched take the default
    mm = jp.magnitude_mask(p, 0.5, allocation={r"conv/.*": 0.25, r".*kernel": 0.75})
    assert zeros(mm["conv"]["kernel"]) == 72 and zeros(mm["fc"]["kernel"]) == 384
    mm2 = jp.magnitude_mask(p, 0.5, allocation={r"conv/.*": 0.25})
    assert zeros(mm2["out"]["kernel"]) == 32
    assert jp.path_sparsities(p, {r"fc/.*": 0.1}, default=0.2) == {
        "conv/kernel": 0.2, "fc/kernel": 0.1, "out/kernel": 0.2}
    with pytest.raises(ValueError, match="out/kernel"):
        jp.magnitude_mask(p, None, allocation={r"conv/.*": 0.1, r"fc/.*": 0.2})
    with pytest.raises(ValueError, match="matches no selected"):
        jp.magnitude_mask(p, 0.5, allocation={r"nope/.*": 0.1})
    with pytest.raises(ValueError, match="allocation"):
        jp.magnitude_mask(p, 0.5, allocation="erk", scope="global")


def test_allocation_maps_take_the_shared_rule_forms():
    import ml_collections

    p = tree()
    cfg = ml_collections.ConfigDict({"alloc": {"conv/kernel": 0.25, "fc/kernel": 0.75}})
    a = jp.magnitude_mask(p, 0.5, allocation=cfg.alloc)
    b = jp.magnitude_mask(p, 0.5, allocation={r"conv/kernel": 0.25, r"fc/kernel": 0.75})
    assert all(bool(jnp.all(x == y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert jp.path_sparsities(p, {jc.select.path(r"fc/.*"): 0.1}, default=0.2)["fc/kernel"] == 0.1
    with pytest.raises(ValueError, match=r"sparsity map\['fc/.\*'\]=1.0 is outside"):
        jp.magnitude_mask(p, 0.5, allocation={r"fc/.*": 1.0})
    # a key that an earlier key takes entirely
    with pytest.raises(ValueError, match="fc/kernel' gives no selected parameter its value"):
        jp.magnitude_mask(p, 0.5, allocation={r".*": 0.5, r"fc/kernel": 0.1})


def test_bad_inputs_name_the_path():
    p = tree()
    with pytest.raises(ValueError, match="outside"):
        jp.magnitude_mask(p, 1.0)
    with pytest.raises(ValueError, match="matches no parameter"):
        jp.magnitude_mask(p, 0.5, where=r"decoder/.*")
    with pytest.raises(ValueError, match="selects no parameter"):
        jp.magnitude_mask(p, 0.5, where=jax.tree.map(lambda _: False, p))
    bad = jax.tree.map(lambda x: x, p)
    bad["fc"]["kernel"] = bad["fc"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="'fc/kernel'"):
        jp.magnitude_mask(bad, 0.5)
    lr = {"w": jc.LowRank(jnp.ones((4, 2)), jnp.ones((2, 4)))}
    with pytest.raises(TypeError, match="'w'.*compressed leaf"):
        jp.magnitude_mask(lr, 0.5, where=True)
    with pytest.raises(ValueError, match="pattern"):
        jp.magnitude_mask(p, 0.5, pattern="diagonal")


def test_flax_boxed_params_and_sharding_of_unselected():
    model = nn.Dense(8, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                         (None, "model")))
    variables = model.init(jax.random.key(0), jnp.ones((1, 16)))
    assert isinstance(variables["params"]["kernel"], nn.Partitioned)
    m = jp.magnitude_mask(variables, 0.75)
    assert isinstance(m["params"]["kernel"], nn.Partitioned)
    assert zeros(m["params"]["kernel"].value) == 96
    masked = jp.apply_masks(variables, m)
    out = model.apply(masked, jnp.ones((1, 16)))
    assert out.shape == (1, 8)
    mesh = jax.make_mesh((8,), ("x",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    p = {"w": jax.device_put(jnp.ones((16, 8)), sh), "b": jax.device_put(jnp.ones(8), sh)}
    mp = jp.magnitude_mask(p, 0.5)
    for n in ("w", "b"):
        assert mp[n].sharding.is_equivalent_to(p[n].sharding, p[n].ndim)


def test_sparsity_summary():
    p = tree()
    m = jp.magnitude_mask(p, 0.6)
    s = jp.sparsity_summary(jp.apply_masks(p, m), where=r".*kernel")
    assert [r.path for r in s.rows] == ["conv/kernel", "fc/kernel", "out/kernel"]
    assert s.zeros == sum(round(0.6 * n) for n in (288, 512, 64)) and s.size == 864
    d = s.to_dict()
    assert d["total"]["zeros"] == s.zeros and d["rows"][1]["sparsity"] == 307 / 512
    sm = jp.sparsity_summary(m)
    assert sm.size == jc.metrics.count_params(p) and "total" in str(sm)
    from rich.console import Console

    console = Console(record=True, width=100)
    console.print(s)
    assert "fc/kernel" in console.export_text()


def test_sparsity_summary_selection_and_errors():
    p = {"fc": {"kernel": jnp.array([[0.0, 1.0], [2.0, 0.0]]), "bias": jnp.zeros(2)},
         "lr": jc.LowRank(jnp.array([[1.0], [0.0]]), jnp.array([[1.0, 0.0]])),
         "skip": jc.MaskedNode()}
    every = jp.sparsity_summary(p)
    assert [(r.path, r.zeros, r.size) for r in every.rows] == [
        ("fc/bias", 2, 2), ("fc/kernel", 2, 4), ("lr", 3, 4)]  # LowRank: its dense product
    # any where= form of jaxcomp.select, the same rows
    sel = jc.select.ndim(min=2) & jc.select.path(r"fc/.*")
    bools = {"fc": {"kernel": True, "bias": False}, "lr": False, "skip": jc.MaskedNode()}
    for where in (r"fc/kernel", sel, bools, lambda path, leaf: path == "fc/kernel"):
        assert [r.path for r in jp.sparsity_summary(p, where=where).rows] == ["fc/kernel"]
    # a where that selects nothing names the caller and lists the paths, closest first
    with pytest.raises(ValueError, match=r"sparsity_summary: where='fc/kernal' matches no leaf"
                       ) as e:
        jp.sparsity_summary(p, where="fc/kernal")
    assert str(e.value).splitlines()[1].strip() == "fc/kernel"
    assert jp.sparsity_summary({}).rows == () and jp.sparsity_summary({}).sparsity == 0.0


@settings(max_examples=15, deadline=None)
@given(s=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_erk_counts_agree_eagerly_and_under_jit(s, seed):
    from jaxcomp.prune import allocation

    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in rng.integers(1, 40, size=int(rng.integers(1, 4))))
              for _ in range(4)]
    sizes = [int(np.prod(sh)) for sh in shapes]
    eager = allocation.erk_counts(sizes, shapes, s)
    jitted = jax.jit(lambda v: jnp.stack(allocation.erk_counts(sizes, shapes, v)))(
        jnp.float32(s))
    assert eager == [int(k) for k in jitted]
    assert sum(eager) == jp.num_pruned(s, sum(sizes))
