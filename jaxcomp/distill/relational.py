"""Relational knowledge distillation (RKD): distance-wise and angle-wise losses.

RKD transfers the *structure* of a batch of embeddings rather than each
output: pairwise distances (normalised by their mean, so the student need not
match the teacher's scale) and the angles formed by triplets. Both compare
student and teacher relations with the Huber loss (smooth L1, ``delta = 1``).

Embeddings are ``(batch, ...)``; every axis after the batch is flattened.
Masked examples (``mask == 0``) take part in no pair or triplet. Unlike the
authors' code, degenerate relations (``i == j``, and triplets with repeated
indices) are left out of the means instead of contributing zeros, so a batch
of ``n`` valid examples averages over ``n (n - 1)`` pairs and
``n (n - 1) (n - 2)`` triplets.

References:
  Park, Kim, Lu, Cho 2019, Relational knowledge distillation,
  arXiv:1904.05068.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxcomp.distill._common import check_mask, check_positive

__all__ = ["rkd_angle_loss", "rkd_distance_loss", "rkd_loss"]

_EPS = 1e-12


def _flat(x: ArrayLike, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{name} must be (batch, features...), got shape {x.shape}")
    return x.reshape(x.shape[0], -1).astype(jnp.promote_types(x.dtype, jnp.float32))


def _pair(student: ArrayLike, teacher: ArrayLike, mask: ArrayLike | None):
    s, t = _flat(student, "student"), _flat(teacher, "teacher")
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"student has {s.shape[0]} examples but teacher {t.shape[0]}; embeddings must "
            "come from the same batch"
        )
    n = s.shape[0]
    m = jnp.ones((n,)) if mask is None else check_mask(mask, (n,))
    return s, t, m


def _huber(x: jax.Array, delta: float) -> jax.Array:
    ax = jnp.abs(x)
    return jnp.where(ax < delta, 0.5 * jnp.square(x) / delta, ax - 0.5 * delta)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    # sqrt with a finite gradient at 0 (the excluded i == j entries).
    pos = x > _EPS
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _distances(e: jax.Array) -> jax.Array:
    sq = jnp.sum(jnp.square(e), axis=-1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (e @ e.T), 0.0)
    return _safe_sqrt(d2)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0), 0.0)


def rkd_distance_loss(
    student: ArrayLike,
    teacher: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    delta: float = 1.0,
) -> jax.Array:
    """RKD distance-wise loss.

    ``psi(e_i, e_j) = ||e_i - e_j|| / mu`` with ``mu`` the mean distance over
    the batch's valid pairs (each network normalised by its own ``mu``); the
    loss is the Huber loss between student and teacher ``psi`` averaged over
    valid pairs ``i != j``.

    Args:
      student: ``(batch, ...)`` student embeddings.
      teacher: ``(batch, ...)`` teacher embeddings (widths may differ).
      mask: optional per-example weights; masked examples join no pair.
      delta: threshold of the smooth-L1 loss (``0.5 x^2 / delta`` below it,
        ``|x| - delta / 2`` above; the Huber loss at ``delta = 1``).

    Returns:
      Scalar loss.

    Example:
      >>> import jax.numpy as jnp
      >>> e = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
      >>> round(float(rkd_distance_loss(e, 3.0 * e)), 6)  # scale-invariant
      0.0

    References:
      Park et al. 2019, arXiv:1904.05068.
    """
    check_positive("delta", delta)
    s, t, m = _pair(student, teacher, mask)
    n = s.shape[0]
    w = m[:, None] * m[None, :] * (1.0 - jnp.eye(n))
    ds, dt = _distances(s), _distances(t)
    ds = ds / jnp.maximum(_weighted_mean(ds, w), _EPS)
    dt = dt / jnp.maximum(_weighted_mean(dt, w), _EPS)
    return _weighted_mean(_huber(ds - dt, delta), w)


def _angles(e: jax.Array) -> jax.Array:
    """``cos[i, j, k] = <u(e_i - e_j), u(e_k - e_j)>`` (vertex ``j``), u = unit vector."""
    diff = e[:, None, :] - e[None, :, :]  # diff[i, j] = e_i - e_j
    norm = _safe_sqrt(jnp.sum(jnp.square(diff), axis=-1))
    unit = diff / jnp.maximum(norm, _EPS)[..., None]
    return jnp.einsum("ijd,kjd->ijk", unit, unit)


def rkd_angle_loss(
    student: ArrayLike,
    teacher: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    delta: float = 1.0,
) -> jax.Array:
    """RKD angle-wise loss.

    ``psi(e_i, e_j, e_k) = cos angle(e_i, e_j, e_k) = <u_ij, u_kj>`` with
    ``u_ij = (e_i - e_j) / ||e_i - e_j||``; the loss is the Huber loss between
    student and teacher angles averaged over triplets of distinct valid
    examples. Memory is ``O(batch^2 * features + batch^3)``.

    Args:
      student: ``(batch, ...)`` student embeddings.
      teacher: ``(batch, ...)`` teacher embeddings.
      mask: optional per-example weights.
      delta: smooth-L1 threshold (see :func:`rkd_distance_loss`).

    Returns:
      Scalar loss.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> e = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> round(float(jax.jit(rkd_angle_loss)(e, 2.0 * e + 1.0)), 6)  # similarity-invariant
      0.0

    References:
      Park et al. 2019, arXiv:1904.05068.
    """
    check_positive("delta", delta)
    s, t, m = _pair(student, teacher, mask)
    n = s.shape[0]
    off = 1.0 - jnp.eye(n)
    w = (
        (m[:, None, None] * m[None, :, None] * m[None, None, :])
        * off[:, :, None]
        * off[None, :, :]
        * off[:, None, :]
    )
    return _weighted_mean(_huber(_angles(s) - _angles(t), delta), w)


def rkd_loss(
    student: ArrayLike,
    teacher: ArrayLike,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    mask: ArrayLike | None = None,
) -> jax.Array:
    """The combined RKD loss ``distance_weight * L_D + angle_weight * L_A``.

    The defaults (25 and 50) are the paper's metric-learning settings.

    Example:
      >>> import jax
      >>> s = jax.random.normal(jax.random.key(0), (4, 3))
      >>> round(float(jax.jit(rkd_loss)(s, 2.0 * s)), 6)
      0.0

    References:
      Park et al. 2019, arXiv:1904.05068.
    """
    out = 0.0
    if distance_weight:
        out = out + distance_weight * rkd_distance_loss(student, teacher, mask=mask)
    if angle_weight:
        out = out + angle_weight * rkd_angle_loss(student, teacher, mask=mask)
    return jnp.asarray(out, jnp.float32)
