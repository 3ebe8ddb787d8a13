"""jaxcomp.ops.kth, sort-free exact selection: exactness, ties, edge cases, sharding without
all-gathers; the public names stay reachable through jaxcomp.prune."""

import itertools
import re

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcomp.prune as jp
from jaxcomp import ops
from jaxcomp.ops import kth as T


def oracle_bottomk(x, k):
    """Brute force: the k smallest by (value, flat index)."""
    flat = np.asarray(x, np.float32).ravel()
    order = sorted(range(flat.size), key=lambda i: (flat[i], i))
    m = np.zeros(flat.size, bool)
    m[order[:k]] = True
    return m.reshape(np.shape(x))


def test_ordered_key_is_monotone():
    vals = np.array([-np.inf, -3e38, -1.0, -1e-40, -0.0, 0.0, 1e-45, 0.5, 1.0, 3e38, np.inf],
                    np.float32)
    keys = np.asarray(T.ordered_key(vals)).astype(np.int64)
    assert all(a <= b for a, b in itertools.pairwise(keys))
    assert keys[4] == keys[5]  # -0.0 == +0.0
    assert int(T.ordered_key(jnp.float32(jnp.nan))) == 2**32 - 1
    back = np.asarray(T._key_to_float(T.ordered_key(vals)))
    normal = (vals == 0) | (np.abs(vals) >= np.finfo(np.float32).tiny)  # XLA CPU flushes subnormals
    np.testing.assert_array_equal(back[normal], vals[normal] + 0.0)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(1,), (7,), (3, 5), (4, 4), (2, 3, 4), (1, 1, 9)]),
       sparsity=st.floats(0.0, 0.999), ties=st.booleans(), seed=st.integers(0, 2**16))
def test_threshold_mask_exact_sparsity_and_order(shape, sparsity, ties, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape) if ties else rng.normal(size=shape)
    x = x.astype(np.float32)
    n = x.size
    keep = np.asarray(jp.threshold_mask(x, sparsity))
    k = round(sparsity * n)
    assert keep.shape == shape and keep.dtype == bool
    assert (~keep).sum() == k
    np.testing.assert_array_equal(~keep, oracle_bottomk(x, k))


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.sampled_from([1, 5, 12]), min_size=1, max_size=3), frac=st.floats(0, 1),
       seed=st.integers(0, 2**16), ways=st.sampled_from([2, 3, 16]))
def test_global_group_matches_brute_force(sizes, frac, seed, ways):
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, 4, size=n).astype(np.float32) for n in sizes]
    total = sum(sizes)
    k = round(frac * total)
    got = jp.smallest_k_masks([jnp.asarray(x) for x in xs], [k], groups=[0] * len(xs), ways=ways)
    cat = [(float(v), j, i) for j, x in enumerate(xs) for i, v in enumerate(x)]
    want = [np.zeros(n, bool) for n in sizes]
    for _, j, i in sorted(cat)[:k]:
        want[j][i] = True
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w)


def test_edge_cases():
    # all equal: lower indices pruned first
    np.testing.assert_array_equal(jp.threshold_mask(jnp.ones(6), 0.5), [0, 0, 0, 1, 1, 1])
    # all zero, 2-d
    m = jp.threshold_mask(jnp.zeros((3, 3)), 0.34)
    assert (~m).sum() == 3 and not m[0].any() and m[1:].all()
    # single element
    assert bool(jp.threshold_mask(jnp.array([5.0]), 0.4)[0])
    assert not bool(jp.threshold_mask(jnp.array([5.0]), 0.6)[0])
    # sparsity 0 keeps everything, also with infinities
    assert bool(jp.threshold_mask(jnp.array([-jnp.inf, 0.0, jnp.inf]), 0.0, check_finite=False)
                .all())
    # topk / bottomk are complements; k = 0 and k = n
    x = jnp.array([3.0, 1.0, 3.0, 2.0])
    np.testing.assert_array_equal(jp.topk_mask(x, 2), [True, False, True, False])
    np.testing.assert_array_equal(jp.topk_mask(x, 1), [False, False, True, False])
    np.testing.assert_array_equal(jp.topk_mask(x, 0), [False] * 4)
    np.testing.assert_array_equal(jp.bottomk_mask(x, 4), [True] * 4)
    np.testing.assert_array_equal(jp.topk_mask(x, 3), ~jp.bottomk_mask(x, 1))
    assert float(jp.kth_smallest(x, 3)) == 3.0 and float(jp.kth_smallest(-x, 1)) == -3.0
    assert int(jp.count_true(jnp.arange(1001 * 7).reshape(1001, 7) % 2 == 0)) == 3504


