"""Feature-based distillation: FitNets hints, attention transfer and FSP matrices.

Feature maps are channels-last with the batch first: ``(batch, channels)``
for dense layers, ``(batch, length, channels)`` for 1-D convolutions,
``(batch, height, width, channels)`` for 2-D ones (Flax's layouts). Every
loss is a mean over unmasked examples (``mask`` holds one weight per example,
0 for padded ones).

References:
  Romero et al. 2015, FitNets: hints for thin deep nets, arXiv:1412.6550.
  Zagoruyko & Komodakis 2017, Paying more attention to attention,
  arXiv:1612.03928. Yim, Joo, Bae, Kim 2017, A gift from knowledge
  distillation, CVPR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxcomp.core.errors import check_in_range
from jaxcomp.distill._common import (
    as_list,
    check_positive,
    check_same_length,
    is_static_number,
    masked_mean,
)

__all__ = [
    "apply_regressor",
    "attention_map",
    "attention_transfer_loss",
    "fsp_loss",
    "fsp_matrix",
    "hint_loss",
    "init_regressor",
    "multi_teacher_hint_loss",
]

RegressorKind = Literal["conv1x1", "linear"]
PoolMode = Literal["avg", "max"]


def _shape_of(x: Any, name: str) -> tuple[int, ...]:
    shape = getattr(x, "shape", x)
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a shape tuple or an array, got {type(x).__name__}"
        ) from None
    if len(shape) < 2:
        raise ValueError(
            f"{name}={shape} must include the batch axis first and a feature axis last, "
            "e.g. (batch, channels) or (batch, height, width, channels)"
        )
    return shape


def init_regressor(
    key: jax.Array,
    student_shape: Sequence[int] | ArrayLike,
    teacher_shape: Sequence[int] | ArrayLike,
    *,
    kind: RegressorKind = "conv1x1",
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
    """Initialises a FitNets regressor mapping student features to the teacher's width.

    Args:
      key: PRNG key (first, as for Flax initialisers).
      student_shape: shape of the student feature, batch axis first (an
        array or ``jax.ShapeDtypeStruct`` works too).
      teacher_shape: shape of the teacher feature, batch axis first.
      kind: ``"conv1x1"``: one ``(C_s, C_t)`` matrix applied at every spatial
        position (a 1×1 convolution; for ``(batch, C)`` features it is a dense
        layer); ``"linear"``: a dense layer on the flattened per-example
        features, ``(prod(student dims), prod(teacher dims))``.
      dtype: parameter dtype.

    Returns:
      ``{"kernel": (d_in, d_out), "bias": (d_out,)}`` with a LeCun-normal
      kernel and a zero bias. Put it in the trainable params tree, e.g. under
      ``params["distill"]["hint_0"]``.

    Example:
      >>> import jax
      >>> r = init_regressor(jax.random.key(0), (8, 4, 4, 16), (8, 4, 4, 32))
      >>> r["kernel"].shape, r["bias"].shape
      ((16, 32), (32,))

    References:
      Romero et al. 2015, arXiv:1412.6550.
    """
    s = _shape_of(student_shape, "student_shape")
    t = _shape_of(teacher_shape, "teacher_shape")
    if kind == "conv1x1":
        d_in, d_out = s[-1], t[-1]
    elif kind == "linear":
        d_in, d_out = math.prod(s[1:]), math.prod(t[1:])
    else:
        raise ValueError(f"kind must be 'conv1x1' or 'linear', got {kind!r}")
    kernel = jax.nn.initializers.lecun_normal()(key, (d_in, d_out), dtype)
    return {"kernel": kernel, "bias": jnp.zeros((d_out,), dtype)}


def apply_regressor(features: ArrayLike, regressor_params: Mapping[str, ArrayLike]) -> jax.Array:
    """Applies a regressor from :func:`init_regressor` to a batch of features.

    The regressor kind is read off the kernel: ``kernel.shape[0] ==
    channels`` means a 1×1 convolution (channels-last), ``== prod(per-example
    dims)`` a dense layer on flattened features (output ``(batch, d_out)``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> r = init_regressor(jax.random.key(0), (2, 3, 3, 4), (2, 3, 3, 6))
      >>> apply_regressor(jnp.ones((2, 3, 3, 4)), r).shape
      (2, 3, 3, 6)
    """
    f = jnp.asarray(features)
    if not isinstance(regressor_params, Mapping) or "kernel" not in regressor_params:
        raise TypeError(
            "regressor_params must be a dict with 'kernel' (and optional 'bias') from "
            f"init_regressor, got {type(regressor_params).__name__}"
        )
    kernel = jnp.asarray(regressor_params["kernel"])
    bias = regressor_params.get("bias")
    if kernel.ndim != 2:
        raise ValueError(f"regressor kernel must be 2-D (d_in, d_out), got shape {kernel.shape}")
    if kernel.shape[0] == f.shape[-1]:
        y = jnp.einsum("...c,cd->...d", f, kernel)
    elif kernel.shape[0] == math.prod(f.shape[1:]):
        y = f.reshape(f.shape[0], -1) @ kernel
    else:
        raise ValueError(
            f"regressor kernel {kernel.shape} does not fit features of shape {f.shape}: "
            f"its input size must be the channel count {f.shape[-1]} (conv1x1) or the "
            f"flattened size {math.prod(f.shape[1:])} (linear); re-create it with "
            "init_regressor(key, student_shape, teacher_shape)"
        )
    return y if bias is None else y + jnp.asarray(bias)


def _pool_to(x: jax.Array, spatial: tuple[int, ...], mode: str, name: str) -> jax.Array:
    """Pools the spatial axes of ``x`` (batch, *sp, C) down to ``spatial`` by integer factors."""
    src = x.shape[1:-1]
    if src == spatial:
        return x
    shape, reduce_axes = [x.shape[0]], []
    for i, (a, b) in enumerate(zip(src, spatial, strict=True)):
        if a % b:
            raise ValueError(
                f"cannot pool {name} spatial size {src} to {spatial}: axis {i} size {a} "
                f"is not a multiple of {b}"
            )
        shape += [b, a // b]
        reduce_axes.append(2 + 2 * i)
    y = x.reshape(*shape, x.shape[-1])
    return jnp.mean(y, axis=tuple(reduce_axes)) if mode == "avg" else jnp.max(y, reduce_axes)


def _match_spatial(s: jax.Array, t: jax.Array, pool: str | None, what: str):
    """Brings student and teacher features to the same spatial size (or raises)."""
    if s.shape[1:-1] == t.shape[1:-1]:
        return s, t
    if s.ndim != t.ndim:
        raise ValueError(
            f"{what}: student features {s.shape} and teacher features {t.shape} have "
            "different ranks; tap layers of the same kind or use a 'linear' regressor"
        )
    if pool is None:
        raise ValueError(
            f"{what}: student spatial size {s.shape[1:-1]} differs from the teacher's "
            f"{t.shape[1:-1]}; tap layers with equal resolution or pass pool='avg' "
            "(or 'max') to pool the larger map down by an integer factor"
        )
    if pool not in ("avg", "max"):
        raise ValueError(f"pool must be None, 'avg' or 'max', got {pool!r}")
    target = tuple(min(a, b) for a, b in zip(s.shape[1:-1], t.shape[1:-1], strict=True))
    return _pool_to(s, target, pool, "student"), _pool_to(t, target, pool, "teacher")


def hint_loss(
    student_feat: ArrayLike,
    teacher_feat: ArrayLike,
    regressor_params: Mapping[str, ArrayLike] | None = None,
    *,
    mask: ArrayLike | None = None,
    pool: PoolMode | None = None,
) -> jax.Array:
    """FitNets hint loss: regress the student's features onto the teacher's.

    ``mean_examples( mean_elements( (r(s) - t)^2 ) )`` where ``r`` is the
    learned regressor (:func:`init_regressor`; its params belong in the
    trainable tree). Romero et al. write ``1/2 ||t - r(s)||^2`` summed over
    elements; this is that divided by ``numel/2`` per example, so the scale
    does not grow with the feature size.

    Args:
      student_feat: ``(batch, ..., C_s)`` student features.
      teacher_feat: ``(batch, ..., C_t)`` teacher features (give them
        ``jax.lax.stop_gradient`` if the teacher must not learn).
      regressor_params: regressor dict, or None when the shapes already match.
      mask: optional per-example weights.
      pool: None (spatial sizes must match), or ``"avg"``/``"max"`` to pool the
        larger map down to the smaller (sizes must divide).

    Returns:
      Scalar loss.

    Raises:
      ValueError: different batch sizes, spatial sizes (without ``pool``),
        or a regressor that does not fit.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s, t = jnp.ones((2, 4, 4, 8)), jnp.ones((2, 4, 4, 16))
      >>> r = init_regressor(jax.random.key(0), s.shape, t.shape)
      >>> hint_loss(s, t, r).shape
      ()

    References:
      Romero et al. 2015, FitNets, arXiv:1412.6550.
    """
    s = jnp.asarray(student_feat)
    t = jnp.asarray(teacher_feat)
    if s.ndim < 2 or t.ndim < 2 or s.shape[0] != t.shape[0]:
        raise ValueError(
            f"student_feat {s.shape} and teacher_feat {t.shape} need the same leading "
            "batch axis and at least one feature axis"
        )
    if regressor_params is not None:
        s = apply_regressor(s, regressor_params)
        if s.ndim == 2 and t.ndim > 2 and s.shape[1] == math.prod(t.shape[1:]):
            s = s.reshape(t.shape)  # 'linear' regressor onto a feature map
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"after the regressor the student has {s.shape[-1]} channels but the teacher "
            f"{t.shape[-1]}; pass regressor_params=init_regressor(key, student_shape, "
            "teacher_shape)"
        )
    s, t = _match_spatial(s, t, pool, "hint_loss")
    per = jnp.mean(jnp.square(s - t.astype(s.dtype)).reshape(s.shape[0], -1), axis=-1)
    return masked_mean(per, mask)


def multi_teacher_hint_loss(
    student_feat: ArrayLike,
    teacher_feats: Sequence[ArrayLike],
    regressors: Sequence[Mapping[str, ArrayLike] | None],
    *,
    weights: Sequence[float] | ArrayLike | None = None,
    mask: ArrayLike | None = None,
    pool: PoolMode | None = None,
) -> jax.Array:
    """Per-teacher FitNets hints from one student layer: ``sum_k w_k hint_loss(s, t_k, r_k)``.

    Each teacher gets its own regressor (teachers' widths differ); weights are
    normalised to sum 1 (uniform when None).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s, t1, t2 = jnp.ones((2, 4)), jnp.ones((2, 6)), jnp.ones((2, 8))
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> rs = [init_regressor(k1, s.shape, t1.shape), init_regressor(k2, s.shape, t2.shape)]
      >>> multi_teacher_hint_loss(s, [t1, t2], rs).shape
      ()

    References:
      You et al. 2017, Learning from multiple teacher networks, KDD;
      Romero et al. 2015, arXiv:1412.6550.
    """
    teacher_feats = as_list(teacher_feats, "teacher_feats")
    regressors = list(regressors)
    check_same_length(teacher_feats, regressors, ("teacher_feats", "regressors"))
    n = len(teacher_feats)
    w = jnp.full((n,), 1.0 / n) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) (one per teacher), got {w.shape}")
    w = w / jnp.sum(w)
    losses = [
        hint_loss(student_feat, t, r, mask=mask, pool=pool)
        for t, r in zip(teacher_feats, regressors, strict=True)
    ]
    return jnp.sum(w * jnp.stack(losses))


def attention_map(features: ArrayLike, *, p: float = 2.0) -> jax.Array:
    """Spatial attention map ``Q = sum_c |A_c|^p``, flattened and L2-normalised.

    Args:
      features: ``(batch, *spatial, channels)``.
      p: the power (the paper uses ``p = 2``).

    Returns:
      ``(batch, prod(spatial))`` maps of unit L2 norm (zero maps stay zero).

    Example:
      >>> import jax.numpy as jnp
      >>> q = attention_map(jnp.ones((1, 2, 2, 3)))
      >>> q.shape, float(jnp.linalg.norm(q))
      ((1, 4), 1.0)

    References:
      Zagoruyko & Komodakis 2017, arXiv:1612.03928.
    """
    check_positive("p", p)
    f = jnp.asarray(features)
    if f.ndim < 3:
        raise ValueError(
            f"attention_map needs (batch, *spatial, channels) features, got shape {f.shape}; "
            "dense-layer features have no spatial axes"
        )
    q = jnp.sum(jnp.abs(f) ** p, axis=-1).reshape(f.shape[0], -1)
    sq = jnp.sum(jnp.square(q), axis=-1, keepdims=True)
    # sqrt(max(., eps^2)): the gradient stays finite for all-zero maps.
    return q / jnp.sqrt(jnp.maximum(sq, 1e-24))


def attention_transfer_loss(
    student_feats: ArrayLike | Sequence[ArrayLike],
    teacher_feats: ArrayLike | Sequence[ArrayLike],
    *,
    beta: float = 1e3,
    p: float = 2.0,
    squared: bool = True,
    mask: ArrayLike | None = None,
) -> jax.Array:
    """Activation-based attention transfer over one or several layer pairs.

    ``beta/2 * sum_j mean_examples D_j`` with ``q = attention_map(.)`` of each
    pair (student and teacher spatial sizes must match; channels may differ):

    * ``squared=True`` (default): ``D_j = mean_positions (q_s - q_t)^2``, the
      distance in the authors' released code, with which ``beta = 1000`` (the
      paper's "10^3") trains well;
    * ``squared=False``: ``D_j = ||q_s - q_t||_2``, the paper's Eq. 2 literally.
      The paper then scales ``beta`` by ``1/(positions * batch)``; pick
      ``beta`` of order 0.1–1 with this form.

    Args:
      student_feats: one ``(batch, *spatial, C_s)`` array or a list of them.
      teacher_feats: the matching teacher features (same spatial sizes).
      beta: weight; the loss carries the paper's ``beta/2`` factor.
      p: attention power (``Q = sum_c |A_c|^p``).
      squared: distance form, see above.
      mask: optional per-example weights.

    Returns:
      Scalar loss.

    Example:
      >>> import jax.numpy as jnp
      >>> f = jnp.ones((2, 4, 4, 8))
      >>> float(attention_transfer_loss(f, 2.0 * jnp.ones((2, 4, 4, 16))))
      0.0

    References:
      Zagoruyko & Komodakis 2017, Paying more attention to attention,
      arXiv:1612.03928.
    """
    if is_static_number(beta):
        check_in_range("beta", float(beta), 0.0, None)
    ss = as_list(student_feats, "student_feats")
    ts = as_list(teacher_feats, "teacher_feats")
    check_same_length(ss, ts, ("student_feats", "teacher_feats"))
    total = 0.0
    for j, (s, t) in enumerate(zip(ss, ts, strict=True)):
        s, t = jnp.asarray(s), jnp.asarray(t)
        if s.shape[:-1] != t.shape[:-1]:
            raise ValueError(
                f"attention pair {j}: student {s.shape} and teacher {t.shape} need the same "
                "batch and spatial sizes (channels may differ); pair layers of equal resolution"
            )
        diff = attention_map(s, p=p) - attention_map(t, p=p).astype(s.dtype)
        if squared:
            per = jnp.mean(jnp.square(diff), axis=-1)
        else:
            sq = jnp.sum(jnp.square(diff), axis=-1)
            per = jnp.sqrt(jnp.maximum(sq, 1e-24))
        total = total + masked_mean(per, mask)
    return 0.5 * beta * total


def fsp_matrix(f1: ArrayLike, f2: ArrayLike) -> jax.Array:
    """Flow of solution procedure matrix ``G_ij = (1/(h w)) sum_{x,y} f1[x,y,i] f2[x,y,j]``.

    Args:
      f1: ``(batch, *spatial, C1)`` features of the first layer.
      f2: ``(batch, *spatial, C2)`` features of the second layer, same spatial
        size.

    Returns:
      ``(batch, C1, C2)``.

    Example:
      >>> import jax.numpy as jnp
      >>> fsp_matrix(jnp.ones((2, 3, 3, 4)), 2.0 * jnp.ones((2, 3, 3, 5)))[0, 0, 0]
      Array(2., dtype=float32)

    References:
      Yim et al. 2017, A gift from knowledge distillation, CVPR.
    """
    a, b = jnp.asarray(f1), jnp.asarray(f2)
    if a.ndim < 2 or a.shape[:-1] != b.shape[:-1]:
        raise ValueError(
            f"fsp_matrix needs two feature maps with the same batch and spatial sizes, got "
            f"{a.shape} and {b.shape}; pair layers of equal resolution (pool first if needed)"
        )
    positions = max(math.prod(a.shape[1:-1]), 1)
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    b = b.reshape(b.shape[0], -1, b.shape[-1])
    return jnp.einsum("bni,bnj->bij", a, b) / positions


def fsp_loss(
    student_pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    teacher_pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    weights: Sequence[float] | None = None,
    reduction: Literal["sum", "mean"] = "sum",
    mask: ArrayLike | None = None,
) -> jax.Array:
    """FSP loss: squared differences of student and teacher FSP matrices.

    ``mean_examples sum_i lambda_i red(G_s^i - G_t^i)^2``, where ``red`` sums
    (``reduction="sum"``, the paper's squared L2 norm) or averages the matrix
    elements, ``lambda_i`` = ``weights`` (1 each when None, as in the paper).

    Args:
      student_pairs: list of ``(f1, f2)`` student feature pairs.
      teacher_pairs: list of the matching teacher pairs; each teacher FSP
        matrix must have the student's channel counts.
      weights: per-pair weights.
      reduction: ``"sum"`` or ``"mean"`` over matrix elements.
      mask: optional per-example weights.

    Returns:
      Scalar loss.

    Raises:
      ValueError: channel counts differ between a student and a teacher pair.

    Example:
      >>> import jax.numpy as jnp
      >>> a, b = jnp.ones((2, 3, 3, 4)), jnp.ones((2, 3, 3, 5))
      >>> float(fsp_loss([(a, b)], [(a, 2 * b)]))
      20.0

    References:
      Yim et al. 2017, A gift from knowledge distillation, CVPR.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    student_pairs, teacher_pairs = list(student_pairs), list(teacher_pairs)
    if not student_pairs:
        raise ValueError("student_pairs is empty; pass at least one (f1, f2) pair")
    check_same_length(student_pairs, teacher_pairs, ("student_pairs", "teacher_pairs"))
    if weights is None:
        weights = [1.0] * len(student_pairs)
    if len(weights) != len(student_pairs):
        raise ValueError(f"weights has {len(weights)} entries for {len(student_pairs)} pairs")
    total = 0.0
    for i, ((s1, s2), (t1, t2)) in enumerate(zip(student_pairs, teacher_pairs, strict=True)):
        gs, gt = fsp_matrix(s1, s2), fsp_matrix(t1, t2)
        if gs.shape != gt.shape:
            raise ValueError(
                f"FSP pair {i}: the student's FSP matrix is {gs.shape[1:]} (channels of its two "
                f"layers) but the teacher's is {gt.shape[1:]}; FSP needs equal channel counts "
                "pairwise: pick layers of equal width or map the student with a 1x1 regressor"
            )
        sq = jnp.square(gs - gt.astype(gs.dtype)).reshape(gs.shape[0], -1)
        per = jnp.sum(sq, -1) if reduction == "sum" else jnp.mean(sq, -1)
        total = total + weights[i] * masked_mean(per, mask)
    return jnp.asarray(total)
