"""Network slimming: L1 on normalisation scales, channels selected by ``|γ|``.

Liu et al. train with an L1 penalty ``λ Σ|γ|`` on the per-channel scales of
the BatchNorm layers that follow convolutions, then prune the channels whose
``|γ|`` falls under one global threshold, and fine-tune (after physically
removing them, see :mod:`jaxcomp.prune.channels.surgery`).

* :func:`slimming_penalty` — ``Σ |γ|`` over the selected scales.
* :func:`slimming_regularizer` — wraps a training-interface loss with
  ``λ · slimming_penalty`` (reported as ``metrics["slimming_l1"]``).
* :func:`slimming_masks` — per-channel keep masks on the scale leaves for a
  pruned fraction ``ratio`` (global or per layer; exact counts, no sort).
* :func:`scale_to_kernel_masks` — those masks moved onto the output-channel
  axis of the producing conv/dense kernels (and their biases).

The default ``where`` takes every 1-D leaf named ``scale`` (Flax
``BatchNorm``/``LayerNorm``/``GroupNorm`` scales).

References:
  Liu et al. 2017, Learning efficient convolutional networks through
  network slimming, arXiv:1708.06519.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcomp.core.errors import list_paths
from jaxcomp.ops.capture import module_of
from jaxcomp.ops.kth import check_finite, num_pruned, smallest_k_masks
from jaxcomp.select.paths import leaves_with_paths
from jaxcomp.select.selection import Selected, flatten

__all__ = [
    "default_scale_where",
    "scale_to_kernel_masks",
    "slimming_masks",
    "slimming_penalty",
    "slimming_regularizer",
]


def default_scale_where(path: str, leaf: Any) -> bool:
    """True for 1-D leaves whose last path component is ``scale`` (norm-layer scales)."""
    return path.rsplit("/", 1)[-1] == "scale" and jnp.ndim(leaf) == 1


def _selected(params: Any, where: Any, what: str) -> Selected:
    def check(p: str, x: Any) -> None:
        if jnp.ndim(x) != 1:
            raise ValueError(f"{what}: '{p}' has shape {jnp.shape(x)}; channel scales are 1-D "
                             "(one per channel). Narrow where= to the norm scales.")

    return flatten(params, where, what=what, default=default_scale_where,
                   noun="normalisation scale", leaf_check=check,
                   hint="The default takes 1-D leaves named 'scale' (BatchNorm/LayerNorm); pass "
                        "where=r'.*bn.*/scale' or similar for other names.")


def slimming_penalty(params: Any, *, where: Any = None) -> jax.Array:
    """``Σ |γ|`` over the selected normalisation scales (subgradient 0 at γ = 0).

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"bn": {"scale": jnp.array([1.0, -2.0]), "bias": jnp.ones(2)},
      ...      "conv": {"kernel": jnp.ones((3, 3, 1, 2))}}
      >>> float(slimming_penalty(p))
      3.0

    References:
      Liu et al. 2017, arXiv:1708.06519.
    """
    return sum(jnp.sum(jnp.abs(x)) for x in _selected(params, where, "slimming_penalty").sel_leaves)


def slimming_regularizer(loss_fn: Callable[..., Any], lambda_: float, *,
                         where: Any = None) -> Callable[..., Any]:
    """Wraps ``loss_fn(params, model_state, batch, rng) -> (loss, (state, metrics))``.

    The wrapped loss adds ``lambda_ * slimming_penalty(params)`` and reports
    the penalty (unweighted) as ``metrics["slimming_l1"]``. Liu et al. use
    ``λ = 1e-4`` to ``1e-5``.

    Example:
      >>> import jax.numpy as jnp
      >>> base = lambda p, s, b, r: (jnp.float32(0.0), (s, {"loss": jnp.float32(0.0)}))
      >>> loss = slimming_regularizer(base, 0.1)
      >>> l, (_, m) = loss({"bn": {"scale": jnp.array([1.0, -3.0])}}, {}, {}, None)
      >>> float(l), float(m["slimming_l1"])
      (0.4000000059604645, 4.0)
    """
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or lambda_ < 0:
        raise ValueError(f"lambda_={lambda_!r} must be a number >= 0 (Liu et al.: 1e-4..1e-5)")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(params, model_state, batch, rng)")

    def wrapped(params, model_state, batch, rng):
        loss, (state, metrics) = loss_fn(params, model_state, batch, rng)
        pen = slimming_penalty(params, where=where)
        return loss + lambda_ * pen, (state, {**metrics, "slimming_l1": pen})

    return wrapped


def slimming_masks(
    params: Any,
    ratio: float,
    *,
    where: Any = None,
    scope: str = "global",
    min_channels: int = 1,
) -> Any:
    """Keep-masks over channels: prune the fraction ``ratio`` of smallest ``|γ|``.

    ``scope="global"`` uses one threshold over all selected scales (Liu et
    al.), ``"layerwise"`` prunes ``round(ratio * C)`` channels of each layer.
    Ties are broken by index (lower pruned first). ``min_channels`` then
    restores the largest-``|γ|`` channels of any layer left with fewer, so a
    layer never vanishes; the total pruned can then be below the target (the
    restored count is the only deviation).

    Args:
      params: the parameters (scales are read, nothing else).
      ratio: fraction of the selected channels pruned, in ``[0, 1)``.
      where: which scales (default: 1-D leaves named ``scale``).
      scope: ``"global"`` or ``"layerwise"``.
      min_channels: channels kept at least per layer (≥ 1).

    Returns:
      A bool tree with the params' structure: per-channel masks at the
      selected scales, all-True elsewhere.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"bn1": {"scale": jnp.array([0.9, 0.01, 0.5])},
      ...      "bn2": {"scale": jnp.array([0.02, 0.03, 0.8])}}
      >>> m = slimming_masks(p, 0.5)
      >>> m["bn1"]["scale"].tolist(), m["bn2"]["scale"].tolist()
      ([True, False, True], [False, False, True])

    References:
      Liu et al. 2017, arXiv:1708.06519.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio!r} must be a fraction in [0, 1) of the channels pruned")
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope={scope!r} must be 'global' or 'layerwise'")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels={min_channels!r} must be an int >= 1")
    sel = _selected(params, where, "slimming_masks")
    scores = [jnp.abs(jnp.asarray(x, jnp.float32)) for x in sel.sel_leaves]
    check_finite(dict(zip(sel.sel_paths, scores)), "norm scales")
    sizes = [int(s.size) for s in scores]
    if scope == "global":
        pruned = smallest_k_masks(scores, [num_pruned(ratio, sum(sizes))],
                                  groups=[0] * len(sizes))
    else:
        pruned = smallest_k_masks(scores, [num_pruned(ratio, n) for n in sizes])
    keeps = []
    for s, p in zip(scores, pruned):
        keep = ~p
        need = min(min_channels, s.size)
        short = need - jnp.sum(keep)
        # restore the `short` largest-|γ| pruned channels (kept ones never compete)
        neg = jnp.where(keep, jnp.finfo(jnp.float32).max, -s)
        extra = smallest_k_masks([neg], [jnp.maximum(short, 0)])[0]
        keeps.append(keep | (extra & ~keep))
    return sel.rebuild(keeps, others=lambda _, x: jnp.ones(jnp.shape(x), bool))


