"""Step builders: a pure, jittable train step and an exact masked eval step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcomp.core.base import Compressor, never_due, update_due, validate_compressor
from jaxcomp.core.scheduling import host_scheduled
from jaxcomp.train.losses import LossFn, batch_mask
from jaxcomp.train.state import TrainState

__all__ = ["aggregate_metrics", "evaluate", "make_eval_step", "make_train_step", "view_sparsity"]

NUM_EXAMPLES = "num_examples"


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


def _match_dtypes(new: Any, old: Any) -> Any:
    """Casts ``new``'s leaves to ``old``'s dtypes (keeps scan/cond carries stable)."""
    try:
        return jax.tree_util.tree_map(
            lambda n, o: n.astype(o.dtype) if hasattr(o, "dtype") and hasattr(n, "astype") else n,
            new, old,
        )
    except ValueError:
        return new  # a loss that changes the structure of model_state: leave it as it is


def _zero_int_grads(grads: Any, params: Any) -> Any:
    # jax.grad(allow_int=True) gives float0 for integer leaves (QArray codes, Codebook
    # indices): give them zero updates of the parameter's own dtype instead.
    return jax.tree_util.tree_map(
        lambda g, p: jnp.zeros_like(p) if g.dtype == jax.dtypes.float0 else g, grads, params
    )


def view_sparsity(view: Any) -> jax.Array:
    """Fraction of exact zeros over all floating-point entries of a parameter tree.

    Example:
      >>> import jax.numpy as jnp
      >>> float(view_sparsity({"a": jnp.array([0.0, 1.0]), "b": jnp.zeros(2)}))
      0.75
    """
    leaves = [x for x in jax.tree_util.tree_leaves(view) if _is_float(x)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    zeros = sum(jnp.sum(x == 0).astype(jnp.float32) for x in leaves)
    return zeros / float(sum(x.size for x in leaves))


def _call_loss(loss_fn: LossFn, *args: Any) -> tuple[jax.Array, tuple[Any, dict]]:
    out = loss_fn(*args)
    try:
        loss, (model_state, metrics) = out
    except (TypeError, ValueError):
        raise TypeError(
            "loss_fn must return (loss, (new_model_state, metrics)), got "
            f"{type(out).__name__}; see jaxcomp.train.supervised_loss"
        ) from None
    if not isinstance(metrics, Mapping):
        raise TypeError(f"loss_fn's metrics must be a dict of scalars, got {type(metrics).__name__}")
    if jnp.ndim(loss) != 0:
        raise TypeError(f"loss_fn must return a scalar loss, got shape {jnp.shape(loss)}")
    return loss, (model_state, dict(metrics))


def _split_micro(batch: Mapping[str, Any], k: int) -> dict:
    def split(path, a):
        a = jnp.asarray(a)
        if a.ndim == 0 or a.shape[0] % k:
            name = jax.tree_util.keystr(path)
            raise ValueError(
                f"make_train_step(accumulate={k}): batch{name} has leading size "
                f"{a.shape[0] if a.ndim else 'none (scalar)'}, which is not divisible by {k}; use "
                "a batch size that is a multiple of accumulate"
            )
        return a.reshape(k, a.shape[0] // k, *a.shape[1:])

    return jax.tree_util.tree_map_with_path(split, dict(batch))


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    compressor: Compressor | None = None,
    compressor_every: int | None = None,
    compressor_update: str = "step",
    accumulate: int = 1,
    compute_dtype: Any = None,
    donate: bool = False,
) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, dict]]:
    """Builds ``step(state, batch) -> (state, metrics)``, pure and jittable.

    One step:

    1. splits ``state.rng`` into the next state key and this step's key;
    2. computes the loss on the forward view
       ``compressor.apply(params, compressor_state)`` (or ``params``) and its
       gradient with respect to the stored params (straight-through estimators
       live in ``apply``);
    3. with ``accumulate=k`` splits the batch's leading axis into ``k``
       micro-batches and averages their gradients under ``lax.scan`` (weighted
       by the number of unmasked examples, so the result equals one big-batch
       step; ``model_state`` is threaded through the micro-batches in order);
    4. ``updates, opt_state = tx.update(grads, opt_state, params,
       compressor_state=...)`` (the keyword only with a compressor, so
       :func:`jaxcomp.keep_compressed` can sit last in an ``optax.chain``) and
       ``optax.apply_updates``;
    5. with a compressor: ``compressor.project`` (the constraint the stored
       params keep between updates, if any) on the new params, then
       ``compressor.update(params, cstate, step=step, grads=grads)`` on the
       steps where it is due (``compressor.due(step)``; every step when the
       compressor has no ``due``), under ``lax.cond`` (no recompilation);
       ``step`` is the index of the step being taken (0 for the first), before
       the increment. ``compressor_every=k`` adds every ``k``-th step to the
       due ones (it never skips a due update). With
       ``compressor_update="host"`` the step only applies ``project`` and the
       Python loop runs the update: see below;
    6. increments ``state.step``.

    ``compressor_update="host"`` moves the decision "is the update due?" to
    the host, so the compiled step holds no ``lax.cond`` (whose cost is
    measured in ``benchmarks/RESULTS.md``). The returned step then has
    ``step.host_update(state, t) -> state``, which :func:`~jaxcomp.train.fit`
    calls after every step (``t``: the index of the step just taken). It runs
    a separately compiled ``compressor.update(params, cstate, step=t)`` on the
    same steps as above, decided in plain Python
    (:func:`jaxcomp.core.base.update_due`); between updates nothing runs. The
    update gets no ``grads``: use it for updates computed from the params
    (magnitude, random scores, calibration on weights), not for gradient
    scores (saliency, movement, RigL).

    The returned step also carries ``step.compressor`` (for model selection:
    :func:`jaxcomp.core.base.target_reached`) and ``step.donate``.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, rng) -> (loss,
        (new_model_state, metrics))``.
      tx: an optax transformation; plain ones are wrapped with
        ``optax.with_extra_args_support``.
      compressor: optional compressor; the state's ``compressor_state`` must
        come from its ``init``.
      compressor_every: also run ``compressor.update`` every this many steps
        (``None``: only when it is due).
      compressor_update: ``"step"`` (inside the compiled step, under
        ``lax.cond``) or ``"host"`` (by the loop through ``step.host_update``;
        see above).
      accumulate: number of micro-batches per step (gradient accumulation).
      compute_dtype: e.g. ``jnp.bfloat16``: the forward view and the
        floating-point inputs ``batch["x"]`` are cast to it, the master params,
        gradients and optimizer state stay float32 (no loss scaling: use
        bfloat16, not float16).
      donate: a hint for loops that jit the step (``fit`` then donates the
        state's buffers, ``jax.jit(step, donate_argnums=0)``); stored as
        ``step.donate``.

    Returns:
      ``step(state, batch) -> (state, metrics)``; ``metrics`` is the loss
      function's dict (with ``"loss"``), plus ``"sparsity"`` (fraction of
      exact zeros in the floating-point entries of the forward view) when a
      compressor is given.

    Raises:
      TypeError: if ``loss_fn``, ``tx`` or ``compressor`` has the wrong type.
      ValueError: if ``compressor_every`` (when given) or ``accumulate`` is
        not a positive int, ``compressor_update`` is not ``"step"``/``"host"`` (or is
        ``"host"`` without a compressor), or (when traced) the batch size is
        not divisible by ``accumulate``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> def loss_fn(params, model_state, batch, rng):
      ...     loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
      ...     return loss, (model_state, {"loss": loss})
      >>> tx = optax.sgd(0.5)
      >>> state = TrainState.create({"w": jnp.zeros(2)}, tx, key=jax.random.key(0))
      >>> step = jax.jit(make_train_step(loss_fn, tx))
      >>> batch = {"x": jnp.eye(2), "y": jnp.array([1.0, 2.0])}
      >>> for _ in range(50):
      ...     state, metrics = step(state, batch)
      >>> [round(v, 3) for v in state.params["w"].tolist()], int(state.step)
      ([1.0, 2.0], 50)

    References:
      Micikevicius et al., "Mixed precision training" (fp32 master weights),
      arXiv:1710.03740. Bengio, Léonard, Courville, "Estimating or propagating
      gradients through stochastic neurons" (straight-through estimators),
      arXiv:1308.3432.
    """
    if not callable(loss_fn):
        raise TypeError(f"make_train_step: loss_fn must be callable, got {type(loss_fn).__name__}")
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"make_train_step: tx must be an optax GradientTransformation, got {type(tx).__name__}"
        )
    if compressor is not None:
        compressor = validate_compressor(compressor, "make_train_step(compressor=)")
    every = (None if compressor_every is None
             else _check_positive_int("make_train_step: compressor_every", compressor_every))
    if compressor_update not in ("step", "host"):
        raise ValueError(
            f"make_train_step: compressor_update={compressor_update!r} must be 'step' or 'host'"
        )
    on_host = compressor_update == "host"
    if on_host and compressor is None:
        raise ValueError("make_train_step: compressor_update='host' needs a compressor=")
    k = _check_positive_int("make_train_step: accumulate", accumulate)
    if compute_dtype is not None and not jnp.issubdtype(compute_dtype, jnp.floating):
        raise ValueError(
            f"make_train_step: compute_dtype must be a floating dtype such as jnp.bfloat16, got "
            f"{compute_dtype!r}"
        )
    tx = optax.with_extra_args_support(tx)

    def grad_fn(params, cstate, model_state, batch, rng):
        def forward(p):
            view = p if compressor is None else compressor.apply(p, cstate)
            b = batch
            if compute_dtype is not None:
                view = _cast_floats(view, compute_dtype)
                b = dict(batch)
                if _is_float(b.get("x")):
                    b["x"] = b["x"].astype(compute_dtype)
            loss, (new_ms, metrics) = _call_loss(loss_fn, view, model_state, b, rng)
            new_ms = _match_dtypes(new_ms, model_state)
            return loss.astype(jnp.float32), (new_ms, metrics)

        (loss, (new_ms, metrics)), grads = jax.value_and_grad(
            forward, has_aux=True, allow_int=True
        )(params)
        metrics.setdefault("loss", loss)
        return _zero_int_grads(grads, params), new_ms, metrics

    def step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"train step: batch must be a dict such as {{'x': ..., 'y': ...}}, got "
                f"{type(batch).__name__}"
            )
        if compressor is not None and state.compressor_state is None:
            raise ValueError(
                "train step: the step has a compressor but state.compressor_state is None; build "
                "the state with TrainState.create(..., compressor=compressor)"
            )
        rng, step_rng = jax.random.split(state.rng)
        params, cstate = state.params, state.compressor_state

        if k == 1:
            grads, model_state, metrics = grad_fn(params, cstate, state.model_state, batch, step_rng)
        else:
            micro = _split_micro(batch, k)
            if "mask" in batch:
                counts = jnp.sum(micro["mask"].astype(jnp.float32), axis=1)
                total = jnp.sum(counts)
                weights = jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), 0.0)
            else:
                weights = jnp.full((k,), 1.0 / k, jnp.float32)

            def body(carry, xs):
                gsum, ms = carry
                mb, r, w = xs
                g, ms, m = grad_fn(params, cstate, ms, mb, r)
                gsum = jax.tree_util.tree_map(
                    lambda a, b: (a + w * b).astype(a.dtype), gsum, g
                )
                return (gsum, ms), m

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            (grads, model_state), stacked = jax.lax.scan(
                body, (zeros, state.model_state), (micro, jax.random.split(step_rng, k), weights)
            )
            metrics = jax.tree_util.tree_map(
                lambda m: jnp.tensordot(weights, m.astype(jnp.float32), axes=1), stacked
            )

        extra = {} if compressor is None else {"compressor_state": cstate}
        updates, opt_state = tx.update(grads, state.opt_state, params, **extra)
        new_params = optax.apply_updates(params, updates)

        if compressor is not None:
            metrics["sparsity"] = view_sparsity(compressor.apply(params, cstate))

            def run_update(operand):
                p, c = operand
                p2, c2 = compressor.update(p, c, step=state.step, grads=grads)
                return _match_dtypes(p2, p), _match_dtypes(c2, c)

            if compressor.project is not None:  # the constraint between updates
                new_params = _match_dtypes(compressor.project(new_params, cstate), params)
            due = _due_in_step(compressor, every)
            if on_host or due is never_due:
                pass  # step.host_update runs the update, or there is none to run
            elif due is None:
                new_params, cstate = run_update((new_params, cstate))
            else:
                try:
                    new_params, cstate = jax.lax.cond(
                        due(state.step), run_update, lambda o: o, (new_params, cstate)
                    )
                except TypeError as e:
                    raise TypeError(
                        "compressor.update must return (params, state) with the same tree "
                        f"structure, shapes and dtypes as its inputs: {e}"
                    ) from None

        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            opt_state=opt_state,
            model_state=model_state,
            compressor_state=cstate,
            rng=rng,
        )
        return new_state, metrics

    step.donate = bool(donate)
    step.compressor = compressor
    if on_host:
        step.host_update = _host_updater(compressor, every, bool(donate))
    return step


def _due_in_step(compressor: Compressor, every: int | None) -> Callable[[Any], Any] | None:
    """The traced update check of the step: ``None`` means every step."""
    due = compressor.due
    if every == 1:
        return None
    if every is None:
        return due
    if due is None:
        return lambda t: t % every == 0
    return lambda t: (t % every == 0) | jnp.asarray(due(t), bool)


def _host_updater(compressor: Compressor, every: int | None,
                  donate: bool) -> Callable[[TrainState, int], TrainState]:
    """``host_update(state, t)``: ``compressor.update`` at step ``t`` when it is due."""
    due = compressor.due
    if every is not None:
        due = ((lambda t: t % every == 0) if due is None
               else (lambda t: t % every == 0 or update_due(compressor, t)))
    elif due is None:
        due = lambda t: True  # an update that may change the state on any step

    def typed_update(params, cstate, *, step, grads=None, **extra):
        p2, c2 = compressor.update(params, cstate, step=step, grads=grads, **extra)
        return _match_dtypes(p2, params), _match_dtypes(c2, cstate)

    sched = host_scheduled(compressor._replace(update=typed_update), due=due, donate=donate)

    def host_update(state: TrainState, t: int) -> TrainState:
        params, cstate = sched(state.params, state.compressor_state, step=t)
        if params is state.params and cstate is state.compressor_state:
            return state  # not due: no device work
        return state.replace(params=params, compressor_state=cstate)

    return host_update


def make_eval_step(
    loss_fn: LossFn, *, compressor: Compressor | None = None
) -> Callable[[TrainState, Mapping[str, Any]], dict]:
    """Builds ``eval(state, batch) -> metrics`` on the compressed forward view.

    The loss function should be the inference-mode one (e.g.
    ``supervised_loss(apply_fn, train=False)``) and must weight its metrics by
    ``batch["mask"]``. The returned metrics are those weighted means plus
    ``"num_examples"`` (the number of unmasked examples), so
    :func:`aggregate_metrics` combines batches exactly: a padded final batch
    gives the same result as the unpadded data. ``state.rng`` is passed as the
    key and is not advanced; ``model_state`` is not updated.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, rng) -> (loss,
        (new_model_state, metrics))``.
      compressor: the compressor whose view is evaluated (``None``: the
        stored params).

    Returns:
      ``eval(state, batch) -> metrics``, pure and jittable.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxcomp.train.losses import supervised_loss
      >>> def apply_fn(variables, x, train=False, rng=None, return_state=False):
      ...     logits = x @ variables["params"]["w"]
      ...     return (logits, {}) if return_state else logits
      >>> state = TrainState.create({"w": jnp.eye(2)}, optax.sgd(0.1), key=jax.random.key(1))
      >>> ev = make_eval_step(supervised_loss(apply_fn, train=False))
      >>> batch = {"x": jnp.eye(2)[jnp.array([0, 1, 1, 0])], "y": jnp.array([0, 1, 0, 0]),
      ...          "mask": jnp.array([1, 1, 1, 0])}
      >>> m = ev(state, batch)
      >>> float(m["num_examples"]), round(float(m["accuracy"]), 4)
      (3.0, 0.6667)
    """
    if not callable(loss_fn):
        raise TypeError(f"make_eval_step: loss_fn must be callable, got {type(loss_fn).__name__}")
    if compressor is not None:
        compressor = validate_compressor(compressor, "make_eval_step(compressor=)")

    def eval_step(state: TrainState, batch: Mapping[str, Any]) -> dict:
        if not isinstance(batch, Mapping):
            raise TypeError(f"eval step: batch must be a dict, got {type(batch).__name__}")
        params = state.params
        if compressor is not None:
            params = compressor.apply(params, state.compressor_state)
        loss, (_, metrics) = _call_loss(loss_fn, params, state.model_state, batch, state.rng)
        metrics.setdefault("loss", loss)
        metrics[NUM_EXAMPLES] = jnp.sum(batch_mask(batch))
        return metrics

    return eval_step


def aggregate_metrics(metrics: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Combines per-batch eval metrics into dataset metrics, weighted by ``num_examples``.

    Every metric except ``num_examples`` is a weighted mean over its batch;
    the result is ``sum(m_i * n_i) / sum(n_i)`` (and the total count).

    Example:
      >>> aggregate_metrics([{"acc": 1.0, "num_examples": 3}, {"acc": 0.0, "num_examples": 1}])
      {'acc': 0.75, 'num_examples': 4.0}
    """
    metrics = jax.device_get(list(metrics))
    if not metrics:
        return {}
    total = float(sum(float(m.get(NUM_EXAMPLES, 1.0)) for m in metrics))
    out: dict[str, float] = {}
    for name in metrics[0]:
        if name == NUM_EXAMPLES:
            continue
        s = sum(float(m[name]) * float(m.get(NUM_EXAMPLES, 1.0)) for m in metrics)
        out[name] = s / total if total > 0 else float("nan")
    out[NUM_EXAMPLES] = total
    return out


def evaluate(
    eval_fn: Callable[[TrainState, Mapping[str, Any]], Mapping[str, Any]],
    state: TrainState,
    batches: Iterable[Mapping[str, Any]],
) -> dict[str, float]:
    """Runs ``eval_fn`` over batches and aggregates exactly (see :func:`aggregate_metrics`).

    ``eval_fn`` is called as given (jit it yourself for speed).
    """
    return aggregate_metrics(eval_fn(state, b) for b in batches)

