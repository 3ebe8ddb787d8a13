"""Model-level GPTQ: :func:`gptq_quantize` quantizes a linen model's layers in order.

Walks a Flax linen model's Dense and Conv layers in forward (first-call)
order. For each selected kernel the model runs on the calibration data with
the layers quantized so far (``sequential=True``, as in GPTQ), the layer's
inputs are captured (the forward pass stops after its last call), the
Hessian ``2XᵀX/n`` is accumulated chunk by chunk
(:func:`jaxcomp.ops.hessian.model_layer_hessian`), the kernel is quantized
by :func:`jaxcomp.quant.ptq.gptq.gptq` and its dequantized values are written
back, so later layers are calibrated on the quantized model's activations.

Convolutions are quantized as their im2col kernels ``(cin·prod(k), cout)``
(features channel-major), so a group of ``group_size`` inputs must be whole
input channels: ``group_size`` a multiple of ``prod(kernel_size)``.

References:
  Frantar, Ashkboos, Hoefler & Alistarh, GPTQ, arXiv:2210.17323.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomp.core.leaves import QArray
from jaxcomp.ops.hessian import (
    calibration_chunks,
    conv_kernel_nd,
    kernel_hessian,
    kernel_layers,
    rel_error_from_hessian,
    select_kernels,
)
from jaxcomp.quant.ptq.gptq import check_group_size, gptq, round_to_nearest
from jaxcomp.quant.uniform import validate_bits
from jaxcomp.select.leafrules import per_leaf

__all__ = ["GPTQLayerStats", "GPTQResult", "gptq_quantize"]


class GPTQLayerStats(NamedTuple):
    """What :func:`gptq_quantize` did to one layer.

    Attributes:
      path: the kernel's parameter path.
      bits: its bit width.
      group_size: inputs per scale (None: per output channel).
      error: ``||XW - XŴ||² / ||XW||²`` on the calibration inputs the layer saw.
      rtn_error: the same for round-to-nearest on the same grid, from the same inputs.
      samples: rows of ``X`` (examples × positions for convolutions).
      seconds: wall time for capture + solve.
    """

    path: str
    bits: int
    group_size: int | None
    error: float
    rtn_error: float
    samples: int
    seconds: float


class GPTQResult(NamedTuple):
    """What :func:`gptq_quantize` returns.

    Attributes:
      variables: the same structure as given, quantized kernels dequantized
        (dense, in their dtype); runs in the unchanged model.
      quantized: the same structure with a :class:`~jaxcomp.core.leaves.QArray`
        (integer codes, scales, zero points) at every quantized kernel;
        ``jaxcomp.materialize(quantized)`` equals ``variables`` up to float rounding.
      layers: per-layer :class:`GPTQLayerStats` in processing order.
    """

    variables: Any
    quantized: Any
    layers: tuple[GPTQLayerStats, ...]


def _bits_rule(value: Any, label: str) -> int:
    return validate_bits(value, f"bits for {label}")


def _group_rule(value: Any, label: str) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise TypeError(f"group_size for {label} must be None or a positive int, got {value!r}")
    return value


def _nd_scale(s2: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A 2-d (im2col) block scale ``(groups, cout)`` in the Flax conv layout ``(*k, cin, cout)``
    (also zero points).

    Groups are whole input channels (channel-major features), so the scale
    becomes a block scale along ``cin``.
    """
    return s2.reshape((1,) * (len(shape) - 2) + tuple(s2.shape))