def test_rounding_rule_and_traced_sparsity():
    assert jp.num_pruned(0.5, 5) == 2 and jp.num_pruned(0.5, 7) == 4  # halves to even
    assert jp.num_pruned(0.25, 10) == 2
    x = jax.random.normal(jax.random.key(0), (37,))
    f = jax.jit(lambda x, s: jp.threshold_mask(x, s))
    for s in (0.0, 0.1, 0.5, 0.93):
        assert int((~f(x, s)).sum()) == round(s * 37)


def test_nan_and_bad_arguments():
    x = jnp.array([1.0, jnp.nan, 2.0])
    with pytest.raises(ValueError, match="NaN or Inf"):
        jp.threshold_mask(x, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        jp.topk_mask(x, 1)
    # under jit: documented rule, NaN ranks above +inf (kept)
    keep = jax.jit(lambda x: jp.threshold_mask(x, 0.6))(x)
    np.testing.assert_array_equal(keep, [False, True, False])
    with pytest.raises(ValueError, match=r"outside \[0.0, 1.0\)"):
        jp.threshold_mask(jnp.ones(3), 1.0)
    with pytest.raises(ValueError, match="outside"):
        jp.threshold_mask(jnp.ones(3), -0.1)
    with pytest.raises(ValueError, match="k=4"):
        jp.topk_mask(jnp.ones(3), 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        jp.check_finite({"layer": {"kernel": jnp.array([jnp.inf])}}, "params")


def _collectives(compiled_text):
    return set(re.findall(r"\b(all-gather|all-to-all|collective-permute|all-reduce)\b",
                          compiled_text))


@pytest.mark.parametrize("explicit", [True, False])
def test_sharded_mask_has_no_all_gather_and_matches(explicit):
    types = (jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=types)
    w = jax.random.normal(jax.random.key(0), (2048, 2048))
    w = jnp.round(w * 8) / 8  # many ties: exercises the index search too
    ws = jax.device_put(w, NamedSharding(mesh, P("a", "b")))
    f = jax.jit(lambda w: jp.threshold_mask(jnp.abs(w), 0.9))
    colls = _collectives(f.lower(ws).compile().as_text())
    assert "all-gather" not in colls and "all-to-all" not in colls
    m = f(ws)
    assert m.sharding.spec == P("a", "b")
    single = jp.threshold_mask(jnp.abs(jax.device_put(w, jax.devices()[0])), 0.9)
    np.testing.assert_array_equal(np.asarray(m), np.asarray(single))
    assert int((~m).sum()) == round(0.9 * 2048 * 2048)


def test_sharded_global_threshold_over_several_leaves():
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    specs = {"big": ((2048, 2048), P("a", "b")), "fc": ((512, 256), P("b", None)),
             "conv": ((3, 3, 64, 128), P(None, None, "a", "b"))}
    key = jax.random.key(1)
    params = {n: jnp.round(jax.random.normal(jax.random.fold_in(key, i), s) * 16) / 16
              for i, (n, (s, _)) in enumerate(specs.items())}
    sharded = {n: jax.device_put(params[n], NamedSharding(mesh, sp))
               for n, (_, sp) in specs.items()}
    f = jax.jit(lambda p: jp.magnitude_mask(p, 0.8, scope="global"))
    colls = _collectives(f.lower(sharded).compile().as_text())
    assert "all-gather" not in colls and "all-to-all" not in colls
    got = f(sharded)
    for n, (_, sp) in specs.items():
        assert got[n].sharding.spec == sp
    want = jp.magnitude_mask(jax.device_put(params, jax.devices()[0]), 0.8, scope="global")
    total = sum(x.size for x in params.values())
    assert sum(int((~got[n]).sum()) for n in specs) == round(0.8 * total)
    for n in specs:
        np.testing.assert_array_equal(np.asarray(got[n]), np.asarray(want[n]))


# ------------------------------------------------------------ exact prune counts


@settings(max_examples=200, deadline=None)
@given(d=st.integers(0, 999_999), n=st.one_of(st.integers(0, 1000), st.integers(0, 2**31 - 1)))
def test_num_pruned_counts_six_decimal_sparsities_exactly(d, n):
    from fractions import Fraction

    want = round(Fraction(d, 10**6) * n)  # exact, halves to even
    assert jp.num_pruned(d / 10**6, n) == want


def test_num_pruned_is_exact_for_resnet50_and_agrees_under_jit():
    n = 25_557_032
    assert jp.num_pruned(0.9, n) == 23_001_329  # 0.9 * n = 23,001,328.8
    f = jax.jit(jp.num_pruned, static_argnums=1)
    assert int(f(jnp.float32(0.9), n)) == 23_001_329
    # half-integer boundaries: eager and jit agree (and round halves to even)
    for s, size, want in [(0.1, 5, 0), (0.3, 5, 2), (0.5, 5, 2), (0.7, 5, 4), (0.25, 2, 0),
                          (0.5, 3, 2), (0.125, 4, 0), (0.375, 4, 2)]:
        assert jp.num_pruned(s, size) == want == int(f(jnp.float32(s), size)), (s, size)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(0, 0x3F7FFFFF), n=st.integers(0, 2**31 - 1))
def test_num_pruned_eager_equals_jit_for_any_float32_sparsity(bits, n):
    s = np.array(bits, np.uint32).view(np.float32)[()]  # every float32 in [0, 1)
    got = jp.num_pruned(float(s), n)
    assert got == int(_NUM_PRUNED_JIT(jnp.float32(s), n))
    assert 0 <= got <= n
    assert abs(got - float(s) * n) <= max(1.0, float(s) * n * 2**-23)


_NUM_PRUNED_JIT = jax.jit(jp.num_pruned, static_argnums=1)


def test_unsharded_bottomk_matches_smallest_k_masks_and_brute_force():
    rng = np.random.default_rng(0)
    sel = jax.jit(T.bottomk_mask_unsharded)
    for _ in range(40):  # many ties: small integers with signs and zeros
        s = jnp.asarray(rng.integers(-3, 4, size=(3, 7)).astype(np.float32))
        k = int(rng.integers(0, 22))
        got = sel(s, jnp.int32(k))
        np.testing.assert_array_equal(got, T.smallest_k_masks([s], [k])[0])
        np.testing.assert_array_equal(got, oracle_bottomk(s, k))
    # inside a scan body (its purpose), per row
    xs = jnp.asarray(rng.normal(size=(4, 9)).astype(np.float32))
    _, rows = jax.lax.scan(lambda c, r: (c, T.bottomk_mask_unsharded(r, 3)), 0, xs)
    np.testing.assert_array_equal(rows, np.stack([oracle_bottomk(r, 3) for r in np.asarray(xs)]))


def test_is_tracer_and_validate_sparsity():
    assert not T.is_tracer(jnp.ones(2)) and not T.is_tracer(0.5)
    assert bool(jax.jit(T.is_tracer)(jnp.ones(2)))
    T.validate_sparsity(0.0)
    T.validate_sparsity(0.999)
    jax.jit(lambda s: T.validate_sparsity(s) or s)(2.0)  # traced: cannot be inspected
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="keep_ratio"):
            T.validate_sparsity(bad, "keep_ratio")


def test_prune_reexports_the_ops_kernels_unchanged():
    assert jp.threshold is T and jp.ste is ops.ste
    for name in ("bottomk_mask", "check_finite", "count_true", "kth_smallest", "num_pruned",
                 "smallest_k_masks", "threshold_mask", "topk_mask"):
        assert getattr(jp, name) is getattr(T, name) is getattr(ops, name)
    for name in ("masked_weight", "ste_masked_weight", "sr_ste_masked_weight"):
        assert getattr(jp, name) is getattr(ops.ste, name) is getattr(ops, name)
    assert T.ordered_key.__module__ == "jaxcomp.ops.kth"
