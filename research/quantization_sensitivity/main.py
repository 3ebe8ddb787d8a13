"""How few shared-weight bits each layer type needs: conv vs FC, with trained centroids.

Per seed: a dense LeNet-5 variant (``lenet5_classic`` on zero-padded 32x32
inputs); then for each layer type (``config.groups``) and bit width ``b``,
:func:`jaxcomp.quant.sharing.trained.weight_sharing` replaces that type's kernels by
``2**b`` k-means centroids per layer (the other layers stay dense), the
accuracy is measured at once (k-means only) and after fine-tuning the
centroids and the dense layers for ``config.finetune.steps`` Adam steps
(the centroids move by the summed gradients of their members). Reported:
the drop against the dense net of the same seed (for trained centroids:
the dense net fine-tuned with the same steps and batches, so the extra
training is not counted as a gain of sharing), and the smallest width per
type whose mean drop (over seeds) is at most ``config.max_drop``.

Run: ``python research/quantization_sensitivity/main.py --config configs/quantization_sensitivity.py``
(``--workdir research/quantization_sensitivity`` updates the committed
results; ``--config configs/quantization_sensitivity.py:smoke`` is the
one-minute check).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcomp as jc
from jaxcomp import studies
from jaxcomp.config import ConfigError
from jaxcomp.data import batches
from jaxcomp.experiment import build_model, figure, load_data, mean_std
from jaxcomp.quant.sharing.trained import weight_sharing
from jaxcomp.studies import fmt_ms, markdown_table, plain, words

STUDY = "quantization_sensitivity"


def padded(dataset: Any, pad: int) -> Any:
    """The dataset with images zero-padded by ``pad`` pixels on each side."""
    if pad == 0:
        return dataset
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    h, w, c = dataset.input_shape
    return dataclasses.replace(dataset, x_train=np.pad(dataset.x_train, widths),
                               x_test=np.pad(dataset.x_test, widths),
                               input_shape=(h + 2 * pad, w + 2 * pad, c))


def _trainer(model: Any, comp: jc.Compressor):
    """``(init(params, lr), step)`` for Adam through ``comp``; one compiled step for any lr."""
    tx = optax.chain(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
                     jc.keep_compressed(comp))

    def loss(p, cstate, x, y):
        logits = model.apply_fn({"params": comp.apply(p, cstate)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, opt, cstate, x, y):
        g = jax.grad(loss)(p, cstate, x, y)
        upd, opt = tx.update(g, opt, p, compressor_state=cstate)
        return optax.apply_updates(p, upd), opt

    def init(params, lr):
        inject, *rest = tx.init(params)
        hyper = {**inject.hyperparams, "learning_rate": jnp.asarray(lr, jnp.float32)}
        return (inject._replace(hyperparams=hyper), *rest)

    return init, step


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Per seed: the dense net, then per layer type and bit width k-means + fine-tuning."""
    dataset = padded(load_data(config.data), int(config.pad))
    model = build_model(config.model, dataset)
    bs = int(config.data["batch_size"])
    groups = plain(config.groups)
    bits = [int(b) for b in config.bits]
    ft = plain(config.finetune)
    seeds = [int(s) for s in config.seeds]
    counter = studies.RunCounter(len(seeds) * (1 + len(groups) * len(bits)), study=STUDY)
    t_start = time.time()
    cache: dict[tuple[str, int], tuple] = {}  # one compressor and compiled steps per setting

    def accuracy(predict, p, cstate):
        pred = np.concatenate([np.asarray(predict(p, cstate, dataset.x_test[i:i + 500]))
                               for i in range(0, len(dataset.x_test), 500)])
        return float(np.mean(pred == dataset.y_test))

    train = plain(config.train)
    if train.get("optimizer", {}).get("name") != "adam":
        raise ConfigError("config.train.optimizer.name: this study trains with 'adam', got "
                          f"{train.get('optimizer')!r}")

    def setting(group, b, where):
        if (group, b) not in cache:
            comp = jc.identity() if b == 32 else weight_sharing(b, where=where, init=config.init)
            project = comp.project or (lambda p, s: p)
            predict = jax.jit(lambda p, s, x: jnp.argmax(
                model.apply_fn({"params": comp.apply(p, s)}, x), -1))
            cache[(group, b)] = (jax.jit(comp.init), jax.jit(project), predict,
                                 *_trainer(model, comp))
        return cache[(group, b)]

    def run(step, params, opt, cstate, steps, key):
        data = batches(dataset.x_train, dataset.y_train, bs, key=key)
        for _, batch in zip(range(steps), data):
            params, opt = step(params, opt, cstate, batch["x"], batch["y"])
        return params

    def finetune(dense, key, group, b, where):
        comp_init, project, predict, init, step = setting(group, b, where)
        cstate = comp_init(dense)
        params = project(dense, cstate)
        acc0 = accuracy(predict, params, cstate)
        # the same batches for every setting of a seed
        params = run(step, params, init(params, float(ft["learning_rate"])), cstate,
                     int(ft["steps"]), jax.random.fold_in(key, 7))
        return cstate, acc0, accuracy(predict, params, cstate)

    runs = []
    for seed in seeds:
        key = jax.random.key(seed)
        counter.start("dense", seed=seed)
        comp_init, _, predict, init, step = setting("dense", 32, None)
        params = model.init(key)["params"]
        cstate = comp_init(params)
        dense = run(step, params, init(params, float(train["optimizer"]["learning_rate"])),
                    cstate, int(train["steps"]), jax.random.fold_in(key, 1))
        dense_acc = accuracy(predict, dense, cstate)

        # the reference for trained centroids: the dense net fine-tuned the same way
        _, _, dense_ft = finetune(dense, key, "dense", 32, None)
        runs.append({"seed": seed, "group": "dense", "bits": 32, "accuracy": dense_acc,
                     "accuracy_finetuned": dense_ft})
        for group, where in groups.items():
            for b in bits:
                counter.start(f"{group} {b}-bit", seed=seed)
                cstate, acc0, acc1 = finetune(dense, key, group, b, where)
                n = sum(int(np.size(x)) for p, x in jc.select.leaves_with_paths(dense)
                        if p in jc.compression_info(cstate))
                runs.append({"seed": seed, "group": group, "bits": b, "weights": n,
                             "accuracy_kmeans": acc0, "accuracy": acc1,
                             "drop_kmeans": dense_acc - acc0, "drop": dense_ft - acc1})
    results = {"name": STUDY, "dataset": dataset.name, "model": model.name,
               "max_drop": float(config.max_drop), "runs": runs,
               **summarize(runs, list(groups), bits, float(config.max_drop)),
               "seconds": time.time() - t_start}
    plot(results, workdir / "drop_vs_bits.png")
    return results


