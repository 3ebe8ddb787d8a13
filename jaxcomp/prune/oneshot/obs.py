"""One-shot layer-wise pruning with calibration data: OBS / SparseGPT reconstruction.

For a Dense layer ``y = x @ W`` (Flax layout ``W: (in, out)``) and calibration
inputs ``X: (n, in)``, pruning is posed as layer-wise reconstruction: find a
sparse ``Ŵ`` minimising ``||X W - X Ŵ||²``. Every output column is an
independent least-squares problem sharing the Hessian ``H = 2 XᵀX / n``.

* :func:`obs_remove` — the exact Optimal Brain Surgeon step for one input
  index: ``δ = -w_q / [H⁻¹]_qq · H⁻¹[:, q]``, loss increase
  ``w_q² / (2 [H⁻¹]_qq)`` (the oracle the solver is built from).
* :func:`sparsegpt_prune` — SparseGPT's approximate OBS for a whole kernel:
  inputs are eliminated one at a time in a fixed order, the error of each
  pruned weight is spread onto the not-yet-processed inputs through the
  upper Cholesky factor of ``H⁻¹`` (so no inverse is ever re-computed), and
  updates to later inputs are applied lazily once per block of
  ``blocksize`` inputs. The mask is chosen per block (adaptive mask
  selection) by the OBS saliency ``w² / [chol(H⁻¹)]_qq²``, or per group of
  ``m`` for N:M patterns.
* :func:`init_hessian` / :func:`accumulate_hessian` / :func:`layer_hessian`
  — streaming ``H`` over calibration chunks (from :mod:`jaxcomp.ops.hessian`,
  shared with the quantization family, and re-exported here).
* :func:`jaxcomp.prune.oneshot.obs_model.obs_prune` — the model-level driver
  (see its docstring for the memory bound).

Convolutions are handled by im2col (:func:`conv_patches`, also from
:mod:`jaxcomp.ops.hessian`): a Flax ``Conv``
kernel ``(*k, cin, cout)`` is the Dense kernel ``(cin·prod(k), cout)`` acting
on patches whose features are ordered channel-major (``lax``'s patch
layout); grouped convolutions (``feature_group_count > 1``) are rejected.

References:
  Hassibi & Stork, Second order derivatives for network pruning: Optimal
  Brain Surgeon (NeurIPS 1993). Frantar & Alistarh, SparseGPT: massive
  language models can be accurately pruned in one-shot, arXiv:2301.00774.
  Frantar, Singh & Alistarh, Optimal Brain Compression, arXiv:2208.11580.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.errors import check_in_range
from jaxcomp.ops.hessian import (
    HessianState,
    accumulate_hessian,
    check_solver_args,
    check_solver_flags,
    conv_kernel_2d,
    conv_kernel_nd,
    conv_patches,
    init_hessian,
    layer_hessian,
    reconstruction_error,
    rel_error_from_hessian,
)
from jaxcomp.ops.kth import bottomk_mask_unsharded, num_pruned
from jaxcomp.prune.patterns import NM, Unstructured, as_pattern, nm_keep

__all__ = [
    "HessianState",
    "accumulate_hessian",
    "conv_kernel_2d",
    "conv_kernel_nd",
    "conv_patches",
    "init_hessian",
    "layer_hessian",
    "obs_remove",
    "reconstruction_error",
    "rel_error_from_hessian",
    "sparsegpt_prune",
]


# ----------------------------------------------------------------------------- OBS / SparseGPT


def _check_kernel(w: jax.Array, hessian: jax.Array, path: str) -> None:
    if w.ndim != 2:
        raise ValueError(
            f"parameter '{path}': sparsegpt_prune needs a 2-d Dense kernel (in, out), got shape "
            f"{tuple(w.shape)}; reshape conv kernels with conv_patches / im2col first"
        )
    if hessian.shape != (w.shape[0], w.shape[0]):
        raise ValueError(
            f"parameter '{path}': hessian has shape {tuple(hessian.shape)} but the kernel "
            f"{tuple(w.shape)} has {w.shape[0]} inputs; pass the ({w.shape[0]}, {w.shape[0]}) "
            "Hessian 2XᵀX/n of this layer's inputs"
        )


def obs_remove(w: jax.typing.ArrayLike, hessian: jax.typing.ArrayLike, index: int
               ) -> tuple[jax.Array, jax.Array]:
    """Exact OBS: removes input ``index`` of every output column and re-fits the rest.

    With ``H = 2XᵀX/n`` (invertible) and ``E(Ŵ) = ||X W - X Ŵ||² / n``, the
    optimal update of column ``w`` after zeroing ``w_q`` is
    ``δ = -w_q / [H⁻¹]_qq · H⁻¹[:, q]`` and the error grows by
    ``w_q² / (2 [H⁻¹]_qq)``, which is never more than zeroing ``w_q`` alone.

    Args:
      w: kernel ``(in,)`` or ``(in, out)``.
      hessian: ``(in, in)``, positive definite.
      index: the input to remove.

    Returns:
      ``(w_new, loss_increase)`` with ``w_new[index] == 0`` and one loss per
      output column.

    Example:
      >>> import jax.numpy as jnp
      >>> w_new, loss = obs_remove(jnp.array([1.0, 2.0]), jnp.array([[2.0, 1.0], [1.0, 2.0]]), 0)
      >>> w_new.tolist(), round(float(loss[0]), 4)
      ([0.0, 2.5], 0.75)

    References:
      Hassibi & Stork 1993 (Optimal Brain Surgeon).
    """
    w = jnp.asarray(w, jnp.float32)
    vec = w.ndim == 1
    w2 = w[:, None] if vec else w
    hinv = jnp.linalg.inv(jnp.asarray(hessian, jnp.float32))
    d = hinv[index, index]
    wq = w2[index]
    w_new = w2 - hinv[:, index:index + 1] * (wq / d)[None, :]
    w_new = w_new.at[index].set(0.0)
    loss = wq ** 2 / (2.0 * d)
    return (w_new[:, 0] if vec else w_new), loss


def _block_counts(sparsity: float, n_in: int, out: int, bs: int) -> tuple[int, ...]:
    """Per-block prune counts whose sum is exactly ``round(sparsity * n_in * out)``."""
    ks, prev = [], 0
    for i2 in range(bs, n_in + bs, bs):
        cum = num_pruned(sparsity, min(i2, n_in) * out)
        ks.append(cum - prev)
        prev = cum
    return tuple(ks)


@functools.partial(jax.jit, static_argnames=("bs", "nm"))
def _sparsegpt_kernel(w_in, h, percdamp, ks, *, bs, nm):
    # wt: (out, in) -- the paper's layout: inputs are the columns, processed in order.
    # The inputs are padded to whole blocks (padding: zero weights, identity Hessian, never
    # pruned) so one scan body serves every block and compile time does not grow with depth.
    wt = w_in.astype(jnp.float32).T
    h_ok = jnp.all(jnp.isfinite(h))
    out, n_in = wt.shape
    nb = -(-n_in // bs)
    n_pad = nb * bs
    eye = jnp.eye(n_in, dtype=jnp.float32)
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(dead.astype(jnp.float32))
    h = h + percdamp * jnp.mean(jnp.diag(h)) * eye
    hinv = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), eye)
    u = jnp.linalg.cholesky(hinv).T  # upper: H⁻¹ = UᵀU
    extra = n_pad - n_in
    u = jnp.pad(u, ((0, extra), (0, extra))) + jnp.diag(jnp.arange(n_pad) >= n_in)
    w = jnp.pad(wt, ((0, 0), (0, extra)))
    dead = jnp.pad(dead, (0, extra))
    padded = jnp.arange(n_pad) >= n_in
    cols = jnp.arange(n_pad)

    def body(i, carry, u1, d1, dead1):
        w1, err1, keep1 = carry
        if nm is not None:
            n, m, along_in = nm
            if along_in:  # groups of m consecutive inputs: chosen lazily, group by group
                g = (i // m) * m
                blk = lax.dynamic_slice_in_dim(w1, g, m, axis=1)
                dg = lax.dynamic_slice_in_dim(d1, g, m)
                dd = lax.dynamic_slice_in_dim(dead1, g, m)
                sc = jnp.where(dd[None, :], 0.0, blk ** 2 / dg[None, :] ** 2)
                new = lax.dynamic_update_slice_in_dim(keep1, nm_keep(sc, n, m), g, axis=1)
                keep1 = jnp.where(i % m == 0, new, keep1)
            else:  # groups of m outputs for this input: magnitude after the updates so far
                col = lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
                kc = nm_keep(jnp.abs(col).reshape(-1, m), n, m).reshape(-1)
                keep1 = lax.dynamic_update_index_in_dim(keep1, kc, i, axis=1)
        col = lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
        kcol = lax.dynamic_index_in_dim(keep1, i, axis=1, keepdims=False)
        e = jnp.where(kcol, 0.0, col) / d1[i]
        w1 = w1 - e[:, None] * u1[i][None, :]  # U is upper: columns < i are untouched
        err1 = lax.dynamic_update_index_in_dim(err1, e, i, axis=1)
        return w1, err1, keep1

    def block(w, b):
        i1 = b * bs
        w1 = lax.dynamic_slice_in_dim(w, i1, bs, axis=1)
        u1 = lax.dynamic_slice(u, (i1, i1), (bs, bs))
        d1 = jnp.diag(u1)
        dead1 = lax.dynamic_slice_in_dim(dead, i1, bs)
        if nm is None:
            score = jnp.where(dead1[None, :], 0.0, w1 ** 2 / d1[None, :] ** 2)
            score = jnp.where(lax.dynamic_slice_in_dim(padded, i1, bs)[None, :], jnp.inf, score)
            keep1 = ~bottomk_mask_unsharded(score, ks[b])
        else:
            keep1 = jnp.ones_like(w1, dtype=bool)
        w1, err1, keep1 = lax.fori_loop(
            0, bs, functools.partial(body, u1=u1, d1=d1, dead1=dead1),
            (w1, jnp.zeros_like(w1), keep1))
        w = lax.dynamic_update_slice_in_dim(w, jnp.where(keep1, w1, 0.0), i1, axis=1)
        # Lazy update of all later inputs at once (rows of U: zero left of the block).
        delta = err1 @ lax.dynamic_slice_in_dim(u, i1, bs, axis=0)
        w = w - jnp.where(cols[None, :] >= i1 + bs, delta, 0.0)
        return w, keep1

    w, keeps = lax.scan(block, w, jnp.arange(nb))
    keep = jnp.transpose(keeps, (1, 0, 2)).reshape(out, n_pad)
    w = w[:, :n_in]
    return w.T.astype(w_in.dtype), keep[:, :n_in].T, h_ok, jnp.all(jnp.isfinite(w))


def sparsegpt_prune(
    w: jax.typing.ArrayLike,
    hessian: jax.typing.ArrayLike,
    sparsity: float | None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    pattern: Any = None,
    path: str = "kernel",
) -> tuple[jax.Array, jax.Array]:
    """Prunes a Dense kernel by SparseGPT's column-wise OBS with lazy block updates.

    Args:
      w: kernel ``(in, out)`` (Flax layout).
      hessian: ``(in, in)``, ``2XᵀX/n`` of the layer's calibration inputs
        (:func:`layer_hessian`). Inputs that are always zero (``H_qq = 0``)
        cost nothing to prune and are pruned first.
      sparsity: fraction of the kernel pruned, in ``[0, 1)``: exactly
        ``round(sparsity * size)`` weights, chosen block by block. With an
        N:M pattern pass ``None`` (or ``1 - n/m``).
      blocksize: inputs per lazy-update block (mask chosen per block); with
        N:M along the inputs it is rounded down to a multiple of ``m``.
      percdamp: ``λ = percdamp · mean(diag H)`` is added to the diagonal.
      pattern: ``None``/``"unstructured"``, or ``NM(n, m, axis)``/``"n:m"``:
        ``axis=-2`` groups ``m`` consecutive *inputs* per output (SparseGPT's
        and the 2:4 hardware layout; mask chosen lazily per group),
        ``axis=-1`` groups ``m`` outputs per input.
      path: the parameter's name in error messages.

    Returns:
      ``(w_pruned, keep_mask)``, both ``(in, out)``; pruned weights are exactly 0.

    Raises:
      ValueError: sparsity outside ``[0, 1)``, shape mismatch, non-finite
        Hessian, or a Hessian that stays singular (raise ``percdamp``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> w = jax.random.normal(jax.random.key(1), (8, 4))
      >>> w2, keep = sparsegpt_prune(w, layer_hessian(x), 0.5)
      >>> int(keep.sum()), bool(jnp.all(w2[~keep] == 0))
      (16, True)

    References:
      Frantar & Alistarh, SparseGPT, arXiv:2301.00774; Hassibi & Stork 1993.
    """
    w = jnp.asarray(w)
    h = jnp.asarray(hessian, jnp.float32)
    _check_kernel(w, h, path)
    pat = as_pattern(pattern)
    check_solver_args(percdamp, blocksize, path)
    n_in, out = w.shape
    nm = None
    if isinstance(pat, NM):
        pat.check(tuple(w.shape), path)
        if sparsity is not None and not np.isclose(float(sparsity), pat.sparsity):
            raise ValueError(f"parameter '{path}': {pat} prunes exactly {pat.sparsity:g}; got "
                             f"sparsity={sparsity!r}. Pass sparsity=None with an N:M pattern.")
        along_in = pat.axis % 2 == 0
        nm = (pat.n, pat.m, along_in)
        bs = max(blocksize // pat.m, 1) * pat.m if along_in else blocksize
        bs = min(bs, -(-n_in // pat.m) * pat.m if along_in else n_in)
        ks = jnp.zeros((1,), jnp.int32)
    elif isinstance(pat, Unstructured):
        if sparsity is None:
            raise ValueError(f"parameter '{path}': sparsity=None needs an N:M pattern; pass a "
                             "fraction in [0, 1)")
        check_in_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False, where=path)
        bs = min(blocksize, n_in)
        ks = jnp.asarray(_block_counts(float(sparsity), n_in, out, bs), jnp.int32)
    else:
        raise TypeError(f"parameter '{path}': sparsegpt_prune supports unstructured and N:M "
                        f"patterns, got {pat}")
    w_new, keep, h_ok, w_ok = _sparsegpt_kernel(w, h, jnp.float32(percdamp), ks, bs=bs, nm=nm)
    check_solver_flags(h_ok, w_ok, percdamp, path)
    return w_new, keep
