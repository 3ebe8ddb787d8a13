"""Tests for the logit-based distillation losses (Hinton KD, multi-teacher soft targets).

Inputs come from NumPy and every computation runs in one ``jax.jit`` per test:
eager JAX compiles each primitive separately, which dominates test time.
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental import checkify

from jaxcomp.distill import (
    kd_loss,
    multi_teacher_kd_loss,
    multi_teacher_soft_targets,
    soft_targets,
)

RNG = np.random.default_rng(0)


def randn(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def np_softmax(z, axis=-1):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def np_kd(s, t, T, labels=None, alpha=0.5, mask=None):
    """Textbook Hinton loss, written out with numpy in float64."""
    p, q = np_softmax(t / T), np_softmax(s / T)
    per = T**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    if labels is not None:
        ce = -np.log(np_softmax(s))[np.arange(len(s)), labels]
        per = alpha * per + (1 - alpha) * ce
    if mask is None:
        return per.mean()
    return (per * mask).sum() / mask.sum()


def test_kd_hand_computed_case():
    s = np.array([[1.0, 2.0, 3.0]], np.float32)
    t = np.array([[3.0, 2.0, 1.0]], np.float32)

    @jax.jit
    def f(s, t):
        return (
            kd_loss(s, t, temperature=1.0),
            kd_loss(s, t, temperature=2.0),
            kd_loss(s, t, temperature=1.0, labels=jnp.array([2]), alpha=0.25),
        )

    t1, t2, mixed = f(s, t)
    # T = 1: p = softmax(3,2,1) = (0.66524096, 0.24472847, 0.09003057) and
    # log p - log q = (2, 0, -2), so KL = 2 * (0.66524096 - 0.09003057).
    np.testing.assert_allclose(t1, 2 * (0.66524096 - 0.09003057), rtol=1e-6)
    # T = 2: p = softmax(1.5, 1, 0.5) = (0.50648039, 0.30719589, 0.18632372),
    # log p - log q = (1, 0, -1); times T^2 = 4.
    np.testing.assert_allclose(t2, 4 * (0.50648039 - 0.18632372), rtol=1e-6)
    # Label 2, alpha = 0.25: CE = -log softmax(1,2,3)[2] = 0.40760596.
    np.testing.assert_allclose(mixed, 0.25 * t1 + 0.75 * 0.40760596, rtol=1e-6)


def test_kd_matches_numpy_formula_eager_and_jit():
    s, t = randn(6, 5, scale=3), randn(6, 5, scale=3)
    y = RNG.integers(0, 5, size=6)
    mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
    for T in (1.0, 2.5, 8.0):

        @jax.jit
        def f(s, t, T=T):
            return (
                kd_loss(s, t, temperature=T),
                kd_loss(s, t, temperature=T, labels=y, alpha=0.7, mask=mask),
            )

        plain, masked = f(s, t)
        np.testing.assert_allclose(plain, np_kd(s, t, T), rtol=1e-5)
        np.testing.assert_allclose(masked, np_kd(s, t, T, y, 0.7, mask), rtol=1e-5)
    eager = kd_loss(s, t, temperature=8.0, labels=y, alpha=0.7, mask=mask)
    np.testing.assert_allclose(eager, np_kd(s, t, 8.0, y, 0.7, mask), rtol=1e-5)


def test_kd_without_labels_ignores_alpha():
    s, t = np.array([[0.0, 1.0]], np.float32), np.array([[1.0, 0.0]], np.float32)
    a, b = jax.jit(
        lambda s, t: (
            kd_loss(s, t, temperature=2.0, alpha=0.1),
            kd_loss(s, t, temperature=2.0, alpha=0.9),
        )
    )(s, t)
    assert float(a) == float(b) > 0


def test_kd_stable_for_huge_logits():
    s = np.array([[1e4, -1e4, 0.0], [0.0, 5e3, -5e3]], np.float32)
    t = np.array([[-1e4, 1e4, 0.0], [0.0, -5e3, 5e3]], np.float32)
    y = np.array([1, 2])

    @jax.jit
    def f(s):
        loss, g = jax.value_and_grad(lambda s: kd_loss(s, t, temperature=1.0, labels=y))(s)
        return loss, g, kd_loss(s, t, temperature=0.5, kind="ce")

    loss, g, ce = f(s)
    assert np.isfinite(loss) and loss > 1e3 and np.isfinite(ce)
    assert np.all(np.isfinite(g))


def test_t_squared_keeps_soft_gradient_scale():
    s, t = randn(16, 10), randn(16, 10)
    s, t = s - s.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
    temps = np.array([4.0, 8.0, 16.0, 32.0])

    @jax.jit
    def norms(s):
        return jnp.stack(
            [
                jnp.linalg.norm(jax.grad(lambda s, T=T: kd_loss(s, t, temperature=T))(s))
                for T in temps
            ]
        )

    n = np.asarray(norms(s))
    # With T^2: ~independent of T, tending to ||(s - t) / C|| / batch.
    np.testing.assert_allclose(n, n[-1], rtol=0.1)
    np.testing.assert_allclose(n[-1], np.linalg.norm((s - t) / 10 / 16), rtol=0.02)
    # Without the T^2 factor the gradient would fall as 1 / T^2.
    unscaled = n / temps**2
    assert unscaled[0] / unscaled[-1] > 0.9 * (temps[-1] / temps[0]) ** 2


def test_kind_ce_differs_by_teacher_entropy():
    s, t = randn(5, 7), randn(5, 7)
    for T in (1.0, 3.0):

        @jax.jit
        def f(s, T=T):
            kl = functools.partial(kd_loss, temperature=T, kind="kl")
            ce = functools.partial(kd_loss, temperature=T, kind="ce")
            return (
                kl(s, t),
                ce(s, t),
                jax.grad(lambda s: kl(s, t))(s),
                jax.grad(lambda s: ce(s, t))(s),
                kl(t, t),
            )

        kl, ce, g_kl, g_ce, self_kl = f(s)
        p = np_softmax(t / T)
        entropy = -(p * np.log(p)).sum(-1).mean()
        np.testing.assert_allclose(ce - kl, T**2 * entropy, rtol=1e-5)
        np.testing.assert_allclose(g_kl, g_ce, atol=1e-6)
        assert abs(float(self_kl)) < 1e-6


def test_mask_excludes_padded_examples():
    s, t = randn(4, 3), randn(4, 3)
    y = np.array([0, 1, 2, 0])
    mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    padded = s.copy()
    padded[1], padded[3] = 1e3, -7.0  # garbage in padded rows

    @jax.jit
    def f(padded):
        loss = functools.partial(kd_loss, temperature=2.0, labels=y, mask=mask)
        return (
            loss(padded, t),
            kd_loss(s[::2], t[::2], temperature=2.0, labels=y[::2]),
            jax.grad(lambda x: loss(x, t))(padded),
            kd_loss(s, t, temperature=2.0, mask=jnp.zeros(4)),
        )

    got, want, g, all_masked = f(padded)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(np.asarray(g)[[1, 3]] == 0)
    assert float(all_masked) == 0.0


def test_soft_labels_and_sequence_logits():
    s, t = randn(2, 3, 4), randn(2, 3, 4)  # (batch, positions, classes)
    y = np.array([[0, 1, 2], [3, 0, 1]])

    @jax.jit
    def f(s, t):
        return (
            kd_loss(s, t, temperature=2.0, labels=y),
            kd_loss(s, t, temperature=2.0, labels=jax.nn.one_hot(y, 4)),
            kd_loss(s, t, temperature=2.0, labels=y, mask=jnp.array([1.0, 0.0])),
            kd_loss(s[:1], t[:1], temperature=2.0, labels=y[:1]),
        )

    a, b, masked, first = f(s, t)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(masked, first, rtol=1e-6)  # mask broadcasts over positions


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 2.0, "alpha": 1.5}, "alpha"),
        ({"temperature": 2.0, "kind": "js"}, "kind"),
        ({"temperature": 2.0, "mask": np.ones(3)}, "mask"),
        ({"temperature": 2.0, "labels": np.zeros(3, np.int32)}, "labels"),
    ],
)
def test_kd_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: kd_loss(jnp.zeros((2, 4)), jnp.zeros((2, 4)), **kwargs))


def test_kd_shape_mismatch_and_float_labels():
    with pytest.raises(ValueError, match="student_logits has shape"):
        kd_loss(np.zeros((2, 4)), np.zeros((2, 5)), temperature=1.0)
    with pytest.raises(TypeError, match="integer labels"):
        jax.eval_shape(
            lambda: kd_loss(
                jnp.zeros((2, 4)), jnp.zeros((2, 4)), temperature=1.0, labels=jnp.zeros(2)
            )
        )


def test_multi_teacher_soft_targets_hand_average():
    ts = [randn(3, 5, scale=2) for _ in range(3)]
    T, w = 2.0, [1.0, 2.0, 5.0]

    @jax.jit
    def f(ts):
        return (
            multi_teacher_soft_targets(ts, temperature=T),
            multi_teacher_soft_targets(jnp.stack(ts), temperature=T, weights=w),
            soft_targets(ts[0], temperature=T),
        )

    avg, weighted, single = f(ts)
    np.testing.assert_allclose(avg, np.mean([np_softmax(t / T) for t in ts], axis=0), rtol=1e-5)
    want_w = sum(wi * np_softmax(t / T) for wi, t in zip(w, ts)) / 8.0
    np.testing.assert_allclose(weighted, want_w, rtol=1e-5)
    np.testing.assert_allclose(single, np_softmax(ts[0] / T), rtol=1e-5)


def test_multi_teacher_kd_reduces_to_kd_and_matches_hand_formula():
    s, t1, t2 = randn(4, 6), randn(4, 6), randn(4, 6)
    y = RNG.integers(0, 6, size=4)
    T = 3.0

    @jax.jit
    def f(s, t1, t2):
        return (
            multi_teacher_kd_loss(s, [t1], temperature=T, labels=y, alpha=0.3),
            kd_loss(s, t1, temperature=T, labels=y, alpha=0.3),
            multi_teacher_kd_loss(s, [t1, t2], temperature=T, weights=[1.0, 0.0]),
            kd_loss(s, t1, temperature=T),
            multi_teacher_kd_loss(s, [t1, t2], temperature=T),
        )

    one, kd_one, first, kd_first, avg = f(s, t1, t2)
    np.testing.assert_allclose(one, kd_one, rtol=1e-6)
    np.testing.assert_allclose(first, kd_first, rtol=1e-5)
    p = (np_softmax(t1 / T) + np_softmax(t2 / T)) / 2
    q = np_softmax(s / T)
    np.testing.assert_allclose(
        avg, (T**2 * (p * (np.log(p) - np.log(q))).sum(-1)).mean(), rtol=1e-5
    )


def test_multi_teacher_learned_weights_get_gradients():
    s, t1, t2 = randn(4, 6), randn(4, 6), randn(4, 6)

    def f(w_logits):
        return multi_teacher_kd_loss(s, [t1, t2], temperature=2.0, weights=jax.nn.softmax(w_logits))

    g = jax.jit(jax.grad(f))(jnp.zeros(2))
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_multi_teacher_bad_arguments():
    s = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        multi_teacher_kd_loss(s, [s, np.zeros((2, 4))], temperature=1.0)
    with pytest.raises(ValueError, match="weights"):
        multi_teacher_kd_loss(s, [s, s], temperature=1.0, weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        multi_teacher_kd_loss(s, [s, s], temperature=1.0, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="empty"):
        multi_teacher_kd_loss(s, [], temperature=1.0)


@jax.jit
def _props(s, t, T):
    return (
        kd_loss(s, t, temperature=T),
        kd_loss(t, t, temperature=T),
        multi_teacher_soft_targets([s, t], temperature=T),
    )


@given(
    hnp.arrays(np.float32, (3, 4), elements=st.floats(-30, 30, width=32)),
    hnp.arrays(np.float32, (3, 4), elements=st.floats(-30, 30, width=32)),
    st.floats(0.5, 20.0),
)
def test_kd_properties(s, t, T):
    kl, self_kl, p = _props(s, t, T)
    assert float(kl) >= -1e-4
    assert abs(float(self_kl)) < 1e-4
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert np.all(p >= 0)


# ----------------------------------------------------------------------------------------------
# Validation of concrete values, and checkify-based checks of traced ones

_S = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]], np.float32)
_T = np.array([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]], np.float32)


@pytest.mark.parametrize(
    "temperature", [jnp.float32(0.0), jnp.array(-2.0), np.array(0.0), np.float64(-1.0),
                    np.array([2.0, 0.0]), jnp.float32(jnp.nan)]
)
def test_array_temperature_must_be_positive(temperature):
    for f in (
        lambda: kd_loss(_S, _T, temperature=temperature),
        lambda: multi_teacher_kd_loss(_S, [_T, _T], temperature=temperature),
        lambda: soft_targets(_T, temperature=temperature),
        lambda: multi_teacher_soft_targets([_T], temperature=temperature),
    ):
        with pytest.raises(ValueError, match=r"temperature=.* is outside \(0.0, inf\)"):
            f()


@pytest.mark.parametrize("bad", ["4", True, None, np.array(["4"]), jnp.array([1 + 2j])])
def test_non_numeric_hyperparameters_are_type_errors(bad):
    with pytest.raises(TypeError, match="temperature must"):
        kd_loss(_S, _T, temperature=bad)
    with pytest.raises(TypeError, match="alpha must"):
        kd_loss(_S, _T, temperature=2.0, alpha=bad, labels=np.array([0, 1]))


def test_array_alpha_and_weights_are_checked():
    with pytest.raises(ValueError, match=r"alpha=1.5 is outside \[0.0, 1.0\]"):
        kd_loss(_S, _T, temperature=2.0, alpha=jnp.float32(1.5), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        multi_teacher_kd_loss(_S, [_T, _T], temperature=1.0, weights=jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        multi_teacher_soft_targets([_T, _T], temperature=1.0, weights=np.zeros(2))
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        multi_teacher_kd_loss(_S, [_T, _T], temperature=1.0, weights=[jnp.float32(-1), 2.0])
    with pytest.raises(TypeError, match="weights must be real numbers"):
        multi_teacher_kd_loss(_S, [_T, _T], temperature=1.0, weights=["1", "2"])


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [7, 1]])
def test_labels_out_of_range_are_value_errors(labels):
    for lab in (np.array(labels), jnp.array(labels, jnp.int32)):
        with pytest.raises(ValueError, match=r"labels span .* 3 classes; class ids must lie in"):
            kd_loss(_S, _T, temperature=2.0, labels=lab)
        with pytest.raises(ValueError, match="class ids must lie in"):
            multi_teacher_kd_loss(_S, [_T], temperature=2.0, labels=lab)
    # the boundary class C - 1 is fine and matches the textbook formula
    got = kd_loss(_S, _T, temperature=2.0, labels=np.array([2, 0]), alpha=0.3)
    np.testing.assert_allclose(got, np_kd(_S, _T, 2.0, np.array([2, 0]), 0.3), rtol=1e-5)


def test_empty_batch_and_empty_class_axis_are_value_errors():
    empty = np.zeros((0, 3), np.float32)
    with pytest.raises(ValueError, match="empty batch has no mean loss"):
        kd_loss(empty, empty, temperature=2.0)
    with pytest.raises(ValueError, match="empty batch"):
        jax.jit(lambda s: kd_loss(s, s, temperature=2.0, mask=jnp.zeros(0)))(empty)
    with pytest.raises(ValueError, match="empty batch"):
        multi_teacher_kd_loss(empty, [empty, empty], temperature=2.0)
    with pytest.raises(ValueError, match="class axis is empty"):
        kd_loss(np.zeros((2, 0)), np.zeros((2, 0)), temperature=2.0)


def _checked(fn, **static):
    return checkify.checkify(jax.jit(functools.partial(fn, checked=True, **static)))


def test_checked_mode_reports_traced_errors_under_jit():
    f = _checked(kd_loss)
    err, _ = f(_S, _T, temperature=jnp.float32(0.0))
    with pytest.raises(checkify.JaxRuntimeError, match=r"temperature must lie in \(0.0, inf\)"):
        err.throw()
    err, _ = f(_S, _T, temperature=2.0, alpha=jnp.float32(-0.5), labels=jnp.array([0, 1]))
    assert "alpha must lie in [0.0, 1.0]" in err.get()
    for bad in ([0, 3], [-1, 0]):
        err, _ = f(_S, _T, temperature=2.0, labels=jnp.array(bad))
        with pytest.raises(checkify.JaxRuntimeError, match=r"labels must lie in \[0, 2\]"):
            err.throw()
    g = _checked(multi_teacher_kd_loss)
    err, _ = g(_S, [_T, _T], temperature=2.0, weights=jnp.array([-1.0, 0.5]))
    assert "weights must be non-negative" in err.get()
    err, _ = _checked(soft_targets)(_T, temperature=jnp.float32(-1.0))
    assert "temperature must lie in" in err.get()
    # valid traced inputs: no error and the same value as the unchecked loss
    err, val = f(_S, _T, temperature=jnp.float32(2.0), labels=jnp.array([2, 0]), alpha=0.3)
    assert err.get() is None
    np.testing.assert_allclose(val, np_kd(_S, _T, 2.0, np.array([2, 0]), 0.3), rtol=1e-5)
    # jit outside checkify works too
    err, _ = jax.jit(checkify.checkify(functools.partial(kd_loss, checked=True)))(
        _S, _T, temperature=jnp.float32(-3.0))
    assert "got -3.0" in err.get()


def test_unchecked_traced_values_are_documented_not_validated():
    # Without checked=True a traced temperature cannot be inspected: the loss is not finite.
    out = jax.jit(lambda T: kd_loss(_S, _T, temperature=T))(jnp.float32(0.0))
    assert not np.isfinite(out)
    # checked=True staged under a plain jit (no checkify) is a trace-time error.
    with pytest.raises(ValueError, match="not functionalized"):
        jax.jit(lambda T: kd_loss(_S, _T, temperature=T, checked=True))(jnp.float32(2.0))
