"""Benchmark: an int8 quantization-aware training step, jaxcomp vs Qwix, on the CPU.

Model: the 784-1024-1024-10 ReLU MLP (``jaxcomp.models.mlp.MLP``), batch
``--batch`` (default 256), softmax cross-entropy, Adam; every step is
``value_and_grad`` + ``tx.update`` + ``apply_updates`` under ``jax.jit``
with the parameters, optimizer state and quantization state donated.

Variants (int8 weights and activations in all quantized ones):

* ``float``: the unquantized step (reference);
* ``jaxcomp``: kernels through ``fake_quant(bits=8, axis=-1)`` (per output
  channel, symmetric) and the inputs of the three Dense layers through
  ``act_quantized(model.apply, {".*": 8})`` (8-bit asymmetric, static
  ranges updated as moving averages and carried in and out of the step);
* ``qwix_static``: Qwix's QAT, ``quantize_model(model, QtProvider([QtRule(
  weight_qtype=int8, act_qtype=int8, act_static_scale=True,
  act_calibration_method="minmax")]))``: per-channel int8 weights and
  static asymmetric activation ranges averaged in the ``quant_stats``
  collection (the same scheme as ``jaxcomp``);
* ``qwix_dynamic``: Qwix's default QAT rule (``weight_qtype=act_qtype=int8``):
  activations quantized with a per-example absmax scale computed every step.

Reported: median seconds per step over interleaved rounds (each round runs
every variant ``--inner`` times, order rotated) and the median per-round
ratio to ``qwix_static`` and to ``float``. Goal: ``jaxcomp`` no slower
than Qwix.

Run: ``python benchmarks/quant_qat_step.py [--batch 256] [--rounds 15] [--inner 5]``
(needs the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import fmt_ratio, interleaved, machine, ratio_stats

from jaxcomp.models.mlp import MLP
from jaxcomp.quant.intercept import act_quantized
from jaxcomp.quant.uniform import fake_quant


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def fq_kernels(params):
    return jax.tree_util.tree_map_with_path(
        lambda kp, a: fake_quant(a, bits=8, axis=-1) if kp[-1].key == "kernel" else a, params)


def make_step(loss, tx):
    """A jitted step over ``loss(params, state, x, y) -> (loss, new state)``, all donated."""

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, opt, state, x, y):
        (value, state), g = jax.value_and_grad(loss, has_aux=True)(params, state, x, y)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, state, value

    return step


def main() -> None:
    import qwix

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=5)
    args = p.parse_args()

    model = MLP(widths=(784, 1024, 1024, 10))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
    tx = optax.adam(1e-3)
    params0 = model.init(jax.random.key(0), x[:1])["params"]

    q = act_quantized(model.apply, {".*": 8}, momentum=0.99)
    ranges0 = q.calibrate({"params": params0}, x)

    def float_loss(p, s, xb, yb):
        return xent(model.apply({"params": p}, xb), yb), s

    def ours_loss(p, r, xb, yb):
        out, r = q.train({"params": fq_kernels(p)}, xb, ranges=r)
        return xent(out, yb), r

    static = qwix.quantize_model(model, qwix.QtProvider([qwix.QtRule(
        module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True,
        act_calibration_method="minmax")]))
    dynamic = qwix.quantize_model(model, qwix.QtProvider([qwix.QtRule(
        module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8)]))
    stats0 = static.init(jax.random.key(0), x[:1])["quant_stats"]

    def static_loss(p, s, xb, yb):
        out, new = static.apply({"params": p, "quant_stats": s}, xb, mutable=["quant_stats"])
        return xent(out, yb), new["quant_stats"]

    def dynamic_loss(p, s, xb, yb):
        return xent(dynamic.apply({"params": p}, xb), yb), s

    variants = {"float": (float_loss, None), "jaxcomp": (ours_loss, ranges0),
                "qwix_static": (static_loss, stats0), "qwix_dynamic": (dynamic_loss, None)}
    live, steps = {}, {}
    for name, (loss, state) in variants.items():
        params = jax.tree.map(jnp.copy, params0)
        live[name] = [params, tx.init(params), jax.tree.map(jnp.copy, state)]
        steps[name] = make_step(loss, tx)

    def runner(name):
        def run():
            s = live[name]
            s[0], s[1], s[2], value = steps[name](s[0], s[1], s[2], x, y)
            return value

        return run

    times = interleaved({n: runner(n) for n in variants}, args.rounds, inner=args.inner,
                        warmup=2)
    print(f"# quant_qat_step: MLP 784-1024-1024-10, batch {args.batch}, Adam, int8 QAT")
    print(machine())
    print(f"{args.rounds} interleaved rounds x {args.inner} steps; medians\n")
    print("| variant | ms / step | / qwix_static | / float |")
    print("|---|---|---|---|")
    for n in variants:
        print(f"| {n} | {1e3 * statistics.median(times[n]):.2f} | "
              f"{fmt_ratio(ratio_stats(times[n], times['qwix_static']))} | "
              f"{fmt_ratio(ratio_stats(times[n], times['float']))} |")


if __name__ == "__main__":
    main()
