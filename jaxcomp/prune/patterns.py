"""Sparsity patterns: which groups of weights are pruned together.

* :class:`Unstructured` — single weights.
* :class:`NM` — N:M semi-structured sparsity: in every run of ``m``
  consecutive elements along ``axis`` exactly ``n`` are kept (2:4 runs on
  sparse tensor cores). It has no threshold: the fraction is ``1 - n/m``.
* :class:`Block` — ``h × w`` blocks of the last two axes, scored by the sum,
  mean, L2 norm or max of their scores.
* :class:`Channel` — whole channels: ``axis=-1`` are the output channels
  (filters) of a Flax kernel, ``axis=-2`` the input channels; scored by the
  L1 or L2 norm of their scores.

A thresholdable pattern maps a leaf's scores to *group scores*
(``group_scores``), the threshold marks whole groups, and ``expand`` maps
the group mask back to the leaf's shape. Reshapes only split axes, so
sharded leaves keep their shard boundaries when the block or N:M group size
divides the per-device extent.

Strings are accepted wherever a pattern is: ``"unstructured"``, ``"2:4"``
(any ``"n:m"``), ``"channel"`` (output channels), ``"filter"`` (same).

References:
  Mishra et al., Accelerating sparse deep neural networks (2:4),
  arXiv:2104.08378. Zhou et al., Learning N:M fine-grained structured sparse
  neural networks from scratch, arXiv:2102.04010. Gray et al., block-sparse
  GPU kernels (OpenAI 2017). Li et al., Pruning filters for efficient
  ConvNets, arXiv:1608.08710.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.ops.kth import ordered_key

__all__ = ["NM", "Block", "Channel", "Pattern", "Unstructured", "as_pattern", "nm_keep"]


def _where(path: str | None) -> str:
    return f" (parameter '{path}')" if path else ""


def _norm_axis(axis: int, ndim: int, what: str, path: str | None) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{what}: axis={axis} is out of range for a {ndim}-d array{_where(path)}; "
            "exclude such parameters with where= or pick another axis"
        )
    return axis % ndim


@dataclasses.dataclass(frozen=True)
class Unstructured:
    """Every weight on its own."""

    def check(self, shape: tuple[int, ...], path: str | None = None) -> None:
        del shape, path

    def group_scores(self, scores: jax.Array) -> jax.Array:
        return scores

    def expand(self, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        del shape
        return keep

    def group_size(self, shape: tuple[int, ...]) -> int:
        del shape
        return 1


@dataclasses.dataclass(frozen=True)
class NM:
    """Keep the ``n`` largest of every ``m`` consecutive elements along ``axis``.

    Attributes:
      n: kept per group, ``1 <= n <= m``.
      m: group length; must divide ``shape[axis]``.
      axis: the axis the groups run along (default -1; for a Flax kernel
        ``(in, out)`` the hardware 2:4 layout groups the *input* dimension:
        use ``axis=-2`` when exporting to such kernels).
    """

    n: int = 2
    m: int = 4
    axis: int = -1

    def __post_init__(self):
        for name in ("n", "m", "axis"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"NM: {name} must be an int, got {type(v).__name__}")
        if self.m < 1 or not 1 <= self.n <= self.m:
            raise ValueError(
                f"NM(n={self.n}, m={self.m}): need 1 <= n <= m (keep n of every m), e.g. NM(2, 4)"
            )

    @property
    def sparsity(self) -> float:
        """The fraction pruned, ``1 - n/m``."""
        return 1.0 - self.n / self.m

    def check(self, shape: tuple[int, ...], path: str | None = None) -> None:
        ax = _norm_axis(self.axis, len(shape), f"NM({self.n}, {self.m})", path)
        if shape[ax] % self.m:
            raise ValueError(
                f"NM({self.n}, {self.m}): axis {self.axis} has length {shape[ax]}, not a multiple "
                f"of m={self.m}{_where(path)}; exclude it with where=, choose another axis, or an "
                f"m that divides {shape[ax]}"
            )

    def mask(self, scores: jax.Array) -> jax.Array:
        """Keep-mask of the ``n`` largest scores in every group (ties: higher index kept)."""
        return nm_keep(scores, self.n, self.m, axis=self.axis)


@dataclasses.dataclass(frozen=True)
class Block:
    """``h × w`` blocks over the last two axes, scored by ``reduce`` of their scores.

    Attributes:
      h, w: block extent along axes -2 and -1 (must divide them).
      reduce: ``"sum"``, ``"mean"``, ``"l2"`` (root of the sum of squares) or ``"max"``.
    """

    h: int
    w: int
    reduce: str = "l2"

    def __post_init__(self):
        for name in ("h", "w"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Block: {name}={v!r} must be a positive int")
        if self.reduce not in ("sum", "mean", "l2", "max"):
            raise ValueError(
                f"Block: reduce={self.reduce!r} must be 'sum', 'mean', 'l2' or 'max'"
            )

    def check(self, shape: tuple[int, ...], path: str | None = None) -> None:
        if len(shape) < 2:
            raise ValueError(
                f"Block({self.h}, {self.w}) needs at least 2 axes, got shape {shape}{_where(path)};"
                " exclude 1-d parameters with where= (e.g. select.ndim(min=2))"
            )
        a, b = shape[-2], shape[-1]
        if a % self.h or b % self.w:
            raise ValueError(
                f"Block({self.h}, {self.w}) does not tile the last two axes {(a, b)}"
                f"{_where(path)}; choose a block shape dividing them or exclude the parameter "
                "with where="
            )

    def group_scores(self, scores: jax.Array) -> jax.Array:
        *lead, a, b = scores.shape
        s = scores.astype(jnp.float32).reshape(*lead, a // self.h, self.h, b // self.w, self.w)
        ax = (len(lead) + 1, len(lead) + 3)
        if self.reduce == "sum":
            return s.sum(ax)
        if self.reduce == "mean":
            return s.mean(ax)
        if self.reduce == "max":
            return s.max(ax)
        return jnp.sqrt(jnp.sum(s * s, ax))

    def expand(self, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        *lead, ga, gb = keep.shape
        k = keep.reshape(*lead, ga, 1, gb, 1)
        k = jnp.broadcast_to(k, (*lead, ga, self.h, gb, self.w))
        return k.reshape(shape)

    def group_size(self, shape: tuple[int, ...]) -> int:
        del shape
        return self.h * self.w


@dataclasses.dataclass(frozen=True)
class Channel:
    """Whole channels along ``axis`` (``-1``: output channels/filters; ``-2``: inputs).

    Attributes:
      axis: the channel axis of the leaf.
      norm: ``"l2"`` or ``"l1"``: how a channel's scores are combined.
    """

    axis: int = -1
    norm: str = "l2"

    def __post_init__(self):
        if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
            raise TypeError(f"Channel: axis must be an int, got {type(self.axis).__name__}")
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"Channel: norm={self.norm!r} must be 'l1' or 'l2'")

    def check(self, shape: tuple[int, ...], path: str | None = None) -> None:
        _norm_axis(self.axis, len(shape), f"Channel(axis={self.axis})", path)

    def group_scores(self, scores: jax.Array) -> jax.Array:
        ax = self.axis % scores.ndim
        others = tuple(i for i in range(scores.ndim) if i != ax)
        s = scores.astype(jnp.float32)
        if self.norm == "l1":
            return jnp.sum(jnp.abs(s), others)
        return jnp.sqrt(jnp.sum(s * s, others))

    def expand(self, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        ax = self.axis % len(shape)
        view = [1] * len(shape)
        view[ax] = shape[ax]
        return jnp.broadcast_to(keep.reshape(view), shape)

    def group_size(self, shape: tuple[int, ...]) -> int:
        return int(np.prod(shape)) // shape[self.axis % len(shape)]


Pattern = Unstructured | NM | Block | Channel

_NM_RX = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def as_pattern(pattern: Any) -> Pattern:
    """Parses a pattern argument.

    Example:
      >>> as_pattern("2:4"), as_pattern("channel")
      (NM(n=2, m=4, axis=-1), Channel(axis=-1, norm='l2'))
    """
    if isinstance(pattern, (Unstructured, NM, Block, Channel)):
        return pattern
    if pattern is None or pattern == "unstructured":
        return Unstructured()
    if isinstance(pattern, str):
        m = _NM_RX.fullmatch(pattern)
        if m:
            return NM(int(m.group(1)), int(m.group(2)))
        if pattern in ("channel", "filter"):
            return Channel(-1)
    raise ValueError(
        f"pattern={pattern!r} is not a sparsity pattern; use 'unstructured', 'n:m' (e.g. '2:4'), "
        "'channel', or jaxcomp.prune.NM(n, m, axis=...), Block(h, w), Channel(axis=...)"
    )


def nm_keep(scores: jax.typing.ArrayLike, n: int, m: int, *, axis: int = -1) -> jax.Array:
    """Keep-mask of the ``n`` largest raw scores in each run of ``m`` along ``axis``.

    Sort-free: an element is kept when fewer than ``n`` elements of its group
    beat it (a larger score, or an equal score at a higher index). Only the
    grouped axis is split, so sharding on other axes is untouched.

    Example:
      >>> import jax.numpy as jnp
      >>> nm_keep(jnp.array([[4.0, -9.0, 2.0, 3.0]]), 2, 4).tolist()
      [[True, False, False, True]]
    """
    scores = jnp.asarray(scores)
    NM(n, m, axis).check(tuple(scores.shape))
    ax = axis % scores.ndim
    shape = tuple(scores.shape)
    grouped = shape[:ax] + (shape[ax] // m, m) + shape[ax + 1:]
    key = ordered_key(scores).reshape(grouped)
    ki = jnp.expand_dims(key, ax + 2)  # element i along ax+1
    kj = jnp.expand_dims(key, ax + 1)  # competitor j along ax+2
    idx = np.arange(m)
    later = (idx[None, :] > idx[:, None]).reshape((m, m) + (1,) * (len(shape) - ax - 1))
    beats = (kj > ki) | ((kj == ki) & later)
    rank = jnp.sum(beats, axis=ax + 2, dtype=jnp.int32)
    return (rank < n).reshape(shape)
