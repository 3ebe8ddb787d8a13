"""Large-sparse vs small-dense at equal non-zeros (Zhu & Gupta 2017).

For each target sparsity ``s``: the large model is trained with
``magnitude_pruning`` under the cubic ``polynomial_schedule(0, s, ...)``
(built through the config registry, as a config would), and a dense model
with hidden widths scaled by the factor ``f`` that makes its kernel count
closest to the large model's surviving kernel weights is trained with the
same optimizer and steps. Both are evaluated on the 1,000 test images.

Run: ``python research/gradual_pruning/main.py --config configs/gradual_pruning.py``
(``--workdir research/gradual_pruning`` updates the committed results;
``--config configs/gradual_pruning.py:smoke`` is the one-minute check).
"""

from __future__ import annotations

import itertools
import pathlib
import sys
import time
from typing import Any

import jax

from jaxcomp import studies
from jaxcomp.config import build_compressor
from jaxcomp.experiment import (
    build_model,
    figure,
    load_data,
    mean_std,
    measure_model,
    train_supervised,
)
from jaxcomp.studies import by_sign, fmt_ms, markdown_table, plain, signed, words

STUDY = "gradual_pruning"


def kernel_count(widths: list[int]) -> int:
    """Weights in the kernels of an MLP with layer widths ``widths``."""
    return sum(a * b for a, b in itertools.pairwise(widths))


