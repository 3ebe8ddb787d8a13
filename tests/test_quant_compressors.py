"""fake_quantization / lsq_quantization: views, calibration schedules, pruning, metrics, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcomp as jc
import jaxcomp.prune as jp
from jaxcomp.metrics import analyze, model_size_bytes
from jaxcomp.parallel import make_mesh
from jaxcomp.quant.calibration import calibrate
from jaxcomp.quant.compressors import (
    FakeQuantizationState,
    fake_quantization,
    lsq_params,
    lsq_quantization,
)
from jaxcomp.quant.export import export_quantized
from jaxcomp.quant.uniform import compute_scale, fake_quant

RNG = np.random.default_rng(0)


def params():
    return {"fc1": {"kernel": jnp.asarray(RNG.normal(size=(6, 8)), jnp.float32),
                    "bias": jnp.zeros(8)},
            "fc2": {"kernel": jnp.asarray(RNG.normal(size=(8, 4)), jnp.float32),
                    "bias": jnp.zeros(4)}}


P0 = params()
FQ = jax.jit(fake_quant, static_argnames=("bits", "axis", "symmetric"))


def test_apply_is_fake_quant_per_leaf_and_mixed_precision():
    comp = fake_quantization({r"fc1/.*": 4, r".*": 8})
    st = comp.init(P0)
    assert isinstance(st, FakeQuantizationState)
    view = jax.jit(comp.apply)(P0, st)
    np.testing.assert_array_equal(view["fc1"]["kernel"], FQ(P0["fc1"]["kernel"], bits=4, axis=-1))
    np.testing.assert_array_equal(view["fc2"]["kernel"], FQ(P0["fc2"]["kernel"], bits=8, axis=-1))
    np.testing.assert_array_equal(view["fc1"]["bias"], P0["fc1"]["bias"])  # untouched
    info = jc.compression_info(st)
    assert {p: i.weight_bits for p, i in info.items()} == {"fc1/kernel": 4, "fc2/kernel": 8}
    assert comp.due is jc.never_due
    # straight-through gradient to the stored weights (1 inside the range: absmax covers all)
    g = jax.jit(jax.grad(lambda p: jnp.sum(comp.apply(p, st)["fc1"]["kernel"])))(P0)
    np.testing.assert_allclose(g["fc1"]["kernel"], np.ones((6, 8)), rtol=1e-6)


def test_calibrated_scales_follow_the_schedule():
    comp = fake_quantization(4, calibration="percentile", percentile=90.0, update_every=2)
    st = jax.jit(comp.init)(P0)
    k = P0["fc1"]["kernel"]
    np.testing.assert_allclose(
        st.scale["fc1"]["kernel"],
        np.percentile(np.abs(np.asarray(k)), 90.0, axis=0, keepdims=True) / 7, rtol=1e-5)
    upd = jax.jit(lambda p, s, t: comp.update(p, s, step=t))
    p = P0
    counts, scales = [], []
    for t in range(4):
        p = jax.tree.map(lambda x: 1.5 * x, p)  # training moves the weights
        _, st = upd(p, st, jnp.int32(t))
        counts.append(int(st.count))
        scales.append(np.asarray(st.scale["fc1"]["kernel"]))
    assert counts == [1, 1, 2, 2]  # recalibrated at steps 0 and 2 only
    np.testing.assert_array_equal(scales[0], scales[1])
    assert not np.array_equal(scales[1], scales[2])
    assert [jc.update_due(comp, t) for t in range(4)] == [True, False, True, False]
    view = jax.jit(comp.apply)(p, st)
    np.testing.assert_array_equal(
        view["fc2"]["kernel"], FQ(p["fc2"]["kernel"], bits=4, scale=st.scale["fc2"]["kernel"]))


def test_stochastic_rounding_draws_per_step():
    comp = fake_quantization(3, rounding="stochastic", key=jax.random.key(0))
    assert comp.due is None
    st = comp.init(P0)
    upd = jax.jit(lambda p, s, t: comp.update(p, s, step=t)[1])
    app = jax.jit(comp.apply)
    v1 = app(P0, upd(P0, st, 1))["fc1"]["kernel"]
    v2 = app(P0, upd(P0, st, 2))["fc1"]["kernel"]
    assert not np.array_equal(v1, v2)
    s = P0["fc1"]["kernel"].__abs__().max(0, keepdims=True) / 3
    for v in (v1, v2):  # each value is the floor or the ceiling on the grid
        y = np.asarray(P0["fc1"]["kernel"] / s)
        c = np.asarray(v / s)
        assert np.all((np.abs(c - np.floor(y)) < 1e-4) | (np.abs(c - np.ceil(y)) < 1e-4))


@pytest.fixture(scope="module")
def pruned_then_quantized():
    """``chain(magnitude_pruning(0.5), fake_quantization({fc1: 4, others: 8}, percentile))``."""
    comp = jc.chain(jp.magnitude_pruning(0.5),
                    fake_quantization({r"fc1/.*": 4, r".*": 8}, calibration="percentile",
                                      percentile=90.0))
    st = jax.jit(comp.init)(P0)
    return comp, st, jax.jit(comp.apply)(P0, st)


def test_chain_with_pruning_keeps_zeros_and_calibrates_on_survivors(pruned_then_quantized):
    _, st, view = pruned_then_quantized
    cal = jax.jit(calibrate, static_argnames=("bits", "method", "axis"))
    for layer, bits in (("fc1", 4), ("fc2", 8)):
        m = np.asarray(st[0].masks[layer]["kernel"])
        v = np.asarray(view[layer]["kernel"])
        assert np.all(v[~m] == 0.0)  # exactly zero after quantization
        assert np.count_nonzero(v[m]) > 0.8 * m.sum()
        pruned = np.where(m, np.asarray(P0[layer]["kernel"]), 0.0)
        s, _ = cal(pruned, bits=bits, method="percentile", percentile=90.0, axis=-1, mask=m)
        np.testing.assert_array_equal(st[1].scale[layer]["kernel"], s)  # survivors only
        np.testing.assert_allclose(v, FQ(pruned, bits=bits, scale=s), rtol=1e-6)
        dense_s = cal(pruned, bits=bits, method="percentile", percentile=90.0, axis=-1)[0]
        assert not np.allclose(s, dense_s)  # counting the zeros would shrink the range
    # absmax and asymmetric grids keep zeros exact too (the zero point is an integer code)
    pruned_view = jax.jit(jc.chain(jp.magnitude_pruning(0.5)).apply)(P0, (st[0],))
    for quant in (fake_quantization(3), fake_quantization(3, symmetric=False, axis=None)):
        v = jax.jit(quant.apply)(pruned_view, quant.init(pruned_view))["fc1"]["kernel"]
        assert np.all(np.asarray(v)[~np.asarray(st[0].masks["fc1"]["kernel"])] == 0.0)


def test_bops_and_storage_at_the_real_bit_widths(pruned_then_quantized):
    _, st, view = pruned_then_quantized
    x = jnp.ones((2, 6))
    a = analyze(lambda p, x: (x @ p["fc1"]["kernel"]) @ p["fc2"]["kernel"], view, x,
                compression=st, compile=False)
    by = {layer.weight_path: layer for layer in a.layers}
    assert by["fc1/kernel"].weight_bits == 4 and by["fc2/kernel"].weight_bits == 8
    # MACs 2*6*8 = 96 and 2*8*4 = 64, density 0.5, 32-bit activations
    assert by["fc1/kernel"].bops == 96 * 0.5 * 4 * 32
    assert by["fc2/kernel"].bops == 64 * 0.5 * 8 * 32
    assert a.bops == 6144 + 8192
    # storage: codes at their bits + float32 scales per channel + one int8 zero point
    export = jax.jit(export_quantized)
    q = export(view, st)  # the chain's view: pruned, then quantized
    rep = model_size_bytes(q)
    assert rep.row("fc1/kernel").total_bits == 48 * 4 + 8 * 32 + 8
    assert rep.row("fc2/kernel").total_bits == 32 * 8 + 4 * 32 + 8
    assert rep.total_bits == 456 + 392 + 8 * 32 + 4 * 32
    dense = jax.jit(jc.materialize)(q)  # the codes reproduce the view
    for layer in ("fc1", "fc2"):
        np.testing.assert_allclose(dense[layer]["kernel"], view[layer]["kernel"], rtol=1e-6)
    pruned = ~np.asarray(st[0].masks["fc1"]["kernel"])
    assert np.all(np.asarray(q["fc1"]["kernel"].values)[pruned] == 0)
    lq = lsq_params(P0, bits=3, where=r"fc1/kernel")
    lst = lsq_quantization(3).init(lq)
    assert export(lq, lst)["fc1"]["kernel"].values.dtype == jnp.int8
    with pytest.raises(ValueError, match="holds no FakeQuantizationState"):
        export_quantized(P0, st[0])


@pytest.mark.parametrize("factory,match,exc", [
    (lambda: fake_quantization(0), "bits=0 is outside", ValueError),
    (lambda: fake_quantization(1), "only the code 0", ValueError),
    (lambda: fake_quantization(calibration="kl"), "calibration='kl'", ValueError),
    (lambda: fake_quantization(rounding="stochastic"), "needs a PRNG key", ValueError),
    (lambda: fake_quantization(update_every=0), "update_every=0", ValueError),
    (lambda: fake_quantization(key=3, rounding="stochastic"), "PRNG key", TypeError),
])
def test_factory_errors(factory, match, exc):
    with pytest.raises(exc, match=match):
        factory()


def test_init_errors_name_the_path():
    with pytest.raises(ValueError, match=r"bits\['fc1/\.\*'\]=20 is outside \[1, 16\]"):
        fake_quantization({r"fc1/.*": 20, r".*": 8})
    with pytest.raises(ValueError, match="matches quantized weight 'fc2/kernel'.*no default"):
        fake_quantization({r"fc1/.*": 4}).init(P0)
    with pytest.raises(ValueError, match="bits for 'fc2/kernel'=0 is outside"):
        fake_quantization(lambda p, x: 0 if p == "fc2/kernel" else 8).init(P0)
    with pytest.raises(ValueError, match="'fc1/kernel'.*axis=2 is out of range"):
        fake_quantization(axis=2).init(P0)
    with pytest.raises(ValueError, match="'fc1/kernel'.*group_size=4 does not divide axis 0"):
        fake_quantization(group_size=4).init(P0)
    bad = jax.tree.map(lambda x: x, P0)
    bad["fc2"]["kernel"] = bad["fc2"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="'fc2/kernel' holds NaN or Inf"):
        fake_quantization().init(bad)
    with pytest.raises(ValueError, match="'fc2/kernel' holds NaN or Inf"):
        fake_quantization().apply(bad, fake_quantization().init(P0))
    with pytest.raises(TypeError, match="'c' has dtype int32"):
        fake_quantization(where="c").init({"c": jnp.ones((2, 2), jnp.int32)})
    with pytest.raises(ValueError, match="matches no weight"):
        fake_quantization(where="conv/.*").init(P0)


def test_sharded_kernel_keeps_its_sharding_without_all_gather():
    mesh = make_mesh({"model": 8})
    spec = NamedSharding(mesh, P(None, "model"))
    w = jax.device_put(jnp.asarray(RNG.normal(size=(64, 128)), jnp.float32), spec)
    comp = fake_quantization(8)
    st = comp.init({"k": w})
    fns = {
        "compute_scale": lambda x: compute_scale(x, bits=8, axis=-1)[0],
        "fake_quant": lambda x: fake_quant(x, bits=8, axis=-1),
        "apply": lambda x: comp.apply({"k": x}, st)["k"],
    }
    for name, f in fns.items():
        compiled = jax.jit(f).lower(w).compile()
        assert "all-gather" not in compiled.as_text(), name
        out = compiled(w)
        assert out.sharding.is_equivalent_to(spec, 2), name
    np.testing.assert_array_equal(out, FQ(np.asarray(w), bits=8, axis=-1))
