"""Layer Hessians from calibration data: the shared machinery of layer-wise solvers.

Layer-wise one-shot methods (OBS/SparseGPT pruning, GPTQ quantization) pose
compression of a Dense layer ``y = x @ W`` (Flax layout ``W: (in, out)``) as
reconstruction on calibration inputs ``X: (n, in)``: every output column is
an independent least-squares problem sharing the Hessian ``H = 2 XᵀX / n``.
This module holds what those solvers share:

* :func:`init_hessian` / :func:`accumulate_hessian` / :func:`layer_hessian`
  — ``H`` streamed over calibration chunks (one ``d × d`` matrix in memory);
* :func:`reconstruction_error` / :func:`rel_error_from_hessian` —
  ``||XW - XŴ||² / ||XW||²`` from ``H`` alone;
* im2col for Flax convolutions: :func:`conv_patches` (the rows of ``X``),
  :func:`conv_kernel_2d` / :func:`conv_kernel_nd` (a conv kernel as the
  matching Dense kernel and back);
* the calibration pass over a linen model: :func:`calibration_chunks`,
  :func:`linen_layers` (the modules a model runs, in forward order),
  :func:`layer_inputs` (one layer's inputs, the forward pass stopped after
  its last call, via :func:`jaxcomp.ops.capture.capture_linen`),
  :func:`layer_rows` and :func:`model_layer_hessian` (a layer's ``H``
  accumulated chunk by chunk);
* the skeleton of a sequential layer-wise driver: :func:`select_kernels`
  (the kernels to process), :func:`kernel_layers` (their Dense/Conv layers
  in forward order, checked), :func:`kernel_hessian` (a kernel as a 2-d
  matrix and its layer's ``H``), :func:`check_solver_args` /
  :func:`check_solver_flags` (the checks around a damped Cholesky solver).

Grouped/depthwise convolutions (``feature_group_count > 1``) are rejected
by im2col.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  >>> w, w_hat = jnp.ones((2, 1)), jnp.array([[1.0], [0.5]])
  >>> round(reconstruction_error(w, w_hat, layer_hessian(x)), 6)
  0.2

References:
  Hassibi & Stork, Optimal Brain Surgeon (NeurIPS 1993). Frantar & Alistarh,
  SparseGPT, arXiv:2301.00774. Frantar et al., GPTQ, arXiv:2210.17323.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcomp.core.errors import check_in_range, list_paths
from jaxcomp.ops.capture import ModuleInfo, capture_linen, module_of
from jaxcomp.select import selectors
from jaxcomp.select.selection import Selected, flatten

__all__ = [
    "HessianState",
    "KernelLayer",
    "accumulate_hessian",
    "calibration_chunks",
    "check_solver_args",
    "check_solver_flags",
    "conv_kernel_2d",
    "conv_kernel_nd",
    "conv_patches",
    "init_hessian",
    "kernel_hessian",
    "kernel_layers",
    "layer_hessian",
    "layer_inputs",
    "layer_rows",
    "linen_layers",
    "model_layer_hessian",
    "reconstruction_error",
    "rel_error_from_hessian",
    "select_kernels",
]


# ----------------------------------------------------------------------------- Hessian


class HessianState(NamedTuple):
    """Running ``H = 2/n Σ x xᵀ`` of a layer's inputs and the sample count ``n``."""

    hessian: jax.Array
    count: int


def init_hessian(n_features: int) -> HessianState:
    """An empty accumulator for inputs with ``n_features`` features.

    Args:
      n_features: the layer's input width ``d``.

    Returns:
      A :class:`HessianState` holding a ``(d, d)`` float32 zero matrix and count 0.

    Example:
      >>> init_hessian(3).hessian.shape, init_hessian(3).count
      ((3, 3), 0)
    """
    return HessianState(jnp.zeros((n_features, n_features), jnp.float32), 0)


