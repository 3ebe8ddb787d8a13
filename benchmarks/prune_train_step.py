"""Benchmark: cost of magnitude pruning in a training step (LeNet-5, LeNet-300-100).

Goal: a masked training step at most 1.05x the time of the dense step on 2
CPU cores, measured as the mean over ``--steps`` steps (default 300) so the
amortised mask recomputation (every 100 steps, gradual cubic schedule to 90%
sparsity over the first two thirds of the run) is included.

Two models in one run: Caffe's LeNet-5 (convolutions reuse every weight at
many positions, so masking is cheap next to the step) and LeNet-300-100
(every weight is used once per example: the worst case, where the few
elementwise passes over the weights that masking adds are a visible share
of a ~2 ms step).

All steps are plain ``optax`` + ``jax.jit`` (Adam with decoupled weight
decay, batch ``--batch``): the dense step is ``loss -> grad -> tx.update ->
apply_updates``. Two pruned steps: ``mode="mask"`` adds the masked view
(``comp.apply``), ``jaxcomp.keep_compressed(comp)`` last in the optax chain
and ``comp.update(..., step=t)`` every step (masks change under ``lax.cond``
only on update steps, without recompiling); ``mode="project"`` (the
jaxpruner way) has no masking pass in the view and no ``keep_compressed``:
``comp.update`` re-zeroes the pruned weights after every step. Both train
the kept weights the same way. Dense and pruned runs alternate in rounds so
machine noise hits them alike.

Run: ``python benchmarks/prune_train_step.py [--steps 300] [--batch 128] [--rounds 3]
[--models lenet5 lenet300]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

import jaxcomp as jc
import jaxcomp.prune as jp
from jaxcomp import models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--models", nargs="+", default=["lenet5", "lenet300"])
    args = ap.parse_args()
    print(f"batch {args.batch}, {args.steps} steps per run, median of {args.rounds} runs; "
          f"jax {jax.__version__}, {jax.default_backend()}")
    print(f"\n{'model / step':<66} {'ms/step':>8} {'ratio':>6}")
    for name in args.models:
        bench(name, args)


def bench(name: str, args: argparse.Namespace) -> None:
    spec = models.get_model(name)
    params0 = spec.init(jax.random.key(0))["params"]
    x = spec.example_input(args.batch, key=jax.random.key(1))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)

    def ce(p):
        logits = spec.apply_fn(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    base = optax.adamw(1e-3, weight_decay=1e-4)

    @jax.jit
    def dense_step(p, o, t):
        del t
        g = jax.grad(ce)(p)
        u, o = base.update(g, o, p)
        return optax.apply_updates(p, u), o

    end = max(100, (2 * args.steps // 3) // 100 * 100)

    def pruned(mode: str, keep: bool):
        comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.9, 0, end, update_every=100),
                                    mode=mode)
        tx = optax.chain(base, jc.keep_compressed(comp)) if keep else base

        @jax.jit
        def step(p, o, s, t):
            g = jax.grad(lambda q: ce(comp.apply(q, s)))(p)
            u, o = tx.update(g, o, p, compressor_state=s) if keep else tx.update(g, o, p)
            p = optax.apply_updates(p, u)
            p, s = comp.update(p, s, step=t, grads=g)
            return p, o, s

        def run():
            p, o, s = params0, tx.init(params0), comp.init(params0)
            jax.block_until_ready(step(p, o, s, 0))  # compile outside the timing
            t0 = time.perf_counter()
            for t in range(args.steps):
                p, o, s = step(p, o, s, t)
            jax.block_until_ready(p)
            return (time.perf_counter() - t0) / args.steps, (p, s)

        return run

    def run_dense():
        p, o = params0, base.init(params0)
        jax.block_until_ready(dense_step(p, o, 0))
        t0 = time.perf_counter()
        for t in range(args.steps):
            p, o = dense_step(p, o, t)
        jax.block_until_ready(p)
        return (time.perf_counter() - t0) / args.steps

    variants = {
        'mode="mask": masked view + keep_compressed + update': pruned("mask", True),
        'mode="project": update re-zeroes pruned weights': pruned("project", False),
    }
    # Interleaved rounds (dense, variant, variant, dense, ...) so drifts in machine load hit
    # all alike; ratios are taken per round and their median reported.
    dense, times, ratios, last = [], {k: [] for k in variants}, {k: [] for k in variants}, {}
    for _ in range(args.rounds):
        dense.append(run_dense())
        for k, run in variants.items():
            t, last[k] = run()
            times[k].append(t)
            ratios[k].append(t / dense[-1])
    print(f"{name + ': dense adamw step (baseline, best round)':<66} {1e3 * min(dense):8.3f} "
          f"{1.0:6.3f}")
    for k in variants:
        ratio = statistics.median(ratios[k])
        p, s = last[k]
        summary = jp.sparsity_summary(p, where=r".*kernel")
        print(f"{name + ': ' + k:<66} {1e3 * min(times[k]):8.3f} {ratio:6.3f}")
        print(f"    per-round ratios {', '.join(f'{r:.3f}' for r in ratios[k])}; mask updates "
              f"{int(s.count)} (last at step {int(s.last_update)}); kernel sparsity "
              f"{100 * summary.sparsity:.2f}%; goal <= 1.05x: "
              f"{'met' if ratio <= 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
