"""jaxcomp.core.keys: PRNG key checks."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.core import check_key, is_prng_key


def test_is_prng_key():
    key = jax.random.key(0)
    assert is_prng_key(key) and is_prng_key(jax.random.split(key, 3))
    assert is_prng_key(jax.ShapeDtypeStruct((), key.dtype))
    assert jax.jit(lambda k: jnp.asarray(is_prng_key(k)))(key)
    for other in (jax.random.PRNGKey(0), np.zeros(2, np.uint32), 0, None, "key",
                  SimpleNamespace(dtype="no such dtype")):
        assert not is_prng_key(other)


def test_check_key_accepts_typed_and_raw_keys_unchanged():
    key, raw = jax.random.key(3), jax.random.PRNGKey(3)
    assert check_key(key) is key and check_key(raw) is raw
    traced = jax.jit(lambda k: jax.random.key_data(check_key(k)))(key)
    np.testing.assert_array_equal(traced, jax.random.key_data(key))


@pytest.mark.parametrize("bad, match", [
    (jax.random.split(jax.random.key(0), 2),
     r"f\(key=\) must be a single PRNG key, got a key array of shape \(2,\)"),
    (3, r"f\(key=\) must be a PRNG key such as jax.random.key\(0\), got int$"),
    (np.zeros(2, np.int32), "got ndarray of shape \\(2,\\) and dtype int32"),
    (np.zeros(3, np.uint32), "got ndarray of shape \\(3,\\) and dtype uint32"),
    (SimpleNamespace(dtype="no such dtype", shape=(2,)), "f\\(key=\\) must be a PRNG key"),
])
def test_check_key_errors_name_the_argument(bad, match):
    with pytest.raises(TypeError, match=match):
        check_key(bad, "f(key=)")
