"""Binary networks: BinaryConnect, binarized activations and XNOR-Net.

Array-level functions (straight-through gradients, eager and under ``jit``):

* :func:`binarize`: BinaryConnect's ``w_b = s · sign(w)``, deterministic or
  stochastic (``+s`` with probability ``hard_sigmoid(w / s)``);
* :func:`binary_activation`: the sign activation of Binarized Neural
  Networks with the hard-tanh straight-through estimator (the gradient
  passes where ``|x| <= 1``);
* :func:`xnor_weights`: XNOR-Net's ``α · sign(W)`` with one ``α = mean|W|``
  per output filter; :func:`xnor_input_scale`: XNOR-Net's activation
  scale ``K`` (mean ``|input|`` over channels, averaged over each
  receptive field).

Compressor factories (the weight side, to put in front of the model):
:func:`binary_connect` (with ``ste="clipped"`` it is the weight side of
Binarized Neural Networks) and :func:`xnor_binarization`. Their state is a
:class:`~jaxcomp.quant.binary.core.BinaryState`: its ``__jaxcomp_info__``
reports ``weight_bits=1`` per binarized path, so
:func:`jaxcomp.metrics.analyze` counts bit-operations at 1 bit, and
:func:`~jaxcomp.quant.binary.core.binary_export` turns the binarized leaves
into :class:`~jaxcomp.QArray` leaves (1-bit codes plus their scales) whose
:func:`jaxcomp.metrics.model_size_bytes` is the real storage. Ternary
weights and multiple binary bases live in :mod:`jaxcomp.quant.binary.ternary`.

References:
  Courbariaux, Bengio, David, "BinaryConnect", arXiv:1511.00363.
  Hubara, Courbariaux et al., "Binarized neural networks", arXiv:1602.02830.
  Rastegari et al., "XNOR-Net", arXiv:1603.05279.
  Bengio, Léonard, Courville, "Estimating or propagating gradients through
  stochastic neurons", arXiv:1308.3432.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.base import Compressor
from jaxcomp.core.keys import check_key
from jaxcomp.core.leaves import QArray
from jaxcomp.quant.binary.core import (
    BinaryMethod,
    BinaryState,
    build_binary,
    check_ste,
    check_weights,
    kernel_axes,
    positive_number,
    straight_through,
)

__all__ = [
    "BinaryConnectState",
    "XnorBinarizationState",
    "binarize",
    "binary_activation",
    "binary_connect",
    "xnor_binarization",
    "xnor_input_scale",
    "xnor_weights",
]

BinaryConnectState = BinaryState
XnorBinarizationState = BinaryState


# ------------------------------------------------------------------------ functions


def _sign(x: jax.Array) -> jax.Array:
    """``+1`` where ``x >= 0``, else ``-1`` (float32)."""
    return jnp.where(x >= 0, 1.0, -1.0).astype(jnp.float32)


def _reduced(kept: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a not in kept)


def _binarize(w, scale, stochastic, key, bound):
    w32 = lax.stop_gradient(w).astype(jnp.float32)
    if stochastic:
        p = jnp.clip((w32 / scale + 1.0) / 2.0, 0.0, 1.0)  # hard_sigmoid(w / s)
        pos = jax.random.uniform(key, w.shape, jnp.float32) < p
    else:
        pos = w32 >= 0
    view = jnp.where(pos, scale, -scale).astype(w.dtype)
    return straight_through(w, view, bound=bound)


def binarize(w: jax.typing.ArrayLike, *, scale: float = 1.0, stochastic: bool = False,
             key: jax.Array | None = None, ste: str = "identity") -> jax.Array:
    """BinaryConnect's binarization ``w_b = scale · sign(w)`` (``sign(0) = +1``).

    Deterministic: ``+scale`` where ``w >= 0``, else ``-scale``. Stochastic:
    ``+scale`` with probability ``p = hard_sigmoid(w / scale) = clip((w / scale
    + 1) / 2, 0, 1)``, else ``-scale``. Gradient (straight-through):
    ``ste="identity"`` passes it unchanged (BinaryConnect, whose real
    weights are kept in ``[-scale, scale]``), ``ste="clipped"`` only where
    ``|w| <= scale`` (the hard-tanh estimator of Binarized Neural Networks).

    Args:
      w: float weights.
      scale: the binary magnitude (1 in the papers; their code uses Glorot's
        bound, see :func:`binary_connect`).
      stochastic: stochastic binarization (needs ``key``).
      key: PRNG key for ``stochastic=True``.
      ste: ``"identity"`` or ``"clipped"``.

    Returns:
      An array of ``w``'s shape and dtype holding ``±scale``.

    Raises:
      ValueError: ``scale`` not a finite number > 0, ``stochastic`` without
        ``key``, an unknown ``ste``, NaN/Inf in concrete ``w``.
      TypeError: non-float ``w``, a malformed key.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([0.3, -0.2, 0.0, 1.5])
      >>> binarize(w).tolist()
      [1.0, -1.0, 1.0, 1.0]
      >>> jax.grad(lambda w: binarize(w, ste="clipped").sum())(w).tolist()
      [1.0, 1.0, 1.0, 0.0]

    References:
      Courbariaux, Bengio, David 2015, arXiv:1511.00363; Hubara et al. 2016,
      arXiv:1602.02830.
    """
    what = "binarize"
    w = check_weights(w, what)
    s = positive_number("scale", scale, what)
    ste = check_ste(ste, what)
    if stochastic:
        if key is None:
            raise ValueError(f"{what}: stochastic=True needs key=jax.random.key(...)")
        check_key(key, f"{what}(key=)")
    return _binarize(w, s, bool(stochastic), key, s if ste == "clipped" else None)


def binary_activation(x: jax.typing.ArrayLike, *, ste: str = "clipped") -> jax.Array:
    """The sign activation of Binarized Neural Networks: ``+1`` where ``x >= 0``, else ``-1``.

    Call it in the model where a layer's input is binarized. Gradient:
    ``ste="clipped"`` (default) passes it where ``|x| <= 1`` and cancels it
    elsewhere (the hard-tanh straight-through estimator); ``"identity"``
    passes it everywhere.

    Args:
      x: float activations.
      ste: ``"clipped"`` or ``"identity"``.

    Returns:
      ``±1`` in ``x``'s shape and dtype.

    Raises:
      TypeError: non-float ``x``.
      ValueError: an unknown ``ste``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.array([-0.5, 0.0, 2.0])
      >>> binary_activation(x).tolist(), jax.grad(lambda x: binary_activation(x).sum())(x).tolist()
      ([-1.0, 1.0, 1.0], [1.0, 1.0, 0.0])

    References:
      Hubara, Courbariaux et al. 2016, arXiv:1602.02830.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"binary_activation: x has dtype {x.dtype}; pass float activations")
    ste = check_ste(ste, "binary_activation")
    view = _sign(lax.stop_gradient(x)).astype(x.dtype)
    return straight_through(x, view, bound=1.0 if ste == "clipped" else None)


