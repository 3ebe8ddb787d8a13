"""Benchmark: GPTQ vs round-to-nearest post-training weight quantization, no retraining.

Model: an MLP 784-256-128-10 (``jaxcomp.models.mlp``) trained briefly on the
offline MNIST 5k subset (``jaxcomp.data.mnist5k``: 4,000 train / 1,000 test).
Calibration: ``--calib-n`` training images. Every kernel is quantized
(biases stay float) on the asymmetric min/max grid (GPTQ's default; unsigned
codes with an integer zero point) at each of ``--bits``, with

* one scale per output channel (``per-channel``),
* groups of 16 inputs (``g16``),
* groups of about 128 inputs (``g128``: 112 for fc1's 784 inputs, 128 for
  fc2 and fc3),

by round-to-nearest (:func:`jaxcomp.quant.ptq.gptq.round_to_nearest`) and by
GPTQ (:func:`jaxcomp.quant.ptq.gptq_model.gptq_quantize`, sequential, damping
0.01, blocks of 128 inputs). Reported, on the 1,000 *test* images (not the
calibration data GPTQ fitted):

* test accuracy;
* the relative logit error ``||f(X) - f̂(X)||_F / ||f(X)||_F`` over the
  ``(1000, 10)`` logits of the float model ``f`` and the quantized ``f̂``
  (not squared);
* per layer, the squared relative output error ``||XW - XŴ||² / ||XW||²`` on
  the calibration inputs that layer sees in the GPTQ-quantized model (the
  same ``X`` for both methods, from ``GPTQLayerStats``);
* GPTQ's wall time for the whole model (one call after a warm-up call of
  the same configuration, so compiles are excluded).

Then a mixed-precision search (:mod:`jaxcomp.quant.ptq.mixed_precision`): the
loss increase of each layer alone at 2/3/4/8 bits (round-to-nearest, on the
calibration images) and the exact search under a weight budget of
``--mp-bits`` bits per weight on average (default 2.5); the policy is
evaluated with round-to-nearest and GPTQ next to uniform assignments at the
neighbouring whole widths (the wider one exceeds the budget).

Run: ``python benchmarks/quant_gptq.py [--epochs 8] [--calib-n 1024] [--chunk 256]
[--bits 3 4 8]``
"""

from __future__ import annotations

import argparse
import time

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcomp.data import mnist5k
from jaxcomp.models import mlp
from jaxcomp.quant.ptq.gptq import round_to_nearest
from jaxcomp.quant.ptq.gptq_model import gptq_quantize
from jaxcomp.quant.ptq.mixed_precision import mixed_precision_search, quantization_sensitivity

WIDTHS = (784, 256, 128, 10)
LAYERS = ("fc1", "fc2", "fc3")


def _train(model, ds, epochs, key):
    params = model.init(key, jnp.zeros((1, WIDTHS[0])))["params"]
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, o, x, y):
        g = jax.grad(loss_fn)(p, x, y)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    rng = np.random.default_rng(0)
    for _ in range(epochs):
        perm = rng.permutation(ds.n_train)
        for i in range(0, ds.n_train - 127, 128):
            idx = perm[i:i + 128]
            params, opt = step(params, opt, ds.x_train[idx], ds.y_train[idx])
    return params


def _group_rule(g):
    """``{path: group size}``: the largest divisor of each layer's inputs not above ``g``."""
    if g is None:
        return None
    return {f"{name}/kernel": max(d for d in range(1, min(g, n) + 1) if n % d == 0)
            for name, n in zip(LAYERS, WIDTHS[:-1])}


