"""Network slimming: L1 on BatchNorm scales → global channel selection → surgery → fine-tune.

Per seed: the dense baseline and the L1-regularised model are trained with
the same optimizer and epochs (``train_supervised``; the penalty through
``jaxcomp.prune.slimming_regularizer``). For each ratio, ``slimming_masks``
picks the channels with the smallest ``|γ|`` over all BatchNorm layers
(at least ``min_channels`` per layer), ``scale_to_kernel_masks`` maps them
to the producing convolutions, ``remove_channels`` cuts the variables
(BatchNorm statistics included) and ``SlimCNN(widths=new)`` is rebuilt. The
small model is evaluated as cut and after fine-tuning. Latency: median of
jitted calls on this machine at batch 1 and 256, dense and slimmed measured
in the same run.

Run: ``python research/network_slimming/main.py --config configs/network_slimming.py``
(``--workdir research/network_slimming`` updates the committed results;
``--config configs/network_slimming.py:smoke`` is the one-minute check).
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxcomp import metrics, studies
from jaxcomp.experiment import figure, load_data, mean_std, train_supervised
from jaxcomp.models import ModelSpec
from jaxcomp.prune import (
    remove_channels,
    scale_to_kernel_masks,
    slimming_masks,
    slimming_regularizer,
)
from jaxcomp.studies import by_sign, markdown_table, signed
from jaxcomp.train import supervised_loss

STUDY = "network_slimming"


class SlimCNN(nn.Module):
    """conv3x3 → BN → ReLU → max-pool 2×2 per width, then a linear classifier."""

    widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, w in enumerate(self.widths):
            x = nn.Conv(w, (3, 3), use_bias=False, name=f"conv{i + 1}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i + 1}")(x)
            x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))


def spec_for(widths, dataset) -> ModelSpec:
    return ModelSpec(name="slim_cnn", module=SlimCNN(tuple(int(w) for w in widths)),
                     input_shape=tuple(dataset.input_shape), num_classes=dataset.num_classes,
                     description="3-stage CNN with BatchNorm", uses_batch_norm=True)


def _variables(state) -> dict:
    return {"params": state.params, **state.model_state}


def _costs(spec, variables, repeat) -> dict:
    f = lambda v, x: spec.apply_fn(v, x)
    out = {"params": metrics.count_params(variables["params"])}
    for b in (1, 256):
        x = spec.example_input(b)
        a = metrics.analyze(f, variables, x)
        out[f"macs_b{b}"] = a.macs
        out[f"xla_flops_b{b}"] = a.xla_flops
        out[f"latency_ms_b{b}"] = metrics.measure_latency(f, variables, x, repeat=repeat).median * 1e3
    out["macs"] = out.pop("macs_b1")
    return out


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Per seed: dense and L1 training, then per ratio channel surgery and fine-tuning."""
    dataset = load_data(config.data)
    bs = int(config.data["batch_size"])
    widths = [int(w) for w in config.widths]
    dense_spec = spec_for(widths, dataset)
    lam = float(config.l1)
    rep = int(config.latency_repeat)
    seeds = [int(s) for s in config.seeds]
    counter = studies.RunCounter(len(seeds) * (2 + len(config.ratios)), study=STUDY)
    rows, scales = [], {}
    t_start = time.time()
    for seed in seeds:
        key = jax.random.key(seed)
        counter.start("dense", seed=seed)
        st, _, test = train_supervised(dense_spec, dataset, config.train, key=key, batch_size=bs,
                                       progress=progress)
        dense_v = _variables(st)
        rows.append({"seed": seed, "variant": "dense", "ratio": 0.0, "widths": widths,
                     "accuracy": float(test["accuracy"]), **_costs(dense_spec, dense_v, rep)})
        loss = slimming_regularizer(supervised_loss(dense_spec.apply_fn), lam)
        counter.start("L1 on BatchNorm scales", seed=seed, l1=lam)
        st, _, test = train_supervised(dense_spec, dataset, config.train, key=key, batch_size=bs,
                                       loss_fn=loss, progress=progress)
        l1_v = _variables(st)
        rows.append({"seed": seed, "variant": "l1", "ratio": 0.0, "widths": widths,
                     "accuracy": float(test["accuracy"]), **_costs(dense_spec, l1_v, rep)})
        if seed == seeds[0]:
            scales = {"dense": np.concatenate([np.abs(np.asarray(dense_v["params"][f"bn{i}"]["scale"]))
                                               for i in range(1, len(widths) + 1)]).tolist(),
                      "l1": np.concatenate([np.abs(np.asarray(l1_v["params"][f"bn{i}"]["scale"]))
                                            for i in range(1, len(widths) + 1)]).tolist()}
        for ratio in config.ratios:
            smasks = slimming_masks(l1_v["params"], float(ratio),
                                    min_channels=int(config.min_channels))
            kmasks = scale_to_kernel_masks(l1_v["params"], smasks)
            res = remove_channels(lambda v, x: dense_spec.apply_fn(v, x), l1_v, kmasks,
                                  dense_spec.example_input(1))
            new_w = [res.widths[f"conv{i}"] for i in range(1, len(widths) + 1)]
            small = spec_for(new_w, dataset)
            counter.start("slimmed, fine-tune", seed=seed, ratio=float(ratio), widths=new_w)
            cut_acc = studies.accuracy(small.apply_fn, res.variables, dataset.x_test,
                                       dataset.y_test)
            st, _, test = train_supervised(small, dataset, config.finetune, key=key,
                                           batch_size=bs, params=res.variables["params"],
                                           progress=progress)
            rows.append({"seed": seed, "variant": "slimmed", "ratio": float(ratio),
                         "widths": new_w, "accuracy_cut": cut_acc,
                         "accuracy": float(test["accuracy"]),
                         **_costs(small, _variables(st), rep)})
    summary = summarize(rows, [float(r) for r in config.ratios])
    results = {"name": STUDY, "dataset": dataset.name, "widths": widths,
               "l1": lam, "runs": rows, "summary": summary, "bn_scales_seed0": scales,
               "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
               "seconds": time.time() - t_start}
    plot(scales, workdir / "bn_scales.png")
    return results


