"""The ready-made training loop :func:`fit` and its :class:`EarlyStopping` rule."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxcomp.train.checkpoint import all_steps, save_checkpoint
from jaxcomp.train.progress import MetricsWriter, Reporter, summary_table
from jaxcomp.train.steps import aggregate_metrics

__all__ = ["EarlyStopping", "fit"]

_SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when a monitored metric stops improving.

    Attributes:
      monitor: ``"<split>/<metric>"``, e.g. ``"eval/loss"`` or
        ``"eval/accuracy"`` (checked at every evaluation) or ``"train/loss"``
        (checked at every train log).
      mode: ``"min"`` or ``"max"``.
      patience: stop after this many checks in a row without improvement
        (0 stops at the first check that does not improve).
      min_delta: an improvement must beat the best value by more than this.
      restore_best: return the state of the best check instead of the last.

    Example:
      >>> EarlyStopping("eval/accuracy", mode="max", patience=3).split
      'eval'
    """

    monitor: str = "eval/loss"
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self):
        split, _, name = str(self.monitor).partition("/")
        if split not in _SPLITS or not name:
            raise ValueError(
                f"EarlyStopping: monitor must look like 'eval/loss' or 'train/accuracy' "
                f"(split/metric), got {self.monitor!r}"
            )
        if self.mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {self.mode!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(
                f"EarlyStopping: patience must be a non-negative int, got {self.patience!r}"
            )
        if not self.min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {self.min_delta!r}")

    @property
    def split(self) -> str:
        return self.monitor.partition("/")[0]

    @property
    def metric(self) -> str:
        return self.monitor.partition("/")[2]

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` by more than ``min_delta``."""
        if best is None:
            return not np.isnan(value)
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta


def _positive(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"fit: {name} must be a positive int or None, got {v!r}")
    return int(v)


def _with_last(it: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    it = iter(it)
    try:
        prev = next(it)
    except StopIteration:
        return
    for x in it:
        yield prev, False
        prev = x
    yield prev, True


def _plan(train_batches: Any, epochs: int | None, steps: int | None):
    """Returns (stream of (epoch, batch, end_of_epoch), total steps or None)."""
    spe = getattr(train_batches, "steps_per_epoch", None)
    is_iterator = hasattr(train_batches, "__next__")
    if callable(train_batches) and not hasattr(train_batches, "__iter__"):
        if epochs is None and steps is None:
            raise ValueError("fit: with a batch factory train_batches(epoch), pass steps= or epochs=")

        def gen():
            for e in itertools.count() if epochs is None else range(epochs):
                for b, last in _with_last(train_batches(e)):
                    yield e, b, last
        return gen(), steps

    if not hasattr(train_batches, "__iter__"):
        raise TypeError(
            "fit: train_batches must be an iterable of batch dicts, or a function epoch -> "
            f"iterable; got {type(train_batches).__name__}"
        )
    if spe is not None:  # jaxcomp.data.batches: an iterator that knows its epochs
        finite = getattr(train_batches, "epochs", None)
        if epochs is None and steps is None and finite is None:
            raise ValueError(
                "fit: train_batches repeats forever (batches(..., epochs=None)); pass steps= or "
                "epochs="
            )
        pos0 = int(getattr(train_batches, "position", 0))
        total = steps
        if epochs is not None:
            total = epochs * spe if steps is None else min(steps, epochs * spe)
        if finite is not None:
            left = max(0, finite * spe - pos0)
            total = left if total is None else min(total, left)

        def gen():
            it = iter(train_batches)
            for i in itertools.count(pos0):
                try:
                    b = next(it)
                except StopIteration:
                    return
                yield (i // spe if spe else 0), b, spe > 0 and (i + 1) % spe == 0
        return gen(), total

    if not is_iterator and hasattr(train_batches, "__len__"):  # re-iterable collection
        n = len(train_batches)
        if epochs is None:
            total = n if steps is None else steps

            def gen():
                for e in itertools.count():
                    for b, last in _with_last(train_batches):
                        yield e, b, last
                    if steps is None:
                        return
            return gen(), total
        total = epochs * n if steps is None else min(steps, epochs * n)

        def gen():
            for e in range(epochs):
                for b, last in _with_last(train_batches):
                    yield e, b, last
        return gen(), total

    if epochs is not None:
        raise ValueError(
            "fit: epochs= needs to know where epochs end: pass a list of batches, "
            "jaxcomp.data.batches(...), or a function epoch -> iterable; or use steps="
        )

    def gen():
        for b in train_batches:
            yield None, b, False
    return gen(), steps


def _ordered(metrics: Mapping[str, Any]) -> list[str]:
    return sorted(metrics, key=lambda k: (k != "loss", k == "num_examples", k))


def _to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k in _ordered(metrics):
        v = metrics[k]
        a = np.asarray(v)
        out[k] = float(a) if a.size == 1 else a.tolist()
    return out


def _mean_metrics(pending: list[Mapping[str, Any]]) -> dict[str, Any]:
    host = jax.device_get(pending)
    return {k: float(np.mean([np.asarray(m[k], np.float64) for m in host]))
            for k in _ordered(host[0])}


def _copy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def fit(
    state: Any,
    step_fn: Callable[[Any, Mapping[str, Any]], tuple[Any, Mapping[str, Any]]],
    train_batches: Iterable[Mapping[str, Any]] | Callable[[int], Iterable[Mapping[str, Any]]],
    *,
    eval_fn: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]] | None = None,
    eval_batches: Iterable[Mapping[str, Any]] | Callable[[], Iterable] | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    eval_every: int | None = None,
    log_every: int | None = None,
    early_stopping: EarlyStopping | None = None,
    workdir: str | pathlib.Path | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    callbacks: Sequence[Callable[[Any, dict], Any]] = (),
    jit: bool = True,
    console: Any = None,
) -> tuple[Any, list[dict]]:
    """Trains with a step function: jit, logs, evaluation, early stopping, checkpoints.

    The loop jits ``step_fn`` (donating the state when ``step_fn.donate`` is
    set, see :func:`make_train_step`) and ``eval_fn``, runs the steps (each
    followed by ``step_fn.host_update(state, t)`` when the step has one:
    ``make_train_step(compressor_update="host")``), and
    every ``log_every`` steps records the mean train metrics since the last
    record; every ``eval_every`` steps (by default at the end of every epoch,
    and always at the end) it evaluates on all of ``eval_batches`` and records
    the exact dataset metrics (:func:`aggregate_metrics`).

    ``train_batches`` is any iterable of batch dicts (numpy or jax arrays;
    e.g. a generator, a list, or :func:`jaxcomp.data.batches`), or a function
    ``epoch -> iterable``. With ``steps`` the loop stops after that many steps
    (or when the batches run out); with ``epochs`` it needs epoch boundaries:
    a list (re-iterated every epoch), ``jaxcomp.data.batches`` or a function.
    ``eval_batches`` must be re-iterable (a list, or a function returning an
    iterable); a one-shot iterator is materialised into a list once.

    A record is ``{"step", "epoch", "split", "metrics", "time", "elapsed"}``
    (``step`` is ``state.step`` after the update, ``time`` the Unix time,
    ``elapsed`` seconds since the start). Records go to the returned history,
    to ``workdir/metrics.jsonl`` (appended, one JSON object per line) and to
    every callback as ``callback(state, record)``; a callback returning
    ``True`` stops training.

    Args:
      state: the initial :class:`~jaxcomp.train.TrainState`.
      step_fn: ``step(state, batch) -> (state, metrics)``.
      train_batches: the training batches (see above).
      eval_fn: ``eval(state, batch) -> metrics`` (:func:`make_eval_step`).
      eval_batches: the evaluation batches.
      steps: number of steps to run in this call.
      epochs: number of epochs to run.
      eval_every: evaluate every this many steps (default: each epoch end,
        or only at the end).
      log_every: record train metrics every this many steps (default: about
        50 records per run, at most every 100 steps; every epoch end too).
      early_stopping: an :class:`EarlyStopping` rule.
      workdir: directory for ``metrics.jsonl`` and ``checkpoints/``.
      checkpoint_every: save a checkpoint to ``workdir/checkpoints`` every
        this many steps and at the end (needs ``workdir``).
      progress: show a rich progress bar on terminals (periodic lines
        elsewhere) and a final summary table; ``False`` prints nothing.
      callbacks: functions ``(state, record) -> stop?``.
      jit: jit ``step_fn`` and ``eval_fn`` (turn off to debug).
      console: a ``rich.console.Console`` to print to (default stdout).

    Returns:
      ``(state, history)``: the final state (the best one with
      ``early_stopping.restore_best``) and the list of records.

    Raises:
      ValueError: for inconsistent arguments (e.g. ``epochs`` with a plain
        iterator, an eval monitor without ``eval_fn``, a monitored metric
        that does not exist).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxcomp.train import TrainState, make_train_step
      >>> def loss_fn(p, ms, batch, rng):
      ...     loss = jnp.mean((batch["x"] * p["w"] - batch["y"]) ** 2)
      ...     return loss, (ms, {"loss": loss})
      >>> tx = optax.sgd(0.5)
      >>> state = TrainState.create({"w": jnp.zeros(())}, tx, key=jax.random.key(0))
      >>> batches = [{"x": jnp.ones(4), "y": 3 * jnp.ones(4)}] * 20
      >>> state, history = fit(state, make_train_step(loss_fn, tx), batches, progress=False)
      >>> round(float(state.params["w"]), 3), history[-1]["step"]
      (3.0, 20)
    """
    steps = _positive("steps", steps)
    epochs = _positive("epochs", epochs)
    eval_every = _positive("eval_every", eval_every)
    log_every = _positive("log_every", log_every)
    checkpoint_every = _positive("checkpoint_every", checkpoint_every)
    if not callable(step_fn):
        raise TypeError(f"fit: step_fn must be callable, got {type(step_fn).__name__}")
    if (eval_fn is None) != (eval_batches is None):
        raise ValueError("fit: pass eval_fn and eval_batches together (or neither)")
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError("fit: early_stopping must be a jaxcomp.train.EarlyStopping")
        if early_stopping.split == "eval" and eval_fn is None:
            raise ValueError(
                f"fit: early_stopping monitors {early_stopping.monitor!r} but there is no eval_fn; "
                "pass eval_fn and eval_batches, or monitor 'train/...'"
            )
    if checkpoint_every is not None and workdir is None:
        raise ValueError("fit: checkpoint_every needs workdir=")
    callbacks = list(callbacks)

    stream, total = _plan(train_batches, epochs, steps)
    if log_every is None:
        log_every = max(1, min(100, total // 50)) if total else 50
    donate = bool(getattr(step_fn, "donate", False))
    run_step = jax.jit(step_fn, donate_argnums=(0,) if donate else ()) if jit else step_fn
    host_update = getattr(step_fn, "host_update", None)  # make_train_step(compressor_update="host")
    first_step = int(jax.device_get(state.step)) if host_update is not None else 0
    run_eval = (jax.jit(eval_fn) if jit else eval_fn) if eval_fn is not None else None
    if eval_batches is not None and not callable(eval_batches) and hasattr(
        eval_batches, "__next__"
    ):
        eval_batches = list(eval_batches)  # a one-shot iterator: keep it for every evaluation

    def eval_iter():
        return eval_batches() if callable(eval_batches) else iter(eval_batches)

    writer = MetricsWriter(workdir)
    reporter = Reporter(progress, total, console)
    history: list[dict] = []
    start = time.time()
    best = None  # {"monitor", "value", "step", "state"}
    bad_checks = 0
    stop = False
    stopped_early = False
    done = 0
    last_eval_at = last_log_at = last_ckpt_at = -1
    epoch = None
    pending: list[Mapping[str, Any]] = []

    def record(split: str, metrics: dict) -> None:
        nonlocal best, bad_checks, stop, stopped_early
        step_value = int(jax.device_get(state.step)) if hasattr(state, "step") else done
        rec = {"step": step_value, "epoch": epoch, "split": split, "metrics": metrics,
               "time": time.time(), "elapsed": time.time() - start}
        history.append(rec)
        writer.write(rec)
        reporter.log(rec, done)
        if early_stopping is not None and split == early_stopping.split:
            if early_stopping.metric not in metrics:
                raise ValueError(
                    f"fit: early_stopping monitors {early_stopping.monitor!r} but the {split} "
                    f"metrics are {sorted(metrics)}"
                )
            value = float(metrics[early_stopping.metric])
            if early_stopping.improved(value, None if best is None else best["value"]):
                best = {"monitor": early_stopping.monitor, "value": value, "step": step_value,
                        "state": (_copy(state) if donate else state)
                        if early_stopping.restore_best else None}
                bad_checks = 0
            else:
                bad_checks += 1
                if bad_checks >= early_stopping.patience:
                    stop = stopped_early = True
        for cb in callbacks:
            if cb(state, rec) is True:
                stop = True

    def log_train() -> None:
        nonlocal pending, last_log_at
        if pending:
            record("train", _mean_metrics(pending))
            pending = []
            last_log_at = done

    def run_evaluation() -> None:
        nonlocal last_eval_at
        metrics = aggregate_metrics(run_eval(state, b) for b in eval_iter())
        last_eval_at = done
        record("eval", _to_python(metrics))

    def checkpoint() -> None:
        nonlocal last_ckpt_at
        ckdir = pathlib.Path(workdir) / "checkpoints"
        if int(jax.device_get(state.step)) not in all_steps(ckdir):
            save_checkpoint(ckdir, state)
        last_ckpt_at = done

    try:
        for epoch, batch, end_of_epoch in stream if total != 0 else ():
            state, metrics = run_step(state, batch)
            if host_update is not None:
                state = host_update(state, first_step + done)
            pending.append(metrics)
            done += 1
            reporter.advance()
            final = total is not None and done >= total
            if done % log_every == 0 or end_of_epoch or final:
                log_train()
            if run_eval is not None and (
                (eval_every is not None and done % eval_every == 0)
                or (eval_every is None and end_of_epoch)
                or final
            ):
                run_evaluation()
            if checkpoint_every is not None and (done % checkpoint_every == 0 or final):
                checkpoint()
            if stop or final:
                break
        if done and not stop:  # the batches ran out before a known end
            if last_log_at != done:
                log_train()
            if run_eval is not None and last_eval_at != done:
                run_evaluation()
        if checkpoint_every is not None and done and last_ckpt_at != done:
            checkpoint()
    finally:
        reporter.close()
        writer.close()

    elapsed = time.time() - start
    if best is not None and early_stopping.restore_best and best["state"] is not None:
        state = best["state"]
    reporter.print(
        summary_table(
            history, steps=done, elapsed=elapsed,
            best=None if best is None else {k: best[k] for k in ("monitor", "value", "step")},
            stopped_early=stopped_early,
        )
    )
    return state, history