def _xnor(w, kept, bound):
    w32 = w.astype(jnp.float32)
    red = _reduced(kept, w.ndim)
    alpha = jnp.mean(jnp.abs(w32), axis=red, keepdims=True) if red else jnp.abs(w32)
    s = straight_through(w32, _sign(lax.stop_gradient(w32)), bound=bound)
    return (alpha * s).astype(w.dtype), lax.stop_gradient(alpha)


def xnor_weights(w: jax.typing.ArrayLike, *, axis: Any = -1, ste: str = "clipped") -> jax.Array:
    """XNOR-Net's binary weights ``α · sign(W)`` with ``α = mean|W|`` per output filter.

    ``α`` is the mean of ``|W|`` over every axis but ``axis`` (a Flax kernel
    keeps its output channels last: ``(in, out)`` or ``(h, w, in, out)``),
    the least-squares optimal scale of ``sign(W)``. Gradient: the chain rule
    through ``α`` (its diagonal part is the paper's ``1/n`` term) with the
    straight-through estimator for ``sign`` (``ste="clipped"``: only where
    ``|W| <= 1``, as in the paper; ``"identity"``: everywhere).

    Args:
      w: float weights.
      axis: the kept (per-filter) axis or axes; ``None``: one ``α`` per tensor.
      ste: ``"clipped"`` or ``"identity"``.

    Returns:
      ``α · sign(W)`` in ``w``'s shape and dtype.

    Raises:
      ValueError: ``axis`` out of range, NaN/Inf in concrete ``w``, an unknown ``ste``.
      TypeError: non-float ``w``.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[1.0, -0.5], [-3.0, 0.5]])      # (in, out): alphas 2.0 and 0.5
      >>> xnor_weights(w).tolist()
      [[2.0, -0.5], [-2.0, 0.5]]

    References:
      Rastegari et al. 2016, arXiv:1603.05279.
    """
    what = "xnor_weights"
    w = check_weights(w, what)
    kept = kernel_axes(axis, w.ndim, what)
    ste = check_ste(ste, what)
    return _xnor(w, kept, 1.0 if ste == "clipped" else None)[0]


