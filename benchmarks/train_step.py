"""Overhead of ``jaxcomp.train.make_train_step`` against a hand-written optax step.

Model ``lenet300`` (784-300-100-10), batch 128, Adam. Timed in one run,
interleaved round-robin (machine load hits all variants alike), median of
``--reps`` rounds of ``--inner`` steps each after warm-up, with
``block_until_ready``:

* baseline ``optax``: ``jax.value_and_grad`` + ``tx.update`` +
  ``optax.apply_updates``, jitted — what a user would write by hand;
* ``make_train_step``: the same loss through the library step (RNG split,
  metrics dict, accuracy);
* ``+ compressor``: a fixed 90% magnitude mask in the forward view,
  ``compressor.project`` after every step (the step's own constraint pass;
  no ``keep_compressed`` in the chain), ``compressor.update`` every 10 steps
  under ``lax.cond``, plus the ``sparsity`` metric;
* ``+ compressor, keep_compressed too``: the same with
  ``keep_compressed`` last in the chain (the constraint applied twice);
* ``accumulate=4``: four micro-batches of 32 under ``lax.scan``;
* ``bf16 compute``: ``compute_dtype=jnp.bfloat16`` (CPUs without native
  bf16 matmuls are expected to be slower; the variant is for accelerators).

Goal: ``make_train_step`` within 1.10x of the baseline.

Run: ``python benchmarks/train_step.py [--reps 20] [--inner 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcomp as jc
from jaxcomp import train
from jaxcomp.models import get_model


class MaskState(NamedTuple):
    masks: Any


def fixed_magnitude_mask(sparsity: float) -> jc.Compressor:
    def init(params):
        def mask(p):
            if p.ndim < 2:
                return jnp.ones(p.shape, bool)
            thr = jnp.quantile(jnp.abs(p), sparsity)
            return jnp.abs(p) > thr
        return MaskState(jax.tree.map(mask, params))

    def apply(params, state):
        return jax.tree.map(lambda p, m: p * m, params, state.masks)

    def update(params, state, *, step, grads=None, **extra):
        return apply(params, state), state

    return jc.Compressor(init, apply, update, apply)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()

    spec = get_model("lenet300")
    params = spec.init(jax.random.key(0))["params"]
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.standard_normal((args.batch, 784)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)}
    tx = optax.adam(1e-3)
    loss_fn = train.supervised_loss(spec.apply_fn)

    def plain_loss(p, b):
        logits = spec.apply_fn(p, b["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

    @jax.jit
    def hand(carry, b):
        p, o = carry
        loss, g = jax.value_and_grad(plain_loss)(p, b)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), loss

    comp = fixed_magnitude_mask(0.9)
    tx_c = optax.adam(1e-3)  # make_train_step projects after every step
    tx_kc = optax.chain(optax.adam(1e-3), train.keep_compressed(comp))  # projects twice
    variants = {
        "optax (baseline)": (hand, (params, tx.init(params))),
        "make_train_step": (
            jax.jit(train.make_train_step(loss_fn, tx)),
            train.TrainState.create(params, tx, key=jax.random.key(1)),
        ),
        "+ compressor": (
            jax.jit(train.make_train_step(loss_fn, tx_c, compressor=comp, compressor_every=10)),
            train.TrainState.create(params, tx_c, key=jax.random.key(1), compressor=comp),
        ),
        "+ compressor, keep_compressed too": (
            jax.jit(train.make_train_step(loss_fn, tx_kc, compressor=comp, compressor_every=10)),
            train.TrainState.create(params, tx_kc, key=jax.random.key(1), compressor=comp),
        ),
        "accumulate=4": (
            jax.jit(train.make_train_step(loss_fn, tx, accumulate=4)),
            train.TrainState.create(params, tx, key=jax.random.key(1)),
        ),
        "bf16 compute": (
            jax.jit(train.make_train_step(loss_fn, tx, compute_dtype=jnp.bfloat16)),
            train.TrainState.create(params, tx, key=jax.random.key(1)),
        ),
    }
    states = {k: s for k, (_, s) in variants.items()}
    for name, (fn, _) in variants.items():  # warm-up / compile
        s, out = fn(states[name], batch)
        jax.block_until_ready(out)
        states[name] = s
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, (fn, _) in variants.items():
            s = states[name]
            t = time.perf_counter()
            for _ in range(args.inner):
                s, out = fn(s, batch)
            jax.block_until_ready((s, out))
            times[name].append((time.perf_counter() - t) / args.inner)
            states[name] = s
    base = statistics.median(times["optax (baseline)"])
    print(f"lenet300, batch {args.batch}, Adam; {jax.device_count()} {jax.default_backend()} "
          f"device(s); median of {args.reps}x{args.inner} steps")
    print(f"{'variant':<34} {'ms/step':>9} {'vs optax':>9}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<34} {m * 1e3:9.3f} {m / base:8.2f}x")


if __name__ == "__main__":
    main()