def summarize(rows: list[dict], ratios: list[float]) -> dict:
    """Mean ± std per variant: accuracy, size, compute, latency and speed-up vs dense."""
    dense = {r["seed"]: r for r in rows if r["variant"] == "dense"}
    out = {}
    for name, sel in [("dense", [r for r in rows if r["variant"] == "dense"]),
                      ("l1", [r for r in rows if r["variant"] == "l1"])] + [
            (f"slimmed_{r:g}", [x for x in rows if x["variant"] == "slimmed" and x["ratio"] == r])
            for r in ratios]:
        out[name] = {
            "accuracy": mean_std([r["accuracy"] for r in sel]),
            "delta_vs_dense": mean_std([r["accuracy"] - dense[r["seed"]]["accuracy"]
                                        for r in sel]),
            "params": mean_std([r["params"] for r in sel]),
            "macs": mean_std([r["macs"] for r in sel]),
            "xla_flops_b256": mean_std([r["xla_flops_b256"] or 0 for r in sel]),
            "latency_ms_b1": mean_std([r["latency_ms_b1"] for r in sel]),
            "latency_ms_b256": mean_std([r["latency_ms_b256"] for r in sel]),
            "speedup_b1": mean_std([dense[r["seed"]]["latency_ms_b1"] / r["latency_ms_b1"]
                                    for r in sel]),
            "speedup_b256": mean_std([dense[r["seed"]]["latency_ms_b256"] / r["latency_ms_b256"]
                                     for r in sel]),
            "widths": [r["widths"] for r in sel],
        }
        if sel and "accuracy_cut" in sel[0]:
            out[name]["accuracy_cut"] = mean_std([r["accuracy_cut"] for r in sel])
    return out


def plot(scales: dict, path: pathlib.Path) -> None:
    bins = np.linspace(0, max(max(scales.get("dense", [1])), max(scales.get("l1", [1]))), 40)
    with figure(path, xlabel="|γ| (BatchNorm scale)", ylabel="channels",
                title="Network slimming: BatchNorm scales after training (seed 0)") as ax:
        for k, label in (("dense", "no penalty"), ("l1", "L1 on γ")):
            if k in scales:
                ax.hist(scales[k], bins=bins, alpha=0.6, label=label)