def xnor_input_scale(x: jax.typing.ArrayLike, *, window: Sequence[int] | None = None,
                     strides: Sequence[int] | None = None, padding: Any = "VALID",
                     axis: int = -1) -> jax.Array:
    """XNOR-Net's activation scale ``K``: mean ``|x|`` over channels, averaged per receptive field.

    ``A = mean(|x|, axis)`` (kept as a size-1 axis). For a dense layer
    (``window=None``) ``K = A``: one scale per example. For a convolution
    over ``x`` in ``(batch, *spatial, channels)`` layout, ``K`` is ``A``
    convolved with the ``1/prod(window)`` box filter of the layer's window,
    strides and padding (zero padding counts, as the paper's ``k``), so it
    has the convolution output's spatial shape. The binary layer then
    computes ``layer(binary_activation(x), xnor_weights(W)) * K``.

    Args:
      x: float activations.
      window: the convolution's window (one size per spatial axis) or None.
      strides: its strides (default all 1).
      padding: ``"VALID"``, ``"SAME"`` or one ``(low, high)`` pair per spatial axis.
      axis: the channel axis (must be the last one with a window).

    Returns:
      ``K`` in ``x``'s dtype: ``x``'s shape with ``axis`` of size 1 (dense),
      or ``(batch, *out_spatial, 1)``.

    Raises:
      ValueError: a window/stride length that does not match the spatial
        rank, non-positive sizes, an axis out of range.
      TypeError: non-float ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> xnor_input_scale(jnp.array([[1.0, -3.0], [0.5, 0.5]])).tolist()
      [[2.0], [0.5]]
      >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
      >>> xnor_input_scale(x, window=(2, 2)).reshape(-1).tolist()
      [2.0, 3.0, 5.0, 6.0]

    References:
      Rastegari et al. 2016, arXiv:1603.05279 (Sec. 3.2, the matrix ``K``).
    """
    what = "xnor_input_scale"
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what}: x has dtype {x.dtype}; pass float activations")
    (ax,) = kernel_axes(axis, x.ndim, what, "x")
    a = jnp.mean(jnp.abs(x.astype(jnp.float32)), axis=ax, keepdims=True)
    if window is None:
        if strides is not None:
            raise ValueError(f"{what}: strides= needs window= (the convolution's window)")
        return a.astype(x.dtype)
    if ax != x.ndim - 1:
        raise ValueError(f"{what}: with window= the channel axis must be the last one "
                         f"(batch, *spatial, channels); got axis={axis}")
    n_sp = x.ndim - 2
    window = tuple(window)
    strides = (1,) * n_sp if strides is None else tuple(strides)
    for name, v in (("window", window), ("strides", strides)):
        if len(v) != n_sp or not all(isinstance(i, (numbers.Integral, np.integer)) and i >= 1
                                     for i in v):
            raise ValueError(f"{what}: {name}={v!r} must hold {n_sp} positive ints (one per "
                             f"spatial axis of x with shape {x.shape})")
    pad = padding if isinstance(padding, str) else [(0, 0), *[tuple(p) for p in padding], (0, 0)]
    total = lax.reduce_window(a, 0.0, lax.add, (1, *window, 1), (1, *strides, 1), pad)
    return (total / math.prod(window)).astype(x.dtype)


