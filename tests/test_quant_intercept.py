"""jaxcomp.quant.intercept: activation fake-quantization by module path, linen and nnx."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.models.nnx_models import MLPNNX
from jaxcomp.quant.intercept import (
    ActQuant,
    ActRange,
    ActRanges,
    act_quantized,
    quantize_activations,
    range_scale,
)

RNG = np.random.default_rng(0)
MODEL = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(3)])
X = RNG.normal(size=(8, 4)).astype(np.float32)
X2 = (2.0 * RNG.normal(size=(8, 4))).astype(np.float32)
RULES = {"layers_0": 8, "layers_2": ActQuant(4, outputs=True)}


def np_fq(x, lo, hi, bits, symmetric=False):
    """Fake quantization of ``x`` with the range ``[lo, hi]``, in float64 numpy."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s, z, qmin = max(abs(lo), abs(hi)) / qmax, 0.0, -qmax
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        qmin, qmax = 0, 2 ** bits - 1
        s = (hi - lo) / qmax
        z = np.clip(np.round(-lo / s), qmin, qmax)
    return (np.clip(np.round(x / s + z), qmin, qmax) - z) * s


def np_forward(p, x, ranges=None, rules=RULES):
    """The Sequential model in numpy; activations fake-quantized when ranges are given."""
    k0, b0 = np.asarray(p["layers_0"]["kernel"]), np.asarray(p["layers_0"]["bias"])
    k2, b2 = np.asarray(p["layers_2"]["kernel"]), np.asarray(p["layers_2"]["bias"])
    q = (lambda v, side, path, bits: v) if ranges is None else (
        lambda v, side, path, bits: np_fq(v, *(float(a) for a in getattr(ranges, side)[path]),
                                          bits))
    h = q(np.asarray(x, np.float64), "inputs", "layers_0", 8) @ k0 + b0
    h = np.maximum(h, 0.0)
    out = q(h, "inputs", "layers_2", 4) @ k2 + b2
    return q(out, "outputs", "layers_2", 4), h


@pytest.fixture(scope="module")
def linen():
    v = jax.jit(MODEL.init)(jax.random.key(0), X)
    q = act_quantized(MODEL.apply, RULES, momentum=0.75)
    return v, q, jax.jit(q.calibrate), jax.jit(q.train), jax.jit(q)


def test_calibrate_observes_min_max_of_float_activations(linen):
    v, _, cal, _, _ = linen
    r = cal(v, X)
    out, h = np_forward(v["params"], X)
    assert sorted(r.inputs) == ["layers_0", "layers_2"] and list(r.outputs) == ["layers_2"]
    np.testing.assert_allclose(r.inputs["layers_0"], [X.min(), X.max()], rtol=1e-6)
    np.testing.assert_allclose(r.inputs["layers_2"], [h.min(), h.max()], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.outputs["layers_2"], [out.min(), out.max()], rtol=1e-5,
                               atol=1e-6)
    # more batches merge by min/max
    r2 = cal(v, X2, ranges=r)
    np.testing.assert_allclose(r2.inputs["layers_0"], [min(X.min(), X2.min()),
                                                       max(X.max(), X2.max())], rtol=1e-6)


