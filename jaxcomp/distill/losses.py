"""Logit-based distillation losses: Hinton KD and multi-teacher soft targets.

Conventions shared by every loss here:

* Logits have shape ``(batch, ..., classes)``; the class axis is last.
* ``mask`` (optional) holds one weight per example, 0 for padded examples;
  losses are **means over unmasked examples**, ``sum(m * l) / sum(m)`` (0 when
  every example is masked).
* No ``stop_gradient`` is applied to teacher logits: these are pure functions
  and mutual-learning setups may want gradients in both nets. The training
  builder :func:`jaxcomp.distill.distillation_loss` stops the teacher's
  gradients.

Validation. Shapes are static and always checked (an empty batch or an empty
class axis is a ``ValueError``: it has no mean). Values are checked when they
are *concrete* (Python numbers, NumPy values, JAX arrays outside a trace):
``temperature > 0``, ``alpha`` in ``[0, 1]``, integer ``labels`` in
``[0, classes)``, teacher ``weights`` non-negative with a positive sum; a
string or bool hyperparameter is a ``TypeError``. Inside ``jit`` (or ``grad``,
``vmap``) a traced value cannot be inspected and an invalid one gives
``inf``/``NaN`` or a wrong finite loss (a label ``-1`` picks the last class).
For those, pass ``checked=True`` and wrap the caller in
:func:`jax.experimental.checkify.checkify`: the checks are staged as
``checkify.check`` and reported through the returned error::

    err, loss = checkify.checkify(jax.jit(functools.partial(kd_loss, checked=True)))(
        s, t, temperature=T)
    err.throw()  # raises JaxRuntimeError naming the bad argument

A ``checked=True`` call staged under ``jit`` without ``checkify.checkify``
fails at trace time (JAX: "Cannot abstractly evaluate a checkify.check which
was not functionalized").

References:
  Hinton, Vinyals, Dean 2015, Distilling the knowledge in a neural network,
  arXiv:1503.02531. You, Xu, Xu, Tao 2017, Learning from multiple teacher
  networks, KDD 2017 (doi:10.1145/3097983.3098135).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from jaxcomp.core.errors import check_class_ids, concrete
from jaxcomp.distill._common import check_fraction, check_positive, masked_mean

__all__ = [
    "kd_loss",
    "multi_teacher_kd_loss",
    "multi_teacher_soft_targets",
    "soft_targets",
]

KDKind = Literal["kl", "ce"]


def _check_kind(kind: str) -> None:
    if kind not in ("kl", "ce"):
        raise ValueError(f"kind must be 'kl' or 'ce', got {kind!r}")


def soft_targets(
    teacher_logits: ArrayLike, *, temperature: float | ArrayLike, checked: bool = False
) -> jax.Array:
    """Softened class probabilities ``softmax(teacher_logits / T)``.

    Args:
      teacher_logits: ``(batch, ..., classes)`` logits.
      temperature: ``T > 0``; larger values give softer distributions.
      checked: stage a ``checkify`` check of a traced ``temperature`` (see the
        module docstring).

    Returns:
      Probabilities of the same shape, summing to 1 over the last axis.

    Example:
      >>> import jax.numpy as jnp
      >>> [round(float(p), 4) for p in soft_targets(jnp.array([[0.0, 2.0]]), temperature=2.0)[0]]
      [0.2689, 0.7311]

    References:
      Hinton et al. 2015, arXiv:1503.02531.
    """
    check_positive("temperature", temperature, checked=checked)
    return jax.nn.softmax(jnp.asarray(teacher_logits, jnp.float32) / temperature, axis=-1)


def log_mixture(
    teacher_logits: Sequence[ArrayLike] | ArrayLike, temperature, weights, checked: bool = False
) -> jax.Array:
    """``log(sum_k w_k softmax(t_k / T))`` computed stably, weights normalised."""
    if isinstance(teacher_logits, (list, tuple)):
        if not teacher_logits:
            raise ValueError("teacher_logits is empty; pass at least one teacher's logits")
        shapes = {tuple(jnp.shape(t)) for t in teacher_logits}
        if len(shapes) != 1:
            raise ValueError(
                f"all teachers' logits must have the same shape, got {sorted(shapes)}; "
                "teachers must share the batch and the class set"
            )
        stacked = jnp.stack([jnp.asarray(t, jnp.float32) for t in teacher_logits])
    else:
        stacked = jnp.asarray(teacher_logits, jnp.float32)
        if stacked.ndim < 2:
            raise ValueError(
                "teacher_logits must be a list of (batch, classes) arrays or one stacked "
                f"(teachers, batch, classes) array, got shape {stacked.shape}"
            )
    n = stacked.shape[0]
    if weights is None:
        log_w = jnp.full((n,), -jnp.log(n), jnp.float32)
    else:
        if isinstance(weights, (list, tuple)) and len(weights) != n:
            raise ValueError(f"weights has {len(weights)} entries for {n} teachers")
        if isinstance(weights, (list, tuple)) and any(
            isinstance(w, (str, bool)) for w in weights
        ):
            raise TypeError(f"weights must be real numbers, got {list(weights)!r}")
        host = None
        if isinstance(weights, (list, tuple)):
            parts = [concrete(w) for w in weights]
            if all(p is not None for p in parts):
                host = np.asarray([float(p) for p in parts])
        else:
            host = concrete(weights)
        if host is not None and not (
            np.issubdtype(host.dtype, np.floating) or np.issubdtype(host.dtype, np.integer)
        ):
            raise TypeError(f"weights must be real numbers, got dtype {host.dtype}")
        w = jnp.asarray(weights, jnp.float32)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},) (one per teacher), got {w.shape}")
        if host is not None:
            if not np.all(host >= 0) or not host.sum() > 0:
                raise ValueError(
                    f"weights must be non-negative with a positive sum, got {host.tolist()}"
                )
        elif checked:
            checkify.check(
                jnp.all(w >= 0) & (jnp.sum(w) > 0),
                "weights must be non-negative with a positive sum, got {}",
                w,
            )
        w = w / jnp.sum(w)
        log_w = jnp.log(w)
    log_p = jax.nn.log_softmax(stacked / temperature, axis=-1)
    log_w = log_w.reshape((n,) + (1,) * (stacked.ndim - 1))
    return jax.nn.logsumexp(log_p + log_w, axis=0)


def multi_teacher_soft_targets(
    teacher_logits: Sequence[ArrayLike] | ArrayLike,
    *,
    temperature: float | ArrayLike,
    weights: Sequence[float] | ArrayLike | None = None,
    checked: bool = False,
) -> jax.Array:
    """Weighted average of the teachers' softened distributions.

    ``sum_k w_k softmax(t_k / T)`` with ``w`` normalised to sum to 1 (uniform
    when ``weights`` is None), as in You et al. 2017. Averaging happens in
    probability space, not over logits.

    Args:
      teacher_logits: a list of ``(batch, ..., classes)`` arrays, one per
        teacher, or one stacked ``(teachers, batch, ..., classes)`` array.
      temperature: ``T > 0``.
      weights: one non-negative weight per teacher (normalised here), or None
        for the plain average. May be a traced array (e.g. learned weights
        passed through a softmax).
      checked: stage ``checkify`` checks of traced ``temperature`` and
        ``weights`` (see the module docstring).

    Returns:
      Probabilities of shape ``(batch, ..., classes)``.

    Example:
      >>> import jax.numpy as jnp
      >>> t1, t2 = jnp.array([[0.0, 0.0]]), jnp.array([[0.0, jnp.log(3.0)]])
      >>> multi_teacher_soft_targets([t1, t2], temperature=1.0).round(4)
      Array([[0.375, 0.625]], dtype=float32)

    References:
      You et al. 2017, Learning from multiple teacher networks, KDD.
    """
    check_positive("temperature", temperature, checked=checked)
    return jnp.exp(log_mixture(teacher_logits, temperature, weights, checked))


def soft_term(student_logits, log_targets, temperature, kind) -> jax.Array:
    """Per-example ``T^2 * KL(p || q)`` (or cross-entropy) at temperature ``T``."""
    log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    p = jnp.exp(log_targets)
    # Zero-probability classes contribute 0 (and finite gradients), never 0 * inf.
    log_p = jnp.where(p > 0, log_targets, 0.0)
    if kind == "kl":
        per = jnp.sum(p * (log_p - log_q), axis=-1)
    else:
        per = -jnp.sum(p * log_q, axis=-1)
    return per * (temperature**2)


def hard_ce(student_logits: jax.Array, labels: ArrayLike, *, checked: bool = False) -> jax.Array:
    """Per-example cross-entropy at T = 1 with integer labels or target distributions."""
    host = concrete(labels)
    if host is not None and not (
        host.dtype == np.bool_
        or np.issubdtype(host.dtype, np.integer)
        or np.issubdtype(host.dtype, np.floating)
    ):
        raise TypeError(f"labels must be integer class ids or probabilities, got dtype {host.dtype}")
    labels = jnp.asarray(labels)
    log_q = jax.nn.log_softmax(student_logits, axis=-1)
    if labels.shape == student_logits.shape and jnp.issubdtype(labels.dtype, jnp.floating):
        return -jnp.sum(labels * log_q, axis=-1)
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"labels has shape {labels.shape}; expected integer class ids of shape "
            f"{student_logits.shape[:-1]} or probabilities of shape {student_logits.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"integer labels expected, got dtype {labels.dtype}")
    check_class_ids("labels", host if host is not None else labels, student_logits.shape[-1],
                    checked=checked)
    return -jnp.take_along_axis(log_q, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _check_logits(student_logits, teacher_shape) -> jax.Array:
    s = jnp.asarray(student_logits)
    if s.ndim < 1:
        raise ValueError("student_logits must have a class axis, got a scalar")
    if s.shape[-1] == 0:
        raise ValueError(f"student_logits has shape {s.shape}: the class axis is empty")
    if s.size == 0:
        raise ValueError(
            f"student_logits has shape {s.shape}: an empty batch has no mean loss; skip "
            "empty batches (or pad them and pass mask=0 for the padding)"
        )
    if tuple(s.shape) != tuple(teacher_shape):
        raise ValueError(
            f"student_logits has shape {s.shape} but the teacher's logits have shape "
            f"{tuple(teacher_shape)}; they must match (same batch, same classes)"
        )
    return s.astype(jnp.promote_types(s.dtype, jnp.float32))


def _combine(soft, student_logits, labels, alpha, mask, checked) -> jax.Array:
    if labels is None:
        return masked_mean(soft, mask)
    per = alpha * soft + (1.0 - alpha) * hard_ce(student_logits, labels, checked=checked)
    return masked_mean(per, mask)


def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | ArrayLike,
    labels: ArrayLike | None = None,
    alpha: float | ArrayLike = 0.5,
    mask: ArrayLike | None = None,
    kind: KDKind = "kl",
    checked: bool = False,
) -> jax.Array:
    """Hinton knowledge distillation loss.

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``,
    computed from log-softmaxes (finite for logits of any magnitude). The
    ``T^2`` factor keeps the soft term's gradient w.r.t. the student logits at
    the same scale for every temperature (its gradient is
    ``T * (softmax(s/T) - softmax(t/T))``, which tends to ``(s - t)/C`` for
    zero-mean logits and large ``T``), so ``alpha`` means the same thing at
    ``T = 2`` and ``T = 20``.

    When ``labels`` is None only the soft term is returned and ``alpha`` is
    ignored (the soft term is *not* scaled by ``alpha``).

    Args:
      student_logits: ``(batch, ..., classes)``.
      teacher_logits: same shape.
      temperature: ``T > 0``.
      labels: optional integer class ids ``(batch, ...)`` or target
        probabilities of the logits' shape, for the hard cross-entropy term
        (at ``T = 1``).
      alpha: weight of the soft term, in ``[0, 1]``.
      mask: optional per-example weights (0 for padded examples).
      kind: ``"kl"`` (default) for ``KL(p_t || p_s)``, or ``"ce"`` for the soft
        cross-entropy ``-sum p_t log p_s``. They differ by the teacher's
        entropy ``T^2 H(p_t)``, a constant for the student: same gradients,
        different value (``"kl"`` is 0 when the student matches the teacher).
      checked: stage ``checkify`` checks of traced ``temperature``, ``alpha``
        and ``labels`` so that ``checkify.checkify`` reports them under
        ``jit`` (see the module docstring). Concrete values are checked
        eagerly either way.

    Returns:
      The scalar loss, averaged over unmasked examples.

    Raises:
      ValueError: mismatched shapes, an empty batch, concrete ``temperature
        <= 0``, ``alpha`` outside ``[0, 1]`` or labels outside ``[0,
        classes)``, bad ``kind``, or a mask of the wrong shape.
      TypeError: a non-numeric ``temperature``/``alpha`` (e.g. a string) or
        labels of the wrong dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> s = jnp.array([[1.0, 2.0, 3.0]]); t = jnp.array([[3.0, 2.0, 1.0]])
      >>> float(kd_loss(s, s, temperature=4.0))
      0.0
      >>> round(float(kd_loss(s, t, temperature=1.0)), 4)
      1.1504
      >>> round(float(kd_loss(s, t, temperature=1.0, labels=jnp.array([2]), alpha=0.5)), 4)
      0.779

      A traced temperature is checked through ``checkify``:

      >>> import functools, jax
      >>> from jax.experimental import checkify
      >>> f = checkify.checkify(jax.jit(functools.partial(kd_loss, checked=True)))
      >>> err, _ = f(s, t, temperature=jnp.float32(-1.0))
      >>> err.get()
      'temperature must lie in (0.0, inf), got -1.0 (`check` failed)'

    References:
      Hinton, Vinyals, Dean 2015, arXiv:1503.02531.
    """
    _check_kind(kind)
    check_positive("temperature", temperature, checked=checked)
    check_fraction("alpha", alpha, checked=checked)
    t = jnp.asarray(teacher_logits)
    s = _check_logits(student_logits, t.shape)
    log_p = jax.nn.log_softmax(t.astype(s.dtype) / temperature, axis=-1)
    soft = soft_term(s, log_p, temperature, kind)
    return _combine(soft, s, labels, alpha, mask, checked)


def multi_teacher_kd_loss(
    student_logits: ArrayLike,
    teacher_logits: Sequence[ArrayLike] | ArrayLike,
    *,
    temperature: float | ArrayLike,
    weights: Sequence[float] | ArrayLike | None = None,
    labels: ArrayLike | None = None,
    alpha: float | ArrayLike = 0.5,
    mask: ArrayLike | None = None,
    kind: KDKind = "kl",
    checked: bool = False,
) -> jax.Array:
    """KD against the (weighted) average of several teachers' soft targets.

    The target is ``p = sum_k w_k softmax(t_k / T)`` (see
    :func:`multi_teacher_soft_targets`); the loss is
    ``alpha * T^2 * KL(p || softmax(s/T)) + (1 - alpha) * CE(s, labels)``,
    the soft term alone when ``labels`` is None. With one teacher it equals
    :func:`kd_loss`.

    Args:
      student_logits: ``(batch, ..., classes)``.
      teacher_logits: a list of arrays shaped like ``student_logits``, or one
        stacked ``(teachers, batch, ..., classes)`` array.
      temperature: ``T > 0``.
      weights: per-teacher weights (normalised to sum 1), None for uniform. A
        traced array works too, e.g. ``jax.nn.softmax(learned_logits)``;
        note that minimising this loss over the weights favours the teachers
        the student already agrees with.
      labels: optional hard labels (see :func:`kd_loss`).
      alpha: weight of the soft term in ``[0, 1]``.
      mask: optional per-example weights.
      kind: ``"kl"`` or ``"ce"`` (see :func:`kd_loss`).
      checked: stage ``checkify`` checks of traced ``temperature``, ``alpha``,
        ``weights`` and ``labels`` (see :func:`kd_loss`).

    Returns:
      The scalar loss, averaged over unmasked examples.

    Example:
      >>> import jax.numpy as jnp
      >>> s = jnp.zeros((1, 3)); t = jnp.array([[1.0, 0.0, -1.0]])
      >>> bool(jnp.isclose(multi_teacher_kd_loss(s, [t, t], temperature=2.0),
      ...                  kd_loss(s, t, temperature=2.0)))
      True

    References:
      You et al. 2017, Learning from multiple teacher networks, KDD;
      Hinton et al. 2015, arXiv:1503.02531.
    """
    _check_kind(kind)
    check_positive("temperature", temperature, checked=checked)
    check_fraction("alpha", alpha, checked=checked)
    log_p = log_mixture(teacher_logits, temperature, weights, checked)
    s = _check_logits(student_logits, log_p.shape)
    soft = soft_term(s, log_p, temperature, kind)
    return _combine(soft, s, labels, alpha, mask, checked)
