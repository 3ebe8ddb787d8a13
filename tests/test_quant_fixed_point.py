"""Fixed point after Gupta et al. 2015: saturation, nearest (ties down) and stochastic rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.quant.fixed_point import fixed_point, fixed_point_range


def np_fixed(x, wl, fl):
    eps = 2.0**-fl
    lo, hi = -(2.0 ** (wl - 1)) * eps, (2.0 ** (wl - 1) - 1) * eps
    return np.clip(np.ceil(x / eps - 0.5) * eps, lo, hi)


def test_nearest_matches_the_paper_rule():
    x = np.random.default_rng(0).normal(scale=6, size=256).astype(np.float32)
    x[:4] = [0.03125, -0.03125, 0.09375, 100.0]  # ties (eps/2 multiples) and saturation
    out = jax.jit(lambda x: fixed_point(x, total_bits=8, frac_bits=4))(x)
    np.testing.assert_array_equal(out, np_fixed(x.astype(np.float64), 8, 4).astype(np.float32))
    assert out[:4].tolist() == [0.0, -0.0625, 0.0625, 7.9375]  # ties go down
    assert fixed_point_range(16, 14) == (-2.0, 2.0 - 2**-14, 2**-14)
    assert fixed_point(jnp.float32(0.3), total_bits=4, frac_bits=6).item() == 0.109375  # FL > WL


def test_stochastic_rounding_is_unbiased_and_saturates():
    x = jnp.array([0.01, 0.3, -0.77, 1.6, 5.0])
    n = 4000
    xs = jnp.broadcast_to(x, (n, 5))
    out = np.asarray(jax.jit(lambda x, k: fixed_point(x, total_bits=4, frac_bits=2,
                                                      rounding="stochastic", key=k))(
        xs, jax.random.key(0)))
    eps = 0.25
    lo = np.floor(np.asarray(x) / eps) * eps
    inside = out[:, :4]
    assert np.all((inside == lo[:4]) | (inside == lo[:4] + eps))
    se = eps * 0.5 / np.sqrt(n)
    assert np.all(np.abs(inside.mean(0) - np.asarray(x[:4])) < 5 * se)
    assert np.all(out[:, 4] == 1.75)  # saturates at 2^(IL-1) - eps


@pytest.mark.parametrize("jit", [False, True])
def test_gradients(jit):
    x = jnp.array([-3.0, -0.4, 0.3, 1.9])  # range of <2, 2>: [-2, 1.75]

    def g(ste):
        f = jax.grad(lambda x: jnp.sum(fixed_point(x, total_bits=4, frac_bits=2, ste=ste)))
        return (jax.jit(f) if jit else f)(x)

    np.testing.assert_array_equal(g("clipped"), [0.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(g("identity"), [1.0, 1.0, 1.0, 1.0])


def test_errors_and_dtypes():
    x = jnp.ones(3, jnp.bfloat16)
    assert fixed_point(x, frac_bits=8).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="total_bits=1 is outside \\[2, 32\\]"):
        fixed_point(x, total_bits=1, frac_bits=0)
    with pytest.raises(ValueError, match="frac_bits=-1 is outside"):
        fixed_point(x, frac_bits=-1)
    with pytest.raises(TypeError, match="frac_bits must be an int"):
        fixed_point(x, frac_bits=2.5)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        fixed_point(x, frac_bits=2, rounding="stochastic")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fixed_point(jnp.array([jnp.inf]), frac_bits=2)
    with pytest.raises(TypeError, match="frac_bits"):
        fixed_point(x)  # frac_bits is required