def small_dense_hidden(widths: list[int], target: float) -> list[int]:
    """Hidden widths scaled by one factor so the kernel count is closest to ``target``."""
    best = None
    for h0 in range(1, widths[1] + 1):
        f = h0 / widths[1]
        hidden = [max(1, round(w * f)) for w in widths[1:-1]]
        n = kernel_count([widths[0], *hidden, widths[-1]])
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (hidden, n)
    return best[0]


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Per seed: the dense model, then per sparsity the large-sparse and small-dense ones."""
    dataset = load_data(config.data)
    batch_size = int(config.data["batch_size"])
    mcfg = plain(config.model)
    large = build_model(mcfg, dataset)
    v = large.init(jax.random.key(0))["params"]
    widths = [v["fc1"]["kernel"].shape[0]] + [v[k]["kernel"].shape[1] for k in sorted(v)]
    total = kernel_count(widths)
    sched = plain(config.schedule)
    seeds = [int(s) for s in config.seeds]
    counter = studies.RunCounter(len(seeds) * (1 + 2 * len(config.sparsities)), study=STUDY)
    t_start = time.time()
    runs = []
    for seed in seeds:
        key = jax.random.key(seed)
        counter.start("dense", seed=seed)
        _, _, test = train_supervised(large, dataset, config.train, key=key,
                                      batch_size=batch_size, progress=progress)
        runs.append({"seed": seed, "kind": "dense", "sparsity": 0.0, "hidden": widths[1:-1],
                     "kernel_nonzeros": total, "accuracy": float(test["accuracy"])})
        for s in config.sparsities:
            counter.start("large-sparse", seed=seed, sparsity=float(s))
            comp = build_compressor({
                "method": "magnitude_pruning", "where": config.where,
                "sparsity": {"name": "polynomial", "initial_sparsity": 0.0,
                             "final_sparsity": float(s), **sched}})
            state, _, test = train_supervised(large, dataset, config.train, key=key,
                                              batch_size=batch_size, compressor=comp,
                                              progress=progress)
            m = measure_model(large, state, comp)
            nnz_kernels = total - sum(
                int((comp.apply(state.params, state.compressor_state)[k]["kernel"] == 0).sum())
                for k in v)
            runs.append({"seed": seed, "kind": "large_sparse", "sparsity": float(s),
                         "hidden": widths[1:-1], "kernel_nonzeros": nnz_kernels,
                         "nonzero_params": m["nonzero"], "effective_macs": m["effective_macs"],
                         "accuracy": float(test["accuracy"])})
            hidden = small_dense_hidden(widths, nnz_kernels)
            counter.start("small-dense", seed=seed, sparsity=float(s), hidden=hidden)
            small = build_model({**mcfg, "overrides": {**mcfg.get("overrides", {}),
                                                       "hidden": hidden}}, dataset)
            _, _, test = train_supervised(small, dataset, config.train, key=key,
                                          batch_size=batch_size, progress=progress)
            runs.append({"seed": seed, "kind": "small_dense", "sparsity": float(s),
                         "hidden": hidden,
                         "kernel_nonzeros": kernel_count([widths[0], *hidden, widths[-1]]),
                         "nonzero_params": small.expected_params, "macs": small.expected_macs,
                         "accuracy": float(test["accuracy"])})
    table = []
    dense = {r["seed"]: r["accuracy"] for r in runs if r["kind"] == "dense"}
    for s in config.sparsities:
        ls = [r for r in runs if r["kind"] == "large_sparse" and r["sparsity"] == float(s)]
        sd = [r for r in runs if r["kind"] == "small_dense" and r["sparsity"] == float(s)]
        sd_by = {r["seed"]: r["accuracy"] for r in sd}
        table.append({
            "sparsity": float(s), "kernel_nonzeros_large": ls[0]["kernel_nonzeros"],
            "kernel_nonzeros_small": sd[0]["kernel_nonzeros"], "small_hidden": sd[0]["hidden"],
            "large_sparse": mean_std([r["accuracy"] for r in ls]),
            "small_dense": mean_std([r["accuracy"] for r in sd]),
            "large_minus_small": mean_std([r["accuracy"] - sd_by[r["seed"]] for r in ls]),
            "large_minus_dense": mean_std([r["accuracy"] - dense[r["seed"]] for r in ls]),
        })
    results = {"name": STUDY, "dataset": dataset.name,
               "model": large.name, "widths": widths, "kernel_weights": total,
               "dense": mean_std(list(dense.values())), "schedule": sched, "runs": runs,
               "table": table, "seconds": time.time() - t_start}
    plot(results, workdir / "large_sparse_vs_small_dense.png")
    return results


def plot(res: dict, path: pathlib.Path) -> None:
    t = res["table"]
    with figure(path, xlabel="non-zero kernel weights", ylabel="test accuracy", xscale="log",
                title=f"Zhu & Gupta: large-sparse vs small-dense ({res['dataset']})") as ax:
        for key, nkey, label in (("large_sparse", "kernel_nonzeros_large", "large-sparse (cubic)"),
                                 ("small_dense", "kernel_nonzeros_small", "small-dense")):
            ax.errorbar([r[nkey] for r in t], [r[key]["mean"] for r in t],
                        yerr=[r[key]["std"] for r in t], marker="o", ms=3, capsize=2, label=label)
        ax.axhline(res["dense"]["mean"], color="gray", ls="--", lw=1, label=f"dense {res['model']}")


def render(res: dict) -> str:
    """``RESULTS.md`` from the results dict; every sentence below the table is computed."""
    sc = res["schedule"]
    cfg = res["config"]
    opt = cfg["train"]["optimizer"]
    n_seeds = len(cfg["seeds"])
    rows = []
    for t in res["table"]:
        d, e = t["large_minus_small"], t["large_minus_dense"]
        rows.append([
            f"{t['sparsity'] * 100:.0f}%",
            f"{t['kernel_nonzeros_large']:,} / {t['kernel_nonzeros_small']:,}",
            str(t["small_hidden"]),
            fmt_ms(t["large_sparse"], scale=100, digits=2, unit="%"),
            fmt_ms(t["small_dense"], scale=100, digits=2, unit="%"),
            fmt_ms(d, scale=100, digits=2, sign=True),
            signed(e["mean"], scale=100, digits=2),
        ])
    lines = [
        "# Gradual pruning: large-sparse vs small-dense (Zhu & Gupta 2017)",
        "",
        (f"`{res['model']}` (widths {'-'.join(str(w) for w in res['widths'])}) on the "
         f"{res['dataset']} split, {opt['name'].capitalize()} {opt['learning_rate']:g}, batch "
         f"{cfg['data']['batch_size']}, {studies.train_budget(cfg['train'])} for every model; "
         f"cubic schedule from step {sc['begin_step']} to {sc['end_step']}, masks every "
         f"{sc['update_every']} steps; {studies.plural(n_seeds, 'seed')}. Dense: "
         f"{fmt_ms(res['dense'], scale=100, digits=2, unit='%')}."),
        "",
        *markdown_table(["sparsity", "kernel nnz (large / small)", "small hidden",
                         "large-sparse", "small-dense", "large − small (pp)",
                         "large − dense (pp)"], rows),
        "",
        *findings(res),
        "",
        ("Published: at an equal number of non-zero parameters the large-sparse model beats "
         "the small-dense one, and reaches the dense accuracy with up to 10× fewer non-zeros."),
        "",
        "![large-sparse vs small-dense](large_sparse_vs_small_dense.png)",
        "",
        *studies.run_section(res),
        "",
    ]
    return "\n".join(lines)


def findings(res: dict, *, near: float = 0.005) -> list[str]:
    """Wins of large-sparse over small-dense, and where it stays within ``near`` of dense."""
    table = res["table"]

    def pct(t):
        return f"{t['sparsity'] * 100:.0f}%"

    wins = [pct(t) for t in table if t["large_minus_small"]["mean"] > 0]
    losses = [pct(t) for t in table if t["large_minus_small"]["mean"] < 0]
    kept = [t for t in table if t["large_minus_dense"]["mean"] >= -near]
    lost = [t for t in table if t["large_minus_dense"]["mean"] < -near]
    out = (f"The large-sparse model is more accurate than the small-dense one at {len(wins)} of "
           f"{len(table)} sparsities ({words(wins)}) and less accurate at {words(losses)}.")
    if kept:
        best = max(kept, key=lambda t: t["sparsity"])
        out += (f" It is within {near * 100:.1f} pp of the dense model (or above it) at "
                f"{words([pct(t) for t in kept])}; the sparsest of these is {pct(best)} "
                f"({1 / (1 - best['sparsity']):.0f}× fewer non-zero kernel weights)")
        out += (f", and it falls below at {words([pct(t) for t in lost])}." if lost else ".")
    else:
        out += f" It is more than {near * 100:.1f} pp below the dense model at every sparsity."
    top = max(table, key=lambda t: t["large_minus_small"]["mean"])
    out += (f" The largest gap to the small-dense model is "
            f"{signed(top['large_minus_small']['mean'], scale=100, digits=2, unit=' pp')} at "
            f"{pct(top)} ({by_sign(top['large_minus_small']['mean'], 'large-sparse ahead', 'small-dense ahead', 'a tie')}).")
    return [out]


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
