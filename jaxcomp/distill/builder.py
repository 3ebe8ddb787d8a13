"""``distillation_loss``: a training-interface loss function with the teacher in the step.

The returned object is a ``loss_fn(params, model_state, batch, rng) -> (loss,
(new_model_state, metrics))`` (see ``jaxcomp.train``): plug it into
``make_train_step`` like any supervised loss.

The params tree is the student's params plus a ``"distill"`` entry for the
trainable distillation parts (FitNets regressors, learned teacher weights)::

    loss_fn = distillation_loss(student.apply_fn, teacher.apply_fn, teacher_vars,
                                temperature=4.0, alpha=0.9, hints=[("fc1", "fc1")])
    params = loss_fn.init_params(key, student_vars["params"], x_example)
    # params == {**student_vars["params"], "distill": {"hint_0": {"kernel", "bias"}}}

Compressors and ``where=`` patterns see the student's own paths unchanged
(``fc1/kernel``); exclude ``distill/.*`` from a compressor if its regex
would also catch the regressors. After training,
:func:`~jaxcomp.distill.split_distill_params` drops the distill entry.

The teacher runs in eval mode (``train=False``) on stopped-gradient
variables, so no gradient reaches it. Its variables are either closed over
(``teacher_variables=...``; they become constants of the compiled step) or,
with ``teacher_variables=None``, read from ``model_state["teacher"]`` so they
are ordinary (shardable, donatable) arguments of the jitted step. The loss
then returns them unchanged in the new model state; without buffer donation
XLA copies them every step, with donation (``make_train_step(...,
donate=True)``) it does not (figures in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcomp.core.apply_fns import check_apply_fn
from jaxcomp.distill import features as F
from jaxcomp.distill import relational as R
from jaxcomp.distill._common import (
    check_fraction,
    check_positive,
    masked_mean,
    norm_pairs,
    teacher_path,
)
from jaxcomp.distill.losses import hard_ce, log_mixture, soft_term
from jaxcomp.distill.taps import linen_taps
from jaxcomp.distill.teachers import DISTILL_KEY, TEACHER_STATE_KEY, split_distill_params

__all__ = ["DistillationLoss", "distillation_loss"]

TeacherPath = str | Sequence[str]


@dataclasses.dataclass(frozen=True, eq=False)
class DistillationLoss:
    """A distillation loss function; build it with :func:`distillation_loss`.

    Call it as ``loss_fn(params, model_state, batch, rng)``; build its params
    with :meth:`init_params`. Fields mirror :func:`distillation_loss`'s
    arguments.
    """

    student_apply: Callable[..., Any]
    teachers: tuple[tuple[Callable[..., Any] | None, Any], ...]
    temperature: Any
    alpha: Any
    kind: str
    hints: tuple
    hint_weight: float
    hint_regressor: str | None
    hint_pool: str | None
    attention: tuple
    attention_beta: float
    attention_squared: bool
    fsp: tuple
    fsp_weight: float
    relational: tuple | None
    relational_weights: tuple[float, float]
    teacher_weights: Any
    precomputed: bool

    # ------------------------------------------------------------------ paths
    @property
    def num_teachers(self) -> int:
        return len(self.teachers)

    def _student_paths(self) -> list[str]:
        paths = [s for s, _ in self.hints] + [s for s, _ in self.attention]
        paths += [p for (pair, _) in self.fsp for p in pair]
        if self.relational is not None:
            paths.append(self.relational[0])
        return list(dict.fromkeys(paths))

    def _teacher_paths(self, k: int) -> list[str]:
        n = self.num_teachers
        paths = [teacher_path(t, k, n, "hints") for _, t in self.hints]
        paths += [teacher_path(t, k, n, "attention") for _, t in self.attention]
        for _, tpair in self.fsp:
            paths += list(teacher_path(tpair, k, n, "fsp"))
        if self.relational is not None:
            paths.append(teacher_path(self.relational[1], k, n, "relational"))
        return list(dict.fromkeys(paths))

    def _regressor_name(self, i: int, k: int) -> str:
        return f"hint_{i}" if self.num_teachers == 1 else f"hint_{i}_teacher_{k}"

    # --------------------------------------------------------------- forwards
    def _teacher_variables(self, model_state: Mapping[str, Any], k: int):
        variables = self.teachers[k][1]
        if variables is not None:
            return variables
        if TEACHER_STATE_KEY not in model_state:
            raise ValueError(
                "teacher_variables is None, so the teacher's variables must be in "
                f"model_state[{TEACHER_STATE_KEY!r}] (a list, one per teacher, for several "
                "teachers); pass them there or give teacher_variables to distillation_loss"
            )
        stored = model_state[TEACHER_STATE_KEY]
        return stored[k] if self.num_teachers > 1 else stored

    def _run(self, apply_fn, variables, x, paths, **kwargs):
        if not paths:
            return apply_fn(variables, x, **kwargs), {}
        where = [re.escape(p) for p in paths]
        return linen_taps(apply_fn, variables, x, where=where, **kwargs)

    def _teachers_forward(self, model_state, x, with_taps: bool = True):
        outs = []
        for k, (apply_fn, _) in enumerate(self.teachers):
            variables = jax.lax.stop_gradient(self._teacher_variables(model_state, k))
            paths = self._teacher_paths(k) if with_taps else []
            logits, taps = self._run(apply_fn, variables, x, paths, train=False)
            outs.append(jax.lax.stop_gradient((logits, taps)))
        return outs

    # ----------------------------------------------------------------- params
    def init_params(
        self,
        key: jax.Array,
        student_params: Mapping[str, Any],
        x: Any,
        *,
        model_state: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Builds the trainable tree ``{**student_params, "distill": {...}}``.

        Feature shapes are found with ``jax.eval_shape`` (nothing runs), so
        ``x`` only needs the right shape and dtype (a batch of one is enough).

        Args:
          key: PRNG key for the regressors.
          student_params: the student's ``params`` collection (not the whole
            variables dict).
          x: an example input batch.
          model_state: the student's other collections (``batch_stats``), and
            ``"teacher"`` if the teacher's variables travel in the state.

        Returns:
          The params tree; ``"distill"`` holds ``hint_<i>`` regressors
          (``hint_<i>_teacher_<k>`` with several teachers) and
          ``teacher_weights`` (zeros: uniform after the softmax) when the
          weights are learned. It is ``{}`` when nothing is trainable.
        """
        if not isinstance(student_params, Mapping):
            raise TypeError(f"student_params must be a dict, got {type(student_params).__name__}")
        if DISTILL_KEY in student_params:
            raise ValueError(
                f"student_params already has a {DISTILL_KEY!r} entry; pass the student's own "
                "params (split_distill_params(params)[0])"
            )
        if isinstance(student_params.get("params"), Mapping):
            raise TypeError(
                "student_params looks like a variables dict (it has a 'params' key); pass "
                "variables['params'] and put the other collections in model_state"
            )
        model_state = dict(model_state or {})
        student_state = {k: v for k, v in model_state.items() if k != TEACHER_STATE_KEY}
        distill: dict[str, Any] = {}
        if self.hints and self.hint_regressor is not None:

            def shapes():
                variables = {"params": student_params, **student_state}
                _, s_taps = self._run(self.student_apply, variables, x, self._student_paths())
                t_taps = [t for _, t in self._teachers_forward(model_state, x)]
                return s_taps, t_taps

            s_taps, t_taps = jax.eval_shape(shapes)
            keys = jax.random.split(key, max(1, len(self.hints) * self.num_teachers))
            for i, (s_path, t_spec) in enumerate(self.hints):
                for k in range(self.num_teachers):
                    t_path = teacher_path(t_spec, k, self.num_teachers, "hints")
                    distill[self._regressor_name(i, k)] = F.init_regressor(
                        keys[i * self.num_teachers + k],
                        s_taps[s_path].shape,
                        t_taps[k][t_path].shape,
                        kind=self.hint_regressor,
                        dtype=s_taps[s_path].dtype,
                    )
        if isinstance(self.teacher_weights, str):
            distill["teacher_weights"] = jnp.zeros((self.num_teachers,), jnp.float32)
        return {**student_params, DISTILL_KEY: distill}

    def _weights(self, distill: Mapping[str, Any]) -> jax.Array:
        n = self.num_teachers
        if isinstance(self.teacher_weights, str):
            if "teacher_weights" not in distill:
                raise ValueError(
                    "teacher_weights='learned' needs params['distill']['teacher_weights']; "
                    "build params with loss_fn.init_params(key, student_params, x)"
                )
            return jax.nn.softmax(distill["teacher_weights"])
        if self.teacher_weights is None:
            return jnp.full((n,), 1.0 / n, jnp.float32)
        w = jnp.asarray(self.teacher_weights, jnp.float32)
        return w / jnp.sum(w)

    # ------------------------------------------------------------------- loss
    def __call__(self, params, model_state, batch, rng):
        student_params, distill = split_distill_params(params)
        model_state = dict(model_state or {})
        student_state = {k: v for k, v in model_state.items() if k != TEACHER_STATE_KEY}
        x, labels, mask = batch["x"], batch.get("y"), batch.get("mask")

        variables = {"params": student_params, **student_state}
        (s_logits, new_state), s_taps = self._run(
            self.student_apply,
            variables,
            x,
            self._student_paths(),
            train=True,
            rng=rng,
            return_state=True,
        )
        new_model_state = {**student_state, **dict(new_state or {})}
        if TEACHER_STATE_KEY in model_state:
            new_model_state[TEACHER_STATE_KEY] = model_state[TEACHER_STATE_KEY]

        n = self.num_teachers
        if self.precomputed:
            if "teacher_logits" not in batch:
                raise ValueError(
                    "precomputed=True needs batch['teacher_logits'] (see precompute_logits)"
                )
            t_all = jax.lax.stop_gradient(jnp.asarray(batch["teacher_logits"]))
            if n > 1:
                if t_all.ndim != s_logits.ndim + 1 or t_all.shape[1] != n:
                    raise ValueError(
                        f"batch['teacher_logits'] has shape {t_all.shape}; with {n} teachers "
                        f"it must be (batch, {n}, classes)"
                    )
                t_logits = [t_all[:, k] for k in range(n)]
            else:
                t_logits = [t_all]
            t_taps = [{} for _ in range(n)]
        else:
            outs = self._teachers_forward(model_state, x)
            t_logits = [o[0] for o in outs]
            t_taps = [o[1] for o in outs]

        w = self._weights(distill)
        s32 = s_logits.astype(jnp.float32)
        T = self.temperature
        log_p = log_mixture(t_logits, T, w)
        kd = masked_mean(soft_term(s32, log_p, T, self.kind), mask)
        metrics: dict[str, jax.Array] = {"kd": kd}
        if labels is not None:
            ce = masked_mean(hard_ce(s32, labels), mask)
            loss = self.alpha * kd + (1.0 - self.alpha) * ce
            metrics["ce"] = ce
            pred = jnp.argmax(s32, -1)
            if jnp.ndim(labels) == s32.ndim:  # target distributions
                labels = jnp.argmax(labels, -1)
            metrics["accuracy"] = masked_mean((pred == labels).astype(jnp.float32), mask)
        else:
            loss = kd
        agree = jnp.argmax(s32, -1) == jnp.argmax(log_p, -1)
        metrics["agreement"] = masked_mean(agree.astype(jnp.float32), mask)

        if self.hints:
            hint = 0.0
            for i, (s_path, t_spec) in enumerate(self.hints):
                for k in range(n):
                    t_path = teacher_path(t_spec, k, n, "hints")
                    reg = None
                    if self.hint_regressor is not None:
                        name = self._regressor_name(i, k)
                        if name not in distill:
                            raise ValueError(
                                f"params['distill'] has no regressor {name!r}; build params "
                                "with loss_fn.init_params(key, student_params, x)"
                            )
                        reg = distill[name]
                    h = F.hint_loss(
                        s_taps[s_path], t_taps[k][t_path], reg, mask=mask, pool=self.hint_pool
                    )
                    hint = hint + w[k] * h
            metrics["hint"] = hint
            loss = loss + self.hint_weight * hint
        if self.attention:
            at = 0.0
            for k in range(n):
                ss = [s_taps[s] for s, _ in self.attention]
                ts = [t_taps[k][teacher_path(t, k, n, "attention")] for _, t in self.attention]
                at = at + w[k] * F.attention_transfer_loss(
                    ss, ts, beta=self.attention_beta, squared=self.attention_squared, mask=mask
                )
            metrics["attention"] = at
            loss = loss + at
        if self.fsp:
            fsp = 0.0
            for k in range(n):
                sp = [(s_taps[a], s_taps[b]) for (a, b), _ in self.fsp]
                tp = []
                for _, tpair in self.fsp:
                    a, b = teacher_path(tpair, k, n, "fsp")
                    tp.append((t_taps[k][a], t_taps[k][b]))
                fsp = fsp + w[k] * F.fsp_loss(sp, tp, mask=mask)
            metrics["fsp"] = fsp
            loss = loss + self.fsp_weight * fsp
        if self.relational is not None:
            dw, aw = self.relational_weights
            rd = ra = 0.0
            for k in range(n):
                t_emb = t_taps[k][teacher_path(self.relational[1], k, n, "relational")]
                s_emb = s_taps[self.relational[0]]
                if dw:
                    rd = rd + w[k] * R.rkd_distance_loss(s_emb, t_emb, mask=mask)
                if aw:
                    ra = ra + w[k] * R.rkd_angle_loss(s_emb, t_emb, mask=mask)
            metrics["rkd_distance"], metrics["rkd_angle"] = jnp.asarray(rd), jnp.asarray(ra)
            loss = loss + dw * rd + aw * ra
        metrics["loss"] = loss
        return loss, (new_model_state, metrics)


