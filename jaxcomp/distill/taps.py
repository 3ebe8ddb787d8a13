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
and carry gradients w.r.t. the parameters. Both functions are thin views of
:mod:`jaxcomp.ops.capture` (:func:`~jaxcomp.ops.capture.capture_linen`,
:func:`~jaxcomp.ops.capture.capture_nnx`), the capture mechanism the
calibration passes of one-shot pruning share.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
from flax import nnx

from jaxcomp.ops.capture import capture_linen, capture_nnx

__all__ = ["linen_taps", "nnx_taps"]

Where = str | Sequence[str] | Callable[[str], bool]


def _squeeze(values: Mapping[str, tuple]) -> dict[str, Any]:
    """One call: the value itself; several calls (weight sharing): the tuple of them."""
    return {p: v[0] if len(v) == 1 else tuple(v) for p, v in values.items()}


def _accepts_train(module: nn.Module) -> bool:
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False
    return "train" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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
    if not isinstance(apply_fn_or_module, nn.Module) and not callable(apply_fn_or_module):
        raise TypeError(
            f"apply_fn_or_module must be a callable or a linen Module, got "
            f"{type(apply_fn_or_module).__name__}"
        )
    if where is None:
        raise TypeError("where is required: a regex, a list of regexes or a path -> bool callable")
    if train is not None and (not isinstance(apply_fn_or_module, nn.Module)
                              or _accepts_train(apply_fn_or_module)):
        kwargs["train"] = train
    cap = capture_linen(apply_fn_or_module, variables, x, *args, where=where, **kwargs)
    return cap.output, _squeeze(cap.outputs)


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
    runs, the classes of its submodules get a recording
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
    if where is None:
        raise TypeError("where is required: a regex, a list of regexes or a path -> bool callable")
    cap = capture_nnx(module, x, *args, where=where, **kwargs)
    return cap.output, _squeeze(cap.outputs)