def summarize(runs: list[dict], groups: list[str], bits: list[int], max_drop: float) -> dict:
    """Per group and width the mean ± std drops; the smallest width within ``max_drop``."""
    dense = mean_std([r["accuracy"] for r in runs if r["group"] == "dense"])
    dense_ft = mean_std([r["accuracy_finetuned"] for r in runs if r["group"] == "dense"])
    table, minimum = {}, {}
    for g in groups:
        rows = []
        for b in bits:
            sel = [r for r in runs if r["group"] == g and r["bits"] == b]
            rows.append({"bits": b, "weights": sel[0]["weights"],
                         "drop": mean_std([r["drop"] for r in sel]),
                         "drop_kmeans": mean_std([r["drop_kmeans"] for r in sel])})
        table[g] = rows
        minimum[g] = {k: _min_bits(rows, k, max_drop) for k in ("drop", "drop_kmeans")}
    return {"dense": dense, "dense_finetuned": dense_ft, "table": table, "min_bits": minimum}


def _min_bits(rows: list[dict], key: str, max_drop: float) -> int | None:
    """The smallest width from which every larger tested width also stays within ``max_drop``."""
    ok = None
    for r in sorted(rows, key=lambda r: -r["bits"]):
        if r[key]["mean"] > max_drop:
            break
        ok = r["bits"]
    return ok


