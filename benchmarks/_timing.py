"""Interleaved timing rounds, per-round ratios and a machine description for the benchmarks.

Timing several methods one after another lets a change in machine load (other
jobs starting or stopping) land on one method only. Here every round runs
every method once, in an order rotated by one place per round, so load
changes hit all methods alike; per-round ratios then cancel most of the load,
and their median and range over rounds are what the benchmarks report.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU model, core count, load average, jax/jaxlib versions, devices."""
    import jaxlib

    try:
        load = "load avg {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())
    except OSError:
        load = "load avg n/a"
    dev = jax.devices()[0]
    return (f"{cpu_model()}, {os.cpu_count()} cores, {load}; jax {jax.__version__}, "
            f"jaxlib {jaxlib.__version__}; {jax.device_count()} {jax.default_backend()} "
            f"device(s) ({dev.device_kind})")


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    inner: int | Mapping[str, int] = 1,
    warmup: int = 1,
    results: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Times zero-argument callables in interleaved rounds.

    Each callable is first called ``warmup`` times (untimed: compiles and
    first-touch costs are excluded). Then, for ``r`` in ``range(rounds)``,
    every callable runs ``inner`` times back to back, in the order of
    ``fns`` rotated left by ``r`` places; each call is followed by
    ``jax.block_until_ready`` on its result, and the round's time for a
    method is the wall time of its ``inner`` calls divided by ``inner``.

    Args:
      fns: name -> callable taking no arguments.
      rounds: number of rounds (>= 1).
      inner: calls per method per round (>= 1), or a name -> count mapping
        (default 1 for names it lacks): cheap methods can take several calls
        per round so that timer and dispatch noise stays small.
      warmup: untimed calls per method before the rounds (>= 0).
      results: if given, receives each method's last output (so checks of
        the outputs need not run slow methods again).

    Returns:
      name -> list of ``rounds`` per-call times in seconds (round order).

    Example:
      >>> import jax.numpy as jnp
      >>> t = interleaved({"a": lambda: jnp.ones(3), "b": lambda: jnp.zeros(3)}, 3)
      >>> sorted(t), [len(v) for v in t.values()]
      (['a', 'b'], [3, 3])
    """
    names = list(fns)
    counts = {n: (inner.get(n, 1) if isinstance(inner, Mapping) else inner) for n in names}
    if rounds < 1 or min(counts.values(), default=1) < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, inner >= 1, warmup >= 0; got {rounds}, {inner}, "
                         f"{warmup}")
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(counts[name]):
                out = jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - t0) / counts[name])
            if results is not None:
                results[name] = out
    return times


def ratio_stats(num: Sequence[float], den: Sequence[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of the per-round ratio ``num[r] / den[r]``.

    Example:
      >>> ratio_stats([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
      (2.0, 2.0, 3.0)
    """
    if len(num) != len(den) or not num:
        raise ValueError(f"need two equal, non-empty series; got {len(num)} and {len(den)}")
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def fmt_ratio(stats: tuple[float, float, float], digits: int = 2) -> str:
    """``"median (min–max)"`` of a :func:`ratio_stats` triple.

    Example:
      >>> fmt_ratio((2.0, 1.5, 3.25))
      '2.00 (1.50–3.25)'
    """
    m, lo, hi = stats
    return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"
