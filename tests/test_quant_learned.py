"""LSQ (step gradient vs the paper's formula, LsqArray, training) and PACT."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp as jc
from jaxcomp.quant.compressors import lsq_params, lsq_quantization
from jaxcomp.quant.learned import (
    PACT,
    LsqArray,
    lsq_fake_quant,
    lsq_grad_scale,
    lsq_init_step,
    pact,
)
from jaxcomp.quant.uniform import fake_quant

RNG = np.random.default_rng(0)
V = RNG.normal(size=(6, 4)).astype(np.float32)
C = RNG.normal(size=(6, 4)).astype(np.float32)  # upstream gradient dL/dv̂


def lsq_step_grad(v, s, c, qn, qp, g):
    """Esser et al. eq. 3 times the gradient scale, summed against the upstream gradient."""
    r = v / s
    d = np.where(r <= -qn, -qn, np.where(r >= qp, qp, -r + np.round(r)))
    return g * np.sum(c * d, axis=0, keepdims=True)


@pytest.mark.parametrize("jit,symmetric", [(False, True), (True, True), (True, False)])
def test_step_gradient_is_the_paper_formula(jit, symmetric):
    bits = 3
    qn, qp = (3, 3) if symmetric else (0, 7)
    s = np.array([[0.3, 0.5, 0.2, 0.8]], np.float32)  # per output channel
    v = V if symmetric else np.abs(V)

    def loss(v, s):
        return jnp.sum(lsq_fake_quant(v, s, bits=bits, symmetric=symmetric) * C)

    grad = jax.grad(loss, argnums=(0, 1))
    gv, gs = (jax.jit(grad) if jit else grad)(v, s)
    g = 1 / math.sqrt(6 * qp)  # N = 6 weights per step
    np.testing.assert_allclose(gs, lsq_step_grad(v, s, C, qn, qp, g), rtol=1e-5, atol=1e-6)
    r = v / s
    np.testing.assert_allclose(gv, np.where((r >= -qn) & (r <= qp), C, 0.0), rtol=1e-5)
    # forward: round(clip(v/s, -Qn, Qp)) * s
    out = jax.jit(lambda v, s: lsq_fake_quant(v, s, bits=bits, symmetric=symmetric))(v, s)
    np.testing.assert_allclose(out, np.round(np.clip(r, -qn, qp)) * s, rtol=1e-6, atol=1e-7)


def test_grad_scale_and_init_step():
    assert lsq_grad_scale(64, bits=4) == pytest.approx(1 / math.sqrt(64 * 7))
    assert lsq_grad_scale(64, bits=4, symmetric=False) == pytest.approx(1 / math.sqrt(64 * 15))
    with pytest.raises(ValueError, match="n=0"):
        lsq_grad_scale(0, bits=4)
    s = jax.jit(lambda v: lsq_init_step(v, bits=4, axis=-1))(V)
    np.testing.assert_allclose(s, 2 * np.abs(V).mean(0, keepdims=True) / math.sqrt(7),
                               rtol=1e-6)
    assert lsq_init_step(V, bits=8).shape == (1, 1)
    # an explicit gradient scale multiplies the step gradient
    g1, g2 = (jax.jit(jax.grad(lambda s, gs=gs: lsq_fake_quant(V, s, bits=3, grad_scale=gs).sum()))(
        0.3) for gs in (1.0, 0.5))
    assert float(g2) == pytest.approx(0.5 * float(g1), rel=1e-5)


def test_lsq_array_leaf():
    leaf = LsqArray(jnp.asarray(V), jnp.full((1, 4), 0.25), bits=4)
    np.testing.assert_array_equal(leaf.materialize(),
                                  fake_quant(V, bits=4, scale=jnp.full((1, 4), 0.25)))
    assert leaf.storage_bits() == 24 * 4 + 4 * 32 and leaf.weight_bits == 4
    assert leaf.shape == (6, 4) and leaf.dtype == np.float32
    q = leaf.to_qarray()
    np.testing.assert_array_equal(q.materialize(), leaf.materialize())
    assert q.bits == 4 and q.values.dtype == jnp.int8
    with pytest.raises(ValueError, match="symmetric=True leaves only the code 0"):
        LsqArray(jnp.asarray(V), jnp.float32(1), bits=1)
    with pytest.raises(TypeError, match="float array"):
        LsqArray(jnp.ones((2, 2), jnp.int32), jnp.float32(1))
    with pytest.raises(ValueError, match="does not fit the weight"):
        LsqArray(jnp.asarray(V), jnp.ones((1, 3)))


def test_lsq_training_learns_steps():
    """A few SGD steps on weights and steps through lsq_quantization: both move, loss drops."""
    x = jnp.asarray(RNG.normal(size=(32, 6)), jnp.float32)
    target = x @ jnp.asarray(RNG.normal(size=(6, 4)), jnp.float32)
    params = lsq_params({"dense": {"kernel": jnp.asarray(V), "bias": jnp.zeros(4)}}, bits=3)
    comp = lsq_quantization(3)
    cstate = comp.init(params)
    assert cstate.__jaxcomp_info__()["dense/kernel"].weight_bits == 3
    tx = optax.chain(optax.sgd(0.05), jc.keep_compressed(comp))
    opt = tx.init(params)

    def loss(p):
        v = comp.apply(p, cstate)
        return jnp.mean((x @ v["dense"]["kernel"] + v["dense"]["bias"] - target) ** 2)

    @jax.jit
    def step(p, o):
        lv, g = jax.value_and_grad(loss)(p)
        u, o = tx.update(g, o, p, compressor_state=cstate)
        return optax.apply_updates(p, u), o, lv

    s0 = params["dense"]["kernel"].step
    losses = []
    for _ in range(15):
        params, opt, lv = step(params, opt)
        losses.append(float(lv))
    assert losses[-1] < 0.7 * losses[0]
    assert isinstance(params["dense"]["kernel"], LsqArray)
    assert not np.allclose(params["dense"]["kernel"].step, s0)
    # project keeps learned steps positive
    neg = jax.tree.map(lambda a: a, params)
    neg["dense"]["kernel"] = LsqArray(neg["dense"]["kernel"].weight, -jnp.ones((1, 4)), bits=3)
    assert float(comp.project(neg, cstate)["dense"]["kernel"].step.min()) > 0


def test_lsq_quantization_on_plain_arrays_uses_the_init_step():
    comp = lsq_quantization({r"a": 4, r".*": 8})
    params = {"a": jnp.asarray(V), "b": jnp.asarray(C), "bias": jnp.ones(3)}
    st = comp.init(params)
    out = comp.apply(params, st)
    s = lsq_init_step(V, bits=4, axis=-1)
    np.testing.assert_array_equal(out["a"], fake_quant(V, bits=4, scale=s))
    assert out["bias"] is params["bias"]
    assert {p: i.weight_bits for p, i in jc.compression_info(st).items()} == {"a": 4, "b": 8}
    with pytest.raises(ValueError, match="bits=0"):
        lsq_quantization(0)


@pytest.mark.parametrize("jit", [False, True])
def test_pact_forward_and_gradients(jit):
    x = jnp.array([-1.0, 0.2, 0.9, 2.0, 3.0, 5.0])
    alpha = jnp.float32(3.0)
    up = jnp.arange(1.0, 7.0)

    def f(x, a):
        return jnp.sum(pact(x, a, bits=2) * up)

    fn = jax.grad(f, argnums=(0, 1))
    gx, ga = (jax.jit(fn) if jit else fn)(x, alpha)
    # y = clip(x, 0, 3), quantized to {0, 1, 2, 3}
    np.testing.assert_allclose(pact(x, alpha, bits=2), [0, 0, 1, 2, 3, 3])
    np.testing.assert_allclose(ga, 5 + 6)  # dy_q/dα = 1 where x >= α (x = 3 and 5)
    np.testing.assert_allclose(gx, [0, 2, 3, 4, 0, 0])  # STE on (0, α)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        pact(x, 0.0, bits=2)
    with pytest.raises(ValueError, match="bits=0"):
        pact(x, 1.0, bits=0)


def test_pact_module_per_channel():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return PACT(bits=3, alpha_init=1.0, per_channel=True)(nn.Dense(2)(x))

    net = Net()
    v = jax.jit(net.init)(jax.random.key(0), jnp.ones((1, 3)))
    assert v["params"]["PACT_0"]["alpha"].shape == (2,)
    g = jax.jit(jax.grad(lambda v: net.apply(v, 10 * jnp.ones((4, 3))).sum()))(v)
    assert g["params"]["PACT_0"]["alpha"].shape == (2,)