def distillation_loss(
    student_apply: Callable[..., Any],
    teacher_apply: Callable[..., Any] | None = None,
    teacher_variables: Any = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
    kind: str = "kl",
    hints: Sequence[tuple[str, TeacherPath]] = (),
    hint_weight: float = 1.0,
    hint_regressor: str | None = "conv1x1",
    hint_pool: str | None = None,
    attention: Sequence[tuple[str, TeacherPath]] = (),
    attention_beta: float = 1e3,
    attention_squared: bool = True,
    fsp: Sequence[tuple[tuple[str, str], Any]] = (),
    fsp_weight: float = 1.0,
    relational: tuple[str, TeacherPath] | None = None,
    relational_weights: tuple[float, float] = (25.0, 50.0),
    teachers: Sequence[tuple[Callable[..., Any], Any]] | None = None,
    teacher_weights: Sequence[float] | str | None = None,
    precomputed: bool = False,
) -> DistillationLoss:
    """Builds a distillation loss with the training-interface signature.

    ``loss = alpha * kd + (1 - alpha) * ce + hint_weight * hint + attention
    + fsp_weight * fsp + w_D * rkd_distance + w_A * rkd_angle`` where ``kd`` is
    the ``T^2``-scaled soft term of :func:`kd_loss` (against the weighted
    average of the teachers' soft targets with several teachers), ``ce`` the
    hard-label cross-entropy on ``batch["y"]`` (without labels ``loss`` starts
    from ``kd`` alone), and the feature terms are summed over teachers with
    the teacher weights. Every term is a mean over examples with
    ``batch["mask"] != 0``.

    Feature losses name activations by module path (see
    :func:`linen_taps`; ``""`` is the model's output) in
    ``(student_path, teacher_path)`` pairs; with several teachers the teacher
    side may be one path per teacher.

    Args:
      student_apply: ``apply(variables, x, train=, rng=, return_state=)``
        (``ModelSpec.apply_fn``); run with ``train=True``.
      teacher_apply: the teacher's apply function (run with ``train=False``).
      teacher_variables: the teacher's variables, or None to read them from
        ``model_state["teacher"]`` at every step.
      temperature: ``T > 0``.
      alpha: soft-term weight in ``[0, 1]``.
      kind: ``"kl"`` or ``"ce"`` soft term (see :func:`kd_loss`).
      hints: FitNets pairs; each gets a regressor ``params["distill"]["hint_<i>"]``.
      hint_weight: weight of the summed hint losses.
      hint_regressor: ``"conv1x1"``, ``"linear"`` or None (no regressor:
        shapes must match).
      hint_pool: None, ``"avg"`` or ``"max"`` (see :func:`hint_loss`).
      attention: attention-transfer pairs (spatial feature maps).
      attention_beta: ``beta`` of :func:`attention_transfer_loss`.
      attention_squared: its distance form.
      fsp: ``((student_a, student_b), (teacher_a, teacher_b))`` layer pairs.
      fsp_weight: weight of :func:`fsp_loss`.
      relational: ``(student_path, teacher_path)`` of the embeddings for RKD.
      relational_weights: ``(distance_weight, angle_weight)``.
      teachers: several teachers as ``[(apply, variables_or_None), ...]``
        (then leave ``teacher_apply`` and ``teacher_variables`` unset);
        ``model_state["teacher"]`` is then a list.
      teacher_weights: None (uniform), fixed non-negative weights, or
        ``"learned"`` (softmax of ``params["distill"]["teacher_weights"]``;
        minimising the KD loss over them favours the teachers the student
        already agrees with).
      precomputed: read the teacher logits from ``batch["teacher_logits"]``
        (``(batch, classes)``, or ``(batch, teachers, classes)``) instead of
        running the teachers; feature losses then are not available.

    Returns:
      A :class:`DistillationLoss` (callable as ``loss_fn(params, model_state,
      batch, rng) -> (loss, (new_model_state, metrics))``; metrics: ``loss``,
      ``kd``, ``agreement`` with the teacher's argmax, and where they apply
      ``ce``, ``accuracy``, ``hint``, ``attention``, ``fsp``,
      ``rkd_distance``, ``rkd_angle``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import get_model
      >>> spec = get_model("mnist1d_mlp", hidden=(32, 32))   # born-again: same architecture
      >>> teacher, student = spec.init(jax.random.key(0)), spec.init(jax.random.key(1))
      >>> loss_fn = distillation_loss(spec.apply_fn, spec.apply_fn, teacher, temperature=4.0,
      ...                             alpha=0.9, hints=[("fc2", "fc2")])
      >>> x = spec.example_input(8)
      >>> params = loss_fn.init_params(jax.random.key(2), student["params"], x)
      >>> params["distill"]["hint_0"]["kernel"].shape
      (32, 32)
      >>> batch = {"x": x, "y": jnp.zeros(8, jnp.int32)}
      >>> loss, (state, metrics) = jax.jit(loss_fn)(params, {}, batch, jax.random.key(3))
      >>> sorted(metrics)
      ['accuracy', 'agreement', 'ce', 'hint', 'kd', 'loss']

    References:
      Hinton et al. 2015, arXiv:1503.02531; Romero et al. 2015,
      arXiv:1412.6550; Zagoruyko & Komodakis 2017, arXiv:1612.03928; Yim et
      al. 2017 (CVPR); Park et al. 2019, arXiv:1904.05068; You et al. 2017
      (KDD).
    """
    check_positive("temperature", temperature)
    check_fraction("alpha", alpha)
    if kind not in ("kl", "ce"):
        raise ValueError(f"kind must be 'kl' or 'ce', got {kind!r}")
    if not callable(student_apply):
        raise TypeError("student_apply must be callable (e.g. ModelSpec.apply_fn)")
    check_apply_fn(student_apply, "student_apply")
    if teachers is not None:
        if teacher_apply is not None or teacher_variables is not None:
            raise ValueError(
                "pass either teacher_apply/teacher_variables (one teacher) or teachers=[...] "
                "(several), not both"
            )
        teachers = tuple((a, v) for a, v in teachers)
        if not teachers:
            raise ValueError("teachers is empty; pass at least one (apply, variables) pair")
    elif precomputed and teacher_apply is None:
        teachers = ((None, None),)
    else:
        teachers = ((teacher_apply, teacher_variables),)
    if not precomputed and not all(callable(a) for a, _ in teachers):
        raise TypeError(
            "teacher_apply must be callable (e.g. ModelSpec.apply_fn); pass precomputed=True "
            "to read batch['teacher_logits'] instead"
        )
    if not precomputed:
        for i, (a, _) in enumerate(teachers):
            check_apply_fn(a, "teacher_apply" if len(teachers) == 1 else f"teachers[{i}]")
    hints, attention = norm_pairs("hints", hints), norm_pairs("attention", attention)
    fsp = norm_pairs("fsp", fsp)
    for i, (spair, _) in enumerate(fsp):
        if not (isinstance(spair, (tuple, list)) and len(spair) == 2):
            raise ValueError(f"fsp[{i}] must be ((student_a, student_b), (teacher_a, teacher_b))")
    fsp = tuple((tuple(sp), tuple(tp)) for sp, tp in fsp)
    if relational is not None:
        relational = norm_pairs("relational", [relational])[0]
    if precomputed and (hints or attention or fsp or relational is not None):
        raise ValueError(
            "precomputed=True supplies only the teacher's logits; hints, attention, fsp and "
            "relational losses need the teacher's features: set precomputed=False"
        )
    if hint_regressor not in (None, "conv1x1", "linear"):
        raise ValueError(
            f"hint_regressor must be 'conv1x1', 'linear' or None, got {hint_regressor!r}"
        )
    if hint_pool not in (None, "avg", "max"):
        raise ValueError(f"hint_pool must be None, 'avg' or 'max', got {hint_pool!r}")
    n = len(teachers)
    if isinstance(teacher_weights, str):
        if teacher_weights != "learned":
            raise ValueError(
                f"teacher_weights must be None, a list or 'learned', got {teacher_weights!r}"
            )
    elif teacher_weights is not None:
        teacher_weights = tuple(float(w) for w in teacher_weights)
        if len(teacher_weights) != n or min(teacher_weights) < 0 or sum(teacher_weights) <= 0:
            raise ValueError(
                f"teacher_weights must hold {n} non-negative numbers with a positive sum, got "
                f"{list(teacher_weights)}"
            )
    return DistillationLoss(
        student_apply=student_apply,
        teachers=teachers,
        temperature=temperature,
        alpha=alpha,
        kind=kind,
        hints=hints,
        hint_weight=hint_weight,
        hint_regressor=hint_regressor,
        hint_pool=hint_pool,
        attention=attention,
        attention_beta=attention_beta,
        attention_squared=attention_squared,
        fsp=fsp,
        fsp_weight=fsp_weight,
        relational=relational,
        relational_weights=tuple(relational_weights),
        teacher_weights=teacher_weights,
        precomputed=precomputed,
    )
