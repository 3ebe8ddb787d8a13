"""Benchmark: sort-free exact pruning thresholds against sort, top-k and jaxpruner's argsort.

What is measured. Inputs: float32 arrays drawn from N(0, 1) with the shapes
of a registered model's parameters (``--model``, default ``resnet50``: 161
leaves, of which the 54 with ``ndim >= 2`` — the kernels, 25,502,912
weights — are pruned; ``--quick`` uses ``vgg_small``: 9 kernels, 2.3 M
weights). Shapes come from ``jax.eval_shape`` of the model's init. Every
method is one ``jax.jit``-compiled function of the whole parameter tree that
returns one keep-mask per kernel (bool, or uint8 for jaxpruner) pruning
``--sparsity`` (default 0.9) of the weights. Each method is compiled ahead
of time (``jit(f).lower(...).compile()``; compile seconds are printed and
excluded from the times) and called ``--warmup`` times (default 1) untimed.
Then ``--rounds`` rounds (default 5) each run every method, in an order
rotated by one place per round; each call ends with
``jax.block_until_ready`` of its output. The two floors run 10 calls per
round and the jaxcomp methods 3 (a round's time is their mean), the
baselines one. Reported per method: the median and min–max of its per-round
times, and the median and min–max of per-round *ratios* (to the floor, and
each baseline's time over the jaxcomp variant computing the same masks, i.e.
jaxcomp's speed-up), which cancel most of a load change since both sides of
a ratio ran in the same round.

Methods, global scope (one threshold over all kernels):

* floor: one reduction pass, ``sum(|w|)`` over every kernel — the least any
  method that reads every weight once must pay; also one compare-and-write
  pass ``|w| > c`` producing the bool masks (what writing a mask costs);
* ``jaxcomp.prune.magnitude_mask(scope="global")``: bisection on float32 bit
  patterns, ties broken by index, exact count;
* ``magnitude_mask(scope="global", normalize="l2")``: the same after dividing
  each kernel's ``|w|`` by its L2 norm — the masks jaxpruner's global pruner
  computes;
* ``jnp.sort`` of the concatenated ``|w|``, threshold at the k-th smallest,
  keep ``|w| > t``;
* ``lax.top_k`` of the concatenated ``|w|`` for the kept count, keep
  ``|w| >= t`` with ``t`` the smallest kept value;
* jaxpruner's ``GlobalMagnitudePruning`` mask (re-implemented here, jaxpruner
  is not a dependency): scores ``|w|``, each kernel's scores divided by
  ``(||scores||_2 + 1e-8)`` (``use_normalization=True``, the default), the
  normalised scores of the kernels (sorted by path) concatenated, and
  ``jaxpruner.mask_calculator.topk_mask_calculator`` on them: ``num_ones =
  max(1, round(size * (1 - sparsity)))``, ``i = argsort(-scores)[num_ones -
  1]``, keep ``scores >= scores[i]`` and, among ties at that value, flat
  indices ``<= i``, as uint8, under ``lax.cond(sparsity == 0, ones, ...)``;
  the flat mask is then split back into the kernels' shapes. The sparsity
  is passed as a traced float32 scalar, as jaxpruner's jitted mask
  calculator receives it (so ``size * (1 - sparsity)`` is float32). Source:
  google-research/jaxpruner, ``jaxpruner/algorithms/global_pruners.py``
  (``GlobalPruningMixin.create_masks``), ``jaxpruner/mask_calculator.py``
  (``_topk_mask_calculator_internal``), ``jaxpruner/algorithms/pruners.py``
  (``MagnitudePruning.calculate_scores``).

Layerwise scope (one threshold per kernel, same sparsity everywhere):
``magnitude_mask`` (default scope) against ``jnp.sort`` per kernel,
``lax.top_k`` per kernel, and jaxpruner's per-kernel ``topk_mask_calculator``
(its ``MagnitudePruning`` with the uniform sparsity distribution).

Agreement is checked and printed: which weights each baseline's masks differ
in from the jaxcomp masks of the same problem, and how many each prunes.

Run: ``python benchmarks/prune_threshold.py [--rounds 5] [--sparsity 0.9]
[--model resnet50 | --quick]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import _timing  # benchmarks/_timing.py (the script's own folder is on sys.path)
import jax
import jax.numpy as jnp
from jax import lax

import jaxcomp.prune as jp
from jaxcomp import models

_EPS = 1e-8  # jaxpruner GlobalPruningMixin.normalization_eps


def _kernels(p):
    return [x for x in jax.tree_util.tree_leaves(p) if x.ndim >= 2]


def _jaxpruner_topk(scores, sparsity):
    """jaxpruner's unstructured top-k mask of one score array (uint8, 1 = kept)."""

    def internal(scores, sparsity):
        flat = scores.reshape(-1)
        num_ones = jnp.maximum(1, jnp.round(flat.size * (1 - sparsity)).astype(int))
        i = jnp.argsort(-flat)[num_ones - 1]
        t = flat[i]
        by_index = (jnp.arange(flat.size) <= i) | (flat != t)
        return ((scores >= t) & by_index.reshape(scores.shape)).astype(jnp.uint8)

    return lax.cond(sparsity == 0, lambda s, _: jnp.ones_like(s, jnp.uint8), internal,
                    scores, sparsity)


