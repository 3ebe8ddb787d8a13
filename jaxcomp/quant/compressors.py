"""Quantization-aware training compressors: fake quantization and LSQ.

:func:`fake_quantization` quantizes the selected weights in ``apply``
(quantize-dequantize with a straight-through gradient), so the model trains
against its quantized weights while the stored float weights keep the small
updates. :func:`lsq_quantization` does the same with LSQ's learned step
sizes (:mod:`jaxcomp.quant.learned`).

Mixed precision: ``bits`` is a scalar, a ``{regex: bits}`` map or a list of
``(pattern, bits)`` pairs (first match wins; every selected weight must be
matched) or a ``(path, leaf) -> bits`` callable
(:func:`jaxcomp.select.per_leaf`).

Both states report each selected weight's bit width through
``__jaxcomp_info__`` (:class:`~jaxcomp.core.info.LeafInfo`), so
``jaxcomp.metrics.analyze(..., compression=state)`` counts bit operations at
the real widths, and :func:`jaxcomp.quant.export.export_quantized` turns the weights into
:class:`~jaxcomp.core.leaves.QArray` codes whose
``jaxcomp.metrics.model_size_bytes`` is the stored size.

Composition with pruning: in ``jc.chain(magnitude_pruning(...),
fake_quantization(8))`` the quantizer sees the pruned view. Zero is a code of
every grid here (symmetric grids have zero point 0; asymmetric ranges always
contain 0 and their zero point is an integer), so pruned weights stay exactly
zero, and exact zeros never enter the calibration statistics, so scales are
computed on the surviving weights.

References:
  Jacob et al. 2018, arXiv:1712.05877 · Krishnamoorthi 2018,
  arXiv:1806.08342 · Esser et al. 2020, arXiv:1902.08153 · Han et al. 2016,
  arXiv:1510.00149 (prune, then quantize).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.base import Compressor, EmptyState, never_due
from jaxcomp.core.errors import concrete
from jaxcomp.core.info import LeafInfo
from jaxcomp.core.keys import check_key
from jaxcomp.core.leaves import CompressedLeaf
from jaxcomp.quant.calibration import calibrate, check_method
from jaxcomp.quant.grid import (
    MIN_SCALE,
    check_finite_weights,
    check_rounding,
    reduction_plan,
    validate_bits,
)
from jaxcomp.quant.learned import LsqArray, lsq_fake_quant, lsq_init_step
from jaxcomp.quant.uniform import fake_quant
from jaxcomp.select import selectors
from jaxcomp.select.leafrules import LeafRule, per_leaf
from jaxcomp.select.selection import Selected, flatten

__all__ = [
    "DYNAMIC_METHODS",
    "FakeQuantizationState",
    "LsqQuantizationState",
    "QuantLayout",
    "fake_quantization",
    "lsq_params",
    "lsq_quantization",
]

DYNAMIC_METHODS = ("absmax", "minmax")
"""Calibrations cheap enough to run in every ``apply`` (no state, nothing to update)."""


@dataclasses.dataclass(frozen=True)
class QuantLayout:
    """Static description of a quantizer's grid per parameter path (a pytree with no leaves).

    Attributes:
      entries: ``((path, bits), ...)`` for every quantized weight.
      axis: channel axis (None: per tensor).
      group_size: per-group block size (None: none).
      group_axis: the grouped axis (None: the default).
      symmetric: signed narrow grid (True) or unsigned with a zero point.
      method: calibration method.
    """

    entries: tuple[tuple[str, int], ...]
    axis: Any = -1
    group_size: int | None = None
    group_axis: int | None = None
    symmetric: bool = True
    method: str = "absmax"

    def bits_of(self) -> dict[str, int]:
        """``{path: bits}``."""
        return dict(self.entries)

    def info(self) -> dict[str, LeafInfo]:
        """``{path: LeafInfo(weight_bits=bits)}`` for :func:`jaxcomp.compression_info`."""
        return {p: LeafInfo(weight_bits=b) for p, b in self.entries}


jax.tree_util.register_static(QuantLayout)


class FakeQuantizationState(NamedTuple):
    """State of :func:`fake_quantization`.

    Attributes:
      scale: float32 scales with the params' structure (MaskedNode at
        leaves not quantized) for calibrated methods (``"percentile"``,
        ``"mse"``); an empty :class:`~jaxcomp.EmptyState` when ``apply``
        computes them (``"absmax"``, ``"minmax"``).
      zero_point: integer-valued float32 zero points, like ``scale``.
      key: the PRNG key of this step's stochastic rounding
        (:class:`~jaxcomp.EmptyState` with ``rounding="nearest"``).
      count: number of calibrations so far (int32).
      layout: the static :class:`QuantLayout` (bit widths per path).

    ``__jaxcomp_info__`` reports each quantized weight's bit width.
    """

    scale: Any
    zero_point: Any
    key: Any
    count: jax.Array
    layout: QuantLayout

    def __jaxcomp_info__(self) -> dict[str, LeafInfo]:
        return self.layout.info()


class LsqQuantizationState(NamedTuple):
    """State of :func:`lsq_quantization`: only the static :class:`QuantLayout`.

    The learned step sizes are params (:class:`~jaxcomp.quant.learned.LsqArray`).
    """

    layout: QuantLayout

    def __jaxcomp_info__(self) -> dict[str, LeafInfo]:
        return self.layout.info()


def _default_where() -> selectors.Selector:
    return (selectors.ndim(min=2) & selectors.dtype("float")
            & ~selectors.leaf_type(CompressedLeaf))


_HINT = ("Select at least one weight (e.g. where=r'.*/kernel'); the default takes float arrays "
         "with ndim >= 2.")


def _bits_validator(symmetric: bool):
    def validate(value: Any, label: str) -> int:
        b = validate_bits(value, label)
        if symmetric and b == 1:
            raise ValueError(f"{label}=1 with symmetric=True leaves only the code 0; use "
                             "symmetric=False or at least 2 bits")
        return b

    return validate


def _check_bits_rule(bits: Any, name: str, symmetric: bool) -> None:
    """Checks a scalar or every rule value now (a callable's values are checked per leaf)."""
    LeafRule(bits, what=f"{name}: bits", validate=_bits_validator(symmetric))


def _bits_rule(bits: Any, sel: Selected, name: str, symmetric: bool) -> list[int]:
    return per_leaf(bits, sel, what=f"{name}: bits", noun="quantized weight",
                    validate=_bits_validator(symmetric),
                    hint="Add a last rule r'.*' or narrow where= to the weights the rules cover.")


def _check_leaf(name: str, path: str, leaf: Any, axis: Any, group_size: Any,
                group_axis: Any) -> None:
    dt = getattr(leaf, "dtype", None)
    if is_lsq := isinstance(leaf, LsqArray):
        dt = leaf.weight.dtype
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{name}: parameter '{path}' has dtype {dt}; only float weights are "
                        "quantized. Exclude it with where=.")
    if isinstance(leaf, CompressedLeaf) and not is_lsq:
        raise TypeError(f"{name}: parameter '{path}' is a {type(leaf).__name__} (a compressed "
                        "leaf); exclude it with where= or jaxcomp.materialize the tree first")
    reduction_plan(np.shape(leaf) if not is_lsq else leaf.shape, axis=axis,
                   group_size=group_size, group_axis=group_axis, what=f"{name}: '{path}'")