def render(res: dict) -> str:
    """``RESULTS.md`` from the results dict; every sentence below the table is computed."""
    s = res["summary"]
    cfg = res["config"]
    n_seeds = len(cfg["seeds"])
    widths = res.get("widths") or cfg["widths"]
    device = res.get("device", "n/a (not recorded)")
    rows = []
    for name, r in s.items():
        cut = r.get("accuracy_cut")
        rows.append([
            name, str(r["widths"][0]), studies.fmt_ms(r["accuracy"], scale=100, digits=2, unit="%"),
            signed(r["delta_vs_dense"]["mean"], scale=100, digits=2),
            "—" if cut is None else f"{cut['mean'] * 100:.2f}%",
            f"{r['params']['mean']:,.0f}", f"{r['macs']['mean']:,.0f}",
            f"{r['xla_flops_b256']['mean'] / 1e9:.3f}",
            f"{r['latency_ms_b1']['mean']:.2f} / {r['latency_ms_b256']['mean']:.1f}",
            f"{r['speedup_b1']['mean']:.2f}× / {r['speedup_b256']['mean']:.2f}×",
        ])
    lines = [
        f"# Network slimming with channel surgery ({res['dataset']}, 28×28)",
        "",
        (f"SlimCNN {'-'.join(str(w) for w in widths)} (3×3 conv, BatchNorm, ReLU, max-pool; "
         f"linear classifier), L1 λ = {res['l1']:g} on the BatchNorm scales, channels cut by one "
         f"global |γ| threshold (at least {cfg['min_channels']} per layer) and removed by surgery, "
         f"then fine-tuned; training {studies.train_budget(cfg['train'])}, fine-tuning "
         f"{studies.train_budget(cfg['finetune'])}; {studies.plural(n_seeds, 'seed')}. "
         "MACs per image (1 MAC = 2 FLOPs); XLA FLOPs at batch 256; latency = median over "
         f"{cfg['latency_repeat']} timed jitted calls on the run's device: {device}."),
        "",
        *markdown_table(["model", f"widths (seed {cfg['seeds'][0]})", "accuracy",
                         "Δ vs dense (pp)", "cut, before fine-tune", "params", "MACs",
                         "XLA GFLOP b256", "latency b1 / b256 (ms)", "speed-up b1 / b256"], rows),
        *findings(res),
        "",
        ("Published (Liu et al. 2017, VGGNet on CIFAR-10): 70% of channels pruned, 8.7× fewer "
         "parameters and 2× fewer FLOPs with no accuracy loss after fine-tuning."),
        "",
        "![BatchNorm scales](bn_scales.png)",
        "",
        *studies.run_section(res),
        "",
    ]
    return "\n".join(lines)


def findings(res: dict) -> list[str]:
    """Per slimmed model: size, compute, accuracy and latency against the dense one."""
    s = res["summary"]
    dense = s["dense"]
    out = []
    lagging = []
    for name, r in s.items():
        if not name.startswith("slimmed"):
            continue
        d = r["delta_vs_dense"]["mean"]
        mac_x = dense["macs"]["mean"] / r["macs"]["mean"]
        acc = by_sign(d, f"{d * 100:.2f} pp higher than", f"{-d * 100:.2f} pp lower than",
                      "the same as")
        out += ["", (
            f"{name}: {dense['params']['mean'] / r['params']['mean']:.1f}× fewer parameters, "
            f"{mac_x:.1f}× fewer MACs, XLA FLOPs "
            f"{r['xla_flops_b256']['mean'] / max(dense['xla_flops_b256']['mean'], 1):.2f}× of dense, "
            f"accuracy {acc} dense (mean over seeds); it runs "
            f"{r['speedup_b1']['mean']:.2f}× / {r['speedup_b256']['mean']:.2f}× as fast as "
            "dense at batch 1 / 256.")]
        if max(r["speedup_b1"]["mean"], r["speedup_b256"]["mean"]) < mac_x / 2:
            lagging.append((name, mac_x, max(r["speedup_b1"]["mean"], r["speedup_b256"]["mean"])))
    if lagging:
        what = "; ".join(f"{n}: {m:.1f}× fewer MACs, at best {x:.2f}× as fast"
                         for n, m, x in lagging)
        out += ["", (f"Reading: the measured latency does not follow the MACs ({what}). For a "
                     "network this small, per-op costs that do not scale with channels "
                     "(pooling, normalisation, convolutions with few channels far below peak) "
                     "dominate the step; benchmarks/prune_surgery.py measures the same surgery "
                     "on vgg_small, where compute dominates.")]
    return out


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
