"""One value per parameter from a scalar, ordered pattern rules or a callable.

Many arguments give each parameter its own value: a sparsity, a pruning
rate, a bit width, a storage format, a dtype. They all accept the same forms,
resolved here by :class:`LeafRule` and :func:`per_leaf`:

* a **scalar** (anything that is none of the forms below): the same value
  for every leaf;
* a **mapping** ``{pattern: value}`` (or a mapping-like config such as an
  ``ml_collections.ConfigDict``) or a **list/tuple of** ``(pattern,
  value)`` **pairs**. A pattern is a regex string, full-matched against the
  leaf's canonical path (``block_0/Conv_0/kernel``, see
  :mod:`jaxcomp.select.paths`), a :class:`~jaxcomp.select.Selector`, or a
  ``(path, leaf) -> bool`` callable. The first pattern that matches a leaf,
  in the given order, gives its value. Leaves that no pattern matches take
  ``default``; without a default they are an error that names them. A
  pattern that gives no leaf its value (it matches nothing, or earlier
  patterns take everything it matches) is an error listing the available
  paths, closest first, unless ``allow_unused=True``;
* a **callable** ``(path, leaf) -> value``.

A ``validate(value, label)`` hook checks each value and returns the value to
use; ``label`` names where it came from (``rates['fc2/.*']``, ``bits for
'fc/kernel'``), so range errors say which entry is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax

from jaxcomp.core.errors import list_paths
from jaxcomp.select.paths import is_leaf, path_str
from jaxcomp.select.selectors import Selector

__all__ = ["REQUIRED", "Entry", "LeafRule", "per_leaf"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The ``default`` meaning "every leaf must be matched by a pattern"."""

_SCALAR = object()


class Entry(NamedTuple):
    """One ``(pattern, value)`` rule of a :class:`LeafRule`.

    Attributes:
      key: the pattern as given (a regex string, a Selector or a callable).
      label: how messages name this rule, e.g. ``"rates['fc2/.*']"``.
      selector: the compiled pattern, a ``(path, leaf) -> bool`` Selector.
      value: the (validated) value the rule gives.
    """

    key: Any
    label: str
    selector: Selector
    value: Any


def is_mapping(x: Any) -> bool:
    """Mappings, and mapping-like configs (``ml_collections.ConfigDict``) that are no Mapping."""
    if isinstance(x, Mapping):
        return True
    return (not callable(x) and callable(getattr(x, "items", None))
            and callable(getattr(x, "keys", None)))


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return repr(key)
    if isinstance(key, Selector):
        return key.description
    return getattr(key, "__name__", type(key).__name__)