def _select(params: Any, where: Any, name: str, bits: Any, symmetric: bool, axis: Any,
            group_size: Any, group_axis: Any, default: Any) -> tuple[Selected, list[int]]:
    sel = flatten(params, where, what=name, default=default, hint=_HINT,
                  noun="weight",
                  leaf_check=lambda p, x: _check_leaf(name, p, x, axis, group_size, group_axis))
    return sel, _bits_rule(bits, sel, name, symmetric)


def _check_period(value: Any, what: str) -> Any:
    """A positive int (also from a concrete array); a traced value is kept as is."""
    if isinstance(value, jax.core.Tracer):
        return value  # injected by jaxcomp.inject_hyperparams under jit
    host = concrete(value)
    ok = host is not None and host.shape == () and (
        np.issubdtype(host.dtype, np.integer) and not isinstance(value, bool))
    if not ok or int(host) < 1:
        raise ValueError(f"{what}={value!r} must be a positive int (steps between updates)")
    return int(host)


# --------------------------------------------------------------------------- fake_quantization


def fake_quantization(
    bits: Any = 8,
    *,
    where: Any = None,
    axis: Any = -1,
    symmetric: bool = True,
    group_size: int | None = None,
    group_axis: int | None = None,
    calibration: str = "absmax",
    percentile: Any = 99.99,
    n_grid: int = 100,
    update_every: int = 100,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    ste: str = "clipped",
) -> Compressor:
    """Fake-quantizes the selected weights in ``apply`` (quantization-aware training).

    ``apply`` returns ``fake_quant(w, scale=s, zero_point=z)`` for every
    selected weight (:func:`~jaxcomp.quant.uniform.fake_quant`): the forward
    pass sees quantized weights, the gradient reaches the stored float
    weights straight through (``ste="clipped"``: 1 inside the clipping
    range, 0 outside; ``"identity"``: 1 everywhere).

    Where the scales come from:

    * ``calibration="absmax"`` or ``"minmax"``: computed from the current
      weights in every ``apply`` (constants for the gradient). The state holds
      no scales, ``update`` changes nothing and ``due`` is
      :func:`jaxcomp.never_due`.
    * ``calibration="percentile"`` or ``"mse"``: computed by ``init`` and
      recomputed by ``update`` every ``update_every`` steps (``due``), held
      in the state between (:mod:`jaxcomp.quant.calibration`).

    With ``rounding="stochastic"`` the state holds this step's key,
    ``fold_in(key, step)``, set by ``update`` on every step (``due`` is
    ``None``: loops run ``update`` on every step).

    Args:
      bits: bit width (``[1, 16]``; ``[2, 16]`` symmetric) or a per-weight
        rule (see the module docstring).
      where: which weights (default: float arrays with ``ndim >= 2``).
      axis: channel axis with its own scale (default -1, the output channels
        of Dense and Conv kernels); None for one scale per tensor.
      symmetric: signed narrow grid with zero point 0, or unsigned with an
        integer zero point.
      group_size, group_axis: per-group scales (see
        :func:`~jaxcomp.quant.uniform.compute_scale`).
      calibration: ``"absmax"``, ``"minmax"``, ``"percentile"`` or ``"mse"``.
      percentile: for ``"percentile"``, in ``(50, 100]``.
      n_grid: for ``"mse"``, the number of clipping ratios tried.
      update_every: recalibration period of ``"percentile"``/``"mse"`` (> 0).
      rounding: ``"nearest"`` or ``"stochastic"`` (needs ``key``).
      key: PRNG key for stochastic rounding.
      ste: ``"clipped"`` or ``"identity"``.

    Returns:
      A :class:`~jaxcomp.Compressor` with state :class:`FakeQuantizationState`.

    Raises:
      ValueError: bits outside the range (naming the rule and path), an
        unknown calibration, rounding or ste, a missing key, an axis out of
        range or a group size that does not divide a weight's axis (naming
        the path), NaN/Inf in concrete weights (naming the path), a where
        that selects nothing.
      TypeError: a non-float selected leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([[0.9, 0.2], [-0.6, -1.0]]), "b": jnp.ones(2)}
      >>> comp = fake_quantization(2)
      >>> state = comp.init(params)
      >>> comp.apply(params, state)["w"].tolist()  # per output channel: steps 0.9 and 1.0
      [[0.8999999761581421, 0.0], [-0.8999999761581421, -1.0]]
      >>> state.__jaxcomp_info__()["w"].weight_bits
      2

    References:
      Jacob et al. 2018, arXiv:1712.05877; Krishnamoorthi 2018, arXiv:1806.08342.
    """
    name = "fake_quantization"
    check_method(calibration, f"{name}: calibration")
    check_rounding(name, rounding, key, ste)
    if key is not None:
        key = check_key(key, f"{name}: key")
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"{name}: symmetric must be a bool, got {symmetric!r}")
    update_every = _check_period(update_every, f"{name}: update_every")
    dynamic = calibration in DYNAMIC_METHODS
    stochastic = rounding == "stochastic"
    _check_bits_rule(bits, name, symmetric)

    def select(params):
        return _select(params, where, name, bits, symmetric, axis, group_size, group_axis,
                       _default_where())

    def scales(sel: Selected, bl: list[int]) -> tuple[list, list]:
        out_s, out_z = [], []
        for p, w, b in zip(sel.sel_paths, sel.sel_leaves, bl):
            check_finite_weights(w, name, p)
            # Exact zeros (pruned weights) are left out of the statistics; absmax/minmax
            # ranges always contain 0, so they need no mask.
            s, z = calibrate(w, bits=b, method=calibration, axis=axis, group_size=group_size,
                             group_axis=group_axis, symmetric=symmetric,
                             mask=None if dynamic else w != 0, percentile=percentile,
                             n_grid=n_grid)
            out_s.append(jax.lax.stop_gradient(s))
            out_z.append(jax.lax.stop_gradient(z))
        return out_s, out_z

    def layout(sel, bl):
        return QuantLayout(tuple(zip(sel.sel_paths, bl)), axis, group_size, group_axis,
                           bool(symmetric), calibration)

    def init(params):
        sel, bl = select(params)
        for p, w in zip(sel.sel_paths, sel.sel_leaves):
            check_finite_weights(w, name, p)
        if dynamic:
            s_tree, z_tree = EmptyState(), EmptyState()
        else:
            s, z = scales(sel, bl)
            s_tree, z_tree = sel.masked(s), sel.masked(z)
        k = jax.random.fold_in(key, 0) if stochastic else EmptyState()
        return FakeQuantizationState(s_tree, z_tree, k, jnp.zeros((), jnp.int32),
                                     layout(sel, bl))

    def apply(params, state):
        sel, bl = select(params)
        if dynamic:
            s, z = scales(sel, bl)
        else:
            s = sel.of_masked(state.scale, "the state's scales", check_shapes=False)
            z = sel.of_masked(state.zero_point, "the state's zero points", check_shapes=False)
        out = []
        for i, (p, w, b, si, zi) in enumerate(zip(sel.sel_paths, sel.sel_leaves, bl, s, z)):
            check_finite_weights(w, name, p)
            k = jax.random.fold_in(state.key, i) if stochastic else None
            out.append(fake_quant(w, bits=b, symmetric=symmetric, scale=si,
                                  zero_point=None if symmetric else zi, rounding=rounding,
                                  key=k, ste=ste))
        return sel.rebuild(out)

    def due(step):
        if stochastic:
            return True
        if dynamic:
            return False
        if isinstance(step, (jax.Array, jax.core.Tracer)) or not isinstance(update_every, int):
            return jnp.asarray(step) % update_every == 0
        return int(step) % update_every == 0

    def update(params, state, *, step, grads=None, **extra):
        del grads, extra
        sel, bl = select(params)
        new = state
        if stochastic:
            new = new._replace(key=jax.random.fold_in(key, jnp.asarray(step, jnp.int32)))
        if dynamic:
            return params, new
        old_s = sel.of_masked(state.scale, "the state's scales", check_shapes=False)
        old_z = sel.of_masked(state.zero_point, "the state's zero points", check_shapes=False)

        def recal(_):
            s, z = scales(sel, bl)
            return s, z, state.count + 1

        def keep(_):
            return list(old_s), list(old_z), state.count

        do = due(step)
        if isinstance(do, (jax.Array, jax.core.Tracer)):
            s, z, c = jax.lax.cond(do, recal, keep, None)
        else:
            s, z, c = recal(None) if do else keep(None)
        return params, new._replace(scale=sel.masked(s), zero_point=sel.masked(z), count=c)

    due_fn = None if stochastic else (never_due if dynamic else due)
    return Compressor(init, apply, update, None, due_fn, None)


