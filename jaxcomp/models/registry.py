"""Model registry: named reference models with their published sizes.

Every reference model in :mod:`jaxcomp.models` is registered under a short name
together with the metadata that compression experiments need: the per-example
input shape, the number of classes, the paper it comes from and, where known,
its exact parameter count and multiply-accumulate (MAC) count.

Conventions for the counts:

* ``expected_params`` counts every leaf of ``variables['params']``: kernels,
  biases and normalisation scale/bias. BatchNorm running statistics (the
  ``batch_stats`` collection) are not parameters.
* ``expected_macs`` counts multiply-accumulates for one example: a dense layer
  costs ``in * out``, a convolution costs every kernel tap at every output
  position (``out_positions * out_channels * k_h * k_w * in_channels / groups``)
  and attention einsums cost the size of their contraction. Bias additions,
  normalisation, pooling, residual additions and activations are not counted.

Example:
  >>> import jax
  >>> from jaxcomp.models import get_model
  >>> spec = get_model("lenet300")
  >>> variables = spec.init(jax.random.key(0), batch_size=2)
  >>> spec.apply_fn(variables, spec.example_input(2)).shape
  (2, 10)
  >>> spec.expected_params, spec.expected_macs
  (266610, 266200)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import numbers
import types
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from numpy import bool_ as np_bool

__all__ = ["ModelSpec", "get_model", "list_models", "register_model"]

# Names a Module dataclass accepts but that are not architecture overrides.
_NON_OVERRIDES = frozenset({"parent", "name"})

# Overrides that are sizes or counts: an int (or every int of a sequence) must be >= 1.
_POSITIVE_SIZES = frozenset({
    "num_classes", "in_features", "hidden", "channels", "widths", "stage_sizes", "cfg",
    "blocks", "vocab_size", "seq_len", "d_model", "num_heads", "mlp_dim", "num_layers",
    "image_size", "depth",
})
# Sequence overrides that may not be empty.
_NON_EMPTY = frozenset({"widths", "stage_sizes"})
# Real-valued overrides with a range: (low, high, low_inclusive, high_inclusive).
_RANGES = {"dropout": (0.0, 1.0, True, False), "alpha": (0.0, None, False, True)}


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """A registered model together with what is known about it.

    Attributes:
      name: registry name, e.g. ``"resnet20"``.
      module: the ``flax.linen`` module instance (its ``__call__`` takes
        ``(x, train=False)`` and returns logits).
      input_shape: per-example input shape, without the batch dimension.
      num_classes: number of output logits.
      description: one-line description of the architecture.
      reference: the paper (with arXiv id where there is one).
      expected_params: exact number of parameters (``None`` if unknown).
      expected_macs: exact multiply-accumulates per example (``None`` if
        unknown).
      input_dtype: dtype of the input; integer for token models.
      input_max: for integer inputs, inputs lie in ``[0, input_max)``
        (the vocabulary size).
      uses_batch_norm: whether the model keeps a ``batch_stats`` collection.
      nnx_factory: ``None``, or a callable ``(rngs) -> nnx.Module`` building an
        equivalent ``flax.nnx`` model whose parameter tree matches the linen
        one.
      config: the keyword arguments the module was built with (defaults
        merged with overrides).
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    description: str
    reference: str | None = None
    expected_params: int | None = None
    expected_macs: int | None = None
    input_dtype: Any = jnp.float32
    input_max: int | None = None
    uses_batch_norm: bool = False
    nnx_factory: Callable[..., Any] | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def _train_kwargs(self, train: bool) -> dict[str, bool]:
        """``{"train": train}`` if the module's ``__call__`` takes ``train``, else ``{}``."""
        return {"train": train} if _accepts_train(self.module) else {}

    def make(self) -> nn.Module:
        """Returns a fresh, unbound copy of :attr:`module`."""
        return self.module.clone()

    def example_input(self, batch_size: int = 1, key: jax.Array | None = None) -> jax.Array:
        """An input batch of shape ``(batch_size, *input_shape)``.

        Args:
          batch_size: leading batch dimension.
          key: if ``None`` the batch is all zeros; otherwise standard normal
            values (uniform random tokens for integer inputs).
        """
        shape = (batch_size, *self.input_shape)
        if key is None:
            return jnp.zeros(shape, self.input_dtype)
        if jnp.issubdtype(self.input_dtype, jnp.integer):
            return jax.random.randint(key, shape, 0, self.input_max or 2, dtype=self.input_dtype)
        return jax.random.normal(key, shape, self.input_dtype)

    def init(self, key: jax.Array, batch_size: int = 1, *, jit: bool = True) -> dict:
        """Initialises the variables (``params`` and, for BatchNorm models, ``batch_stats``).

        Args:
          key: PRNG key.
          batch_size: batch size of the dummy input used for shape inference.
          jit: compile the initialiser (faster for large models).
        """
        x = self.example_input(batch_size)
        return (self._jitted_init if jit else self._init)(key, x)

    def _init(self, key: jax.Array, x: jax.Array) -> dict:
        pkey, dkey = jax.random.split(key)
        return self.module.init({"params": pkey, "dropout": dkey}, x, **self._train_kwargs(False))

    @functools.cached_property
    def _jitted_init(self):
        # Cached on the instance so repeated init() calls (e.g. several seeds) compile once.
        return jax.jit(self._init)

    def eval_init(self, batch_size: int = 1) -> dict:
        """Shapes and dtypes of :meth:`init`'s result, without computing anything."""
        return jax.eval_shape(lambda k: self.init(k, batch_size, jit=False), jax.random.key(0))

    def apply_fn(
        self,
        variables_or_params: Mapping[str, Any],
        x: jax.Array,
        train: bool = False,
        *,
        rng: jax.Array | None = None,
        return_state: bool = False,
    ):
        """Computes logits, handling the ``batch_stats`` collection.

        Args:
          variables_or_params: either the full variables dict returned by
            :meth:`init` (it has a ``"params"`` key) or just the params tree.
          x: a batch of inputs, ``(batch, *input_shape)``.
          train: training mode. BatchNorm then uses batch statistics and the
            running averages are updated; dropout is active. With
            ``train=False`` BatchNorm uses the running averages.
          rng: PRNG key for dropout (needed when ``train=True`` and the model
            has dropout).
          return_state: if true, return ``(logits, new_model_state)`` where the
            state is the updated ``batch_stats`` collection (empty dict for
            models without BatchNorm or with ``train=False``).

        Returns:
          ``logits`` of shape ``(batch, num_classes)``, or
          ``(logits, new_model_state)`` if ``return_state``.
        """
        if isinstance(variables_or_params, Mapping) and "params" in variables_or_params:
            variables = dict(variables_or_params)
        else:
            variables = {"params": variables_or_params}
        rngs = None if rng is None else {"dropout": rng}
        if self.uses_batch_norm and "batch_stats" not in variables:
            raise ValueError(
                f"model '{self.name}' uses BatchNorm: pass the full variables dict from "
                "init() (with its 'batch_stats'), not just the params"
            )
        if train and self.uses_batch_norm:
            logits, state = self.module.apply(
                variables, x, rngs=rngs, mutable=["batch_stats"], **self._train_kwargs(True)
            )
            state = dict(state)
        else:
            logits = self.module.apply(variables, x, rngs=rngs, **self._train_kwargs(train))
            state = {}
        return (logits, state) if return_state else logits


