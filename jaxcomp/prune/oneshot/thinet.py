"""Channel selection by reconstruction error of the next layer (ThiNet, LASSO channel pruning).

To remove output channels (filters) of layer ``i``, look at the layer that
consumes them: layer ``i+1`` computes ``Y = X W`` with ``X: (n, c_in)`` its
inputs and ``W: (c_in, c_out)`` (Flax layout). Removing input channel ``j``
drops its contribution ``z_j = X[:, j] W[j, :]``; the output error of
removing a set ``T`` is ``||Σ_{j∈T} z_j||²``. All of it is a function of the
channel Gram matrix ``G = (XᵀX) ∘ (W Wᵀ) / n`` (``c_in × c_in``; for a
convolution the im2col features of one channel are summed into one row), so
the calibration data are reduced to one ``XᵀX`` — streamed like the OBS
Hessian — and nothing larger than a layer's worth is held.

* ``method="greedy"`` (ThiNet): repeatedly remove the channel whose removal
  adds the least to ``||Σ_{j∈T} z_j||²``.
* ``method="lasso"`` (He et al.): minimise ``||Y - Σ β_j z_j||² + λ|β|₁``
  (channels normalised to unit ``||z_j||``) by FISTA, with ``λ`` searched by
  bisection until exactly the wanted number of coefficients survive
  (ties filled from the solution at the next smaller ``λ``).

Then the kept weights are refit (``refit="lstsq"``: least squares for every
kept weight, as in He et al.; ``"scale"``: one scale per kept channel, as in
ThiNet; ``None``: keep them).

:func:`thinet_prune` works on one consumer kernel (Dense, or Conv via
im2col); :func:`thinet_prune_layer` runs it inside a Flax model: it captures
the consumer's inputs on calibration data, refits the consumer and zeros the
producer's corresponding output channels (kernel column and bias). The
producer zeroing is exact when the activation between them maps 0 to 0
(ReLU, GELU, tanh) and nothing else (BatchNorm, residual additions) mixes in.

References:
  Luo, Wu & Lin, ThiNet: a filter level pruning method for deep neural
  network compression, arXiv:1707.06342. He, Zhang & Sun, Channel pruning
  for accelerating very deep neural networks, arXiv:1707.06168.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import check_in_range, list_paths
from jaxcomp.ops.kth import num_pruned
from jaxcomp.prune.oneshot import obs as obs_solver
from jaxcomp.prune.oneshot.calibration import calibration_chunks, layer_inputs, linen_layers
from jaxcomp.select.selection import flatten

__all__ = [
    "ChannelPruneResult",
    "channel_gram",
    "greedy_channel_selection",
    "lasso_channel_selection",
    "least_squares_refit",
    "thinet_prune",
    "thinet_prune_layer",
]

_METHODS = ("greedy", "lasso")
_REFITS = ("lstsq", "scale", None)


class ChannelPruneResult(NamedTuple):
    """Outcome of a channel selection for one consumer layer.

    Attributes:
      keep: ``(c_in,)`` bool, the consumer's kept input channels.
      kernel: the refit consumer kernel (same shape; pruned channels are 0).
      error: ``||XW - XŴ||² / ||XW||²`` after the refit, on the calibration data.
      error_no_refit: the same before refitting (pruned channels just dropped).
    """

    keep: jax.Array
    kernel: jax.Array
    error: float
    error_no_refit: float


def channel_gram(xtx: Any, w: Any, channel_of: Any = None) -> np.ndarray:
    """``G_jk = <z_j, z_k>`` for channels ``j, k``: ``(XᵀX ∘ W Wᵀ)`` summed per channel.

    Args:
      xtx: ``(d, d)`` second moment of the consumer's input features.
      w: ``(d, c_out)`` consumer kernel (im2col layout for convolutions).
      channel_of: ``(d,)`` channel index of every feature (default: identity).

    Example:
      >>> import numpy as np
      >>> channel_gram(np.eye(2), np.array([[1.0], [2.0]])).tolist()
      [[1.0, 0.0], [0.0, 4.0]]
    """
    a = np.asarray(xtx, np.float64)
    w = np.asarray(w, np.float64)
    g = a * (w @ w.T)
    if channel_of is None:
        return g
    ch = np.asarray(channel_of)
    s = np.zeros((g.shape[0], int(ch.max()) + 1))
    s[np.arange(g.shape[0]), ch] = 1.0
    return s.T @ g @ s


def greedy_channel_selection(gram: Any, n_prune: int) -> np.ndarray:
    """ThiNet's greedy step: remove, one at a time, the channel adding least error.

    The error of removing the set ``T`` is ``Σ_{j,k∈T} G_jk``; ties go to the
    lower index.

    Returns:
      ``(c,)`` bool keep-mask with exactly ``n_prune`` False entries.

    Example:
      >>> import numpy as np
      >>> greedy_channel_selection(np.diag([3.0, 1.0, 2.0]), 2).tolist()
      [True, False, False]
    """
    g = np.asarray(gram, np.float64)
    c = g.shape[0]
    removed = np.zeros(c, bool)
    cross = np.zeros(c)  # Σ_{k∈T} G_jk
    for _ in range(int(n_prune)):
        cost = np.where(removed, np.inf, np.diag(g) + 2.0 * cross)
        j = int(np.argmin(cost))
        removed[j] = True
        cross += g[:, j]
    return ~removed


def _fista(g: np.ndarray, b: np.ndarray, lam: float, beta: np.ndarray, lip: float,
           n_iter: int) -> np.ndarray:
    # minimise βᵀGβ - 2bᵀβ + λ|β|₁ ; gradient 2(Gβ - b), step 1/(2·lip)
    y, t = beta.copy(), 1.0
    for _ in range(n_iter):
        z = y - (g @ y - b) / lip
        new = np.sign(z) * np.maximum(np.abs(z) - lam / (2.0 * lip), 0.0)
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = new + ((t - 1.0) / t_new) * (new - beta)
        beta, t = new, t_new
    return beta


def lasso_channel_selection(gram: Any, n_keep: int, *, n_iter: int = 200,
                            n_search: int = 30) -> np.ndarray:
    """He et al.'s LASSO channel selection: exactly ``n_keep`` channels survive.

    Solves ``min_β ||Σ z_k - Σ β_j z_j||² + λ|β|₁`` on unit-norm channels, with
    ``λ`` bisected (on a log scale) between 0 and the value that zeros every
    ``β``. The channels nonzero at the smallest ``λ`` with at most ``n_keep``
    survivors are kept, completed by the largest ``|β|`` at the next smaller
    ``λ``. Channels with ``G_jj = 0`` contribute nothing and are dropped first.

    Example:
      >>> import numpy as np
      >>> lasso_channel_selection(np.diag([3.0, 0.1, 2.0]), 2).tolist()
      [True, False, True]
    """
    g = np.asarray(gram, np.float64)
    c = g.shape[0]
    n_keep = int(n_keep)
    diag = np.diag(g)
    live = diag > 0
    if n_keep >= c:
        return np.ones(c, bool)
    if n_keep <= 0:
        return np.zeros(c, bool)
    scale = np.where(live, 1.0 / np.sqrt(np.where(live, diag, 1.0)), 0.0)
    gn = g * scale[:, None] * scale[None, :]
    bn = scale * g.sum(axis=1)
    lip = max(float(np.linalg.eigvalsh(gn)[-1]), 1e-12)
    lam_hi = 2.0 * float(np.max(np.abs(bn))) + 1e-12
    lo, hi = np.log(lam_hi * 1e-8), np.log(lam_hi)
    beta_lo = _fista(gn, bn, np.exp(lo), np.zeros(c), lip, n_iter)  # many survivors
    beta_hi = np.zeros(c)
    if np.count_nonzero(beta_lo) <= n_keep:
        beta_hi = beta_lo
    else:
        warm = beta_lo
        for _ in range(n_search):
            mid = 0.5 * (lo + hi)
            beta = _fista(gn, bn, np.exp(mid), warm, lip, n_iter)
            if np.count_nonzero(beta) > n_keep:
                lo, beta_lo, warm = mid, beta, beta
            else:
                hi, beta_hi = mid, beta
                if np.count_nonzero(beta) == n_keep:
                    break
    keep = beta_hi != 0
    # Fill up: largest |β| at the smaller λ, then largest ||z_j||; never a dead channel first.
    cand = np.lexsort((-diag, -np.abs(beta_lo), ~live | keep))
    for j in cand[: n_keep - int(keep.sum())]:
        keep[j] = True
    return keep


def least_squares_refit(xtx: Any, w: Any, keep_features: Any, *, damp: float = 1e-8
                        ) -> np.ndarray:
    """``Ŵ_K = argmin ||X W - X_K Ŵ_K||²`` = ``(A_KK + δI)⁻¹ A_K: W``; zero rows elsewhere.

    Example:
      >>> import numpy as np
      >>> a = np.array([[1.0, 0.9], [0.9, 1.0]])
      >>> least_squares_refit(a, np.array([[1.0], [1.0]]), np.array([True, False])).round(2)
      array([[1.9],
             [0. ]])
    """
    a = np.asarray(xtx, np.float64)
    w = np.asarray(w, np.float64)
    k = np.asarray(keep_features, bool)
    out = np.zeros_like(w)
    if k.any():
        akk = a[np.ix_(k, k)]
        akk = akk + damp * max(float(np.mean(np.diag(a))), 1e-30) * np.eye(int(k.sum()))
        out[k] = np.linalg.solve(akk, a[k] @ w)
    return out


def _rel_err(a: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    dw = w - w_hat
    den = float(np.sum(w * (a @ w)))
    return float(np.sum(dw * (a @ dw))) / (den if den > 0 else 1.0)


def thinet_prune(
    w: jax.typing.ArrayLike,
    x: jax.typing.ArrayLike,
    sparsity: float,
    *,
    method: str = "greedy",
    refit: str | None = "lstsq",
    conv: nn.Conv | None = None,
    path: str = "kernel",
) -> ChannelPruneResult:
    """Prunes input channels of a consumer kernel by output reconstruction error.

    Args:
      w: consumer kernel: Dense ``(c_in, c_out)`` or Conv ``(*k, c_in, c_out)``.
      x: the consumer's calibration inputs: ``(..., c_in)`` for Dense, a
        batch ``(N, *spatial, c_in)`` for Conv.
      sparsity: fraction of input channels removed, ``round(sparsity·c_in)``.
      method: ``"greedy"`` (ThiNet) or ``"lasso"`` (He et al.).
      refit: ``"lstsq"``, ``"scale"`` or ``None`` (see the module docstring).
      conv: the ``nn.Conv`` module (for its strides/padding) when ``w`` is a
        conv kernel; its inputs are unfolded by im2col.
      path: the parameter's name in error messages.

    Returns:
      A :class:`ChannelPruneResult`.

    Raises:
      ValueError: bad sparsity/method/refit, NaN inputs, mismatched shapes.

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (64, 6))
      >>> w = jax.random.normal(jax.random.key(1), (6, 3))
      >>> r = thinet_prune(w, x, 0.5)
      >>> int(r.keep.sum()), r.error <= r.error_no_refit
      (3, True)

    References:
      Luo et al., arXiv:1707.06342; He et al., arXiv:1707.06168.
    """
    if method not in _METHODS:
        raise ValueError(f"method={method!r} must be one of {_METHODS} (parameter '{path}')")
    if refit not in _REFITS:
        raise ValueError(f"refit={refit!r} must be one of {_REFITS} (parameter '{path}')")
    check_in_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False, where=path)
    w = jnp.asarray(w)
    x = jnp.asarray(x, jnp.float32)
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"parameter '{path}': the calibration inputs contain NaN or Inf")
    if w.ndim == 2:
        if x.shape[-1] != w.shape[0]:
            raise ValueError(f"parameter '{path}': inputs have {x.shape[-1]} features but the "
                             f"kernel {tuple(w.shape)} expects {w.shape[0]}")
        feats, w2, per = x.reshape(-1, w.shape[0]), w, 1
    else:
        if conv is None:
            raise ValueError(f"parameter '{path}': a conv kernel {tuple(w.shape)} needs conv= "
                             "(the nn.Conv module) to unfold its inputs by im2col")
        if x.shape[-1] != w.shape[-2]:
            raise ValueError(f"parameter '{path}': inputs have {x.shape[-1]} channels but the "
                             f"kernel {tuple(w.shape)} expects {w.shape[-2]}")
        feats, w2 = obs_solver.conv_patches(x, conv, path=path), obs_solver.conv_kernel_2d(w)
        per = int(np.prod(w.shape[:-2]))
    c_in = w2.shape[0] // per
    a = np.asarray(obs_solver.layer_hessian(feats), np.float64) / 2.0  # XᵀX / n
    wn = np.asarray(w2, np.float64)
    channel_of = np.repeat(np.arange(c_in), per)  # im2col features are channel-major
    g = channel_gram(a, wn, channel_of)
    n_prune = num_pruned(sparsity, c_in)
    if method == "greedy":
        keep = greedy_channel_selection(g, n_prune)
    else:
        keep = lasso_channel_selection(g, c_in - n_prune)
    kf = np.repeat(keep, per)
    dropped = np.where(kf[:, None], wn, 0.0)
    if refit == "lstsq":
        new = least_squares_refit(a, wn, kf)
    elif refit == "scale":
        ks = np.flatnonzero(keep)
        r = np.zeros(c_in)
        if ks.size:
            gk = g[np.ix_(ks, ks)] + 1e-12 * np.eye(ks.size) * max(float(np.max(np.diag(g))), 1e-30)
            r[ks] = np.linalg.solve(gk, g[ks].sum(axis=1))
        new = dropped * np.repeat(r, per)[:, None]
    else:
        new = dropped
    kernel = jnp.asarray(new, w.dtype)
    if w.ndim != 2:
        kernel = obs_solver.conv_kernel_nd(kernel, tuple(w.shape))
    return ChannelPruneResult(jnp.asarray(keep), kernel, _rel_err(a, wn, new),
                              _rel_err(a, wn, dropped))


def thinet_prune_layer(
    apply_fn: Callable[..., Any],
    variables: Any,
    calib_x: Any,
    consumer: str,
    sparsity: float,
    *,
    producer: str | None = None,
    method: str = "greedy",
    refit: str | None = "lstsq",
    chunk_size: int | None = None,
) -> tuple[Any, ChannelPruneResult]:
    """Prunes the channels between two layers of a Flax linen model with calibration data.

    Args:
      apply_fn: ``apply_fn(variables, x)`` running linen modules.
      variables: ``{"params": ...}`` or a bare params tree.
      calib_x: calibration inputs ``(N, ...)`` or a list of chunks.
      consumer: module path of the layer whose *input* channels are pruned
        (e.g. ``"fc2"``); its kernel is refit.
      sparsity: fraction of channels removed.
      producer: module path of the layer producing those channels (e.g.
        ``"fc1"``): its kernel's output columns (and bias entries) are zeroed.
      method, refit: see :func:`thinet_prune`.
      chunk_size: rows of ``calib_x`` per forward pass.

    Returns:
      ``(new_variables, result)``.

    Example:
      >>> import jax
      >>> from jaxcomp.models import mlp
      >>> model = mlp((8, 12, 4))
      >>> v = model.init(jax.random.key(0), jax.numpy.zeros((1, 8)))
      >>> x = jax.random.normal(jax.random.key(1), (64, 8))
      >>> v2, r = thinet_prune_layer(model.apply, v, x, "fc2", 0.5, producer="fc1")
      >>> int(r.keep.sum()), int((v2["params"]["fc1"]["kernel"] != 0).any(0).sum())
      (6, 6)

    References:
      Luo et al., arXiv:1707.06342; He et al., arXiv:1707.06168.
    """
    has_params = isinstance(variables, Mapping) and "params" in variables
    params = variables["params"] if has_params else variables
    chunks = calibration_chunks(calib_x, chunk_size)
    layers = linen_layers(apply_fn, variables, chunks[0][:1])
    order = list(layers)
    mods = {mp: info.module for mp, info in layers.items()}
    for name, p in (("consumer", consumer), ("producer", producer)):
        if p is not None and p not in mods:
            raise ValueError(f"{name}={p!r} is not a module that ran in apply_fn; modules:\n"
                             f"{list_paths(order, close_to=p)}")
        if p is not None and not isinstance(mods[p], (nn.Dense, nn.Conv)):
            raise TypeError(f"{name}={p!r} is a {type(mods[p]).__name__}; only nn.Dense and "
                            "nn.Conv are supported")
    mod = mods[consumer]
    xs = []
    for c in chunks:
        xs.extend(jnp.asarray(a) for a in layer_inputs(apply_fn, variables, c, consumer,
                                                       layers[consumer].calls))
    every = flatten(params, True, what="thinet_prune_layer")
    flat = dict(zip(every.paths, every.leaves))
    kpath = f"{consumer}/kernel"
    res = thinet_prune(flat[kpath], jnp.concatenate(xs, 0), sparsity, method=method,
                       refit=refit, conv=mod if isinstance(mod, nn.Conv) else None, path=kpath)
    flat[kpath] = res.kernel
    if producer is not None:
        pk = f"{producer}/kernel"
        if jnp.shape(flat[pk])[-1] != res.keep.shape[0]:
            raise ValueError(f"producer '{producer}' has {jnp.shape(flat[pk])[-1]} output "
                             f"channels but consumer '{consumer}' reads {res.keep.shape[0]}")
        flat[pk] = jnp.where(res.keep, flat[pk], 0)
        if f"{producer}/bias" in flat:
            flat[f"{producer}/bias"] = jnp.where(res.keep, flat[f"{producer}/bias"], 0)
    new = every.rebuild([flat[p] for p in every.paths])
    return ({**dict(variables), "params": new} if has_params else new), res

