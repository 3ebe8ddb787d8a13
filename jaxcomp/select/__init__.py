"""Selecting parameters by path, shape, dtype and type (``where=`` arguments).

* :mod:`~jaxcomp.select.paths`: canonical path strings;
* :mod:`~jaxcomp.select.selectors`: the ``where=`` forms, :func:`resolve`,
  :class:`Selector` algebra and :func:`rules` for :func:`jaxcomp.partition`;
* :mod:`~jaxcomp.select.selection`: :func:`flatten`, the resolve-flatten-
  check-rebuild step every method starts from (:class:`Selected`);
* :mod:`~jaxcomp.select.leafrules`: :func:`per_leaf`, one value per leaf
  from a scalar, ``{pattern: value}`` rules (first match wins) or a callable.
"""

from jaxcomp.select.leafrules import REQUIRED, LeafRule, per_leaf
from jaxcomp.select.paths import leaves_with_paths, path_str, paths, tree_paths
from jaxcomp.select.selection import Selected, flatten
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
    "REQUIRED",
    "LeafRule",
    "Rules",
    "Selected",
    "Selector",
    "dtype",
    "everything",
    "flatten",
    "leaf_type",
    "leaves_with_paths",
    "ndim",
    "nothing",
    "path",
    "path_str",
    "paths",
    "per_leaf",
    "resolve",
    "rules",
    "selected_paths",
    "size",
    "tree_paths",
]
