"""Integer codes of quantization-aware-trained weights, for storage reports and deployment.

:func:`export_quantized` replaces the weights that a
:func:`~jaxcomp.quant.compressors.fake_quantization` or
:func:`~jaxcomp.quant.compressors.lsq_quantization` compressor quantizes by
:class:`~jaxcomp.core.leaves.QArray` leaves (integer codes, scales, zero points), so
``jaxcomp.metrics.model_size_bytes`` charges their real bits and
:func:`jaxcomp.materialize` gives back the quantized weights.

References:
  Jacob et al. 2018, arXiv:1712.05877.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcomp.core.leaves import QArray
from jaxcomp.quant.calibration import calibrate
from jaxcomp.quant.compressors import (
    DYNAMIC_METHODS,
    FakeQuantizationState,
    LsqQuantizationState,
    QuantLayout,
)
from jaxcomp.quant.learned import LsqArray, lsq_init_step
from jaxcomp.quant.uniform import quantize
from jaxcomp.select.selection import flatten

__all__ = ["export_quantized"]



def _find_layouts(state: Any) -> list[tuple[QuantLayout, Any]]:
    found = []

    def walk(x):
        if isinstance(x, FakeQuantizationState):
            found.append((x.layout, x))
            return
        if isinstance(x, LsqQuantizationState):
            found.append((x.layout, x))
            return
        if isinstance(x, Mapping):
            for v in x.values():
                walk(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                walk(v)

    walk(state)
    return found


def export_quantized(params: Any, state: Any) -> Any:
    """Integer codes of the quantized weights: ``QArray`` leaves in place of the selected weights.

    Args:
      params: the params the quantizer sees: the stored params, or for a
        quantizer late in a chain the view of the stages before it (the full
        chain's ``apply`` output works too: re-quantizing quantized weights
        with the same scales gives the same codes).
      state: a :class:`FakeQuantizationState` or :class:`LsqQuantizationState`,
        or any state holding them (a chain's, ``inject_hyperparams``').

    Returns:
      The params with :class:`~jaxcomp.core.leaves.QArray` leaves (codes,
      float32 scales, zero points) in place of the quantized weights;
      ``jaxcomp.metrics.model_size_bytes`` then charges their real bits.

    Raises:
      ValueError: no quantizer state in ``state``, or a path of the state
        missing from ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([[0.9, -0.2], [0.4, 1.0]])}
      >>> from jaxcomp.quant.compressors import fake_quantization
      >>> comp = fake_quantization(4)
      >>> q = export_quantized(params, comp.init(params))["w"]
      >>> q.values.tolist(), q.storage_bits()  # 4 codes x 4 bits + 2 float32 scales + 1 int8 zero
      ([[7, -1], [3, 7]], 88)
    """
    found = _find_layouts(state)
    if not found:
        raise ValueError("export_quantized: state holds no FakeQuantizationState or "
                         "LsqQuantizationState; pass the state of a fake_quantization or "
                         "lsq_quantization compressor (or of a chain holding one)")
    sel = flatten(params, True, what="export_quantized", allow_empty=True)
    leaves = list(sel.leaves)
    index = {p: i for i, p in enumerate(sel.paths)}
    for lay, st in found:
        for j, (p, b) in enumerate(lay.entries):
            if p not in index:
                raise ValueError(f"export_quantized: the state quantizes '{p}', which params "
                                 "do not hold; pass the params the quantizer was built for")
            w = leaves[index[p]]
            if isinstance(w, LsqArray):
                leaves[index[p]] = w.to_qarray()
                continue
            if isinstance(w, QArray):
                continue
            if isinstance(st, FakeQuantizationState) and lay.method not in DYNAMIC_METHODS:
                s = jax.tree_util.tree_leaves(st.scale)[j]
                z = jax.tree_util.tree_leaves(st.zero_point)[j]
                leaves[index[p]] = quantize(w, bits=b, symmetric=lay.symmetric, scale=s,
                                            zero_point=None if lay.symmetric else z)
            elif lay.method == "lsq":
                s = lsq_init_step(w, bits=b, axis=lay.axis, symmetric=lay.symmetric)
                leaves[index[p]] = quantize(w, bits=b, symmetric=lay.symmetric, scale=s,
                                            zero_point=None if lay.symmetric else jnp.zeros(()))
            else:
                s, z = calibrate(w, bits=b, method=lay.method, axis=lay.axis,
                                 group_size=lay.group_size, group_axis=lay.group_axis,
                                 symmetric=lay.symmetric, mask=w != 0)
                leaves[index[p]] = quantize(w, bits=b, symmetric=lay.symmetric, scale=s,
                                            zero_point=None if lay.symmetric else z)
    return jax.tree_util.tree_unflatten(sel.treedef, leaves)
