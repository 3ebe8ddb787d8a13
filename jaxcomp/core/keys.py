"""PRNG key checks shared by every package that takes a ``key=``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["check_key", "is_prng_key"]


def is_prng_key(x: Any) -> bool:
    """True for a typed PRNG key array (``jax.random.key``), including abstract ones.

    Raw ``uint32[2]`` keys (``jax.random.PRNGKey``) are plain integer arrays
    and give ``False``.

    Example:
      >>> import jax
      >>> is_prng_key(jax.random.key(0)), is_prng_key(jax.random.PRNGKey(0))
      (True, False)
      >>> is_prng_key(jax.ShapeDtypeStruct((), jax.random.key(0).dtype))
      True
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    try:
        return bool(jnp.issubdtype(dtype, jax.dtypes.prng_key))
    except TypeError:
        return False


def check_key(key: Any, what: str = "key") -> jax.Array:
    """Validates a PRNG key: a typed key (``jax.random.key``) or a raw ``uint32[2]`` key.

    Args:
      key: the value to check.
      what: how the caller names the argument in error messages, e.g.
        ``"TrainState.create(key=)"``.

    Returns:
      ``key`` unchanged.

    Raises:
      TypeError: naming ``what`` if ``key`` is neither a single typed key nor
        a raw ``uint32[2]`` key.

    Example:
      >>> import jax
      >>> check_key(jax.random.key(0)).shape
      ()
      >>> check_key(0, "fit(key=)")
      Traceback (most recent call last):
      ...
      TypeError: fit(key=) must be a PRNG key such as jax.random.key(0), got int
    """
    if is_prng_key(key):
        if getattr(key, "shape", ()) != ():
            raise TypeError(f"{what} must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    shape = getattr(key, "shape", None)
    dtype = getattr(key, "dtype", None)
    if shape == (2,) and dtype == jnp.uint32:
        return key
    raise TypeError(
        f"{what} must be a PRNG key such as jax.random.key(0), got {type(key).__name__}"
        + (f" of shape {shape} and dtype {dtype}" if shape is not None else "")
    )
