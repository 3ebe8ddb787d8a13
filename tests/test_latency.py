"""Tests for jaxcomp.metrics.latency (no timing assertions, only shapes and order)."""

import json

import jax
import jax.numpy as jnp
import pytest

from jaxcomp.metrics.latency import Latency, measure_latency


def _f(w, x):
    return jnp.tanh(x @ w)


W, X = jnp.ones((32, 32)), jnp.ones((4, 32))


def test_jitted_latency_fields_and_order():
    lat = measure_latency(_f, W, X, warmup=1, repeat=7)
    assert isinstance(lat, Latency)
    assert len(lat.times) == 7 and lat.repeat == 7 and lat.warmup == 1
    assert lat.min <= lat.median <= lat.p90 <= lat.max
    assert lat.min <= lat.mean <= lat.max and lat.std >= 0
    assert lat.compile_seconds is not None and lat.compile_seconds > 0
    assert json.loads(json.dumps(lat.to_dict()))["repeat"] == 7


def test_eager_or_prejitted_has_no_compile_time():
    lat = measure_latency(jax.jit(_f), W, X, warmup=0, repeat=3, jit=False)
    assert lat.compile_seconds is None and len(lat.times) == 3
    assert lat.min <= lat.median <= lat.p90


def test_kwargs_are_passed():
    lat = measure_latency(lambda x, *, scale: x * scale, X, scale=2.0, repeat=2)
    assert len(lat.times) == 2


def test_single_repeat():
    lat = measure_latency(_f, W, X, warmup=0, repeat=1)
    assert lat.min == lat.median == lat.p90 == lat.max and lat.std == 0.0


@pytest.mark.parametrize(
    "kw, exc",
    [
        ({"warmup": -1}, ValueError),
        ({"repeat": 0}, ValueError),
        ({"repeat": 2.5}, TypeError),
        ({"warmup": True}, TypeError),
    ],
)
def test_bad_counts(kw, exc):
    with pytest.raises(exc):
        measure_latency(_f, W, X, **kw)


def test_not_callable():
    with pytest.raises(TypeError, match="callable"):
        measure_latency("f", X)
