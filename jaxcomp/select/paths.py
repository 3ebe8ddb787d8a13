"""Canonical path strings for the leaves of parameter trees.

Every leaf of a parameter tree gets one path string such as
``block_0/Conv_0/kernel``: dict keys, attribute names and sequence indices
joined by ``/``. Wrappers that only box a value (Flax ``Partitioned`` and
``LogicallyPartitioned`` boxes, nnx ``Variable``/``VariableState``) add no
component, so a linen variables dict, its unboxed form and an nnx state give
the same paths. :class:`~jaxcomp.core.leaves.CompressedLeaf` instances are
leaves here: a ``LowRank`` kernel has the path of the kernel it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from jaxcomp.core.leaves import is_compressed

__all__ = ["is_leaf", "leaves_with_paths", "path_str", "paths", "tree_paths"]

# Attribute names that only unwrap a boxed value and add no path component.
_BOX_ATTRS = frozenset({"value", "raw_value", "unbox"})


def _key_str(k: Any) -> str | None:
    if isinstance(k, DictKey):
        return str(k.key)
    if isinstance(k, GetAttrKey):
        return None if k.name in _BOX_ATTRS else str(k.name)
    if isinstance(k, SequenceKey):
        return str(k.idx)
    if isinstance(k, FlattenedIndexKey):
        return str(k.key)
    # nnx paths and plain tuples hold strings / ints directly.
    if isinstance(k, (str, int)):
        return str(k)
    name = getattr(k, "name", None) or getattr(k, "key", None)
    return str(name) if name is not None else str(k)


def path_str(keypath: Sequence[Any]) -> str:
    """Converts a JAX key path (or an nnx path tuple) to its canonical string.

    Example:
      >>> from jax.tree_util import DictKey, SequenceKey
      >>> path_str((DictKey("block"), SequenceKey(0), DictKey("kernel")))
      'block/0/kernel'
    """
    parts = [_key_str(k) for k in keypath]
    return "/".join(p for p in parts if p is not None)


def is_leaf(x: Any) -> bool:
    """The leaf predicate used for selection: compressed leaves and ``None`` stay whole."""
    return is_compressed(x)


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """Lists ``(path, leaf)`` pairs in flattening order (compressed leaves kept whole)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(kp), leaf) for kp, leaf in flat]


def paths(tree: Any) -> list[str]:
    """Lists the canonical path of every leaf of ``tree``.

    Example:
      >>> import jax.numpy as jnp
      >>> paths({"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}})
      ['Dense_0/bias', 'Dense_0/kernel']
    """
    return [p for p, _ in leaves_with_paths(tree)]


def tree_paths(tree: Any) -> Any:
    """A tree of the same structure whose leaves are their own path strings."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return jax.tree_util.tree_unflatten(treedef, [path_str(kp) for kp, _ in flat])