def accumulate_hessian(state: HessianState, x: jax.typing.ArrayLike) -> HessianState:
    """Adds a chunk of inputs ``x: (..., features)`` to the running Hessian.

    The running mean is rescaled in place, so memory stays one ``d × d``
    matrix however many chunks are seen, and the result equals the one-shot
    ``2 XᵀX / n`` of all chunks stacked.

    Args:
      state: the accumulator so far.
      x: inputs whose last axis has the accumulator's ``d`` features.

    Returns:
      The updated :class:`HessianState`.

    Raises:
      ValueError: ``x`` does not have ``d`` features in its last axis.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(12.0).reshape(6, 2)
      >>> s = accumulate_hessian(accumulate_hessian(init_hessian(2), x[:4]), x[4:])
      >>> bool(jnp.allclose(s.hessian, 2 * x.T @ x / 6)), s.count
      (True, 6)
    """
    x = jnp.asarray(x, jnp.float32)
    d = state.hessian.shape[0]
    if x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(
            f"accumulate_hessian: inputs of shape {tuple(x.shape)} do not have {d} features in the "
            "last axis; pass the inputs of the layer the Hessian belongs to"
        )
    x = x.reshape(-1, d)
    m = x.shape[0]
    n = state.count + m
    if m == 0:
        return state
    return HessianState(_acc(state.hessian, x, state.count / n, 2.0 / n), n)


@jax.jit
def _acc(h, x, a, b):
    return h * a + b * (x.T @ x)


def layer_hessian(x: jax.typing.ArrayLike, *, chunk_size: int | None = None) -> jax.Array:
    """``2 XᵀX / n`` for inputs ``x: (..., features)``, optionally in chunks of rows.

    Args:
      x: the layer's inputs; all leading axes are rows.
      chunk_size: rows per accumulation step (default: all at once).

    Returns:
      The ``(features, features)`` float32 Hessian.

    Example:
      >>> import jax.numpy as jnp
      >>> layer_hessian(jnp.eye(2)).tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """
    x = jnp.asarray(x, jnp.float32)
    x = x.reshape(-1, x.shape[-1])
    step = x.shape[0] if chunk_size is None else int(chunk_size)
    state = init_hessian(x.shape[-1])
    for i in range(0, x.shape[0], max(step, 1)):
        state = accumulate_hessian(state, x[i:i + step])
    return state.hessian


def reconstruction_error(w: jax.typing.ArrayLike, w_hat: jax.typing.ArrayLike,
                         hessian: jax.typing.ArrayLike) -> float:
    """``||X W - X Ŵ||² / ||X W||²`` computed from ``H = 2XᵀX/n`` (no inputs needed).

    Args:
      w: the reference kernel ``(in, out)``.
      w_hat: its compressed version, same shape.
      hessian: ``(in, in)`` Hessian of the layer's inputs.

    Returns:
      The relative squared reconstruction error as a Python float (0 when
      ``XW`` is zero).

    Example:
      >>> import jax.numpy as jnp
      >>> reconstruction_error(jnp.ones((2, 1)), jnp.zeros((2, 1)), jnp.eye(2))
      1.0
    """
    return float(rel_error_from_hessian(jnp.asarray(w, jnp.float32),
                                        jnp.asarray(w_hat, jnp.float32),
                                        jnp.asarray(hessian, jnp.float32)))


@jax.jit
def rel_error_from_hessian(w: jax.Array, w_hat: jax.Array, h: jax.Array) -> jax.Array:
    """:func:`reconstruction_error` as a float32 scalar array, for use under ``jit``.

    Args:
      w: the reference kernel ``(in, out)``.
      w_hat: its compressed version.
      h: ``(in, in)`` Hessian.

    Returns:
      A scalar array.

    Example:
      >>> import jax.numpy as jnp
      >>> float(rel_error_from_hessian(jnp.ones((2, 1)), jnp.zeros((2, 1)), jnp.eye(2)))
      1.0
    """
    dw = w - w_hat
    num = jnp.sum(dw * (h @ dw))
    den = jnp.sum(w * (h @ w))
    return num / jnp.where(den > 0, den, 1.0)


# ----------------------------------------------------------------------------- im2col


def _conv_padding(padding: Any, nd: int, path: str) -> Any:
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
        raise ValueError(f"layer '{path}': padding={padding!r} is not supported by im2col "
                         "(use 'SAME', 'VALID' or explicit pairs)")
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _tuple(v: Any, nd: int) -> tuple[int, ...]:
    if v is None:
        return (1,) * nd
    return (v,) * nd if isinstance(v, int) else tuple(v)


