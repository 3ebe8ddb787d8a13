"""Model-level one-shot OBS / SparseGPT pruning: :func:`obs_prune`.

Walks a Flax linen model's Dense and Conv layers in forward order, captures
each selected layer's inputs on calibration data (from the already-pruned
model, as SparseGPT does), accumulates the layer Hessian chunk by chunk and
prunes the kernel with :func:`jaxcomp.prune.oneshot.obs.sparsegpt_prune`. The
inputs are recorded and the Hessian accumulated by :mod:`jaxcomp.ops.hessian`
(on :func:`jaxcomp.ops.capture.capture_linen`), shared with
:mod:`jaxcomp.prune.oneshot.thinet` and GPTQ quantization.

References:
  Frantar & Alistarh, SparseGPT: massive language models can be accurately
  pruned in one-shot, arXiv:2301.00774.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import check_in_range
from jaxcomp.ops.hessian import (
    calibration_chunks,
    conv_kernel_nd,
    kernel_hessian,
    kernel_layers,
    rel_error_from_hessian,
    select_kernels,
)
from jaxcomp.ops.kth import bottomk_mask_unsharded, num_pruned
from jaxcomp.prune.oneshot.obs import sparsegpt_prune
from jaxcomp.prune.patterns import NM, as_pattern
from jaxcomp.select.leafrules import per_leaf

__all__ = ["ObsLayerStats", "ObsPruneResult", "obs_prune"]


class ObsLayerStats(NamedTuple):
    """What :func:`obs_prune` did to one layer.

    Attributes:
      path: the kernel's parameter path.
      sparsity: achieved fraction of zeros in the kernel.
      error: ``||XW - XŴ||² / ||XW||²`` on the calibration inputs the layer saw.
      magnitude_error: the same for plain magnitude pruning at that sparsity
        (and pattern) from the same inputs, for comparison.
      samples: rows of ``X`` (examples × positions for convolutions).
      seconds: wall time for capture + solve.
    """

    path: str
    sparsity: float
    error: float
    magnitude_error: float
    samples: int
    seconds: float


class ObsPruneResult(NamedTuple):
    """``variables`` (same structure as given), bool ``masks`` (params tree; all-True at
    unpruned leaves) and per-layer ``layers`` statistics in processing order."""

    variables: Any
    masks: Any
    layers: tuple[ObsLayerStats, ...]


def _check_sparsity(value: Any, label: str) -> Any:
    if value is not None:
        check_in_range(label, value, 0.0, 1.0, high_inclusive=False)
    return value


@functools.partial(jax.jit, static_argnames=("nm",))
def _errors(w, w_new, h, k, *, nm):
    """Relative errors of ``w_new`` and of magnitude pruning (k smallest, or N:M) of ``w``."""
    w = w.astype(jnp.float32)
    keep = NM(*nm).mask(jnp.abs(w)) if nm is not None else ~bottomk_mask_unsharded(jnp.abs(w), k)
    return (rel_error_from_hessian(w, w_new.astype(jnp.float32), h),
            rel_error_from_hessian(w, jnp.where(keep, w, 0.0), h))


def obs_prune(
    apply_fn: Callable[..., Any],
    variables: Any,
    calib_x: Any,
    sparsity: Any,
    *,
    where: Any = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    pattern: Any = None,
    chunk_size: int | None = None,
    sequential: bool = True,
) -> ObsPruneResult:
    """One-shot SparseGPT pruning of a Flax linen model, one layer at a time.

    Layers are processed in forward (first-call) order. For each selected
    kernel: the model runs on every calibration chunk with the layers
    pruned so far (``sequential=True``, as in SparseGPT), the layer's inputs
    are captured by intercepting its ``__call__`` (the forward pass stops
    right after the layer's last call), ``H = 2XᵀX/n`` is accumulated chunk
    by chunk, the kernel is pruned with :func:`sparsegpt_prune` and written
    back. Biases are left as they are.

    Memory: besides the model, the peak extra memory is about one layer's
    worth — ``H``, its inverse and Cholesky factor (3·d² floats for ``d``
    inputs, or ``cin·prod(k)`` for a convolution) plus one chunk of that
    layer's inputs (``chunk_size × d``, times output positions for convs).
    Choose ``chunk_size`` to bound the second term. The price is one partial
    forward pass over the calibration data per layer.

    Args:
      apply_fn: ``apply_fn(variables, x)`` → outputs, running Flax linen
        modules (e.g. ``ModelSpec.apply_fn`` or ``model.apply``).
      variables: ``{"params": ..., ...}`` or a bare params tree (whatever
        ``apply_fn`` accepts).
      calib_x: calibration inputs ``(N, ...)``, or a list of chunks.
      sparsity: fraction in ``[0, 1)`` for every selected kernel, a
        ``{regex: sparsity}`` map (full match on the path, first match wins;
        every selected kernel must match and every regex must match one;
        e.g. from :meth:`~jaxcomp.prune.oneshot.sensitivity.SensitivityTable.suggest`),
        a callable ``(path, kernel) -> sparsity`` (see
        :func:`jaxcomp.select.per_leaf`), or ``None`` with an N:M pattern.
      where: kernels to prune (default: leaves named ``kernel`` with
        ``ndim >= 2``). Each must belong to an ``nn.Dense`` or ``nn.Conv``.
      blocksize, percdamp, pattern: see :func:`sparsegpt_prune`.
      chunk_size: rows of ``calib_x`` per forward pass (default: all).
      sequential: capture inputs from the partially pruned model (True) or
        from the dense model (False; every layer then sees dense inputs).

    Returns:
      An :class:`ObsPruneResult`.

    Raises:
      ValueError: bad sparsity, NaN calibration data, a where that selects
        nothing, a selected kernel whose module never runs.
      TypeError: a selected kernel that is not a Dense or Conv kernel.

    Example:
      >>> import jax
      >>> from jaxcomp.models import mlp
      >>> model = mlp((8, 16, 4))
      >>> v = model.init(jax.random.key(0), jax.numpy.zeros((1, 8)))
      >>> x = jax.random.normal(jax.random.key(1), (64, 8))
      >>> res = obs_prune(model.apply, v, x, 0.5)
      >>> [(s.path, s.sparsity) for s in res.layers]
      [('fc1/kernel', 0.5), ('fc2/kernel', 0.5)]

    References:
      Frantar & Alistarh, SparseGPT, arXiv:2301.00774; Hassibi & Stork 1993.
    """
    sel, rebuild = select_kernels(variables, where, what="obs_prune")
    selected = sel.sel_paths
    sparsity_of = dict(zip(selected, per_leaf(
        sparsity, sel, what="sparsity", noun="selected kernel", validate=_check_sparsity,
        hint="Add a pattern for them or exclude them with where=.")))
    chunks = calibration_chunks(calib_x, chunk_size)
    todo = kernel_layers(apply_fn, variables, sel, chunks[0][:1], what="obs_prune")
    leaves = dict(zip(sel.paths, sel.leaves))
    masks = {p: jnp.ones(jnp.shape(x), bool) for p, x in leaves.items()}
    cur = dict(leaves)

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
        s = sparsity_of[p]
        new2, keep2 = sparsegpt_prune(w2, st.hessian, s, blocksize=blocksize,
                                      percdamp=percdamp, pattern=pattern, path=p)
        pat = as_pattern(pattern)
        k = -1 if isinstance(pat, NM) else num_pruned(s, w2.size)
        err, mag_err = (float(e) for e in _errors(w2, new2, st.hessian, jnp.int32(k),
                                                   nm=(pat.n, pat.m, pat.axis) if k < 0 else None))
        new = conv_kernel_nd(new2, w.shape) if is_conv else new2
        keep = conv_kernel_nd(keep2, w.shape) if is_conv else keep2
        cur[p], masks[p] = new, keep
        stats.append(ObsLayerStats(p, 1.0 - float(np.mean(np.asarray(keep))), err, mag_err,
                                   int(st.count), time.perf_counter() - t0))
    return ObsPruneResult(rebuild(tree(cur)), tree(masks), tuple(stats))
