"""jaxcomp.quant.integer.ops / integer_model: int8 kernels, fixed-point requantization, export."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcomp import data
from jaxcomp.quant.integer.model import IntegerModel, act_codes, export_integer
from jaxcomp.quant.integer.ops import (
    fold_batchnorm,
    int_conv,
    int_dense,
    multiply_by_multiplier,
    quantize_multiplier,
    requantize,
)
from jaxcomp.quant.intercept import ActQuant, ActRange, ActRanges, act_quantized
from jaxcomp.quant.uniform import fake_quant, quantize

RNG = np.random.default_rng(0)
I32 = np.iinfo(np.int32)


def brute(acc, m0, shift):
    """round(acc * m0 / 2^(31 + shift)), half away from zero, saturated: Python integers."""
    out = []
    for a, m, n in zip(*(np.broadcast_arrays(acc, m0, shift))):
        s = 31 + int(n)
        mag = (abs(int(a)) * int(m) + (1 << (s - 1))) >> s
        out.append(int(np.sign(a)) * min(mag, I32.max))
    return np.array(out, np.int64)


# ----------------------------------------------------------------------------- multiplier


def test_quantize_multiplier_normalizes_and_errors():
    m = np.array([0.75, 1e-3, 0.3, 5.0, 1.0 - 2.0 ** -40, 2.0 ** -31, 0.0, 1e-12])
    m0, n = (np.asarray(a, np.int64) for a in quantize_multiplier(m))
    live = m0 > 0
    assert np.all((m0[live] >= 2 ** 30) & (m0[live] < 2 ** 31))
    back = m0 * 2.0 ** (-31 - n)
    np.testing.assert_allclose(back[live], m[live], rtol=2.0 ** -31)
    assert (m0[4], n[4]) == (2 ** 30, -1)  # rounding carried to 2^31: halved, shift bumped
    assert list(m0[6:]) == [0, 0] and list(n[6:]) == [0, 0]  # zero and below 2^-32
    with pytest.raises(ValueError, match=r"finite and in \[0, 2\^30\), got \[-0.5\]"):
        quantize_multiplier([0.25, -0.5])
    with pytest.raises(ValueError, match="finite"):
        quantize_multiplier(np.nan)
    with pytest.raises(ValueError, match="finite"):
        quantize_multiplier(2.0 ** 30)
    with pytest.raises(TypeError, match="must be concrete"):
        jax.jit(quantize_multiplier)(0.5)


EDGE_ACC = np.array([0, 1, -1, 2, -2, 3, -3, I32.max, I32.min, I32.min + 1, 12345, -12345,
                     2 ** 30, -(2 ** 30), 77, -77], np.int32)


def test_multiply_matches_brute_force_and_float_reference():
    acc = np.concatenate([EDGE_ACC, RNG.integers(I32.min, I32.max, 48, dtype=np.int64)
                          .astype(np.int32)])
    m0 = RNG.integers(2 ** 30, 2 ** 31, acc.size)
    shift = RNG.integers(-30, 32, acc.size)
    m0[:4], shift[:4] = 2 ** 30, [-30, 31, 0, 1]  # extremes of the shift
    got = np.asarray(multiply_by_multiplier(jnp.asarray(acc), jnp.asarray(m0, jnp.int32),
                                            jnp.asarray(shift, jnp.int32)))
    np.testing.assert_array_equal(got, brute(acc, m0, shift))
    # float reference: within half a unit of acc * M (when not saturated)
    m = m0 * 2.0 ** (-31 - shift)
    exact = acc.astype(np.float64) * m
    ok = np.abs(exact) < I32.max - 1
    assert np.all(np.abs(got[ok] - exact[ok]) <= 0.5 + 1e-6 * np.abs(exact[ok]))
    assert np.all(np.abs(got[~ok]) == I32.max)
    # ties round away from zero: 3 * 0.5 = 1.5 -> 2, -1.5 -> -2
    m0h, nh = quantize_multiplier(0.5)
    assert multiply_by_multiplier(jnp.array([3, -3, 5]), m0h, nh).tolist() == [2, -2, 3]


@given(st.lists(st.integers(I32.min, I32.max), min_size=8, max_size=8),
       st.integers(0, 2 ** 31 - 1), st.integers(-30, 31))
def test_multiply_property_jitted(acc, m0, shift):
    f = jax.jit(multiply_by_multiplier)  # traced m0/shift: the kernel itself
    got = f(jnp.asarray(acc, jnp.int32), jnp.int32(m0), jnp.int32(shift))
    np.testing.assert_array_equal(np.asarray(got), brute(np.array(acc), m0, shift))


def test_multiply_and_requantize_errors_and_clamps():
    with pytest.raises(ValueError, match=r"shift must lie in \[-30, 31\]"):
        multiply_by_multiplier(jnp.int32(1), jnp.int32(2 ** 30), jnp.int32(32))
    with pytest.raises(ValueError, match=r"m0 must lie in"):
        multiply_by_multiplier(jnp.int32(1), jnp.int32(-1), jnp.int32(0))
    with pytest.raises(TypeError, match="acc must be an integer array"):
        multiply_by_multiplier(jnp.float32(1), jnp.int32(1), jnp.int32(0))
    m0, n = quantize_multiplier(np.array([0.5, 2.0]))
    acc = jnp.array([[-300, -300], [7, 7], [1000, 1000]], jnp.int32)
    np.testing.assert_array_equal(requantize(acc, m0, n, 5),
                                  [[-128, -128], [9, 19], [127, 127]])
    np.testing.assert_array_equal(requantize(acc, m0, n, 5, relu=True),
                                  [[5, 5], [9, 19], [127, 127]])
    with pytest.raises(ValueError, match="qmin=3 must be below qmax=3"):
        requantize(acc, m0, n, 0, qmin=3, qmax=3)


# ----------------------------------------------------------------------------- kernels


def test_int_dense_and_conv_match_exact_integer_references():
    x = RNG.integers(-128, 128, (3, 20)).astype(np.int8)
    w = RNG.integers(-127, 128, (20, 5)).astype(np.int8)
    b = RNG.integers(-1000, 1000, 5).astype(np.int32)
    np.testing.assert_array_equal(int_dense(x, w, b), x.astype(np.int64) @ w + b)
    np.testing.assert_array_equal(int_dense(x[:, :9], w[:9]), x[:, :9].astype(np.int64) @ w[:9])
    xc = RNG.integers(-128, 128, (2, 7, 6, 3)).astype(np.int8)
    wc = RNG.integers(-127, 128, (3, 3, 3, 4)).astype(np.int8)
    got = int_conv(xc, wc, b[:4], strides=(2, 1), padding=[(1, 1), (2, 0)], zero_point=-7)
    got_conv = int_conv(xc, wc, b[:4], strides=(2, 1), padding=[(1, 1), (2, 0)], zero_point=-7,
                        method="conv")
    padded = np.pad(xc.astype(np.int64), [(0, 0), (1, 1), (2, 0), (0, 0)], constant_values=-7)
    ref = np.zeros((2, 4, 6, 4), np.int64)
    for i in range(4):
        for j in range(6):
            patch = padded[:, 2 * i:2 * i + 3, j:j + 3, :]
            ref[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, wc.astype(np.int64))
    np.testing.assert_array_equal(got, ref + b[:4])
    np.testing.assert_array_equal(got_conv, ref + b[:4])
    # dilation: both methods agree (a 2-dilated 2x2 window)
    wd = wc[:2, :2]
    np.testing.assert_array_equal(int_conv(xc, wd, dilation=(2, 2)),
                                  int_conv(xc, wd, dilation=(2, 2), method="conv"))
    with pytest.raises(TypeError, match="x must be int8 codes"):
        int_dense(x.astype(np.int32), w)
    with pytest.raises(ValueError, match="do not contract"):
        int_dense(x, w[:5])
    with pytest.raises(TypeError, match=r"bias must be int32 of shape \(5,\)"):
        int_dense(x, w, b.astype(np.float32))
    with pytest.raises(ValueError, match="has 3 channels, the kernel expects 2"):
        int_conv(xc, wc[:, :, :2])
    with pytest.raises(ValueError, match="method='fft' must be"):
        int_conv(xc, wc, method="fft")


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_fold_batchnorm_equals_bn_after_the_layer(kind):
    o = 4
    x = RNG.normal(size=(3, 6, 6, 2) if kind == "conv" else (3, 5)).astype(np.float32)
    k = RNG.normal(size=(3, 3, 2, o) if kind == "conv" else (5, o)).astype(np.float32)
    b = RNG.normal(size=o).astype(np.float32)
    stats = {"mean": RNG.normal(size=o), "var": RNG.uniform(0.5, 2.0, o)}
    bn_p = {"scale": RNG.normal(size=o), "bias": RNG.normal(size=o)}

    def layer(kk, bb):
        if kind == "dense":
            return x @ kk + bb
        return jax.lax.conv_general_dilated(x, kk, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + bb

    bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3)
    want = bn.apply({"params": bn_p, "batch_stats": stats}, layer(k, b))
    kf, bf = fold_batchnorm(k, b, mean=stats["mean"], var=stats["var"], scale=bn_p["scale"],
                            offset=bn_p["bias"], epsilon=1e-3)
    np.testing.assert_allclose(layer(kf, bf), want, rtol=1e-4, atol=1e-4)
    assert kf.dtype == k.dtype
    _, b0 = fold_batchnorm(k, None, mean=np.zeros(o), var=np.ones(o), epsilon=0.0)
    np.testing.assert_array_equal(b0, np.zeros(o))
    with pytest.raises(ValueError, match=r"mean of shape \(3,\) must be \(4,\)"):
        fold_batchnorm(k, b, mean=np.zeros(3), var=np.ones(o))


def test_act_codes_are_the_uniform_quantizer_codes_shifted():
    x = RNG.normal(size=50).astype(np.float32) * 3
    s, z = jnp.float32(0.02), 100.0
    codes = quantize(jnp.asarray(x), bits=8, symmetric=False, scale=s, zero_point=jnp.float32(z))
    np.testing.assert_array_equal(np.asarray(act_codes(x, s, int(z) - 128), np.int64) + 128,
                                  np.asarray(codes.values, np.int64))


# ----------------------------------------------------------------------------- export


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="VALID")(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


CNN_PROGRAM = ["Conv_0", "relu", "max_pool:2", "Conv_1", "relu", "flatten", "Dense_0"]
MLP = nn.Sequential([nn.Dense(24), nn.relu, nn.Dense(10)])
MLP_RULES = {"layers_0": 8, "layers_2": ActQuant(8, outputs=True)}


def weights_fq(params):
    return jax.tree_util.tree_map_with_path(
        lambda kp, a: fake_quant(a, bits=8, axis=-1) if kp[-1].key == "kernel" else a, params)


def fq_model(q):
    """The fake-quant model (weights and activations), jitted."""
    return jax.jit(lambda p, x, r: q({"params": weights_fq(p)}, x, ranges=r))


@pytest.fixture(scope="module")
def mnist():
    ds = data.load("mnist5k")
    return ds.x_train[:64], ds.y_train[:64], ds.x_test[:32]


@pytest.fixture(scope="module")
def trained_mlp(mnist):
    """Ranges on real digits: calibration, then moving-average passes of the fake-quant model."""
    x = mnist[0]
    q = act_quantized(MLP.apply, MLP_RULES, momentum=0.5)
    p = MLP.init(jax.random.key(0), x[:1])["params"]
    train = jax.jit(lambda p, xb, r: q.train({"params": weights_fq(p)}, xb, ranges=r)[1])
    r = q.calibrate({"params": p}, x[:32])
    for i in range(2):
        r = train(p, x[32 * i:32 * (i + 1)], r)
    im = export_integer(MLP.apply, {"params": p}, r, ["layers_0", "relu", "layers_2"], x[:1])
    return p, r, q, im


def within_one_step(im, fq_out, x):
    got = jax.jit(lambda m, a: m(a))(im, x)
    steps = np.abs(np.asarray(got) - np.asarray(fq_out)) / float(im.output_scale)
    assert steps.max() <= 1.0 + 1e-4
    return steps


def test_integer_mlp_matches_fake_quant_within_one_step(trained_mlp, mnist):
    p, r, q, im = trained_mlp
    xt = mnist[2]
    steps = within_one_step(im, fq_model(q)(p, xt, r), xt)
    assert np.mean(steps < 1e-3) > 0.9  # almost every output is the same code
    layer = im.layers["layers_0"]
    assert layer.kernel.values.dtype == jnp.int8 and layer.bias.dtype == jnp.int32
    assert layer.relu and not im.layers["layers_2"].relu
    np.testing.assert_array_equal(layer.kernel.values,
                                  quantize(p["layers_0"]["kernel"], bits=8, axis=-1).values)
    # integer-only inside: codes in, codes out
    codes = im.codes(im.quantize_input(xt))
    assert codes.dtype == jnp.int8
    with pytest.raises(TypeError, match="inputs must be int8 codes"):
        im.codes(xt)


def test_integer_cnn_with_folded_batchnorm_matches_fake_quant(mnist):
    x = mnist[0].reshape(-1, 28, 28, 1)
    xt = mnist[2].reshape(-1, 28, 28, 1)
    v = CNN().init(jax.random.key(1), x[:1])
    # a BN after Conv_0 (statistics from the batch), folded into it
    h = jax.lax.conv_general_dilated(x, v["params"]["Conv_0"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    k, b = fold_batchnorm(v["params"]["Conv_0"]["kernel"], v["params"]["Conv_0"]["bias"],
                          mean=h.mean((0, 1, 2)), var=h.var((0, 1, 2)), scale=jnp.full(4, 0.5))
    params = {**v["params"], "Conv_0": {"kernel": k, "bias": b}}
    rules = {"Conv_.*": 8, "Dense_0": ActQuant(8, outputs=True)}
    q = act_quantized(CNN().apply, rules)
    r = jax.jit(lambda p, x: q.calibrate({"params": weights_fq(p)}, x))(params, x)
    im = export_integer(CNN().apply, {"params": params}, r, CNN_PROGRAM, x[:1])
    assert im.layers["Conv_0"].padding == ((1, 1), (1, 1))
    assert im.layers["Conv_1"].padding == ((0, 0), (0, 0)) and im.layers["Conv_1"].strides == (2, 2)
    within_one_step(im, fq_model(q)(params, xt, r), xt)


def test_integer_model_orbax_round_trip(trained_mlp, mnist, tmp_path):
    from jaxcomp.train import restore_checkpoint, save_checkpoint

    im = trained_mlp[3]
    save_checkpoint(tmp_path, im, step=0)
    back = restore_checkpoint(tmp_path, jax.tree.map(jnp.zeros_like, im), step=0)
    assert isinstance(back, IntegerModel) and back.program == im.program
    for a, b in zip(jax.tree.leaves(im), jax.tree.leaves(back), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back(mnist[2]), im(mnist[2]))


def test_export_errors_name_the_problem(trained_mlp, mnist):
    p, r, _, _ = trained_mlp
    v, x = {"params": p}, mnist[0][:1]

    def export(program=("layers_0", "relu", "layers_2"), ranges=r, **kw):
        return export_integer(MLP.apply, v, ranges, list(program), x, **kw)

    with pytest.raises(ValueError, match="program leaves out: \\['layers_2'\\]"):
        export(["layers_0", "relu"])
    with pytest.raises(ValueError, match=r"(?s)program\[1\]='rleu' is neither.*layers_0"):
        export(["layers_0", "rleu", "layers_2"])
    with pytest.raises(ValueError, match="'relu' must follow a layer"):
        export(["relu", "layers_0", "layers_2"])
    with pytest.raises(ValueError, match="in the order"):
        export(["layers_2", "layers_0"])
    with pytest.raises(ValueError, match="appears twice"):
        export(["layers_0", "layers_0", "layers_2"])
    with pytest.raises(TypeError, match="program must be a non-empty list"):
        export_integer(MLP.apply, v, r, "layers_0", x)
    with pytest.raises(ValueError, match="no output range for the last layer 'layers_2'"):
        export(ranges=r._replace(outputs={}))
    with pytest.raises(ValueError, match="no input range for layer 'layers_2'"):
        export(ranges=r._replace(inputs={"layers_0": r.inputs["layers_0"]}))
    hidden = {**r.outputs, "layers_0": ActRange(jnp.float32(0), jnp.float32(1))}
    with pytest.raises(ValueError, match=r"hidden layers \['layers_0'\] have output ranges"):
        export(ranges=ActRanges(r.inputs, hidden))
    with pytest.raises(ValueError, match=r"weight_bits=9 is outside \[2, 8\]"):
        export(weight_bits=9)
    with pytest.raises(TypeError, match="ranges must be an ActRanges"):
        export(ranges={})
    bad = {"params": {**p, "layers_0": {**p["layers_0"],
                                         "kernel": p["layers_0"]["kernel"].at[0, 0].set(jnp.nan)}}}
    with pytest.raises(ValueError, match="kernel of layer 'layers_0' holds NaN"):
        export_integer(MLP.apply, bad, r, ["layers_0", "relu", "layers_2"], x)