def _rtn(params, bits, groups):
    out = {}
    for name in LAYERS:
        k = params[name]["kernel"]
        g = None if groups is None else groups[f"{name}/kernel"]
        b = bits if isinstance(bits, int) else bits[f"{name}/kernel"]
        out[name] = {**params[name], "kernel": round_to_nearest(k, bits=b, group_size=g)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--calib-n", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4, 8])
    ap.add_argument("--mp-bits", type=float, default=2.5)
    args = ap.parse_args()

    ds = mnist5k()
    model = mlp(WIDTHS)
    t0 = time.perf_counter()
    params = _train(model, ds, args.epochs, jax.random.key(0))
    t_train = time.perf_counter() - t0
    xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    rng = np.random.default_rng(1)
    cidx = rng.choice(ds.n_train, args.calib_n, replace=False)
    calib, calib_y = jnp.asarray(ds.x_train[cidx]), jnp.asarray(ds.y_train[cidx])
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
    dense = fwd(params, xt)

    def acc(p):
        return float(jnp.mean(jnp.argmax(fwd(p, xt), -1) == yt))

    def logit_err(p):
        d = fwd(p, xt) - dense
        return float(jnp.linalg.norm(d) / jnp.linalg.norm(dense))

    print(f"machine: {_timing.machine()}")
    print(f"MLP {'-'.join(map(str, WIDTHS))} on mnist5k ({args.epochs} epochs, {t_train:.1f} s): "
          f"float test accuracy {acc(params):.4f}; calibration: {args.calib_n} training images "
          f"in chunks of {args.chunk}; asymmetric min/max grid; no retraining")
    print("logit err = ||f(X) - f̂(X)||_F / ||f(X)||_F on the test images; layer errs = "
          "||XW - XŴ||²/||XW||² (fc1, fc2, fc3) on the calibration inputs\n")
    hdr = (f"{'bits':>4} {'scales':>11} {'method':>6} {'test acc':>8} {'logit err':>9} "
           f"{'fc1 err':>8} {'fc2 err':>8} {'fc3 err':>8} {'seconds':>7}")
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for bits in args.bits:
        for label, g in (("per-channel", None), ("g16", 16), ("g128", 128)):
            groups = _group_rule(g)

            def run(bits=bits, groups=groups):
                return gptq_quantize(model.apply, {"params": params}, calib, bits=bits,
                                     group_size=groups, chunk_size=args.chunk)

            jax.block_until_ready(run().variables)
            t = time.perf_counter()
            res = run()
            jax.block_until_ready(res.variables)
            secs = time.perf_counter() - t
            pg = res.variables["params"]
            pr = _rtn(params, bits, groups)
            rtn_e = " ".join(f"{s.rtn_error:8.5f}" for s in res.layers)
            gptq_e = " ".join(f"{s.error:8.5f}" for s in res.layers)
            for name, p, errs, s in (("RTN", pr, rtn_e, ""), ("GPTQ", pg, gptq_e, f"{secs:7.2f}")):
                a, e = acc(p), logit_err(p)
                rows.append((bits, label, name, a, e))
                print(f"{bits:>4} {label:>11} {name:>6} {a:8.4f} {e:9.4f} {errs} {s:>7}")

    # ------------------------------------------------------------------ mixed precision
    ce = jax.jit(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, calib), calib_y).mean())
    sens = quantization_sensitivity(
        ce, params, bits=(2, 3, 4, 8),
        quantizer=lambda w, b: round_to_nearest(w, bits=b))
    n_weights = sum(int(np.prod(params[n]["kernel"].shape)) for n in LAYERS)
    budget = n_weights * args.mp_bits / 8
    pol = mixed_precision_search(sens, budget_bytes=budget, method="exact")
    print(f"\nmixed precision: {sens}\n\nexact search, budget {budget:,.0f} bytes "
          f"({args.mp_bits:g} bits per weight on average):\n{pol.table()}\n")
    print(f"{'assignment':>28} {'bytes':>8} {'method':>6} {'test acc':>8} {'logit err':>9}")
    lo, hi = int(np.floor(args.mp_bits)), int(np.ceil(args.mp_bits))
    layer_bits = "/".join(str(pol.layer_bits[f"{n}/kernel"]) for n in LAYERS)
    cases = [(f"uniform {b}-bit", {f"{n}/kernel": b for n in LAYERS}) for b in sorted({lo, hi})]
    cases.insert(1, (f"mixed {layer_bits}", dict(pol.layer_bits)))
    for label, b in cases:
        size = sum(int(np.prod(params[n]["kernel"].shape)) * b[f"{n}/kernel"] for n in LAYERS) / 8
        gp = gptq_quantize(model.apply, {"params": params}, calib, bits=b,
                           chunk_size=args.chunk).variables["params"]
        for name, p in (("RTN", _rtn(params, b, None)), ("GPTQ", gp)):
            print(f"{label:>28} {size:8.0f} {name:>6} {acc(p):8.4f} {logit_err(p):9.4f}")


if __name__ == "__main__":
    main()