@functools.cache
def _accepts_train_cls(cls: type) -> bool:
    try:
        params = inspect.signature(cls.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "train" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _accepts_train(module: nn.Module) -> bool:
    return _accepts_train_cls(type(module))


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    input_shape: tuple[int, ...] | Callable[..., tuple[int, ...]]
    num_classes: int
    description: str
    reference: str | None
    expected_params: int | None
    expected_macs: int | None
    costs: Callable[..., tuple[int, int]] | None
    input_dtype: Any
    input_max: int | Callable[..., int] | None
    uses_batch_norm: bool
    nnx_factory: Callable[..., Any] | None


_REGISTRY: dict[str, _Entry] = {}


def _builder_defaults(builder: Callable[..., Any]) -> dict[str, Any]:
    """Keyword arguments (with defaults) that ``builder`` accepts."""
    sig = inspect.signature(builder)
    out = {}
    for p in sig.parameters.values():
        if p.name in _NON_OVERRIDES or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"model builder {builder!r}: argument '{p.name}' needs a default value")
        out[p.name] = p.default
    return out


def register_model(
    name: str,
    *,
    input_shape: tuple[int, ...] | Callable[..., tuple[int, ...]],
    num_classes: int,
    description: str,
    reference: str | None = None,
    expected_params: int | None = None,
    expected_macs: int | None = None,
    costs: Callable[..., tuple[int, int]] | None = None,
    input_dtype: Any = jnp.float32,
    input_max: int | Callable[..., int] | None = None,
    uses_batch_norm: bool = False,
    nnx_factory: Callable[..., Any] | None = None,
    overwrite: bool = False,
):
    """Registers a model builder under ``name``; usable as a decorator.

    The builder is any callable taking keyword arguments, all with defaults,
    and returning a ``flax.linen`` module (a builder function, or a Module class
    itself). Its keyword arguments are the overrides that :func:`get_model`
    accepts.

    Args:
      name: registry name.
      input_shape: per-example input shape, or a callable receiving the
        builder's resolved keyword arguments and returning it.
      num_classes: number of logits for the default configuration. If the
        builder takes a ``num_classes`` argument, an override replaces it.
      description: one-line description.
      reference: paper reference, e.g. ``"He et al. 2016, arXiv:1512.03385"``.
      expected_params: exact parameter count of the default configuration.
      expected_macs: exact MACs per example of the default configuration.
      costs: optional callable taking the builder's resolved keyword arguments
        and returning ``(params, macs)``; used to fill in the expected counts
        when :func:`get_model` receives overrides.
      input_dtype: input dtype (``jnp.int32`` for token models).
      input_max: for integer inputs, the exclusive upper bound of the values
        (int or callable of the resolved keyword arguments).
      uses_batch_norm: whether the model has a ``batch_stats`` collection.
      nnx_factory: optional callable ``(rngs, **config) -> nnx.Module``.
      overwrite: allow replacing an existing registration.

    Returns:
      A decorator that registers the builder and returns it unchanged.

    Example:
      >>> import flax.linen as nn
      >>> from jaxcomp.models import register_model, get_model
      >>> @register_model("tiny_linear", input_shape=(4,), num_classes=2,
      ...                 description="a single dense layer", overwrite=True)
      ... def tiny_linear(num_classes: int = 2):
      ...     return nn.Dense(num_classes)
      >>> get_model("tiny_linear", num_classes=3).num_classes
      3
    """

    def decorator(builder):
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"a model named '{name}' is already registered")
        _REGISTRY[name] = _Entry(
            name=name,
            builder=builder,
            defaults=types.MappingProxyType(_builder_defaults(builder)),
            input_shape=input_shape,
            num_classes=num_classes,
            description=description,
            reference=reference,
            expected_params=expected_params,
            expected_macs=expected_macs,
            costs=costs,
            input_dtype=input_dtype,
            input_max=input_max,
            uses_batch_norm=uses_batch_norm,
            nnx_factory=nnx_factory,
        )
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _unknown_name_message(name: str) -> str:
    available = list_models()
    close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
    # Prefixes/extensions of the requested name are very likely what was meant.
    close += [n for n in available if n not in close and (n.startswith(name) or name.startswith(n))]
    msg = f"unknown model {name!r}"
    if close:
        msg += "; did you mean " + ", ".join(repr(c) for c in close) + "?"
    rest = [n for n in available if n not in close]
    return msg + " Available: " + ", ".join(close + rest)


