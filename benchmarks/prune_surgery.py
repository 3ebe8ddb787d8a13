"""Benchmark: channel surgery turns channel masks into real savings.

``vgg_small`` (VGG-11 at half width, 32×32×3) with 50% of the output
channels of every convolution removed by smallest-L1-norm filter pruning
(``jaxcomp.prune.channel_mask`` per layer, as Li et al. 2017). Three models in
one run, with random BatchNorm statistics:

* dense: the original model;
* masked: the same shapes with the removed channels zeroed
  (``zero_channels``) — what mask-based channel pruning computes;
* surgered: ``remove_channels`` → the smaller variables, applied with
  ``vgg_small(cfg=new widths)``; its outputs equal the masked model's
  (checked).

Printed: params, analytic MACs, XLA FLOPs, and measured latency at batch 1
and batch 64, with speed-ups against the dense model.

Latency: each model's forward is one ``jax.jit``-compiled function of
(variables, input), float32, compiled ahead of time (compile excluded) and
called once untimed. Then, per batch size, ``--rounds`` rounds (default 15)
each run the three models in an order rotated by one place per round,
``--inner`` calls per model (default 5; each call ends with
``jax.block_until_ready``; the round's time is their mean). Reported: the
median over rounds of each model's time, and the median and min–max over
rounds of the per-round speed-up (dense time / model time in the same
round), so a load change during the run hits all three models alike.

Run: ``python benchmarks/prune_surgery.py [--rounds 15] [--inner 5] [--keep 0.5]``
"""

from __future__ import annotations

import argparse
import statistics

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import jax
import numpy as np

from jaxcomp import metrics
from jaxcomp.models import VGG_SMALL_CFG, get_model
from jaxcomp.prune import channel_mask, remove_channels, zero_channels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--keep", type=float, default=0.5)
    args = ap.parse_args()
    spec = get_model("vgg_small")
    v = spec.init(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(v)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    v = jax.tree.unflatten(treedef, [
        jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5) if x.ndim == 1 else x
        for k, x in zip(keys, leaves)])
    x1 = jax.random.normal(jax.random.key(2), (1, 32, 32, 3))
    f = lambda v, x: spec.apply_fn(v, x)
    convs = [k for k in v["params"] if k.startswith("conv")]
    masks = {}
    for c in convs:
        w = v["params"][c]["kernel"]
        keep = channel_mask(w, 1.0 - args.keep, axis=-1)
        masks[c] = np.asarray(keep).reshape(-1, w.shape[-1]).all(axis=0)
    res = remove_channels(f, v, masks, x1)
    widths = iter(res.widths[c] for c in sorted(convs, key=lambda s: int(s[4:])))
    cfg = tuple(c if c == "M" else next(widths) for c in VGG_SMALL_CFG)
    small = get_model("vgg_small", cfg=cfg)
    masked_v = zero_channels(f, v, masks, x1)
    np.testing.assert_allclose(np.asarray(small.apply_fn(res.variables, x1)),
                               np.asarray(f(masked_v, x1)), atol=1e-4, rtol=1e-4)
    models = {"dense": (f, v), "masked": (f, masked_v),
              "surgered": (lambda v, x: small.apply_fn(v, x), res.variables)}
    rows = {name: {"params": metrics.count_params(vv["params"])} for name, (_, vv) in
            models.items()}
    times = {}
    for b in (1, 64):
        x = jax.random.normal(jax.random.key(3), (b, 32, 32, 3))
        calls = {}
        for name, (fn, vv) in models.items():
            a = metrics.analyze(fn, vv, x)
            rows[name][b] = (a.macs / b, a.xla_flops, a.effective_macs / b)
            exe = jax.jit(fn).lower(vv, x).compile()
            calls[name] = lambda exe=exe, vv=vv, x=x: exe(vv, x)
        times[b] = _timing.interleaved(calls, args.rounds, inner=args.inner)
    print(f"machine: {_timing.machine()}")
    print(f"vgg_small, {int(args.keep * 100)}% of every conv's channels kept; new widths {cfg}")
    print("1 MAC = 2 FLOPs; XLA FLOPs from the compiled cost analysis; latency: median over "
          f"{args.rounds} interleaved rounds of the mean of {args.inner} calls; speed-up: median "
          "(min–max) over rounds of dense / model in the same round")
    d = rows["dense"]
    hdr = (f"{'model':10s} {'params':>10s} {'MACs/img':>12s} {'eff. MACs':>12s} "
           f"{'XLA GFLOP b64':>14s} {'lat b1 ms':>10s} {'lat b64 ms':>11s} "
           f"{'b1 speed-up':>20s} {'b64 speed-up':>20s}")
    print(hdr)
    for name, r in rows.items():
        up = [_timing.fmt_ratio(_timing.ratio_stats(times[b]["dense"], times[b][name]))
              for b in (1, 64)]
        print(f"{name:10s} {r['params']:>10,d} {r[1][0]:>12,.0f} {r[1][2]:>12,.0f} "
              f"{(r[64][1] or 0) / 1e9:>14.3f} {statistics.median(times[1][name]) * 1e3:>10.3f} "
              f"{statistics.median(times[64][name]) * 1e3:>11.2f} {up[0]:>20s} {up[1]:>20s}")
    print(f"XLA FLOPs ratio surgered/dense (batch 64): "
          f"{(rows['surgered'][64][1] or 0) / (d[64][1] or 1):.3f}; outputs of surgered == masked: "
          "checked (atol 1e-4)")


if __name__ == "__main__":
    main()