# ----------------------------------------------------------------------- factories


def _glorot(shape: tuple[int, ...]) -> float:
    if len(shape) < 2:
        fan_in = fan_out = max(1, math.prod(shape))
    else:
        rf = math.prod(shape[:-2])
        fan_in, fan_out = rf * shape[-2], rf * shape[-1]
    return math.sqrt(1.5 / (fan_in + fan_out))


def _one_bit(w: jax.Array, scale: jax.Array) -> QArray:
    codes = (lax.stop_gradient(w) >= 0).astype(jnp.uint8)
    return QArray(codes, (2.0 * scale).astype(jnp.float32), jnp.float32(0.5), bits=1,
                  dense_dtype=w.dtype)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class _BinaryConnect(BinaryMethod):
    scale: float | str = 1.0
    stochastic: bool = False
    ste: str = "identity"
    clip: bool = True

    name = "binary_connect"

    @property
    def bits(self) -> int:
        return 1

    @property
    def clips(self) -> bool:
        return self.clip

    def scale_of(self, shape: tuple[int, ...]) -> float:
        return _glorot(tuple(shape)) if self.scale == "glorot" else float(self.scale)

    def view(self, w, key):
        s = self.scale_of(w.shape)
        return _binarize(w, s, self.stochastic, key, s if self.ste == "clipped" else None)

    def export(self, w):
        return _one_bit(w, jnp.float32(self.scale_of(w.shape)))

    def project(self, w):
        s = self.scale_of(w.shape)
        return jnp.clip(w, -s, s).astype(w.dtype)


def binary_connect(*, scale: float | str = 1.0, stochastic: bool = False,
                   key: jax.Array | None = None, ste: str = "identity", clip: bool = True,
                   where: Any = None) -> Compressor:
    """BinaryConnect: the forward pass sees ``±scale`` weights, the optimizer updates real ones.

    The view is :func:`binarize` of each selected leaf; gradients pass
    straight through to the real-valued weights, which ``project`` clips to
    ``[-scale, scale]`` after every optimizer step (``clip=True``, as in the
    paper; :func:`jaxcomp.keep_compressed` or ``make_train_step`` apply it).
    With ``ste="clipped"`` and :func:`binary_activation` in the model this
    is the weight side of Binarized Neural Networks. A stochastic view draws
    new noise at every ``update`` (``due=None``: loops run it every step);
    at test time evaluate the real weights or :func:`binary_export`'s
    deterministic ``sign``.

    Args:
      scale: the binary magnitude: a positive number (1 in the papers) or
        ``"glorot"``: per leaf ``sqrt(1.5 / (fan_in + fan_out))`` (the ``H``
        of the authors' code; fans include the receptive field of a conv
        kernel ``(..., in, out)``), which keeps layers' outputs at the scale
        of a Glorot initialisation when the model has no batch norm.
      stochastic: stochastic binarization (needs ``key``).
      key: PRNG key of the stochastic view.
      ste: ``"identity"`` (BinaryConnect) or ``"clipped"`` (BNN).
      clip: keep the real weights in ``[-scale, scale]`` (``project``).
      where: which leaves (default: float arrays with ``ndim >= 2``).

    Returns:
      A :class:`~jaxcomp.Compressor` with state :class:`BinaryState`
      (``weight_bits=1``).

    Raises:
      ValueError: a bad ``scale`` or ``ste``, ``stochastic`` without ``key``;
        at ``init``, NaN/Inf weights or an empty selection (naming paths).
      TypeError: a malformed key; a selected non-float leaf.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"fc": {"kernel": jnp.array([[0.3, -2.0], [0.0, 0.1]]), "bias": jnp.ones(2)}}
      >>> comp = binary_connect()
      >>> state = comp.init(params)
      >>> comp.apply(params, state)["fc"]["kernel"].tolist()
      [[1.0, -1.0], [1.0, 1.0]]
      >>> comp.project(params, state)["fc"]["kernel"].tolist()
      [[0.30000001192092896, -1.0], [0.0, 0.10000000149011612]]

    References:
      Courbariaux, Bengio, David 2015, arXiv:1511.00363; Hubara et al. 2016,
      arXiv:1602.02830.
    """
    what = "binary_connect"
    if not (isinstance(scale, str) and scale == "glorot"):
        if isinstance(scale, str):
            raise ValueError(f"{what}: scale={scale!r} must be a positive number or 'glorot'")
        scale = positive_number("scale", scale, what)
    method = _BinaryConnect(scale=scale, stochastic=bool(stochastic), ste=check_ste(ste, what),
                            clip=bool(clip))
    return build_binary(method, where=where, key=key)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class _Xnor(BinaryMethod):
    axis: Any = -1
    ste: str = "clipped"

    name = "xnor_binarization"

    @property
    def bits(self) -> int:
        return 1

    def check(self, path, w):
        kernel_axes(self.axis, len(w.shape), self.name, path)

    def view(self, w, key):
        kept = kernel_axes(self.axis, w.ndim, self.name)
        return _xnor(w, kept, 1.0 if self.ste == "clipped" else None)[0]

    def export(self, w):
        alpha = _xnor(w, kernel_axes(self.axis, w.ndim, self.name), None)[1]
        return _one_bit(w, alpha)