# --------------------------------------------------------------------------- LSQ


def _lsq_where() -> selectors.Selector:
    return _default_where() | selectors.leaf_type(LsqArray)


def lsq_params(
    params: Any,
    bits: Any = 4,
    *,
    where: Any = None,
    axis: Any = -1,
    symmetric: bool = True,
) -> Any:
    """Replaces the selected weights by :class:`~jaxcomp.quant.learned.LsqArray` leaves.

    Each selected weight ``w`` becomes ``LsqArray(w, step)`` with LSQ's
    initial step ``2 · mean|w| / sqrt(Q_P)`` (per channel along ``axis``);
    both are trainable params from then on.

    Args:
      params: the parameter tree.
      bits: bit width or per-weight rule (see the module docstring).
      where: which weights (default: float arrays with ``ndim >= 2``).
      axis: channel axis with its own step (None: one step per tensor).
      symmetric: signed narrow grid (weights) or unsigned (non-negative
        inputs).

    Returns:
      The params with ``LsqArray`` leaves in place of the selected weights.

    Raises:
      ValueError, TypeError: as :func:`fake_quantization`.

    Example:
      >>> import jax.numpy as jnp
      >>> p = lsq_params({"w": jnp.array([[1.0, -2.0], [3.0, 0.0]])}, bits=4)
      >>> type(p["w"]).__name__, p["w"].step.shape, p["w"].bits
      ('LsqArray', (1, 2), 4)

    References:
      Esser et al. 2020, arXiv:1902.08153.
    """
    name = "lsq_params"
    sel, bl = _select(params, where, name, bits, symmetric, axis, None, None, _default_where())
    out = []
    for p, w, b in zip(sel.sel_paths, sel.sel_leaves, bl):
        check_finite_weights(w, name, p)
        out.append(LsqArray(w, lsq_init_step(w, bits=b, axis=axis, symmetric=symmetric),
                            bits=b, symmetric=symmetric))
    return sel.rebuild(out)


