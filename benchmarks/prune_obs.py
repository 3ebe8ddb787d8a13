"""Benchmark: one-shot SparseGPT (OBS reconstruction) vs magnitude pruning, no retraining.

Model: LeNet-300-100 (784-300-100-10) trained briefly on the offline MNIST
5k subset (``jaxcomp.data.mnist5k``: 4,000 train / 1,000 test). Calibration:
``--calib-n`` training images (``--calib random`` uses Gaussian noise of the
same shape instead, to show what uninformative calibration data does).

For each sparsity (every kernel pruned to it, layerwise) and 2:4:

* test accuracy after one-shot pruning, no retraining;
* the squared relative layer-output reconstruction error
  ``||XW - XŴ||²_F / ||XW||²_F`` of every layer on the calibration inputs it
  sees in the sequentially pruned model (the same inputs for both methods,
  from ``ObsLayerStats``);
* the squared relative logit error on the 1,000 *test* images (not the
  calibration data the solver fitted): ``||f(X) - f̂(X)||²_F / ||f(X)||²_F``
  with ``f(X)`` the dense model's ``(1000, 10)`` logits and ``f̂`` the pruned
  model's, sums over all images and classes;
* runtime, in seconds: ``obs_prune`` vs ``magnitude_mask`` + applying the
  masks (eager, as a one-shot user call runs them). After one untimed call
  of each (the ``obs_prune`` one, with its compiles, is printed), ``--rounds``
  rounds (default 5) alternate the two methods (order rotated per round),
  each call ending with ``jax.block_until_ready``; the median over rounds is
  printed.

It also prints the driver's peak extra memory estimate (one layer's
Hessian, inverse and Cholesky factor, plus one chunk of that layer's
inputs) next to holding every layer's calibration inputs at once.

Run: ``python benchmarks/prune_obs.py [--epochs 8] [--calib-n 1024] [--chunk 256]
[--rounds 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcomp.data import mnist5k
from jaxcomp.models import get_model
from jaxcomp.prune import NM, magnitude_mask, obs_prune


def _train(spec, ds, epochs, key):
    v = spec.init(key)
    params = v["params"]
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    def loss_fn(p, x, y):
        logits = spec.apply_fn(p, x)
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


def _acc(spec, params, x, y):
    return float(jnp.mean(jnp.argmax(spec.apply_fn(params, x), -1) == y))


def _logit_err(spec, params, dense_logits, x):
    """||f(x) - f̂(x)||²_F / ||f(x)||²_F over all rows of x and all logits."""
    d = spec.apply_fn(params, x) - dense_logits
    return float(jnp.sum(d * d) / jnp.sum(dense_logits * dense_logits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--calib-n", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--calib", choices=("mnist", "random"), default="mnist")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    ds = mnist5k()
    spec = get_model("lenet300")
    t0 = time.perf_counter()
    params = _train(spec, ds, args.epochs, jax.random.key(0))
    t_train = time.perf_counter() - t0
    xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    rng = np.random.default_rng(1)
    if args.calib == "mnist":
        calib = jnp.asarray(ds.x_train[rng.choice(ds.n_train, args.calib_n, replace=False)])
    else:
        calib = jnp.asarray(rng.standard_normal((args.calib_n, 784)), jnp.float32)
    dense_logits = spec.apply_fn(params, xt)
    base = _acc(spec, params, xt, yt)
    print(f"machine: {_timing.machine()}")
    print(f"LeNet-300-100 on mnist5k ({args.epochs} epochs, {t_train:.1f} s): dense test "
          f"accuracy {base:.4f}; calibration: {args.calib_n} {args.calib} inputs in chunks of "
          f"{args.chunk}")
    print("one-shot, no retraining; layer errs = ||XW - XŴ||²/||XW||² per layer (fc1, fc2, fc3) "
          f"on the calibration inputs; logit err = ||f(X) - f̂(X)||²/||f(X)||² on the "
          f"{len(yt)} test images; seconds = median (and min–max) of {args.rounds} interleaved rounds\n")
    hdr = (f"{'sparsity':>8} {'method':>10} {'test acc':>9} {'logit err':>10} "
           f"{'fc1 err':>8} {'fc2 err':>8} {'fc3 err':>8} {'seconds':>8} {'min–max s':>13}")
    print(hdr)
    print("-" * len(hdr))
    rows = [(s, None) for s in args.sparsities] + [(None, NM(2, 4, axis=-2))]
    for s, pat in rows:
        label = f"{s:.2f}" if s is not None else "2:4(in)"
        t = time.perf_counter()
        res = jax.block_until_ready(
            obs_prune(spec.apply_fn, params, calib, s, pattern=pat, chunk_size=args.chunk))
        t_first = time.perf_counter() - t

        def mag(s=s, pat=pat):
            m = magnitude_mask(params, s, where=r".*/kernel", pattern=pat or "unstructured")
            return jax.tree.map(lambda w, keep: jnp.where(keep, w, 0), params, m)

        def obs(s=s, pat=pat):
            return obs_prune(spec.apply_fn, params, calib, s, pattern=pat,
                             chunk_size=args.chunk).variables

        out = {}
        times = _timing.interleaved({"mag": mag, "obs": obs}, args.rounds, results=out)
        pm = out["mag"]
        t_mag, t_obs = (statistics.median(times[k]) for k in ("mag", "obs"))
        rng_mag, rng_obs = (f"{min(times[k]):.3f}–{max(times[k]):.3f}" for k in ("mag", "obs"))
        errs_o = " ".join(f"{st.error:8.4f}" for st in res.layers)
        errs_m = " ".join(f"{st.magnitude_error:8.4f}" for st in res.layers)
        print(f"{label:>8} {'magnitude':>10} {_acc(spec, pm, xt, yt):9.4f} "
              f"{_logit_err(spec, pm, dense_logits, xt):10.4f} {errs_m} {t_mag:8.3f} {rng_mag:>13}")
        print(f"{label:>8} {'sparsegpt':>10} {_acc(spec, res.variables, xt, yt):9.4f} "
              f"{_logit_err(spec, res.variables, dense_logits, xt):10.4f} {errs_o} "
              f"{t_obs:8.3f} {rng_obs:>13}  (first call {t_first:.2f} s incl. compile)")
    print("\n(magnitude layer errors are measured on the inputs of the SparseGPT-pruned "
          "model's earlier layers, i.e. the same X for both columns.)")

    widths = [784, 300, 100]
    f32 = 4
    per_layer = [3 * d * d * f32 + args.chunk * d * f32 for d in widths]
    unstreamed = [3 * d * d * f32 + args.calib_n * d * f32 for d in widths]
    everything = sum(unstreamed)
    print(f"\npeak extra memory estimate of obs_prune (largest layer: 3 d² floats for H, H⁻¹ "
          f"and chol(H⁻¹) + one chunk of {args.chunk} inputs): {max(per_layer) / 2**20:.2f} MiB"
          f"; without chunking: {max(unstreamed) / 2**20:.2f} MiB; all layers' Hessians and "
          f"inputs held at once: {everything / 2**20:.2f} MiB; model weights: "
          f"{266_610 * f32 / 2**20:.2f} MiB")

if __name__ == "__main__":
    main()
