"""Channel surgery: channel masks → a physically smaller model.

Pruning whole output channels (filters) with masks leaves the compute of a
dense model. :func:`remove_channels` turns per-producer channel masks into
smaller parameter arrays: the producing kernel loses output channels, every
follower (bias, BatchNorm scale/shift/statistics, depthwise kernels) loses
the same entries, and every consumer kernel loses the matching input rows
(for a flatten of ``H×W×C`` feeding a Dense layer, every ``H·W`` position of
the removed channel). The dependencies come from tracing the model's
function (:mod:`jaxcomp.prune.channels.surgery_graph`), so residual additions
couple the groups they join; a coupled group keeps a channel when *any* of its
producers' masks keeps it (the union), so outputs are never changed by the
coupling. The new widths per producer module come back with the result so
the model can be rebuilt at its new size (Flax checks parameter shapes
against the module configuration).

With the masked reference defined by :func:`zero_channels` (producers and
followers zeroed at removed channels), the smaller model computes the same
outputs — exactly, up to float summation order.

Example:
  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> class MLP(nn.Module):
  ...     width: int = 8
  ...     @nn.compact
  ...     def __call__(self, x):
  ...         return nn.Dense(3, name="fc2")(nn.relu(nn.Dense(self.width, name="fc1")(x)))
  >>> x = jnp.ones((2, 5))
  >>> v = MLP().init(jax.random.key(0), x)
  >>> keep = {"fc1": jnp.arange(8) % 2 == 0}                 # drop every other unit
  >>> res = remove_channels(MLP().apply, v, keep, x)
  >>> res.widths, res.variables["params"]["fc2"]["kernel"].shape
  ({'fc1': 4}, (4, 3))
  >>> small = MLP(width=res.widths["fc1"])
  >>> ref = MLP().apply(zero_channels(MLP().apply, v, keep, x), x)
  >>> bool(jnp.allclose(small.apply(res.variables, x), ref, atol=1e-6))
  True

References:
  Li et al. 2017, Pruning filters for efficient ConvNets, arXiv:1608.08710.
  Liu et al. 2017, Network slimming, arXiv:1708.06519. Fang et al. 2023,
  DepGraph: towards any structural pruning, arXiv:2301.12900.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.errors import list_paths
from jaxcomp.ops.capture import module_of
from jaxcomp.prune.channels.surgery_graph import ChannelGroup, trace_groups
from jaxcomp.select.paths import is_leaf, path_str

__all__ = ["ChannelGroup", "SurgeryResult", "channel_dependencies", "remove_channels",
           "zero_channels"]


def _module(path: str) -> str:
    """The module owning a variables path (``params/block/conv/kernel`` -> ``block/conv``)."""
    return module_of(path.removeprefix("params/"))


class SurgeryResult(NamedTuple):
    """What :func:`remove_channels` did.

    Attributes:
      variables: the smaller variables (same tree structure, smaller arrays).
      widths: ``{producer module path: kept channels}`` for every group with
        a mask (use them to rebuild the model configuration).
      kept: ``{producer module path: kept channel indices}``.
      groups: the traced channel groups.
    """

    variables: Any
    widths: dict
    kept: dict
    groups: list


def channel_dependencies(apply_fn: Callable[..., Any], variables: Any, *args: Any
                         ) -> list[ChannelGroup]:
    """The coupled channel groups of ``apply_fn(variables, *args)``.

    Each :class:`~jaxcomp.prune.channels.surgery_graph.ChannelGroup` lists its
    producers, followers, consumers and, when its channels cannot be
    removed, why (``blocked``).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> class Res(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         h = nn.Dense(4, name="a")(x)
      ...         h = h + nn.Dense(4, name="b")(nn.relu(h))       # residual couples a and b
      ...         return nn.Dense(2, name="out")(h)
      >>> v = Res().init(jax.random.key(0), jnp.ones((1, 3)))
      >>> [sorted(p for p, _ in g.producers) for g in channel_dependencies(Res().apply, v,
      ...                                                                  jnp.ones((1, 3)))]
      [['params/a/kernel', 'params/b/kernel'], ['params/out/kernel']]
    """
    return trace_groups(apply_fn, variables, *args)


def _resolve_masks(groups: list[ChannelGroup], masks: Mapping[str, Any], what: str):
    by_module: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for p, _ in g.producers:
            by_module[_module(p)] = gi
    chosen: dict[int, np.ndarray] = {}
    for key, m in masks.items():
        mod = _module(key) if key.endswith("/kernel") else key.removeprefix("params/")
        if mod not in by_module:
            raise ValueError(f"{what}: '{key}' is not a channel producer. Producers:\n"
                             f"{list_paths(sorted(by_module))}")
        g = groups[by_module[mod]]
        m = np.asarray(m)
        if m.dtype != bool or m.shape != (g.size,):
            raise ValueError(f"{what}: mask '{key}' must be a bool vector of {g.size} channels, "
                             f"got {m.dtype} {m.shape}")
        gi = by_module[mod]
        chosen[gi] = m if gi not in chosen else (chosen[gi] | m)  # coupled: keep the union
    for gi, m in chosen.items():
        g = groups[gi]
        if not m.any():
            raise ValueError(f"{what}: the mask removes every channel of "
                             f"{sorted(_module(p) for p, _ in g.producers)}; keep at least one")
        if g.blocked and not m.all():
            raise ValueError(f"{what}: channels of {sorted(_module(p) for p, _ in g.producers)} "
                             f"cannot be removed: {'; '.join(sorted(set(g.blocked)))}")
    return chosen


def _edits(groups, chosen):
    """``{leaf path: [(axis, index array)]}`` for every affected leaf."""
    edits: dict[str, list] = {}
    for gi, keep in chosen.items():
        g = groups[gi]
        idx = np.flatnonzero(keep)
        for p, ax in g.producers | g.followers:
            edits.setdefault(p, []).append((ax, idx, None))
        for p, ax, inner in g.consumers:
            edits.setdefault(p, []).append((ax, keep, inner))
    return edits


def _flat(variables):
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_leaf)
    return [path_str(kp) for kp, _ in flat], [x for _, x in flat], treedef


def remove_channels(apply_fn: Callable[..., Any], variables: Any, masks: Mapping[str, Any],
                    *args: Any) -> SurgeryResult:
    """Physically removes the channels ``masks`` drop (see the module docstring).

    Args:
      apply_fn: ``apply_fn(variables, *args)``, traced once (eval mode: pass
        e.g. ``functools.partial(model.apply, train=False)``).
      variables: the model's variables (``params`` and e.g. ``batch_stats``).
      masks: ``{producer: bool (channels,)}`` keyed by module path
        (``"conv1"``), with or without ``params/`` and ``/kernel``.
      *args: example inputs (shapes matter, values do not).

    Returns:
      :class:`SurgeryResult`.

    Raises:
      ValueError: unknown producer, wrong mask shape or dtype, a mask that
        removes every channel, or a group whose channels cannot be removed
        (the reason is named, e.g. reduced over by a LayerNorm, or the model
        output).
    """
    groups = channel_dependencies(apply_fn, variables, *args)
    chosen = _resolve_masks(groups, masks, "remove_channels")
    edits = _edits(groups, chosen)
    paths, leaves, treedef = _flat(variables)
    out = []
    for p, x in zip(paths, leaves):
        for ax, sel, inner in edits.get(p, ()):
            if inner is None:
                x = jnp.take(x, jnp.asarray(sel), axis=ax)
            else:
                size = len(sel)
                rows = np.arange(x.shape[ax])
                x = jnp.take(x, jnp.asarray(np.flatnonzero(sel[(rows // inner) % size])), axis=ax)
        out.append(x)
    widths, kept = {}, {}
    for gi, keep in chosen.items():
        for p, _ in groups[gi].producers:
            widths[_module(p)] = int(keep.sum())
            kept[_module(p)] = np.flatnonzero(keep)
    return SurgeryResult(jax.tree_util.tree_unflatten(treedef, out), widths, kept, groups)


def zero_channels(apply_fn: Callable[..., Any], variables: Any, masks: Mapping[str, Any],
                  *args: Any) -> Any:
    """The masked reference: producers and followers zeroed at the removed channels.

    Consumers are left as they are (they read zeros there). With a
    BatchNorm after the producer, its shift and statistics are zeroed too,
    so a removed channel is exactly zero after the norm.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> class Two(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2, name="fc2")(nn.Dense(3, name="fc1")(x))
      >>> x = jnp.ones((1, 2))
      >>> v = Two().init(jax.random.key(0), x)
      >>> z = zero_channels(Two().apply, v, {"fc1": jnp.array([True, False, True])}, x)
      >>> z["params"]["fc1"]["kernel"][:, 1].tolist(), z["params"]["fc1"]["bias"].tolist()
      ([0.0, 0.0], [0.0, 0.0, 0.0])
      >>> zero_channels(Two().apply, v, {"fc2": jnp.array([True, False])}, x)
      Traceback (most recent call last):
      ...
      ValueError: zero_channels: channels of ['fc2'] cannot be removed: the channels are an output of the function
    """
    groups = channel_dependencies(apply_fn, variables, *args)
    chosen = _resolve_masks(groups, masks, "zero_channels")
    paths, leaves, treedef = _flat(variables)
    zero: dict[str, list] = {}
    for gi, keep in chosen.items():
        g = groups[gi]
        for p, ax in g.producers | g.followers:
            zero.setdefault(p, []).append((ax, keep))
    out = []
    for p, x in zip(paths, leaves):
        for ax, keep in zero.get(p, ()):
            shape = [1] * np.ndim(x)
            shape[ax] = keep.size
            x = jnp.where(jnp.asarray(keep).reshape(shape), x, jnp.zeros((), x.dtype))
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)
