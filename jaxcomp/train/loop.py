"""The ready-made training loop :func:`fit` and its :class:`EarlyStopping` rule."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxcomp.core.base import target_reached
from jaxcomp.train.checkpoint import (
    all_steps,
    checkpoint_extra,
    restore_checkpoint,
    save_checkpoint,
)
from jaxcomp.train.nonfinite import SKIPPED, check_finite_losses, skip_nonfinite
from jaxcomp.train.progress import MetricsWriter, Reporter, is_main_process, summary_table
from jaxcomp.train.steps import aggregate_metrics
from jaxcomp.train.stream import plan

__all__ = ["EarlyStopping", "fit"]

_SPLITS = ("train", "eval")
_NONFINITE = ("raise", "skip", "ignore")
_RUN_FORMAT = "jaxcomp.train.fit/1"
_METRICS = "metrics.jsonl"
_CKPT_DIR = "checkpoints"
_BEST_DIR = "best"


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

    With a compressor in the step, checks before the compression target is
    reached are neither candidates nor count towards ``patience`` (see
    :func:`fit`).

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
    """Means over the steps; with ``skipped`` (on_nonfinite="skip") over the kept steps only."""
    host = jax.device_get(pending)
    kept = [m for m in host if not (SKIPPED in m and float(np.asarray(m[SKIPPED])) > 0)]
    out = {}
    for k in _ordered(host[0]):
        rows = host if k == SKIPPED else kept
        out[k] = float(np.mean([np.asarray(m[k], np.float64) for m in rows])) if rows else float(
            "nan")
    return out


def _copy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


class _Run:
    """The loop's bookkeeping: history, logging, evaluation, early stopping, checkpoints."""

    def __init__(self, state, *, early_stopping, callbacks, compressor, donate, on_nonfinite,
                 workdir, reporter):
        self.state = state
        self.early_stopping = early_stopping
        self.callbacks = callbacks
        self.compressor = compressor
        self.donate = donate
        self.on_nonfinite = on_nonfinite
        self.workdir = None if workdir is None else pathlib.Path(workdir)
        self.reporter = reporter
        self.writer = None
        self.history: list[dict] = []
        self.best = None  # {"monitor", "value", "step"}
        self.best_state = None
        self.bad_checks = 0
        self.unreached_checks = 0  # checks skipped: the compression target was not reached
        self.stop = False
        self.stopped_early = False
        self.finished = False
        self.done = 0  # batches consumed by the run (all calls of a resumed run together)
        self.first_step = 0  # state.step before the run's first batch
        self.last_eval_at = self.last_log_at = self.last_ckpt_at = -1
        self.last_ckpt_finished = False
        self.epoch = None
        self.pending: list[Mapping[str, Any]] = []  # train metrics since the last train record
        self.pending_at: list[int] = []  # the value of `done` after each of them
        self.elapsed0 = 0.0
        self.start = time.time()

    # --------------------------------------------------------------- records
    def elapsed(self) -> float:
        return self.elapsed0 + time.time() - self.start

    def step_value(self) -> int:
        state = self.state
        return int(jax.device_get(state.step)) if hasattr(state, "step") else self.done

    def record(self, split: str, metrics: dict) -> None:
        state, es = self.state, self.early_stopping
        step_value = self.step_value()
        rec = {"step": step_value, "epoch": self.epoch, "split": split, "metrics": metrics,
               "time": time.time(), "elapsed": self.elapsed()}
        self.history.append(rec)
        self.writer.write(rec)
        self.reporter.log(rec, self.done)
        if es is not None and split == es.split:
            if es.metric not in metrics:
                raise ValueError(
                    f"fit: early_stopping monitors {es.monitor!r} but the {split} metrics are "
                    f"{sorted(metrics)}"
                )
            # A state whose compression target is not reached (a gradual schedule still
            # running) is no candidate, and its checks do not count towards patience.
            if not target_reached(self.compressor, getattr(state, "compressor_state", None)):
                self.unreached_checks += 1
            else:
                value = float(metrics[es.metric])
                if es.improved(value, None if self.best is None else self.best["value"]):
                    self.best = {"monitor": es.monitor, "value": value, "step": step_value}
                    if es.restore_best:
                        self.best_state = _copy(state) if self.donate else state
                    self.bad_checks = 0
                else:
                    self.bad_checks += 1
                    if self.bad_checks >= es.patience:
                        self.stop = self.stopped_early = True
        for cb in self.callbacks:
            if cb(state, rec) is True:
                self.stop = True

    def fetch_pending(self) -> None:
        """Brings the pending train metrics to the host and checks their losses."""
        if not self.pending:
            return
        self.pending = jax.device_get(self.pending)
        if self.on_nonfinite == "raise":
            check_finite_losses(self.pending, [self.first_step + d for d in self.pending_at])

    def log_train(self) -> None:
        if self.pending:
            self.fetch_pending()
            metrics = _mean_metrics(self.pending)
            self.pending, self.pending_at = [], []
            self.record("train", metrics)
            self.last_log_at = self.done

    def evaluate(self, run_eval, eval_iter) -> None:
        metrics = aggregate_metrics(run_eval(self.state, b) for b in eval_iter())
        self.last_eval_at = self.done
        self.record("eval", _to_python(metrics))

    # ----------------------------------------------------------- checkpoints
    def position(self) -> dict:
        best_in = None
        if self.best is not None and self.best_state is not None:
            best_in = "checkpoint" if self.best["step"] == self.step_value() else "best"
        return {
            "format": _RUN_FORMAT, "batches": self.done, "first_step": self.first_step,
            "finished": self.finished, "stopped_early": self.stopped_early,
            "elapsed": self.elapsed(), "epoch": self.epoch, "history": self.history,
            "pending": [{k: np.asarray(v, np.float64).tolist() for k, v in m.items()}
                        for m in self.pending],
            "pending_at": list(self.pending_at), "last_eval_at": self.last_eval_at,
            "last_log_at": self.last_log_at, "best": self.best, "best_in": best_in,
            "bad_checks": self.bad_checks, "unreached_checks": self.unreached_checks,
        }

    def checkpoint(self, finished: bool) -> None:
        self.fetch_pending()  # never checkpoint a diverged state unnoticed
        self.finished = finished
        pos = self.position()
        if pos["best_in"] == "best":
            best_dir = self.workdir / _BEST_DIR
            if self.best["step"] not in _steps_in(best_dir):
                # keep=2: the previous best stays until a checkpoint refers to the new one
                save_checkpoint(best_dir, self.best_state, step=self.best["step"], keep=2,
                                overwrite=True)
        step = self.step_value() if hasattr(self.state, "step") else self.done
        save_checkpoint(self.workdir / _CKPT_DIR, self.state, step=step, extra=pos,
                        overwrite=True)
        self.last_ckpt_at = self.done
        self.last_ckpt_finished = finished

    def restore(self, template: Any) -> bool:
        """Restores the latest checkpoint of the workdir; False when there is none."""
        ckdir = self.workdir / _CKPT_DIR
        steps = _steps_in(ckdir)
        if not steps:
            return False
        pos = checkpoint_extra(ckdir, step=steps[-1])
        if not isinstance(pos, dict) or pos.get("format") != _RUN_FORMAT:
            raise ValueError(
                f"fit(resume=True): checkpoint step {steps[-1]} in {ckdir} was not written by fit "
                "(it has no record of the run's position); resume it by hand with "
                "restore_checkpoint, or start over with overwrite=True"
            )
        self.state = restore_checkpoint(ckdir, template, step=steps[-1])
        self.done = int(pos["batches"])
        self.first_step = int(pos["first_step"])
        self.finished = bool(pos["finished"])
        self.stopped_early = bool(pos["stopped_early"])
        self.elapsed0 = float(pos["elapsed"])
        self.start = time.time()
        self.epoch = pos["epoch"]
        self.history = list(pos["history"])
        self.pending = list(pos["pending"])
        self.pending_at = [int(d) for d in pos["pending_at"]]
        self.last_eval_at = int(pos["last_eval_at"])
        self.last_log_at = int(pos["last_log_at"])
        self.last_ckpt_at = self.done
        self.last_ckpt_finished = self.finished
        self.best = pos["best"]
        self.bad_checks = int(pos["bad_checks"])
        self.unreached_checks = int(pos.get("unreached_checks", 0))
        if pos["best_in"] == "checkpoint":
            self.best_state = _copy(self.state) if self.donate else self.state
        elif pos["best_in"] == "best":
            self.best_state = restore_checkpoint(self.workdir / _BEST_DIR, template,
                                                 step=int(self.best["step"]))
        return True


