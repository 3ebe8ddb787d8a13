"""GPTQ: layer-wise post-training weight quantization with second-order error feedback.

For a Dense layer ``y = x @ W`` (Flax layout ``W: (in, out)``) and calibration
inputs ``X: (n, in)``, GPTQ looks for a quantized ``Ŵ`` on a fixed uniform
grid that keeps ``||X W - X Ŵ||²`` small. Every output column is an
independent least-squares problem sharing ``H = 2 XᵀX / n``
(:func:`jaxcomp.ops.hessian.layer_hessian`). The inputs (rows of ``W``) are
quantized one at a time, in order; the rounding error of input ``i`` is
spread onto the inputs not yet quantized by the Optimal Brain Surgeon
update, written with the upper Cholesky factor ``U`` of ``H⁻¹``
(``H⁻¹ = UᵀU``):

    ``e = (w_i - q(w_i)) / U_ii``,  ``w_j ← w_j - e · U_ij`` for ``j > i``.

Updates to later inputs are applied lazily, once per block of
``blocksize`` inputs (the result equals the unblocked column loop up to
float rounding). Options:

* ``group_size=g``: every ``g`` consecutive inputs of an output column share
  a scale (and zero point), computed *lazily* from the already-updated
  weights when the sweep reaches the group's first input (GPTQ's grouping);
  otherwise one scale per output channel, from the original weights.
* ``percdamp``: ``λ = percdamp · mean(diag H)`` is added to ``H``'s diagonal.
* ``act_order=True``: inputs are processed in order of decreasing
  ``H_ii`` (the most active first). With groups, the group scales are then
  computed up front from the original weights ("static groups"), so each
  group stays a contiguous block of inputs that one block scale describes.
* Inputs that are always zero (``H_ii = 0``) have their weights set to 0.

Grids are those of :mod:`jaxcomp.quant.uniform`: ``symmetric=False``
(the paper's default, min/max with an integer zero point, unsigned codes
``[0, 2^b - 1]``) or ``symmetric=True`` (absmax, signed narrow range).
With ``H`` the identity (uncorrelated inputs) no error is fed forward and
GPTQ is round-to-nearest (:func:`jaxcomp.quant.uniform.fake_quant`).

Convolutions: quantize the im2col kernel
(:func:`jaxcomp.ops.hessian.conv_kernel_2d`) with the Hessian of
:func:`jaxcomp.ops.hessian.conv_patches`; the model driver
:func:`jaxcomp.quant.ptq.gptq_model.gptq_quantize` does this for linen models.

References:
  Frantar, Ashkboos, Hoefler & Alistarh, GPTQ: Accurate post-training
  quantization for generative pre-trained transformers, arXiv:2210.17323.
  Frantar, Singh & Alistarh, Optimal Brain Compression, arXiv:2208.11580.
  Hassibi & Stork, Optimal Brain Surgeon (NeurIPS 1993).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcomp.core.leaves import QArray
from jaxcomp.ops.hessian import check_solver_args, check_solver_flags
from jaxcomp.quant.uniform import (
    check_finite_weights,
    compute_scale,
    expand_scale,
    fake_quant,
    quant_range,
    validate_bits,
)

__all__ = ["GPTQOutput", "check_group_size", "code_dtype", "gptq", "round_to_nearest"]


class GPTQOutput(NamedTuple):
    """A kernel quantized by :func:`gptq`.

    Attributes:
      kernel: the dequantized kernel ``(in, out)``, in the input's dtype;
        every entry lies on its column's (group's) grid.
      codes: the integer codes, ``(in, out)``: int8/int16 (symmetric) or
        uint8/uint16 (asymmetric), the narrowest holding ``bits``.
      scale: float32 step sizes, ``(1, out)`` per channel or ``(in / g, out)``
        per group (block scales of :mod:`jaxcomp.quant.uniform`).
      zero_point: integer-valued float32, the scale's shape (0 when symmetric).
      bits: the bit width.
      symmetric: which grid (see :func:`jaxcomp.quant.uniform.quant_range`).
    """

    kernel: jax.Array
    codes: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    bits: int
    symmetric: bool

    def qarray(self) -> QArray:
        """The codes, scales and zero points as a :class:`~jaxcomp.core.leaves.QArray`.

        Its ``materialize()`` equals :attr:`kernel` (up to float rounding).
        """
        return QArray(self.codes, self.scale, self.zero_point.astype(self.codes.dtype),
                      bits=self.bits, dense_dtype=self.kernel.dtype)


def code_dtype(bits: int, symmetric: bool) -> np.dtype:
    """The narrowest integer dtype holding ``bits``-bit codes of the grid.

    Example:
      >>> code_dtype(4, True), code_dtype(8, False), code_dtype(12, True)
      (dtype('int8'), dtype('uint8'), dtype('int16'))
    """
    if symmetric:
        return np.dtype(np.int8 if bits <= 8 else np.int16)
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def check_group_size(group_size: Any, n_in: int, path: str = "kernel") -> int | None:
    """Validates a group size for a kernel with ``n_in`` inputs (``None``: per channel).

    Args:
      group_size: ``None`` or a positive int dividing ``n_in``.
      n_in: the kernel's number of inputs (rows of the ``(in, out)`` kernel).
      path: the parameter's name in error messages.

    Returns:
      The group size as an int, or None.

    Raises:
      TypeError: a non-integer group size.
      ValueError: a group size below 1 or not dividing ``n_in``.

    Example:
      >>> check_group_size(4, 12), check_group_size(None, 12)
      (4, None)
      >>> check_group_size(5, 12, "fc/kernel")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      ValueError: parameter 'fc/kernel': group_size=5 does not divide its 12 inputs; ...
    """
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, (numbers.Integral, np.integer)):
        raise TypeError(f"parameter '{path}': group_size must be None or a positive int, got "
                        f"{group_size!r}")
    g = int(group_size)
    if g < 1:
        raise ValueError(f"parameter '{path}': group_size={g} must be >= 1 (or None for one "
                         "scale per output channel)")
    if n_in % g:
        divisors = [d for d in range(1, n_in + 1) if n_in % d == 0]
        raise ValueError(f"parameter '{path}': group_size={g} does not divide its {n_in} inputs; "
                         f"pick a divisor of {n_in} (e.g. {divisors[-4:]}) or None")
    return g


def _check_kernel(w: jax.Array, h: jax.Array, path: str) -> None:
    if w.ndim != 2:
        raise ValueError(
            f"parameter '{path}': gptq needs a 2-d Dense kernel (in, out), got shape "
            f"{tuple(w.shape)}; reshape conv kernels with jaxcomp.ops.hessian.conv_kernel_2d")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"parameter '{path}': gptq needs a floating-point kernel, got dtype "
                        f"{w.dtype}")
    if h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(
            f"parameter '{path}': hessian has shape {tuple(h.shape)} but the kernel "
            f"{tuple(w.shape)} has {w.shape[0]} inputs; pass the ({w.shape[0]}, {w.shape[0]}) "
            "Hessian 2XᵀX/n of this layer's inputs")


def round_to_nearest(w: jax.typing.ArrayLike, *, bits: int, group_size: int | None = None,
                     symmetric: bool = False, path: str = "kernel") -> jax.Array:
    """Round-to-nearest on GPTQ's grid: the baseline GPTQ is compared with.

    Per output channel (``group_size=None``) or per group of ``group_size``
    consecutive inputs, through :func:`jaxcomp.quant.uniform.fake_quant`.

    Args:
      w: kernel ``(in, out)``.
      bits: bit width in ``[1, 16]`` (``[2, 16]`` symmetric).
      group_size: inputs per scale, dividing ``in`` (None: per channel).
      symmetric: absmax grid (True) or min/max with a zero point (False).
      path: the parameter's name in error messages.

    Returns:
      The dequantized kernel, ``w``'s shape and dtype.

    Raises:
      ValueError, TypeError: as :func:`gptq`.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[0.4, -1.2], [1.0, 2.0]])
      >>> round_to_nearest(w, bits=2, symmetric=True).tolist()
      [[0.0, -2.0], [1.0, 2.0]]
    """
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"parameter '{path}': round_to_nearest needs a 2-d kernel (in, out), "
                         f"got shape {tuple(w.shape)}")
    bits = validate_bits(bits, f"bits for '{path}'")
    g = check_group_size(group_size, w.shape[0], path)
    check_finite_weights(w, "round_to_nearest", path)
    return _rtn(w, bits=bits, group_size=g, symmetric=bool(symmetric))


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "symmetric"))
def _rtn(w, *, bits, group_size, symmetric):
    return fake_quant(w, bits=bits, axis=-1, group_size=group_size,
                      group_axis=0 if group_size else None, symmetric=symmetric)


@functools.partial(jax.jit, static_argnames=("bits", "symmetric", "bs", "gs", "lazy"))
def _gptq_kernel(w_in, h, percdamp, act_order, *, bits, symmetric, bs, gs, lazy):
    # wt: (out, in) -- the paper's layout: inputs are the columns, processed in order.
    # Static scales (per channel, or groups with act_order) come from the original weights;
    # lazy group scales are filled in during the sweep. Inputs are padded to whole blocks
    # (zero weights, identity factor) so one scan body serves every block.
    n_in, out = w_in.shape
    perm = jnp.where(act_order, jnp.argsort(-jnp.diag(h), stable=True), jnp.arange(n_in))
    if lazy:
        s_in = jnp.ones((n_in, out), jnp.float32)
        z_in = jnp.zeros((n_in, out), jnp.float32)
    else:
        g = None if gs == n_in else gs
        s, z = compute_scale(w_in, bits=bits, axis=-1, group_size=g,
                             group_axis=None if g is None else 0, symmetric=symmetric)
        s_in, z_in = expand_scale(s, (n_in, out)), expand_scale(z, (n_in, out))
    wt = w_in.T
    h_ok = jnp.all(jnp.isfinite(h))
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(dead.astype(jnp.float32))
    wt = jnp.where(dead[None, :], 0.0, wt)
    wt, h = wt[:, perm], h[perm][:, perm]
    st, zt = s_in.T[:, perm], z_in.T[:, perm]
    eye = jnp.eye(n_in, dtype=jnp.float32)
    h = h + percdamp * jnp.mean(jnp.diag(h)) * eye
    hinv = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), eye)
    u = jnp.linalg.cholesky(hinv).T  # upper: H⁻¹ = UᵀU
    nb = -(-n_in // bs)
    extra = nb * bs - n_in
    u = jnp.pad(u, ((0, extra), (0, extra))) + jnp.diag(jnp.arange(n_in + extra) >= n_in)
    w = jnp.pad(wt, ((0, 0), (0, extra)))
    st = jnp.pad(st, ((0, 0), (0, extra)), constant_values=1.0)
    zt = jnp.pad(zt, ((0, 0), (0, extra)))
    cols = jnp.arange(n_in + extra)

    def group_scale(i, w1, s1, z1):
        g0 = (i // gs) * gs
        blk = lax.dynamic_slice_in_dim(w1, g0, gs, axis=1)
        s, z = compute_scale(blk, bits=bits, axis=0, symmetric=symmetric)
        s1 = lax.dynamic_update_slice_in_dim(s1, jnp.broadcast_to(s, (out, gs)), g0, axis=1)
        z1 = lax.dynamic_update_slice_in_dim(z1, jnp.broadcast_to(z, (out, gs)), g0, axis=1)
        return s1, z1

    def body(i, carry, u1):
        w1, q1, err1, s1, z1 = carry
        if lazy:  # groups are block-aligned: a group's scale comes from its updated weights
            s1, z1 = lax.cond(i % gs == 0, functools.partial(group_scale, i, w1),
                              lambda s, z: (s, z), s1, z1)
        col = lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
        s = lax.dynamic_index_in_dim(s1, i, axis=1, keepdims=False)
        z = lax.dynamic_index_in_dim(z1, i, axis=1, keepdims=False)
        q = fake_quant(col, bits=bits, symmetric=symmetric, scale=s, zero_point=z)
        e = (col - q) / u1[i, i]
        w1 = w1 - e[:, None] * u1[i][None, :]  # U is upper: columns < i are untouched
        q1 = lax.dynamic_update_index_in_dim(q1, q, i, axis=1)
        err1 = lax.dynamic_update_index_in_dim(err1, e, i, axis=1)
        return w1, q1, err1, s1, z1

    def block(carry, b):
        w, s_all, z_all = carry
        i1 = b * bs
        w1 = lax.dynamic_slice_in_dim(w, i1, bs, axis=1)
        u1 = lax.dynamic_slice(u, (i1, i1), (bs, bs))
        s1 = lax.dynamic_slice_in_dim(s_all, i1, bs, axis=1)
        z1 = lax.dynamic_slice_in_dim(z_all, i1, bs, axis=1)
        _, q1, err1, s1, z1 = lax.fori_loop(
            0, bs, functools.partial(body, u1=u1),
            (w1, jnp.zeros_like(w1), jnp.zeros_like(w1), s1, z1))
        w = lax.dynamic_update_slice_in_dim(w, q1, i1, axis=1)
        # Lazy update of all later inputs at once (rows of U: zero left of the block).
        delta = err1 @ lax.dynamic_slice_in_dim(u, i1, bs, axis=0)
        w = w - jnp.where(cols[None, :] >= i1 + bs, delta, 0.0)
        s_all = lax.dynamic_update_slice_in_dim(s_all, s1, i1, axis=1)
        z_all = lax.dynamic_update_slice_in_dim(z_all, z1, i1, axis=1)
        return (w, s_all, z_all), None

    (w, st, zt), _ = lax.scan(block, (w, st, zt), jnp.arange(nb))
    inv = jnp.argsort(perm)
    w, st, zt = w[:, :n_in][:, inv], st[:, :n_in][:, inv], zt[:, :n_in][:, inv]
    codes = jnp.round(w / st + zt).astype(code_dtype(bits, symmetric))
    return w.T, codes.T, st.T[::gs], zt.T[::gs], h_ok, jnp.all(jnp.isfinite(w))


def gptq(
    w: jax.typing.ArrayLike,
    hessian: jax.typing.ArrayLike,
    *,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
    path: str = "kernel",
) -> GPTQOutput:
    """Quantizes a Dense kernel by GPTQ: column-wise OBS error feedback, lazy block updates.

    A one-shot host call (not for use under ``jit``): the solver is one
    compiled function per kernel shape and setting, and its result is checked
    on the host (finite Hessian, successful Cholesky) before it is returned.

    Args:
      w: kernel ``(in, out)`` (Flax layout), floating point.
      hessian: ``(in, in)``, ``2XᵀX/n`` of the layer's calibration inputs
        (:func:`jaxcomp.ops.hessian.layer_hessian`).
      bits: bit width in ``[1, 16]`` (``[2, 16]`` with ``symmetric=True``).
      group_size: inputs per scale (dividing ``in``); None: one scale per
        output channel.
      symmetric: absmax grid with signed codes (True) or min/max with an
        integer zero point and unsigned codes (False, the paper's choice).
      blocksize: inputs per lazy-update block; with groups it is rounded down
        to a multiple of ``group_size`` (at least one group). It changes the
        result only through float rounding.
      percdamp: ``λ = percdamp · mean(diag H)`` is added to the diagonal.
      act_order: process inputs by decreasing ``H_ii`` (see the module docstring).
      path: the parameter's name in error messages.

    Returns:
      A :class:`GPTQOutput` (dequantized kernel, scales, zero points; ``.qarray()``
      for integer codes).

    Raises:
      ValueError: bits outside ``[1, 16]`` (or 1 with ``symmetric=True``), a
        group size that does not divide ``in``, shape mismatch, NaN/Inf in
        the kernel or the Hessian, a Hessian that stays singular (raise
        ``percdamp``), a negative ``percdamp`` or a bad ``blocksize``.
      TypeError: non-integer bits or group size, a non-float kernel.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcomp.ops.hessian import layer_hessian
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> w = jax.random.normal(jax.random.key(1), (8, 4))
      >>> out = gptq(w, layer_hessian(x), bits=3, group_size=4)
      >>> out.kernel.shape, out.scale.shape, int(jnp.unique(out.qarray().values).size) <= 8
      ((8, 4), (2, 4), True)

    References:
      Frantar et al., GPTQ, arXiv:2210.17323; Hassibi & Stork 1993.
    """
    w = jnp.asarray(w)
    h = jnp.asarray(hessian, jnp.float32)
    _check_kernel(w, h, path)
    bits = validate_bits(bits, f"bits for '{path}'")
    quant_range(bits, symmetric=symmetric)
    n_in = w.shape[0]
    g = check_group_size(group_size, n_in, path)
    check_solver_args(percdamp, blocksize, path)
    check_finite_weights(w, "gptq", path)
    if g is None:
        bs = min(blocksize, n_in)
    else:
        bs = min(max(blocksize // g, 1) * g, n_in)
    lazy = g is not None and not act_order
    w32 = w if w.dtype == jnp.float32 else w.astype(jnp.float32)
    kernel, codes, scale, zero_point, h_ok, w_ok = _gptq_kernel(
        w32, h, jnp.float32(percdamp), jnp.bool_(act_order), bits=bits,
        symmetric=bool(symmetric), bs=bs, gs=n_in if g is None else g, lazy=lazy)
    check_solver_flags(h_ok, w_ok, percdamp, path)
    if w.dtype != jnp.float32:
        kernel = kernel.astype(w.dtype)
    return GPTQOutput(kernel, codes, scale, zero_point, bits, bool(symmetric))
