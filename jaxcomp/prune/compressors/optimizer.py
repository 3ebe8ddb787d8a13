"""Pruning inside the optimizer (the pruning name for :func:`jaxcomp.compression_optimizer`).

:func:`pruning_optimizer` wraps any optax optimizer so that it carries a
pruning compressor's state and keeps the stored params pruned by itself::

    comp = jp.magnitude_pruning(schedule, mode="project")
    tx = jp.pruning_optimizer(optax.adamw(1e-3), comp)
    opt_state = tx.init(params)
    params = comp.project(params, opt_state.compressor_state)   # prune at the start
    ...
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)   # pruned weights are exactly 0

The masks of step ``t`` are scored on the params the step starts from with
the step's gradients (both taken at the same point, which is what gradient
scores such as saliency want), and the step's result is projected onto them
inside the update: one select that XLA fuses into the optimizer's own
elementwise update. The one difference from calling ``comp.update`` after
``optax.apply_updates`` is that the scores of an update step are read one
optimizer step earlier. In ``mode="mask"`` use ``comp.apply(params,
opt_state.compressor_state)`` as the view, so that pruned weights also get
zero gradients; in ``"ste"``/``"sr_ste"`` modes nothing is projected (the
dense weights train through the masked view).

References:
  Zhu & Gupta 2017, arXiv:1710.01878 (gradual pruning inside training) ·
  Lee et al. 2023, jaxpruner (``wrap_optax``), arXiv:2304.14082.
"""

from jaxcomp.core.scheduling import CompressionOptimizerState
from jaxcomp.core.scheduling import compression_optimizer as pruning_optimizer

PruningOptimizerState = CompressionOptimizerState

__all__ = ["PruningOptimizerState", "pruning_optimizer"]