def _steps_in(directory: pathlib.Path) -> list[int]:
    return all_steps(directory) if directory.is_dir() else []


def _prepare_workdir(workdir: pathlib.Path, resume: bool, overwrite: bool) -> None:
    """Refuses to mix two runs in one workdir; clears it for ``overwrite``."""
    outputs = [workdir / name for name in (_METRICS, _CKPT_DIR, _BEST_DIR)]
    found = [p.name for p in outputs if p.exists()]
    if not found or resume:
        return
    if not overwrite:
        raise ValueError(
            f"fit: workdir {workdir} already holds a run ({', '.join(found)}); pass resume=True "
            "to continue it from its latest checkpoint, or overwrite=True to delete it and start "
            "over (jaxcomp run: --resume / --overwrite)"
        )
    if is_main_process():
        for p in outputs:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


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
    resume: bool = False,
    overwrite: bool = False,
    on_nonfinite: str = "raise",
    progress: bool = True,
    callbacks: Sequence[Callable[[Any, dict], Any]] = (),
    jit: bool = True,
    console: Any = None,
) -> tuple[Any, list[dict]]:
    """Trains with a step function: jit, logs, evaluation, early stopping, checkpoints, resume.

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
    to ``workdir/metrics.jsonl`` (one JSON object per line) and to
    every callback as ``callback(state, record)``; a callback returning
    ``True`` stops training.

    **Early stopping and compression.** When ``step_fn`` has a compressor
    (``step_fn.compressor``, set by :func:`make_train_step`), a check whose
    state has not reached the compression target
    (:func:`jaxcomp.core.base.target_reached`: e.g. a gradual pruning
    schedule still running) is not a candidate for the best state and does
    not count towards ``patience``: the patience starts when the target is
    reached, so the returned model always has the requested compression
    (if the target is never reached, the final state is returned).

    **Workdir, checkpoints and resume.** ``workdir`` holds
    ``metrics.jsonl``, ``checkpoints/<step>/`` (every ``checkpoint_every``
    steps and at the end; each with the run's position: batches consumed,
    history, early-stopping state, pending train metrics) and ``best/<step>/``
    (the best state of early stopping when it is not the checkpointed one).
    A workdir that already holds a run is refused unless ``resume=True``
    (continue from its latest checkpoint, or start afresh if there is none)
    or ``overwrite=True`` (delete those outputs first). A resumed run is
    called with the same arguments as the interrupted one (fresh state,
    fresh batches): it restores params, optimizer, model and compressor
    state, PRNG key and step, skips the batches already consumed
    (``jaxcomp.data.batches`` jumps there, other sources are read and
    discarded), rewrites ``metrics.jsonl`` up to the checkpoint and goes on,
    so its final state is bit-identical to an uninterrupted run's. ``steps``
    and ``epochs`` count the whole run. Resuming a finished run returns its
    result without training. Only process 0 writes ``metrics.jsonl`` and
    prints; every process takes part in checkpoints.

    **Non-finite losses** (``on_nonfinite``): ``"raise"`` (default) stops
    with a ``FloatingPointError`` naming the first step whose loss is NaN or
    infinite, found when the metrics are fetched for a log or a checkpoint
    (no extra work per step); ``"skip"`` drops such updates inside the
    compiled step (:func:`~jaxcomp.train.skip_nonfinite`; the train records
    then have a ``skipped`` fraction and average the other metrics over the
    kept steps); ``"ignore"`` trains on.

    Args:
      state: the initial :class:`~jaxcomp.train.TrainState`.
      step_fn: ``step(state, batch) -> (state, metrics)``.
      train_batches: the training batches (see above).
      eval_fn: ``eval(state, batch) -> metrics`` (:func:`make_eval_step`).
      eval_batches: the evaluation batches.
      steps: number of steps of the run.
      epochs: number of epochs of the run.
      eval_every: evaluate every this many steps (default: each epoch end,
        or only at the end).
      log_every: record train metrics every this many steps (default: about
        50 records per run, at most every 100 steps; every epoch end too).
      early_stopping: an :class:`EarlyStopping` rule.
      workdir: directory for ``metrics.jsonl`` and ``checkpoints/``.
      checkpoint_every: save a checkpoint to ``workdir/checkpoints`` every
        this many steps and at the end (needs ``workdir``).
      resume: continue the run in ``workdir`` (see above).
      overwrite: delete the run in ``workdir`` and start over.
      on_nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see above).
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
        that does not exist, a workdir holding another run).
      FloatingPointError: a non-finite loss with ``on_nonfinite="raise"``.

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
    if on_nonfinite not in _NONFINITE:
        raise ValueError(f"fit: on_nonfinite must be one of {', '.join(map(repr, _NONFINITE))}, "
                         f"got {on_nonfinite!r}")
    if resume and overwrite:
        raise ValueError("fit: pass resume=True or overwrite=True, not both")
    if (resume or overwrite) and workdir is None:
        raise ValueError(f"fit: {'resume' if resume else 'overwrite'}=True needs workdir=")
    if workdir is not None:
        workdir = pathlib.Path(workdir)
        _prepare_workdir(workdir, bool(resume), bool(overwrite))

    donate = bool(getattr(step_fn, "donate", False))
    run = _Run(state, early_stopping=early_stopping, callbacks=list(callbacks),
               compressor=getattr(step_fn, "compressor", None), donate=donate,
               on_nonfinite=on_nonfinite, workdir=workdir, reporter=None)
    restored = bool(resume) and run.restore(state)
    if not restored and hasattr(state, "step"):
        run.first_step = int(jax.device_get(state.step))

    stream, total = plan(train_batches, epochs, steps, skip=run.done)
    if log_every is None:
        log_every = max(1, min(100, total // 50)) if total else 50
    guarded = skip_nonfinite(step_fn) if on_nonfinite == "skip" else step_fn
    run_step = jax.jit(guarded, donate_argnums=(0,) if donate else ()) if jit else guarded
    host_update = getattr(step_fn, "host_update", None)  # make_train_step(compressor_update="host")
    run_eval = (jax.jit(eval_fn) if jit else eval_fn) if eval_fn is not None else None
    if eval_batches is not None and not callable(eval_batches) and hasattr(
        eval_batches, "__next__"
    ):
        eval_batches = list(eval_batches)  # a one-shot iterator: keep it for every evaluation

    def eval_iter():
        return eval_batches() if callable(eval_batches) else iter(eval_batches)

    run.writer = MetricsWriter(workdir, rewrite=run.history if resume else None)
    run.reporter = reporter = Reporter(progress, total, console)
    if run.done:
        reporter.advance(run.done)
    try:
        if not run.finished:
            _train(run, stream, total, run_step, host_update, run_eval, eval_iter,
                   log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every)
    finally:
        reporter.close()
        run.writer.close()

    state = run.state
    if run.best is not None and early_stopping.restore_best and run.best_state is not None:
        state = run.best_state
    notes = []
    if run.best is None and run.unreached_checks:
        notes.append(("best", "none: the compression target was never reached"))
    if restored:
        notes.append(("resumed", "yes"))
    reporter.print(
        summary_table(run.history, steps=run.done, elapsed=run.elapsed(), best=run.best,
                      stopped_early=run.stopped_early, notes=notes)
    )
    return state, run.history


def _train(run: _Run, stream, total, run_step, host_update, run_eval, eval_iter, *,
           log_every, eval_every, checkpoint_every) -> None:
    for epoch, batch, end_of_epoch in stream if total is None or run.done < total else ():
        run.epoch = epoch
        run.state, metrics = run_step(run.state, batch)
        if host_update is not None:
            run.state = host_update(run.state, run.first_step + run.done)
        run.pending.append(metrics)
        run.done += 1
        run.pending_at.append(run.done)
        run.reporter.advance()
        done = run.done
        final = total is not None and done >= total
        if done % log_every == 0 or end_of_epoch or final:
            run.log_train()
        if run_eval is not None and (
            (eval_every is not None and done % eval_every == 0)
            or (eval_every is None and end_of_epoch)
            or final
        ):
            run.evaluate(run_eval, eval_iter)
        if checkpoint_every is not None and (done % checkpoint_every == 0 or final):
            run.checkpoint(finished=final or run.stop)
        if run.stop or final:
            break
    if run.done and not run.stop:  # the batches ran out before a known end
        if run.last_log_at != run.done:
            run.log_train()
        if run_eval is not None and run.last_eval_at != run.done:
            run.evaluate(run_eval, eval_iter)
    run.fetch_pending()
    if checkpoint_every is not None and run.done and not (
        run.last_ckpt_at == run.done and run.last_ckpt_finished
    ):
        run.checkpoint(finished=True)
