"""What XLA itself reports about a compiled function: cost and memory.

``jax.jit(fn).lower(...).compile()`` exposes ``cost_analysis()`` (FLOPs and
bytes accessed as XLA's HLO cost model sees them) and ``memory_analysis()``
(buffer sizes). Their forms changed across JAX versions (a list of dicts, one
per HLO module, in some; a dict in others; ``None`` or an exception on
backends that do not implement them); :func:`normalize_cost_analysis` and
:func:`memory_stats` turn them into plain values.

Caveats worth knowing (see also ``DESIGN.md``): XLA counts a masked matmul as
dense (plus the mask multiply), int8 matmuls like float ones, and a ``scan``
or ``while`` body once regardless of its trip count; its "flops" count a
multiply-add as 2.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["MemoryStats", "XlaCost", "memory_stats", "normalize_cost_analysis", "xla_cost"]


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """Buffer sizes of a compiled executable, in bytes.

    ``peak_bytes`` is the estimate ``argument + output - alias + temp``:
    inputs and outputs held at once (a donated input aliased to an output
    counted once) plus all of XLA's scratch buffers; generated code is not
    device data and is left out. It is an upper bound on what the executable
    itself holds. ``backend_peak_bytes`` is the backend's own peak figure
    (``peak_memory_in_bytes``) where it reports one, else None.
    """

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    peak_bytes: int
    backend_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class XlaCost:
    """XLA's view of a function (``None`` where the backend reports nothing).

    Attributes:
      flops: XLA's FLOP count (a multiply-add is 2 FLOPs).
      bytes_accessed: bytes read and written, per XLA's cost model.
      transcendentals: count of transcendental operations.
      memory: buffer sizes, :class:`MemoryStats`.
      lower_seconds: wall time of tracing and lowering to StableHLO.
      compile_seconds: wall time of the XLA compilation alone.
    """

    flops: float | None
    bytes_accessed: float | None
    transcendentals: float | None
    memory: MemoryStats | None
    lower_seconds: float
    compile_seconds: float


def normalize_cost_analysis(cost: Any) -> dict[str, float]:
    """Turns a ``cost_analysis()`` result into one flat ``{name: value}`` dict.

    Lists (one dict per HLO module) are summed key by key; ``None`` gives an
    empty dict; negative values (XLA's "unknown") are dropped.

    Example:
      >>> normalize_cost_analysis([{"flops": 4.0}, {"flops": 2.0, "bytes accessed": 8.0}])
      {'flops': 6.0, 'bytes accessed': 8.0}
      >>> normalize_cost_analysis(None)
      {}
    """
    if cost is None:
        return {}
    parts = [cost] if isinstance(cost, Mapping) else list(cost)
    out: dict[str, float] = {}
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        for k, v in part.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if v < 0:
                continue
            out[str(k)] = out.get(str(k), 0.0) + v
    return out


def memory_stats(compiled: Any) -> MemoryStats | None:
    """Reads ``compiled.memory_analysis()`` into :class:`MemoryStats` (None if unavailable)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - unimplemented on some backends
        return None
    if m is None:
        return None
    if isinstance(m, (list, tuple)):
        m = m[0] if m else None
        if m is None:
            return None

    def get(name: str) -> int:
        v = m.get(name, 0) if isinstance(m, Mapping) else getattr(m, name, 0)
        try:
            return max(0, int(v or 0))
        except (TypeError, ValueError):
            return 0

    arg, out = get("argument_size_in_bytes"), get("output_size_in_bytes")
    temp, alias = get("temp_size_in_bytes"), get("alias_size_in_bytes")
    backend_peak = get("peak_memory_in_bytes")
    return MemoryStats(
        argument_bytes=arg,
        output_bytes=out,
        temp_bytes=temp,
        alias_bytes=alias,
        generated_code_bytes=get("generated_code_size_in_bytes"),
        peak_bytes=max(0, arg + out - alias) + temp,
        backend_peak_bytes=backend_peak if backend_peak > 0 else None,
    )


def xla_cost(fn: Any, *args: Any, **kwargs: Any) -> XlaCost:
    """Lowers and compiles ``jax.jit(fn)`` for the arguments and reads XLA's analyses.

    Args:
      fn: a JAX-traceable function.
      *args: its positional arguments (arrays or ``jax.ShapeDtypeStruct``).
      **kwargs: its keyword arguments.

    Returns:
      An :class:`XlaCost`.

    Example:
      >>> import jax.numpy as jnp
      >>> c = xla_cost(lambda x: x @ x, jnp.ones((4, 4)))
      >>> c.flops is None or c.flops >= 128.0
      True
    """
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    try:
        cost = normalize_cost_analysis(compiled.cost_analysis())
    except Exception:  # noqa: BLE001 - unimplemented on some backends
        cost = {}
    return XlaCost(
        flops=cost.get("flops"),
        bytes_accessed=cost.get("bytes accessed"),
        transcendentals=cost.get("transcendentals"),
        memory=memory_stats(compiled),
        lower_seconds=t1 - t0,
        compile_seconds=t2 - t1,
    )
