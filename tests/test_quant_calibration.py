"""Calibration methods (oracles: numpy percentiles, brute-force MSE search) and EMA ranges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.quant.calibration import (
    EmaRange,
    calibrate,
    calibration_range,
    check_method,
    ema_range_init,
    ema_range_update,
    mse_ratio,
)
from jaxcomp.quant.uniform import compute_scale

X = np.random.default_rng(1).laplace(size=(40, 3)).astype(np.float32)
_STATIC = ("method", "bits", "axis", "group_size", "group_axis", "symmetric", "n_grid")
RANGE = jax.jit(calibration_range, static_argnames=_STATIC)
CAL = jax.jit(calibrate, static_argnames=_STATIC)
MSE_RATIO = jax.jit(mse_ratio, static_argnames=("bits", "axis", "symmetric", "n_grid"))
MASK = np.random.default_rng(2).random((40, 3)) > 0.3


def np_mse_ratio(x, bits, symmetric, n_grid, mask=None):
    """Brute force: every ratio k/n_grid, the masked quantization error of each column."""
    m = np.ones_like(x, bool) if mask is None else mask
    out = []
    for c in range(x.shape[1]):
        v = x[m[:, c], c].astype(np.float64)
        best, best_r = np.inf, None
        for k in range(1, n_grid + 1):
            r = k / n_grid
            if symmetric:
                qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
                s, z = np.abs(v).max() * r / qmax, 0.0
            else:
                qmin, qmax = 0, 2**bits - 1
                lo, hi = min(v.min() * r, 0.0), max(v.max() * r, 0.0)
                s = (hi - lo) / qmax
                z = np.clip(np.round(-lo / s), qmin, qmax)
            e = np.sum(((np.clip(np.round(v / s + z), qmin, qmax) - z) * s - v) ** 2)
            if e < best * (1 - 1e-6):
                best, best_r = e, r
        out.append(best_r)
    return np.array(out)


@pytest.mark.parametrize("symmetric,use_mask", [(True, True), (False, False)])
def test_mse_matches_brute_force(symmetric, use_mask):
    mask = MASK if use_mask else None
    r = MSE_RATIO(X, bits=3, axis=-1, symmetric=symmetric, mask=mask, n_grid=25)
    np.testing.assert_allclose(r[0], np_mse_ratio(X, 3, symmetric, 25, mask), rtol=1e-6)
    assert np.any(np.asarray(r) < 1.0)  # heavy tails: clipping pays off at 3 bits
    lo, hi = RANGE(X, method="mse", bits=3, axis=-1, symmetric=symmetric,
                               mask=mask, n_grid=25)
    lo0, hi0 = RANGE(X, method="absmax" if symmetric else "minmax", axis=-1,
                                 mask=mask)
    np.testing.assert_allclose(hi, hi0 * r, rtol=1e-6)
    np.testing.assert_allclose(lo, lo0 * r, rtol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_matches_numpy(symmetric):
    lo, hi = RANGE(X, method="percentile", percentile=90.0, axis=-1,
                               symmetric=symmetric)
    if symmetric:
        e = np.percentile(np.abs(X), 90.0, axis=0)
        np.testing.assert_allclose(hi[0], e, rtol=1e-5)
        np.testing.assert_allclose(lo[0], -e, rtol=1e-5)
    else:
        np.testing.assert_allclose(hi[0], np.percentile(X, 90.0, axis=0), rtol=1e-5)
        np.testing.assert_allclose(lo[0], np.percentile(X, 10.0, axis=0), rtol=1e-5)
    # masked: the statistics of the survivors only
    lo, hi = RANGE(X, method="percentile", percentile=90.0, axis=-1, mask=MASK)
    e = np.nanpercentile(np.where(MASK, np.abs(X), np.nan), 90.0, axis=0)
    np.testing.assert_allclose(hi[0], e, rtol=1e-5)


def test_calibrate_agrees_with_compute_scale_and_groups():
    for sym, method in ((True, "absmax"), (False, "minmax")):
        a = CAL(X, bits=4, method=method, axis=-1, symmetric=sym, mask=MASK)
        b = jax.jit(compute_scale, static_argnames=("bits", "axis", "symmetric"))(
            X, bits=4, axis=-1, symmetric=sym, mask=MASK)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # minmax on a symmetric grid goes through scale_from_range: max(|lo|, |hi|) / qmax
    s, _ = CAL(X, bits=4, method="minmax", axis=-1)
    np.testing.assert_allclose(s[0], np.abs(X).max(0) / 7, rtol=1e-6)
    s, _ = CAL(X, bits=8, method="percentile", percentile=99.0, group_size=10,
                     group_axis=0)
    e = np.percentile(np.abs(X.reshape(4, 30)), 99.0, axis=1) / 127
    np.testing.assert_allclose(s[:, 0], e, rtol=1e-5)
    assert s.shape == (4, 1)


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"method": "kl"}, ValueError, "method='kl' is not a calibration method; use one of absmax"),
    ({"method": "percentile", "percentile": 40.0}, ValueError, "percentile=40.0 .* outside"),
    ({"method": "mse", "n_grid": 0}, ValueError, "n_grid=0 must be a positive int"),
    ({"mask": np.ones((3, 40), bool)}, ValueError, "mask of shape"),
    ({"axis": 5}, ValueError, "axis=5 is out of range"),
    ({"bits": 17}, ValueError, "bits=17"),
])
def test_calibration_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        calibration_range(X, **kwargs)


def test_calibration_rejects_nan_and_ints():
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        calibrate(bad, bits=8, method="percentile")
    with pytest.raises(TypeError, match="floating-point"):
        calibrate(np.arange(4), bits=8)
    with pytest.raises(ValueError, match="method='median' is not a calibration method"):
        calibrate(X, bits=8, method="median")
    assert check_method("percentile") == "percentile"


def test_ema_range():
    r = ema_range_init()
    step = jax.jit(lambda r, x: ema_range_update(r, x, momentum=0.9))
    batches = [np.array([-1.0, 2.0]), np.array([-3.0, 1.0]), np.array([0.5, 4.0])]
    lo, hi = None, None
    for b in batches:
        r = step(r, jnp.asarray(b, jnp.float32))
        lo = b.min() if lo is None else 0.9 * lo + 0.1 * b.min()
        hi = b.max() if hi is None else 0.9 * hi + 0.1 * b.max()
    assert isinstance(r, EmaRange) and int(r.count) == 3
    np.testing.assert_allclose([r.lo, r.hi], [lo, hi], rtol=1e-6)
    s, z = r.scale(bits=8, symmetric=False)
    np.testing.assert_allclose(s, (hi - lo) / 255, rtol=1e-6)
    assert float(z) == np.round(-lo / ((hi - lo) / 255)) == 84.0
    # per channel
    rc = ema_range_update(ema_range_init((1, 3)), X, axis=-1)
    np.testing.assert_allclose(rc.hi[0], X.max(0))
    with pytest.raises(ValueError, match="momentum=1.0 .* outside"):
        ema_range_update(r, X, momentum=1.0)
    with pytest.raises(ValueError, match="pass the axis= the state was made for"):
        ema_range_update(r, X, axis=-1)
    with pytest.raises(TypeError, match="state must be an EmaRange"):
        ema_range_update((0.0, 1.0), X)
