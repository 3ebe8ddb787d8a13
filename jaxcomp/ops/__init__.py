"""Kernels shared by the compression families, below all of them.

* :mod:`~jaxcomp.ops.kth`: sort-free, exact k-th-smallest selection —
  :func:`smallest_k_masks` (one threshold per array or per group of arrays),
  :func:`topk_mask` / :func:`bottomk_mask`, :func:`threshold_mask`,
  :func:`kth_smallest`, :func:`num_pruned` (the rounding rule),
  :func:`ordered_key` (floats as order-preserving ``uint32``), with scalar
  counts only, so they run under ``jit`` on sharded arrays without
  all-gathers.
* :mod:`~jaxcomp.ops.ste`: masked forward views and straight-through
  gradients (:func:`masked_weight`, :func:`ste_masked_weight`,
  :func:`sr_ste_masked_weight`, :func:`mask_view`).
* :mod:`~jaxcomp.ops.capture`: the inputs and outputs of a model's
  submodules, selected by canonical module path, for Flax linen
  (:func:`capture_linen`) and nnx (:func:`capture_nnx`), with an early stop
  after the last needed call — the one way distillation taps and
  calibration passes look inside a model; :func:`patched_calls` wraps the
  ``__call__`` of nnx layer classes for a block (also used by activation
  quantization).
* :mod:`~jaxcomp.ops.hessian`: layer Hessians ``2XᵀX/n`` streamed over
  calibration data, im2col for convolutions and the calibration pass over
  a linen model — shared by OBS/SparseGPT pruning and GPTQ quantization
  (:func:`layer_hessian`, :func:`accumulate_hessian`,
  :func:`model_layer_hessian`, :func:`conv_patches`, ...), and the skeleton
  of their layer-by-layer drivers (:func:`select_kernels`,
  :func:`kernel_layers`, :func:`kernel_hessian`).

Nothing here imports a family (``prune``, ``distill``, ``metrics``, ...);
the families import from here.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxcomp import ops
  >>> ops.topk_mask(jnp.array([0.1, 0.9, 0.5, 0.7]), 2).tolist()
  [False, True, False, True]
"""

from jaxcomp.ops import capture, hessian, kth, ste
from jaxcomp.ops.capture import (
    Captured,
    ModuleInfo,
    capture_linen,
    capture_nnx,
    module_of,
    patched_calls,
)
from jaxcomp.ops.hessian import (
    HessianState,
    KernelLayer,
    accumulate_hessian,
    calibration_chunks,
    check_solver_args,
    check_solver_flags,
    conv_kernel_2d,
    conv_kernel_nd,
    conv_patches,
    init_hessian,
    kernel_hessian,
    kernel_layers,
    layer_hessian,
    layer_inputs,
    layer_rows,
    linen_layers,
    model_layer_hessian,
    reconstruction_error,
    rel_error_from_hessian,
    select_kernels,
)
from jaxcomp.ops.kth import (
    DEFAULT_WAYS,
    bottomk_mask,
    bottomk_mask_unsharded,
    check_finite,
    count_true,
    is_tracer,
    kth_smallest,
    num_pruned,
    ordered_key,
    smallest_k_masks,
    threshold_mask,
    topk_mask,
    validate_sparsity,
)
from jaxcomp.ops.ste import (
    MODES,
    mask_view,
    masked_weight,
    sr_ste_masked_weight,
    ste_masked_weight,
)

__all__ = [
    "DEFAULT_WAYS",
    "MODES",
    "Captured",
    "HessianState",
    "KernelLayer",
    "ModuleInfo",
    "accumulate_hessian",
    "bottomk_mask",
    "bottomk_mask_unsharded",
    "calibration_chunks",
    "capture",
    "capture_linen",
    "capture_nnx",
    "check_finite",
    "check_solver_args",
    "check_solver_flags",
    "conv_kernel_2d",
    "conv_kernel_nd",
    "conv_patches",
    "count_true",
    "hessian",
    "init_hessian",
    "is_tracer",
    "kernel_hessian",
    "kernel_layers",
    "kth",
    "kth_smallest",
    "layer_hessian",
    "layer_inputs",
    "layer_rows",
    "linen_layers",
    "mask_view",
    "masked_weight",
    "model_layer_hessian",
    "module_of",
    "num_pruned",
    "ordered_key",
    "patched_calls",
    "reconstruction_error",
    "rel_error_from_hessian",
    "select_kernels",
    "smallest_k_masks",
    "sr_ste_masked_weight",
    "ste",
    "ste_masked_weight",
    "threshold_mask",
    "topk_mask",
    "validate_sparsity",
]
