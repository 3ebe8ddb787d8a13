"""One-shot pruning with calibration data: no retraining, one pass per layer.

* :mod:`~jaxcomp.prune.oneshot.obs` — the layer solver: streaming Hessians
  ``H = 2XᵀX/n``, the exact Optimal Brain Surgeon step
  (:func:`obs_remove`) and SparseGPT's blocked approximation
  (:func:`sparsegpt_prune`), im2col for convolutions;
* :mod:`~jaxcomp.prune.oneshot.obs_model` — :func:`obs_prune`, the
  model-level driver over a Flax linen model's Dense and Conv layers;
* :mod:`~jaxcomp.prune.oneshot.thinet` — channel selection by the
  reconstruction error of the next layer (ThiNet greedy, He et al.'s LASSO)
  and least-squares refits;
* :mod:`~jaxcomp.prune.oneshot.sensitivity` — per-layer sensitivity scans
  and the ``{regex: sparsity}`` maps they suggest.

* :mod:`~jaxcomp.prune.oneshot.calibration` — the calibration passes they
  share: data chunks, the layers a model runs, a layer's inputs with the
  forward pass stopped after its last call (on :mod:`jaxcomp.ops.capture`).

Everything here is re-exported by :mod:`jaxcomp.prune`.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxcomp.prune import oneshot
  >>> h = jnp.array([[2.0, 1.0], [1.0, 2.0]])
  >>> w_new, loss = oneshot.obs_remove(jnp.array([1.0, 2.0]), h, 0)
  >>> w_new.tolist()
  [0.0, 2.5]
"""

from jaxcomp.prune.oneshot.obs import (
    HessianState,
    accumulate_hessian,
    init_hessian,
    layer_hessian,
    obs_remove,
    reconstruction_error,
    sparsegpt_prune,
)
from jaxcomp.prune.oneshot.obs_model import ObsLayerStats, ObsPruneResult, obs_prune
from jaxcomp.prune.oneshot.sensitivity import SensitivityTable, sensitivity_scan
from jaxcomp.prune.oneshot.thinet import (
    ChannelPruneResult,
    greedy_channel_selection,
    lasso_channel_selection,
    least_squares_refit,
    thinet_prune,
    thinet_prune_layer,
)

__all__ = [
    "ChannelPruneResult",
    "HessianState",
    "ObsLayerStats",
    "ObsPruneResult",
    "SensitivityTable",
    "accumulate_hessian",
    "greedy_channel_selection",
    "init_hessian",
    "lasso_channel_selection",
    "layer_hessian",
    "least_squares_refit",
    "obs_prune",
    "obs_remove",
    "reconstruction_error",
    "sensitivity_scan",
    "sparsegpt_prune",
    "thinet_prune",
    "thinet_prune_layer",
]