def _kind(x: Any) -> str:
    if isinstance(x, (bool, np_bool)):
        return "bool"
    if isinstance(x, numbers.Integral):
        return "int"
    if isinstance(x, numbers.Real):
        return "float"
    if isinstance(x, str):
        return "str"
    if isinstance(x, (tuple, list)):
        return "sequence"
    return type(x).__name__


_KIND_WORDS = {"bool": "a bool", "int": "an int", "float": "a real number", "str": "a string",
               "sequence": "a list or tuple"}


def _check_override(model: str, key: str, value: Any, default: Any, at: str = "") -> Any:
    """Checks one override against its default's type and the value rules; returns it."""
    label = f"get_model({model!r}): override {key}{at}={value!r}"
    want, got = _kind(default), _kind(value)
    if want == "float" and got == "int":
        got = "float"
    if want not in _KIND_WORDS:  # defaults of other types (None, modules, ...) are not checked
        return value
    if got != want:
        raise TypeError(f"{label} must be {_KIND_WORDS[want]} like the default {default!r}, "
                        f"got {type(value).__name__}")
    if want == "int":
        value = int(value)
        if key in _POSITIVE_SIZES and value < 1:
            raise ValueError(f"{label} must be a positive int (it is a size or a count)")
    elif want == "float":
        if not math.isfinite(value):
            raise ValueError(f"{label} must be finite")
        if key in _RANGES:
            lo, hi, lo_in, hi_in = _RANGES[key]
            if (value < lo or (value == lo and not lo_in)) or (
                hi is not None and (value > hi or (value == hi and not hi_in))
            ):
                close = ")" if hi is None or not hi_in else "]"
                interval = f"{'[' if lo_in else '('}{lo}, {'inf' if hi is None else hi}{close}"
                raise ValueError(f"{label} must lie in {interval}")
    elif want == "sequence":
        if not value and key in _NON_EMPTY:
            raise ValueError(f"{label} must not be empty")
        examples = list(default)
        if at and examples and len(value) != len(examples):
            raise ValueError(f"{label} must have {len(examples)} items like {default!r}")
        out = []
        for i, item in enumerate(value):
            allowed = [e for e in examples if _kind(e) == _kind(item)
                       or (_kind(e) == "float" and _kind(item) == "int")]
            if not allowed:
                kinds = sorted({_KIND_WORDS.get(_kind(e), _kind(e)) for e in examples})
                raise TypeError(
                    f"get_model({model!r}): override {key}{at}[{i}]={item!r} must be "
                    f"{' or '.join(kinds) or 'absent (the default is empty)'}, "
                    f"got {type(item).__name__}"
                )
            if _kind(item) == "str" and item not in examples:
                options = ", ".join(dict.fromkeys(repr(e) for e in examples if isinstance(e, str)))
                raise ValueError(
                    f"get_model({model!r}): override {key}{at}[{i}]={item!r} must be one of "
                    f"{options} or a number"
                )
            out.append(_check_override(model, key, item, allowed[0], f"{at}[{i}]"))
        value = type(value)(out)
    return value


