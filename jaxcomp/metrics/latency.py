"""Wall-clock latency of a JAX function, with compilation timed separately.

:func:`measure_latency` compiles once (``jax.jit(fn).lower(...).compile()``,
timed on its own), runs ``warmup`` untimed calls, then times ``repeat``
calls, each ended by :func:`jax.block_until_ready` so asynchronous dispatch
does not hide the work. Statistics are over the timed calls only.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["Latency", "measure_latency"]


@dataclasses.dataclass(frozen=True)
class Latency:
    """Timing statistics in seconds.

    Attributes:
      median, mean, std, min, max, p90: over the ``repeat`` timed calls
        (``std`` is the population standard deviation; ``p90`` the 90th
        percentile with linear interpolation).
      compile_seconds: lowering + XLA compile time, or None when ``jit=False``.
      times: every timed call, in order.
      warmup: untimed calls made before timing.
      repeat: timed calls.
    """

    median: float
    mean: float
    std: float
    min: float
    max: float
    p90: float
    compile_seconds: float | None
    times: tuple[float, ...]
    warmup: int
    repeat: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["times"] = list(self.times)
        return d


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}={value} must be >= {low}")
    return int(value)


def measure_latency(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 2,
    repeat: int = 20,
    jit: bool = True,
    **kwargs: Any,
) -> Latency:
    """Times ``fn(*args, **kwargs)``.

    Args:
      fn: the function to time.
      *args: its positional arguments (concrete arrays).
      warmup: untimed calls before timing (>= 0).
      repeat: timed calls (>= 1).
      jit: compile ``fn`` with :func:`jax.jit` first and time the compiled
        executable; ``False`` times ``fn`` as given (e.g. already jitted, or
        eager) and reports no compile time.
      **kwargs: keyword arguments of ``fn``.

    Returns:
      A :class:`Latency`.

    Raises:
      TypeError: ``fn`` is not callable, or ``warmup``/``repeat`` are not ints.
      ValueError: ``warmup < 0`` or ``repeat < 1``.

    Example:
      >>> import jax.numpy as jnp
      >>> lat = measure_latency(lambda x: x @ x, jnp.ones((8, 8)), warmup=1, repeat=3)
      >>> lat.min <= lat.median <= lat.p90 <= lat.max, lat.compile_seconds > 0
      (True, True)
    """
    if not callable(fn):
        raise TypeError(f"measure_latency needs a callable fn, got {type(fn).__name__}")
    warmup = _check_count("warmup", warmup, 0)
    repeat = _check_count("repeat", repeat, 1)
    compile_seconds = None
    run = fn
    if jit:
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args, **kwargs).compile()
        compile_seconds = time.perf_counter() - t0
        run = compiled
    for _ in range(warmup):
        jax.block_until_ready(run(*args, **kwargs))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(run(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times)
    return Latency(
        median=float(statistics.median(times)),
        mean=float(arr.mean()),
        std=float(arr.std()),
        min=float(arr.min()),
        max=float(arr.max()),
        p90=float(np.percentile(arr, 90)),
        compile_seconds=compile_seconds,
        times=tuple(times),
        warmup=warmup,
        repeat=repeat,
    )
