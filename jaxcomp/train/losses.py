"""Loss functions with the training-interface signature.

A loss function is ``loss_fn(params, model_state, batch, rng) -> (loss,
(new_model_state, metrics))``; ``batch`` is a dict with ``"x"``, ``"y"`` and an
optional per-example ``"mask"`` (0 for padding), which every loss and metric
here respects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxcomp.core.apply_fns import ADAPTER_HINT, check_apply_fn
from jaxcomp.core.errors import check_class_ids, check_in_range

__all__ = ["LossFn", "batch_mask", "masked_mean", "supervised_loss"]

LossFn = Callable[[Any, Any, Mapping[str, Any], jax.Array], tuple[jax.Array, tuple[Any, dict]]]


def batch_mask(batch: Mapping[str, Any], n: int | None = None) -> jax.Array:
    """The per-example weights of a batch: ``batch["mask"]`` as float32, or ones.

    Args:
      batch: a batch dict.
      n: number of examples when the batch has no ``"x"`` (otherwise taken
        from ``batch["x"]``'s leading axis).
    """
    if "mask" in batch:
        return jnp.asarray(batch["mask"]).astype(jnp.float32)
    if n is None:
        n = jax.tree_util.tree_leaves(batch.get("x", batch))[0].shape[0]
    return jnp.ones((n,), jnp.float32)


def masked_mean(values: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Mean of per-example ``values`` weighted by ``mask`` (0 when all weights are 0).

    Args:
      values: per-example values, shape ``(batch,)``.
      mask: per-example weights of the same shape, or ``None`` for a plain mean.

    Returns:
      ``sum(values * mask) / sum(mask)``, a float32 scalar; ``0`` if
      ``sum(mask) == 0`` (an all-padding batch contributes nothing).

    Example:
      >>> import jax.numpy as jnp
      >>> float(masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1, 1, 0])))
      2.0
    """
    values = jnp.asarray(values).astype(jnp.float32)
    if mask is None:
        return jnp.mean(values)
    mask = jnp.asarray(mask).astype(jnp.float32)
    if mask.shape != values.shape:
        raise ValueError(
            f"masked_mean: mask of shape {mask.shape} does not match values of shape "
            f"{values.shape}; the mask holds one weight per example"
        )
    total = jnp.sum(mask)
    return jnp.where(total > 0, jnp.sum(values * mask) / jnp.where(total > 0, total, 1.0), 0.0)


def supervised_loss(
    apply_fn: Callable[..., Any], *, label_smoothing: float = 0.0, train: bool = True,
    checked: bool = False,
) -> LossFn:
    """The standard classification loss: softmax cross-entropy and accuracy.

    ``apply_fn`` has the :meth:`jaxcomp.models.ModelSpec.apply_fn` signature
    ``apply_fn(variables, x, train=..., rng=..., return_state=...)`` and
    returns ``(logits, new_model_state)`` with ``return_state=True``. The
    variables passed are ``{"params": params, **model_state}``.

    Labels ``batch["y"]`` are integer classes, or class probabilities when
    they have the logits' rank. Padded examples (``batch["mask"] == 0``) do
    not count in the loss or the metrics. Concrete integer labels outside
    ``[0, classes)`` and an empty batch are errors. Under ``jit`` the labels
    are traced and cannot be checked: an out-of-range label then has an
    all-zero target (its cross-entropy term is 0 and it counts as wrong),
    unless the loss is built with ``checked=True`` and the step runs under
    :func:`jax.experimental.checkify.checkify`, which reports it.

    Args:
      apply_fn: the model's apply function.
      label_smoothing: in ``[0, 1)``; mixes the one-hot target with the
        uniform distribution (Szegedy et al., arXiv:1512.00567).
      train: training mode (dropout on, BatchNorm batch statistics and
        running-average updates). Build the loss for
        :func:`~jaxcomp.train.make_eval_step` with ``train=False``.
      checked: stage ``checkify`` checks of traced labels (run the step
        under ``checkify.checkify``; without it ``jit`` fails to trace them).

    Returns:
      ``loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state,
      {"loss": ..., "accuracy": ...}))``.

    Raises:
      ValueError: if ``label_smoothing`` is outside ``[0, 1)``; when called,
        for an empty batch or concrete labels outside ``[0, classes)``.
      TypeError: if ``apply_fn`` is not callable or does not have the
        signature above (a Flax module or ``module.apply``): the message
        names the adapters :func:`~jaxcomp.train.linen_apply` and
        :func:`~jaxcomp.train.nnx_apply`. Also raised when called, if
        ``apply_fn`` does not return ``(logits, state)`` for
        ``return_state=True``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def apply_fn(variables, x, train=False, rng=None, return_state=False):
      ...     logits = x @ variables["params"]["w"]  # any ModelSpec.apply_fn works here
      ...     return (logits, {}) if return_state else logits
      >>> loss_fn = supervised_loss(apply_fn)
      >>> batch = {"x": jnp.eye(3), "y": jnp.array([0, 1, 0]), "mask": jnp.array([1, 1, 0])}
      >>> loss, (_, metrics) = loss_fn({"w": 10 * jnp.eye(3)}, {}, batch, jax.random.key(1))
      >>> float(metrics["accuracy"]), bool(loss < 1e-3)
      (1.0, True)

    References:
      Szegedy et al., "Rethinking the Inception architecture" (label
      smoothing), arXiv:1512.00567.
    """
    check_apply_fn(apply_fn, "supervised_loss: apply_fn")
    check_in_range("label_smoothing", label_smoothing, 0.0, 1.0, high_inclusive=False)

    def loss_fn(params, model_state, batch, rng):
        model_state = {} if model_state is None else model_state
        variables = {"params": params, **model_state}
        try:
            out = apply_fn(variables, batch["x"], train=train, rng=rng, return_state=True)
        except TypeError as e:
            if "unexpected keyword argument" in str(e) and any(
                    k in str(e) for k in ("'train'", "'rng'", "'return_state'")):
                raise TypeError(
                    f"supervised_loss: apply_fn is called as apply_fn(variables, x, train=..., "
                    f"rng=..., return_state=True) and passed them on to a function that does "
                    f"not take them ({e}); {ADAPTER_HINT}"
                ) from e
            raise
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "supervised_loss: apply_fn(..., return_state=True) must return (logits, "
                f"new_model_state), got {type(out).__name__}; {ADAPTER_HINT}"
            )
        logits, new_state = out
        new_model_state = {**model_state, **dict(new_state or {})}
        logits = logits.astype(jnp.float32)
        y = jnp.asarray(batch["y"])
        num_classes = logits.shape[-1]
        if logits.shape[0] == 0:
            raise ValueError("supervised_loss: the batch is empty (0 examples); the mean loss "
                             "of no examples is undefined — drop empty batches")
        if y.ndim != logits.ndim:
            check_class_ids('supervised_loss: batch["y"]', y, num_classes, checked=checked)
        if y.ndim == logits.ndim:
            targets = y.astype(jnp.float32)
            labels = jnp.argmax(y, axis=-1)
        else:
            targets = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
            labels = y
        if label_smoothing:
            targets = optax.smooth_labels(targets, label_smoothing)
        ce = optax.softmax_cross_entropy(logits, targets)
        mask = batch_mask(batch, logits.shape[0])
        loss = masked_mean(ce, mask)
        acc = masked_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), mask)
        return loss, (new_model_state, {"loss": loss, "accuracy": acc})

    return loss_fn
