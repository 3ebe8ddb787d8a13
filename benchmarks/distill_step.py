"""Cost of distilling with the teacher inside the training step.

Times, in one run and interleaved round-robin (so machine load hits all
alike), median of ``--reps`` runs after warm-up, with ``block_until_ready``:

* ``distill``: one jitted step of ``jaxcomp.distill.distillation_loss``
  (teacher ``kd_teacher`` 784-1200-1200-10 forward under ``stop_gradient`` +
  student ``kd_student`` 784-800-800-10 forward/backward + Adam update);
* baseline ``teacher fwd``: the jitted teacher forward alone;
* baseline ``student step``: a jitted supervised student step alone
  (cross-entropy, forward/backward + Adam).

The ratio ``distill / (teacher fwd + student step)`` shows the overhead of
the fused step (target <= 1.1x). The distill step is measured with the
teacher's variables closed over (compile-time constants), and passed in
``model_state["teacher"]`` (ordinary arguments) without and with buffer
donation: without donation the unchanged teacher that the step returns in
its new model state is copied every step. Train steps feed their outputs
back as the next inputs.

Run: ``python benchmarks/distill_step.py [--batch 128] [--reps 30]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcomp.distill import distillation_loss
from jaxcomp.models import get_model

DISTILL_CLOSED = "distill, teacher closed over"
DISTILL_STATE = "distill, teacher in model_state"
DISTILL_DONATED = "distill, model_state, donated"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()

    teacher, student = get_model("kd_teacher"), get_model("kd_student")
    tv = teacher.init(jax.random.key(0))
    sv = student.init(jax.random.key(1))
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.normal(size=(args.batch, 784)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 10, size=args.batch), jnp.int32),
    }
    key = jax.random.key(2)
    tx = optax.adam(1e-3)
    params = sv["params"]
    opt_state = tx.init(params)

    def make_step(loss_fn, donate=False):
        def step(params, opt_state, model_state, batch, key):
            grads, (model_state, metrics) = jax.grad(loss_fn, has_aux=True)(
                params, model_state, batch, key
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, model_state, metrics

        return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())

    def ce_loss(params, model_state, batch, key):
        logits = student.apply_fn({"params": params}, batch["x"], train=True, rng=key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return ce, (model_state, {"loss": ce})

    kd_closed = distillation_loss(
        student.apply_fn, teacher.apply_fn, tv, temperature=4.0, alpha=0.9
    )
    kd_state = distillation_loss(
        student.apply_fn, teacher.apply_fn, None, temperature=4.0, alpha=0.9
    )

    def fresh(model_state):
        # Each step function gets its own buffers: donated ones are consumed.
        return [jax.tree.map(jnp.copy, t) for t in (params, opt_state, model_state)]

    # name -> (function, arguments, is a train step whose state is carried)
    fns = {
        DISTILL_CLOSED: (make_step(kd_closed), fresh({}), True),
        DISTILL_STATE: (make_step(kd_state), fresh({"teacher": tv}), True),
        DISTILL_DONATED: (make_step(kd_state, donate=True), fresh({"teacher": tv}), True),
        "teacher fwd": (jax.jit(lambda v, x: teacher.apply_fn(v, x)), [tv, batch["x"]], False),
        "student step": (make_step(ce_loss), fresh({}), True),
    }

    def call(name):
        fn, state, carried = fns[name]
        if not carried:
            return jax.block_until_ready(fn(*state))
        out = jax.block_until_ready(fn(*state, batch, key))
        state[:] = out[:3]
        return out

    compile_s = {}
    for name in fns:
        t0 = time.perf_counter()
        call(name)
        compile_s[name] = time.perf_counter() - t0
        for _ in range(args.warmup):
            call(name)
    times = {name: [] for name in fns}
    for _ in range(args.reps):
        for name in fns:
            t0 = time.perf_counter()
            call(name)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    baseline = med["teacher fwd"] + med["student step"]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {cores} CPU cores, "
        f"batch {args.batch}, median of {args.reps} runs after {args.warmup} warm-up runs"
    )
    print(f"{'':34s} {'median ms':>10s} {'p10 ms':>8s} {'p90 ms':>8s} {'first call s':>13s}")
    for name, v in times.items():
        q = np.quantile(v, [0.1, 0.9]) * 1e3
        print(f"{name:34s} {med[name] * 1e3:10.2f} {q[0]:8.2f} {q[1]:8.2f} {compile_s[name]:13.2f}")
    print(f"{'baseline: teacher fwd + student step':34s} {baseline * 1e3:10.2f}")
    for name in (DISTILL_CLOSED, DISTILL_STATE, DISTILL_DONATED):
        print(f"ratio {name} / baseline: {med[name] / baseline:.3f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()