class LeafRule:
    """A compiled per-leaf rule (see the module docstring for the accepted forms).

    Args:
      rule: a scalar, a ``{pattern: value}`` mapping, a sequence of
        ``(pattern, value)`` pairs, or a ``(path, leaf) -> value`` callable.
      what: the argument's name, used in messages (``"weight_bits"``).
      validate: optional ``validate(value, label) -> value``; called once
        per scalar or rule value when the rule is compiled, and per leaf on
        a callable's results. It raises on bad values and returns the value
        to use.
      callable_values: if True, a callable ``rule`` is a scalar value (for
        values that are themselves functions, such as schedules).

    Raises:
      TypeError: a malformed rule list or a pattern that is neither a
        string, a Selector nor a callable.
      ValueError: an invalid regex (naming it).

    Example:
      >>> import jax.numpy as jnp
      >>> rule = LeafRule({r"conv/.*": 8, r".*": 4}, what="bits")
      >>> rule.value("conv/kernel", None), rule.value("fc/kernel", None)
      (8, 4)
    """

    def __init__(self, rule: Any, *, what: str = "rule",
                 validate: Callable[[Any, str], Any] | None = None,
                 callable_values: bool = False):
        self.what = what
        self._validate = validate
        self.fn: Callable[[str, Any], Any] | None = None
        self.scalar: Any = _SCALAR
        self.entries: tuple[Entry, ...] = ()
        if is_mapping(rule):
            self.entries = tuple(self._entry(k, v) for k, v in rule.items())
        elif isinstance(rule, (list, tuple)):
            entries = []
            for i, item in enumerate(rule):
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise TypeError(
                        f"{what}[{i}] must be a (pattern, value) pair, got {item!r}; a list or "
                        f"tuple {what} is read as ordered rules (to give every leaf a tuple, "
                        f"pass {{'.*': value}})")
                entries.append(self._entry(*item))
            self.entries = tuple(entries)
        elif callable(rule) and not callable_values:
            self.fn = rule
        else:
            self.scalar = self._check(rule, what)

    @property
    def is_rules(self) -> bool:
        """Whether this rule is pattern-based (a mapping or a list of pairs)."""
        return self.fn is None and self.scalar is _SCALAR

    def _check(self, value: Any, label: str) -> Any:
        return value if self._validate is None else self._validate(value, label)

    def _entry(self, key: Any, value: Any) -> Entry:
        label = f"{self.what}[{_key_text(key)}]"
        if isinstance(key, str):
            try:
                rx = re.compile(key)
            except re.error as e:
                raise ValueError(f"{self.what}: invalid regex {key!r}: {e}") from None
            sel = Selector(lambda p, _, rx=rx: rx.fullmatch(p) is not None, f"path({key!r})")
        elif isinstance(key, Selector):
            sel = key
        elif callable(key):
            sel = Selector(key, _key_text(key))
        else:
            raise TypeError(
                f"{self.what}: pattern {key!r} must be a regex string (full match on the path), "
                "a jaxcomp.select Selector or a (path, leaf) -> bool callable")
        return Entry(key, label, sel, self._check(value, label))

    def first(self, path: str, leaf: Any = None) -> int | None:
        """Index of the first entry whose pattern matches, or None.

        An exception raised by a pattern (a callable or Selector) propagates
        with a note naming the rule (its position and label) and the path.
        """
        for i, e in enumerate(self.entries):
            try:
                hit = e.selector(path, leaf)
            except Exception as err:
                err.add_note(f"(raised by rule {i} of {self.what}, {e.label}, "
                             f"on parameter '{path}')")
                raise
            if hit:
                return i
        return None

    def _call(self, path: str, leaf: Any) -> Any:
        try:
            out = self.fn(path, leaf)
        except Exception as e:
            e.add_note(f"(raised by the {self.what} callable on parameter '{path}')")
            raise
        return self._check(out, f"{self.what} for '{path}'")

    def value(self, path: str, leaf: Any = None, default: Any = REQUIRED) -> Any:
        """The value for one leaf (no check that every pattern is used).

        Raises:
          ValueError: no pattern matches and ``default`` is :data:`REQUIRED`.
        """
        if self.scalar is not _SCALAR:
            return self.scalar
        if self.fn is not None:
            return self._call(path, leaf)
        i = self.first(path, leaf)
        if i is not None:
            return self.entries[i].value
        if default is REQUIRED:
            raise ValueError(self._unmatched_message([path], "parameter", None))
        return default

    def resolve(self, pairs: Sequence[tuple[str, Any]], *, default: Any = REQUIRED,
                noun: str = "parameter", allow_unused: bool | Callable[[Entry], bool] = False,
                hint: str | None = None) -> list[Any]:
        """One value per ``(path, leaf)`` pair, in order.

        Args:
          pairs: the leaves, as ``(path, leaf)`` pairs (``leaf`` may be None
            when only paths are known).
          default: the value of leaves no pattern matches; :data:`REQUIRED`
            makes them an error.
          noun: what the leaves are, for messages (``"selected parameter"``).
          allow_unused: accept patterns that give no leaf its value; a
            callable ``entry -> bool`` accepts only the entries it approves.
          hint: how to fix unmatched leaves (replaces the generic advice).

        Raises:
          ValueError: unmatched leaves without a default (naming them), or a
            pattern that gives no leaf its value (listing the paths).
        """
        pairs = list(pairs)
        if self.scalar is not _SCALAR:
            return [self.scalar] * len(pairs)
        if self.fn is not None:
            return [self._call(p, x) for p, x in pairs]
        out, unmatched = [], []
        used = [False] * len(self.entries)
        for p, x in pairs:
            i = self.first(p, x)
            if i is None:
                unmatched.append(p)
                out.append(default)
            else:
                used[i] = True
                out.append(self.entries[i].value)
        if unmatched and default is REQUIRED:
            raise ValueError(self._unmatched_message(unmatched, noun, hint))
        if allow_unused is not True:
            for e, u in zip(self.entries, used):
                if not u and not (allow_unused and allow_unused(e)):
                    raise ValueError(self._unused_message(e, pairs, noun))
        return out

    def _unmatched_message(self, paths: list[str], noun: str, hint: str | None) -> str:
        keys = ", ".join(_key_text(e.key) for e in self.entries) or "none"
        head = (f"no {self.what} pattern matches {noun} '{paths[0]}'" if len(paths) == 1 else
                f"no {self.what} pattern matches these {noun}s:\n{list_paths(paths)}\n")
        return (f"{head} (patterns, first match wins: {keys}) and {self.what} has no default. "
                + (hint or "Add a pattern for them (full match on the path; r'.*' last "
                   "matches everything)."))

    def _unused_message(self, e: Entry, pairs: list[tuple[str, Any]], noun: str) -> str:
        paths = [p for p, _ in pairs]
        hits = [p for p, x in pairs if e.selector(p, x)]
        if hits:
            return (f"{self.what} pattern {_key_text(e.key)} gives no {noun} its value: every "
                    f"path it matches is taken by an earlier pattern:\n{list_paths(hits)}\n"
                    "Reorder the patterns (the first match wins) or drop this one.")
        # (list_paths cannot order an empty list by closeness)
        close = e.key if isinstance(e.key, str) and paths else None
        return (f"{self.what} pattern {_key_text(e.key)} matches no {noun} path (a regex must "
                "match the whole '/'-joined path, e.g. r'.*/kernel'). Available paths"
                f"{' (closest first)' if close else ''}:\n{list_paths(paths, close_to=close)}")

    def __repr__(self) -> str:
        if self.fn is not None:
            return f"LeafRule({self.what}: callable {_key_text(self.fn)})"
        if self.scalar is not _SCALAR:
            return f"LeafRule({self.what}: {self.scalar!r} everywhere)"
        rules = ", ".join(f"{_key_text(e.key)}: {e.value!r}" for e in self.entries)
        return f"LeafRule({self.what}: {{{rules}}})"


