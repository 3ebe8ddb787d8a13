"""Training machinery: state, step builders, the ``fit`` loop, checkpoints, meshes.

The pieces follow one interface (shared with :mod:`jaxcomp.distill` and
:mod:`jaxcomp.prune`):

* a batch is a dict ``{"x", "y"}`` plus an optional per-example ``"mask"``
  (0 for padding) and extras such as ``"teacher_logits"``;
* a loss function is ``loss_fn(params, model_state, batch, rng) -> (loss,
  (new_model_state, metrics))``, e.g. :func:`supervised_loss`;
* :class:`TrainState` holds step, params, opt_state, model_state,
  compressor_state and rng;
* :func:`make_train_step` / :func:`make_eval_step` build pure, jittable steps;
  :func:`fit` is the ready-made loop (the only place here that jits), with
  early stopping that respects compression targets, resume and guards
  against non-finite losses (:func:`skip_nonfinite`);
* a model is called as ``apply_fn(variables, x, train=, rng=,
  return_state=)`` (:meth:`jaxcomp.models.ModelSpec.apply_fn`);
  :func:`linen_apply` and :func:`nnx_apply` adapt your own Flax modules.

Checkpoints (:func:`save_checkpoint`, :func:`restore_checkpoint`,
:func:`latest_step`, :func:`checkpoint_extra`, :func:`read_arrays`) use
orbax and verify what they read; the data-parallel
helpers (:func:`make_mesh`, :func:`shard_batch`, :func:`replicate`) live in
:mod:`jaxcomp.parallel` and are re-exported here.
"""

from jaxcomp.core.apply_fns import check_apply_fn, linen_apply, nnx_apply
from jaxcomp.core.optax_bridge import keep_compressed
from jaxcomp.parallel import batch_sharding, make_mesh, replicate, shard_batch
from jaxcomp.train.checkpoint import (
    all_steps,
    checkpoint_extra,
    latest_step,
    read_arrays,
    restore_checkpoint,
    save_checkpoint,
)
from jaxcomp.train.loop import EarlyStopping, fit
from jaxcomp.train.losses import LossFn, batch_mask, masked_mean, supervised_loss
from jaxcomp.train.nonfinite import skip_nonfinite
from jaxcomp.train.progress import format_metrics
from jaxcomp.train.state import TrainState
from jaxcomp.train.steps import (
    aggregate_metrics,
    evaluate,
    make_eval_step,
    make_train_step,
    view_sparsity,
)

__all__ = [
    "EarlyStopping",
    "LossFn",
    "TrainState",
    "aggregate_metrics",
    "all_steps",
    "batch_mask",
    "batch_sharding",
    "check_apply_fn",
    "checkpoint_extra",
    "evaluate",
    "fit",
    "format_metrics",
    "keep_compressed",
    "latest_step",
    "linen_apply",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "masked_mean",
    "nnx_apply",
    "read_arrays",
    "replicate",
    "restore_checkpoint",
    "save_checkpoint",
    "shard_batch",
    "skip_nonfinite",
    "supervised_loss",
    "view_sparsity",
]