def get_model(name: str, **overrides: Any) -> ModelSpec:
    """Looks up a registered model, optionally with keyword overrides.

    Args:
      name: a name from :func:`list_models`.
      **overrides: keyword arguments of the model's builder (e.g.
        ``num_classes=100``).

    Returns:
      A :class:`ModelSpec`. With overrides, ``expected_params`` and
      ``expected_macs`` come from the model's cost formula (``None`` if it has
      none).

    Every override is checked against the builder's default before the model
    is built: it must have the default's type (a bool for a bool, an int for
    an int, a real number for a float, a string for a string, a list or tuple
    whose items have the types of the default's items); sizes and counts
    (``num_classes``, ``hidden``, ``widths``, ``channels``, ``d_model``, ...)
    must be positive, ``dropout`` must lie in ``[0, 1)`` and ``alpha`` be
    positive.

    Raises:
      ValueError: unknown name (the message lists close matches first, then
        every registered name), or an override with a bad value (e.g.
        ``num_classes=0``); the message names the override.
      TypeError: an override the model does not accept, or one of the wrong
        type (e.g. ``num_classes="10"``).

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("resnet20", num_classes=100).num_classes
      100
      >>> get_model("resnet20", num_classes=-3)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: get_model('resnet20'): override num_classes=-3 must be a positive int ...
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(_unknown_name_message(str(name)))
    entry = _REGISTRY[name]
    bad = [k for k in overrides if k not in entry.defaults]
    if bad:
        accepted = ", ".join(sorted(entry.defaults)) or "none"
        raise TypeError(
            f"model '{name}' got unexpected keyword argument(s) "
            + ", ".join(repr(b) for b in bad)
            + f"; accepted overrides: {accepted}"
        )
    overrides = {k: _check_override(name, k, v, entry.defaults[k]) for k, v in overrides.items()}
    config = {**entry.defaults, **overrides}
    try:
        module = entry.builder(**config)
    except (ValueError, TypeError) as e:
        e.add_note(f"while building model {name!r} with overrides {overrides}")
        raise
    if not isinstance(module, nn.Module):
        raise TypeError(f"builder of model '{name}' returned {type(module).__name__}, not a Module")

    if overrides:
        if entry.costs is not None:
            expected_params, expected_macs = (int(c) for c in entry.costs(**config))
        else:
            expected_params = expected_macs = None
    else:
        expected_params, expected_macs = entry.expected_params, entry.expected_macs

    input_shape = entry.input_shape(**config) if callable(entry.input_shape) else entry.input_shape
    input_max = entry.input_max(**config) if callable(entry.input_max) else entry.input_max
    nnx_factory = None
    if entry.nnx_factory is not None:
        nnx_factory = functools.partial(entry.nnx_factory, **config)

    return ModelSpec(
        name=name,
        module=module,
        input_shape=tuple(int(d) for d in input_shape),
        num_classes=int(config.get("num_classes", entry.num_classes)),
        description=entry.description,
        reference=entry.reference,
        expected_params=expected_params,
        expected_macs=expected_macs,
        input_dtype=entry.input_dtype,
        input_max=input_max,
        uses_batch_norm=entry.uses_batch_norm,
        nnx_factory=nnx_factory,
        config=types.MappingProxyType(config),
    )