def conv_patches(x: jax.typing.ArrayLike, conv: nn.Conv, *, path: str = "conv") -> jax.Array:
    """im2col for a Flax ``nn.Conv``: ``(N·positions, cin·prod(kernel_size))`` patches.

    Features are ordered channel-major (``lax.conv_general_dilated_patches``),
    so the matching Dense kernel is ``kernel.transpose(cin, *k, cout)`` reshaped
    to ``(cin·prod(k), cout)`` (see :func:`conv_kernel_2d`).

    Args:
      x: the convolution's batched input ``(N, *spatial, cin)``.
      conv: the ``nn.Conv`` module (its kernel size, strides, padding and
        dilations are read).
      path: the layer's name in error messages.

    Returns:
      The float32 patches, one row per output position.

    Raises:
      ValueError: grouped convolutions, unbatched inputs, unsupported padding
        or more than 3 spatial dims.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> conv = nn.Conv(3, (2, 2), padding="VALID")
      >>> x = jnp.ones((1, 4, 4, 2))
      >>> conv_patches(x, conv).shape
      (9, 8)
    """
    x = jnp.asarray(x)
    if conv.feature_group_count != 1:
        raise ValueError(f"layer '{path}': grouped/depthwise convolutions "
                         f"(feature_group_count={conv.feature_group_count}) are not supported")
    ks = tuple(conv.kernel_size)
    nd = len(ks)
    if x.ndim != nd + 2:
        raise ValueError(f"layer '{path}': im2col needs batched inputs (N, *spatial, C), got "
                         f"shape {tuple(x.shape)}")
    if nd > 3:
        raise ValueError(f"layer '{path}': only 1-3 spatial dims are supported")
    padding = _conv_padding(conv.padding, nd, path)
    if not isinstance(padding, str):
        padding = tuple(tuple(int(v) for v in p) for p in padding)
    return _patches(x, ks=ks, strides=_tuple(conv.strides, nd), padding=padding,
                    lhs_dilation=_tuple(conv.input_dilation, nd),
                    rhs_dilation=_tuple(conv.kernel_dilation, nd))


@functools.partial(jax.jit, static_argnames=("ks", "strides", "padding", "lhs_dilation",
                                             "rhs_dilation"))
def _patches(x, *, ks, strides, padding, lhs_dilation, rhs_dilation):
    sp = "DHW"[-len(ks):]
    dn = lax.conv_dimension_numbers(x.shape, (*ks, x.shape[-1], 1),
                                    (f"N{sp}C", f"{sp}IO", f"N{sp}C"))
    p = lax.conv_general_dilated_patches(
        x.astype(jnp.float32), ks, strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dn)
    return p.reshape(-1, p.shape[-1])


def conv_kernel_2d(kernel: jax.Array) -> jax.Array:
    """Flax conv kernel ``(*k, cin, cout)`` → im2col kernel ``(cin·prod(k), cout)``.

    Args:
      kernel: a Flax convolution kernel.

    Returns:
      The Dense kernel acting on :func:`conv_patches` rows.

    Example:
      >>> import jax.numpy as jnp
      >>> conv_kernel_2d(jnp.zeros((3, 3, 4, 8))).shape
      (36, 8)
    """
    return _kernel_2d(jnp.asarray(kernel))


@jax.jit
def _kernel_2d(kernel):
    nd = kernel.ndim - 2
    perm = (nd, *range(nd), nd + 1)
    return jnp.transpose(kernel, perm).reshape(-1, kernel.shape[-1])


