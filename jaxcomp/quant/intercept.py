"""Activation quantization without rewriting the model: interceptors selected by module path.

A model written with plain ``nn.Dense`` / ``nn.Conv`` (Flax linen) or
``nnx.Linear`` / ``nnx.Conv`` (Flax nnx) gets fake-quantized activations
from the outside: while it runs, the ``__call__`` of every selected layer
quantizes its input (and/or its output) with a calibrated range. Nothing in
the model changes and nothing is mutated.

**Rules.** ``rules`` give each layer its :class:`ActQuant` by module path
(:mod:`jaxcomp.select.leafrules` forms: one value for every layer, a
``{regex: value}`` mapping or ``(pattern, value)`` pairs, first match wins,
or a ``(path, module) -> value`` callable). A value is a bit width (``8`` →
``ActQuant(8)``: the layer's inputs, asymmetric), an :class:`ActQuant`, or
``None`` (leave the layer alone). Module paths are the ``/``-joined module
names of :mod:`jaxcomp.ops.capture` (``Dense_0``, ``block_0/conv2``,
``blocks/0/lin``). Only layers of the ``types`` (default: the linen and
nnx dense and convolution layers) are considered, so ``".*"`` does not
match the root module or a block. A pattern that selects no layer that ran
is an error listing the layers, closest first.

**Ranges, carried functionally.** A layer quantizes with a range
``[lo, hi]`` (an :class:`ActRange`) kept outside the model in an
:class:`ActRanges` pytree (``ranges.inputs[path]``,
``ranges.outputs[path]``), passed in and returned like flax's
``intermediates``:

* ``calibrate``: a float forward pass (nothing quantized) that observes the
  min and max of every selected tensor; merged with given ranges by
  min/max (several calibration batches);
* ``train``: quantizes with the exponential moving average
  ``r ← momentum · r + (1 - momentum) · observed`` of the ranges, updated
  from this pass's activations (Jacob et al. 2018), and returns the new
  ranges; without ranges, the first observation starts them;
* ``quantize`` (evaluation): the ranges are frozen.

Ranges are constants for differentiation (``stop_gradient``); the gradient
w.r.t. activations is the clipped straight-through estimator of
:func:`~jaxcomp.quant.uniform.fake_quant`. Everything works under ``jit``
and ``grad``: the ranges are ordinary arrays of the traced computation.
The scale of a range comes from :func:`~jaxcomp.quant.uniform.compute_scale`
over ``[lo, hi]`` (asymmetric: the range widened to contain 0, integer zero
point; symmetric: ``max(|lo|, |hi|)``).

Two ways in: :func:`act_quantized` wraps an apply function (linen) or an
nnx module and gives ``__call__`` / ``train`` / ``calibrate``;
:func:`quantize_activations` is the context manager beneath it.

References:
  Jacob et al. 2018, "Quantization and training of neural networks for
  efficient integer-arithmetic-only inference", arXiv:1712.05877.
  Krishnamoorthi 2018, quantization whitepaper, arXiv:1806.08342.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcomp.ops.capture import patched_calls
from jaxcomp.quant.uniform import compute_scale, fake_quant, quant_range, validate_bits
from jaxcomp.select.leafrules import LeafRule
from jaxcomp.select.paths import path_str

__all__ = [
    "LINEN_LAYERS",
    "MODES",
    "NNX_LAYERS",
    "ActQuant",
    "ActQuantized",
    "ActRange",
    "ActRanges",
    "ActSession",
    "act_quantized",
    "quantize_activations",
    "range_scale",
]

MODES = ("quantize", "train", "calibrate")
LINEN_LAYERS: tuple[type, ...] = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose)
"""The linen layer classes whose calls rules may select by default."""
NNX_LAYERS: tuple[type, ...] = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.ConvTranspose)
"""The nnx layer classes whose calls rules may select by default."""


class ActQuant(NamedTuple):
    """How one layer's activations are quantized.

    Attributes:
      bits: bit width in ``[1, 16]`` (``[2, 16]`` symmetric).
      inputs: quantize the layer's (first positional) input.
      outputs: quantize the layer's output.
      symmetric: signed narrow range with zero point 0 (True) or unsigned
        codes with an integer zero point (False, the usual choice for
        activations).
    """

    bits: int = 8
    inputs: bool = True
    outputs: bool = False
    symmetric: bool = False


class ActRange(NamedTuple):
    """An activation range ``[lo, hi]`` (float32 scalars)."""

    lo: jax.Array
    hi: jax.Array


class ActRanges(NamedTuple):
    """The ranges of every quantized tensor: ``{module path: ActRange}`` per side."""

    inputs: dict[str, ActRange]
    outputs: dict[str, ActRange]


def range_scale(r: ActRange, *, bits: int, symmetric: bool = False) -> tuple[jax.Array, jax.Array]:
    """Scale and zero point (float32 scalars) that quantize the range ``r``.

    Args:
      r: the range.
      bits: bit width.
      symmetric: as in :func:`~jaxcomp.quant.uniform.compute_scale`.

    Returns:
      ``(scale, zero_point)`` of :func:`~jaxcomp.quant.uniform.compute_scale`
      over ``[lo, hi]``.

    Raises:
      ValueError: bad bits, or a concrete range holding NaN/Inf.

    Example:
      >>> s, z = range_scale(ActRange(jnp.float32(-1.0), jnp.float32(3.0)), bits=2)
      >>> float(s), float(z)
      (1.3333333730697632, 1.0)
    """
    x = jnp.stack([jnp.asarray(r.lo, jnp.float32), jnp.asarray(r.hi, jnp.float32)])
    s, z = compute_scale(x, bits=bits, symmetric=symmetric)
    return s.reshape(()), z.reshape(())


# ----------------------------------------------------------------------------- rules


def _spec(value: Any, label: str) -> ActQuant | None:
    if value is None:
        return None
    if isinstance(value, ActQuant):
        bits = validate_bits(value.bits, f"{label}.bits")
        quant_range(bits, symmetric=bool(value.symmetric))
        if not (value.inputs or value.outputs):
            raise ValueError(f"{label}: ActQuant with inputs=False and outputs=False quantizes "
                             "nothing; use None to leave a layer alone")
        return value._replace(bits=bits)
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        bits = validate_bits(value, label)
        quant_range(bits, symmetric=False)
        return ActQuant(bits)
    raise TypeError(f"{label}: expected a bit width (int), an ActQuant or None, got "
                    f"{type(value).__name__} {value!r}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {MODES}")


def _check_momentum(momentum: Any) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not (
            0.0 <= float(momentum) < 1.0):
        raise ValueError(f"momentum={momentum!r} must be a float in [0, 1) (the weight of the "
                         "old range in the moving average; 0 keeps only the last batch)")
    return float(momentum)


def _check_types(types: Any, default: tuple[type, ...]) -> tuple[type, ...]:
    if types is None:
        return default
    items = (types,) if isinstance(types, type) else tuple(types)
    if not items or not all(isinstance(t, type) for t in items):
        raise TypeError(f"types must be a class or a non-empty tuple of classes, got {types!r}")
    return items


def _check_ranges(ranges: Any) -> ActRanges | None:
    if ranges is None:
        return None
    if not isinstance(ranges, ActRanges):
        raise TypeError(f"ranges must be an ActRanges (from calibrate or train) or None, got "
                        f"{type(ranges).__name__}")
    return ranges


# ----------------------------------------------------------------------------- the session


class ActSession:
    """What one :func:`quantize_activations` block did; read it after the block.

    Attributes:
      ranges: the :class:`ActRanges` after the block: observed (``calibrate``,
        merged with the given ranges), moving averages (``train``) or the
        given ones (``quantize``).
      quantized: ``{path: ActQuant}`` of the selected layers that ran.
      layers: paths of every layer of the considered types that ran.
    """

    def __init__(self, rule: LeafRule, mode: str, ranges: ActRanges | None, momentum: float,
                 types: tuple[type, ...]):
        self.rule = rule
        self.mode = mode
        self.given = ranges
        self.momentum = momentum
        self.types = types
        self.quantized: dict[str, ActQuant] = {}
        self.layers: list[str] = []
        self._spec: dict[str, ActQuant | None] = {}
        self._seen: dict[tuple[str, str], ActRange] = {}
        self.ranges = ranges

    # -- per call

    def spec(self, path: str, module: Any) -> ActQuant | None:
        if path not in self._spec:
            self.layers.append(path)
            self._spec[path] = self.rule.value(path, module, default=None)
            if self._spec[path] is not None:
                self.quantized[path] = self._spec[path]
        return self._spec[path]

    def process(self, path: str, side: str, spec: ActQuant, x: Any) -> Any:
        if not isinstance(x, jax.Array | np.ndarray) or not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"quantize_activations: the {side[:-1]} of layer '{path}' is "
                            f"{type(x).__name__} {getattr(x, 'dtype', '')}, not a float array; "
                            f"drop '{path}' from the rules (or set ActQuant({side}=False))")
        xs = jax.lax.stop_gradient(jnp.asarray(x).astype(jnp.float32))
        if self.mode != "quantize":
            seen = ActRange(jnp.min(xs), jnp.max(xs))
            prev = self._seen.get((path, side))
            if prev is not None:
                seen = ActRange(jnp.minimum(prev.lo, seen.lo), jnp.maximum(prev.hi, seen.hi))
            self._seen[(path, side)] = seen
            if self.mode == "calibrate":
                return x
            old = None if self.given is None else getattr(self.given, side).get(path)
            r = seen if old is None else ActRange(
                *(self.momentum * o + (1.0 - self.momentum) * n for o, n in zip(old, seen)))
        else:
            table = {} if self.given is None else getattr(self.given, side)
            if path not in table:
                held = ", ".join(f"'{p}'" for p in sorted(table)) or "none"
                raise ValueError(
                    f"quantize_activations: no {side} range for layer '{path}' (ranges hold "
                    f"{side} ranges for: {held}); run calibrate or train with the same rules "
                    "first and pass its ranges")
            r = table[path]
        s, z = range_scale(ActRange(*(jax.lax.stop_gradient(v) for v in r)), bits=spec.bits,
                           symmetric=spec.symmetric)
        if spec.symmetric:
            return fake_quant(x, bits=spec.bits, scale=s, symmetric=True)
        return fake_quant(x, bits=spec.bits, scale=s, zero_point=z, symmetric=False)

    # -- at the end

    def finish(self) -> None:
        if not self.layers:
            kinds = ", ".join(t.__name__ for t in self.types)
            raise ValueError(
                f"quantize_activations: no layer of the selected types ({kinds}) ran inside the "
                "block; for an nnx model pass module= (act_quantized does this for an nnx "
                "Module), and for other layer classes pass types=")
        self.rule.resolve([(p, None) for p in self.layers], default=None, noun="layer")
        if self.mode == "quantize":
            return
        inputs = dict(self.given.inputs) if self.given is not None else {}
        outputs = dict(self.given.outputs) if self.given is not None else {}
        for (path, side), seen in self._seen.items():
            table = inputs if side == "inputs" else outputs
            old = table.get(path)
            if old is None:
                table[path] = seen
            elif self.mode == "calibrate":
                table[path] = ActRange(jnp.minimum(old.lo, seen.lo), jnp.maximum(old.hi, seen.hi))
            else:
                m = self.momentum
                table[path] = ActRange(*(m * o + (1.0 - m) * n for o, n in zip(old, seen)))
        self.ranges = ActRanges(inputs, outputs)


def _first_input(args: tuple, kwargs: dict) -> tuple[Any, Callable[[Any], tuple[tuple, dict]]]:
    if args:
        return args[0], lambda v: ((v, *args[1:]), kwargs)
    if "inputs" in kwargs:
        return kwargs["inputs"], lambda v: (args, {**kwargs, "inputs": v})
    raise TypeError("quantize_activations: a selected layer was called without a positional "
                    "input (or inputs=)")


def _call(session: ActSession, path: str, module: Any, fn: Callable, args: tuple,
          kwargs: dict) -> Any:
    spec = session.spec(path, module)
    if spec is None:
        return fn(*args, **kwargs)
    if spec.inputs:
        x, rebuild = _first_input(args, kwargs)
        args, kwargs = rebuild(session.process(path, "inputs", spec, x))
    out = fn(*args, **kwargs)
    if spec.outputs:
        out = session.process(path, "outputs", spec, out)
    return out


# ----------------------------------------------------------------------------- nnx patching

_LOCAL = threading.local()


def _active() -> list:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


def _wrapper(original: Callable) -> Callable:
    def __call__(self, *args, **kwargs):
        for session, paths in reversed(_active()):
            if id(self) in paths:
                return _call(session, paths[id(self)], self,
                             lambda *a, **k: original(self, *a, **k), args, kwargs)
        return original(self, *args, **kwargs)

    return __call__


# ----------------------------------------------------------------------------- public API


@contextlib.contextmanager
def quantize_activations(
    rules: Any,
    ranges: ActRanges | None = None,
    *,
    mode: str = "quantize",
    momentum: float = 0.99,
    module: nnx.Module | None = None,
    types: type | Sequence[type] | None = None,
) -> Iterator[ActSession]:
    """Fake-quantizes the activations of selected layers of every model run inside the block.

    Linen: the block installs a ``flax.linen.intercept_methods`` interceptor
    around the layers' ``__call__`` (any ``Module.apply`` inside the block).
    nnx: pass the root ``module=``; the ``__call__`` of the classes of its
    layers is wrapped for the block's duration (other instances are not
    affected) and paths are the attribute paths of ``nnx.iter_modules``.

    Args:
      rules: per-layer :class:`ActQuant` (see the module docstring).
      ranges: the :class:`ActRanges` to quantize with (required for
        ``mode="quantize"``; optional for ``"train"`` and ``"calibrate"``).
      mode: ``"quantize"`` (frozen ranges), ``"train"`` (moving-average
        update) or ``"calibrate"`` (observe only, nothing quantized).
      momentum: moving-average weight of the old range, in ``[0, 1)``.
      module: the nnx root module (None: linen).
      types: the layer classes rules may select (default
        :data:`LINEN_LAYERS` or :data:`NNX_LAYERS`).

    Yields:
      An :class:`ActSession`; its ``ranges`` hold the new ranges after the
      block (values of the traced computation when used under ``jit``).

    Raises:
      ValueError: bad mode or momentum; a rule that selects no layer that
        ran (layers listed); no selected-type layer ran; a missing range in
        ``mode="quantize"``; bad bit widths in the rules.
      TypeError: malformed rules, ranges, types or module; a non-float
        activation of a selected layer.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
      >>> x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
      >>> v = model.init(jax.random.key(0), x)
      >>> with quantize_activations({"layers_.*": 4}, mode="calibrate") as cal:
      ...     _ = model.apply(v, x)
      >>> sorted(cal.ranges.inputs), float(cal.ranges.inputs["layers_0"].hi)
      (['layers_0', 'layers_2'], 1.0)
      >>> with quantize_activations({"layers_.*": 4}, cal.ranges):
      ...     y = model.apply(v, x)
      >>> y.shape
      (2, 2)
    """
    _check_mode(mode)
    m = _check_momentum(momentum)
    ranges = _check_ranges(ranges)
    if mode == "quantize" and ranges is None:
        raise ValueError("quantize_activations: mode='quantize' needs ranges=; get them from "
                         "act_quantized(...).calibrate or .train (or mode='calibrate')")
    if module is not None and not isinstance(module, nnx.Module):
        raise TypeError(f"module must be an nnx.Module (None for linen), got "
                        f"{type(module).__name__}")
    kinds = _check_types(types, LINEN_LAYERS if module is None else NNX_LAYERS)
    rule = LeafRule(rules, what="rules", validate=_spec)
    session = ActSession(rule, mode, ranges, m, kinds)
    if module is None:
        def interceptor(next_fun, args, kwargs, context):
            mod = context.module
            if (context.method_name != "__call__" or mod.scope is None
                    or not isinstance(mod, kinds)):
                return next_fun(*args, **kwargs)
            return _call(session, path_str(mod.scope.path), mod, next_fun, args, kwargs)

        with nn.intercept_methods(interceptor):
            yield session
    else:
        paths: dict[int, str] = {}
        for p, sub in nnx.iter_modules(module):
            if isinstance(sub, kinds):
                paths.setdefault(id(sub), path_str(p))
        classes = {type(sub) for _, sub in nnx.iter_modules(module) if id(sub) in paths}
        entry = (session, paths)
        stack = _active()
        stack.append(entry)
        try:
            with patched_calls(classes, _wrapper):
                yield session
        finally:
            del stack[next(i for i, e in enumerate(stack) if e is entry)]
    session.finish()


class ActQuantized:
    """A model whose selected layers see quantized activations (see :func:`act_quantized`)."""

    def __init__(self, fn: Any, rules: Any, *, momentum: float, types: Any):
        if not callable(fn):
            raise TypeError(f"act_quantized: fn must be a linen apply function or an nnx Module, "
                            f"got {type(fn).__name__}")
        self.fn = fn
        self.rules = rules
        self.momentum = _check_momentum(momentum)
        self.types = types
        LeafRule(rules, what="rules", validate=_spec)  # malformed rules fail here, not at a call

    def _run(self, args: tuple, kwargs: dict, ranges: Any, mode: str) -> tuple[Any, ActRanges]:
        root = self.fn if isinstance(self.fn, nnx.Module) else (
            args[0] if args and isinstance(args[0], nnx.Module) else None)
        with quantize_activations(self.rules, ranges, mode=mode, momentum=self.momentum,
                                  module=root, types=self.types) as session:
            out = self.fn(*args, **kwargs)
        return out, session.ranges

    def __call__(self, *args: Any, ranges: ActRanges, **kwargs: Any) -> Any:
        """Runs the model with frozen ranges (evaluation); returns its output."""
        return self._run(args, kwargs, ranges, "quantize")[0]

    def train(self, *args: Any, ranges: ActRanges | None, **kwargs: Any) -> tuple[Any, ActRanges]:
        """Runs the model quantized with moving-average ranges; returns ``(output, new ranges)``."""
        return self._run(args, kwargs, ranges, "train")

    def calibrate(self, *args: Any, ranges: ActRanges | None = None, **kwargs: Any) -> ActRanges:
        """A float pass; returns the observed ranges (merged with ``ranges`` by min/max)."""
        return self._run(args, kwargs, ranges, "calibrate")[1]

    def __repr__(self) -> str:
        return f"ActQuantized({getattr(self.fn, '__name__', type(self.fn).__name__)}, " \
               f"rules={self.rules!r})"


def act_quantized(fn: Any, rules: Any, *, momentum: float = 0.99,
                  types: type | Sequence[type] | None = None) -> ActQuantized:
    """Wraps a model so that its selected layers quantize their activations.

    ``fn`` is a linen apply function (``model.apply``; called as
    ``fn(*args, **kwargs)``), an nnx module (called as ``module(*args)``),
    or a function whose first positional argument is the nnx module (for
    ``nnx.jit``: ``act_quantized(lambda m, x: m(x), rules)`` and call it on
    the module the transform hands in). The wrapper has three calls, all
    pure and jit-able:

    * ``q(*args, ranges=r)``: the output, activations quantized with frozen
      ranges (evaluation);
    * ``q.train(*args, ranges=r)``: ``(output, new_ranges)``, quantized with
      moving-average ranges updated from this batch (``ranges=None`` starts
      them from it);
    * ``q.calibrate(*args, ranges=None)``: the ranges observed in a float
      forward pass (merged with ``ranges`` by min/max).

    Args:
      fn: the model (see above).
      rules: per-layer :class:`ActQuant` by module path (see the module
        docstring).
      momentum: moving-average weight of the old range, in ``[0, 1)``.
      types: the layer classes rules may select (default
        :data:`LINEN_LAYERS` / :data:`NNX_LAYERS`).

    Returns:
      An :class:`ActQuantized`.

    Raises:
      TypeError, ValueError: as :func:`quantize_activations` (malformed
        rules at once, the rest at the first call).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(1), (16, 5))
      >>> v = model.init(jax.random.key(0), x)
      >>> q = act_quantized(model.apply, {"layers_0": 8, "layers_2": ActQuant(8, outputs=True)})
      >>> r = q.calibrate(v, x)
      >>> y, r2 = jax.jit(q.train)(v, x, ranges=r)
      >>> sorted(r2.inputs), sorted(r2.outputs), y.shape
      (['layers_0', 'layers_2'], ['layers_2'], (16, 3))

    References:
      Jacob et al. 2018, arXiv:1712.05877.
    """
    return ActQuantized(fn, rules, momentum=momentum, types=types)

