"""Feature taps: capture named intermediate activations without editing model code.

A *tap* is the output of a submodule's ``__call__`` (or a value the model
``sow``\\ s), named by the submodule's canonical path: the module names from
the root joined by ``/`` (``stage2_block0``, ``block_0/conv2``, ``fc1``), the
same style as parameter paths in :mod:`jaxcomp.select` without the trailing
``kernel``. The root module's own output has the empty path ``""``; a sown
value is named ``<module path>/<name>``.

``where`` selects taps: a regex (full match), a list of regexes (each must
match at least one path) or a callable ``path -> bool``. A pattern that
matches nothing raises a ``ValueError`` listing the available paths, closest
first.

A module called once gives an array; a module called several times (weight
sharing) gives a tuple of its outputs in call order.

Taps are ordinary traced values of the forward pass: they work under ``jit``
and carry gradients w.r.t. the parameters.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from jaxcomp.core.errors import list_paths
from jaxcomp.select.leafrules import LeafRule
from jaxcomp.select.paths import path_str
from jaxcomp.select.selectors import Selector

__all__ = ["linen_taps", "nnx_taps"]

Where = str | Sequence[str] | Callable[[str], bool]


class _Matcher:
    """Compiled ``where=``: tells whether a path is selected; checks every pattern was used.

    The patterns are the rules of a :class:`jaxcomp.select.LeafRule` that
    gives selected paths ``True``; a path is selected when any rule matches.
    """

    def __init__(self, where: Where):
        if callable(where) and not isinstance(where, str):
            rules = [(Selector(lambda p, _: bool(where(p)), "<callable>"), True)]
        else:
            items = [where] if isinstance(where, str) else list(where)
            if not items or not all(isinstance(w, str) for w in items):
                raise TypeError(
                    "where must be a regex string, a non-empty list of regex strings or a "
                    f"callable path -> bool, got {where!r}"
                )
            rules = [(w, True) for w in items]
        self.rule = LeafRule(rules, what="where")

    def __call__(self, path: str) -> bool:
        return self.rule.first(path) is not None

    def check(self, captured: Sequence[str], available: Sequence[str], what: str) -> None:
        """Raises unless every pattern matched at least one captured path.

        Args:
          captured: the paths whose values were recorded.
          available: every path that could have been tapped (for the message).
          what: noun for the message ("module", "module or sown-value").
        """
        available = list(dict.fromkeys(available))
        for e in self.rule.entries:
            w = e.key if isinstance(e.key, str) else "<callable>"
            if any(e.selector(p, None) for p in captured):
                continue
            existing = [p for p in available if e.selector(p, None)]
            if existing:
                raise ValueError(
                    f"where={w!r} selects {existing[:5]} but none of them produced an output "
                    "during the forward pass: they were not called, or were called inside a "
                    "transform (remat, scan, vmap ...) that runs a copy of the module; tap a "
                    "module outside the transform"
                )
            shown = [p if p else '"" (the root module\'s output)' for p in available]
            raise ValueError(
                f"where={w!r} matches no {what} path (full match on '/'-joined module "
                f"names); available paths, closest first:\n"
                f"{list_paths(shown, close_to=None if w == '<callable>' else w)}"
            )


def _collect(taps: dict, path: str, value: Any) -> None:
    if path in taps:
        prev = taps[path]
        taps[path] = (*prev, value) if isinstance(prev, _Calls) else _Calls((prev, value))
    else:
        taps[path] = value


class _Calls(tuple):
    """Marks the outputs of a module called more than once."""


def _finish(taps: dict) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, _Calls) else v for k, v in taps.items()}


def _live_traces() -> list | None:
    """The chain of JAX traces active now (None if JAX internals are not as expected)."""
    try:
        from jax._src import core

        chain, trace = [], core.trace_ctx.trace
        while trace is not None:
            chain.append(trace)
            trace = getattr(trace, "parent_trace", None)
        return chain
    except (ImportError, AttributeError):  # pragma: no cover - depends on JAX internals
        return None


_LINEN_ESCAPE_FIX = (
    "pass the linen Module itself as the first argument of linen_taps (it then uses "
    "capture_intermediates, which lifts correctly)"
)
_NNX_ESCAPE_FIX = "tap a module outside the transform (e.g. the transformed block itself)"


def _check_no_escape(taps: Mapping[str, Any], live: list | None, fix: str) -> None:
    """Raises a clear error for values captured inside a lifted transform (nn.remat, ...)."""
    if live is None:
        return
    from jax._src import core

    for path, value in taps.items():
        for leaf in jax.tree_util.tree_leaves(value):
            trace = getattr(leaf, "_trace", None) if isinstance(leaf, core.Tracer) else None
            if trace is not None and not any(trace is t for t in live):
                raise ValueError(
                    f"the tap {path!r} was computed inside a transform applied within the "
                    "model (remat, scan, vmap, jit ...) and cannot be read from outside it; " + fix
                )


def _accepts_train(module: nn.Module) -> bool:
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False
    return "train" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _split_intermediates(tree: Mapping, prefix: tuple, calls: dict, sown: dict) -> None:
    """Walks a linen 'intermediates' collection into module outputs and sown values."""
    for k, v in tree.items():
        path = (*prefix, str(k))
        if k == "__call__":
            calls[path_str(prefix)] = v
        elif isinstance(v, Mapping):
            _split_intermediates(v, path, calls, sown)
        else:
            sown[path_str(path)] = v


def _unwrap(v: Any) -> Any:
    if isinstance(v, tuple) and len(v) == 1:
        return v[0]
    return tuple(v) if isinstance(v, tuple) else v


def _module_taps(module: nn.Module, variables, x, args, where, train, kwargs):
    matcher = _Matcher(where)
    seen: list[str] = []

    def filter_fn(mdl: nn.Module, method_name: str) -> bool:
        if method_name != "__call__":
            return False
        path = path_str(mdl.scope.path)
        seen.append(path)
        return matcher(path)

    variables = {k: v for k, v in dict(variables).items() if k != "intermediates"}
    user_mutable = kwargs.pop("mutable", False)
    if user_mutable is True:
        mutable: Any = True
    elif user_mutable is False:
        mutable = ["intermediates"]
    else:
        names = [user_mutable] if isinstance(user_mutable, str) else list(user_mutable)
        mutable = [*names, "intermediates"]
    if train is not None and _accepts_train(module):
        kwargs["train"] = train
    out, state = module.apply(
        variables, x, *args, capture_intermediates=filter_fn, mutable=mutable, **kwargs
    )
    state = dict(state)
    inter = state.pop("intermediates", {})
    calls: dict[str, Any] = {}
    sown: dict[str, Any] = {}
    _split_intermediates(inter, (), calls, sown)
    taps = {p: _unwrap(v) for p, v in calls.items()}
    for p, v in sown.items():
        if matcher(p):
            taps[p] = _unwrap(v)
    matcher.check(list(taps), [*seen, *sown], "module or sown-value")
    return (out if user_mutable is False else (out, state)), taps


def linen_taps(
    apply_fn_or_module: Callable[..., Any] | nn.Module,
    variables: Mapping[str, Any],
    x: Any,
    *args: Any,
    where: Where,
    train: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Runs a Flax linen model and returns its output plus selected intermediate outputs.

    Two ways in:

    * an apply function (``ModelSpec.apply_fn``, ``model.apply``, any function
      that ends in linen ``Module.apply`` calls): called as
      ``apply_fn(variables, x, *args, train=train, **kwargs)`` inside
      ``flax.linen.intercept_methods``, which records the outputs of the
      selected submodules' ``__call__``. Extra keywords (``rng=``,
      ``return_state=``) pass through, so the output may be ``(logits,
      state)``. Submodules inside lifted transforms (``nn.remat``,
      ``nn.scan``) cannot be tapped this way (a clear error says so).
    * a ``linen.Module``: runs ``module.apply`` with ``capture_intermediates``
      (a filter on module paths) and the ``"intermediates"`` collection
      mutable, so lifted transforms work and values the model ``sow``\\ s into
      ``"intermediates"`` are available as ``<module path>/<name>``. If you
      pass ``mutable=[...]``, the output is ``(out, updated collections)``.

    Args:
      apply_fn_or_module: an apply function or a linen Module.
      variables: the variables dict (``{"params": ..., ...}``); with an apply
        function, whatever it accepts.
      x: the input batch.
      *args: further positional arguments for the model.
      where: regex (full match on the module path), list of regexes or a
        ``path -> bool`` callable.
      train: passed as ``train=`` when not None (for a Module only if its
        ``__call__`` takes ``train``).
      **kwargs: passed to the apply function / ``Module.apply``.

    Returns:
      ``(output, taps)``; ``taps`` maps each selected path to its activation
      (a tuple of activations for modules called more than once), in call
      order.

    Raises:
      ValueError: a pattern matches no path (the message lists the available
        paths, closest first), or a tap escaped a lifted transform.

    Example:
      >>> import jax
      >>> from jaxcomp.models import get_model
      >>> spec = get_model("mnist1d_mlp")
      >>> variables = spec.init(jax.random.key(0))
      >>> logits, taps = linen_taps(spec.apply_fn, variables, spec.example_input(2),
      ...                           where=r"fc[12]")
      >>> {k: v.shape for k, v in taps.items()}
      {'fc1': (2, 100), 'fc2': (2, 100)}
    """
    if isinstance(apply_fn_or_module, nn.Module):
        return _module_taps(apply_fn_or_module, variables, x, args, where, train, dict(kwargs))
    if not callable(apply_fn_or_module):
        raise TypeError(
            f"apply_fn_or_module must be a callable or a linen Module, got "
            f"{type(apply_fn_or_module).__name__}"
        )
    matcher = _Matcher(where)
    seen: list[str] = []
    taps: dict[str, Any] = {}

    def interceptor(next_fun, fargs, fkwargs, context):
        out = next_fun(*fargs, **fkwargs)
        if context.method_name == "__call__":
            scope = context.module.scope
            if scope is not None:
                path = path_str(scope.path)
                seen.append(path)
                if matcher(path):
                    _collect(taps, path, out)
        return out

    if train is not None:
        kwargs["train"] = train
    live = _live_traces()
    with nn.intercept_methods(interceptor):
        out = apply_fn_or_module(variables, x, *args, **kwargs)
    if not seen:
        raise ValueError(
            "no Flax linen module ran inside apply_fn_or_module, so nothing can be tapped; "
            "for nnx models use jaxcomp.distill.nnx_taps"
        )
    matcher.check(list(taps), seen, "module")
    taps = _finish(taps)
    _check_no_escape(taps, live, _LINEN_ESCAPE_FIX)
    return out, taps