def xnor_binarization(*, axis: Any = -1, ste: str = "clipped", act_bits: int | None = None,
                      where: Any = None) -> Compressor:
    """XNOR-Net's weights: ``α · sign(W)`` per output filter (:func:`xnor_weights`).

    By default the first and the last kernel stay full precision, as in the
    paper: ``where=None`` takes the float arrays with ``ndim >= 2`` of the
    tree the compressor is given, ordered by path with numbers compared as
    numbers (``fc2`` before ``fc10``; Flax's ``Dense_2`` before ``Dense_10``),
    and leaves out the first and the last. That is the layer order when
    layer names follow it (``conv1 … fc2``); pass ``where=`` when they do
    not, or to binarize every kernel. The activation side (binary inputs
    scaled by ``K``) is in the model: :func:`binary_activation` and
    :func:`xnor_input_scale`; set ``act_bits=1`` to report it to the
    metrics.

    Args:
      axis: the per-filter axis (Flax kernels: -1); ``None``: one ``α`` per tensor.
      ste: ``"clipped"`` (the paper) or ``"identity"``.
      act_bits: input bit width reported to the metrics (``None``: not reported).
      where: which leaves (default: see above).

    Returns:
      A :class:`~jaxcomp.Compressor` with state :class:`BinaryState`
      (``weight_bits=1``); it has no ``project``.

    Raises:
      ValueError: an unknown ``ste``, bad ``act_bits``; at ``init``, an axis
        out of range (naming the path), NaN/Inf weights, two or fewer kernels
        with the default ``where``.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {f"fc{i}": {"kernel": jnp.ones((2, 2))} for i in (1, 2, 3)}
      >>> xnor_binarization().init(params).method.paths
      ('fc2/kernel',)

    References:
      Rastegari et al. 2016, arXiv:1603.05279.
    """
    what = "xnor_binarization"
    if act_bits is not None and (isinstance(act_bits, bool) or not isinstance(act_bits, int)
                                 or not 1 <= act_bits <= 32):
        raise ValueError(f"{what}: act_bits={act_bits!r} must be None or an int in [1, 32]")
    kernel_axes(axis, None, what)  # the type now; the range per leaf at init
    axis = tuple(axis) if isinstance(axis, Sequence) else axis
    method = _Xnor(axis=axis, ste=check_ste(ste, what), act_bits=act_bits)
    return build_binary(method, where=where, exclude_ends=True)
