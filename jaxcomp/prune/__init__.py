"""Pruning and sparsity: scores × allocation × pattern × schedule, sharding-native.

Four independent axes make every pruning method of the literature; they and
the masks they make sit at the top of the package:

* **scores** (:mod:`jaxcomp.prune.scores`): magnitude, random, saliency
  ``|w·g|``, movement ``-Σ w·g``, OBD ``½ h w²`` (Hutchinson, exact or Fisher
  Hessian diagonals), or any ``score_fn(params, *, grads=None, **extra)``;
* **allocation** (:mod:`jaxcomp.prune.allocation`): uniform per layer, one
  global threshold (``scope="global"``), ERK/ER, or ``{regex: sparsity}``;
* **patterns** (:mod:`jaxcomp.prune.patterns`): unstructured, N:M, blocks,
  channels;
* **schedules** (:mod:`jaxcomp.prune.schedules`): constant, one-shot,
  iterative, polynomial (Zhu & Gupta), or any optax schedule;
* **masks** (:mod:`jaxcomp.prune.masks`): keep-masks of trees and arrays
  from the axes; :mod:`jaxcomp.prune.summary` tabulates sparsity per path.

The methods built on them live in three rooms:

* :mod:`jaxcomp.prune.compressors` — pruning during training, as
  compressors: the shared engine and the score-based factories
  (:func:`magnitude_pruning`, ``random``, ``saliency``, ``movement``,
  ``obd``), dynamic sparse training (SET, RigL), lottery tickets
  (:func:`fixed_mask` holds a mask through a round), optimizer-moment resets
  for regrown weights (:func:`reset_regrown`, any optax optimizer), and the
  loop glue: :func:`pruning_optimizer` (an optax optimizer that carries the
  pruning state and keeps pruned weights exactly zero inside its own update)
  and :func:`host_scheduled` (the Python loop decides when masks change, so
  the jitted step holds no ``lax.cond``);
* :mod:`jaxcomp.prune.oneshot` — one-shot pruning with calibration data:
  OBS/SparseGPT (solver and model driver), ThiNet / LASSO channel selection,
  sensitivity scans;
* :mod:`jaxcomp.prune.channels` — structured channel methods: network
  slimming, SSL group lasso, and channel surgery that makes a physically
  smaller model.

Thresholds are exact and sort-free (:mod:`jaxcomp.ops.kth`, also reachable
as ``jaxcomp.prune.threshold``): a bisection on the float bit patterns with
scalar counts only, so masks run under ``jit`` on sharded parameters without
all-gathers and keep each parameter's sharding. The masked forward views and
straight-through gradients live in :mod:`jaxcomp.ops.ste` (also
``jaxcomp.prune.ste``).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> import jaxcomp as jc
  >>> import jaxcomp.prune as jp
  >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8)), "b": jnp.zeros(8)}
  >>> comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.75, 0, 10, update_every=5))
  >>> tx = optax.chain(optax.adam(1e-2), jc.keep_compressed(comp))
  >>> cstate, opt = comp.init(params), tx.init(params)
  >>> for step in range(12):
  ...     grads = jax.grad(lambda p: jnp.sum(comp.apply(p, cstate)["w"] ** 2))(params)
  ...     upd, opt = tx.update(grads, opt, params, compressor_state=cstate)
  ...     params = optax.apply_updates(params, upd)
  ...     params, cstate = comp.update(params, cstate, step=step, grads=grads)
  >>> jp.sparsity_summary(params, where=r"w").sparsity
  0.75
"""