# ----------------------------------------------------------------------------- nnx

_PATCH_LOCK = threading.Lock()
_PATCHED: dict[type, tuple[Any, bool, int]] = {}  # cls -> (original, was_own, refcount)
_ACTIVE = threading.local()


def _recorders() -> list:
    if not hasattr(_ACTIVE, "stack"):
        _ACTIVE.stack = []
    return _ACTIVE.stack


def _make_wrapper(original):
    def __call__(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        for targets, taps in _recorders():
            path = targets.get(id(self))
            if path is not None:
                _collect(taps, path, out)
        return out

    __call__.__wrapped__ = original
    return __call__


@contextlib.contextmanager
def _patched_calls(classes: set[type]):
    """Installs recording ``__call__`` wrappers on ``classes`` (reference counted)."""
    with _PATCH_LOCK:
        for cls in classes:
            if cls in _PATCHED:
                orig, own, count = _PATCHED[cls]
                _PATCHED[cls] = (orig, own, count + 1)
            else:
                own = "__call__" in cls.__dict__
                orig = cls.__dict__["__call__"] if own else cls.__call__
                _PATCHED[cls] = (orig, own, 1)
                type.__setattr__(cls, "__call__", _make_wrapper(orig))
    try:
        yield
    finally:
        with _PATCH_LOCK:
            for cls in classes:
                orig, own, count = _PATCHED[cls]
                if count > 1:
                    _PATCHED[cls] = (orig, own, count - 1)
                    continue
                del _PATCHED[cls]
                if own:
                    type.__setattr__(cls, "__call__", orig)
                else:
                    type.__delattr__(cls, "__call__")


def nnx_taps(
    module: nnx.Module,
    x: Any,
    *args: Any,
    where: Where,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Runs a Flax nnx module and returns its output plus selected intermediate outputs.

    Submodule paths are the attribute paths of ``nnx.iter_modules`` joined by
    ``/`` (``fc1``, ``blocks/0/conv``; the root is ``""``). While the module
    runs, the classes of the *selected* submodules get a recording
    ``__call__`` wrapper (restored afterwards; other instances of those
    classes are unaffected), and the call runs under ``nnx.capture(...,
    nnx.Intermediate)``, so values the model ``sow``\\ s with
    ``nnx.Intermediate`` are available as ``<module path>/<name>``. Nothing is
    mutated. Works eagerly, under ``nnx.jit``/``jax.jit`` (after
    ``nnx.merge``) and under ``nnx.grad``/``jax.grad``: taps carry gradients.

    Args:
      module: the ``nnx.Module`` to run as ``module(x, *args, **kwargs)``.
      x: the input.
      *args: further positional arguments.
      where: regex (full match), list of regexes or ``path -> bool`` callable.
      **kwargs: keyword arguments for the module's ``__call__``.

    Returns:
      ``(output, taps)`` as in :func:`linen_taps`.

    Raises:
      ValueError: a pattern matches no module or sown-value path.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxcomp.models.nnx_models import MLPNNX
      >>> model = MLPNNX((4, 8, 3), rngs=nnx.Rngs(0))
      >>> out, taps = nnx_taps(model, jnp.ones((2, 4)), where="fc1")
      >>> taps["fc1"].shape
      (2, 8)
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be an nnx.Module, got {type(module).__name__}")
    matcher = _Matcher(where)
    modules = [(path_str(p), m) for p, m in nnx.iter_modules(module)]
    targets = {id(m): p for p, m in modules if matcher(p)}
    classes = {type(m) for p, m in modules if id(m) in targets}
    taps: dict[str, Any] = {}
    live = _live_traces()
    stack = _recorders()
    entry = (targets, taps)
    stack.append(entry)
    try:
        with _patched_calls(classes):
            out, sown_state = nnx.capture(module, nnx.Intermediate)(x, *args, **kwargs)
    finally:
        del stack[next(i for i, e in enumerate(stack) if e is entry)]
    sown_paths = []
    flat = jax.tree_util.tree_flatten_with_path(
        sown_state, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )[0]
    for kp, var in flat:
        p = path_str(kp)
        sown_paths.append(p)
        if matcher(p):
            value = var.get_value() if isinstance(var, nnx.Variable) else var
            taps[p] = _unwrap(value)
    matcher.check(list(taps), [p for p, _ in modules] + sown_paths, "module or sown-value")
    taps = _finish(taps)
    _check_no_escape(taps, live, _NNX_ESCAPE_FIX)
    return out, taps
