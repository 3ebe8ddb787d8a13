"""Structured channel pruning: learn which channels to drop, then cut them out.

* :mod:`~jaxcomp.prune.channels.slimming` — network slimming: an L1
  penalty on normalisation scales and channel masks from one global
  threshold, mapped to the producing kernels;
* :mod:`~jaxcomp.prune.channels.ssl` — structured sparsity learning: group
  lasso over filters, channels, shapes and depth;
* :mod:`~jaxcomp.prune.channels.surgery` — channel surgery: channel masks →
  a physically smaller model, with the coupled channel groups found by
  :mod:`~jaxcomp.prune.channels.surgery_graph` (a dataflow analysis of the
  model's jaxpr).

Everything here is re-exported by :mod:`jaxcomp.prune`.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxcomp.prune import channels
  >>> w = jnp.array([[3.0, 0.0], [4.0, 0.0]])            # (in, out): column norms 5 and 0
  >>> channels.group_norms({"fc": {"kernel": w}}, "filter")["fc/kernel"].tolist()
  [5.0, 0.0]
"""

from jaxcomp.prune.channels.slimming import (
    scale_to_kernel_masks,
    slimming_masks,
    slimming_penalty,
    slimming_regularizer,
)
from jaxcomp.prune.channels.ssl import (
    channel_lasso,
    depth_lasso,
    filter_lasso,
    group_lasso,
    group_norms,
    shape_lasso,
    ssl_regularizer,
)
from jaxcomp.prune.channels.surgery import (
    ChannelGroup,
    SurgeryResult,
    channel_dependencies,
    remove_channels,
    zero_channels,
)

__all__ = [
    "ChannelGroup",
    "SurgeryResult",
    "channel_dependencies",
    "channel_lasso",
    "depth_lasso",
    "filter_lasso",
    "group_lasso",
    "group_norms",
    "remove_channels",
    "scale_to_kernel_masks",
    "shape_lasso",
    "slimming_masks",
    "slimming_penalty",
    "slimming_regularizer",
    "ssl_regularizer",
    "zero_channels",
]
