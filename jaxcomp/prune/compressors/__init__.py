"""Pruning during training, as compressors (``init``/``apply``/``update``/``project``).

* :mod:`~jaxcomp.prune.compressors.engine` — the machinery every
  score-based pruner shares (selection, masks, mask updates under
  ``lax.cond``, modes) and their state, :class:`PruningState`;
* :mod:`~jaxcomp.prune.compressors.score_based` — the factories
  :func:`magnitude_pruning`, :func:`random_pruning`,
  :func:`saliency_pruning`, :func:`movement_pruning`, :func:`obd_pruning`;
* :mod:`~jaxcomp.prune.compressors.dst` — dynamic sparse training (SET,
  RigL);
* :mod:`~jaxcomp.prune.compressors.lottery` — lottery tickets: iterative
  magnitude pruning with rewinding, and :func:`fixed_mask`, the compressor
  that holds a mask during a round;
* :mod:`~jaxcomp.prune.compressors.optim_reset` — optimizer moments of
  regrown weights restart at zero, for any optax optimizer;
* :mod:`~jaxcomp.prune.compressors.optimizer` and
  :mod:`~jaxcomp.prune.compressors.host` — the pruning names of the core's
  :func:`jaxcomp.compression_optimizer` and :func:`jaxcomp.host_scheduled`.

Everything here is re-exported by :mod:`jaxcomp.prune`.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxcomp.prune import compressors
  >>> comp = compressors.magnitude_pruning(0.5)
  >>> state = comp.init({"w": jnp.array([[0.1, -3.0], [0.2, 0.5]])})
  >>> state.masks["w"].tolist()
  [[False, True], [False, True]]
"""

from jaxcomp.prune.compressors.dst import DSTState, drop_fraction, rigl_pruning, set_pruning
from jaxcomp.prune.compressors.host import HostScheduled, host_scheduled
from jaxcomp.prune.compressors.lottery import (
    LotteryResult,
    fixed_mask,
    imp_round_masks,
    lottery_ticket,
    random_ticket,
    rewind,
)
from jaxcomp.prune.compressors.optim_reset import (
    ResetRegrownState,
    moment_paths,
    reset_optimizer_state,
    reset_regrown,
)
from jaxcomp.prune.compressors.optimizer import PruningOptimizerState, pruning_optimizer
from jaxcomp.prune.compressors.score_based import (
    MagnitudePruningState,
    MovementPruningState,
    ObdPruningState,
    PruningState,
    RandomPruningState,
    SaliencyPruningState,
    magnitude_pruning,
    movement_pruning,
    obd_pruning,
    random_pruning,
    saliency_pruning,
)

__all__ = [
    "DSTState",
    "HostScheduled",
    "LotteryResult",
    "MagnitudePruningState",
    "MovementPruningState",
    "ObdPruningState",
    "PruningOptimizerState",
    "PruningState",
    "RandomPruningState",
    "ResetRegrownState",
    "SaliencyPruningState",
    "drop_fraction",
    "fixed_mask",
    "host_scheduled",
    "imp_round_masks",
    "lottery_ticket",
    "magnitude_pruning",
    "moment_paths",
    "movement_pruning",
    "obd_pruning",
    "pruning_optimizer",
    "random_pruning",
    "random_ticket",
    "reset_optimizer_state",
    "reset_regrown",
    "rewind",
    "rigl_pruning",
    "saliency_pruning",
    "set_pruning",
]
