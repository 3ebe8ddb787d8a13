"""Knowledge distillation: losses, feature taps and the teacher-in-the-step loss builder.

* Logit losses (:mod:`.losses`): :func:`kd_loss` (Hinton KD, ``kind="kl"|"ce"``),
  :func:`soft_targets`, :func:`multi_teacher_soft_targets`,
  :func:`multi_teacher_kd_loss`.
* Feature losses (:mod:`.features`, :mod:`.relational`): FitNets
  :func:`hint_loss` with :func:`init_regressor`, :func:`attention_transfer_loss`,
  :func:`fsp_loss`, relational :func:`rkd_distance_loss` / :func:`rkd_angle_loss`.
* Taps (:mod:`.taps`): :func:`linen_taps` and :func:`nnx_taps` capture named
  intermediate activations without editing model code.
* Training (:mod:`.builder`, :mod:`.teachers`): :func:`distillation_loss` builds a
  ``loss_fn(params, model_state, batch, rng)`` for ``jaxcomp.train``;
  :func:`precompute_logits` caches a teacher's logits.

Every loss is pure, jittable and differentiable, and takes ``mask=`` (one weight
per example, 0 for padding); reductions are means over unmasked examples.
"""

from jaxcomp.distill.builder import DistillationLoss, distillation_loss
from jaxcomp.distill.features import (
    apply_regressor,
    attention_map,
    attention_transfer_loss,
    fsp_loss,
    fsp_matrix,
    hint_loss,
    init_regressor,
    multi_teacher_hint_loss,
)
from jaxcomp.distill.losses import (
    kd_loss,
    multi_teacher_kd_loss,
    multi_teacher_soft_targets,
    soft_targets,
)
from jaxcomp.distill.relational import rkd_angle_loss, rkd_distance_loss, rkd_loss
from jaxcomp.distill.taps import linen_taps, nnx_taps
from jaxcomp.distill.teachers import (
    DISTILL_KEY,
    TEACHER_STATE_KEY,
    precompute_logits,
    split_distill_params,
)

__all__ = [
    "DISTILL_KEY",
    "TEACHER_STATE_KEY",
    "DistillationLoss",
    "apply_regressor",
    "attention_map",
    "attention_transfer_loss",
    "distillation_loss",
    "fsp_loss",
    "fsp_matrix",
    "hint_loss",
    "init_regressor",
    "kd_loss",
    "linen_taps",
    "multi_teacher_hint_loss",
    "multi_teacher_kd_loss",
    "multi_teacher_soft_targets",
    "nnx_taps",
    "precompute_logits",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "soft_targets",
    "split_distill_params",
]
