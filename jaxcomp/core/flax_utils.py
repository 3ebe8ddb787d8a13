"""Thin adapters between Flax models and the pytree-of-arrays core.

* Flax linen: compressors work directly on variables dicts, including
  ``nn.Partitioned``/``nn.LogicallyPartitioned`` boxed params (the boxes are
  pytree nodes whose metadata survives every transform). :func:`unbox`
  strips the boxes when plain arrays are wanted.
* Flax nnx: :func:`nnx_split` returns a graph definition, the parameters as a
  plain nested dict, and the remaining state; :func:`nnx_merge` rebuilds a
  module from them without mutating its inputs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxcomp.select.paths import leaves_with_paths

__all__ = ["NnxDef", "nnx_merge", "nnx_split", "params_of", "unbox"]


def unbox(tree: Any) -> Any:
    """Replaces Flax boxed values (``nn.Partitioned`` etc.) by their arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import linen as nn
      >>> unbox({"kernel": nn.Partitioned(jnp.ones(2), names=("model",))})["kernel"].shape
      (2,)
    """
    from flax.core import meta

    return meta.unbox(tree)


def params_of(variables: Any) -> Any:
    """Returns ``variables['params']`` of a linen variables dict, with a clear error.

    Example:
      >>> params_of({"params": {"w": 1}})
      {'w': 1}
    """
    try:
        return variables["params"]
    except (KeyError, TypeError):
        keys = list(variables) if hasattr(variables, "keys") else type(variables).__name__
        raise ValueError(
            f"expected a Flax linen variables dict with a 'params' collection, got {keys}; "
            "pass the dict returned by model.init(...)"
        ) from None


class NnxDef(NamedTuple):
    """What :func:`nnx_merge` needs besides the params: the graph and a shape template."""

    graphdef: Any
    template: Any  # nnx.State of the params with ShapeDtypeStruct leaves


def nnx_split(module: Any, *filters: Any) -> tuple[NnxDef, dict, Any]:
    """Splits an nnx module into ``(nnxdef, params, rest)``.

    Args:
      module: an ``nnx.Module``.
      *filters: the variable filter for what counts as parameters (default
        ``nnx.Param``).

    Returns:
      ``nnxdef`` (graph definition and a shape template of the params);
      the parameters as a plain nested dict of arrays (the tree compressors
      work on, with the same paths as the module's attributes); ``rest``, an
      ``nnx.State`` of everything else (batch statistics, RNG counters).

    Example:
      >>> from flax import nnx
      >>> d, p, rest = nnx_split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      >>> sorted(p), p["kernel"].shape
      (['bias', 'kernel'], (2, 3))
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"nnx_split expects an nnx.Module, got {type(module).__name__}")
    flt = filters[0] if filters else nnx.Param
    graphdef, params_state, rest = nnx.split(module, flt, ...)
    template = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_state)
    return NnxDef(graphdef, template), nnx.to_pure_dict(params_state), rest


def nnx_merge(nnxdef: NnxDef, params: dict, rest: Any) -> Any:
    """Rebuilds an nnx module from :func:`nnx_split`'s pieces and (new) params.

    ``params`` may be a compressor's view (``comp.apply(params, state)``) but
    must keep the structure and shapes that :func:`nnx_split` returned.
    Nothing passed in is mutated, so this is safe inside ``jit``.

    Raises:
      ValueError: if ``params`` does not match the module's parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> d, p, rest = nnx_split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      >>> m = nnx_merge(d, jax.tree.map(jnp.zeros_like, p), rest)
      >>> float(m(jnp.ones((1, 2))).sum())
      0.0
    """
    from flax import nnx

    if not isinstance(nnxdef, NnxDef):
        raise TypeError("nnx_merge expects the first value returned by jaxcomp.nnx_split")
    want = nnx.to_pure_dict(nnxdef.template)
    want_flat = dict(leaves_with_paths(want))
    got_flat = dict(leaves_with_paths(params))
    if set(want_flat) != set(got_flat):
        missing = sorted(set(want_flat) - set(got_flat))
        extra = sorted(set(got_flat) - set(want_flat))
        raise ValueError(
            "nnx_merge: params do not match the module's parameters; "
            f"missing {missing[:8]}, unexpected {extra[:8]}. Pass the dict from nnx_split "
            "(or a compressor's view of it)."
        )
    for p, w in want_flat.items():
        g = got_flat[p]
        if tuple(getattr(g, "shape", ())) != tuple(w.shape):
            raise ValueError(
                f"nnx_merge: parameter '{p}' has shape {tuple(getattr(g, 'shape', ()))}, the "
                f"module expects {tuple(w.shape)}; materialize compressed leaves first "
                "(jaxcomp.materialize)"
            )
    state = jax.tree_util.tree_map(lambda x: x, nnxdef.template)  # a fresh State to fill
    nnx.replace_by_pure_dict(state, params)  # mutates `state` in place, returns None
    return nnx.merge(nnxdef.graphdef, state, rest)
