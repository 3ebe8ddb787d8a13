"""Integer-only inference: export a trained fake-quant linen model to int8/int32 arithmetic.

:func:`export_integer` turns a model trained with fake-quantized weights
(per-output-channel symmetric, ``fake_quant(kernel, bits=8, axis=-1)``) and
fake-quantized activations (asymmetric ranges from
:mod:`jaxcomp.quant.intercept`) into an :class:`IntegerModel` that runs
the same network with

* int8 weight codes (a :class:`~jaxcomp.core.leaves.QArray` per layer,
  from :func:`~jaxcomp.quant.uniform.quantize`) and int8 activation codes
  (the unsigned codes of the asymmetric ranges shifted by ``-2^(b-1)``, so
  their zero points lie in ``[-128, 127]``);
* int32 accumulation (:func:`~jaxcomp.quant.integer.ops.int_dense`,
  :func:`~jaxcomp.quant.integer.ops.int_conv`) and int32 biases of scale
  ``S_x S_w`` with the zero-point correction ``-Z_x Σ q_w`` folded in;
* fixed-point requantization to the next layer's input range
  (:func:`~jaxcomp.quant.integer.ops.requantize`), a ReLU fused as the
  lower clamp, max-pooling and flattening on the codes.

Only the model's input (quantized with the first layer's input range) and
its output (dequantized from the last layer's output range) touch floats.
Up to rounding ties the integer model computes what the fake-quant model
computes; its outputs agree with it within one output quantization step.

The network is described by ``program``: the order of its layers (module
paths) and of the parameter-free steps between them: ``"relu"`` (right
after a layer), ``"max_pool:k"`` (``k × ... × k`` windows, stride ``k``,
no padding) and ``"flatten"``. Layer hyperparameters (strides, padding,
dilation, groups, bias) are read from the linen modules during an abstract
trace of the apply function, so they cannot disagree with the model.

An :class:`IntegerModel` is a pytree of arrays and ``QArray`` nodes (the
program and layer hyperparameters are static): it passes through
``jax.jit`` and orbax checkpoints like any parameter tree.

References:
  Jacob et al. 2018, "Quantization and training of neural networks for
  efficient integer-arithmetic-only inference", arXiv:1712.05877.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding
from jax import lax

from jaxcomp.core.errors import list_paths
from jaxcomp.core.leaves import QArray
from jaxcomp.quant.integer.ops import int_conv, int_dense, quantize_multiplier, requantize
from jaxcomp.quant.intercept import ActRange, ActRanges, range_scale
from jaxcomp.quant.uniform import quantize, validate_bits
from jaxcomp.select.paths import path_str

__all__ = ["IntLayer", "IntegerModel", "act_codes", "export_integer"]

_POOL = re.compile(r"max_pool:(\d+)")


@flax.struct.dataclass
class IntLayer:
    """One integer dense or convolution layer.

    Attributes:
      kernel: the weight codes (int8 ``values``, per-output-channel float32
        ``scale``, zero point 0).
      bias: int32 ``(O,)``: ``round(b / (S_x S_w)) - Z_x Σ q_w``.
      multiplier, shift: int32 ``(O,)`` fixed-point ``M = S_x S_w / S_y``.
      in_zero_point, out_zero_point: int32 scalars (int8 code domain).
      kind: ``"dense"`` or ``"conv"``.
      relu: ReLU fused as the lower clamp.
      strides, padding, dilation, groups: convolution hyperparameters.
    """

    kernel: QArray
    bias: jax.Array
    multiplier: jax.Array
    shift: jax.Array
    in_zero_point: jax.Array
    out_zero_point: jax.Array
    kind: str = flax.struct.field(pytree_node=False, default="dense")
    relu: bool = flax.struct.field(pytree_node=False, default=False)
    strides: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    padding: tuple[tuple[int, int], ...] = flax.struct.field(pytree_node=False, default=())
    dilation: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    groups: int = flax.struct.field(pytree_node=False, default=1)

    def __call__(self, x: jax.Array, *, qmin: int = -128, qmax: int = 127) -> jax.Array:
        """int8 codes in, int8 codes out."""
        if self.kind == "dense":
            acc = int_dense(x, self.kernel.values, self.bias)
        else:
            acc = int_conv(x, self.kernel.values, self.bias, strides=self.strides,
                           padding=self.padding, zero_point=self.in_zero_point,
                           dilation=self.dilation, feature_group_count=self.groups)
        return requantize(acc, self.multiplier, self.shift, self.out_zero_point, qmin=qmin,
                          qmax=qmax, relu=self.relu)


@flax.struct.dataclass
class IntegerModel:
    """A network that runs on integer codes (see the module docstring).

    Attributes:
      layers: ``{module path: IntLayer}``.
      input_scale, input_zero_point: how float inputs become codes
        (float32 scalar; int32 scalar in the int8 code domain).
      output_scale, output_zero_point: how the last layer's codes become
        floats.
      program: the steps (static).
      act_bits: activation bit width (static; codes in
        ``[-2^(b-1), 2^(b-1) - 1]``).

    Call it on float inputs for dequantized outputs; :meth:`codes` runs
    from input codes to output codes with integer arithmetic only.
    """

    layers: dict[str, IntLayer]
    input_scale: jax.Array
    input_zero_point: jax.Array
    output_scale: jax.Array
    output_zero_point: jax.Array
    program: tuple[str, ...] = flax.struct.field(pytree_node=False, default=())
    act_bits: int = flax.struct.field(pytree_node=False, default=8)

    @property
    def code_range(self) -> tuple[int, int]:
        """``(q_min, q_max)`` of the activation codes."""
        half = 1 << (self.act_bits - 1)
        return -half, half - 1

    def quantize_input(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Float inputs to int8 codes (the same rounding as the fake-quant input)."""
        return act_codes(x, self.input_scale, self.input_zero_point, self.act_bits)

    def codes(self, q: jax.Array) -> jax.Array:
        """Runs the program on int8 input codes; returns the output codes (integer only)."""
        qmin, qmax = self.code_range
        if q.dtype != jnp.int8:
            raise TypeError(f"IntegerModel.codes: inputs must be int8 codes, got {q.dtype}; "
                            "use quantize_input (or call the model on floats)")
        for step in self.program:
            if step == "flatten":
                q = q.reshape(q.shape[0], -1)
            elif (m := _POOL.fullmatch(step)) is not None:
                k = int(m.group(1))
                win = (1,) + (k,) * (q.ndim - 2) + (1,)
                q = lax.reduce_window(q, jnp.array(qmin, q.dtype), lax.max, win, win, "VALID")
            elif step == "relu":
                continue  # fused into the layer before
            else:
                q = self.layers[step](q, qmin=qmin, qmax=qmax)
        return q

    def dequantize_output(self, q: jax.Array) -> jax.Array:
        """Output codes to float32 values ``(q - Z) S``."""
        return (q.astype(jnp.int32) - self.output_zero_point).astype(jnp.float32) * \
            self.output_scale

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Float inputs → codes → integer network → dequantized float32 outputs."""
        return self.dequantize_output(self.codes(self.quantize_input(x)))


def act_codes(x: jax.typing.ArrayLike, scale: jax.typing.ArrayLike,
              zero_point: jax.typing.ArrayLike, bits: int = 8) -> jax.Array:
    """Float activations to int8 codes of an asymmetric range, shifted to ``[-2^(b-1), 2^(b-1))``.

    ``q = clip(round(x / S + Z_u), 0, 2^b - 1) - 2^(b-1)`` with the unsigned
    zero point ``Z_u = zero_point + 2^(b-1)``: the codes of
    :func:`~jaxcomp.quant.uniform.fake_quant` ``(symmetric=False)`` moved
    into the int8 range.

    Args:
      x: float activations.
      scale: float32 scale.
      zero_point: the zero point in the int8 code domain.
      bits: bit width in ``[2, 8]``.

    Returns:
      int8 codes.

    Example:
      >>> act_codes(jnp.array([0.0, 0.5, 2.0, 9.0]), jnp.float32(0.25), -8, bits=4).tolist()
      [-8, -6, 0, 7]
    """
    bits = validate_bits(bits, "bits", low=2, high=8)
    half = 1 << (bits - 1)
    zu = jnp.asarray(zero_point, jnp.float32) + half
    y = jnp.asarray(x).astype(jnp.float32) / jnp.asarray(scale, jnp.float32) + zu
    q = jnp.round(jnp.clip(y, 0, (1 << bits) - 1))
    return (q - half).astype(jnp.int8)


# ----------------------------------------------------------------------------- export


def _tuple(v: Any, n: int, what: str) -> tuple[int, ...]:
    if v is None:
        return (1,) * n
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        raise ValueError(f"export_integer: {what}={v} does not have {n} entries")
    return v


def _record_layers(apply_fn: Callable, variables: Any, example: Any,
                   types: tuple[type, ...]) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """``{path: (module, input shape)}`` of the layers the model calls, in call order."""
    seen: dict[str, tuple[Any, tuple[int, ...]]] = {}

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and mod.scope is not None and isinstance(mod, types):
            x = args[0] if args else kwargs.get("inputs")
            path = path_str(mod.scope.path)
            if path in seen:
                raise ValueError(f"export_integer: layer '{path}' is called more than once; an "
                                 "integer program runs each layer once")
            seen[path] = (mod, tuple(x.shape))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        # a fresh function each time: a cached trace would not run the interceptor
        jax.eval_shape(lambda v, x: apply_fn(v, x), variables, example)
    return seen


def _params_at(variables: Any, path: str) -> Mapping:
    node = variables.get("params", variables) if isinstance(variables, Mapping) else None
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"export_integer: no parameters for layer '{path}' in "
                             "variables['params']")
        node = node[part]
    return node


def _act(r: ActRange, bits: int) -> tuple[float, int]:
    """Scale and int8-domain zero point of an asymmetric activation range."""
    s, z = range_scale(r, bits=bits, symmetric=False)
    return float(s), int(z) - (1 << (bits - 1))


def _layer(path: str, module: Any, in_shape: tuple[int, ...], params: Mapping, s_in: float,
           z_in: int, s_out: float, z_out: int, relu: bool, weight_bits: int) -> IntLayer:
    kernel = jnp.asarray(params["kernel"])
    if isinstance(module, nn.Conv):
        kind = "conv"
        nsp = kernel.ndim - 2
        if _tuple(module.input_dilation, nsp, "input_dilation") != (1,) * nsp:
            raise ValueError(f"export_integer: layer '{path}' uses input_dilation, which the "
                             "integer program does not support")
        strides = _tuple(module.strides, nsp, "strides")
        dilation = _tuple(module.kernel_dilation, nsp, "kernel_dilation")
        pad = canonicalize_padding(module.padding, nsp)
        if isinstance(pad, str):
            if pad not in ("SAME", "VALID", "SAME_LOWER"):
                raise ValueError(f"export_integer: layer '{path}' has padding={pad!r}; only "
                                 "zero padding (SAME, VALID or explicit) is supported")
            window = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:nsp], dilation)]
            pad = lax.padtype_to_pads(in_shape[1:-1], window, strides, pad)
        padding = tuple((int(lo), int(hi)) for lo, hi in pad)
        groups = int(module.feature_group_count)
    elif isinstance(module, nn.Dense) or (isinstance(module, nn.DenseGeneral)
                                          and kernel.ndim == 2):
        kind, strides, padding, dilation, groups = "dense", (), (), (), 1
        if kernel.ndim != 2:
            raise ValueError(f"export_integer: layer '{path}' has a kernel of shape "
                             f"{kernel.shape}; dense layers need (in, out)")
    else:
        raise ValueError(f"export_integer: layer '{path}' is a {type(module).__name__}; the "
                         "integer program supports Dense and Conv layers")
    host = np.asarray(kernel, np.float32)
    if not np.all(np.isfinite(host)):
        raise ValueError(f"export_integer: the kernel of layer '{path}' holds NaN or Inf; fix "
                         "the training divergence before exporting")
    qk = _quantize_kernel(jnp.asarray(host), weight_bits)
    codes = np.asarray(qk.values).astype(np.int64)
    s_w = np.asarray(qk.scale, np.float64).reshape(-1)
    o = kernel.shape[-1]
    b = np.asarray(params.get("bias", np.zeros(o)), np.float64).reshape(o)
    if kind == "dense":
        colsum = codes.sum(axis=0)
    else:
        colsum = codes.reshape(-1, o).sum(axis=0)
    s_acc = s_in * s_w
    bias = np.round(b / s_acc) - z_in * colsum
    k_red = int(np.prod(kernel.shape[:-1]))
    bound = k_red * 128 * (1 << (weight_bits - 1)) + np.abs(bias).max(initial=0)
    if bound >= 2 ** 31:
        raise ValueError(f"export_integer: layer '{path}' may overflow its int32 accumulator "
                         f"({k_red} products per output plus a bias up to "
                         f"{np.abs(bias).max(initial=0):.3g}); reduce the fan-in or the bias "
                         "(a bias far beyond the activation scale)")
    m0, shift = quantize_multiplier(s_acc / s_out)
    return IntLayer(
        kernel=QArray(jnp.asarray(codes, jnp.int8), qk.scale, jnp.zeros((), jnp.int8),
                      bits=weight_bits, dense_dtype=jnp.float32),
        bias=jnp.asarray(bias, jnp.int32), multiplier=m0, shift=shift,
        in_zero_point=jnp.asarray(z_in, jnp.int32), out_zero_point=jnp.asarray(z_out, jnp.int32),
        kind=kind, relu=relu, strides=tuple(strides), padding=padding, dilation=tuple(dilation),
        groups=groups)


@partial(jax.jit, static_argnums=1)
def _quantize_kernel(kernel: jax.Array, bits: int) -> QArray:
    return quantize(kernel, bits=bits, axis=-1)


def _parse_program(program: Any, layers: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    if isinstance(program, str) or not isinstance(program, Sequence) or not program:
        raise TypeError("export_integer: program must be a non-empty list of steps (layer "
                        f"paths, 'relu', 'max_pool:k', 'flatten'), got {program!r}")
    order, relu, prev = [], set(), None
    for i, step in enumerate(program):
        if not isinstance(step, str):
            raise TypeError(f"export_integer: program[{i}]={step!r} must be a string")
        if step == "relu":
            if prev is None or prev not in layers:
                raise ValueError(f"export_integer: program[{i}]='relu' must follow a layer (it "
                                 "is fused into the layer's requantization)")
            relu.add(prev)
        elif step == "flatten" or _POOL.fullmatch(step):
            if step != "flatten" and int(step.split(":")[1]) < 1:
                raise ValueError(f"export_integer: program[{i}]={step!r}: the window must be >= 1")
        elif step in layers:
            if step in order:
                raise ValueError(f"export_integer: layer '{step}' appears twice in program")
            order.append(step)
        else:
            raise ValueError(
                f"export_integer: program[{i}]={step!r} is neither a layer the model calls nor "
                "one of 'relu', 'flatten', 'max_pool:k'; layers, closest first:\n"
                f"{list_paths(list(layers), close_to=step)}")
        prev = step
    missing = [p for p in layers if p not in order]
    if missing:
        raise ValueError(f"export_integer: the model calls layers that program leaves out: "
                         f"{missing}; list every layer (the integer program replaces the whole "
                         "model)")
    if order != list(layers):
        raise ValueError(f"export_integer: program runs the layers in the order {order}, the "
                         f"model calls them in the order {list(layers)}")
    return order, relu


def export_integer(
    apply_fn: Callable[..., Any],
    variables: Any,
    ranges: ActRanges,
    program: Sequence[str],
    example_input: Any,
    *,
    weight_bits: int = 8,
    act_bits: int = 8,
    types: tuple[type, ...] = (nn.Dense, nn.DenseGeneral, nn.Conv),
) -> IntegerModel:
    """Builds the integer-only version of a fake-quant trained linen model.

    Args:
      apply_fn: the linen apply function (``model.apply``), traced once
        abstractly to read layer hyperparameters.
      variables: the trained variables (float kernels and biases; fold batch
        norms into them first, see
        :func:`~jaxcomp.quant.integer.ops.fold_batchnorm`).
      ranges: the activation ranges of QAT: an input range for every layer
        and an output range for the last one (``ActQuant(outputs=True)``).
      program: the layer order and the steps between (see the module
        docstring), e.g. ``["Dense_0", "relu", "Dense_1"]``.
      example_input: an input of the model's shape (for the trace).
      weight_bits: weight bit width (``quantize(kernel, bits, axis=-1)``,
        per output channel, symmetric), ``[2, 8]``.
      act_bits: activation bit width of the ranges (asymmetric), ``[2, 8]``.
      types: the linen layer classes the trace records.

    Returns:
      An :class:`IntegerModel`.

    Raises:
      ValueError: a program that does not match the model (unknown, missing,
        repeated or reordered layers; a misplaced ``relu``); missing ranges;
        unsupported layers or padding; possible int32 overflow; bad bits.
      TypeError: a malformed program or ranges.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from jaxcomp.quant.intercept import ActQuant, act_quantized
      >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(1), (32, 8))
      >>> v = model.init(jax.random.key(0), x)
      >>> q = act_quantized(model.apply, {"layers_0": 8, "layers_2": ActQuant(8, outputs=True)})
      >>> r = q.calibrate(v, x)
      >>> im = export_integer(model.apply, v, r, ["layers_0", "relu", "layers_2"], x)
      >>> im.layers["layers_0"].kernel.values.dtype, im.layers["layers_0"].bias.dtype
      (dtype('int8'), dtype('int32'))
      >>> bool(jnp.abs(im(x) - model.apply(v, x)).max() < 0.1)
      True
    """
    weight_bits = validate_bits(weight_bits, "weight_bits", low=2, high=8)
    act_bits = validate_bits(act_bits, "act_bits", low=2, high=8)
    if not isinstance(ranges, ActRanges):
        raise TypeError(f"export_integer: ranges must be an ActRanges, got "
                        f"{type(ranges).__name__}")
    recorded = _record_layers(apply_fn, variables, example_input, tuple(types))
    if not recorded:
        raise ValueError("export_integer: the apply function called no Dense or Conv layer")
    order, relu = _parse_program(program, recorded)
    for path in order:
        if path not in ranges.inputs:
            raise ValueError(f"export_integer: no input range for layer '{path}'; quantize the "
                             "inputs of every layer during QAT/calibration (ranges hold: "
                             f"{sorted(ranges.inputs)})")
    last = order[-1]
    extra = [p for p in ranges.outputs if p != last and p in recorded]
    if extra:
        raise ValueError(f"export_integer: hidden layers {extra} have output ranges; the "
                         "integer program requantizes each layer to the next layer's input "
                         "range, so quantize outputs of the last layer only")
    if last not in ranges.outputs:
        raise ValueError(f"export_integer: no output range for the last layer '{last}'; train "
                         f"or calibrate with ActQuant(..., outputs=True) for '{last}'")
    layers = {}
    for i, path in enumerate(order):
        s_in, z_in = _act(ranges.inputs[path], act_bits)
        out_r = ranges.outputs[last] if path == last else ranges.inputs[order[i + 1]]
        s_out, z_out = _act(out_r, act_bits)
        module, in_shape = recorded[path]
        layers[path] = _layer(path, module, in_shape, _params_at(variables, path), s_in, z_in,
                              s_out, z_out, path in relu, weight_bits)
    s0, z0 = _act(ranges.inputs[order[0]], act_bits)
    s1, z1 = _act(ranges.outputs[last], act_bits)
    return IntegerModel(layers=layers, input_scale=jnp.float32(s0),
                        input_zero_point=jnp.asarray(z0, jnp.int32),
                        output_scale=jnp.float32(s1), output_zero_point=jnp.asarray(z1, jnp.int32),
                        program=tuple(program), act_bits=act_bits)