def gptq_quantize(
    apply_fn: Callable[..., Any],
    variables: Any,
    calib_x: Any,
    *,
    bits: Any,
    group_size: Any = None,
    where: Any = None,
    symmetric: bool = False,
    act_order: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    chunk_size: int | None = None,
    sequential: bool = True,
) -> GPTQResult:
    """GPTQ post-training quantization of a Flax linen model, one layer at a time.

    Memory: besides the model, about one layer's worth — ``H``, its inverse
    and Cholesky factor (3·d² floats for ``d`` inputs, ``cin·prod(k)`` for a
    convolution) plus one chunk of that layer's inputs; ``chunk_size`` bounds
    the second term. The price is one partial forward pass over the
    calibration data per layer.

    Args:
      apply_fn: ``apply_fn(variables, x)`` → outputs, running Flax linen
        modules (e.g. ``model.apply``).
      variables: ``{"params": ..., ...}`` or a bare params tree (whatever
        ``apply_fn`` accepts).
      calib_x: calibration inputs ``(N, ...)``, or a list of chunks.
      bits: bit width in ``[1, 16]`` for every selected kernel, a
        ``{regex: bits}`` map (full match on the path, first match wins; every
        selected kernel must match, e.g. a mixed-precision policy's ``.bits``)
        or a callable ``(path, kernel) -> bits``.
      group_size: None (one scale per output channel), an int, or a map /
        callable like ``bits`` (unmatched kernels: None). Must divide the
        kernel's inputs; for convolutions, a multiple of ``prod(kernel_size)``.
      where: kernels to quantize (default: leaves named ``kernel`` with
        ``ndim >= 2``). Each must belong to an ``nn.Dense`` or ``nn.Conv``.
      symmetric, act_order, blocksize, percdamp: see :func:`jaxcomp.quant.ptq.gptq.gptq`.
      chunk_size: rows of ``calib_x`` per forward pass (default: all).
      sequential: calibrate each layer on the partially quantized model (True)
        or on the float model (False).

    Returns:
      A :class:`GPTQResult`.

    Raises:
      ValueError: bits outside ``[1, 16]``, a group size that does not divide
        a kernel's inputs (or cuts a conv input channel), NaN/Inf in the
        calibration data or the weights, a ``where`` that selects nothing, a
        selected kernel whose module never runs.
      TypeError: a selected leaf that is not a Dense or Conv kernel, bad rule values.

    Example:
      >>> import jax
      >>> from jaxcomp.models import mlp
      >>> model = mlp((8, 8, 4))
      >>> v = model.init(jax.random.key(0), jax.numpy.zeros((1, 8)))
      >>> x = jax.random.normal(jax.random.key(1), (64, 8))
      >>> res = gptq_quantize(model.apply, v, x, bits={"fc1/kernel": 4, "fc2/kernel": 3},
      ...                     group_size={"fc2/kernel": 4})
      >>> [(s.path, s.bits, s.group_size, s.error <= s.rtn_error) for s in res.layers]
      [('fc1/kernel', 4, None, True), ('fc2/kernel', 3, 4, True)]
      >>> res.quantized["params"]["fc2"]["kernel"].scale.shape  # one scale per 4 inputs
      (2, 4)

    References:
      Frantar et al., GPTQ, arXiv:2210.17323.
    """
    sel, rebuild = select_kernels(variables, where, what="gptq_quantize")
    selected = sel.sel_paths
    bits_of = dict(zip(selected, per_leaf(bits, sel, what="bits", noun="selected kernel",
                                          validate=_bits_rule,
                                          hint="Add a pattern for them or exclude them with "
                                               "where=.")))
    group_of = dict(zip(selected, per_leaf(group_size, sel, what="group_size", default=None,
                                           noun="selected kernel", validate=_group_rule)))
    chunks = calibration_chunks(calib_x, chunk_size)
    todo = kernel_layers(apply_fn, variables, sel, chunks[0][:1], what="gptq_quantize")
    leaves = dict(zip(sel.paths, sel.leaves))
    conv = {layer.path for layer in todo if isinstance(layer.module, nn.Conv)}
    for p in selected:
        shape = tuple(jnp.shape(leaves[p]))
        n_in = math.prod(shape[:-1])
        g = check_group_size(group_of[p], n_in, p)
        if p in conv and g is not None and g % math.prod(shape[:-2]):
            raise ValueError(
                f"parameter '{p}': group_size={g} cuts input channels of the {shape[:-2]} "
                f"convolution (im2col features are channel-major, {math.prod(shape[:-2])} per "
                f"channel); pass a multiple of {math.prod(shape[:-2])} that divides {n_in}")
    cur = dict(leaves)
    qleaves = dict(leaves)

    def tree(d):
        return jax.tree_util.tree_unflatten(sel.treedef, [d[p] for p in sel.paths])

    stats = []
    for layer in todo:
        p = layer.path
        t0 = time.perf_counter()
        w = jnp.asarray(cur[p])
        is_conv = isinstance(layer.module, nn.Conv)
        src = rebuild(tree(cur)) if sequential else variables
        w2, st = kernel_hessian(apply_fn, src, chunks, layer, w)
        b, g = bits_of[p], group_of[p]
        res = gptq(w2, st.hessian, bits=b, group_size=g, symmetric=symmetric,
                   blocksize=blocksize, percdamp=percdamp, act_order=act_order, path=p)
        rtn = round_to_nearest(w2, bits=b, group_size=g, symmetric=symmetric, path=p)
        wf = w2.astype(jnp.float32)
        err = float(rel_error_from_hessian(wf, res.kernel.astype(jnp.float32), st.hessian))
        rtn_err = float(rel_error_from_hessian(wf, rtn.astype(jnp.float32), st.hessian))
        q = res.qarray()
        if is_conv:
            q = QArray(conv_kernel_nd(q.values, w.shape), _nd_scale(q.scale, w.shape),
                       _nd_scale(q.zero_point, w.shape), bits=b, dense_dtype=q.dense_dtype)
        cur[p] = conv_kernel_nd(res.kernel, w.shape) if is_conv else res.kernel
        qleaves[p] = q
        stats.append(GPTQLayerStats(p, b, g, err, rtn_err, int(st.count),
                                    time.perf_counter() - t0))
    return GPTQResult(rebuild(tree(cur)), rebuild(tree(qleaves)), tuple(stats))
