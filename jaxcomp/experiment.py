"""Studies as data: build data, model, optimizer and compression from a config and train.

``jaxcomp run CONFIG --workdir DIR`` calls :func:`run_experiment` on a config
that describes a generic supervised run:

.. code-block:: python

    config.data = {"name": "mnist5k", "layout": "flat", "batch_size": 100}
    config.model = {"name": "lenet300", "overrides": {}}
    config.train = {"optimizer": {"name": "adam", "learning_rate": 1e-3},
                    "steps": 2000, "eval_every": 500}
    config.compression = [{"method": "magnitude_pruning", "sparsity": 0.9}]  # optional
    config.seeds = [0, 1, 2]

The generic run trains every seed, evaluates on the test split, measures
the compressed model (parameters, non-zeros, MACs, effective MACs, storage)
and writes ``results.json``, ``metrics.jsonl`` (per seed under
``seed_<s>/``), a learning-curve plot and checkpoints.

A config with ``config.entry = "research/<study>/main.py"`` belongs to a
reproduced study: that script is its entry point (``python
research/<study>/main.py --config configs/<study>.py``, see
:mod:`jaxcomp.studies`), and :func:`run_experiment` refuses it with that
command. The library never loads research code.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxcomp.config.builders import build_compressor, build_optimizer
from jaxcomp.config.extras import require_extra
from jaxcomp.config.loading import get_field, require
from jaxcomp.config.registry import ConfigError, did_you_mean
from jaxcomp.config.validation import check_config
from jaxcomp.train.progress import is_main_process

__all__ = [
    "build_model",
    "compare",
    "figure",
    "format_value",
    "load_data",
    "mean_std",
    "measure_model",
    "plot_history",
    "run_experiment",
    "summarize_runs",
    "summary_rows",
    "train_supervised",
    "write_results",
]


def _plain(cfg: Any) -> Any:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else cfg


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of a list.

    Example:
      >>> mean_std([1.0, 2.0, 3.0])
      {'mean': 2.0, 'std': 1.0, 'n': 3}
    """
    arr = np.asarray(list(values), np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def load_data(data_cfg: Any, *, field: str = "config.data") -> Any:
    """Loads a dataset from ``{"name": ..., **loader kwargs}`` (batch sizes ignored)."""
    from jaxcomp import data

    spec = dict(_plain(data_cfg))
    if "name" not in spec:
        raise ConfigError(f"{field}.name: missing; one of {', '.join(data.list_datasets())}")
    name = spec.pop("name")
    for k in ("batch_size", "eval_batch_size"):
        spec.pop(k, None)
    if name not in data.list_datasets():
        raise ConfigError(f"{field}.name: unknown dataset {name!r}; one of "
                          f"{', '.join(data.list_datasets())}")
    try:
        return data.load(name, **spec)
    except TypeError as e:
        raise ConfigError(f"{field}: {e}") from e


def build_model(model_cfg: Any, dataset: Any = None, *, field: str = "config.model") -> Any:
    """Builds a :class:`~jaxcomp.models.ModelSpec` from ``{"name": ..., "overrides": {...}}``."""
    from jaxcomp import models

    spec = dict(_plain(model_cfg))
    if "name" not in spec:
        raise ConfigError(f"{field}.name: missing; one of {', '.join(models.list_models())}")
    overrides = dict(spec.get("overrides") or {})
    unknown = set(spec) - {"name", "overrides"}
    if unknown:
        raise ConfigError(f"{field}.{min(unknown)}: unknown field (use {field}.overrides)")
    try:
        model = models.get_model(spec["name"], **overrides)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{field}: {e}") from e
    if dataset is not None:
        if tuple(model.input_shape) != tuple(dataset.input_shape):
            raise ConfigError(
                f"{field}.name: model {model.name!r} expects inputs of shape "
                f"{tuple(model.input_shape)} but dataset {dataset.name!r} gives "
                f"{tuple(dataset.input_shape)}; pick the matching config.data.layout"
            )
        if model.num_classes != dataset.num_classes:
            raise ConfigError(f"{field}: model has {model.num_classes} classes, the dataset "
                              f"{dataset.num_classes}; set overrides.num_classes")
    return model


def _early_stopping(cfg: Any, field: str = "config.train") -> Any:
    from jaxcomp.train import EarlyStopping

    if cfg is None:
        return None
    try:
        return EarlyStopping(**dict(_plain(cfg)))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{field}.early_stopping: {e}") from e


_TRAIN_FIELDS = ("optimizer", "steps", "epochs", "eval_every", "log_every", "early_stopping",
                 "accumulate", "compressor_every", "compressor_update", "checkpoint_every")


def train_supervised(
    model: Any,
    dataset: Any,
    train_cfg: Any,
    *,
    key: jax.Array,
    batch_size: int,
    eval_batch_size: int = 1000,
    compressor: Any = None,
    loss_fn: Any = None,
    params: Any = None,
    extras: Mapping[str, Any] | None = None,
    workdir: str | pathlib.Path | None = None,
    progress: bool = True,
    field: str = "config.train",
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[Any, list[dict], dict[str, float]]:
    """Trains ``model`` on ``dataset`` as ``train_cfg`` says; returns (state, history, test metrics).

    ``train_cfg`` holds ``optimizer`` (see :func:`~jaxcomp.config.build_optimizer`),
    ``steps`` or ``epochs``, and optionally ``eval_every``, ``log_every``,
    ``early_stopping`` (:class:`~jaxcomp.train.EarlyStopping` fields),
    ``accumulate``, ``compressor_every``, ``compressor_update`` (``"step"``
    or ``"host"``, see :func:`~jaxcomp.train.make_train_step`) and
    ``checkpoint_every``. With a
    compressor, ``jaxcomp.keep_compressed`` is appended to the optimizer.
    ``loss_fn`` defaults to :func:`~jaxcomp.train.supervised_loss`;
    ``params`` (e.g. a pretrained or rewound tree) replaces the fresh init;
    ``extras`` are more per-training-example arrays batched alongside ``x``
    and ``y`` (e.g. ``{"teacher_logits": precompute_logits(...)}`` for a
    ``distillation_loss(..., precomputed=True)``). ``field`` is the dotted
    path of ``train_cfg`` named in configuration errors.

    With a ``workdir`` the run always ends with a checkpoint (every
    ``checkpoint_every`` steps too), so ``resume=True`` continues an
    interrupted run bit-identically and returns a finished one without
    training; ``overwrite=True`` replaces a previous run there (see
    :func:`jaxcomp.train.fit`).
    """
    import optax

    from jaxcomp import data as jdata
    from jaxcomp import train
    from jaxcomp.core.optax_bridge import keep_compressed

    cfg = _plain(train_cfg)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{field}: expected a mapping with optimizer and steps or epochs, "
                          f"got {cfg!r}")
    for name in cfg:
        if name not in _TRAIN_FIELDS:
            raise ConfigError(f"{field}.{name}: unknown field{did_you_mean(name, list(_TRAIN_FIELDS))} "
                              f"Known: {', '.join(_TRAIN_FIELDS)}")
    for name in ("steps", "epochs", "eval_every", "log_every", "accumulate", "compressor_every",
                 "checkpoint_every"):
        value = cfg.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ConfigError(f"{field}.{name}: expected a positive int, got {value!r}")
    update_where = cfg.get("compressor_update", "step")
    if update_where not in ("step", "host"):
        raise ConfigError(f"{field}.compressor_update: expected 'step' or 'host', got "
                          f"{update_where!r}")
    tx = build_optimizer(cfg.get("optimizer"), field=f"{field}.optimizer")
    if compressor is not None:
        tx = optax.chain(tx, keep_compressed(compressor))
    k_init, k_data, k_state = jax.random.split(key, 3)
    variables = model.init(k_init)
    model_state = {k: v for k, v in variables.items() if k != "params"}
    state = train.TrainState.create(
        variables["params"] if params is None else params, tx, key=k_state,
        model_state=model_state, compressor=compressor,
    )
    loss = loss_fn or train.supervised_loss(model.apply_fn)
    step = train.make_train_step(
        loss, tx, compressor=compressor, accumulate=int(cfg.get("accumulate", 1)),
        compressor_every=int(cfg.get("compressor_every", 1)),
        compressor_update=update_where if compressor is not None else "step",
    )
    eval_step = train.make_eval_step(train.supervised_loss(model.apply_fn, train=False),
                                     compressor=compressor)
    steps, epochs = cfg.get("steps"), cfg.get("epochs")
    if (steps is None) == (epochs is None):
        raise ConfigError(f"{field}: give exactly one of steps and epochs")
    train_batches = jdata.batches(dataset.x_train, dataset.y_train, batch_size, key=k_data,
                                  epochs=None if steps else epochs, extras=extras)
    checkpoint_every = cfg.get("checkpoint_every")
    if workdir is not None and checkpoint_every is None:  # a final checkpoint, for --resume
        checkpoint_every = steps or max(1, epochs * train_batches.steps_per_epoch)
    eval_batches = list(jdata.batches(dataset.x_test, dataset.y_test, eval_batch_size,
                                      shuffle=False, pad_last=True, epochs=1))
    state, history = train.fit(
        state, step, train_batches, eval_fn=eval_step, eval_batches=eval_batches,
        steps=steps, epochs=epochs, eval_every=cfg.get("eval_every"),
        log_every=cfg.get("log_every"), early_stopping=_early_stopping(cfg.get("early_stopping"), field),
        workdir=workdir, checkpoint_every=checkpoint_every, progress=progress, resume=resume,
        overwrite=overwrite,
    )
    test = train.evaluate(jax.jit(eval_step), state, eval_batches)
    return state, history, test


def measure_model(model: Any, state: Any, compressor: Any = None) -> dict[str, Any]:
    """Size and compute of the trained (compressed) model: params, non-zeros, MACs, bytes."""
    from jaxcomp import metrics

    view = state.params if compressor is None else compressor.apply(
        state.params, state.compressor_state)
    variables = {"params": view, **state.model_state}
    x = model.example_input(1)
    a = metrics.analyze(lambda v, x: model.apply_fn(v, x), variables, x,
                        compression=state.compressor_state, compile=False)
    nnz = metrics.count_nonzero(view)
    n = metrics.count_params(view, dense=True)
    return {
        "params": n,
        "nonzero": nnz,
        "compression_ratio": n / max(nnz, 1),
        "macs": a.macs,
        "effective_macs": a.effective_macs,
        "bops": a.bops,
        "size_bytes_fp32": metrics.model_size_bytes(view).total_bytes,
    }


def summarize_runs(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Mean ± std over runs of the numeric entries ``keys`` (dotted paths allowed)."""
    out = {}
    for key in keys:
        vals = []
        for r in runs:
            node: Any = r
            for part in key.split("."):
                node = node[part]
            vals.append(float(node))
        out[key] = mean_std(vals)
    return out


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def write_results(workdir: str | pathlib.Path, results: Mapping[str, Any]) -> pathlib.Path:
    """Writes ``workdir/results.json`` (strict JSON: non-finite numbers become null).

    Only process 0 writes (the path is returned on every process).
    """
    workdir = pathlib.Path(workdir)
    path = workdir / "results.json"
    if not is_main_process():
        return path
    workdir.mkdir(parents=True, exist_ok=True)

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    path.write_text(json.dumps(clean(results), indent=2, default=_json_default, allow_nan=False))
    return path


@contextlib.contextmanager
def figure(path: str | pathlib.Path, *, xlabel: str = "", ylabel: str = "", title: str = "",
           xscale: str | None = None, size: tuple[float, float] = (6, 4), legend: bool = True):
    """Yields one matplotlib ``Axes`` and saves the figure to ``path`` (PNG) on exit.

    Labels, grid, legend (when something is labelled) and a tight layout are
    applied after the caller has drawn; the figure is closed afterwards.
    Uses the non-interactive Agg backend. Only process 0 saves the file.

    Raises:
      MissingExtraError: matplotlib is not installed (``pip install
        "jaxcomp[research]"``).
    """
    matplotlib = require_extra("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if xscale:
            ax.set_xscale(xscale)
        ax.grid(alpha=0.3)
        if legend and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        if is_main_process():
            fig.savefig(pathlib.Path(path), dpi=120)
    finally:
        plt.close(fig)


def plot_history(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | pathlib.Path,
                 *, metric: str = "accuracy", split: str = "eval", title: str = "") -> pathlib.Path:
    """Plots ``split/metric`` against step for several runs into a PNG."""
    with figure(path, xlabel="step", ylabel=f"{split} {metric}", title=title) as ax:
        for label, hist in histories.items():
            pts = [(r["step"], r["metrics"][metric]) for r in hist
                   if r.get("split") == split and metric in r.get("metrics", {})]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, label=label)
    return pathlib.Path(path)


def _run_generic(config: Any, workdir: pathlib.Path, progress: bool, resume: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    seeds = require(config, "seeds", (list, tuple), check=lambda s: len(s) > 0,
                    hint="give at least one seed")
    dataset = load_data(get_field(config, "data"))
    model = build_model(get_field(config, "model"), dataset)
    batch_size = require(config, "data.batch_size", int, check=lambda b: b > 0)
    comp_cfg = get_field(config, "compression", None)
    runs, histories = [], {}
    for seed in seeds:
        compressor = build_compressor(comp_cfg) if comp_cfg else None
        t0 = time.time()
        state, history, test = train_supervised(
            model, dataset, get_field(config, "train"), key=jax.random.key(int(seed)),
            batch_size=batch_size, compressor=compressor, workdir=workdir / f"seed_{seed}",
            progress=progress, resume=resume, overwrite=overwrite,
        )
        runs.append({"seed": int(seed), "test": test, "seconds": time.time() - t0,
                     **measure_model(model, state, compressor)})
        histories[f"seed {seed}"] = history
    plot_history(histories, workdir / "accuracy.png", title=config.get("name", model.name))
    keys = ["test.accuracy", "test.loss", "params", "nonzero", "compression_ratio", "macs",
            "effective_macs"]
    return {"name": config.get("name", model.name), "dataset": dataset.name, "model": model.name,
            "runs": runs, "summary": summarize_runs(runs, keys)}


_GENERIC_OUTPUTS = ("results.json", "accuracy.png", "config.json")


def _comparable(config: Any) -> Any:
    plain = json.loads(json.dumps(_plain(config), default=_json_default))
    plain.pop("config_path", None)
    return plain


def _prepare_generic_workdir(config: Any, workdir: pathlib.Path, resume: bool,
                             overwrite: bool) -> None:
    """Refuses a workdir that is not empty unless resuming or overwriting; records the config."""
    found = sorted(p.name for p in workdir.iterdir()) if workdir.is_dir() else []
    if found and not (resume or overwrite):
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise ValueError(
            f"workdir {workdir} is not empty ({shown}); pass resume=True (jaxcomp run --resume) "
            "to continue the run there, or overwrite=True (--overwrite) to replace it, or pick "
            "another --workdir"
        )
    saved = workdir / "config.json"
    if resume and saved.is_file():
        before = json.loads(saved.read_text())
        now = _comparable(config)
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise ValueError(
                f"resume: the config differs from the run in {workdir} in "
                f"{', '.join('config.' + k for k in changed)}; resume with the same config "
                "(and overrides), or start a new run with --overwrite or another --workdir"
            )
    if not is_main_process():
        return
    if overwrite:
        for p in workdir.glob("seed_*"):
            if p.is_dir():
                shutil.rmtree(p)
        for name in _GENERIC_OUTPUTS:
            (workdir / name).unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(_comparable(config), indent=2))


def run_experiment(config: Any, workdir: str | pathlib.Path, *, progress: bool = True,
                   resume: bool = False, overwrite: bool = False) -> dict:
    """Runs a study config and writes ``workdir/results.json``; returns the results.

    A generic config refuses a non-empty ``workdir`` unless ``resume``
    (continue: finished seeds are read back from their final checkpoints,
    an interrupted one continues from its latest checkpoint bit-identically;
    the config must be the one recorded in ``workdir/config.json``) or
    ``overwrite`` (delete the previous run's outputs first). A config with
    ``config.entry`` is refused with the ``python research/<study>/main.py``
    command that runs it. Only process 0 writes files other than checkpoints.

    Raises:
      ConfigError: naming the first missing, unknown or invalid config field, or
        ``config.entry`` (with the command that runs the study).
      ValueError: a non-empty workdir without ``resume``/``overwrite``, a
        resume with a different config, or both flags.
    """
    if resume and overwrite:
        raise ValueError("run_experiment: pass resume=True or overwrite=True, not both")
    check_config(config)
    workdir = pathlib.Path(workdir)
    if get_field(config, "entry", None):
        from jaxcomp.studies import entry_command

        command = entry_command(config, workdir=workdir)
        if resume:
            raise ValueError(f"--resume: a study with config.entry cannot resume; run {command}")
        raise ConfigError(
            "config.entry: this config belongs to a reproduced study, which runs from its own "
            f"script: {command}"
        )
    _prepare_generic_workdir(config, workdir, resume, overwrite)
    results = _run_generic(config, workdir, progress, resume, overwrite)
    results = {"config": _plain(config), **results}
    write_results(workdir, results)
    return results


def format_value(value: Any) -> str:
    """One summary entry as text: ``mean ± std`` for a :func:`mean_std` dict, numbers compactly.

    Example:
      >>> format_value({"mean": 0.91234, "std": 0.0123, "n": 3})
      '0.9123 ± 0.012'
      >>> format_value(266610), format_value(0.5), format_value([0.04, -0.07])
      ('266,610', '0.5', '0.04, -0.07')
    """
    if isinstance(value, Mapping) and "mean" in value:
        return f"{format_value(value['mean'])} ± {float(value.get('std') or 0.0):.2g}"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 1e4 and v.is_integer() else f"{v:.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(format_value(v) for v in value[:6])
        return shown + (f", ... ({len(value)} values)" if len(value) > 6 else "")
    return str(value)


def summary_rows(summary: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Flattens a results ``summary`` into ``(dotted metric, text)`` rows.

    Nested groups (``{"kd": {"accuracy": {"mean": ...}}}``) become dotted
    names (``kd.accuracy``); each value is formatted by :func:`format_value`.

    Example:
      >>> summary_rows({"test.accuracy": {"mean": 0.9, "std": 0.01, "n": 2},
      ...               "narrow": {"kd": {"errors": {"mean": 12.0, "std": 1.5}}, "best": 4.0}})
      [('test.accuracy', '0.9 ± 0.01'), ('narrow.kd.errors', '12 ± 1.5'), ('narrow.best', '4')]
    """
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping) and "mean" not in node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append((prefix, format_value(node)))

    walk("", dict(summary or {}))
    return rows


def compare(workdirs: Sequence[str | pathlib.Path]) -> list[dict[str, Any]]:
    """Reads ``results.json`` of several runs; returns one row per summary metric.

    Each row is ``{"metric": name, "<dir>": text, ...}`` with the texts of
    :func:`summary_rows` (``mean ± std`` for per-seed statistics; nested
    groups flattened to dotted metric names).
    """
    table: dict[str, dict[str, str]] = {}
    names = []
    for d in workdirs:
        path = pathlib.Path(d) / "results.json"
        if not path.is_file():
            raise ValueError(f"{d}: no results.json (run `jaxcomp run CONFIG --workdir {d}` first)")
        res = json.loads(path.read_text())
        name = str(d)
        names.append(name)
        for metric, cell in summary_rows(res.get("summary")):
            table.setdefault(metric, {})[name] = cell
    return [{"metric": m, **{n: row.get(n, "") for n in names}} for m, row in table.items()]
