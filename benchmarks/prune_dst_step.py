"""Benchmark: cost of a RigL training step vs a dense and a magnitude-masked step.

LeNet-300-100, batch 128 (by default), AdamW, all steps built by
:func:`jaxcomp.train.make_train_step` and ``jax.jit``-ed the same way:

* **dense** (baseline): no compressor.
* **magnitude mask**: ``magnitude_pruning(0.9, update_every=100)`` (masked
  view, masks recomputed every 100 steps under ``lax.cond``) with
  ``jaxcomp.keep_compressed`` last in the chain.
* **RigL**: ``rigl_pruning(0.9, update_every=100)`` (straight-through masked
  view; drop/grow every 100 steps under ``lax.cond`` with sort-free exact
  selection on the dense gradient), ``keep_compressed`` last, the optimizer
  wrapped in ``reset_regrown`` (moments of regrown weights restart at zero).
* **RigL without reset_regrown**: the same, to show what the wrapper costs.

Each run times ``--steps`` steps (default 300, so the amortised drop/grow
updates at steps 100 and 200 are included) after a compile-and-warm-up
call. Runs alternate in rounds (dense, magnitude, RigL, RigL-no-reset,
dense, ...) so load drifts hit all alike; the ratio to dense is taken per
round and its median printed, with the best-round times.

Run: ``python benchmarks/prune_dst_step.py [--steps 300] [--batch 128] [--rounds 7]
[--model lenet300]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jaxcomp as jc
import jaxcomp.prune as jp
from jaxcomp import models
from jaxcomp.prune import reset_regrown, rigl_pruning
from jaxcomp.train import TrainState, make_train_step, supervised_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--model", default="lenet300")
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args()
    print(f"{args.model}, batch {args.batch}, {args.steps} steps per run, median of "
          f"{args.rounds} interleaved rounds; jax {jax.__version__}, {jax.default_backend()}")

    spec = models.get_model(args.model)
    params0 = spec.init(jax.random.key(0))["params"]
    x = spec.example_input(args.batch, key=jax.random.key(1))
    batch = {"x": x, "y": jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)}
    loss_fn = supervised_loss(spec.apply_fn)
    base = optax.adamw(1e-3, weight_decay=1e-4)
    end = max(101, args.steps)  # updates at 100, 200, ... inside the timed run

    def variant(comp, tx):
        step = jax.jit(make_train_step(loss_fn, tx, compressor=comp))
        state0 = TrainState.create(params0, tx, key=jax.random.key(3), compressor=comp)
        if comp is not None:
            state0 = state0.replace(params=comp.project(state0.params, state0.compressor_state))
        jax.block_until_ready(step(state0, batch))  # compile outside the timing

        def run():
            state = state0
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = step(state, batch)
            jax.block_until_ready(state.params)
            return (time.perf_counter() - t0) / args.steps, state, metrics

        return run

    mag = jp.magnitude_pruning(args.sparsity, update_every=100)
    rigl = rigl_pruning(args.sparsity, update_every=100, end_step=end, key=jax.random.key(4))
    variants = {
        "dense adamw step (baseline)": variant(None, base),
        "magnitude mask (update every 100) + keep_compressed":
            variant(mag, optax.chain(base, jc.keep_compressed(mag))),
        "RigL (every 100) + reset_regrown + keep_compressed":
            variant(rigl, optax.chain(reset_regrown(base), jc.keep_compressed(rigl))),
        "RigL (every 100) + keep_compressed, no moment reset":
            variant(rigl, optax.chain(base, jc.keep_compressed(rigl))),
    }
    names = list(variants)
    times = {k: [] for k in names}
    last = {}
    for _ in range(args.rounds):
        for k in names:
            t, state, metrics = variants[k]()
            times[k].append(t)
            last[k] = (state, metrics)
    dense = times[names[0]]
    mag_t = times[names[1]]
    print(f"\n{'step':<56} {'ms/step':>8} {'vs dense':>9} {'vs magnitude':>13}")
    for k in names:
        r_dense = statistics.median(t / d for t, d in zip(times[k], dense))
        r_mag = statistics.median(t / m for t, m in zip(times[k], mag_t))
        print(f"{k:<56} {1e3 * min(times[k]):8.3f} {r_dense:9.3f} {r_mag:13.3f}")
    print()
    for k in names[1:]:
        state, metrics = last[k]
        cs = state.compressor_state
        kernels = [m for m in jax.tree.leaves(cs.masks) if m.ndim == 2]
        kept = sum(int(jnp.sum(m)) for m in kernels)
        total = sum(m.size for m in kernels)
        print(f"{k}: mask updates {int(cs.count)} (last at step {int(cs.last_update)}), "
              f"kernel sparsity {100 * (1 - kept / total):.2f}%, last loss "
              f"{float(metrics['loss']):.3f}; per-round ratios vs dense "
              + ", ".join(f"{t / d:.3f}" for t, d in zip(times[k], dense)))


if __name__ == "__main__":
    main()
