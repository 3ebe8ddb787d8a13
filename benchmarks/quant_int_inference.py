"""Benchmark: integer-only inference vs float inference on the CPU (batch 64).

Two networks, float32 weights from initialization (values do not change the
arithmetic cost):

* ``mlp``: 784-1024-1024-10, ReLU;
* ``cnn``: 28×28×1 → conv 3×3×32 → ReLU → max-pool 2 → conv 3×3×64 → ReLU
  → max-pool 2 → dense 256 → ReLU → dense 10.

The integer network is ``export_integer`` of the model with activation
ranges calibrated on the benchmark batch: int8 weights and activations,
``lax.dot_general`` / ``conv_general_dilated`` with int32 accumulation,
fixed-point requantization (int32 arithmetic only) with ReLU as a clamp,
max-pooling on int8 codes. Timed: the jitted float ``model.apply`` against
the jitted ``IntegerModel.__call__`` (float input quantized at the start,
int8 output codes dequantized at the end, both included), and the jitted
int8 → int8 core (``IntegerModel.codes``) alone. The fake-quant model
(what QAT evaluates) is timed as well for reference.

Reported: median ms per call over interleaved rounds and the median
per-round speed-up (float time / integer time). Goal: integer ≥ 1.8× faster.

Run: ``python benchmarks/quant_int_inference.py [--batch 64] [--rounds 20] [--inner 10]``
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _timing import fmt_ratio, interleaved, machine, ratio_stats

from jaxcomp.models.mlp import MLP
from jaxcomp.quant.integer.model import export_integer
from jaxcomp.quant.intercept import ActQuant, act_quantized
from jaxcomp.quant.uniform import fake_quant


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, c in enumerate((32, 64)):
            x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3), name=f"conv{i + 1}")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(256, name="fc1")(x.reshape(x.shape[0], -1)))
        return nn.Dense(10, name="fc2")(x)


NETS = {
    "mlp": (MLP(widths=(784, 1024, 1024, 10)), (784,), ["fc1", "relu", "fc2", "relu", "fc3"],
            "fc3"),
    "cnn": (CNN(), (28, 28, 1), ["conv1", "relu", "max_pool:2", "conv2", "relu", "max_pool:2",
                                 "flatten", "fc1", "relu", "fc2"], "fc2"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    args = p.parse_args()
    print(f"# quant_int_inference: batch {args.batch}, jitted, float32 vs integer-only")
    print(machine())
    print(f"{args.rounds} interleaved rounds x {args.inner} calls; medians\n")
    print("| network | float ms | integer ms (float in/out) | int8 core ms | fake-quant ms | "
          "speed-up float / integer | float / int8 core |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name in args.nets:
        model, shape, program, last = NETS[name]
        x = jnp.asarray(np.abs(rng.normal(size=(args.batch, *shape))), jnp.float32)
        v = model.init(jax.random.key(0), x[:1])
        q = act_quantized(model.apply, {last: ActQuant(8, outputs=True), ".*": 8})
        ranges = q.calibrate(v, x)
        im = export_integer(model.apply, v, ranges, program, x[:1])
        qin = im.quantize_input(x)
        run_float = jax.jit(model.apply)
        run_int = jax.jit(lambda m, a: m(a))
        run_core = jax.jit(lambda m, c: m.codes(c))
        vq = {"params": jax.tree_util.tree_map_with_path(
            lambda kp, a: fake_quant(a, bits=8, axis=-1) if kp[-1].key == "kernel" else a,
            v["params"])}
        run_fq = jax.jit(partial(lambda vv, a, r, q: q(vv, a, ranges=r), q=q))
        calls = {"float": (run_float, v, x), "integer": (run_int, im, x),
                 "core": (run_core, im, qin), "fake_quant": (run_fq, vq, x, ranges)}
        times = interleaved({k: partial(*c) for k, c in calls.items()}, args.rounds,
                            inner=args.inner, warmup=2)
        med = {k: 1e3 * statistics.median(t) for k, t in times.items()}
        print(f"| {name} | {med['float']:.3f} | {med['integer']:.3f} | {med['core']:.3f} | "
              f"{med['fake_quant']:.3f} | "
              f"{fmt_ratio(ratio_stats(times['float'], times['integer']))} | "
              f"{fmt_ratio(ratio_stats(times['float'], times['core']))} |")


if __name__ == "__main__":
    main()