_PAIR_RULES = ((r"(.*?)bn(\d*)", r"\1conv\2"), (r"(.*?)BatchNorm_(\d+)", r"\1Conv_\2"),
               (r"(.*?)norm(\d*)", r"\1conv\2"))


def _producer(norm_module: str, available: set[str]) -> str | None:
    for pat, rep in _PAIR_RULES:
        if re.fullmatch(pat, norm_module):
            cand = re.sub(f"^{pat}$", rep, norm_module)
            if cand in available:
                return cand
    return None


def scale_to_kernel_masks(
    params: Any, scale_masks: Any, *, pairs: Mapping[str, str] | None = None,
) -> dict[str, jax.Array]:
    """Moves per-channel norm masks onto the producing kernels' output channels.

    Each selected norm module ``…/bn<i>`` (or ``BatchNorm_<i>``, ``norm<i>``)
    is paired with ``…/conv<i>`` (``Conv_<i>``) in the same parent module,
    unless ``pairs={norm_module_path: producer_module_path}`` says otherwise.

    Returns:
      ``{producer_module_path: bool (channels,)}``, the keep vector of each
      producer's last kernel axis — the input of
      :mod:`jaxcomp.prune.channels.surgery` style channel removal or of
      ``jaxcomp.prune.apply_masks`` after broadcasting.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"conv1": {"kernel": jnp.ones((3, 3, 1, 2))}, "bn1": {"scale": jnp.ones(2)}}
      >>> m = {"conv1": {"kernel": jnp.ones((3, 3, 1, 2), bool)},
      ...      "bn1": {"scale": jnp.array([True, False])}}
      >>> scale_to_kernel_masks(p, m)["conv1"].tolist()
      [True, False]
    """
    pl = dict(leaves_with_paths(params))
    ml = leaves_with_paths(scale_masks)
    modules = {module_of(p) for p in pl if p.endswith("/kernel")}
    out: dict[str, jax.Array] = {}
    for path, m in ml:
        if not path.endswith("/scale") or path not in pl:
            continue
        norm = module_of(path)
        prod = (pairs or {}).get(norm) or _producer(norm, modules)
        if prod is None:
            if bool(jnp.all(m)):
                continue  # nothing pruned there: no producer needed
            raise ValueError(
                f"scale_to_kernel_masks: no producer kernel found for '{norm}' (tried the "
                f"conv/Conv_ names next to it). Pass pairs={{'{norm}': '<module path>'}}; "
                f"kernels available:\n{list_paths(sorted(modules))}")
        if f"{prod}/kernel" not in pl:
            raise ValueError(f"scale_to_kernel_masks: pairs maps '{norm}' to '{prod}', which has "
                             f"no kernel; kernels available:\n{list_paths(sorted(modules))}")
        k = pl[f"{prod}/kernel"]
        if k.shape[-1] != m.shape[0]:
            raise ValueError(f"scale_to_kernel_masks: '{norm}' has {m.shape[0]} channels but "
                             f"'{prod}/kernel' outputs {k.shape[-1]}")
        out[prod] = jnp.asarray(m, bool)
    return out
