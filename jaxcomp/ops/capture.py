"""Looking inside a model: the inputs and outputs of selected submodules, by path.

One mechanism serves every family that needs a model's internals —
distillation's feature taps, the calibration passes of one-shot pruning
(OBS/SparseGPT, ThiNet), layer surveys:

* :func:`capture_linen` runs a Flax linen apply function (or a linen
  ``Module``) under ``flax.linen.intercept_methods``;
* :func:`capture_nnx` runs a Flax nnx module with recording ``__call__``
  wrappers on its submodules' classes (restored afterwards; other instances
  are unaffected), installed by :func:`patched_calls`, which other families
  use to wrap layer calls the same way.

Both record, for the submodules that ``where=`` selects, the inputs and/or
the outputs of every ``__call__``, list every submodule that ran (with the
module object and its number of calls), and can end the forward pass early
(``stop_after={path: calls}``) once the last needed call is done, so a
calibration pass over an early layer does not pay for the rest of the model.

Paths are canonical module paths: the module names from the root joined by
``/`` (``fc1``, ``block_0/conv2``, ``blocks/0/lin``), the parameter paths of
:mod:`jaxcomp.select` without the collection and the leaf name
(:func:`module_of` maps one to the other); the root module is ``""``. A value
the model ``sow``\\ s is named ``<module path>/<name>``.

``where`` follows :mod:`jaxcomp.select`'s path rules: a regex (full match),
a list of regexes (each must select something) or a ``path -> bool``
callable; ``None`` records nothing (the call still lists the modules that
ran). A pattern that selects nothing raises a ``ValueError`` listing the
available paths, closest first.

Recorded values are ordinary traced values of the forward pass: they work
under ``jit`` and carry gradients. Values computed inside a transform that
the model applies internally (``nn.remat``, ``nn.scan``, ``nnx.remat``)
cannot be read from outside it; that is a clear error.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import nnx

from jaxcomp.core.errors import list_paths
from jaxcomp.select.leafrules import LeafRule
from jaxcomp.select.paths import path_str
from jaxcomp.select.selectors import Selector

__all__ = [
    "Captured",
    "ModuleInfo",
    "capture_linen",
    "capture_nnx",
    "module_of",
    "patched_calls",
]

Where = str | Sequence[str] | Callable[[str], bool] | None


class ModuleInfo(NamedTuple):
    """A submodule that ran: the module object (at its first call) and how often it was called."""

    module: Any
    calls: int


class Captured(NamedTuple):
    """What :func:`capture_linen` / :func:`capture_nnx` saw.

    Attributes:
      output: the model's output (``None`` when the pass was stopped early).
      inputs: ``{path: tuple}``, one entry per call of each selected module
        (``record="inputs"`` or ``"both"``): the call's positional argument,
        or the tuple of them when there are several.
      outputs: ``{path: tuple}``, one entry per call of each selected module
        (``record="outputs"`` or ``"both"``), and sown values (``<module>/<name>``, one
        entry per ``sow``) where the framework collects them.
      modules: ``{path: ModuleInfo}`` of every module that ran, in the order
        of their first calls (parents before their children).
      stopped: whether ``stop_after`` ended the pass early.

    ``modules`` holds module objects, which are no JAX values: a jitted
    function returns ``output``, ``inputs`` and ``outputs``, not the
    ``Captured`` itself.
    """

    output: Any
    inputs: dict[str, tuple]
    outputs: dict[str, tuple]
    modules: dict[str, ModuleInfo]
    stopped: bool


def module_of(param_path: str) -> str:
    """The canonical path of the module that owns a parameter path (``""``: the root).

    Example:
      >>> module_of("block_0/conv2/kernel"), module_of("fc1/bias"), module_of("kernel")
      ('block_0/conv2', 'fc1', '')
    """
    return param_path.rsplit("/", 1)[0] if "/" in param_path else ""


# ----------------------------------------------------------------------------- selection


class _Matcher:
    """Compiled ``where=``: whether a path is selected; checks every pattern selected something.

    The patterns are the rules of a :class:`jaxcomp.select.LeafRule` that
    gives selected paths ``True``; a path is selected when any rule matches.
    """

    def __init__(self, where: Where):
        if where is None:
            rules: list = []
        elif callable(where) and not isinstance(where, str):
            rules = [(Selector(lambda p, _: bool(where(p)), "<callable>"), True)]
        else:
            items = [where] if isinstance(where, str) else where
            if not isinstance(items, (list, tuple)) or not items or not all(
                    isinstance(w, str) for w in items):
                raise TypeError(
                    "where must be a regex string, a non-empty list of regex strings, a "
                    f"callable path -> bool or None, got {where!r}"
                )
            rules = [(w, True) for w in items]
        self.rule = LeafRule(rules, what="where") if rules else None

    def __call__(self, path: str) -> bool:
        return self.rule is not None and self.rule.first(path) is not None

    def check(self, recorded: Sequence[str], available: Sequence[str], what: str,
              stopped: bool) -> None:
        """Raises unless every pattern selected at least one recorded path."""
        if self.rule is None:
            return
        available = list(dict.fromkeys(available))
        for e in self.rule.entries:
            w = e.key if isinstance(e.key, str) else "<callable>"
            if any(e.selector(p, None) for p in recorded):
                continue
            existing = [p for p in available if e.selector(p, None)]
            if existing:
                raise ValueError(
                    f"where={w!r} selects {existing[:5]} but none of them produced an output "
                    "during the forward pass: they were not called, or were called inside a "
                    "transform (remat, scan, vmap ...) that runs a copy of the module; select a "
                    "module outside the transform"
                )
            shown = [p if p else '"" (the root module\'s output)' for p in available]
            until = " before the pass was stopped (stop_after)" if stopped else ""
            raise ValueError(
                f"where={w!r} matches no {what} path{until} (full match on '/'-joined module "
                f"names); available paths, closest first:\n"
                f"{list_paths(shown, close_to=None if w == '<callable>' else w)}"
            )


def _check_stop_after(stop_after: Any) -> dict[str, int] | None:
    if stop_after is None:
        return None
    if not isinstance(stop_after, Mapping) or not stop_after:
        raise TypeError(f"stop_after must be a non-empty {{module path: calls}} dict, got "
                        f"{stop_after!r}")
    out = {}
    for p, n in stop_after.items():
        if not isinstance(p, str) or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TypeError(f"stop_after[{p!r}]={n!r}: keys must be module paths and values "
                            "positive call counts (e.g. Captured.modules[path].calls)")
        out[p] = n
    return out


# ----------------------------------------------------------------------------- recording


_RECORD = ("outputs", "inputs", "both")


class _Stop(Exception):
    """Ends a forward pass once every ``stop_after`` call has been made."""


class _Recorder:
    """Collects calls, inputs and outputs; raises :class:`_Stop` when ``stop_after`` is met."""

    def __init__(self, matcher: _Matcher, record: str, stop_after: dict[str, int] | None):
        if record not in _RECORD:
            raise TypeError(f"record={record!r} must be one of {_RECORD}")
        self.matcher = matcher
        self.want_inputs, self.want_outputs = record != "outputs", record != "inputs"
        self.stop_after = stop_after
        self.modules: dict[str, list] = {}  # path -> [module, calls]
        self.done: dict[str, int] = {}
        self.inputs: dict[str, list] = {}
        self.outputs: dict[str, list] = {}

    def enter(self, path: str, module: Any, args: tuple) -> bool:
        entry = self.modules.setdefault(path, [module, 0])
        entry[1] += 1
        selected = self.matcher(path)
        if selected and self.want_inputs:
            self.inputs.setdefault(path, []).append(args[0] if len(args) == 1 else tuple(args))
        return selected

    def leave(self, path: str, selected: bool, out: Any, record_output: bool = True) -> None:
        if selected and self.want_outputs and record_output:
            self.outputs.setdefault(path, []).append(out)
        if self.stop_after is not None and path in self.stop_after:
            self.done[path] = self.done.get(path, 0) + 1
            if all(self.done.get(p, 0) >= n for p, n in self.stop_after.items()):
                raise _Stop

    def finish(self, output: Any, stopped: bool, sown: Mapping[str, tuple], what: str,
               live: list | None, fix: str, known: Sequence[str] = ()) -> Captured:
        """The :class:`Captured`, after the checks; ``known``: module paths that exist
        whether or not they ran (for messages)."""
        if self.stop_after is not None and not stopped:
            short = {p: f"{self.done.get(p, 0)} of {n}" for p, n in self.stop_after.items()
                     if self.done.get(p, 0) < n}
            first = next(iter(short))
            raise ValueError(
                f"stop_after: the forward pass ended before these calls were made: {short}; "
                f"modules that ran, closest first:\n{list_paths(list(self.modules), first)}"
            )
        outputs = {p: tuple(v) for p, v in self.outputs.items()}
        for p, v in sown.items():
            if self.matcher(p):
                outputs[p] = v
        inputs = {p: tuple(v) for p, v in self.inputs.items()}
        self.matcher.check(list(outputs) + list(inputs), [*self.modules, *known, *sown], what,
                           stopped)
        _check_no_escape(inputs, live, fix)
        _check_no_escape({p: v for p, v in outputs.items() if p not in sown}, live, fix)
        modules = {p: ModuleInfo(m, n) for p, (m, n) in self.modules.items()}
        return Captured(None if stopped else output, inputs, outputs, modules, stopped)


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


def _check_no_escape(values: Mapping[str, Any], live: list | None, fix: str) -> None:
    """Raises a clear error for values recorded inside a transform the model applies."""
    if live is None:
        return
    from jax._src import core

    for path, value in values.items():
        for leaf in jax.tree_util.tree_leaves(value):
            trace = getattr(leaf, "_trace", None) if isinstance(leaf, core.Tracer) else None
            if trace is not None and not any(trace is t for t in live):
                raise ValueError(
                    f"the value captured at {path!r} was computed inside a transform applied "
                    "within the model (remat, scan, vmap, jit ...) and cannot be read from "
                    "outside it; " + fix
                )


# ----------------------------------------------------------------------------- linen

_LINEN_FIX = ("pass the linen Module itself instead of its apply function (its outputs then come "
              "from capture_intermediates, which lifts correctly)")
_NNX_FIX = "select a module outside the transform (e.g. the transformed block itself)"


def _split_intermediates(tree: Mapping, prefix: tuple, calls: dict, sown: dict) -> None:
    """Walks a linen 'intermediates' collection into module outputs and sown values."""
    for k, v in tree.items():
        path = (*prefix, str(k))
        if k == "__call__":
            calls[path_str(prefix)] = tuple(v)
        elif isinstance(v, Mapping):
            _split_intermediates(v, path, calls, sown)
        else:
            sown[path_str(path)] = tuple(v) if isinstance(v, tuple) else (v,)


def capture_linen(
    fn: Callable[..., Any] | nn.Module,
    variables: Any,
    *args: Any,
    where: Where = None,
    record: str = "outputs",
    stop_after: Mapping[str, int] | None = None,
    **kwargs: Any,
) -> Captured:
    """Runs a Flax linen model and records what its selected submodules saw and returned.

    Two ways in:

    * an apply function (``model.apply``, ``ModelSpec.apply_fn``, any function
      whose work is linen ``Module.apply`` calls), called as
      ``fn(variables, *args, **kwargs)`` inside
      ``flax.linen.intercept_methods``. Submodules inside lifted transforms
      (``nn.remat``, ``nn.scan``) cannot be recorded this way (a clear error).
    * a ``linen.Module``: ``fn.apply(variables, *args, **kwargs)`` with
      ``capture_intermediates`` (a filter on module paths) and the
      ``"intermediates"`` collection mutable, so outputs inside lifted
      transforms are available, and so are values the model ``sow``\\ s into
      ``"intermediates"`` (``<module path>/<name>``). With ``mutable=[...]``
      in ``kwargs`` the output is ``(out, updated collections)``. With
      ``stop_after`` the module runs as the apply function ``fn.apply``.

    Args:
      fn: an apply function or a linen Module.
      variables: the variables dict (or whatever the apply function takes).
      *args: the model's positional arguments (the input batch first).
      where: which modules to record (see the module docstring).
      record: ``"outputs"`` (every call's output), ``"inputs"`` (every
        call's positional argument(s)) or ``"both"``.
      stop_after: ``{module path: calls}``: end the forward pass as soon as
        every listed module has been called that often (e.g. the ``calls`` of
        a previous capture); the output is then ``None``.
      **kwargs: passed to the apply function / ``Module.apply``.

    Returns:
      A :class:`Captured`.

    Raises:
      ValueError: a pattern selects nothing (available paths listed, closest
        first), no linen module ran, a value escaped a lifted transform, or
        the pass ended before ``stop_after`` was met.
      TypeError: bad ``where``, ``record``, ``stop_after`` or ``fn``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> cap = capture_linen(model.apply, v, jnp.ones((2, 4)), where="fc1", record="both")
      >>> cap.inputs["fc1"][0].shape, cap.outputs["fc1"][0].shape, list(cap.modules)
      ((2, 4), (2, 8), ['', 'fc1', 'fc2'])
      >>> early = capture_linen(model.apply, v, jnp.ones((2, 4)), stop_after={"fc1": 1})
      >>> early.output, list(early.modules)
      (None, ['', 'fc1'])
    """
    is_module = isinstance(fn, nn.Module)
    if not is_module and not callable(fn):
        raise TypeError(f"fn must be a callable (a linen apply function) or a linen Module, "
                        f"got {type(fn).__name__}")
    matcher = _Matcher(where)
    stop_after = _check_stop_after(stop_after)
    via_intermediates = is_module and stop_after is None
    rec = _Recorder(matcher, record, stop_after)

    def interceptor(next_fun, fargs, fkwargs, context):
        scope = context.module.scope
        if context.method_name != "__call__" or scope is None:
            return next_fun(*fargs, **fkwargs)
        path = path_str(scope.path)
        selected = rec.enter(path, context.module, fargs)
        out = next_fun(*fargs, **fkwargs)
        rec.leave(path, selected, out, record_output=not via_intermediates)
        return out

    live = _live_traces()
    sown: dict[str, tuple] = {}
    output, stopped = None, False
    with nn.intercept_methods(interceptor):
        try:
            if via_intermediates:
                output = _apply_with_intermediates(fn, variables, args, dict(kwargs), matcher,
                                                   rec, sown)
            else:
                apply = fn.apply if is_module else fn
                output = apply(variables, *args, **kwargs)
        except _Stop:
            stopped = True
    if not rec.modules:
        raise ValueError(
            "no Flax linen module ran inside fn, so nothing can be captured; for nnx models "
            "use capture_nnx (jaxcomp.distill.nnx_taps for feature taps)"
        )
    what = "module or sown-value" if via_intermediates else "module"
    return rec.finish(output, stopped, sown, what, live, _LINEN_FIX)


def _apply_with_intermediates(module: nn.Module, variables: Any, args: tuple, kwargs: dict,
                              matcher: _Matcher, rec: _Recorder, sown: dict) -> Any:
    def filter_fn(mdl: nn.Module, method_name: str) -> bool:
        return rec.want_outputs and method_name == "__call__" and matcher(path_str(mdl.scope.path))

    variables = {k: v for k, v in dict(variables).items() if k != "intermediates"}
    user_mutable = kwargs.pop("mutable", False)
    if user_mutable is True:
        mutable: Any = True
    elif user_mutable is False:
        mutable = ["intermediates"]
    else:
        names = [user_mutable] if isinstance(user_mutable, str) else list(user_mutable)
        mutable = [*names, "intermediates"]
    out, state = module.apply(variables, *args, capture_intermediates=filter_fn,
                              mutable=mutable, **kwargs)
    state = dict(state)
    calls: dict[str, tuple] = {}
    _split_intermediates(state.pop("intermediates", {}), (), calls, sown)
    rec.outputs.update({p: list(v) for p, v in calls.items()})
    return out if user_mutable is False else (out, state)


# ----------------------------------------------------------------------------- nnx

_PATCH_LOCK = threading.Lock()
# (class, wrapper factory) -> (original __call__, was own attribute, users)
_PATCHED: dict[tuple[type, Callable], tuple[Any, bool, int]] = {}
_ACTIVE = threading.local()


def _recorders() -> list:
    if not hasattr(_ACTIVE, "stack"):
        _ACTIVE.stack = []
    return _ACTIVE.stack


def _make_wrapper(original):
    def __call__(self, *args, **kwargs):
        active = [(rec, paths[id(self)]) for rec, paths in _recorders() if id(self) in paths]
        selected = [rec.enter(path, self, args) for rec, path in active]
        out = original(self, *args, **kwargs)
        for (rec, path), sel in zip(active, selected):
            rec.leave(path, sel, out)
        return out

    return __call__


@contextlib.contextmanager
def patched_calls(classes: Iterable[type],
                  make_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
                  ) -> Iterator[None]:
    """Replaces ``__call__`` of ``classes`` by ``make_wrapper(original)`` inside the block.

    The way to look inside (or change) what nnx layers do without touching
    the model: every instance of a patched class calls the wrapper, so the
    wrapper itself decides which instances it acts on (e.g. by ``id``). Uses
    are reference counted per ``(class, make_wrapper)``: nested or
    concurrent blocks with the same factory share one wrapper, and the class
    gets its own ``__call__`` back (or inherits it again) when the last one
    ends, also on an exception. Blocks with different factories stack (the
    later wrapper calls the earlier one) and must end in reverse order. The
    wrapper gets ``__wrapped__ = original``.

    Args:
      classes: the classes to patch.
      make_wrapper: ``original -> wrapper``, both ``(self, *args, **kwargs)``
        functions. Pass the same object (a module-level function) each time
        so that uses share one wrapper.

    Yields:
      None, while the wrappers are installed.

    Example:
      >>> class Double:
      ...     def __call__(self, x):
      ...         return 2 * x
      >>> def plus_one(original):
      ...     def __call__(self, x):
      ...         return original(self, x) + 1
      ...     return __call__
      >>> with patched_calls({Double}, plus_one):
      ...     inside = Double()(3)
      >>> inside, Double()(3)
      (7, 6)
    """
    classes = list(dict.fromkeys(classes))
    with _PATCH_LOCK:
        for cls in classes:
            key = (cls, make_wrapper)
            if key in _PATCHED:
                orig, own, count = _PATCHED[key]
                _PATCHED[key] = (orig, own, count + 1)
            else:
                own = "__call__" in cls.__dict__
                orig = cls.__dict__["__call__"] if own else cls.__call__
                _PATCHED[key] = (orig, own, 1)
                wrapper = make_wrapper(orig)
                wrapper.__wrapped__ = orig
                type.__setattr__(cls, "__call__", wrapper)
    try:
        yield
    finally:
        with _PATCH_LOCK:
            for cls in classes:
                key = (cls, make_wrapper)
                orig, own, count = _PATCHED[key]
                if count > 1:
                    _PATCHED[key] = (orig, own, count - 1)
                    continue
                del _PATCHED[key]
                if own:
                    type.__setattr__(cls, "__call__", orig)
                else:
                    type.__delattr__(cls, "__call__")


def _run_until_stop(module, *args, **kwargs):
    try:
        return module(*args, **kwargs), False
    except _Stop:
        return None, True


def capture_nnx(
    module: nnx.Module,
    *args: Any,
    where: Where = None,
    record: str = "outputs",
    stop_after: Mapping[str, int] | None = None,
    **kwargs: Any,
) -> Captured:
    """Runs a Flax nnx module and records what its selected submodules saw and returned.

    Submodule paths are the attribute paths of ``nnx.iter_modules`` joined by
    ``/`` (``fc1``, ``blocks/0/conv``; the root is ``""``; a module reachable
    at several paths is named by the first). While the module runs as
    ``module(*args, **kwargs)``, the classes of its submodules get a recording
    ``__call__`` wrapper (restored afterwards; other instances of those
    classes are unaffected), and the call runs under ``nnx.capture(...,
    nnx.Intermediate)``, so values the model ``sow``\\ s with
    ``nnx.Intermediate`` are recorded as ``<module path>/<name>`` outputs.
    Nothing is mutated. Works eagerly, under ``nnx.jit``/``jax.jit`` (after
    ``nnx.merge``) and under ``nnx.grad``/``jax.grad``.

    Args:
      module: the ``nnx.Module`` to run.
      *args: its positional arguments (the input batch first).
      where, record, stop_after: as in :func:`capture_linen`.
      **kwargs: keyword arguments for the module's ``__call__``.

    Returns:
      A :class:`Captured`.

    Raises:
      ValueError: a pattern selects nothing, a value escaped a transform, or
        the pass ended before ``stop_after`` was met.
      TypeError: ``module`` is not an ``nnx.Module``; bad ``where``,
        ``record`` or ``stop_after``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxcomp.models.nnx_models import MLPNNX
      >>> model = MLPNNX((4, 8, 3), rngs=nnx.Rngs(0))
      >>> cap = capture_nnx(model, jnp.ones((2, 4)), where="fc.", record="inputs",
      ...                   stop_after={"fc1": 1})
      >>> cap.stopped, {p: v[0].shape for p, v in cap.inputs.items()}
      (True, {'fc1': (2, 4)})
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be an nnx.Module, got {type(module).__name__}")
    matcher = _Matcher(where)
    stop_after = _check_stop_after(stop_after)
    rec = _Recorder(matcher, record, stop_after)
    paths: dict[int, str] = {}
    classes: set[type] = set()
    for p, m in nnx.iter_modules(module):
        paths.setdefault(id(m), path_str(p))
        classes.add(type(m))
    live = _live_traces()
    stack = _recorders()
    entry = (rec, paths)
    stack.append(entry)
    try:
        with patched_calls(classes, _make_wrapper):
            (output, stopped), sown_state = nnx.capture(_run_until_stop, nnx.Intermediate)(
                module, *args, **kwargs)
    finally:
        del stack[next(i for i, e in enumerate(stack) if e is entry)]
    sown: dict[str, tuple] = {}
    flat = jax.tree_util.tree_flatten_with_path(
        sown_state, is_leaf=lambda v: isinstance(v, nnx.Variable))[0]
    for kp, var in flat:
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        sown[path_str(kp)] = tuple(value) if isinstance(value, tuple) else (value,)
    return rec.finish(output, stopped, sown, "module or sown-value", live, _NNX_FIX,
                      known=list(paths.values()))
