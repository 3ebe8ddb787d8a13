"""Ternary weights (TWN) and multiple binary bases (ABC-Net).

* :func:`ternarize`: Ternary Weight Networks' ``W_t = α · sign(W) · [|W| > Δ]``
  with ``Δ = 0.7 · mean|W|`` and ``α`` the mean of ``|W|`` over ``|W| > Δ``,
  per tensor or per filter; straight-through gradient.
* :func:`abc_bases` / :func:`abc_binarize`: ABC-Net's ``M`` shifted
  binarizations ``B_m = sign(W - mean(W) + u_m · std(W))`` combined as
  ``Σ α_m B_m``, with ``α`` the least-squares fit to ``W``.
* Compressors :func:`ternary_weights` and :func:`abc_binarization`
  (state :class:`~jaxcomp.quant.binary.core.BinaryState`; ``weight_bits`` 2 and
  ``M``; :func:`~jaxcomp.quant.binary.core.binary_export` stores them as 2-bit
  :class:`~jaxcomp.QArray` codes and as a ``2**M``-entry
  :class:`~jaxcomp.Codebook`).

References:
  Li, Zhang, Liu, "Ternary weight networks", arXiv:1605.04711.
  Lin, Zhao, Pan, "Towards accurate binary convolutional neural network",
  arXiv:1711.11294.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.base import Compressor
from jaxcomp.core.leaves import Codebook, QArray
from jaxcomp.quant.binary.core import (
    BinaryMethod,
    BinaryState,
    build_binary,
    check_weights,
    kernel_axes,
    positive_number,
    straight_through,
)

__all__ = [
    "AbcBinarizationState",
    "TernaryWeightsState",
    "abc_bases",
    "abc_binarization",
    "abc_binarize",
    "abc_shifts",
    "ternarize",
    "ternary_weights",
]

MAX_BASES = 16

TernaryWeightsState = BinaryState
AbcBinarizationState = BinaryState


def _reduced(kept: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a not in kept)


def _ternary_parts(w: jax.Array, factor: float, kept: tuple[int, ...]):
    """(int8 codes in {-1, 0, 1}, float32 α with kept dims)."""
    w32 = lax.stop_gradient(w).astype(jnp.float32)
    a = jnp.abs(w32)
    red = _reduced(kept, w.ndim)
    mean = jnp.mean(a, axis=red, keepdims=True) if red else a
    keep = a > factor * mean
    count = jnp.sum(keep, axis=red, keepdims=True) if red else keep.astype(jnp.int32)
    total = jnp.sum(jnp.where(keep, a, 0.0), axis=red, keepdims=True) if red else jnp.where(
        keep, a, 0.0)
    alpha = jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)
    codes = jnp.where(keep, jnp.where(w32 >= 0, 1, -1), 0).astype(jnp.int8)
    return codes, alpha


def _ternary_view(w: jax.Array, factor: float, kept: tuple[int, ...]) -> jax.Array:
    codes, alpha = _ternary_parts(w, factor, kept)
    return straight_through(w, (codes.astype(jnp.float32) * alpha).astype(w.dtype))


def ternarize(w: jax.typing.ArrayLike, *, delta_factor: float = 0.7,
              axis: Any = None) -> jax.Array:
    """Ternary Weight Networks: ``α · sign(W)`` where ``|W| > Δ``, else 0.

    ``Δ = delta_factor · mean|W|`` (0.7 in the paper, its approximation of
    the optimal threshold for Gaussian or uniform weights) and ``α`` is the
    mean of ``|W|`` over the weights with ``|W| > Δ`` (0 where none is),
    computed per tensor (``axis=None``, the paper) or per filter (the
    statistics reduce every axis but ``axis``). Gradient: straight through
    (``∂C/∂W = ∂C/∂W_t``).

    Args:
      w: float weights.
      delta_factor: the threshold factor, a number > 0.
      axis: ``None`` (per tensor) or the kept (per-filter) axis or axes.

    Returns:
      ``W_t`` in ``w``'s shape and dtype (values in ``{-α, 0, α}``).

    Raises:
      ValueError: ``delta_factor <= 0`` or not finite, ``axis`` out of
        range, NaN/Inf in concrete ``w``.
      TypeError: non-float ``w``, a non-numeric ``delta_factor``.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([1.0, -3.0, 0.2, 0.0])      # mean|w| = 1.05, Δ = 0.735
      >>> ternarize(w).tolist()                     # α = mean(1, 3) = 2
      [2.0, -2.0, 0.0, 0.0]

    References:
      Li, Zhang, Liu 2016, arXiv:1605.04711.
    """
    what = "ternarize"
    w = check_weights(w, what)
    factor = positive_number("delta_factor", delta_factor, what)
    return _ternary_view(w, factor, kernel_axes(axis, w.ndim, what))


def abc_shifts(num_bases: int) -> tuple[float, ...]:
    """ABC-Net's default shifts ``u_m = -1 + 2(m - 1)/(M - 1)`` (``(0,)`` for ``M = 1``).

    Example:
      >>> abc_shifts(1), abc_shifts(3)
      ((0.0,), (-1.0, 0.0, 1.0))
    """
    m = _num_bases(num_bases, "abc_shifts")
    return (0.0,) if m == 1 else tuple(float(v) for v in np.linspace(-1.0, 1.0, m))


def _num_bases(num_bases: Any, what: str) -> int:
    if isinstance(num_bases, bool) or not isinstance(num_bases, (numbers.Integral, np.integer)):
        raise TypeError(f"{what}: num_bases (M) must be an int in [1, {MAX_BASES}], got "
                        f"{num_bases!r}")
    if not 1 <= int(num_bases) <= MAX_BASES:
        raise ValueError(f"{what}: num_bases (M) = {int(num_bases)} must lie in "
                         f"[1, {MAX_BASES}]")
    return int(num_bases)


def _shifts(num_bases: Any, shifts: Any, what: str) -> tuple[float, ...]:
    m = _num_bases(num_bases, what)
    if shifts is None:
        return abc_shifts(m)
    if isinstance(shifts, (str, bytes)) or not isinstance(shifts, (Sequence, np.ndarray)):
        raise TypeError(f"{what}: shifts must be a sequence of {m} numbers, got {shifts!r}")
    out = tuple(float(u) for u in np.asarray(shifts, np.float64).reshape(-1))
    if len(out) != m or np.ndim(shifts) != 1:
        raise ValueError(f"{what}: shifts must hold num_bases={m} numbers, got {len(out)}")
    if not all(np.isfinite(out)):
        raise ValueError(f"{what}: shifts must be finite, got {out}")
    return out


def _abc_parts(w: jax.Array, shifts: tuple[float, ...]):
    """(float32 bases ±1 of shape (M, n), float32 α of shape (M,))."""
    x = lax.stop_gradient(w).astype(jnp.float32).reshape(-1)
    centred = x - jnp.mean(x)
    std = jnp.sqrt(jnp.mean(centred * centred))
    u = jnp.asarray(shifts, jnp.float32)
    bases = jnp.where(centred[None, :] + u[:, None] * std >= 0, 1.0, -1.0)
    hi = lax.Precision.HIGHEST
    gram = jnp.matmul(bases, bases.T, precision=hi)
    alpha = jnp.matmul(jnp.linalg.pinv(gram), jnp.matmul(bases, x, precision=hi), precision=hi)
    return bases, alpha


def _combine(alpha: jax.Array, signs: jax.Array) -> jax.Array:
    """``Σ_m α_m s_m`` summed in the order m = 0, 1, ... (the view and the export agree)."""
    acc = alpha[0] * signs[0]
    for m in range(1, signs.shape[0]):
        acc = acc + alpha[m] * signs[m]
    return acc


def _abc_view(w: jax.Array, shifts: tuple[float, ...]) -> jax.Array:
    bases, alpha = _abc_parts(w, shifts)
    view = _combine(alpha, bases).reshape(w.shape).astype(w.dtype)
    return straight_through(w, view, gain=jnp.sum(alpha))


def abc_bases(w: jax.typing.ArrayLike, num_bases: int = 3, *,
              shifts: Sequence[float] | None = None) -> tuple[jax.Array, jax.Array]:
    """ABC-Net's binary bases of ``w`` and their least-squares weights.

    ``B_m = sign(W - mean(W) + u_m · std(W))`` (``sign(0) = +1``; mean and
    population std over the whole tensor) for the shifts ``u_m``
    (:func:`abc_shifts` by default), and ``α = argmin ||W - Σ α_m B_m||²``,
    solved from the ``M × M`` normal equations with a pseudo-inverse (the
    minimum-norm solution when two bases coincide, as ``numpy.linalg.lstsq``).

    Args:
      w: float weights.
      num_bases: ``M``, in ``[1, 16]``.
      shifts: ``M`` finite numbers, or None for the defaults.

    Returns:
      ``(bases, alpha)``: ``±1`` of shape ``(M, *w.shape)`` in ``w``'s dtype,
      and ``α`` of shape ``(M,)`` in float32. Not differentiable (see
      :func:`abc_binarize`).

    Raises:
      ValueError: ``M < 1`` or ``M > 16``, shifts of the wrong length or not
        finite, NaN/Inf in concrete ``w``.
      TypeError: non-float ``w``, a non-int ``M``.

    Example:
      >>> import jax.numpy as jnp
      >>> b, a = abc_bases(jnp.array([-3.0, -1.0, 1.0, 3.0]), 2)   # shifts -1, +1; std = 5 ** 0.5
      >>> b.tolist(), a.round(4).tolist()
      ([[-1.0, -1.0, -1.0, 1.0], [-1.0, 1.0, 1.0, 1.0]], [1.5, 1.5])

    References:
      Lin, Zhao, Pan 2017, arXiv:1711.11294.
    """
    what = "abc_bases"
    w = check_weights(w, what)
    u = _shifts(num_bases, shifts, what)
    bases, alpha = _abc_parts(w, u)
    return bases.reshape(len(u), *w.shape).astype(w.dtype), alpha


def abc_binarize(w: jax.typing.ArrayLike, num_bases: int = 3, *,
                 shifts: Sequence[float] | None = None) -> jax.Array:
    """ABC-Net's weight approximation ``Σ_m α_m B_m`` (see :func:`abc_bases`).

    Gradient: straight through each basis (``∂B_m/∂W = 1``, shifts and ``α``
    held fixed), so ``∂C/∂W = (Σ_m α_m) · ∂C/∂W̃``.

    Args:
      w: float weights.
      num_bases: ``M``, in ``[1, 16]``.
      shifts: ``M`` finite numbers, or None for the defaults.

    Returns:
      The approximation in ``w``'s shape and dtype (at most ``2**M`` values).

    Raises:
      ValueError, TypeError: as :func:`abc_bases`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([-3.0, -1.0, 1.0, 3.0])
      >>> abc_binarize(w, 2).round(4).tolist()               # 1.5 B_1 + 1.5 B_2
      [-3.0, 0.0, 0.0, 3.0]
      >>> jax.grad(lambda w: abc_binarize(w, 2).sum())(w).round(4).tolist()
      [3.0, 3.0, 3.0, 3.0]

    References:
      Lin, Zhao, Pan 2017, arXiv:1711.11294.
    """
    what = "abc_binarize"
    w = check_weights(w, what)
    return _abc_view(w, _shifts(num_bases, shifts, what))


# ----------------------------------------------------------------------- factories


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class _Ternary(BinaryMethod):
    delta_factor: float = 0.7
    axis: Any = None

    name = "ternary_weights"

    @property
    def bits(self) -> int:
        return 2

    def check(self, path, w):
        kernel_axes(self.axis, len(w.shape), self.name, path)

    def view(self, w, key):
        return _ternary_view(w, self.delta_factor, kernel_axes(self.axis, w.ndim, self.name))

    def export(self, w):
        codes, alpha = _ternary_parts(w, self.delta_factor,
                                      kernel_axes(self.axis, w.ndim, self.name))
        return QArray(codes, alpha, jnp.int8(0), bits=2, dense_dtype=w.dtype)


def ternary_weights(*, delta_factor: float = 0.7, axis: Any = None,
                    where: Any = None) -> Compressor:
    """Ternary Weight Networks: the forward pass sees :func:`ternarize` of each selected leaf.

    The real weights are trained with the straight-through gradient; there
    is no projection (the paper keeps them unconstrained).

    Args:
      delta_factor: ``Δ = delta_factor · mean|W|`` (0.7 in the paper).
      axis: ``None`` (per tensor, the paper) or the per-filter axis (-1 for
        Flax kernels).
      where: which leaves (default: float arrays with ``ndim >= 2``).

    Returns:
      A :class:`~jaxcomp.Compressor` with state
      :class:`~jaxcomp.quant.binary.core.BinaryState` (``weight_bits=2``).

    Raises:
      ValueError: ``delta_factor <= 0``; at ``init``, an axis out of range
        (naming the path), NaN/Inf weights, an empty selection.
      TypeError: a non-numeric ``delta_factor``; a selected non-float leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"fc": {"kernel": jnp.array([[1.0, -3.0], [0.2, 0.0]]), "bias": jnp.ones(2)}}
      >>> comp = ternary_weights()
      >>> comp.apply(params, comp.init(params))["fc"]["kernel"].tolist()
      [[2.0, -2.0], [0.0, 0.0]]

    References:
      Li, Zhang, Liu 2016, arXiv:1605.04711.
    """
    what = "ternary_weights"
    factor = positive_number("delta_factor", delta_factor, what)
    kernel_axes(axis, None, what)  # the type now; the range per leaf at init
    axis = tuple(axis) if isinstance(axis, Sequence) else axis
    return build_binary(_Ternary(delta_factor=factor, axis=axis), where=where)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class _Abc(BinaryMethod):
    shifts: tuple[float, ...] = (-1.0, 0.0, 1.0)

    name = "abc_binarization"

    @property
    def bits(self) -> int:
        return len(self.shifts)

    def view(self, w, key):
        return _abc_view(w, self.shifts)

    def export(self, w):
        bases, alpha = _abc_parts(w, self.shifts)
        m = len(self.shifts)
        index = jnp.sum((bases > 0).astype(jnp.int32) << jnp.arange(m, dtype=jnp.int32)[:, None],
                        axis=0)
        k = jnp.arange(2 ** m, dtype=jnp.int32)
        patterns = jnp.where((k[None, :] >> jnp.arange(m, dtype=jnp.int32)[:, None]) & 1,
                             1.0, -1.0)
        centroids = _combine(alpha, patterns).astype(w.dtype)
        return Codebook(centroids, index.reshape(w.shape))


def abc_binarization(num_bases: int = 3, *, shifts: Sequence[float] | None = None,
                     where: Any = None) -> Compressor:
    """ABC-Net's weights: each selected leaf seen as ``Σ_m α_m B_m`` (:func:`abc_binarize`).

    ``α`` is refitted by least squares on every forward pass from the
    current real weights, which train with the straight-through gradient.

    Args:
      num_bases: ``M``, the number of binary bases, in ``[1, 16]``.
      shifts: ``M`` shifts ``u_m`` (default :func:`abc_shifts`).
      where: which leaves (default: float arrays with ``ndim >= 2``).

    Returns:
      A :class:`~jaxcomp.Compressor` with state
      :class:`~jaxcomp.quant.binary.core.BinaryState` (``weight_bits=M``).

    Raises:
      ValueError: ``M < 1`` or ``> 16``, bad shifts; at ``init``, NaN/Inf
        weights, an empty selection.
      TypeError: a non-int ``M``; a selected non-float leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([[-3.0, -1.0], [1.0, 3.0]])}
      >>> comp = abc_binarization(2)
      >>> comp.apply(params, comp.init(params))["w"].round(4).tolist()
      [[-3.0, 0.0], [0.0, 3.0]]

    References:
      Lin, Zhao, Pan 2017, arXiv:1711.11294.
    """
    u = _shifts(num_bases, shifts, "abc_binarization")
    return build_binary(_Abc(shifts=u), where=where)
