"""Teachers outside the training step: precomputed logits and params-tree helpers.

Precomputing a frozen teacher's logits once turns every later epoch's teacher
forward into a lookup: store them next to the inputs as
``batch["teacher_logits"]`` and build the loss with
``distillation_loss(..., precomputed=True)``. For several teachers stack their
logits on axis 1: ``(examples, teachers, classes)``, so the leading axis stays
the example axis that batching and gradient accumulation split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["DISTILL_KEY", "TEACHER_STATE_KEY", "precompute_logits", "split_distill_params"]

#: Key of the trainable distillation parts (regressors, learned teacher weights) in params.
DISTILL_KEY = "distill"
#: Key under which ``model_state`` may carry the teacher's variables.
TEACHER_STATE_KEY = "teacher"


def split_distill_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits ``{**student_params, "distill": {...}}`` into student params and distill params.

    Args:
      params: the trainable tree of a distillation run.

    Returns:
      ``(student_params, distill_params)``; the second is ``{}`` when absent.

    Example:
      >>> split_distill_params({"fc1": 1, "distill": {"hint_0": 2}})
      ({'fc1': 1}, {'hint_0': 2})
    """
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict of the student's params (plus 'distill'), got "
            f"{type(params).__name__}"
        )
    student = {k: v for k, v in params.items() if k != DISTILL_KEY}
    return student, dict(params.get(DISTILL_KEY, {}) or {})


def precompute_logits(
    apply_fn: Callable[..., Any],
    variables: Any,
    x: ArrayLike,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Computes a model's logits for a whole dataset, in jitted chunks.

    The forward ``apply_fn(variables, xb, train=False)`` (the
    ``ModelSpec.apply_fn`` signature) is compiled once; the last chunk is
    zero-padded to the chunk size so no second compilation happens, and the
    padding rows are dropped from the result.

    Args:
      apply_fn: apply function with the ``ModelSpec.apply_fn`` signature.
      variables: the model's variables (teacher in eval mode: BatchNorm uses
        its running averages, dropout is off).
      x: inputs ``(examples, ...)`` (NumPy or JAX).
      batch_size: chunk size (capped at the number of examples).

    Returns:
      A NumPy array ``(examples, ...logit dims)``.

    Example:
      >>> import jax
      >>> from jaxcomp.models import get_model
      >>> spec = get_model("mnist1d_mlp")
      >>> v = spec.init(jax.random.key(0))
      >>> precompute_logits(spec.apply_fn, v, spec.example_input(5), batch_size=2).shape
      (5, 10)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not hasattr(x, "shape") or len(x.shape) < 1:
        raise ValueError("x must be an array with a leading example axis")
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("x has no examples")
    size = min(int(batch_size), n)
    forward = jax.jit(lambda v, xb: apply_fn(v, xb, train=False))
    chunks = []
    for start in range(0, n, size):
        xb = jnp.asarray(x[start : start + size])
        k = xb.shape[0]
        if k < size:
            xb = jnp.concatenate([xb, jnp.zeros((size - k, *xb.shape[1:]), xb.dtype)])
        chunks.append(np.asarray(jax.device_get(forward(variables, xb)))[:k])
    return np.concatenate(chunks, axis=0)
