"""Adapters from plain Flax models to the ``apply_fn`` signature of the training stack.

:func:`~jaxcomp.train.supervised_loss`, :func:`jaxcomp.distill.distillation_loss`
and the experiment runner call a model as

.. code-block:: python

    apply_fn(variables, x, train=False, rng=None, return_state=False)
    # -> logits, or (logits, new_model_state) with return_state=True

(:meth:`jaxcomp.models.ModelSpec.apply_fn` has it). :func:`linen_apply`
and :func:`nnx_apply` give a user's own ``flax.linen`` or ``flax.nnx``
module that signature, handling the train flag, BatchNorm statistics and
dropout keys; :func:`check_apply_fn` says which adapter to use when a
function has the wrong signature.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

__all__ = ["NNX_STATE", "check_apply_fn", "linen_apply", "nnx_apply"]

#: The model-state key under which :func:`nnx_apply` keeps the module's non-parameter state.
NNX_STATE = "nnx_state"

_TRAIN_NAMES = ("train", "training", "is_training")
ADAPTER_HINT = ("for your own Flax model use jaxcomp.train.linen_apply(module) (linen) or "
         "jaxcomp.train.nnx_apply(module) (nnx)")


def _call_params(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def _train_kwarg(module: Any, train_arg: str | None) -> str | None:
    if train_arg != "auto":
        return train_arg
    params = _call_params(type(module).__call__)
    for name in (*_TRAIN_NAMES, "deterministic"):
        if name in params:
            return name
    return None


def _stream_keys(rng: jax.Array, names: Sequence[str]) -> dict[str, jax.Array]:
    if len(names) == 1:
        return {names[0]: rng}
    return {name: jax.random.fold_in(rng, i) for i, name in enumerate(names)}


def linen_apply(
    module: Any,
    *,
    mutable: Sequence[str] = ("batch_stats",),
    rngs: Sequence[str] = ("dropout",),
    train_arg: str | None = "auto",
    **call_kwargs: Any,
) -> Callable[..., Any]:
    """Wraps a ``flax.linen`` module as ``apply_fn(variables, x, train=, rng=, return_state=)``.

    * ``train``: passed to the module's ``__call__`` under ``train_arg``
      (``"auto"``: the first of ``train``, ``training``, ``is_training`` that
      ``__call__`` accepts, or ``deterministic=not train``; nothing when it
      takes none of them).
    * ``rng``: the step's key, given to the module as ``rngs={name: key}``
      for each name in ``rngs`` (one key per stream, folded from ``rng``).
    * ``return_state``: in training mode the collections of ``mutable``
      present in ``variables`` (BatchNorm's ``batch_stats``) are updated and
      returned; in inference mode nothing changes and the state is ``{}``.

    Args:
      module: a ``flax.linen.Module`` (its variables come from
        ``module.init``; use :meth:`TrainState.from_variables`).
      mutable: collections updated in training mode.
      rngs: PRNG stream names the module uses (dropout).
      train_arg: the ``__call__`` keyword of the mode flag, ``"auto"``, or
        ``None`` for a module without one.
      **call_kwargs: more keyword arguments for every call.

    Returns:
      The apply function.

    Raises:
      TypeError: if ``module`` is not a linen module.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, train: bool = False):
      ...         x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
      ...         return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(x))
      >>> net = Net()
      >>> variables = net.init(jax.random.key(0), jnp.ones((3, 5)))
      >>> apply_fn = linen_apply(net)
      >>> logits, state = apply_fn(variables, jnp.ones((3, 5)), train=True,
      ...                          rng=jax.random.key(1), return_state=True)
      >>> logits.shape, sorted(state)
      ((3, 2), ['batch_stats'])
    """
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"linen_apply: module must be a flax.linen.Module, got "
                        f"{type(module).__name__}" + ("; for nnx use jaxcomp.train.nnx_apply"
                                                      if _is_nnx(module) else ""))
    mutable = tuple(mutable)
    rngs = tuple(rngs)
    flag = _train_kwarg(module, train_arg)

    def apply_fn(variables, x, train=False, rng=None, return_state=False):
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise ValueError("linen_apply: pass the variables dict from module.init (with its "
                             "'params' and, e.g., 'batch_stats' collections)")
        kwargs = dict(call_kwargs)
        if flag is not None:
            kwargs[flag] = (not train) if flag == "deterministic" else bool(train)
        streams = None if rng is None or not rngs else _stream_keys(rng, rngs)
        updated = [c for c in mutable if c in variables] if train else []
        if updated:
            out, state = module.apply(variables, x, rngs=streams, mutable=updated, **kwargs)
            state = dict(state)
        else:
            out, state = module.apply(variables, x, rngs=streams, **kwargs), {}
        return (out, state) if return_state else out

    return apply_fn


def _is_nnx(obj: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax always has nnx here
        return False
    return isinstance(obj, nnx.Module)


def _rng_tags(module: Any) -> tuple[str, ...]:
    from flax import nnx
    from flax.nnx import graph as graphlib

    tags = []
    for _, node in graphlib.iter_graph(module):
        if isinstance(node, nnx.RngStream) and node.key.tag not in tags:
            tags.append(node.key.tag)
    return tuple(tags)


def _reseeded(rest: Any, keys: Mapping[str, jax.Array]) -> Any:
    """``rest`` with every RNG stream restarted from ``keys[tag]`` (new variables, no mutation)."""
    import jax.numpy as jnp
    from flax import nnx

    def renew(v):
        if isinstance(v, nnx.RngKey) and v.tag in keys:
            return v.replace(jax.random.fold_in(keys[v.tag], 0))
        if isinstance(v, nnx.RngCount) and v.tag in keys:
            return v.replace(jnp.zeros_like(v.get_value()))
        return v

    return jax.tree_util.tree_map(renew, rest, is_leaf=lambda v: isinstance(v, nnx.Variable))


def nnx_apply(module: Any, *, params: Any = None) -> tuple[Callable[..., Any], dict]:
    """Wraps a ``flax.nnx`` module as ``apply_fn`` plus its initial variables.

    The module is split (:func:`jaxcomp.nnx_split`) into the parameters (a
    plain nested dict, what optimizers and compressors see) and the rest
    (BatchNorm statistics, RNG streams), returned as ``variables =
    {"params": ..., "nnx_state": ...}`` for :meth:`TrainState.from_variables`.
    Each call rebuilds the module from the variables without mutating
    anything (safe under ``jit`` and ``grad``), switches it to
    ``module.train()`` / ``module.eval()``, restarts its RNG streams from
    ``rng`` when given (dropout masks follow the step's key), and in training mode returns the updated rest as
    the new model state.

    Args:
      module: an ``nnx.Module``.
      params: the nnx filter of the trainable variables (default
        ``nnx.Param``).

    Returns:
      ``(apply_fn, variables)``.

    Raises:
      TypeError: if ``module`` is not an nnx module.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.fc = nnx.Linear(5, 4, rngs=rngs)
      ...         self.bn = nnx.BatchNorm(4, rngs=rngs)
      ...         self.out = nnx.Linear(4, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.out(self.bn(self.fc(x)))
      >>> apply_fn, variables = nnx_apply(Net(nnx.Rngs(0)))
      >>> sorted(variables["params"])
      ['bn', 'fc', 'out']
      >>> logits, state = apply_fn(variables, jnp.ones((3, 5)), train=True, return_state=True)
      >>> logits.shape, sorted(state)
      ((3, 2), ['nnx_state'])
    """
    from flax import nnx

    from jaxcomp.core.flax_utils import nnx_merge, nnx_split

    if not _is_nnx(module):
        raise TypeError(f"nnx_apply: module must be an nnx.Module, got {type(module).__name__}"
                        + ("; for linen use jaxcomp.train.linen_apply" if _is_linen(module)
                           else ""))
    flt = nnx.Param if params is None else params
    nnxdef, p, rest0 = nnx_split(module, flt)
    rest0 = jax.tree_util.tree_map(lambda v: v, rest0)  # its own Variables: later use of
    tags = _rng_tags(module)  # the module does not leak in

    def apply_fn(variables, x, train=False, rng=None, return_state=False):
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise ValueError("nnx_apply: pass the variables returned by nnx_apply (a dict with "
                             "'params' and 'nnx_state'), updated by training")
        # fresh Variable objects, owned by the current trace (the forward mutates them)
        rest = jax.tree_util.tree_map(lambda v: v, variables.get(NNX_STATE, rest0))
        if rng is not None and tags:
            rest = _reseeded(rest, _stream_keys(rng, tags))
        m = nnx_merge(nnxdef, variables["params"], rest)
        if train:
            m.train()
        else:
            m.eval()
        out = m(x)
        if not return_state:
            return out
        if not train:
            return out, {}
        _, _, new_rest = nnx.split(m, flt, ...)
        return out, {NNX_STATE: new_rest}

    return apply_fn, {"params": p, NNX_STATE: rest0}


def _is_linen(obj: Any) -> bool:
    import flax.linen as nn

    return isinstance(obj, nn.Module)


def check_apply_fn(apply_fn: Any, what: str = "apply_fn") -> None:
    """Checks that ``apply_fn`` can be called as ``apply_fn(variables, x, train=, rng=, return_state=)``.

    Raises:
      TypeError: naming :func:`linen_apply` / :func:`nnx_apply` when
        ``apply_fn`` is a Flax module, a linen ``module.apply``, or a function
        whose signature does not accept those arguments.

    Example:
      >>> check_apply_fn(lambda variables, x: x)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      TypeError: apply_fn must accept (variables, x, train=..., rng=..., return_state=...) ...
    """
    if _is_linen(apply_fn):
        raise TypeError(f"{what}: got a flax.linen Module, not an apply function; wrap it with "
                        "jaxcomp.train.linen_apply(module)")
    if _is_nnx(apply_fn):
        raise TypeError(f"{what}: got an nnx Module, not an apply function; wrap it with "
                        "apply_fn, variables = jaxcomp.train.nnx_apply(module)")
    if not callable(apply_fn):
        raise TypeError(f"{what} must be callable, got {type(apply_fn).__name__}")
    target = apply_fn.func if isinstance(apply_fn, functools.partial) else apply_fn
    owner = getattr(target, "__self__", None)
    if _is_linen(owner):
        raise TypeError(
            f"{what}: got {type(owner).__name__}.{getattr(target, '__name__', 'apply')}, which "
            "takes the module's own arguments, not (variables, x, train=, rng=, return_state=); "
            "use jaxcomp.train.linen_apply(module)"
        )
    params = _call_params(apply_fn)
    if not params:
        return  # no signature to check (a builtin or C callable)
    try:
        inspect.signature(apply_fn).bind(None, None, train=True, rng=None, return_state=True)
    except TypeError as e:
        raise TypeError(
            f"{what} must accept (variables, x, train=..., rng=..., return_state=...) like "
            f"jaxcomp.models.ModelSpec.apply_fn ({e}); {ADAPTER_HINT}"
        ) from None
