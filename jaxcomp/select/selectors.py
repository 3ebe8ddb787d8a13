"""Choosing which parameters a method touches.

Every jaxcomp factory takes ``where=``, accepted in these forms:

* ``None`` (the factory's default) or a Python ``bool`` for all leaves;
* a tree of bools with the structure of the params (or a prefix of it);
* a regex string, full-matched against each leaf's canonical path
  (``block_0/Conv_0/kernel``, see :mod:`jaxcomp.select.paths`);
* a callable ``(path, leaf) -> bool``;
* a :class:`Selector`, combinable with ``&``, ``|`` and ``~``:
  :func:`path`, :func:`ndim`, :func:`size`, :func:`dtype`, :func:`leaf_type`,
  :func:`everything`, :func:`nothing`.

:func:`resolve` turns any of these into a tree of static Python bools. A
pattern that matches no leaf is an error listing the available paths (closest
first) unless ``allow_empty=True``. :func:`rules` gives ordered, first-match
labelling for :func:`jaxcomp.partition`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.base import MaskedNode
from jaxcomp.core.errors import list_paths
from jaxcomp.select.paths import is_leaf, leaves_with_paths, path_str

__all__ = [
    "Rules",
    "Selector",
    "Where",
    "dtype",
    "everything",
    "leaf_type",
    "ndim",
    "nothing",
    "path",
    "resolve",
    "rules",
    "selected_paths",
    "size",
]


def _shape(leaf: Any) -> tuple[int, ...]:
    s = getattr(leaf, "shape", None)
    if s is None:
        return np.shape(leaf)
    return tuple(s)


def _dtype(leaf: Any) -> np.dtype | None:
    d = getattr(leaf, "dtype", None)
    if d is None:
        try:
            return np.asarray(leaf).dtype
        except Exception:  # noqa: BLE001 - non-array leaves have no dtype
            return None
    return np.dtype(d)


class Selector:
    """A predicate on ``(path, leaf)`` that composes with ``&``, ``|`` and ``~``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcomp import select
      >>> params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)}}
      >>> sel = select.path(r".*kernel") & select.size(min=100)
      >>> select.resolve(sel, params)
      {'conv': {'bias': False, 'kernel': True}}
    """

    def __init__(self, fn: Callable[[str, Any], bool], description: str):
        self._fn = fn
        self.description = description

    def __call__(self, path: str, leaf: Any) -> bool:
        return bool(self._fn(path, leaf))

    def __and__(self, other: Selector) -> Selector:
        other = _as_selector(other)
        return Selector(
            lambda p, x: self(p, x) and other(p, x), f"({self.description} & {other.description})"
        )

    def __or__(self, other: Selector) -> Selector:
        other = _as_selector(other)
        return Selector(
            lambda p, x: self(p, x) or other(p, x), f"({self.description} | {other.description})"
        )

    def __invert__(self) -> Selector:
        return Selector(lambda p, x: not self(p, x), f"~{self.description}")

    def __repr__(self) -> str:
        return f"Selector({self.description})"


Where = None | bool | str | Callable[[str, Any], bool] | Selector | Any


def _compile(pattern: str, what: str = "where") -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{what}={pattern!r} is not a valid regular expression: {e}") from None


def path(pattern: str) -> Selector:
    """Selects leaves whose canonical path fully matches ``pattern``."""
    if not isinstance(pattern, str):
        raise TypeError(f"select.path expects a regex string, got {type(pattern).__name__}")
    rx = _compile(pattern, "select.path")
    return Selector(lambda p, _: rx.fullmatch(p) is not None, f"path({pattern!r})")


def _check_bounds(name: str, lo: int | None, hi: int | None) -> None:
    for label, v in (("min", lo), ("max", hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"select.{name}: {label} must be a non-negative int, got {v!r}")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"select.{name}: min={lo} exceeds max={hi}")


def ndim(min: int | None = None, max: int | None = None) -> Selector:
    """Selects leaves with ``min <= ndim <= max`` (bounds optional)."""
    _check_bounds("ndim", min, max)
    return Selector(
        lambda _, x: (min is None or len(_shape(x)) >= min)
        and (max is None or len(_shape(x)) <= max),
        f"ndim(min={min}, max={max})",
    )


def size(min: int | None = None, max: int | None = None) -> Selector:
    """Selects leaves with ``min <= size <= max`` elements (bounds optional)."""
    _check_bounds("size", min, max)

    def fn(_, x):
        n = int(np.prod(_shape(x), dtype=np.int64))
        return (min is None or n >= min) and (max is None or n <= max)

    return Selector(fn, f"size(min={min}, max={max})")


_KINDS = {"float": jnp.floating, "floating": jnp.floating, "int": jnp.integer,
          "integer": jnp.integer, "bool": jnp.bool_, "complex": jnp.complexfloating}


def dtype(*dtypes: Any) -> Selector:
    """Selects leaves whose dtype is one of ``dtypes``.

    Each entry is a concrete dtype (``jnp.bfloat16``) or a kind name:
    ``"float"``, ``"int"``, ``"bool"``, ``"complex"``.
    """
    if not dtypes:
        raise ValueError("select.dtype needs at least one dtype or kind, e.g. select.dtype('float')")
    checks = []
    for d in dtypes:
        if isinstance(d, str) and d in _KINDS:
            checks.append(lambda t, k=_KINDS[d]: jnp.issubdtype(t, k))
        else:
            try:
                want = np.dtype(d)
            except TypeError:
                raise ValueError(
                    f"select.dtype: {d!r} is neither a dtype nor one of {sorted(_KINDS)}"
                ) from None
            checks.append(lambda t, w=want: t == w)

    def fn(_, x):
        t = _dtype(x)
        return t is not None and any(c(t) for c in checks)

    return Selector(fn, f"dtype{tuple(str(d) for d in dtypes)}")


def leaf_type(*types: type) -> Selector:
    """Selects leaves that are instances of ``types`` (e.g. ``jaxcomp.LowRank``)."""
    if not types or not all(isinstance(t, type) for t in types):
        raise TypeError("select.leaf_type expects one or more classes")
    return Selector(lambda _, x: isinstance(x, types), f"leaf_type{tuple(t.__name__ for t in types)}")


def everything() -> Selector:
    """Selects every leaf."""
    return Selector(lambda *_: True, "everything()")


def nothing() -> Selector:
    """Selects no leaf."""
    return Selector(lambda *_: False, "nothing()")


def _as_selector(x: Any) -> Selector:
    if isinstance(x, Selector):
        return x
    if isinstance(x, str):
        return path(x)
    if isinstance(x, bool):
        return everything() if x else nothing()
    if callable(x):
        return Selector(x, getattr(x, "__name__", "callable"))
    raise TypeError(
        f"cannot combine {type(x).__name__} with a Selector; use a regex string, a bool, "
        "a (path, leaf) -> bool callable or a jaxcomp.select Selector"
    )


def describe_where(where: Any) -> str:
    if isinstance(where, str):
        return f"where={where!r}"
    if isinstance(where, Selector):
        return f"where={where.description}"
    return f"where={getattr(where, '__name__', type(where).__name__)}"


def _note_failure(e: BaseException, what: str, path: str) -> None:
    """Adds where/path context to an exception raised by a user predicate (kept unchanged)."""
    e.add_note(f"{what} failed on parameter '{path}'")
    if isinstance(e, jax.errors.ConcretizationTypeError):
        e.add_note(
            "where= predicates run on the parameter tree as it is when traced (under jax.jit "
            "the leaves are abstract): decide from the path, shape and dtype, not from values"
        )


def _broadcast_bool_tree(where: Any, params: Any) -> Any:
    """Broadcasts a bool tree that is a prefix of ``params`` to its full structure."""

    def expand(flag, sub):
        if isinstance(flag, (bool, np.bool_)):
            return jax.tree_util.tree_map(lambda _: bool(flag), sub, is_leaf=is_leaf)
        raise TypeError(
            f"a where tree must hold Python bools, got {type(flag).__name__}; build it with "
            "jax.tree.map(lambda x: <bool>, params) or use a regex/Selector"
        )

    try:
        return jax.tree_util.tree_map(
            expand, where, params, is_leaf=lambda x: isinstance(x, (bool, np.bool_))
        )
    except ValueError as e:
        want = "\n".join(f"    {p}" for p in _first_paths(params))
        raise ValueError(
            "the where tree does not match the params tree structure (it must equal it or be "
            f"a prefix of it): {e}\n  params paths start with:\n{want}"
        ) from None


def _first_paths(tree: Any, n: int = 8) -> list[str]:
    return [p for p, _ in leaves_with_paths(tree)[:n]]


def resolve(where: Where, params: Any, *, allow_empty: bool = False, default: bool = True) -> Any:
    """Turns a ``where=`` argument into a tree of static bools.

    Args:
      where: ``None``, a bool, a bool tree (or prefix), a regex, a
        ``(path, leaf) -> bool`` callable or a :class:`Selector`.
      params: the parameter tree (arrays, boxed Flax values, compressed
        leaves; :class:`~jaxcomp.core.base.MaskedNode` placeholders are skipped).
      allow_empty: if False, a regex/callable/Selector that matches no leaf
        raises ``ValueError``.
      default: the value of ``where=None``.

    Returns:
      A tree with the structure of ``params`` whose leaves are Python bools.

    Raises:
      ValueError: a pattern that matches nothing (listing the available paths,
        closest first), an invalid regex, or a bool tree of the wrong structure.
      TypeError: an unsupported ``where`` type.
      Exception: whatever a ``where`` callable raises, re-raised unchanged (same
        object and type) with a note naming ``where`` and the parameter path.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
      >>> resolve(r".*/kernel", params)
      {'Dense_0': {'bias': False, 'kernel': True}}
    """
    if where is None:
        where = default
    if isinstance(where, (bool, np.bool_)):
        return jax.tree_util.tree_map(lambda _: bool(where), params, is_leaf=is_leaf)
    if isinstance(where, str):
        sel = path(where)
    elif isinstance(where, Selector):
        sel = where
    elif callable(where) and not isinstance(where, (dict, list, tuple)):
        sel = Selector(where, getattr(where, "__name__", "callable"))
    elif isinstance(where, (int, float, np.ndarray, jax.Array)):
        raise TypeError(
            f"where must be None, a bool, a bool tree, a regex string, a (path, leaf) -> bool "
            f"callable or a jaxcomp.select Selector; got {type(where).__name__}"
        )
    else:
        return _broadcast_bool_tree(where, params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)
    flags = []
    for kp, leaf in flat:
        p = path_str(kp)
        try:
            flags.append(bool(sel(p, leaf)))
        except Exception as e:
            _note_failure(e, describe_where(where), p)
            raise
    if not allow_empty and flat and not any(flags):
        avail = [path_str(kp) for kp, _ in flat]
        hint = where if isinstance(where, str) else None
        raise ValueError(
            f"{describe_where(where)} matches no parameter. Paths are '/'-joined keys and the regex "
            "must match the whole path (e.g. r'.*/kernel'). Available paths"
            f"{' (closest first)' if hint else ''}:\n{list_paths(avail, close_to=hint)}\n"
            "Pass allow_empty=True if selecting nothing is intended."
        )
    return jax.tree_util.tree_unflatten(treedef, flags)


def selected_paths(where: Where, params: Any, *, allow_empty: bool = False) -> list[str]:
    """Lists the canonical paths that ``where`` selects in ``params``."""
    flags = resolve(where, params, allow_empty=allow_empty)
    return [p for (p, _), f in zip(leaves_with_paths(params), jax.tree_util.tree_leaves(flags))
            if f]


class Rules:
    """Ordered first-match labelling of parameters (see :func:`rules`).

    A :class:`~jaxcomp.select.LeafRule` whose values are labels: the first
    rule that matches a leaf gives its label. A regex rule that labels no
    leaf is an error (it is most likely a typo, or shadowed by an earlier
    rule); a Selector or callable rule may match nothing.
    """

    def __init__(self, rules: Sequence[tuple[Where, str]], default: str | None):
        from jaxcomp.select.leafrules import LeafRule

        pairs = []
        for i, item in enumerate(rules):
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(
                    f"rules[{i}] must be a (where, label) pair, got {item!r}"
                )
            w, label = item
            if not isinstance(label, str):
                raise TypeError(f"rules[{i}]: label must be a string, got {type(label).__name__}")
            pairs.append((w if isinstance(w, (str, Selector)) else _as_selector(w), label))
        if default is not None and not isinstance(default, str):
            raise TypeError(f"rules default must be a string label or None, got {default!r}")
        self.rule = LeafRule(pairs, what="select.rules")
        self.default = default

    @property
    def labels(self) -> list[str]:
        out = [e.value for e in self.rule.entries]
        if self.default is not None:
            out.append(self.default)
        return list(dict.fromkeys(out))

    def __call__(self, params: Any) -> Any:
        from jaxcomp.select.leafrules import REQUIRED

        flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)
        labels = self.rule.resolve(
            [(path_str(kp), leaf) for kp, leaf in flat],
            default=REQUIRED if self.default is None else self.default,
            allow_unused=lambda entry: not isinstance(entry.key, str),
            hint="Add a rule for them or pass default='...'.")
        return jax.tree_util.tree_unflatten(treedef, labels)


def rules(rules: Sequence[tuple[Where, str]], default: str | None = None) -> Rules:
    """Ordered, first-match rules that label every parameter.

    Args:
      rules: ``(where, label)`` pairs; ``where`` is a regex, Selector, bool or
        callable. The first rule that matches a leaf gives its label.
      default: the label of leaves no rule matches; if None, such leaves are an
        error.

    Returns:
      A callable ``params -> label tree`` usable as ``labels=`` of
      :func:`jaxcomp.partition`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcomp import select
      >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}, "fc": {"kernel": jnp.ones((4, 2))}}
      >>> select.rules([(r"conv/.*", "conv"), (select.ndim(min=2), "fc")])(params)
      {'conv': {'kernel': 'conv'}, 'fc': {'kernel': 'fc'}}
    """
    return Rules(rules, default)


def mask_tree(flags: Any, tree: Any) -> Any:
    """Replaces the leaves of ``tree`` whose flag is False by :class:`MaskedNode`."""
    return jax.tree_util.tree_map(
        lambda f, x: x if f else MaskedNode(), flags, tree, is_leaf=is_leaf
    )
