"""MNIST-1D baselines: logistic, MLP, CNN and GRU with the reference recipe.

Every model is trained for every seed with the same optimizer, batch size
and steps (``config.train``) on the regenerated MNIST-1D split, evaluated on
the 1,000 test signals, and compared with the published means
(Greydanus 2020, Table 1 of the MNIST-1D repository's README).

Run: ``python research/mnist1d_baselines/main.py --config configs/mnist1d_baselines.py``
(``--workdir research/mnist1d_baselines`` updates the committed results;
``--config configs/mnist1d_baselines.py:smoke`` is the one-minute check).
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import jax

from jaxcomp import studies
from jaxcomp.experiment import build_model, load_data, mean_std, plot_history, train_supervised
from jaxcomp.studies import fmt_ms, markdown_table, plain, signed, words

STUDY = "mnist1d_baselines"


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Trains every model of ``config.models`` for every seed; returns the results dict."""
    data_cfg = plain(config.data)
    batch_size = int(data_cfg["batch_size"])
    published = plain(config.published)
    tol = float(config.tolerance)
    model_cfgs = plain(config.models)
    seeds = [int(s) for s in config.seeds]
    counter = studies.RunCounter(len(model_cfgs) * len(seeds), study=STUDY)
    datasets: dict[str, Any] = {}
    runs, curves, table = [], {}, {}
    t_start = time.time()
    for name, mcfg in model_cfgs.items():
        mcfg = dict(mcfg)
        layout = mcfg.pop("layout", "flat")
        if layout not in datasets:
            datasets[layout] = load_data({**data_cfg, "layout": layout})
        dataset = datasets[layout]
        model = build_model(mcfg, dataset, field=f"config.models.{name}")
        accs = []
        for seed in seeds:
            counter.start(name, seed=seed)
            t0 = time.time()
            _, hist, test = train_supervised(model, dataset, config.train,
                                             key=jax.random.key(seed),
                                             batch_size=batch_size, progress=progress)
            acc = float(test["accuracy"])
            accs.append(acc)
            runs.append({"model": name, "seed": seed, "accuracy": acc,
                         "loss": float(test["loss"]), "seconds": time.time() - t0})
            if seed == seeds[0]:
                curves[name] = hist
        ms = mean_std(accs)
        pub = published.get(name)
        table[name] = {
            "registered_model": model.name, "params": model.expected_params,
            "macs": model.expected_macs, "accuracy": ms, "published": pub,
            "delta_vs_published": None if pub is None else ms["mean"] - pub,
            "within_tolerance": None if pub is None else abs(ms["mean"] - pub) <= tol,
        }
    plot_history(curves, workdir / "accuracy.png", title=f"MNIST-1D baselines (seed {seeds[0]})")
    return {"name": STUDY, "dataset": "mnist1d", "tolerance": tol, "runs": runs,
            "summary": table, "seconds": time.time() - t_start}


def render(res: dict) -> str:
    """``RESULTS.md`` from the results dict."""
    cfg = res["config"]
    train, opt = cfg["train"], cfg["train"]["optimizer"]
    tol = res["tolerance"]
    wd = opt.get("weight_decay")
    n_seeds = len(cfg["seeds"])
    rows = []
    for name, row in res["summary"].items():
        pub = row["published"]
        rows.append([
            name, f"{row['params']:,}", f"{row['macs']:,}",
            fmt_ms(row["accuracy"], scale=100, unit="%"),
            "n/a" if pub is None else f"{pub * 100:.0f}%",
            "n/a" if pub is None else signed(row["delta_vs_published"], scale=100, unit=" pp"),
            "n/a" if pub is None else ("yes" if row["within_tolerance"] else "no"),
        ])
    compared = {n: r for n, r in res["summary"].items() if r["published"] is not None}
    inside = [n for n, r in compared.items() if r["within_tolerance"]]
    outside = [f"{n} ({signed(r['delta_vs_published'], scale=100, unit=' pp')})"
               for n, r in compared.items() if not r["within_tolerance"]]
    below = [n for n, r in compared.items() if r["delta_vs_published"] < 0]
    above = [n for n, r in compared.items() if r["delta_vs_published"] > 0]
    if len(inside) == len(compared):
        verdict = f"All {len(compared)} models are within ±{tol * 100:.0f} pp of the published means"
    else:
        verdict = (f"{len(inside)} of {len(compared)} models are within ±{tol * 100:.0f} pp of "
                   f"the published means; outside: {words(outside)}")
    verdict += (f"; below the published mean: {words(below)}; above: {words(above)}.")
    lines = [
        "# MNIST-1D baselines",
        "",
        (f"{opt['name'].capitalize()} lr {opt['learning_rate']}, batch "
         f"{cfg['data']['batch_size']}, {studies.train_budget(train)}, "
         f"{'no weight decay' if not wd else f'weight decay {wd}'}, "
         f"{studies.plural(n_seeds, 'seed')}; test accuracy on the 1,000 regenerated test "
         "signals (mean ± std over seeds). 1 MAC = 2 FLOPs."),
        "",
        *markdown_table(["model", "params", "MACs", "accuracy (mean ± std)", "published",
                         "delta", f"within ±{tol * 100:.0f} pp"], rows),
        "",
        verdict,
        "",
        ("Published means (Greydanus 2020): "
         + ", ".join(f"{n} {r['published'] * 100:.0f}%" for n, r in compared.items())
         + "; the paper notes that single runs are about 2 pp lower."),
        "",
        "![learning curves](accuracy.png)",
        "",
        *studies.run_section(res),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
