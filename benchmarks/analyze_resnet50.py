"""Benchmark: ``jaxcomp.metrics.analyze`` on ResNet-50 (224x224, batch 1).

Goal: analyze (excluding the XLA compile it reports separately) under 10 s
on 2 CPU cores. Printed side by side, in one run, against two baselines:

* ``make_jaxpr``: tracing the model alone, the floor any jaxpr-based counter
  pays;
* ``xla compile``: lowering + compiling for XLA's own cost analysis, what a
  counter built on ``compiled.cost_analysis()`` pays.

Three analyze modes: abstract parameters (shapes only), concrete dense
parameters, and concrete parameters with 90% of every conv kernel zeroed
(densities measured from the weights).

Run: ``python benchmarks/analyze_resnet50.py [--repeat 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxcomp import metrics, models


def _best(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    spec = models.get_model("resnet50")
    abstract = spec.eval_init(1)
    concrete = spec.init(jax.random.key(0))
    pruned = jax.tree_util.tree_map_with_path(
        lambda kp, w: jnp.where(
            jax.random.uniform(jax.random.key(len(kp)), w.shape) < 0.9, 0.0, w
        ) if w.ndim == 4 else w,
        concrete,
    )
    x_abs = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    x = jnp.ones((1, 224, 224, 3))

    def fresh():
        # A new function object each time, so no trace or compile cache is hit.
        return lambda v, x: spec.apply_fn(v, x)


    rows = []
    t_trace, _, _ = _best(lambda: jax.make_jaxpr(fresh())(abstract, x_abs), args.repeat)
    rows.append(("make_jaxpr (baseline)", t_trace, None))
    t_xla, _, _ = _best(
        lambda: jax.jit(fresh()).lower(abstract, x_abs).compile().cost_analysis(), args.repeat
    )
    rows.append(("XLA lower+compile+cost_analysis (baseline)", t_xla, None))
    for label, v, xx in (("abstract", abstract, x_abs), ("dense", concrete, x),
                         ("90% pruned convs", pruned, x)):
        t, _, a = _best(lambda v=v, xx=xx: metrics.analyze(fresh(), v, xx, compile=False), args.repeat)
        rows.append((f"analyze, {label} (no compile)", t, a))

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, best of {args.repeat}")
    print(f"{'what':52s} {'seconds':>9s} {'/ make_jaxpr':>13s} {'/ XLA':>7s}  MACs / effective")
    for label, t, a in rows:
        extra = "" if a is None else f"  {a.macs:,} / {a.effective_macs:,.0f}"
        print(f"{label:52s} {t:9.3f} {t / t_trace:13.2f} {t / t_xla:7.2f}{extra}")
    worst = max(t for label, t, a in rows if a is not None)
    print(f"goal: analyze < 10 s on 2 cores -> worst mode {worst:.2f} s "
          f"({'met' if worst < 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
