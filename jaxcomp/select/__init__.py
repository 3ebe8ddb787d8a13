"""Selecting parameters by path, shape, dtype and type (``where=`` arguments)."""

from jaxcomp.select.paths import leaves_with_paths, path_str, paths, tree_paths
from jaxcomp.select.selectors import (
    Rules,
    Selector,
    dtype,
    everything,
    leaf_type,
    ndim,
    nothing,
    path,
    resolve,
    rules,
    selected_paths,
    size,
)

__all__ = [
    "Rules",
    "Selector",
    "dtype",
    "everything",
    "leaf_type",
    "leaves_with_paths",
    "ndim",
    "nothing",
    "path",
    "path_str",
    "paths",
    "resolve",
    "rules",
    "selected_paths",
    "size",
    "tree_paths",
]