def _pairs(tree: Any) -> list[tuple[str, Any]]:
    from jaxcomp.select.selection import Selected

    if isinstance(tree, Selected):
        return tree.pairs
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(kp), x) for kp, x in flat]


def per_leaf(
    rule: Any,
    tree: Any = None,
    *,
    paths: Sequence[str] | None = None,
    default: Any = REQUIRED,
    what: str = "rule",
    noun: str = "parameter",
    validate: Callable[[Any, str], Any] | None = None,
    allow_unused: bool = False,
    callable_values: bool = False,
    hint: str | None = None,
) -> list[Any]:
    """Resolves a per-leaf rule to one value per leaf.

    Args:
      rule: a scalar, a ``{pattern: value}`` mapping, a sequence of
        ``(pattern, value)`` pairs or a ``(path, leaf) -> value`` callable
        (see the module docstring).
      tree: a parameter tree, or a :class:`~jaxcomp.select.Selected` (its
        selected leaves). Exclusive with ``paths``.
      paths: bare canonical paths (callables and Selectors then get
        ``leaf=None``).
      default: the value of leaves no pattern matches; the default,
        :data:`REQUIRED`, makes them an error.
      what: the argument's name for messages.
      noun: what the leaves are, for messages.
      validate: ``validate(value, label) -> value``, see :class:`LeafRule`.
      allow_unused: accept patterns that give no leaf its value.
      callable_values: treat a callable ``rule`` as one value for all leaves.
      hint: how to fix unmatched leaves, replacing the generic advice.

    Returns:
      A list with one value per leaf, in flattening order (the order of
      :func:`jaxcomp.select.paths`), or per entry of ``paths``.

    Raises:
      ValueError: unmatched leaves without a default, an unused pattern, an
        invalid regex, or a value ``validate`` rejects.
      TypeError: a malformed rule, or both/neither of ``tree`` and ``paths``.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
      ...           "fc": {"kernel": jnp.ones((4, 2))}}
      >>> per_leaf({r"conv/kernel": 8, r".*/kernel": 4}, params, default=32, what="bits")
      [32, 8, 4]
      >>> per_leaf(lambda path, leaf: leaf.ndim, params)
      [1, 4, 2]
    """
    if (tree is None) == (paths is None):
        raise TypeError("per_leaf: pass exactly one of a tree (or Selected) and paths=")
    if paths is not None:
        if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
            raise TypeError("per_leaf: paths= must be a sequence of path strings")
        pairs = [(p, None) for p in paths]
    else:
        pairs = _pairs(tree)
    return LeafRule(rule, what=what, validate=validate, callable_values=callable_values).resolve(
        pairs, default=default, noun=noun, allow_unused=allow_unused, hint=hint)
