"""Resolve ``where=``, flatten, check, rebuild: the selection every method starts from.

:func:`flatten` turns a parameter tree and a ``where=`` argument (any form
of :mod:`jaxcomp.select.selectors`) into a :class:`Selected`: the tree's
structure, every leaf with its canonical path, and which leaves are
selected. A selection that is empty is an error naming the caller, listing
the available paths (closest first for a regex) and saying how to fix it.
The :class:`Selected` then

* rebuilds a tree from new values for the selected leaves, the other leaves
  left as they are (:meth:`Selected.rebuild`);
* builds a tree with :class:`~jaxcomp.core.base.MaskedNode` at the other
  positions, the form of a compressor's per-leaf state
  (:meth:`Selected.masked`);
* reads the selected leaves of another tree of the same parameters (grads,
  masks, a state built by :meth:`Selected.masked`), checking that its paths
  (not only its shapes) are those of the params (:meth:`Selected.of`,
  :meth:`Selected.of_masked`, :meth:`Selected.leaves_of`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcomp.core.base import MaskedNode
from jaxcomp.core.errors import list_paths
from jaxcomp.select.paths import is_leaf, path_str
from jaxcomp.select.selectors import Where, describe_where, resolve

__all__ = ["Selected", "flatten"]


def _shape(x: Any) -> tuple[int, ...]:
    s = getattr(x, "shape", None)
    return tuple(s) if s is not None else tuple(np.shape(x))


def _flat(tree: Any) -> tuple[list[str], list[Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [path_str(kp) for kp, _ in flat], [x for _, x in flat], treedef


def _mismatch(what: str, name: str, got: list[str], want: list[str], whose: str,
              fix: str) -> str:
    got_set, want_set = set(got), set(want)
    only_got = [p for p in got if p not in want_set]
    only_want = [p for p in want if p not in got_set]
    parts = []
    if only_got:
        parts.append(f"  only in {name}:\n{list_paths(only_got)}")
    if only_want:
        parts.append(f"  only in {whose}:\n{list_paths(only_want)}")
    if not parts:
        i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got),
                                                                               len(want)))
        a = got[i] if i < len(got) else "(none)"
        b = want[i] if i < len(want) else "(none)"
        parts.append(f"  same names in another order or number; leaf {i} is '{a}' in {name}, "
                     f"'{b}' in {whose}")
    return (f"{what}: {name} does not have the paths of {whose} ({len(got)} leaves for "
            f"{len(want)}):\n" + "\n".join(parts) + f"\n{fix}")


class Selected:
    """A parameter tree flattened with its selection (built by :func:`flatten`).

    Attributes:
      what: the caller's name, used in messages.
      treedef: the tree structure (compressed leaves kept whole).
      paths: the canonical path of every leaf, in flattening order.
      leaves: every leaf, in flattening order.
      idx: the indices of the selected leaves.
    """

    def __init__(self, what: str, treedef: Any, paths: list[str], leaves: list[Any],
                 idx: list[int]):
        self.what = what
        self.treedef = treedef
        self.paths = paths
        self.leaves = leaves
        self.idx = idx

    @property
    def flags(self) -> list[bool]:
        """One bool per leaf: selected or not."""
        chosen = set(self.idx)
        return [i in chosen for i in range(len(self.leaves))]

    @property
    def sel_paths(self) -> list[str]:
        """The paths of the selected leaves."""
        return [self.paths[i] for i in self.idx]

    @property
    def sel_leaves(self) -> list[Any]:
        """The selected leaves."""
        return [self.leaves[i] for i in self.idx]

    @property
    def pairs(self) -> list[tuple[str, Any]]:
        """``(path, leaf)`` of the selected leaves."""
        return [(self.paths[i], self.leaves[i]) for i in self.idx]

    def __len__(self) -> int:
        return len(self.idx)

    def __repr__(self) -> str:
        return f"Selected({self.what}: {len(self.idx)} of {len(self.leaves)} leaves)"

    def _check_count(self, selected_new: Sequence[Any], method: str) -> list[Any]:
        new = list(selected_new)
        if len(new) != len(self.idx):
            raise ValueError(f"{self.what}: {method} got {len(new)} values for "
                             f"{len(self.idx)} selected leaves")
        return new

    def rebuild(self, selected_new: Sequence[Any], *,
                others: Callable[[str, Any], Any] | None = None,
                base: Sequence[Any] | None = None) -> Any:
        """The tree with the selected leaves replaced by ``selected_new``.

        Args:
          selected_new: one value per selected leaf, in order.
          others: optional ``(path, leaf) -> value`` for the unselected
            leaves; by default they are kept (the same objects).
          base: optional full list of leaves to start from instead of the
            params' own.

        Example:
          >>> import jax.numpy as jnp
          >>> sel = flatten({"b": jnp.zeros(2), "w": jnp.ones((2, 2))}, r"w", what="demo")
          >>> sel.rebuild([jnp.zeros((2, 2))], others=lambda p, x: x + 1)["b"].tolist()
          [1.0, 1.0]
        """
        new = self._check_count(selected_new, "rebuild")
        out = list(self.leaves if base is None else base)
        if others is not None:
            chosen = set(self.idx)
            out = [x if i in chosen else others(self.paths[i], x) for i, x in enumerate(out)]
        for i, x in zip(self.idx, new):
            out[i] = x
        return jax.tree_util.tree_unflatten(self.treedef, out)

    def masked(self, selected_new: Sequence[Any] | None = None) -> Any:
        """A tree with ``selected_new`` (default: the selected leaves) and MaskedNode elsewhere.

        Example:
          >>> import jax.numpy as jnp
          >>> sel = flatten({"b": jnp.zeros(2), "w": jnp.ones((2, 2))}, r"w", what="demo")
          >>> sel.masked(["mask of w"])
          {'b': MaskedNode(), 'w': 'mask of w'}
        """
        new = self.sel_leaves if selected_new is None else self._check_count(selected_new,
                                                                            "masked")
        out: list[Any] = [MaskedNode()] * len(self.leaves)
        for i, x in zip(self.idx, new):
            out[i] = x
        return jax.tree_util.tree_unflatten(self.treedef, out)

    def with_selected(self, selected_new: Sequence[Any]) -> Selected:
        """A copy whose selected leaves are ``selected_new`` (the rest shared)."""
        new = self._check_count(selected_new, "with_selected")
        out = copy.copy(self)
        out.leaves = list(self.leaves)
        for i, x in zip(self.idx, new):
            out.leaves[i] = x
        return out

    def _check_shapes(self, name: str, paths: list[str], leaves: list[Any], idx: list[int],
                      fix: str) -> None:
        for p, x, i in zip(paths, leaves, idx):
            if _shape(x) != _shape(self.leaves[i]):
                raise ValueError(f"{self.what}: '{p}' in {name} has shape {_shape(x)}; the "
                                 f"parameter has {_shape(self.leaves[i])}. {fix}")

    def leaves_of(self, tree: Any, name: str, *, fix: str | None = None,
                  check_shapes: bool = True) -> list[Any]:
        """Every leaf of ``tree``, a tree of the same parameters (paths and shapes checked).

        Args:
          tree: e.g. grads or masks with the structure of the params.
          name: how messages call ``tree`` (``"grads"``).
          fix: how to fix a mismatch (a generic sentence by default).
          check_shapes: also require each leaf's shape to equal its parameter's.

        Raises:
          ValueError: other paths (listing the paths only in one of the two)
            or other shapes (naming the path).
        """
        fix = fix or f"Pass {name} with the structure of the params."
        paths, leaves, _ = _flat(tree)
        if paths != self.paths:
            raise ValueError(_mismatch(self.what, name, paths, self.paths, "the params", fix))
        if check_shapes:
            self._check_shapes(name, paths, leaves, list(range(len(leaves))), fix)
        return leaves

    def of(self, tree: Any, name: str, *, fix: str | None = None,
           check_shapes: bool = True) -> list[Any]:
        """The selected leaves of ``tree``, a tree of the same parameters (e.g. grads).

        Example:
          >>> import jax.numpy as jnp
          >>> p = {"b": jnp.zeros(2), "w": jnp.ones((2, 2))}
          >>> sel = flatten(p, r"w", what="demo")
          >>> [g.tolist() for g in sel.of({"b": jnp.ones(2), "w": jnp.eye(2)}, "grads")]
          [[[1.0, 0.0], [0.0, 1.0]]]
        """
        leaves = self.leaves_of(tree, name, fix=fix, check_shapes=False)
        out = [leaves[i] for i in self.idx]
        if check_shapes:
            self._check_shapes(name, self.sel_paths, out, self.idx,
                               fix or f"Pass {name} with the structure of the params.")
        return out

    def of_masked(self, tree: Any, name: str, *, fix: str | None = None,
                  check_shapes: bool = True) -> list[Any]:
        """The leaves of a tree in the form :meth:`masked` builds (e.g. a state's masks).

        Its leaves (``MaskedNode`` has none) must have exactly the selected
        paths, in order: a state built for other params is refused even when
        its shapes happen to fit.

        Example:
          >>> import jax.numpy as jnp
          >>> sel = flatten({"b": jnp.zeros(2), "w": jnp.ones((2, 2))}, r"w", what="demo")
          >>> masks = sel.masked([jnp.ones((2, 2), bool)])
          >>> [m.shape for m in sel.of_masked(masks, "masks")]
          [(2, 2)]
        """
        fix = fix or (f"Re-run init on the params you pass, with the same where= ({name} was "
                      "built for other parameters).")
        paths, leaves, _ = _flat(tree)
        want = self.sel_paths
        if paths != want:
            raise ValueError(_mismatch(self.what, name, paths, want,
                                       "the selected parameters", fix))
        if check_shapes:
            self._check_shapes(name, paths, leaves, self.idx, fix)
        return leaves


def _empty_message(what: str, where: Where, default: Where, noun: str, paths: list[str],
                   hint: str | None) -> str:
    close = None
    if where is None:
        if isinstance(default, (bool, np.bool_)):
            d = "every leaf" if default else "no leaf"
        else:
            d = repr(default) if isinstance(default, str) else describe_where(default)[len("where="):]
        head = f"where=None (the default, {d}) selects no {noun}"
    elif isinstance(where, str):
        close = where if paths else None  # (list_paths cannot order an empty list)
        head = (f"where={where!r} matches no {noun} (a regex must match the whole "
                "'/'-joined path, e.g. r'.*/kernel')")
    elif isinstance(where, (bool, np.bool_)) or not callable(where):
        head = f"where= selects no {noun} (every flag is False)"
    else:
        head = f"{describe_where(where)} selects no {noun}"
    fix = hint or f"Select at least one {noun}, e.g. where=r'.*/kernel'."
    return (f"{what}: {head}. Available paths{' (closest first)' if close else ''}:\n"
            f"{list_paths(paths, close_to=close)}\n{fix}")


def flatten(
    params: Any,
    where: Where = None,
    *,
    what: str,
    default: Where = True,
    allow_empty: bool = False,
    noun: str = "parameter",
    hint: str | None = None,
    leaf_check: Callable[[str, Any], None] | None = None,
) -> Selected:
    """Resolves ``where=`` on ``params`` and flattens it into a :class:`Selected`.

    Args:
      params: the parameter tree (compressed leaves stay whole).
      where: any ``where=`` form of :func:`jaxcomp.select.resolve`;
        ``None`` takes ``default``.
      what: the caller's name, first word of every message
        (``"magnitude_pruning"``).
      default: the selection used for ``where=None`` (any ``where=`` form).
      allow_empty: accept a selection of no leaf.
      noun: what is selected, for messages (``"kernel"``).
      hint: how to fix an empty selection (replaces the generic advice).
      leaf_check: ``(path, leaf) -> None`` called on every selected leaf; it
        raises for leaves the caller cannot handle.

    Returns:
      The :class:`Selected`.

    Raises:
      ValueError: an empty selection (naming ``what``, listing the paths,
        closest first for a regex), an invalid regex, a bool tree of the
        wrong structure.
      TypeError: an unsupported ``where`` type.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"fc": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}
      >>> sel = flatten(params, r".*/kernel", what="demo")
      >>> sel.paths, sel.sel_paths
      (['fc/bias', 'fc/kernel'], ['fc/kernel'])
      >>> sel.rebuild([jnp.zeros((4, 2))])["fc"]["kernel"].sum().item()
      0.0
      >>> flatten(params, r"kernel", what="demo")
      Traceback (most recent call last):
      ...
      ValueError: demo: where='kernel' matches no parameter (a regex must match the whole '/'-joined path, e.g. r'.*/kernel'). Available paths (closest first):
          fc/kernel
          fc/bias
      Select at least one parameter, e.g. where=r'.*/kernel'.
    """
    paths, leaves, treedef = _flat(params)
    flags = jax.tree_util.tree_leaves(
        resolve(default if where is None else where, params, allow_empty=True))
    idx = [i for i, f in enumerate(flags) if f]
    if not idx and not allow_empty:
        raise ValueError(_empty_message(what, where, default, noun, paths, hint))
    if leaf_check is not None:
        for i in idx:
            leaf_check(paths[i], leaves[i])
    return Selected(what, treedef, paths, leaves, idx)
