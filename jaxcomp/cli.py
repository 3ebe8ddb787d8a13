"""The ``jaxcomp`` command line.

Commands:

* ``jaxcomp summary MODEL [--batch N] [--json] [--no-xla]``: parameters,
  MACs (1 MAC = 2 FLOPs), XLA FLOPs, compiled memory and a per-layer table of
  a registered reference model.
* ``jaxcomp models``: the registered model names with their sizes.
* ``jaxcomp run CONFIG --workdir DIR [--resume | --overwrite]
  [--config.field=value ...]``: runs a study config (see
  :mod:`jaxcomp.experiment`), writing ``results.json``, ``metrics.jsonl``,
  plots and checkpoints under ``DIR``. A ``DIR`` holding a previous run is
  refused unless ``--resume`` (continue it) or ``--overwrite`` (replace it).
  A reproduced study's config (one with ``entry``) is refused with the
  ``python research/<study>/main.py ...`` command that runs it.
  Needs the ``research`` extra (``pip install "jaxcomp[research]"``).
* ``jaxcomp compare DIR [DIR ...]``: a side-by-side table of results.

Tables fit an 80-column terminal.

Example:
  >>> main(["summary", "lenet300", "--json", "--no-xla"])  # doctest: +ELLIPSIS
  {"model": "lenet300", ..., "params": 266610, ..., "macs": 266200, ...}
  0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "compare_table", "layer_table", "main", "summary"]

# A freshly initialised model is dense, so unknown densities are not news.
_ABSTRACT_WARNING = "parameter arguments are abstract"


def summary(name: str, *, batch: int = 1, xla: bool = True) -> dict[str, Any]:
    """Computes the summary of a registered model as a JSON-ready dict.

    The model is analysed with abstract (shape-only) parameters, so nothing is
    initialised or run: a freshly initialised model is dense, and every count
    is exact.

    Args:
      name: a name from :func:`jaxcomp.models.list_models`.
      batch: batch size of the analysed forward pass (MACs are per batch;
        ``macs_per_example`` divides by it).
      xla: also compile with XLA for its FLOP, byte and memory figures.

    Returns:
      A dict with keys ``model``, ``batch``, ``input_shape``, ``params``,
      ``params_by_kind``, ``macs``, ``macs_per_example``, ``flops``,
      ``xla_flops``, ``xla_bytes_accessed``, ``memory``, ``layers`` and
      ``convention``.

    Raises:
      ValueError: an unknown model name (listing the available ones) or a
        batch size below 1.
    """
    import jax

    from jaxcomp import metrics, models

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {batch!r}")
    spec = models.get_model(name)
    variables = spec.eval_init(batch)
    x = jax.ShapeDtypeStruct((batch, *spec.input_shape), spec.input_dtype)
    analysis = metrics.analyze(lambda v, x: spec.apply_fn(v, x), variables, x, compile=xla)
    analysis = dataclasses.replace(
        analysis, warnings=tuple(w for w in analysis.warnings if _ABSTRACT_WARNING not in w)
    )
    kinds = metrics.summarize_params(variables["params"])
    out = analysis.to_dict()
    return {
        "model": spec.name,
        "description": spec.description,
        "reference": spec.reference,
        "batch": batch,
        "input_shape": list(spec.input_shape),
        "params": metrics.count_params(variables["params"]),
        "params_by_kind": {k: t.stored for k, t in kinds.by_kind.items() if t.stored},
        "macs": analysis.macs,
        "macs_per_example": analysis.macs // batch,
        "flops": analysis.flops,
        "xla_flops": analysis.xla_flops,
        "xla_bytes_accessed": analysis.xla_bytes_accessed,
        "memory": out["memory"],
        "compile_seconds": analysis.compile_seconds,
        "layers": out["layers"],
        "warnings": list(analysis.warnings),
        "convention": out["convention"],
        "_analysis": analysis,
    }


def _shape(shape: Any) -> str:
    return "×".join(str(d) for d in shape) if shape else "-"


def layer_table(result: dict[str, Any]) -> Any:
    """The per-layer table of :func:`summary` as a compact ``rich`` table (80 columns).

    One row per layer: name, op, weight shape, output shape per example,
    MACs of the batch and share of the total. Long layer names wrap, they
    are never cut.
    """
    from rich import box
    from rich.table import Table

    from jaxcomp.metrics import format_count

    analysis = result["_analysis"]
    total = max(int(analysis.macs), 1)
    table = Table(title=f"layers (MACs for batch {result['batch']}; 1 MAC = 2 FLOPs)",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("layer", overflow="fold", ratio=1)
    for name in ("op", "weight", "output/ex."):
        table.add_column(name, no_wrap=True)
    for name in ("MACs", "share"):
        table.add_column(name, justify="right", no_wrap=True)
    for layer in analysis.layers:
        table.add_row(layer.name, layer.op, _shape(layer.weight_shape),
                      _shape(tuple(layer.output_shape)[1:]), format_count(layer.macs),
                      f"{100 * layer.macs / total:.1f}%")
    return table


def _print_summary(result: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console

    from jaxcomp.metrics import format_bytes, format_count

    console = console if console is not None else Console()
    analysis = result["_analysis"]
    console.print(f"[bold]{result['model']}[/bold]: {result['description']}")
    if result["reference"]:
        console.print(f"reference: {result['reference']}")
    by_kind = ", ".join(f"{k} {v:,}" for k, v in result["params_by_kind"].items())
    console.print(f"params: {result['params']:,} ({by_kind})")
    console.print(
        f"MACs: {result['macs']:,} (batch {result['batch']}, "
        f"{format_count(result['macs_per_example'])} per example) = "
        f"{format_count(result['flops'])} FLOPs"
    )
    if result["xla_flops"] is not None:
        console.print(f"XLA FLOPs: {format_count(result['xla_flops'])}")
    mem = result["memory"]
    if mem:
        console.print(
            f"memory: arguments {format_bytes(mem['argument_bytes'])}, outputs "
            f"{format_bytes(mem['output_bytes'])}, temporaries {format_bytes(mem['temp_bytes'])}, "
            f"peak ≈ {format_bytes(mem['peak_bytes'])}"
        )
    console.print(
        f"total: {format_count(analysis.macs)} MACs; effective {format_count(analysis.effective_macs)} "
        f"MACs; {format_count(analysis.bops)} BOPs"
    )
    for warning in result["warnings"]:
        console.print(f"warning: {warning}", highlight=False)
    console.print(layer_table(result))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxcomp`` command."""
    parser = argparse.ArgumentParser(
        prog="jaxcomp", description="Neural network compression for JAX and Flax."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="params, MACs, FLOPs, memory and layers of a model")
    s.add_argument("model", help="registered model name (see `jaxcomp models`)")
    s.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--no-xla", action="store_true", help="skip XLA compilation figures")
    sub.add_parser("models", help="list the registered models")
    r = sub.add_parser("run", help="run a study config (configs/<study>.py)")
    r.add_argument("config", help="path of a config file defining get_config()")
    r.add_argument("--workdir", required=True, help="output directory")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --workdir from its latest checkpoints")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in --workdir (its outputs are deleted first)")
    c = sub.add_parser("compare", help="side-by-side table of results.json files")
    c.add_argument("workdirs", nargs="+", help="directories written by `jaxcomp run`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "run":
            return _run(args, extra)
        if args.command == "compare":
            return _compare(args.workdirs)
        if args.command == "models":
            from jaxcomp import models

            for name in models.list_models():
                spec = models.get_model(name)
                print(f"{name:18s} {spec.expected_params or 0:>12,} params "
                      f"{spec.expected_macs or 0:>16,} MACs  {spec.description}")
            return 0
        result = summary(args.model, batch=args.batch, xla=not args.no_xla)
    except ValueError as e:
        print(f"jaxcomp: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        from jaxcomp.config.extras import INSTALL_HINT, RESEARCH_PACKAGES, missing_extra

        package = missing_extra(e)
        if package is None:
            raise
        print(f"jaxcomp: error: `jaxcomp {args.command}` needs the optional package "
              f"'{RESEARCH_PACKAGES[package]}' (import {package}), part of the research extra: "
              f"{INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.json:
        result.pop("_analysis")
        print(json.dumps(result))
    else:
        _print_summary(result)
    return 0


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcomp.config.extras import require_extra

    # Fail before training, not at the plot after it.
    for module in ("ml_collections", "matplotlib"):
        require_extra(module, "jaxcomp run")
    from jaxcomp.config import load_config
    from jaxcomp.experiment import run_experiment, summary_rows

    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        raise ValueError(f"unrecognized arguments {bad}; overrides look like --config.field=value")
    config = load_config(args.config, overrides)
    if config.get("entry"):
        from jaxcomp.config import ConfigError
        from jaxcomp.studies import entry_command

        raise ConfigError(
            f"{args.config} is a reproduced study (config.entry); run it with its own script: "
            + entry_command(config, config_file=args.config, workdir=args.workdir,
                            overrides=overrides)
        )
    results = run_experiment(config, args.workdir, progress=not args.no_progress,
                             resume=args.resume, overwrite=args.overwrite)
    print(f"wrote {args.workdir}/results.json")
    for metric, text in summary_rows(results.get("summary")):
        print(f"  {metric}: {text}")
    return 0


def _labels(workdirs: Sequence[str]) -> list[str]:
    """Short column labels: the directory names, or more of the path where they clash."""
    import pathlib

    parts = [pathlib.Path(d).resolve().parts for d in workdirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in workdirs]  # the same directory given twice


def compare_table(workdirs: Sequence[str]) -> Any:
    """The ``jaxcomp compare`` table: one row per summary metric, one column per run."""
    from rich import box
    from rich.table import Table

    from jaxcomp.experiment import compare

    rows = compare(workdirs)
    labels = _labels(workdirs)
    table = Table(title="jaxcomp compare (mean ± std over seeds)", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False)
    table.add_column("metric", overflow="fold")
    for label in labels:
        table.add_column(label, justify="right", overflow="fold")
    for row in rows:
        table.add_row(row["metric"], *[row[str(d)] for d in workdirs])
    return table


def _compare(workdirs: list[str], console: Any = None) -> int:
    from rich.console import Console

    (console if console is not None else Console()).print(compare_table(workdirs))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