def _jaxpruner_global(params, sparsity):
    """jaxpruner's GlobalMagnitudePruning masks (normalised scores, one argsort)."""
    ws = _kernels(params)  # dict leaves flatten in sorted-key order, as jaxpruner sorts paths
    normed = [jnp.abs(w) / (jnp.linalg.norm(jnp.abs(w)) + _EPS) for w in ws]
    flat = _jaxpruner_topk(jnp.concatenate([s.ravel() for s in normed]), sparsity)
    out, i = [], 0
    for w in ws:
        out.append(flat[i:i + w.size].reshape(w.shape))
        i += w.size
    return out


def _row(name, t, floor, base=None):
    med = statistics.median(t) * 1e3
    cells = [f"{name:<46}", f"{med:9.1f}", f"{min(t) * 1e3:8.1f}–{max(t) * 1e3:<8.1f}",
             f"{_timing.fmt_ratio(_timing.ratio_stats(t, floor), 1):>20}"]
    if base is not None:
        cells.append(f"{_timing.fmt_ratio(_timing.ratio_stats(t, base), 2):>18}")
    return " ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per method")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--model", default="resnet50", help="registered model whose shapes to use")
    ap.add_argument("--quick", action="store_true", help="vgg_small's shapes (2.3 M weights)")
    args = ap.parse_args()
    s = args.sparsity
    name = "vgg_small" if args.quick else args.model

    spec = models.get_model(name)
    shapes = jax.eval_shape(lambda k: spec.init(k, jit=False), jax.random.key(0))["params"]
    flat, treedef = jax.tree_util.tree_flatten(shapes)
    key = jax.random.key(0)
    leaves = [jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
              for i, x in enumerate(flat)]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    kernels = _kernels(params)
    n = sum(x.size for x in kernels)
    k_glob = jp.num_pruned(s, n)
    print(f"machine: {_timing.machine()}")
    print(f"{name} tree: {len(leaves)} leaves, {len(kernels)} kernels (ndim >= 2) with {n:,} "
          f"float32 N(0,1) weights (all params {sum(x.size for x in leaves):,}); sparsity {s}; "
          f"{args.rounds} interleaved rounds, compile excluded, block_until_ready per call\n")

    kw = {"check_finite": False}
    fns = {
        "floor": jax.jit(lambda p: sum(jnp.sum(jnp.abs(w)) for w in _kernels(p))),
        "write": jax.jit(lambda p, c: [jnp.abs(w) > c for w in _kernels(p)]),
        "jc_glob": jax.jit(lambda p: jp.magnitude_mask(p, s, scope="global", **kw)),
        "jc_glob_l2": jax.jit(lambda p: jp.magnitude_mask(p, s, scope="global",
                                                          normalize="l2", **kw)),
        "jc_layer": jax.jit(lambda p: jp.magnitude_mask(p, s, **kw)),
    }

    @jax.jit
    def sort_global(p):
        ws = _kernels(p)
        t = jnp.sort(jnp.concatenate([jnp.abs(w).ravel() for w in ws]))[k_glob - 1]
        return [jnp.abs(w) > t for w in ws]

    @jax.jit
    def topk_global(p):
        ws = _kernels(p)
        t = lax.top_k(jnp.concatenate([jnp.abs(w).ravel() for w in ws]), n - k_glob)[0][-1]
        return [jnp.abs(w) >= t for w in ws]

    @jax.jit
    def sort_layer(p):
        return [jnp.abs(w) > jnp.sort(jnp.abs(w).ravel())[jp.num_pruned(s, w.size) - 1]
                for w in _kernels(p)]

    @jax.jit
    def topk_layer(p):
        return [jnp.abs(w) >= lax.top_k(jnp.abs(w).ravel(), w.size - jp.num_pruned(s, w.size))
                [0][-1] for w in _kernels(p)]

    fns.update(sort_glob=sort_global, topk_glob=topk_global,
               jxp_glob=jax.jit(_jaxpruner_global),
               sort_layer=sort_layer, topk_layer=topk_layer,
               jxp_layer=jax.jit(lambda p, sp: [_jaxpruner_topk(jnp.abs(w), sp)
                                                for w in _kernels(p)]))
    sp = jnp.float32(s)
    fargs = {k: (params,) for k in fns}
    fargs.update(write=(params, jnp.float32(1.0)), jxp_glob=(params, sp), jxp_layer=(params, sp))
    compiled, compile_s = {}, {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        compiled[k] = f.lower(*fargs[k]).compile()
        compile_s[k] = time.perf_counter() - t0
    calls = {k: (lambda k=k: compiled[k](*fargs[k])) for k in fns}
    out: dict = {}
    inner = {"floor": 10, "write": 10, "jc_glob": 3, "jc_glob_l2": 3, "jc_layer": 3}
    t = _timing.interleaved(calls, args.rounds, warmup=args.warmup, inner=inner, results=out)
    fl = t["floor"]

    hdr = (f"{'method':<46} {'median ms':>9} {'min–max ms':^17} {'× floor, med (range)':>20} "
           f"{'÷ jaxcomp, med (range)':>18}")
    print("GLOBAL (one threshold over all kernels)")
    print(hdr)
    print(_row("floor: sum(|w|), one reduction pass", fl, fl))
    print(_row("floor: |w| > c, one compare-and-write pass", t["write"], fl))
    print(_row("jaxcomp magnitude_mask(scope='global')", t["jc_glob"], fl))
    print(_row("  jnp.sort of concatenated |w|", t["sort_glob"], fl, t["jc_glob"]))
    print(_row("  lax.top_k of concatenated |w|", t["topk_glob"], fl, t["jc_glob"]))
    print(_row("jaxcomp magnitude_mask(global, normalize='l2')", t["jc_glob_l2"], fl))
    print(_row("  jaxpruner GlobalMagnitudePruning (argsort)", t["jxp_glob"], fl,
               t["jc_glob_l2"]))
    print("\nLAYERWISE (one threshold per kernel)")
    print(hdr)
    print(_row("jaxcomp magnitude_mask (layerwise)", t["jc_layer"], fl))
    print(_row("  jnp.sort per kernel", t["sort_layer"], fl, t["jc_layer"]))
    print(_row("  lax.top_k per kernel", t["topk_layer"], fl, t["jc_layer"]))
    print(_row("  jaxpruner topk_mask_calculator per kernel", t["jxp_layer"], fl,
               t["jc_layer"]))
    print("(÷ jaxcomp = baseline time / jaxcomp time in the same round: the speed-up of "
          "jaxcomp over that baseline)")
    print("compile seconds (excluded above): " + ", ".join(
        f"{k} {v:.1f}" for k, v in compile_s.items()))

    # Agreement with the jaxcomp masks of the same problem.
    def diff(a, b):
        return sum(int((x.astype(bool) != y.astype(bool)).sum()) for x, y in zip(a, b))

    def pruned(m):
        return sum(int((~m_.astype(bool)).sum()) for m_ in m)

    absw = jnp.concatenate([jnp.abs(w).ravel() for w in kernels])
    t_val = float(jp.kth_smallest(absw, k_glob))
    ties = sum(int((jnp.abs(w) == t_val).sum()) for w in kernels)
    g, g2, lw = (_kernels(out[k]) for k in ("jc_glob", "jc_glob_l2", "jc_layer"))
    print(f"\nagreement (global target: {k_glob:,} pruned; {ties} weights tied at the "
          f"global threshold):")
    print(f"  jaxcomp global pruned {pruned(g):,}; sort differs in {diff(g, out['sort_glob'])} "
          f"weights (pruned {pruned(out['sort_glob']):,}); top_k differs in "
          f"{diff(g, out['topk_glob'])} (pruned {pruned(out['topk_glob']):,})")
    print(f"  jaxcomp global l2 pruned {pruned(g2):,}; jaxpruner differs in "
          f"{diff(g2, out['jxp_glob'])} weights (pruned {pruned(out['jxp_glob']):,})")
    print(f"  jaxcomp layerwise pruned {pruned(lw):,}; sort differs in "
          f"{diff(lw, out['sort_layer'])}, top_k in {diff(lw, out['topk_layer'])}, jaxpruner "
          f"in {diff(lw, out['jxp_layer'])}")

if __name__ == "__main__":
    main()
