"""Uniform affine quantization: ranges, scales, fake_quant, integer codes."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcomp.core.leaves import QArray
from jaxcomp.quant.grid import (
    MIN_SCALE,
    clip_ste,
    expand_scale,
    normalize_axes,
    quant_range,
    reduction_plan,
    round_ste,
    stochastic_round,
    validate_bits,
)
from jaxcomp.quant.uniform import (
    compute_scale,
    dequantize,
    fake_quant,
    quantize,
    scale_from_range,
)

RNG = np.random.default_rng(0)
W = RNG.normal(size=(6, 8)).astype(np.float32)

# Jitted once per static configuration: eager dispatch would compile every primitive per shape.
_STATIC = ("bits", "axis", "group_size", "group_axis", "symmetric", "rounding", "ste")
FQ = jax.jit(fake_quant, static_argnames=_STATIC)
CS = jax.jit(compute_scale, static_argnames=_STATIC[:5])
QZ = jax.jit(quantize, static_argnames=_STATIC[:6])


def np_scale(x, bits, keep_axes, symmetric=True, mask=None):
    """Brute-force oracle of compute_scale (per-tensor/per-channel)."""
    red = tuple(i for i in range(x.ndim) if i not in keep_axes)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        a = np.abs(x) if mask is None else np.where(mask, np.abs(x), 0)
        s = np.maximum(a.max(axis=red, keepdims=True) / qmax, MIN_SCALE)
        return s, np.zeros_like(s)
    qmax = 2**bits - 1
    lo = np.minimum(x.min(axis=red, keepdims=True), 0)
    hi = np.maximum(x.max(axis=red, keepdims=True), 0)
    s = np.maximum((hi - lo) / qmax, MIN_SCALE)
    return s, np.clip(np.round(-lo / s), 0, qmax)


def np_fake_quant(x, s, z, qmin, qmax):
    return (np.clip(np.round(x / s + z), qmin, qmax) - z) * s


def test_quant_range_and_bits():
    assert quant_range(8) == (-127, 127)
    assert quant_range(8, symmetric=False) == (0, 255)
    assert quant_range(2) == (-1, 1) and quant_range(16) == (-32767, 32767)
    assert quant_range(1, symmetric=False) == (0, 1)
    with pytest.raises(ValueError, match="bits=1 with symmetric=True"):
        quant_range(1)
    for bad in (0, 17, -3):
        with pytest.raises(ValueError, match=f"bits={bad} is outside \\[1, 16\\]"):
            quant_range(bad)
    for bad in (8.0, True, "8", jnp.int32(8)):
        with pytest.raises(TypeError, match="must be a Python int"):
            validate_bits(bad)
    assert validate_bits(np.int64(4)) == 4


def test_normalize_axes():
    assert normalize_axes((-1, 0), 3) == (0, 2)
    with pytest.raises(ValueError, match="out of range .* 2 dimensions"):
        normalize_axes(2, 2)
    with pytest.raises(ValueError, match="repeats"):
        normalize_axes((1, -1), 2)
    with pytest.raises(TypeError, match="ints"):
        normalize_axes((0.5,), 2)


@pytest.mark.parametrize("axis,keep", [(None, ()), (-1, (1,)), (0, (0,)), ((0, 1), (0, 1))])
@pytest.mark.parametrize("symmetric", [True, False])
def test_compute_scale_matches_numpy(axis, keep, symmetric):
    s, z = CS(W, bits=4, axis=axis, symmetric=symmetric)
    es, ez = np_scale(W, 4, keep, symmetric)
    np.testing.assert_allclose(s, es, rtol=1e-6)
    np.testing.assert_array_equal(z, ez)
    assert s.dtype == jnp.float32 and s.shape == es.shape


def test_compute_scale_groups_match_numpy():
    x = RNG.normal(size=(3, 3, 8, 4)).astype(np.float32)  # HWIO: groups of 4 input channels
    s, _z = CS(x, bits=4, axis=-1, group_size=4)
    assert s.shape == (1, 1, 2, 4)
    for gi in range(2):
        blk = x[:, :, 4 * gi:4 * gi + 4, :]
        np.testing.assert_allclose(s[0, 0, gi], np.abs(blk).max(axis=(0, 1, 2)) / 7, rtol=1e-6)
    # explicit group_axis and per-tensor groups
    s2, _ = CS(W, bits=8, group_size=2, group_axis=0)
    assert s2.shape == (3, 1)
    np.testing.assert_allclose(s2[:, 0], np.abs(W.reshape(3, 16)).max(1) / 127, rtol=1e-6)
    s3, _ = CS(W, bits=8, group_size=4)  # default: the last axis
    np.testing.assert_allclose(s3, np.abs(W.reshape(6, 2, 4)).max((0, 2))[None] / 127, rtol=1e-6)


def test_compute_scale_mask_and_zero_channels():
    x = np.array([[5.0, 0.0], [-0.5, 0.0], [0.25, 0.0]], np.float32)
    mask = np.array([[False, False], [True, False], [True, False]])
    s, _ = CS(x, bits=8, axis=-1, mask=mask)
    np.testing.assert_allclose(s, [[0.5 / 127, MIN_SCALE]], rtol=1e-6)  # 5.0 is pruned
    s, z = CS(x, bits=8, axis=-1, symmetric=False, mask=mask)
    np.testing.assert_allclose(s[0, 0], 0.75 / 255, rtol=1e-6)
    assert z.tolist() == [[170.0, 0.0]]  # round(0.5 / (0.75/255)) = 170
    out = FQ(jnp.asarray(x), bits=8, scale=s, zero_point=z)
    assert out[0, 1] == 0.0 and out[2, 1] == 0.0  # zero stays exactly zero


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"axis": 2}, ValueError, "axis=2 is out of range"),
    ({"axis": -1, "group_size": 5}, ValueError, "group_size=5 does not divide axis 0"),
    ({"axis": -1, "group_size": 0}, ValueError, "group_size=0 must be >= 1"),
    ({"axis": -1, "group_size": 2, "group_axis": 1}, ValueError, "is a channel axis"),
    ({"axis": (0, 1), "group_size": 2}, ValueError, "every axis"),
    ({"group_axis": 0}, ValueError, "needs group_size"),
    ({"mask": np.ones((8, 6), bool)}, ValueError, "mask of shape"),
    ({"bits": 0}, ValueError, "bits=0"),
])
def test_compute_scale_errors(kwargs, exc, msg):
    kw = {"bits": 8} | kwargs
    with pytest.raises(exc, match=msg):
        compute_scale(W, **kw)


def test_input_errors():
    with pytest.raises(TypeError, match="floating-point"):
        fake_quant(jnp.arange(4), bits=8)
    bad = W.copy()
    bad[1, 2] = np.nan
    for fn in (compute_scale, fake_quant, quantize):
        with pytest.raises(ValueError, match="NaN or Inf \\(1 of 48"):
            fn(bad, bits=8)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        fake_quant(W, bits=8, rounding="stochastic")
    with pytest.raises(ValueError, match="rounding='up' must be one of"):
        fake_quant(W, bits=8, rounding="up")
    with pytest.raises(ValueError, match="ste='none' must be one of"):
        fake_quant(W, bits=8, ste="none")
    with pytest.raises(ValueError, match="scale must be finite and > 0.*floor"):
        fake_quant(W, bits=8, scale=jnp.zeros((1, 8)))
    with pytest.raises(ValueError, match="does not fit x"):
        fake_quant(W, bits=8, scale=jnp.ones((1, 5)))
    with pytest.raises(ValueError, match="drop them"):
        fake_quant(W, bits=8, axis=-1, scale=jnp.ones((1, 8)))
    with pytest.raises(ValueError, match="zero_point must hold integers"):
        fake_quant(W, bits=8, symmetric=False, scale=jnp.ones(()), zero_point=0.5)
    with pytest.raises(ValueError, match="zero_point of shape"):
        fake_quant(W, bits=8, scale=jnp.ones(()), zero_point=jnp.zeros(8))
    with pytest.raises(TypeError, match="scale must be a float"):
        fake_quant(W, bits=8, scale=jnp.ones((), jnp.int32))


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_matches_numpy_per_channel_and_group(symmetric):
    qmin, qmax = quant_range(3, symmetric=symmetric)
    s, z = np_scale(W, 3, (1,), symmetric)
    out = FQ(W, bits=3, axis=-1, symmetric=symmetric)
    np.testing.assert_allclose(out, np_fake_quant(W, s, z, qmin, qmax), rtol=1e-6, atol=1e-7)
    sg, zg = CS(W, bits=3, axis=-1, group_size=3, symmetric=symmetric)
    ref = np_fake_quant(W, np.repeat(np.asarray(sg), 3, 0), np.repeat(np.asarray(zg), 3, 0),
                        qmin, qmax)
    out = FQ(W, bits=3, axis=-1, group_size=3, symmetric=symmetric)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    # a block scale passed back in gives the same thing
    np.testing.assert_array_equal(
        FQ(W, bits=3, symmetric=symmetric, scale=sg, zero_point=zg), out)


_fq_given = jax.jit(functools.partial(fake_quant, bits=4, symmetric=False))


@given(hnp.arrays(np.float32, (16,), elements=st.floats(-50, 50, width=32)),
       st.floats(0.01, 10.0), st.integers(0, 15))
def test_error_at_most_half_a_step(x, s, z):
    """|fake_quant(x) - clip(x)| <= s/2 everywhere, on a given affine grid."""
    out = np.asarray(_fq_given(x, scale=jnp.float32(s), zero_point=jnp.float32(z)))
    s32 = np.float32(s)
    clipped = np.clip(x, (0 - z) * s32, (15 - z) * s32)
    assert np.all(np.abs(out - clipped) <= s32 / 2 * (1 + 1e-5) + 1e-6)
    grid = out / s32 + z  # the outputs lie on the grid
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)


@pytest.mark.parametrize("jit", [False, True])
def test_ste_gradients_w_r_t_x(jit):
    x = jnp.array([-3.0, -1.0, -0.4, 0.3, 1.0, 2.5])
    s = jnp.float32(1.0 / 3)  # 3-bit symmetric range [-3, 3] covers [-1, 1]

    def f(x, ste):
        return jnp.sum(fake_quant(x, bits=3, scale=s, ste=ste) * jnp.arange(1.0, 7.0))

    g = jax.grad(f)
    if jit:
        g = jax.jit(g, static_argnums=1)
    np.testing.assert_allclose(g(x, "clipped"), [0, 2, 3, 4, 5, 0], rtol=1e-6)  # bounds in
    np.testing.assert_allclose(g(x, "identity"), [1, 2, 3, 4, 5, 6], rtol=1e-6)
    if jit:  # the computed-scale path: gradient 1 inside (the scale is a constant)
        gx = jax.jit(jax.grad(lambda x: fake_quant(x, bits=8).sum()))(x)
        np.testing.assert_allclose(gx, np.ones(6), rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_scale_gradient_is_the_lsq_formula(jit):
    x = jnp.array([-2.0, -0.7, 0.1, 0.45, 0.8, 5.0])
    s = jnp.float32(0.3)
    qn, qp = 3, 3

    def f(s):
        return fake_quant(x, bits=3, scale=s).sum()

    g = (jax.jit(jax.grad(f)) if jit else jax.grad(f))(s)
    v = np.asarray(x) / 0.3
    expect = np.where(v <= -qn, -qn, np.where(v >= qp, qp, np.round(v) - v)).sum()
    np.testing.assert_allclose(g, expect, rtol=1e-5)
    if jit:  # clipped values: the loss (-3 + 3 + 3) * s is smooth in s, its slope is exact
        x_out = jnp.array([-2.0, 5.0, 5.0])
        loss = jax.jit(lambda s: fake_quant(x_out, bits=3, scale=s).sum())
        eps = 1e-3
        fd = (loss(s + eps) - loss(s - eps)) / (2 * eps)
        g_out = jax.jit(jax.grad(lambda s: fake_quant(x_out, bits=3, scale=s).sum()))(s)
        np.testing.assert_allclose([g_out, fd], [3.0, 3.0], rtol=1e-3)


def test_helpers_round_clip_ste():
    np.testing.assert_array_equal(round_ste(jnp.array([0.5, 1.5, -0.5])), [0.0, 2.0, -0.0])
    assert float(jax.jit(jax.grad(round_ste))(0.3)) == 1.0
    assert float(jax.grad(clip_ste)(-5.0, -1.0, 1.0)) == 1.0
    assert float(clip_ste(-5.0, -1.0, 1.0)) == -1.0


def test_stochastic_rounding_unbiased():
    n = 4000
    y = jnp.array([0.1, 0.5, 2.75, -1.3])
    d = np.asarray(jax.jit(stochastic_round)(jnp.tile(y, (n, 1)), jax.random.key(1)))
    assert np.all((d == np.floor(y)) | (d == np.ceil(y)))
    se = np.sqrt(0.25 / n)
    assert np.all(np.abs(d.mean(0) - np.asarray(y)) < 5 * se)
    x = jnp.linspace(-0.8, 0.8, 7)
    s = jnp.float32(0.3)
    fq = FQ(jnp.tile(x, (n, 1)), bits=3, scale=s, rounding="stochastic", key=jax.random.key(2))
    np.testing.assert_allclose(np.asarray(fq).mean(0), x, atol=5 * 0.3 * se * 2)
    err_nearest = np.abs(np.asarray(FQ(x, bits=3, scale=s)) - x).max()
    assert err_nearest > 0.05  # off the grid: nearest rounding is biased, stochastic is not
    g = jax.jit(jax.grad(lambda x: fake_quant(x, bits=3, scale=s, rounding="stochastic",
                                              key=jax.random.key(0)).sum()))(x)
    np.testing.assert_allclose(g, np.ones(7), rtol=1e-6)


def test_dtype_and_shape_preserved():
    x = jnp.asarray(W, jnp.bfloat16)
    out = FQ(x, bits=8, axis=-1)
    assert out.dtype == jnp.bfloat16 and out.shape == x.shape
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(x, np.float32),
                               atol=float(np.abs(W).max()) / 127)


@pytest.mark.parametrize("symmetric,group_size,dtype", [
    (True, None, jnp.int8), (False, None, jnp.uint8), (True, 2, jnp.int8)])
def test_quantize_matches_fake_quant(symmetric, group_size, dtype):
    q = QZ(W, bits=5, axis=-1, group_size=group_size, symmetric=symmetric)
    assert isinstance(q, QArray) and q.values.dtype == dtype and q.bits == 5
    np.testing.assert_array_equal(
        dequantize(q),
        FQ(W, bits=5, axis=-1, group_size=group_size, symmetric=symmetric))
    n_scales = 8 if group_size is None else 8 * 3
    z_bits = 8 if symmetric else 8 * n_scales
    assert q.storage_bits() == 48 * 5 + n_scales * 32 + z_bits
    key = jax.random.key(3)
    qs = QZ(W, bits=12, rounding="stochastic", key=key)
    assert qs.values.dtype == jnp.int16
    np.testing.assert_array_equal(
        qs.materialize(), FQ(W, bits=12, rounding="stochastic", key=key))
    with pytest.raises(TypeError, match="expected a QArray"):
        dequantize(W)


def test_expand_scale():
    s = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(expand_scale(s, (4, 2))[:, 1], [2.0, 2.0, 4.0, 4.0])
    assert expand_scale(jnp.float32(2), (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="does not fit"):
        expand_scale(s, (3, 2))
    with pytest.raises(ValueError, match="does not broadcast"):
        QArray(jnp.zeros((3, 2), jnp.int8), s, jnp.int8(0), bits=4)


def test_reduction_plan_and_scale_from_range():
    plan = reduction_plan((6, 8), axis=-1, group_size=3)
    assert plan == ((2, 3, 8), (1,), (2, 8), 0)
    assert reduction_plan((6, 8)).reduce_axes == (0, 1)
    s, z = scale_from_range(jnp.array([-1.0, 0.5, jnp.inf]), jnp.array([3.0, 2.0, -jnp.inf]),
                            bits=2, symmetric=False)
    # the range always contains 0; an empty range gives the floor scale
    np.testing.assert_allclose(s, [4 / 3, 2 / 3, MIN_SCALE], rtol=1e-6)
    assert z.tolist() == [1.0, 0.0, 0.0]
    s, z = scale_from_range(-2.0, 1.0, bits=3)
    assert float(s) == pytest.approx(2 / 3) and float(z) == 0.0