def lsq_quantization(
    bits: Any = 4,
    *,
    where: Any = None,
    axis: Any = -1,
    symmetric: bool = True,
) -> Compressor:
    """LSQ quantization-aware training: learned step sizes that live in the params.

    Design: a step size is trained by the optimizer like a weight (LSQ trains
    both with the same SGD), so it must be a param, not compressor state —
    no training loop differentiates the loss w.r.t. a compressor's state, and
    ``grads=`` in ``update`` only carries the gradient w.r.t. the weights,
    which is zero for clipped weights and so cannot give the step's gradient.
    :func:`lsq_params` therefore puts each weight with its step into an
    :class:`~jaxcomp.quant.learned.LsqArray` leaf of the params, and this
    compressor

    * ``apply``: materializes those leaves (``round(clip(w/s)) · s`` with
      LSQ's gradients for ``w`` and ``s``); a selected weight that is still a
      plain array is quantized with LSQ's initial step computed from the
      current weights (a constant, like :func:`fake_quantization`'s absmax:
      call :func:`lsq_params` to make the steps trainable);
    * ``project``: keeps learned steps positive (``>= MIN_SCALE``), for
      :func:`jaxcomp.keep_compressed`;
    * ``update``: changes nothing (``due`` is :func:`jaxcomp.never_due`).

    The state reports the bit widths (the ``LsqArray`` leaves' own bits for
    leaves already converted).

    Args:
      bits: bit width or per-weight rule for plain-array weights.
      where: which weights (default: float arrays with ``ndim >= 2`` and
        every ``LsqArray``).
      axis: channel axis of the steps computed for plain arrays.
      symmetric: grid for plain arrays.

    Returns:
      A :class:`~jaxcomp.Compressor` with state :class:`LsqQuantizationState`.

    Raises:
      ValueError, TypeError: as :func:`fake_quantization`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = lsq_params({"w": jnp.array([[0.3, -1.0], [0.1, 0.6]])}, bits=3, axis=None)
      >>> comp = lsq_quantization(3)
      >>> state = comp.init(params)
      >>> loss = lambda p: jnp.sum((comp.apply(p, state)["w"] - 0.5) ** 2)
      >>> g = jax.grad(loss)(params)
      >>> g["w"].step.shape, bool(g["w"].step != 0)  # the step size gets a gradient
      ((1, 1), True)

    References:
      Esser et al. 2020, arXiv:1902.08153.
    """
    name = "lsq_quantization"
    _check_bits_rule(bits, name, symmetric)

    def select(params):
        sel = flatten(params, where, what=name, default=_lsq_where(), hint=_HINT, noun="weight",
                      leaf_check=lambda p, x: _check_leaf(name, p, x, axis, None, None))
        plain = [i for i, x in enumerate(sel.sel_leaves) if not isinstance(x, LsqArray)]
        bl = [x.bits if isinstance(x, LsqArray) else None for x in sel.sel_leaves]
        if plain:
            sub = Selected(sel.what, sel.treedef, sel.paths, sel.leaves,
                           [sel.idx[i] for i in plain])
            for i, b in zip(plain, _bits_rule(bits, sub, name, symmetric)):
                bl[i] = b
        return sel, bl

    def init(params):
        sel, bl = select(params)
        for p, w in zip(sel.sel_paths, sel.sel_leaves):
            check_finite_weights(w.weight if isinstance(w, LsqArray) else w, name, p)
        return LsqQuantizationState(QuantLayout(tuple(zip(sel.sel_paths, bl)), axis, None,
                                                None, bool(symmetric), "lsq"))

    def apply(params, state):
        del state
        sel, bl = select(params)
        out = []
        for p, w, b in zip(sel.sel_paths, sel.sel_leaves, bl):
            if isinstance(w, LsqArray):
                out.append(w.materialize())
                continue
            check_finite_weights(w, name, p)
            s = jax.lax.stop_gradient(lsq_init_step(w, bits=b, axis=axis, symmetric=symmetric))
            out.append(lsq_fake_quant(w, s, bits=b, symmetric=symmetric))
        return sel.rebuild(out)

    def update(params, state, *, step, grads=None, **extra):
        del step, grads, extra
        return params, state

    def project(params, state):
        del state
        sel, _ = select(params)
        out = [dataclasses.replace(w, step=jnp.maximum(w.step, MIN_SCALE).astype(w.step.dtype))
               if isinstance(w, LsqArray) else w for w in sel.sel_leaves]
        return sel.rebuild(out)

    return Compressor(init, apply, update, project, never_due, None)
