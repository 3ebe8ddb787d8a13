"""Calibration passes of one-shot pruning: data chunks, the layers a model runs, their inputs.

:func:`obs_prune <jaxcomp.prune.oneshot.obs_model.obs_prune>` and
:func:`thinet_prune_layer <jaxcomp.prune.oneshot.thinet.thinet_prune_layer>`
walk a Flax linen model layer by layer: they split the calibration data
into chunks (:func:`calibration_chunks`), list the modules the model runs in
forward order (:func:`linen_layers`) and, for one layer at a time, record
the inputs of its calls with the forward pass stopped after the layer's
last call (:func:`layer_inputs`). The recording is
:func:`jaxcomp.ops.capture.capture_linen`, the mechanism distillation's
feature taps use too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcomp.ops.capture import ModuleInfo, capture_linen

__all__ = ["calibration_chunks", "layer_inputs", "linen_layers"]


def calibration_chunks(calib_x: Any, chunk_size: int | None = None) -> list[jax.Array]:
    """Calibration inputs as a list of batches, each checked to be non-empty and finite.

    Args:
      calib_x: a batch ``(N, ...)`` or a list of such chunks.
      chunk_size: rows per chunk when ``calib_x`` is one batch (default: all).

    Raises:
      ValueError: empty data, a bad ``chunk_size``, NaN or Inf in a chunk.

    Example:
      >>> import jax.numpy as jnp
      >>> [c.shape for c in calibration_chunks(jnp.ones((5, 3)), 2)]
      [(2, 3), (2, 3), (1, 3)]
    """
    if isinstance(calib_x, (list, tuple)):
        chunks = [jnp.asarray(c) for c in calib_x]
    else:
        x = jnp.asarray(calib_x)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError("calib_x is empty: pass a batch (N, ...) of calibration inputs")
        step = x.shape[0] if chunk_size is None else int(chunk_size)
        if step < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
        chunks = [x[i:i + step] for i in range(0, x.shape[0], step)]
    if not chunks or any(c.ndim == 0 or c.shape[0] == 0 for c in chunks):
        raise ValueError("calib_x is empty: pass a batch (N, ...) of calibration inputs or a "
                         "list of such chunks")
    for i, c in enumerate(chunks):
        if jnp.issubdtype(c.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(c))):
            raise ValueError(f"calib_x chunk {i} contains NaN or Inf; clean the calibration "
                             "data (e.g. drop those examples) before pruning")
    return chunks


def linen_layers(apply_fn: Callable[..., Any], variables: Any, x: Any) -> dict[str, ModuleInfo]:
    """Every module ``apply_fn(variables, x)`` runs, in forward (first-call) order.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> {p: (type(m.module).__name__, m.calls) for p, m in linen_layers(model.apply, v,
      ...                                                                  jnp.ones((1, 4))).items()}
      {'': ('MLP', 1), 'fc1': ('Dense', 1), 'fc2': ('Dense', 1)}
    """
    return capture_linen(apply_fn, variables, x).modules


def layer_inputs(apply_fn: Callable[..., Any], variables: Any, x: Any, path: str,
                 calls: int) -> tuple[Any, ...]:
    """The inputs of the ``calls`` calls of module ``path``; the pass stops after the last.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> [a.shape for a in layer_inputs(model.apply, v, jnp.ones((2, 4)), "fc2", 1)]
      [(2, 8)]
    """
    cap = capture_linen(apply_fn, variables, x, where=re.escape(path), record="inputs",
                        stop_after={path: calls})
    return cap.inputs[path]