def conv_kernel_nd(k2: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of :func:`conv_kernel_2d`: back to the Flax layout ``shape``.

    Args:
      k2: an im2col kernel ``(cin·prod(k), cout)``.
      shape: the Flax kernel shape ``(*k, cin, cout)``.

    Returns:
      ``k2`` in the Flax layout.

    Example:
      >>> import jax.numpy as jnp
      >>> k = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
      >>> bool(jnp.all(conv_kernel_nd(conv_kernel_2d(k), k.shape) == k))
      True
    """
    return _kernel_nd(jnp.asarray(k2), shape=tuple(int(d) for d in shape))


@functools.partial(jax.jit, static_argnames=("shape",))
def _kernel_nd(k2, *, shape):
    nd = len(shape) - 2
    t = k2.reshape(shape[nd], *shape[:nd], shape[-1])
    return jnp.transpose(t, (*range(1, nd + 1), 0, nd + 1))


# ----------------------------------------------------------------------------- calibration


def calibration_chunks(calib_x: Any, chunk_size: int | None = None) -> list[jax.Array]:
    """Calibration inputs as a list of batches, each checked to be non-empty and finite.

    Args:
      calib_x: a batch ``(N, ...)`` or a list of such chunks.
      chunk_size: rows per chunk when ``calib_x`` is one batch (default: all).

    Returns:
      The chunks, in order.

    Raises:
      ValueError: empty data, a bad ``chunk_size``, NaN or Inf in a chunk.

    Example:
      >>> import jax.numpy as jnp
      >>> [c.shape for c in calibration_chunks(jnp.ones((5, 3)), 2)]
      [(2, 3), (2, 3), (1, 3)]
    """
    if isinstance(calib_x, (list, tuple)):
        chunks = [jnp.asarray(c) for c in calib_x]
    else:
        x = jnp.asarray(calib_x)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError("calib_x is empty: pass a batch (N, ...) of calibration inputs")
        step = x.shape[0] if chunk_size is None else int(chunk_size)
        if step < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
        chunks = [x[i:i + step] for i in range(0, x.shape[0], step)]
    if not chunks or any(c.ndim == 0 or c.shape[0] == 0 for c in chunks):
        raise ValueError("calib_x is empty: pass a batch (N, ...) of calibration inputs or a "
                         "list of such chunks")
    for i, c in enumerate(chunks):
        if jnp.issubdtype(c.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(c))):
            raise ValueError(f"calib_x chunk {i} contains NaN or Inf; clean the calibration "
                             "data (e.g. drop those examples) before calibrating")
    return chunks


def linen_layers(apply_fn: Callable[..., Any], variables: Any, x: Any) -> dict[str, ModuleInfo]:
    """Every module ``apply_fn(variables, x)`` runs, in forward (first-call) order.

    Args:
      apply_fn: a Flax linen apply function.
      variables: what ``apply_fn`` takes.
      x: one input batch (a single example suffices).

    Returns:
      ``{module path: ModuleInfo}`` in first-call order.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> {p: (type(m.module).__name__, m.calls) for p, m in linen_layers(model.apply, v,
      ...                                                                  jnp.ones((1, 4))).items()}
      {'': ('MLP', 1), 'fc1': ('Dense', 1), 'fc2': ('Dense', 1)}
    """
    return capture_linen(apply_fn, variables, x).modules


def layer_inputs(apply_fn: Callable[..., Any], variables: Any, x: Any, path: str,
                 calls: int) -> tuple[Any, ...]:
    """The inputs of the ``calls`` calls of module ``path``; the pass stops after the last.

    Args:
      apply_fn: a Flax linen apply function.
      variables: what ``apply_fn`` takes.
      x: the input batch.
      path: the module's canonical path.
      calls: how many calls to record (``ModuleInfo.calls``).

    Returns:
      One input per call.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> [a.shape for a in layer_inputs(model.apply, v, jnp.ones((2, 4)), "fc2", 1)]
      [(2, 8)]
    """
    cap = capture_linen(apply_fn, variables, x, where=re.escape(path), record="inputs",
                        stop_after={path: calls})
    return cap.inputs[path]


def layer_rows(x: jax.typing.ArrayLike, module: nn.Module, path: str = "layer") -> jax.Array:
    """A Dense or Conv layer's input as the rows of ``X`` (im2col patches for a convolution).

    Args:
      x: the input the module was called with.
      module: the ``nn.Dense`` or ``nn.Conv``.
      path: the layer's name in error messages.

    Returns:
      ``(rows, features)`` float32, ``features`` matching the (im2col) kernel's inputs.

    Example:
      >>> import jax.numpy as jnp, flax.linen as nn
      >>> layer_rows(jnp.ones((2, 3, 4)), nn.Dense(5)).shape
      (6, 4)
    """
    if isinstance(module, nn.Conv):
        return conv_patches(x, module, path=path)
    x = jnp.asarray(x, jnp.float32)
    return x.reshape(-1, x.shape[-1])


def model_layer_hessian(apply_fn: Callable[..., Any], variables: Any, chunks: list[Any],
                        path: str, module: nn.Module, calls: int, n_features: int
                        ) -> HessianState:
    """The Hessian of one Dense/Conv layer's inputs over every calibration chunk.

    For each chunk the model runs until the layer's last call (the inputs of
    all ``calls`` calls are rows of ``X``); at most one chunk of the layer's
    inputs is held at a time.

    Args:
      apply_fn: a Flax linen apply function.
      variables: what ``apply_fn`` takes (e.g. with earlier layers already compressed).
      chunks: calibration batches (:func:`calibration_chunks`).
      path: the module's canonical path.
      module: the ``nn.Dense`` / ``nn.Conv`` (:func:`linen_layers`).
      calls: the module's number of calls per forward pass.
      n_features: the (im2col) kernel's input width.

    Returns:
      The accumulated :class:`HessianState`.

    Raises:
      ValueError: the layer's inputs contain NaN or Inf.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> mods = linen_layers(model.apply, v, jnp.ones((1, 4)))
      >>> st = model_layer_hessian(model.apply, v, [jnp.ones((5, 4))], "fc1",
      ...                          mods["fc1"].module, 1, 4)
      >>> st.count, st.hessian.tolist()[0]
      (5, [2.0, 2.0, 2.0, 2.0])
    """
    state = init_hessian(n_features)
    for c in chunks:
        for raw in layer_inputs(apply_fn, variables, c, path, calls):
            xi = layer_rows(raw, module, path)
            if not bool(jnp.all(jnp.isfinite(xi))):
                raise ValueError(f"the inputs of layer '{path}' contain NaN or Inf on the "
                                 "calibration data (an earlier layer overflowed)")
            state = accumulate_hessian(state, xi)
    return state


# ----------------------------------------------------------------------------- layer-wise drivers


def check_solver_args(percdamp: float, blocksize: int, path: str) -> None:
    """Checks the damping and block size of a layer-wise (Cholesky) solver.

    Args:
      percdamp: dampening, a fraction of the mean Hessian diagonal (``>= 0``).
      blocksize: columns per block (a positive int).
      path: the kernel's name in error messages.

    Raises:
      ValueError: a negative or NaN ``percdamp``, a bad ``blocksize``.
      TypeError: a ``percdamp`` that is not a real number.

    Example:
      >>> check_solver_args(0.01, 128, "fc/kernel")
      >>> check_solver_args(0.01, 0, "fc/kernel")
      Traceback (most recent call last):
      ...
      ValueError: blocksize=0 must be a positive int (parameter 'fc/kernel')
    """
    check_in_range("percdamp", percdamp, 0.0, None, where=path)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize={blocksize!r} must be a positive int (parameter '{path}')")


def check_solver_flags(h_ok: Any, w_ok: Any, percdamp: float, path: str) -> None:
    """Raises if a solver found a non-finite Hessian or its damped Cholesky factorization failed.

    Args:
      h_ok: the solver's flag: the Hessian is finite.
      w_ok: the solver's flag: the damped Hessian was positive definite.
      percdamp: the dampening used (named in the message).
      path: the kernel's name in error messages.

    Raises:
      ValueError: either flag is False.

    Example:
      >>> check_solver_flags(True, True, 0.01, "fc/kernel")
      >>> check_solver_flags(True, False, 0.01, "fc/kernel")
      Traceback (most recent call last):
      ...
      ValueError: parameter 'fc/kernel': the damped Hessian is not positive definite (Cholesky failed); raise percdamp (now 0.01) or use more calibration samples
    """
    if not bool(h_ok):
        raise ValueError(f"parameter '{path}': hessian contains NaN or Inf; check the "
                         "calibration inputs")
    if not bool(w_ok):
        raise ValueError(
            f"parameter '{path}': the damped Hessian is not positive definite (Cholesky failed); "
            f"raise percdamp (now {percdamp}) or use more calibration samples")


def select_kernels(variables: Any, where: Any, *, what: str
                   ) -> tuple[Selected, Callable[[Any], Any]]:
    """The kernels a layer-wise driver processes, and how to put a new params tree back.

    Args:
      variables: ``{"params": ..., ...}`` or a bare params tree.
      where: the kernels (default: leaves named ``kernel`` with ``ndim >= 2``).
      what: the caller's name, for messages.

    Returns:
      ``(selected, rebuild)``: the params flattened with the selection, and
      ``rebuild(params) -> variables`` (the other collections kept).

    Raises:
      ValueError, TypeError: as :func:`jaxcomp.select.flatten` (a ``where``
        that selects nothing, ...).

    Example:
      >>> import jax.numpy as jnp
      >>> v = {"params": {"fc": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}, "stats": 1}
      >>> sel, rebuild = select_kernels(v, None, what="demo")
      >>> sel.sel_paths, sorted(rebuild({}))
      (['fc/kernel'], ['params', 'stats'])
    """
    has_params = isinstance(variables, Mapping) and "params" in variables
    params = variables["params"] if has_params else variables
    rebuild = (lambda p: {**dict(variables), "params": p}) if has_params else (lambda p: p)
    sel = flatten(params, where, what=what,
                  default=selectors.path(r"(.*/)?kernel") & selectors.ndim(min=2),
                  hint="Select kernels, e.g. where=r'.*/kernel'.")
    return sel, rebuild


class KernelLayer(NamedTuple):
    """A selected kernel and the Dense/Conv layer it belongs to (:func:`kernel_layers`).

    Attributes:
      path: the kernel's parameter path.
      module_path: its module's canonical path.
      module: the ``nn.Dense`` / ``nn.Conv`` (bound at its first call).
      calls: the module's calls per forward pass.
    """

    path: str
    module_path: str
    module: nn.Module
    calls: int


def kernel_layers(apply_fn: Callable[..., Any], variables: Any, selected: Selected, x: Any,
                  *, what: str) -> list[KernelLayer]:
    """The selected kernels' Dense/Conv layers, checked, in forward (first-call) order.

    Args:
      apply_fn: a Flax linen apply function.
      variables: what ``apply_fn`` takes.
      selected: the kernels (:func:`select_kernels`).
      x: one input batch (a single example suffices).
      what: the caller's name, for messages.

    Returns:
      One :class:`KernelLayer` per selected kernel, ordered by its module's first call.

    Raises:
      ValueError: a selected kernel whose module did not run.
      TypeError: a selected leaf that does not belong to an ``nn.Dense`` or
        ``nn.Conv``, or is not its kernel.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> sel, _ = select_kernels(v, None, what="demo")
      >>> [(k.path, k.module_path, k.calls)
      ...  for k in kernel_layers(model.apply, v, sel, jnp.ones((1, 4)), what="demo")]
      [('fc1/kernel', 'fc1', 1), ('fc2/kernel', 'fc2', 1)]
    """
    layers = linen_layers(apply_fn, variables, x)
    order = list(layers)
    leaves = dict(zip(selected.paths, selected.leaves))
    todo = []
    for p in selected.sel_paths:
        mp = module_of(p)
        if mp not in layers:
            raise ValueError(f"{what}: parameter '{p}' belongs to module '{mp}', which did not "
                             f"run in apply_fn; modules that ran:\n{list_paths(order)}")
        mod = layers[mp].module
        if not isinstance(mod, (nn.Dense, nn.Conv)):
            raise TypeError(f"{what}: parameter '{p}' belongs to a {type(mod).__name__}; only "
                            "nn.Dense and nn.Conv kernels are supported (exclude it with where=)")
        want = 2 if isinstance(mod, nn.Dense) else len(mod.kernel_size) + 2
        if not p.endswith("kernel") or jnp.ndim(leaves[p]) != want:
            raise TypeError(f"{what}: parameter '{p}' is not the kernel of its "
                            f"{type(mod).__name__}; select only kernels (e.g. where=r'.*/kernel')")
        todo.append((order.index(mp), p, mp))
    todo.sort()
    return [KernelLayer(p, mp, layers[mp].module, layers[mp].calls) for _, p, mp in todo]


def kernel_hessian(apply_fn: Callable[..., Any], variables: Any, chunks: list[Any],
                   layer: KernelLayer, kernel: jax.typing.ArrayLike
                   ) -> tuple[jax.Array, HessianState]:
    """A layer's kernel as its 2-d (im2col) matrix and the Hessian of the layer's inputs.

    Args:
      apply_fn: a Flax linen apply function.
      variables: what ``apply_fn`` takes (e.g. with earlier layers already compressed).
      chunks: calibration batches (:func:`calibration_chunks`).
      layer: the layer (:func:`kernel_layers`).
      kernel: its current kernel (Flax layout).

    Returns:
      ``(kernel_2d, state)``: the kernel as ``(in, out)`` (:func:`conv_kernel_2d`
      for a convolution) and the :func:`model_layer_hessian` of its inputs.

    Raises:
      ValueError: the layer's inputs contain NaN or Inf.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.models import mlp
      >>> model = mlp((4, 8, 3))
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
      >>> sel, _ = select_kernels(v, None, what="demo")
      >>> fc2 = kernel_layers(model.apply, v, sel, jnp.ones((1, 4)), what="demo")[1]
      >>> w2, st = kernel_hessian(model.apply, v, [jnp.ones((5, 4))], fc2,
      ...                         v["params"]["fc2"]["kernel"])
      >>> w2.shape, st.hessian.shape, int(st.count)
      ((8, 3), (8, 8), 5)
    """
    w = jnp.asarray(kernel)
    w2 = conv_kernel_2d(w) if isinstance(layer.module, nn.Conv) else w
    state = model_layer_hessian(apply_fn, variables, chunks, layer.module_path, layer.module,
                                layer.calls, w2.shape[0])
    return w2, state