def plot(res: dict, path: pathlib.Path) -> None:
    with figure(path, xlabel="bits per shared weight (2**bits centroids per layer)",
                ylabel="accuracy drop vs dense (pp)",
                title=f"{res['model']} on {res['dataset']}: conv vs FC") as ax:
        for i, (g, rows) in enumerate(res["table"].items()):
            color = f"C{i}"
            x = [r["bits"] for r in rows]
            ax.errorbar(x, [100 * r["drop"]["mean"] for r in rows],
                        yerr=[100 * r["drop"]["std"] for r in rows], marker="o", ms=3, capsize=2,
                        color=color, label=f"{g}, trained centroids")
            ax.plot(x, [100 * r["drop_kmeans"]["mean"] for r in rows], ls="--", marker=".",
                    color=color, label=f"{g}, k-means only")
        ax.axhline(100 * res["max_drop"], color="gray", ls=":", lw=1,
                   label=f"{100 * res['max_drop']:g} pp")
        ax.set_yscale("symlog", linthresh=1.0)


def _bits_text(b: int | None) -> str:
    return "none of the widths tested" if b is None else f"{b} bits"


def render(res: dict) -> str:
    """``RESULTS.md`` from the results dict; every sentence below the tables is computed."""
    cfg = res["config"]
    opt = cfg["train"]["optimizer"]
    ft = cfg["finetune"]
    rows = []
    for g, table in res["table"].items():
        for r in table:
            rows.append([g, str(r["bits"]), f"{r['weights']:,}",
                         fmt_ms(r["drop_kmeans"], scale=100, digits=2),
                         fmt_ms(r["drop"], scale=100, digits=2)])
    summary = [[g, _bits_text(m["drop"]), _bits_text(m["drop_kmeans"])]
               for g, m in res["min_bits"].items()]
    lines = [
        "# Quantization sensitivity: conv vs FC layers with trained centroids",
        "",
        (f"`{res['model']}` on the {res['dataset']} split (28x28 zero-padded to 32x32), "
         f"{opt['name'].capitalize()} {opt['learning_rate']:g}, batch "
         f"{cfg['data']['batch_size']}, {studies.train_budget(cfg['train'])}; dense "
         f"{fmt_ms(res['dense'], scale=100, digits=2, unit='%')} over "
         f"{studies.plural(len(cfg['seeds']), 'seed')}. Per layer type only its kernels share "
         f"`2**bits` centroids per layer ({cfg['init']} k-means init); fine-tuning: "
         f"{ft['steps']} Adam steps at {ft['learning_rate']:g}, of the shared and the dense "
         "layers alike. Drops in pp (mean ± std) against the dense net of the same seed: as "
         "trained for k-means only, fine-tuned the same way for trained centroids (dense "
         f"fine-tuned: {fmt_ms(res['dense_finetuned'], scale=100, digits=2, unit='%')})."),
        "",
        *markdown_table(["layers", "bits", "weights shared", "drop, k-means only",
                         "drop, trained centroids"], rows),
        "",
        (f"Smallest width whose mean drop is ≤ {res['max_drop'] * 100:.1f} pp (and stays so "
         "at every wider width tested):"),
        "",
        *markdown_table(["layers", "trained centroids", "k-means only"], summary),
        "",
        *findings(res),
        "",
        ("Published (Han et al. 2016, AlexNet on ImageNet): no loss down to 8 bits in the "
         "convolutions and 5 bits in the fully connected layers, with trained centroids."),
        "",
        "![drop vs bits](drop_vs_bits.png)",
        "",
        *studies.run_section(res),
        "",
    ]
    return "\n".join(lines)


def findings(res: dict) -> list[str]:
    """Which layer type tolerates fewer bits, and what fine-tuning the centroids buys."""
    m = res["min_bits"]
    text = []
    if "conv" in m and "fc" in m:
        c, f = m["conv"]["drop"], m["fc"]["drop"]
        if c is not None and f is not None:
            order = ("the FC layers need fewer bits than the convolutions" if f < c else
                     "the convolutions need fewer bits than the FC layers" if c < f else
                     "both layer types need the same width")
            text.append(f"With trained centroids the convolutions need {c} bits and the FC "
                        f"layers {f}: {order} (published: FC 5 < conv 8).")
    gains = []
    for g, rows in res["table"].items():
        better = [str(r["bits"]) for r in rows
                  if r["drop_kmeans"]["mean"] - r["drop"]["mean"] > 0.001]
        if better:
            gains.append(f"{g} at {words(better)} bits")
    if gains:
        text.append(f"Fine-tuning the centroids lowers the drop (by more than 0.1 pp) for "
                    f"{words(gains)}.")
    else:
        text.append("Fine-tuning the centroids changes no drop by more than 0.1 pp.")
    return [" ".join(text)]


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
