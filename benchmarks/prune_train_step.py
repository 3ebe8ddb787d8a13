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
apply_updates``. Four pruned steps, all training the kept weights the
same way and changing masks only on update steps, without recompiling (the
first three under ``lax.cond`` in the step, the fourth from the host):

* ``mode="mask"``: the masked view (``comp.apply``),
  ``jaxcomp.keep_compressed(comp)`` last in the optax chain and
  ``comp.update(..., step=t)`` after every step;
* ``mode="project"``: no masking pass in the view, no ``keep_compressed``;
  ``comp.update`` re-zeroes the pruned weights after every step;
* ``jaxcomp.prune.pruning_optimizer(adamw, comp)`` (``mode="project"``):
  the masks live in the optimizer state and are scored on the params the
  step starts from, so their ``lax.cond`` does not wait for the optimizer
  and the projection fuses into Adam's own update of the weights;
* ``jaxcomp.prune.host_scheduled(comp)`` (``mode="project"``): the Python
  loop decides the update steps; the jitted step only re-zeroes with fixed
  masks (fused into Adam's update) and holds no ``lax.cond``, and a
  separately compiled ``comp.update`` runs on update steps.

Every variant runs its own trajectory; the trajectories advance in
interleaved blocks of ``--block`` steps in a rotating order so machine noise
(large and slow on a shared 2-core machine) hits them alike.
``--donate`` donates params, optimizer and compressor state in every step,
as a training loop does (``jaxcomp.train`` steps with ``donate=True``).

Run: ``python benchmarks/prune_train_step.py [--steps 300] [--batch 128] [--rounds 3]
[--block 10] [--donate] [--models lenet5 lenet300]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import optax

import jaxcomp as jc
import jaxcomp.prune as jp
from jaxcomp import models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=10, help="steps per interleaved block")
    ap.add_argument("--donate", action="store_true",
                    help="donate params, optimizer and compressor state (all steps)")
    ap.add_argument("--models", nargs="+", default=["lenet5", "lenet300"])
    args = ap.parse_args()
    print(f"batch {args.batch}, {args.steps} steps per run in blocks of {args.block}, median of "
          f"{args.rounds} rounds, buffers {'donated' if args.donate else 'not donated'}; "
          f"jax {jax.__version__}, {jax.default_backend()}")
    print(f"\n{'model / step':<66} {'ms/step':>8} {'ratio':>6}")
    for name in args.models:
        bench(name, args)


def bench(name: str, args: argparse.Namespace) -> None:
    spec = models.get_model(name)
    params0 = spec.init(jax.random.key(0))["params"]
    x = spec.example_input(args.batch, key=jax.random.key(1))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    donate = (0, 1, 2) if args.donate else ()

    def ce(p):
        logits = spec.apply_fn(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    base = optax.adamw(1e-3, weight_decay=1e-4)
    end = max(100, (2 * args.steps // 3) // 100 * 100)

    def dense():
        def step(p, o, s, t):
            del t
            g = jax.grad(ce)(p)
            u, o = base.update(g, o, p)
            return optax.apply_updates(p, u), o, s

        return Run(jax.jit(step, donate_argnums=donate), params0, base.init, lambda p: ())

    def pruned(mode: str, keep: bool):
        comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.9, 0, end, update_every=100),
                                    mode=mode)
        tx = optax.chain(base, jc.keep_compressed(comp)) if keep else base

        def step(p, o, s, t):
            g = jax.grad(lambda q: ce(comp.apply(q, s)))(p)
            u, o = tx.update(g, o, p, compressor_state=s) if keep else tx.update(g, o, p)
            p = optax.apply_updates(p, u)
            p, s = comp.update(p, s, step=t, grads=g)
            return p, o, s

        return Run(jax.jit(step, donate_argnums=donate), params0, tx.init, comp.init)

    def wrapped():
        comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.9, 0, end, update_every=100),
                                    mode="project")
        tx = jp.pruning_optimizer(base, comp)

        def step(p, o, s, t):
            del t  # the wrapper counts its own steps
            g = jax.grad(ce)(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, s

        return Run(jax.jit(step, donate_argnums=donate), params0, tx.init, lambda p: ())

    def host():
        comp = jp.magnitude_pruning(jp.polynomial_schedule(0.0, 0.9, 0, end, update_every=100),
                                    mode="project")
        pruner = jp.host_scheduled(comp, donate=bool(donate))

        def train(p, o, s):
            g = jax.grad(ce)(p)
            u, o = base.update(g, o, p)
            return pruner.project(optax.apply_updates(p, u), s), o

        train = jax.jit(train, donate_argnums=donate[:2])

        def step(p, o, s, t):
            p, o = train(p, o, s)
            p, s = pruner(p, s, step=t)  # a compiled comp.update on update steps only
            return p, o, s

        return Run(step, params0, base.init, comp.init)

    variants = {
        'mode="mask": masked view + keep_compressed + update': lambda: pruned("mask", True),
        'mode="project": update re-zeroes pruned weights': lambda: pruned("project", False),
        'pruning_optimizer(adamw, mode="project")': wrapped,
        'host_scheduled(comp, mode="project"): no cond in the step': host,
    }
    # Each round runs every variant's own trajectory for --steps steps, interleaved in blocks
    # of --block steps in a rotating order, so drifts in machine load hit all alike; a
    # variant's time is the sum over its blocks (mask updates included).
    dense_t, times, ratios, last = [], {k: [] for k in variants}, {k: [] for k in variants}, {}
    for _ in range(args.rounds):
        runs = {"dense": dense(), **{k: make() for k, make in variants.items()}}
        total = dict.fromkeys(runs, 0.0)
        order = list(runs)
        for _ in range(0, args.steps, args.block):
            for k in order:
                total[k] += runs[k].block(min(args.block, args.steps - runs[k].t))
            order = order[1:] + order[:1]  # rotate: no variant always follows the same one
        dense_t.append(total["dense"] / args.steps)
        for k in variants:
            times[k].append(total[k] / args.steps)
            ratios[k].append(times[k][-1] / dense_t[-1])
            last[k] = runs[k].state
    print(f"{name + ': dense adamw step (baseline, best round)':<66} {1e3 * min(dense_t):8.3f} "
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


class Run:
    """One training trajectory, advanced a block of steps at a time."""

    def __init__(self, step, params0, opt_init, comp_init):
        copy = partial(jax.tree.map, jnp.copy)  # a donated step consumes its inputs
        p = copy(params0)
        self.step, self.t = step, 0
        self.p, self.o, self.s = p, opt_init(p), comp_init(p)
        # compile outside the timing, on copies
        jax.block_until_ready(step(copy(self.p), copy(self.o), copy(self.s), 0))

    def block(self, n: int) -> float:
        p, o, s = self.p, self.o, self.s
        t0 = time.perf_counter()
        for t in range(self.t, self.t + n):
            p, o, s = self.step(p, o, s, t)
        jax.block_until_ready(p)
        elapsed = time.perf_counter() - t0
        self.p, self.o, self.s, self.t = p, o, s, self.t + n
        return elapsed

    @property
    def state(self):
        """Params and pruning state (pruning_optimizer keeps it in the optimizer state)."""
        return self.p, (self.o.compressor_state if self.s == () else self.s)


if __name__ == "__main__":
    main()
