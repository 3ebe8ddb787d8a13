"""Mixed precision (jaxcomp.quant.ptq.mixed_precision): sensitivities, Hutchinson traces, searches."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jaxcomp.quant.compressors import fake_quantization
from jaxcomp.quant.ptq.mixed_precision import (
    BitSensitivity,
    MixedPrecisionPolicy,
    hessian_sensitivity,
    hessian_trace,
    layer_macs,
    mixed_precision_search,
    quantization_sensitivity,
)
from jaxcomp.quant.uniform import fake_quant
from jaxcomp.select import per_leaf

KEY = jax.random.key(0)


def _params():
    r = np.random.default_rng(0)
    return {"a": {"kernel": jnp.asarray(r.standard_normal((3, 4)), jnp.float32)},
            "b": {"kernel": jnp.asarray(r.standard_normal((4, 2)), jnp.float32),
                  "bias": jnp.zeros(2)}}


C = {"a/kernel": 3.0, "b/kernel": 0.5}


@jax.jit
def _separable(p, t):
    """½ Σ_l c_l ||w_l - t_l||²: Hessian blocks c_l I, no coupling between layers."""
    return sum(0.5 * c * jnp.sum((p[k.split("/")[0]]["kernel"] - t[k.split("/")[0]]["kernel"])
                                 ** 2) for k, c in C.items())


# ----------------------------------------------------------------------------- sensitivity


def test_loss_sensitivity_hand_checked():
    zeros = jax.tree.map(jnp.zeros_like, _params())
    # quantizer that shifts every weight by 2^-b: Δloss = ½ c_l n_l 4^-b at w = t = 0
    sens = quantization_sensitivity(lambda p: _separable(p, zeros), zeros, bits=(4, 2, 3),
                                    quantizer=lambda w, b: w + 2.0 ** -b)
    assert sens.paths == ("a/kernel", "b/kernel") and sens.bits == (2, 3, 4)
    assert sens.sizes == (12, 8) and sens.method == "loss" and sens.baseline == 0.0
    expect = [[0.5 * C[p] * n * 4.0 ** -b for b in (2, 3, 4)] for p, n in
              (("a/kernel", 12), ("b/kernel", 8))]
    np.testing.assert_allclose(sens.values, expect, rtol=1e-5)
    assert sens.row("b/kernel")[2] == pytest.approx(0.5 * 0.5 * 8 / 16)
    assert "a/kernel" in str(sens)


def test_default_quantizer_and_hessian_proxy_agree_at_the_minimum():
    t = _params()
    loss = lambda p: _separable(p, t)
    sens = quantization_sensitivity(loss, t, bits=(2, 4))
    hs = hessian_sensitivity(loss, t, key=KEY, bits=(2, 4), n_samples=2)
    for i, (k, n) in enumerate((("a", 3), ("b", 4))):
        w = np.asarray(t[k]["kernel"], np.float64)
        for j, b in enumerate((2, 4)):  # per-output-channel symmetric grid, written out
            qmax = 2 ** (b - 1) - 1
            s = np.abs(w).max(0, keepdims=True) / qmax
            d = np.clip(np.round(w / s), -qmax, qmax) * s - w
            expect = 0.5 * C[f"{k}/kernel"] * np.sum(d * d)
            assert sens.values[i, j] == pytest.approx(expect, rel=1e-4, abs=1e-7)
            assert hs.values[i, j] == pytest.approx(expect, rel=1e-4, abs=1e-7)
    assert hs.method == "hessian"


def test_hessian_trace_exact_for_scaled_identity_blocks():
    t = _params()
    class Unhashable:  # callables that cannot be cached by identity still work
        __hash__ = None

        def __call__(self, p):
            return _separable(p, t)

    for fn in (lambda p: _separable(p, t), Unhashable()):
        tr = hessian_trace(fn, t, key=KEY, n_samples=3)
        assert tr == pytest.approx({"a/kernel": 3.0 * 12, "b/kernel": 0.5 * 8}, rel=1e-6)


def test_hessian_trace_unbiased_with_coupled_layers():
    p = _params()
    x = jax.random.normal(jax.random.key(1), (16, 3))

    def loss(q):
        h = jnp.tanh(x @ q["a"]["kernel"])
        return jnp.mean((h @ q["b"]["kernel"] + q["b"]["bias"]) ** 2)

    @jax.jit
    def block_traces(p):
        out = {}
        for k in ("a", "b"):
            w = p[k]["kernel"]
            hk = jax.hessian(lambda w, k=k: loss({**p, k: {**p[k], "kernel": w}}))(w)
            out[f"{k}/kernel"] = jnp.trace(hk.reshape(w.size, w.size))
        return out

    exact = {k: float(v) for k, v in block_traces(p).items()}
    # the cross terms make single probes noisy (relative std ≈ 1.5 here); 4000 average out
    est = hessian_trace(loss, p, key=KEY, n_samples=4000)
    for k, v in exact.items():
        assert est[k] == pytest.approx(v, rel=0.1)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3), padding="VALID", name="conv")(x)  # 4x4 positions
        x = x.reshape(x.shape[0], 4, 12)
        shared = nn.Dense(5, name="fc")
        return shared(x[:, :2]) + shared(x[:, 2:])  # called twice, 2 rows each


def test_layer_macs_hand_counted():
    model = _Net()
    x = jnp.ones((2, 6, 6, 2))
    v = jax.jit(model.init)(jax.random.key(0), x)
    macs = layer_macs(model.apply, v, x)
    assert macs == {"conv/kernel": 16 * 3 * 3 * 2 * 3, "fc/kernel": 4 * 12 * 5}
    with pytest.raises(ValueError, match="matches no"):
        layer_macs(model.apply, v, x, where="nothing")


def test_sensitivity_errors():
    p = _params()
    loss = lambda q: jnp.sum(q["a"]["kernel"])
    with pytest.raises(ValueError, match="bits=17"):
        quantization_sensitivity(loss, p, bits=(2, 17))
    with pytest.raises(ValueError, match="bits is empty"):
        quantization_sensitivity(loss, p, bits=())
    with pytest.raises(ValueError, match="matches no|selects nothing"):
        quantization_sensitivity(loss, p, where="nothing")
    diverges = lambda q: jnp.where(jnp.all(q["a"]["kernel"] == p["a"]["kernel"]),
                                   0.0, jnp.nan)
    with pytest.raises(ValueError, match="returned nan with 'a/kernel' at 2 bits"):
        quantization_sensitivity(diverges, p, bits=(2,))
    with pytest.raises(TypeError, match="scalar"):
        quantization_sensitivity(lambda q: q["a"]["kernel"], p)
    with pytest.raises(ValueError, match="macs has no entry"):
        quantization_sensitivity(loss, p, bits=(8,), macs={"a/kernel": 1})
    with pytest.raises(ValueError, match="n_samples"):
        hessian_trace(loss, p, key=KEY, n_samples=0)
    with pytest.raises(ValueError, match="shape"):
        BitSensitivity(("a",), (2, 4), [[1.0]], (3,))
    with pytest.raises(ValueError, match="ascending"):
        BitSensitivity(("a",), (4, 2), [[1.0, 0.0]], (3,))
    with pytest.raises(ValueError, match="NaN"):
        BitSensitivity(("a",), (2,), [[np.nan]], (3,))
    with pytest.raises(ValueError, match="sizes"):
        BitSensitivity(("a",), (2,), [[1.0]], (0,))


# ----------------------------------------------------------------------------- search


def _brute_force(sens, budget_bytes, budget_bops, act_bits=8):
    best = None
    for ch in itertools.product(range(len(sens.bits)), repeat=len(sens.paths)):
        size = sum(n * sens.bits[c] for n, c in zip(sens.sizes, ch))
        bops = sum(m * sens.bits[c] * act_bits for m, c in zip(sens.macs, ch))
        # budgets are met within 1e-9 (a budget computed in floats may miss an integer by ulps)
        if (budget_bytes is not None and size > 8 * budget_bytes + 1e-9) or (
                budget_bops is not None and bops > budget_bops + 1e-9):
            continue
        loss = sum(sens.values[i, c] for i, c in enumerate(ch))
        best = loss if best is None else min(best, loss)
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), kind=st.sampled_from(["bytes", "bops", "both"]),
       frac=st.floats(0.0, 1.0))
@example(seed=0, kind="bops", frac=0.9999999999999999)  # a budget a few ulps below an integer
def test_exact_is_optimal_and_greedy_feasible(seed, kind, frac):
    r = np.random.default_rng(seed)
    bits = (2, 3, 4, 8)
    # decreasing in bits, as sensitivities usually are, but with noise and ties allowed
    values = np.sort(r.exponential(1.0, (3, 4)), axis=1)[:, ::-1] * r.integers(0, 2, (3, 1))
    sens = BitSensitivity(("l0", "l1", "l2"), bits, values, tuple(r.integers(1, 50, 3)),
                          tuple(r.integers(0, 200, 3)))
    lo_s, hi_s = sum(sens.sizes) * 2 / 8, sum(sens.sizes) * 8 / 8
    lo_o, hi_o = sum(sens.macs) * 2 * 8, sum(sens.macs) * 8 * 8
    bb = lo_s + frac * (hi_s - lo_s) if kind in ("bytes", "both") else None
    bo = max(lo_o + frac * (hi_o - lo_o), 1) if kind in ("bops", "both") else None
    best = _brute_force(sens, bb, bo)
    exact = mixed_precision_search(sens, budget_bytes=bb, budget_bops=bo, method="exact")
    greedy = mixed_precision_search(sens, budget_bytes=bb, budget_bops=bo)
    assert exact.loss_increase == pytest.approx(best, abs=1e-9)
    for pol in (exact, greedy):
        assert bb is None or pol.size_bytes <= bb + 1e-9
        assert bo is None or pol.bops <= bo + 1e-9
        assert pol.loss_increase >= best - 1e-9
        assert pol.size_bytes == sum(n * pol.layer_bits[p] for p, n in
                                     zip(sens.paths, sens.sizes)) / 8


def test_greedy_hand_checked_and_refills_leftover_budget():
    # a: costly to narrow; b: cheap. 150 bytes: a keeps 8 bits, b drops to 4.
    s = BitSensitivity(("a", "b"), (2, 4, 8), [[5.0, 1.0, 0.0], [0.2, 0.1, 0.0]], (100, 100))
    pol = mixed_precision_search(s, budget_bytes=150)
    assert pol.layer_bits == {"a": 8, "b": 4} and pol.size_bytes == 150.0
    assert pol.loss_increase == pytest.approx(0.1) and pol.bops is None
    # lowering b to 2 first would leave 25 bytes the refill pass gives back (b: 2 -> 4)
    s2 = BitSensitivity(("a", "b"), (2, 4, 8), [[5.0, 1.0, 0.0], [0.1, 0.1, 0.0]], (100, 100))
    assert mixed_precision_search(s2, budget_bytes=150).layer_bits == {"a": 8, "b": 4}
    assert mixed_precision_search(s, budget_bytes=1e9).layer_bits == {"a": 8, "b": 8}


def test_policy_bits_drive_fake_quantization_and_report(tmp_path):
    p = _params()
    sens = quantization_sensitivity(lambda q: _separable(q, p), p, bits=(4, 8))
    # 16 bytes fit (8, 4) and (4, 8) bits; a has 12 weights and 6x b's weight per error
    pol = mixed_precision_search(sens, budget_bytes=16, method="exact")
    assert isinstance(pol, MixedPrecisionPolicy)
    assert pol.layer_bits == {"a/kernel": 8, "b/kernel": 4}
    assert per_leaf(pol.bits, paths=["a/kernel", "b/kernel"]) == [8, 4]
    comp = fake_quantization(bits=pol.bits, where=r".*/kernel")
    out = jax.jit(comp.apply)(p, comp.init(p))
    for k, b in (("a", 8), ("b", 4)):
        np.testing.assert_array_equal(out[k]["kernel"], fake_quant(p[k]["kernel"], bits=b,
                                                                   axis=-1))
    text = pol.table()
    assert "a/kernel" in text and "size 16.0 bytes" in text and str(pol) == text
    png = pol.plot(tmp_path / "mp.png")
    assert png.stat().st_size > 1000


def test_search_errors():
    s = BitSensitivity(("a", "b"), (2, 8), [[1.0, 0.0], [1.0, 0.0]], (8, 8))
    with pytest.raises(ValueError, match="no assignment fits.*4.0 bytes"):
        mixed_precision_search(s, budget_bytes=3.9)
    with pytest.raises(ValueError, match="budget_bytes= and/or budget_bops="):
        mixed_precision_search(s)
    with pytest.raises(ValueError, match="needs MACs"):
        mixed_precision_search(s, budget_bops=100)
    with pytest.raises(ValueError, match="budget_bytes=-1"):
        mixed_precision_search(s, budget_bytes=-1)
    with pytest.raises(ValueError, match="method"):
        mixed_precision_search(s, budget_bytes=10, method="rl")
    with pytest.raises(TypeError, match="BitSensitivity"):
        mixed_precision_search({"a": 1}, budget_bytes=10)
    many = BitSensitivity(tuple(f"l{i}" for i in range(6)), (2, 3, 4, 5, 6, 8),
                          np.random.default_rng(0).random((6, 6)), tuple(range(7, 13)))
    with pytest.raises(ValueError, match="max_states"):
        mixed_precision_search(many, budget_bytes=40, method="exact", max_states=3)