def test_quantize_matches_numpy_fake_quant_pipeline(linen):
    v, _, cal, _, qjit = linen
    r = cal(v, X)
    want, _ = np_forward(v["params"], X2, r)
    np.testing.assert_allclose(qjit(v, X2, ranges=r), want, rtol=1e-5, atol=1e-5)
    # the same through the context manager, eagerly
    with quantize_activations(RULES, r) as session:
        got = MODEL.apply(v, X2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert session.ranges is r and sorted(session.quantized) == ["layers_0", "layers_2"]


def test_train_is_a_moving_average_and_quantizes_with_the_new_ranges(linen):
    v, _, cal, train, qjit = linen
    r = cal(v, X)
    out, r_new = train(v, X2, ranges=r)
    lo, hi = (float(a) for a in r.inputs["layers_0"])
    np.testing.assert_allclose(r_new.inputs["layers_0"],
                               [0.75 * lo + 0.25 * X2.min(), 0.75 * hi + 0.25 * X2.max()],
                               rtol=1e-6)
    # the pass used exactly the ranges it returns
    np.testing.assert_allclose(out, qjit(v, X2, ranges=r_new), rtol=1e-6, atol=1e-6)
    # without ranges the first observation starts them
    _, r0 = train(v, X2, ranges=None)
    np.testing.assert_allclose(r0.inputs["layers_0"], [X2.min(), X2.max()], rtol=1e-6)


def test_gradient_is_clipped_straight_through_eager_and_jitted(linen):
    v, _, _, _, _ = linen
    r = ActRanges({"layers_0": ActRange(jnp.float32(-1.0), jnp.float32(1.0)),
                   "layers_2": ActRange(jnp.float32(0.0), jnp.float32(50.0))},
                  {"layers_2": ActRange(jnp.float32(-50.0), jnp.float32(50.0))})
    q = act_quantized(MODEL.apply, RULES)
    x = jnp.asarray(X)
    p = {k: {n: np.asarray(a, np.float64) for n, a in d.items()} for k, d in v["params"].items()}
    s, z = 2.0 / 255, 128.0  # the 8-bit range [-1, 1]: codes 0..255 cover [-z s, (255 - z) s]
    inside = (X >= -z * s) & (X <= (255 - z) * s)
    h = np_fq(X.astype(np.float64), -1.0, 1.0, 8) @ p["layers_0"]["kernel"] + p["layers_0"]["bias"]
    # d sum(out) / dx = [relu'(h) * (W2 1)] W0^T inside the input range, 0 outside
    want = (((h > 0) * p["layers_2"]["kernel"].sum(1)) @ p["layers_0"]["kernel"].T) * inside
    assert 0 < inside.mean() < 1

    def f(x):
        return q(v, x, ranges=r).sum()

    for g in (jax.grad(f)(x), jax.jit(jax.grad(f))(x)):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)
    # ranges get no gradient (constants)
    gr = jax.grad(lambda rr: q(v, x, ranges=rr).sum())(r)
    assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree.leaves(gr))


def test_rules_exclude_with_none_and_quantize_symmetric_outputs():
    v = {"params": {"layers_0": {"kernel": jnp.eye(4, 6), "bias": jnp.zeros(6)},
                    "layers_2": {"kernel": jnp.ones((6, 3)), "bias": jnp.zeros(3)}}}
    rules = {"layers_2": None, ".*": ActQuant(3, inputs=False, outputs=True, symmetric=True)}
    with quantize_activations(rules, mode="calibrate") as cal:
        MODEL.apply(v, X)
    assert list(cal.ranges.outputs) == ["layers_0"] and not cal.ranges.inputs
    assert sorted(cal.layers) == ["layers_0", "layers_2"] and list(cal.quantized) == ["layers_0"]
    with quantize_activations(rules, cal.ranges):
        got = MODEL.apply(v, X)
    h = np_fq(np.asarray(X, np.float64) @ np.eye(4, 6), *(float(a) for a in
                                                           cal.ranges.outputs["layers_0"]),
              3, symmetric=True)
    np.testing.assert_allclose(got, np.maximum(h, 0) @ np.ones((6, 3)), rtol=1e-5, atol=1e-6)


def test_range_scale_uses_compute_scale_conventions():
    s, z = range_scale(ActRange(jnp.float32(0.5), jnp.float32(2.5)), bits=8)
    assert float(s) == pytest.approx(2.5 / 255) and float(z) == 0.0  # widened to contain 0
    s, z = range_scale(ActRange(jnp.float32(-3.0), jnp.float32(1.0)), bits=8, symmetric=True)
    assert float(s) == pytest.approx(3.0 / 127) and float(z) == 0.0


