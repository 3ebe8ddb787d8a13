"""Lottery tickets on MNIST-1D: ticket vs dense vs random mask, per IMP round.

Per seed: θ0 from the model init; ``jaxcomp.prune.lottery.lottery_ticket``
drives the rounds, each training with the round's mask held fixed by
``fixed_mask`` (masked view + ``keep_compressed``) from the rewound
survivors, with the same data order every round. With ``rewind_step = k >
0`` the survivors are rewound to θk of the dense run (Frankle et al. 2020)
instead of θ0. After each pruning round a random mask with the same
per-layer counts (``random_ticket``) is trained from the same start.

Run: ``jaxcomp run configs/lottery_ticket_mnist1d.py --workdir research/lottery_ticket_mnist1d``
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax

from jaxcomp.experiment import _plain, build_model, figure, load_data, mean_std, train_supervised
from jaxcomp.prune.lottery import fixed_mask, lottery_ticket, random_ticket, rewind

PUBLISHED = {"dense": [0.64, 0.66], "ticket": [0.72, 0.75], "random": [0.58, 0.62],
             "sparsity": [0.86, 0.92], "ticket_minus_dense_pp": [6, 10],
             "ticket_minus_random_pp": [10, 14]}


def _kernel_sparsity(masks: Any) -> float:
    leaves = [m for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]
              if str(p[-1]).find("kernel") >= 0]
    n = sum(int(m.size) for m in leaves)
    return 1.0 - sum(int(m.sum()) for m in leaves) / n


def run(config: Any, workdir: str | pathlib.Path, progress: bool = True) -> dict:
    workdir = pathlib.Path(workdir)
    dataset = load_data(config.data)
    model = build_model(config.model, dataset)
    batch_size = int(config.data["batch_size"])
    pc = dict(_plain(config.prune))
    rewind_step = int(pc.get("rewind_step", 0))
    t_start = time.time()
    rows = []
    for seed in config.seeds:
        seed = int(seed)
        k_init, k_data, k_rand = jax.random.split(jax.random.key(seed), 3)
        theta0 = model.init(k_init)["params"]

        def train(params, masks, seed=seed, k_data=k_data):
            state, _, test = train_supervised(
                model, dataset, config.train, key=k_data, batch_size=batch_size,
                compressor=fixed_mask(masks), params=params, progress=progress)
            return state.params, float(test["accuracy"])

        results: list[dict] = []

        def train_fn(params, masks, results=results, train=train, k_data=k_data):
            trained, acc = train(params, masks)
            results.append({"ticket": acc, "sparsity": _kernel_sparsity(masks)})
            if not results[1:] and rewind_step > 0:  # the dense round: capture θk
                cfg = {**dict(_plain(config.train)), "steps": rewind_step}
                cfg.pop("eval_every", None)
                st, _, _ = train_supervised(model, dataset, cfg, key=k_data,
                                            batch_size=batch_size, params=params,
                                            progress=False)
                return trained, st.params
            return trained

        res = lottery_ticket(train_fn, theta0, rounds=int(pc["rounds"]), rate=float(pc["rate"]),
                             rates=pc.get("rates") or None, where=pc.get("where"))
        for r, masks in enumerate(res.masks):
            if r == 0:
                results[r]["random"] = results[r]["ticket"]
                continue
            rmasks = random_ticket(masks, key=jax.random.fold_in(k_rand, r))
            _, acc = train(rewind(res.rewind_params, rmasks), rmasks)
            results[r]["random"] = acc
        for r, row in enumerate(results):
            rows.append({"seed": seed, "round": r, **row})

    rounds = sorted({r["round"] for r in rows})
    table = []
    for r in rounds:
        sel = [x for x in rows if x["round"] == r]
        dense = {x["seed"]: x["ticket"] for x in rows if x["round"] == 0}
        rand = {x["seed"]: x["random"] for x in sel}
        table.append({
            "round": r, "sparsity": sel[0]["sparsity"],
            "ticket": mean_std([x["ticket"] for x in sel]),
            "random": mean_std([x["random"] for x in sel]),
            "ticket_minus_dense": mean_std([x["ticket"] - dense[x["seed"]] for x in sel]),
            "ticket_minus_random": mean_std([x["ticket"] - rand[x["seed"]] for x in sel]),
        })
    at90 = min(table[1:], key=lambda t: abs(t["sparsity"] - 0.9))
    results = {"name": config.get("name", "lottery_ticket_mnist1d"), "dataset": dataset.name,
               "model": model.name, "rewind_step": rewind_step, "runs": rows, "table": table,
               "at_90": at90, "published": PUBLISHED, "seconds": time.time() - t_start}
    _plot(table, workdir / "lottery.png")
    (workdir / "RESULTS.md").write_text(_report(results, len(config.seeds)))
    return results


def _plot(table, path) -> None:
    xs = [100 * (1 - t["sparsity"]) for t in table]
    with figure(path, xlabel="weights remaining (%)", ylabel="test accuracy", xscale="log",
                title="Lottery tickets, MNIST-1D 40-500-500-10") as ax:
        for key, label in (("ticket", "winning ticket (IMP, rewind)"), ("random", "random mask")):
            ax.errorbar(xs, [t[key]["mean"] for t in table], yerr=[t[key]["std"] for t in table],
                        marker="o", ms=3, capsize=2, label=label)
        ax.axhline(table[0]["ticket"]["mean"], color="gray", ls="--", lw=1, label="dense")
        ax.invert_xaxis()


def _pct(ms):
    return f"{ms['mean'] * 100:.1f} ± {ms['std'] * 100:.1f}"


def _report(res: dict, n_seeds: int) -> str:
    a = res["at_90"]
    lines = [
        "# Lottery tickets on MNIST-1D",
        "",
        (f"40-500-500-10 residual MLP, Adam 2e-2, batch 100; IMP 20%/round (output layer 10%), "
        f"survivors rewound to {'θ0' if res['rewind_step'] == 0 else 'θ' + str(res['rewind_step'])}"
        f"; {n_seeds} seeds; test accuracy on 1,000 signals (%). Sparsity is over all kernels."),
        "",
        "| round | sparsity | ticket | random mask | ticket − dense (pp) | ticket − random (pp) |",
        "|---|---|---|---|---|---|",
    ]
    for t in res["table"]:
        d, r = t["ticket_minus_dense"], t["ticket_minus_random"]
        lines.append(f"| {t['round']} | {t['sparsity'] * 100:.1f}% | {_pct(t['ticket'])} | "
                     f"{_pct(t['random'])} | {d['mean'] * 100:+.1f} ± {d['std'] * 100:.1f} | "
                     f"{r['mean'] * 100:+.1f} ± {r['std'] * 100:.1f} |")
    lines += [
        "",
        (f"At {a['sparsity'] * 100:.1f}% sparsity: ticket − dense "
        f"{a['ticket_minus_dense']['mean'] * 100:+.1f} pp, ticket − random "
        f"{a['ticket_minus_random']['mean'] * 100:+.1f} pp. Published (MNIST-1D paper): dense "
        "≈ 64–66%, ticket ≈ 72–75% at 86–92% sparsity, random ≈ 58–62%, i.e. about +6..10 pp "
        "and +10..14 pp."),
        "",
        ("Reading: the random-mask control keeps the ticket's per-layer counts and trains from "
         "the same θ0 values at random positions. Where it matches the ticket, the gain over the "
         "dense network on this small split comes from sparsity itself (a regulariser for this "
         "over-parameterised MLP) more than from the ticket's particular mask."),
        "",
        "![ticket vs random](lottery.png)",
        "",
    ]
    return "\n".join(lines)
