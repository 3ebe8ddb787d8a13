"""What a compression state tells the metrics about each parameter.

Metrics need to know, per parameter path, how much of a weight survives, at
which bit width it runs and what fraction of its dense compute the compressed
form needs. Compressor states report this through :func:`compression_info`:
any object in a state (a NamedTuple, a dataclass, ...) that defines a
``__jaxcomp_info__(self) -> dict[str, LeafInfo]`` method contributes entries;
tuples, lists, dicts and NamedTuples are searched recursively, so the states
of ``chain``/``partition``/``masked`` need no special handling. Entries for
the same path are combined with :meth:`LeafInfo.combine`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["LeafInfo", "compression_info"]


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """Per-parameter facts that compression establishes.

    Attributes:
      density: fraction of weights that are kept (non-zero), in [0, 1].
      weight_bits: bit width the weights are stored/executed at.
      act_bits: bit width of the activations entering the layer.
      compute_fraction: MACs of the executed compressed form relative to the
        dense layer (e.g. ``r(m+n)/(mn)`` for rank ``r``), independent of
        ``density``.
    """

    density: float | None = None
    weight_bits: int | None = None
    act_bits: int | None = None
    compute_fraction: float | None = None

    def __post_init__(self):
        if self.density is not None and not 0.0 <= float(self.density) <= 1.0:
            raise ValueError(f"LeafInfo.density={self.density!r} must lie in [0, 1]")
        if self.compute_fraction is not None and not float(self.compute_fraction) >= 0.0:
            raise ValueError(
                f"LeafInfo.compute_fraction={self.compute_fraction!r} must be non-negative"
            )
        for name in ("weight_bits", "act_bits"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < 1):
                raise ValueError(f"LeafInfo.{name}={v!r} must be a positive integer")

    def combine(self, other: LeafInfo) -> LeafInfo:
        """Combines two independent facts: densities and fractions multiply, bits take the min."""

        def mul(a, b):
            return b if a is None else a if b is None else float(a) * float(b)

        def mn(a, b):
            return b if a is None else a if b is None else min(int(a), int(b))

        return LeafInfo(
            density=mul(self.density, other.density),
            weight_bits=mn(self.weight_bits, other.weight_bits),
            act_bits=mn(self.act_bits, other.act_bits),
            compute_fraction=mul(self.compute_fraction, other.compute_fraction),
        )


def _merge_into(acc: dict[str, LeafInfo], more: Mapping[str, LeafInfo]) -> None:
    for path, info in more.items():
        if not isinstance(info, LeafInfo):
            raise TypeError(
                f"__jaxcomp_info__ must map paths to LeafInfo, got {type(info).__name__} "
                f"for '{path}'"
            )
        acc[path] = acc[path].combine(info) if path in acc else info


def compression_info(state: Any) -> dict[str, LeafInfo]:
    """Collects per-path :class:`LeafInfo` from a compressor state.

    Args:
      state: a compressor state, or a mapping ``path -> LeafInfo`` (returned
        unchanged after validation), or ``None``.

    Returns:
      A dict from canonical parameter path to :class:`LeafInfo`.

    Example:
      >>> compression_info({"Dense_0/kernel": LeafInfo(density=0.1)})
      {'Dense_0/kernel': LeafInfo(density=0.1, weight_bits=None, act_bits=None, compute_fraction=None)}
    """
    out: dict[str, LeafInfo] = {}
    if state is None:
        return out
    if isinstance(state, Mapping) and state and all(isinstance(v, LeafInfo) for v in state.values()):
        _merge_into(out, state)
        return out

    def walk(x: Any) -> None:
        fn = getattr(type(x), "__jaxcomp_info__", None)
        if fn is not None:
            _merge_into(out, fn(x))
            return
        if isinstance(x, Mapping):
            for v in x.values():
                walk(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                walk(v)
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))

    walk(state)
    return out