def test_nnx_module_wrapper_context_and_nnx_jit():
    model = MLPNNX((4, 6, 3), rngs=nnx.Rngs(0))
    rules = {"fc1": 8, "fc2": ActQuant(4, outputs=True)}
    p = {"layers_0": {"kernel": model.fc1.kernel[...], "bias": model.fc1.bias[...]},
         "layers_2": {"kernel": model.fc2.kernel[...], "bias": model.fc2.bias[...]}}
    original = nnx.Linear.__call__
    q = act_quantized(model, rules)
    r = q.calibrate(jnp.asarray(X))
    assert sorted(r.inputs) == ["fc1", "fc2"] and nnx.Linear.__call__ is original
    names = {"fc1": "layers_0", "fc2": "layers_2"}
    rl = ActRanges({names[k]: a for k, a in r.inputs.items()},
                   {names[k]: a for k, a in r.outputs.items()})
    want, _ = np_forward(p, X2, rl)
    np.testing.assert_allclose(q(jnp.asarray(X2), ranges=r), want, rtol=1e-5, atol=1e-5)
    # under nnx.jit: the wrapper takes the module the transform hands in
    qf = act_quantized(lambda m, x: m(x), rules)
    step = nnx.jit(lambda m, x, rr: qf.train(m, x, ranges=rr))
    out, r2 = step(model, jnp.asarray(X2), r)
    np.testing.assert_allclose(out, q(jnp.asarray(X2), ranges=r2), rtol=1e-6, atol=1e-6)
    # another instance of nnx.Linear is untouched while the block runs
    other = nnx.Linear(4, 2, rngs=nnx.Rngs(1))
    with quantize_activations(rules, r, module=model):
        np.testing.assert_array_equal(other(jnp.asarray(X)), jnp.asarray(X) @ other.kernel[...]
                                      + other.bias[...])
        model(jnp.asarray(X))
    assert nnx.Linear.__call__ is original


def test_errors_name_the_problem(linen):
    v, q, cal, _, _ = linen
    r = cal(v, X)
    with pytest.raises(ValueError, match=r"(?s)rules pattern 'Dense_.\*' matches no layer path.*layers_0"):
        act_quantized(MODEL.apply, {"Dense_.*": 8})(v, X, ranges=r)
    with pytest.raises(ValueError, match=r"no inputs range for layer 'layers_2'"):
        q(v, X, ranges=r._replace(inputs={"layers_0": r.inputs["layers_0"]}))
    with pytest.raises(ValueError, match="mode='quantize' needs ranges"), quantize_activations(RULES):
        pass
    with pytest.raises(ValueError, match=r"rules\['layers_0'\]=0 is outside \[1, 16\]"):
        act_quantized(MODEL.apply, {"layers_0": 0})
    with pytest.raises(ValueError, match="bits=1 with symmetric=True"):
        act_quantized(MODEL.apply, {"layers_0": ActQuant(1, symmetric=True)})
    with pytest.raises(ValueError, match="quantizes nothing"):
        act_quantized(MODEL.apply, {"layers_0": ActQuant(8, inputs=False)})
    with pytest.raises(TypeError, match="expected a bit width"):
        act_quantized(MODEL.apply, {"layers_0": "8"})
    with pytest.raises(ValueError, match=r"momentum=1.0 must be a float in \[0, 1\)"):
        act_quantized(MODEL.apply, RULES, momentum=1.0)
    with pytest.raises(ValueError, match="mode='eval' must be one of"), quantize_activations(RULES, r, mode="eval"):
        pass
    with pytest.raises(TypeError, match="ranges must be an ActRanges"):
        q(v, X, ranges={"layers_0": (0.0, 1.0)})
    with pytest.raises(TypeError, match="module must be an nnx.Module"), quantize_activations(RULES, r, module=MODEL):
        pass
    with pytest.raises(TypeError, match="types must be a class"), quantize_activations(RULES, r, types=["Dense"]):
        pass
    with pytest.raises(ValueError, match="no layer of the selected types"), quantize_activations(RULES, r):
        pass
    with pytest.raises(TypeError, match="fn must be a linen apply function"):
        act_quantized(3, RULES)
    emb = nn.Embed(5, 3)
    ve = emb.init(jax.random.key(0), jnp.arange(3))
    with pytest.raises(TypeError, match="input of layer '' is .* not a float array"):
        act_quantized(emb.apply, 8, types=nn.Embed).calibrate(ve, jnp.arange(3))