from jaxcomp.ops import kth as threshold
from jaxcomp.ops import ste
from jaxcomp.ops.kth import (
    bottomk_mask,
    check_finite,
    count_true,
    kth_smallest,
    num_pruned,
    smallest_k_masks,
    threshold_mask,
    topk_mask,
)
from jaxcomp.ops.ste import masked_weight, sr_ste_masked_weight, ste_masked_weight
from jaxcomp.prune import allocation, channels, compressors, oneshot, patterns, schedules, scores
from jaxcomp.prune.allocation import erk_densities, erk_sparsities, path_sparsities
from jaxcomp.prune.channels.slimming import (
    scale_to_kernel_masks,
    slimming_masks,
    slimming_penalty,
    slimming_regularizer,
)
from jaxcomp.prune.channels.ssl import (
    channel_lasso,
    depth_lasso,
    filter_lasso,
    group_lasso,
    group_norms,
    shape_lasso,
    ssl_regularizer,
)
from jaxcomp.prune.channels.surgery import (
    ChannelGroup,
    SurgeryResult,
    channel_dependencies,
    remove_channels,
    zero_channels,
)
from jaxcomp.prune.compressors.dst import (
    DSTState,
    drop_fraction,
    rigl_pruning,
    set_pruning,
)
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
from jaxcomp.prune.masks import (
    MaskConfig,
    apply_masks,
    block_mask,
    channel_mask,
    default_where,
    magnitude_mask,
    nm_mask,
    score_mask,
)
from jaxcomp.prune.oneshot.obs import (
    HessianState,
    accumulate_hessian,
    init_hessian,
    layer_hessian,
    obs_remove,
    reconstruction_error,
    sparsegpt_prune,
)
from jaxcomp.prune.oneshot.obs_model import (
    ObsLayerStats,
    ObsPruneResult,
    obs_prune,
)
from jaxcomp.prune.oneshot.sensitivity import (
    SensitivityTable,
    sensitivity_scan,
)
from jaxcomp.prune.oneshot.thinet import (
    ChannelPruneResult,
    greedy_channel_selection,
    lasso_channel_selection,
    least_squares_refit,
    thinet_prune,
    thinet_prune_layer,
)
from jaxcomp.prune.patterns import NM, Block, Channel, Unstructured
from jaxcomp.prune.schedules import (
    Schedule,
    as_schedule,
    constant_schedule,
    cubic_schedule,
    iterative_schedule,
    one_shot_schedule,
    polynomial_schedule,
)
from jaxcomp.prune.scores import exact_hessian_diag, fisher_diag, hutchinson_diag
from jaxcomp.prune.summary import SparsityRow, SparsitySummary, sparsity_summary

__all__ = [
    "NM",
    "Block",
    "Channel",
    "ChannelGroup",
    "ChannelPruneResult",
    "DSTState",
    "HessianState",
    "HostScheduled",
    "LotteryResult",
    "MagnitudePruningState",
    "MaskConfig",
    "MovementPruningState",
    "ObdPruningState",
    "ObsLayerStats",
    "ObsPruneResult",
    "PruningOptimizerState",
    "PruningState",
    "RandomPruningState",
    "ResetRegrownState",
    "SaliencyPruningState",
    "Schedule",
    "SensitivityTable",
    "SparsityRow",
    "SparsitySummary",
    "SurgeryResult",
    "Unstructured",
    "accumulate_hessian",
    "allocation",
    "apply_masks",
    "as_schedule",
    "block_mask",
    "bottomk_mask",
    "channel_dependencies",
    "channel_lasso",
    "channel_mask",
    "channels",
    "check_finite",
    "compressors",
    "constant_schedule",
    "count_true",
    "cubic_schedule",
    "default_where",
    "depth_lasso",
    "drop_fraction",
    "erk_densities",
    "erk_sparsities",
    "exact_hessian_diag",
    "filter_lasso",
    "fisher_diag",
    "fixed_mask",
    "greedy_channel_selection",
    "group_lasso",
    "group_norms",
    "host_scheduled",
    "hutchinson_diag",
    "imp_round_masks",
    "init_hessian",
    "iterative_schedule",
    "kth_smallest",
    "lasso_channel_selection",
    "layer_hessian",
    "least_squares_refit",
    "lottery_ticket",
    "magnitude_mask",
    "magnitude_pruning",
    "masked_weight",
    "moment_paths",
    "movement_pruning",
    "nm_mask",
    "num_pruned",
    "obd_pruning",
    "obs_prune",
    "obs_remove",
    "one_shot_schedule",
    "oneshot",
    "path_sparsities",
    "patterns",
    "polynomial_schedule",
    "pruning_optimizer",
    "random_pruning",
    "random_ticket",
    "reconstruction_error",
    "remove_channels",
    "reset_optimizer_state",
    "reset_regrown",
    "rewind",
    "rigl_pruning",
    "saliency_pruning",
    "scale_to_kernel_masks",
    "schedules",
    "score_mask",
    "scores",
    "sensitivity_scan",
    "set_pruning",
    "shape_lasso",
    "slimming_masks",
    "slimming_penalty",
    "slimming_regularizer",
    "smallest_k_masks",
    "sparsegpt_prune",
    "sparsity_summary",
    "sr_ste_masked_weight",
    "ssl_regularizer",
    "ste",
    "ste_masked_weight",
    "thinet_prune",
    "thinet_prune_layer",
    "threshold",
    "threshold_mask",
    "topk_mask",
    "zero_channels",
]
