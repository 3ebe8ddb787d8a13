"""What the reproduced studies share: their command line, progress lines and report text.

A study lives in ``research/<study>/main.py`` next to its config
``configs/<study>.py``. Its ``main`` hands :func:`study_main` two functions:
``train_and_evaluate(config, workdir, progress) -> results`` (the study's
own logic, built from :mod:`jaxcomp.experiment`, :mod:`jaxcomp.train`,
:mod:`jaxcomp.distill` and :mod:`jaxcomp.prune`) and ``render(results) ->
markdown``. :func:`study_main` parses

.. code-block:: sh

    python research/<study>/main.py --config configs/<study>.py[:smoke] \\
        [--workdir DIR] [--no-progress] [--render] [--config.field=value ...]

loads the config (``configs/<study>.py:smoke`` calls ``get_config("smoke")``,
the one-minute variant every study has), trains, writes ``results.json``
(with the config, the overrides and the command) and ``RESULTS.md`` under
the workdir (``runs/<study>`` under the current directory unless
``--workdir`` says otherwise), and prints the report. ``--render`` only
rewrites ``RESULTS.md`` from an existing ``results.json``.

The text helpers (:func:`fmt_ms`, :func:`signed`, :func:`by_sign`,
:func:`markdown_table`, :func:`run_section`) let a report's sentences be
computed from the numbers, so the prose cannot contradict the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from jaxcomp.config.loading import load_config
from jaxcomp.config.registry import ConfigError
from jaxcomp.train.progress import is_main_process

__all__ = [
    "RunCounter",
    "accuracy",
    "by_sign",
    "config_overrides",
    "default_workdir",
    "entry_command",
    "fmt_ms",
    "markdown_table",
    "plain",
    "plural",
    "read_results",
    "run_section",
    "signed",
    "study_main",
    "train_budget",
    "words",
]


def plain(value: Any) -> Any:
    """A config (``ConfigDict``, mappings, lists) as plain dicts and lists.

    Example:
      >>> import ml_collections
      >>> plain(ml_collections.ConfigDict({"train": {"steps": 3}, "seeds": [0, 1]}))
      {'seeds': [0, 1], 'train': {'steps': 3}}
    """
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def default_workdir(study: str) -> pathlib.Path:
    """``runs/<study>`` under the current directory (``.gitignore`` ignores ``/runs/``).

    Example:
      >>> str(default_workdir("hinton_kd"))
      'runs/hinton_kd'
    """
    if not isinstance(study, str) or not study or "/" in study:
        raise ValueError(f"default_workdir: study must be a plain name, got {study!r}")
    return pathlib.Path("runs") / study


def config_overrides(defaults: Mapping[str, Any], used: Mapping[str, Any], *,
                     ignore: Sequence[str] = ("config_path",)) -> list[str]:
    """The ``--config.a.b=value`` overrides that turn ``defaults`` into ``used``.

    Nested mappings are compared field by field, anything else (lists
    included) as a whole. Fields of ``defaults`` absent from ``used`` (e.g.
    added to the config file after an old run) are not overrides and are
    skipped; so are the top-level names in ``ignore``.

    Example:
      >>> config_overrides({"seeds": [0, 1], "train": {"steps": 3, "lr": 0.1}},
      ...                  {"seeds": [0], "train": {"steps": 3, "lr": 0.1}, "extra": "x"})
      ["--config.extra='x'", '--config.seeds=[0]']
    """
    defaults, used = plain(defaults), plain(used)
    if not isinstance(defaults, Mapping) or not isinstance(used, Mapping):
        raise TypeError("config_overrides: defaults and used must be mappings, got "
                        f"{type(defaults).__name__} and {type(used).__name__}")

    def walk(a: Mapping, b: Mapping, prefix: str) -> list[str]:
        out = []
        for k in sorted(b, key=str):
            if not prefix and k in ignore:
                continue
            path = f"{prefix}.{k}" if prefix else str(k)
            if k in a and isinstance(a[k], Mapping) and isinstance(b[k], Mapping):
                out += walk(a[k], b[k], path)
            elif k not in a or a[k] != b[k]:
                out.append(f"--config.{path}={b[k]!r}")
        return out

    return walk(defaults, used, "")


def entry_command(config: Any, *, workdir: str | os.PathLike | None = None,
                  config_file: str | None = None, overrides: Sequence[str] = ()) -> str:
    """The shell command that runs a study config through its ``research/<study>/main.py``.

    ``config.entry`` names the script relative to the repository root (the
    parent of the config file's folder); it is shown relative to the current
    directory when below it, else as an absolute path. ``config_file`` defaults to the config's
    ``config_path``.

    Example:
      >>> entry_command({"entry": "research/kd/main.py"}, config_file="configs/kd.py",
      ...               workdir="runs/kd", overrides=["--config.seeds=[0]"])
      "python research/kd/main.py --config configs/kd.py --workdir runs/kd '--config.seeds=[0]'"
    """
    cfg = plain(config)
    entry = cfg.get("entry") if isinstance(cfg, Mapping) else None
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f"config.entry: expected the path of a research/<study>/main.py, "
                          f"got {entry!r}")
    path = cfg.get("config_path")
    script = entry
    if path and not pathlib.Path(entry).is_absolute():
        candidate = pathlib.Path(path).resolve().parent.parent / entry
        if candidate.is_file():
            script = _shown(candidate)
    if config_file is None:
        config_file = _shown(pathlib.Path(path)) if path else "configs/<study>.py"
    args = ["python", script, "--config", str(config_file)]
    if workdir is not None:
        args += ["--workdir", str(workdir)]
    return shlex.join([*args, *overrides])


def _shown(path: pathlib.Path) -> str:
    """``path`` relative to the current directory when below it, else absolute."""
    rel = os.path.relpath(path.resolve())
    return str(path.resolve()) if rel.startswith("..") else rel


class RunCounter:
    """Names each training run of a study and shows where the study stands.

    ``start(*parts, **labels)`` prints ``[study] run k/N: parts, labels`` and,
    from the second run on, the elapsed time and a linear estimate of the
    time left.

    Args:
      total: how many runs the study will train (a positive int).
      study: the name printed in brackets.
      enabled: ``False`` prints nothing (counting goes on).
      stream: where to print (default ``sys.stdout``).
      clock: seconds, for the estimate (default ``time.monotonic``).

    Example:
      >>> ticks = iter([0.0, 90.0])  # the clock at the start and at run 2
      >>> runs = RunCounter(2, study="demo", clock=lambda: next(ticks))
      >>> runs.start("teacher", seed=0)
      [demo] run 1/2: teacher, seed 0
      >>> runs.start("student", seed=0, T=4.0)
      [demo] run 2/2: student, seed 0, T 4 (1:30 elapsed, about 1:30 left)
    """

    def __init__(self, total: int, *, study: str = "", enabled: bool = True,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"RunCounter: total must be a positive int, got {total!r}")
        self.total = total
        self.study = study
        self.enabled = enabled
        self.stream = stream
        self.clock = clock
        self.done = 0
        self._t0 = clock()

    def start(self, *parts: Any, **labels: Any) -> None:
        """Counts one more run and prints its name and the study's progress."""
        self.done += 1
        names = [str(p) for p in parts] + [f"{k} {_short(v)}" for k, v in labels.items()]
        text = f"run {self.done}/{self.total}: " + ", ".join(names)
        if self.study:
            text = f"[{self.study}] {text}"
        if self.done > 1:
            spent = self.clock() - self._t0
            left = spent / (self.done - 1) * max(self.total - self.done + 1, 0)
            text += f" ({_clock(spent)} elapsed, about {_clock(left)} left)"
        if self.enabled and is_main_process():
            print(text, file=self.stream or sys.stdout, flush=True)


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def fmt_ms(ms: Mapping[str, float] | None, *, scale: float = 1.0, digits: int = 1,
           unit: str = "", sign: bool = False) -> str:
    """``mean ± std`` of a :func:`~jaxcomp.experiment.mean_std` dict (``n/a`` for None).

    ``sign=True`` always shows the mean's sign (for differences).

    Example:
      >>> fmt_ms({"mean": 0.9371, "std": 0.0102, "n": 3}, scale=100, unit="%")
      '93.7 ± 1.0%'
      >>> fmt_ms({"mean": 0.0123, "std": 0.004}, scale=100, digits=2, unit=" pp", sign=True)
      '+1.23 ± 0.40 pp'
      >>> fmt_ms(None)
      'n/a'
    """
    if ms is None or ms.get("mean") is None:
        return "n/a"
    std = ms.get("std") or 0.0
    mean = f"{ms['mean'] * scale:{'+' if sign else ''}.{digits}f}"
    return f"{mean} ± {std * scale:.{digits}f}{unit}"


def plural(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``.

    Example:
      >>> plural(1, "seed"), plural(3, "seed"), plural(0, "copy")
      ('1 seed', '3 seeds', '0 copies')
    """
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        many = noun[:-1] + "ies"
    else:
        many = noun + "s"
    return f"{n:,} {noun if n == 1 else many}"


def accuracy(apply_fn: Callable[[Any, Any], Any], variables: Any, x: Any, y: Any, *,
             batch_size: int = 500) -> float:
    """Top-1 accuracy of ``apply_fn(variables, x)`` logits on ``(x, y)``, in jitted batches.

    Example:
      >>> import numpy as np
      >>> w = np.array([[1.0, 0.0], [0.0, 1.0]])
      >>> accuracy(lambda v, x: x @ v, w, np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]),
      ...          np.array([0, 1, 1]), batch_size=2)
      0.6666666666666666
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"accuracy: batch_size must be a positive int, got {batch_size!r}")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"accuracy: x and y must be non-empty and of one length, got "
                         f"{len(x)} and {len(y)}")
    predict = jax.jit(lambda v, xb: jnp.argmax(apply_fn(v, xb), -1))
    pred = np.concatenate([np.asarray(predict(variables, x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])
    return float(np.mean(pred == np.asarray(y)))


def signed(x: float | None, *, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """A number with its sign (``+1.2 pp``; ``n/a`` for None or NaN).

    Example:
      >>> signed(0.0123, scale=100, unit=" pp"), signed(-2.0, digits=0)
      ('+1.2 pp', '-2')
    """
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x * scale:+.{digits}f}{unit}"


def by_sign(x: float, positive: str, negative: str, zero: str, *, tol: float = 0.0) -> str:
    """``positive`` if ``x > tol``, ``negative`` if ``x < -tol``, else ``zero``.

    Example:
      >>> [by_sign(d, "beats", "trails", "ties", tol=0.001) for d in (0.02, -0.02, 0.0005)]
      ['beats', 'trails', 'ties']
    """
    if math.isnan(x):
        raise ValueError("by_sign: x is NaN; decide what an undefined value reads as first")
    if tol < 0:
        raise ValueError(f"by_sign: tol must be >= 0, got {tol!r}")
    return positive if x > tol else negative if x < -tol else zero


def words(items: Sequence[Any], *, empty: str = "none") -> str:
    """``a``, ``a and b``, ``a, b and c`` (``empty`` for no items).

    Example:
      >>> words(["2", "4", "8"]), words([]), words(["x"])
      ('2, 4 and 8', 'none', 'x')
    """
    items = [str(i) for i in items]
    if not items:
        return empty
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def train_budget(train: Mapping[str, Any]) -> str:
    """``6,000 steps`` or ``25 epochs`` from a ``train`` config (``n/a`` without either).

    Example:
      >>> train_budget({"steps": 6000}), train_budget({"epochs": 25}), train_budget({})
      ('6,000 steps', '25 epochs', 'n/a')
    """
    train = plain(train) or {}
    if train.get("steps") is not None:
        return f"{int(train['steps']):,} steps"
    if train.get("epochs") is not None:
        return f"{int(train['epochs']):,} epochs"
    return "n/a"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table.

    Example:
      >>> print("\\n".join(markdown_table(["model", "acc"], [["mlp", "66.5%"]])))
      | model | acc |
      |---|---|
      | mlp | 66.5% |
    """
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"markdown_table: row {i} has {len(row)} cells, the header "
                             f"{len(header)}")
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def run_section(results: Mapping[str, Any]) -> list[str]:
    """The closing lines of a ``RESULTS.md``: the command, overrides and wall time.

    Reads ``command``, ``overrides`` (and ``overrides_derived``, set when
    they were recovered from the stored config), ``config_file`` and
    ``seconds``.

    Example:
      >>> print("\\n".join(run_section({"command": "python m.py --config c.py",
      ...                               "overrides": [], "seconds": 75.0})))
      ## Run
      <BLANKLINE>
      `python m.py --config c.py`
      <BLANKLINE>
      Overrides: none (the config file's defaults). Wall time: 1:15.
    """
    command = results.get("command")
    overrides = results.get("overrides")
    if overrides is None:
        over = "n/a (not recorded)"
    elif overrides:
        over = ", ".join(f"`{o}`" for o in overrides)
    else:
        source = results.get("config_file")
        over = f"none (the defaults of `{source}`)" if source else "none (the config file's defaults)"
    if results.get("overrides_derived"):
        over += " — derived by comparing the stored config with the config file"
    seconds = results.get("seconds")
    wall = "n/a" if seconds is None else _clock(float(seconds))
    return ["## Run", "", f"`{command}`" if command else "Command: n/a (not recorded)", "",
            f"Overrides: {over}. Wall time: {wall}."]


def read_results(workdir: str | os.PathLike) -> dict[str, Any]:
    """Reads ``workdir/results.json``.

    Raises:
      ValueError: there is no ``results.json`` in ``workdir``.
    """
    path = pathlib.Path(workdir) / "results.json"
    if not path.is_file():
        raise ValueError(f"--workdir {workdir}: no results.json to render (run the study "
                         "without --render first)")
    return json.loads(path.read_text())


def _parser(study: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"research/{study}/main.py",
        description=f"Reproduce the {study} study. Overrides: --config.field=value.",
        allow_abbrev=False)
    p.add_argument("--config", required=True, metavar="FILE[:VARIANT]",
                   help=f"configs/{study}.py, or configs/{study}.py:smoke for the one-minute run")
    p.add_argument("--workdir", default=None,
                   help=f"output folder (default runs/{study}; research/{study} to update the "
                        "committed results)")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress bars")
    p.add_argument("--render", action="store_true",
                   help="only rewrite WORKDIR/RESULTS.md from WORKDIR/results.json")
    return p


def study_main(study: str, train_and_evaluate: Callable[[Any, pathlib.Path, bool], dict],
               render: Callable[[Mapping[str, Any]], str],
               argv: Sequence[str] | None = None) -> int:
    """The command line of ``research/<study>/main.py``; returns the exit code.

    Trains (``train_and_evaluate(config, workdir, progress)``), adds
    ``config``, ``config_file``, ``overrides`` and ``command`` to the results,
    writes ``results.json`` and ``RESULTS.md`` (``render(results)``) to the
    workdir and prints the report. Configuration errors print one line and
    return 2.
    """
    from jaxcomp.experiment import write_results

    parser = _parser(study)
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments {bad}; overrides look like --config.field=value")
    try:
        if args.render and extra:
            raise ConfigError("--render rewrites RESULTS.md from results.json; it takes no "
                              "--config.* overrides")
        config = load_config(args.config, extra)
        entry = config.get("entry")
        if entry and pathlib.PurePath(entry).parent.name != study:
            raise ConfigError(f"--config {args.config} belongs to another study; run "
                              f"{entry_command(config, config_file=args.config)}")
        workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(study)
        script = {**plain(config), "entry": entry or f"research/{study}/main.py"}
        if args.render:
            try:
                results = read_results(workdir)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if "overrides" not in results:
                results["overrides"] = config_overrides(config, results.get("config") or {})
                results["overrides_derived"] = True
            if "command" not in results:
                results["command"] = entry_command(
                    script, config_file=args.config, workdir=workdir,
                    overrides=results["overrides"])
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            out = train_and_evaluate(config, workdir, not args.no_progress)
            command = entry_command(script, config_file=args.config, workdir=workdir,
                                    overrides=extra)
            results = {"config": plain(config), "config_file": args.config,
                       "overrides": list(extra), "command": command, **out}
            path = write_results(workdir, results)
            if path.is_file():  # the report reads the results as written (JSON types)
                results = read_results(workdir)
    except ConfigError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    if not is_main_process():  # every host runs the same command; one writes and prints
        return 0
    text = render(results)
    (workdir / "RESULTS.md").write_text(text)
    print(text)
    print(f"wrote {workdir / 'RESULTS.md'}" + ("" if args.render else " and results.json"))
    return 0
