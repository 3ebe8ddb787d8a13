"""Console output and metric logs for :func:`jaxcomp.train.fit`.

* On a terminal: a ``rich`` progress bar with the latest train metrics, and
  one printed line per evaluation.
* Elsewhere (CI logs, files, notebooks captured to text): no bar and no
  carriage returns; about ten periodic train lines per run plus one line per
  evaluation.
* ``workdir/metrics.jsonl``: one JSON object per logged step.

In a multi-process run only process 0 prints and writes files
(:func:`is_main_process`).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["MetricsWriter", "Reporter", "format_metrics", "is_main_process", "summary_table"]


def is_main_process() -> bool:
    """Whether this is process 0, the one that prints and writes logs, results and plots.

    Checkpoints are the exception: every process takes part in saving them
    (orbax coordinates the processes).

    Example:
      >>> is_main_process()  # a single-process run
      True
    """
    return jax.process_index() == 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)


def format_metrics(metrics: Mapping[str, Any], skip: Sequence[str] = ("num_examples",)) -> str:
    """``loss=0.1234 accuracy=0.9500`` (a record's metrics in one line).

    Example:
      >>> format_metrics({"loss": 0.12345, "accuracy": 0.5, "num_examples": 10.0})
      'loss=0.1235 accuracy=0.5000'
    """
    return " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k not in skip)


def _line(record: Mapping[str, Any], total: int | None) -> str:
    step = f"{record['step']}" if total is None else f"{record['step']}/{total}"
    epoch = "" if record.get("epoch") is None else f" epoch {record['epoch']}"
    return (
        f"step {step}{epoch} {record['split']:<5} {format_metrics(record['metrics'])} "
        f"({record['elapsed']:.1f}s)"
    )


class MetricsWriter:
    """Appends records as JSON lines to ``workdir/metrics.jsonl`` (flushed per record).

    Args:
      workdir: the directory (``None``: write nothing).
      rewrite: if given, the file is replaced by these records first (a
        resumed run drops the lines logged after its checkpoint).

    Only process 0 writes (:func:`is_main_process`); elsewhere this writes nothing.
    """

    def __init__(self, workdir: str | pathlib.Path | None,
                 rewrite: Sequence[Mapping[str, Any]] | None = None):
        self.path = None
        self._fh = None
        if workdir is not None and is_main_process():
            d = pathlib.Path(workdir)
            d.mkdir(parents=True, exist_ok=True)
            self.path = d / "metrics.jsonl"
            mode = "a" if rewrite is None else "w"
            self._fh = open(self.path, mode, encoding="utf-8")  # noqa: SIM115 - closed in close()
            for record in rewrite or ():
                self._fh.write(json.dumps(record, allow_nan=True) + "\n")
            self._fh.flush()

    def write(self, record: Mapping[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record, allow_nan=True) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Reporter:
    """Progress display: a rich bar on terminals, sparse lines elsewhere, or nothing.

    Args:
      enabled: ``False`` prints nothing at all (nor does any process but 0).
      total: total number of steps (``None`` if unknown).
      console: the rich console (default: a new one on stdout).
      lines: how many periodic train lines to print on a non-terminal.
    """

    def __init__(self, enabled: bool, total: int | None, console: Console | None = None,
                 lines: int = 10):
        self.enabled = bool(enabled) and is_main_process()
        self.total = total
        self.console = console if console is not None else Console()
        self.tty = self.console.is_terminal and not self.console.is_dumb_terminal
        self._every = max(1, total // lines) if total else None
        self._next_print = self._every
        self._logs = 0
        self._progress = None
        self._task = None
        if self.enabled and self.tty:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total, metrics="")

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def log(self, record: Mapping[str, Any], steps_done: int) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            if record["split"] == "train":
                self._progress.update(self._task, metrics=format_metrics(record["metrics"]))
            else:
                self._progress.console.print(_line(record, None))
            return
        if record["split"] == "train":
            self._logs += 1
            if self._every is None:
                if self._logs % 10 != 1:
                    return
            elif steps_done < self._next_print and not (self.total and steps_done >= self.total):
                return
            else:
                while self._next_print is not None and self._next_print <= steps_done:
                    self._next_print += self._every
        self.console.print(_line(record, self.total), highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def print(self, renderable: Any) -> None:
        if self.enabled:
            self.console.print(renderable)


def summary_table(
    history: Sequence[Mapping[str, Any]],
    *,
    steps: int,
    elapsed: float,
    best: Mapping[str, Any] | None = None,
    stopped_early: bool = False,
    notes: Sequence[tuple[str, str]] = (),
) -> Table:
    """A rich table: run length and speed, final train/eval metrics, best monitored value.

    ``notes`` are extra ``(label, value)`` rows at the end.
    """
    table = Table(title="Training summary", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("steps", str(steps))
    table.add_row("wall time", f"{elapsed:.1f} s")
    if elapsed > 0 and steps:
        table.add_row("steps/s", f"{steps / elapsed:.1f}")
    for split in ("train", "eval"):
        last = next((r for r in reversed(history) if r["split"] == split), None)
        if last is None:
            continue
        for k, v in last["metrics"].items():
            if k != "num_examples":
                table.add_row(f"{split} {k} (step {last['step']})", _fmt(v))
    if best is not None:
        table.add_row(f"best {best['monitor']} (step {best['step']})", _fmt(best["value"]))
    if stopped_early:
        table.add_row("stopped early", "yes")
    for label, value in notes:
        table.add_row(label, value)
    return table
