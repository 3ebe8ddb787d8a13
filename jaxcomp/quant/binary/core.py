"""The machinery of the binarizing compressors: straight-through views, checks, state, export.

* :func:`straight_through`: forward one value, send the gradient to another
  (identity or hard-tanh estimator, with a gain);
* :func:`check_weights`, :func:`kernel_axes`, :func:`positive_number`: the
  checks every binary and ternary function runs (clear errors naming the
  argument or parameter path);
* :class:`BinaryMethod` (what happens to one leaf: view, export, bits,
  projection), :func:`build_binary` (a method → a
  :class:`~jaxcomp.Compressor` with a :class:`BinaryState`) and
  :func:`binary_export` (the binarized leaves as the compressed leaves they
  are stored as).

The methods themselves are in :mod:`jaxcomp.quant.binary.sign` (BinaryConnect,
XNOR-Net) and :mod:`jaxcomp.quant.binary.ternary` (TWN, ABC-Net).

References:
  Bengio, Léonard, Courville, "Estimating or propagating gradients through
  stochastic neurons", arXiv:1308.3432.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.core.base import Compressor, never_due
from jaxcomp.core.errors import concrete
from jaxcomp.core.info import LeafInfo
from jaxcomp.core.keys import check_key
from jaxcomp.core.leaves import CompressedLeaf, is_compressed
from jaxcomp.select import selectors
from jaxcomp.select.selection import Selected, flatten

__all__ = [
    "STE_MODES",
    "BinaryMethod",
    "BinaryState",
    "binary_export",
    "build_binary",
    "check_ste",
    "check_weights",
    "kernel_axes",
    "positive_number",
    "straight_through",
]

STE_MODES = ("identity", "clipped")


# ----------------------------------------------------------------- straight-through


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _through(w, view, gain, bound):
    del w, gain, bound
    return view


def _through_fwd(w, view, gain, bound):
    return view, (w, gain)


def _through_bwd(bound, res, g):
    w, gain = res
    gw = g.astype(jnp.float32) * gain
    if bound is not None:
        gw = jnp.where(jnp.abs(w.astype(jnp.float32)) <= bound, gw, 0.0)
    return gw.astype(w.dtype), jnp.zeros(g.shape, g.dtype), jnp.zeros_like(gain)


_through.defvjp(_through_fwd, _through_bwd)


def straight_through(w: jax.typing.ArrayLike, view: jax.typing.ArrayLike, *,
                     gain: jax.typing.ArrayLike = 1.0, bound: float | None = None) -> jax.Array:
    """Returns ``view`` exactly; the gradient w.r.t. ``w`` is ``gain · g`` (zero where ``|w| > bound``).

    The straight-through estimator: ``view`` (e.g. ``sign(w)``) is computed
    without a gradient of its own, and the incoming gradient ``g`` goes to
    ``w`` as if ``view`` were ``gain · w``. With ``bound`` it goes only where
    ``|w| <= bound`` (the hard-tanh estimator). ``view`` gets no gradient.

    Args:
      w: the array the gradient goes to (float).
      view: the forward value, with ``w``'s shape and dtype.
      gain: a factor on the gradient (scalar; not differentiated).
      bound: ``None`` (identity estimator) or a positive Python number.

    Returns:
      ``view``.

    Raises:
      ValueError: ``view``'s shape or dtype differ from ``w``'s, or ``bound``
        is not a positive number.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([0.5, -2.0])
      >>> f = lambda w: jnp.sum(straight_through(w, jnp.sign(w), bound=1.0) * jnp.array([3.0, 4.0]))
      >>> float(f(w)), jax.grad(f)(w).tolist()
      (-1.0, [3.0, 0.0])

    References:
      Bengio, Léonard, Courville 2013, arXiv:1308.3432.
    """
    w, view = jnp.asarray(w), jnp.asarray(view)
    if w.shape != view.shape or w.dtype != view.dtype:
        raise ValueError(f"straight_through: view has shape {view.shape} and dtype {view.dtype}; "
                         f"w has {w.shape} and {w.dtype}: pass a view of w's shape and dtype")
    if bound is not None:
        bound = positive_number("bound", bound, "straight_through")
    return _through(w, view, jnp.asarray(gain, jnp.float32), bound)


# ----------------------------------------------------------------------- validation


def positive_number(name: str, value: Any, what: str) -> float:
    """``value`` as a float if it is a finite number > 0 known now; else a clear error.

    Args:
      name: the argument's name, for messages.
      value: a Python/NumPy number or a concrete 0-d array.
      what: the caller, first word of messages.

    Returns:
      ``float(value)``.

    Raises:
      TypeError: not a number, or a traced value (these hyperparameters are static).
      ValueError: NaN, Inf, zero or negative.

    Example:
      >>> positive_number("delta_factor", 0.7, "demo")
      0.7
      >>> positive_number("delta_factor", 0, "demo")
      Traceback (most recent call last):
      ...
      ValueError: demo: delta_factor=0.0 must be a finite number > 0
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{what}: {name} must be a Python number (it is static), got a traced "
                        "array; do not pass it through jit or inject_hyperparams")
    host = concrete(value)
    if (isinstance(value, bool) or host is None or host.shape != ()
            or not np.issubdtype(host.dtype, np.number)):
        raise TypeError(f"{what}: {name} must be a positive number, got {value!r}")
    v = float(host)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what}: {name}={v!r} must be a finite number > 0")
    return v


def check_ste(ste: Any, what: str) -> str:
    if ste not in STE_MODES:
        raise ValueError(f"{what}: ste={ste!r} must be one of {STE_MODES}")
    return ste


def check_weights(w: Any, what: str, name: str = "w") -> jax.Array:
    """``w`` as a float array; NaN/Inf in concrete values raise ``ValueError`` naming ``name``.

    Args:
      w: the weights.
      what: the caller, first word of messages.
      name: how messages call ``w`` (an argument name or a parameter path).

    Returns:
      ``jnp.asarray(w)``.

    Raises:
      TypeError: ``w`` is not a float array.
      ValueError: concrete ``w`` holds NaN or Inf (traced values are not inspected).

    Example:
      >>> import jax.numpy as jnp
      >>> check_weights(jnp.array([1.0, jnp.nan]), "demo", "fc/kernel")
      Traceback (most recent call last):
      ...
      ValueError: demo: 'fc/kernel' holds NaN or Inf (1 of 2 values); binarization is undefined for them. Fix the divergence, or replace them (e.g. jnp.nan_to_num) first.
    """
    if is_compressed(w):
        raise TypeError(f"{what}: '{name}' is a {type(w).__name__} (a compressed leaf); "
                        "binarize dense arrays (jaxcomp.materialize the tree first)")
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{what}: '{name}' has dtype {w.dtype}; binarization needs float "
                        "weights (exclude it with where=, or cast it)")
    host = concrete(w)
    if host is not None:
        bad = int(np.size(host) - np.count_nonzero(np.isfinite(host)))
        if bad:
            raise ValueError(f"{what}: '{name}' holds NaN or Inf ({bad} of {host.size} values); "
                             "binarization is undefined for them. Fix the divergence, or replace "
                             "them (e.g. jnp.nan_to_num) first.")
    return w


def kernel_axes(axis: Any, ndim: int | None, what: str, name: str = "w") -> tuple[int, ...]:
    """The kept (per-channel) axes, normalised to non-negative ints; ``None`` gives ``()``.

    Args:
      axis: None, an int or a sequence of ints (negative ones count from the end).
      ndim: the array's rank; ``None`` checks the type only and returns the
        axes as given (a factory's check before it sees the leaves).
      what: the caller, first word of messages.
      name: the array's name or parameter path, for messages.

    Returns:
      The sorted kept axes.

    Raises:
      ValueError: an axis outside ``[-ndim, ndim)`` or repeated, naming ``name``.
      TypeError: ``axis`` is not None, an int or a sequence of ints.

    Example:
      >>> kernel_axes(-1, 4, "demo"), kernel_axes(None, 2, "demo"), kernel_axes((0, -1), 3, "demo")
      ((3,), (), (0, 2))
    """
    if axis is None:
        return ()
    axes = (axis,) if isinstance(axis, (numbers.Integral, np.integer)) else axis
    if isinstance(axis, bool) or not isinstance(axes, Sequence) or not all(
            isinstance(a, (numbers.Integral, np.integer)) and not isinstance(a, bool)
            for a in axes):
        raise TypeError(f"{what}: axis must be None, an int or a tuple of ints, got {axis!r}")
    if ndim is None:
        return tuple(int(a) for a in axes)
    out = []
    for a in axes:
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{what}: axis={axis!r} is out of range for '{name}' with "
                             f"{ndim} dimensions; pick axes in [{-ndim}, {ndim - 1}]")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: axis={axis!r} repeats an axis of '{name}'")
    return tuple(sorted(out))


# ---------------------------------------------------------------- compressor machinery


@dataclasses.dataclass(frozen=True, kw_only=True)
class BinaryMethod:
    """What a binarizing compressor does to each selected leaf (static, hashable).

    Subclasses define the forward ``view`` of a leaf, its ``export`` as a
    compressed leaf, its ``bits`` and optionally a ``project`` constraint;
    :func:`build_binary` turns one into a compressor. ``paths`` records the
    selected parameter paths once ``init`` has run.

    Attributes:
      paths: canonical paths of the binarized leaves (filled by ``init``).
      act_bits: the bit width of the layers' inputs, reported to the metrics
        (``None``: not reported).
    """

    paths: tuple[str, ...] = ()
    act_bits: int | None = None

    name = "binary"
    stochastic = False
    clips = False

    @property
    def bits(self) -> int:
        """Bits per stored weight."""
        raise NotImplementedError

    def check(self, path: str, w: Any) -> None:
        """Raises for a leaf this method cannot handle (called at trace time)."""

    def view(self, w: jax.Array, key: jax.Array | None) -> jax.Array:
        """The forward view of one leaf (straight-through gradients)."""
        raise NotImplementedError

    def export(self, w: jax.Array) -> CompressedLeaf:
        """The leaf as stored: a compressed leaf whose ``materialize()`` equals the view."""
        raise NotImplementedError

    def project(self, w: jax.Array) -> jax.Array:
        """The constraint the stored weights keep (only called when ``clips``)."""
        return w


class BinaryState(NamedTuple):
    """The state of every binarizing compressor.

    Attributes:
      method: the :class:`BinaryMethod` (static: hyperparameters and the
        binarized paths).
      key: the PRNG key of a stochastic method, else ``None``.
      count: number of ``update`` calls (int32); a stochastic method draws
        its noise from ``fold_in(key, count)``.

    ``__jaxcomp_info__`` reports ``weight_bits`` (and ``act_bits`` when set)
    for every binarized path to :func:`jaxcomp.metrics.analyze`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcomp.quant.binary.sign import binary_connect
      >>> s = binary_connect().init({"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}})
      >>> s.method.paths, s.__jaxcomp_info__()["fc/kernel"].weight_bits
      (('fc/kernel',), 1)
    """

    method: BinaryMethod
    key: Any
    count: jax.Array

    def __jaxcomp_info__(self) -> dict[str, LeafInfo]:
        m = self.method
        return {p: LeafInfo(weight_bits=m.bits, act_bits=m.act_bits) for p in m.paths}



def _kernels() -> selectors.Selector:
    return selectors.ndim(min=2) & selectors.dtype("float") & ~selectors.leaf_type(CompressedLeaf)


_HINT = "Select at least one (e.g. where=r'.*/kernel'); the default takes float arrays with ndim >= 2."


def _natural(path: str) -> tuple:
    return tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", path)))


def _leaf_check(method: BinaryMethod, what: str):
    def check(path: str, leaf: Any) -> None:
        if is_compressed(leaf):
            check_weights(leaf, what, path)
        dt = getattr(leaf, "dtype", None)
        if dt is None or not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(f"{what}: parameter '{path}' has dtype {dt}; binarization needs "
                            "float weights. Exclude it with where=.")
        method.check(path, leaf)
    return check


def _select(params: Any, where: Any, method: BinaryMethod, what: str,
            exclude_ends: bool) -> Selected:
    check = _leaf_check(method, what)
    if where is None and exclude_ends:
        kernels = flatten(params, None, what=what, default=_kernels(), noun="kernel", hint=_HINT)
        order = sorted(kernels.sel_paths, key=_natural)
        keep = set(order[1:-1])
        if not keep:
            raise ValueError(
                f"{what}: the default where= keeps the first and last kernel at full precision "
                f"({' and '.join(dict.fromkeys([order[0], order[-1]]))}), which leaves none of "
                f"the {len(order)} kernels to binarize; pass where= explicitly "
                "(e.g. where=r'.*/kernel')")
        return flatten(params, lambda p, x: p in keep, what=what, leaf_check=check)
    return flatten(params, where, what=what, default=_kernels(), hint=_HINT, leaf_check=check)


def _state_method(state: Any, method: BinaryMethod, sel: Selected, what: str) -> BinaryMethod:
    if not isinstance(state, BinaryState) or not isinstance(state.method, BinaryMethod):
        raise TypeError(f"{what}: expected the BinaryState made by this compressor's init, got "
                        f"{type(state).__name__}")
    m = state.method
    if dataclasses.replace(m, paths=()) != method:
        raise ValueError(f"{what}: the state was made by another compressor ({m.name} with other "
                         "settings); pass the state this compressor's init returned")
    if m.paths != tuple(sel.sel_paths):
        raise ValueError(
            f"{what}: the state binarizes {list(m.paths)} but where= selects "
            f"{sel.sel_paths} in these params; re-run init on the params you pass")
    return m


def build_binary(method: BinaryMethod, *, where: Any, key: jax.Array | None = None,
                 exclude_ends: bool = False) -> Compressor:
    """Assembles a compressor from a :class:`BinaryMethod` (state: :class:`BinaryState`).

    * ``init(params)`` selects the leaves (``where=``; default float arrays
      with ``ndim >= 2``, without the first and last in natural path order
      when ``exclude_ends``), checks them (concrete NaN/Inf, dtypes, axes)
      and records their paths;
    * ``apply`` is the binarized view (straight-through gradients);
    * ``update`` advances ``count`` for a stochastic method (``due=None``:
      every step) and changes nothing otherwise (``due=never_due``);
    * ``project`` (methods that clip) keeps the stored weights in range.

    Args:
      method: the method (its ``paths`` empty).
      where: any ``where=`` form, or None for the default.
      key: the PRNG key of a stochastic method.
      exclude_ends: the default selection skips the first and last kernel.

    Returns:
      A :class:`~jaxcomp.Compressor`.

    Raises:
      ValueError: a stochastic method without ``key``.
      TypeError: a malformed key.

    Example:
      A new method is a registered static dataclass with a ``view``:

      >>> import dataclasses, jax, jax.numpy as jnp
      >>> @jax.tree_util.register_static
      ... @dataclasses.dataclass(frozen=True, kw_only=True)
      ... class Sign(BinaryMethod):
      ...     name = "sign"
      ...     bits = 1
      ...     def view(self, w, key):
      ...         return straight_through(w, jnp.where(w >= 0, 1.0, -1.0).astype(w.dtype))
      >>> comp = build_binary(Sign(), where=None)
      >>> p = {"w": jnp.array([[0.5, -2.0]]), "b": jnp.array([3.0])}
      >>> view = comp.apply(p, comp.init(p))
      >>> view["w"].tolist(), view["b"].tolist()
      ([[1.0, -1.0]], [3.0])
    """
    what = method.name
    if method.stochastic:
        if key is None:
            raise ValueError(f"{what}: stochastic=True needs key=jax.random.key(...)")
        check_key(key, f"{what}(key=)")

    def select(params):
        return _select(params, where, method, what, exclude_ends)

    def init(params):
        sel = select(params)
        for p, w in sel.pairs:
            check_weights(w, what, p)
        return BinaryState(dataclasses.replace(method, paths=tuple(sel.sel_paths)),
                           key if method.stochastic else None, jnp.zeros((), jnp.int32))

    def apply(params, state):
        sel = select(params)
        m = _state_method(state, method, sel, what)
        new = []
        for i, (p, w) in enumerate(sel.pairs):
            check_weights(w, what, p)
            k = None
            if m.stochastic:
                k = jax.random.fold_in(jax.random.fold_in(state.key, state.count), i)
            new.append(m.view(w, k))
        return sel.rebuild(new)

    def update(params, state, *, step, grads=None, **extra):
        del step, grads, extra
        if method.stochastic:
            return params, state._replace(count=state.count + 1)
        return params, state

    def project(params, state):
        sel = select(params)
        m = _state_method(state, method, sel, what)
        return sel.rebuild([m.project(w) for w in sel.sel_leaves])

    return Compressor(init, apply, update, project if method.clips else None,
                      None if method.stochastic else never_due, None)


def binary_export(params: Any, state: BinaryState) -> Any:
    """The params with every binarized leaf as it is stored: a compressed leaf.

    BinaryConnect and XNOR leaves become 1-bit :class:`~jaxcomp.QArray`
    codes (``1`` for ``+``, unsigned) with ``scale = 2·s`` and
    ``zero_point = 0.5`` (so codes map to ``±s``; ``s`` per filter for XNOR),
    ternary leaves 2-bit signed codes with ``scale = α``, multiple binary
    bases a :class:`~jaxcomp.Codebook` of ``2**M`` values with ``M``-bit
    indices. ``jaxcomp.materialize`` of the result equals ``apply``'s view
    (a stochastic BinaryConnect exports the deterministic ``sign``), and
    :func:`jaxcomp.metrics.model_size_bytes` of it is the real storage.

    Args:
      params: the stored (real-valued) params.
      state: the :class:`BinaryState` of a binarizing compressor.

    Returns:
      The params tree with compressed leaves at the binarized paths.

    Raises:
      TypeError: ``state`` is not a :class:`BinaryState`.
      ValueError: ``params`` lack a binarized path, or hold NaN/Inf there.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcomp as jc
      >>> from jaxcomp.quant.binary.sign import xnor_binarization
      >>> params = {"fc": {"kernel": jnp.array([[0.5, -0.25], [-1.5, 0.75]]), "bias": jnp.zeros(2)}}
      >>> comp = xnor_binarization(where=r".*/kernel")          # alphas 1.0 and 0.5
      >>> q = binary_export(params, comp.init(params))["fc"]["kernel"]
      >>> q.bits, q.values.tolist(), jc.materialize(q).tolist()
      (1, [[1, 0], [0, 1]], [[1.0, -0.5], [-1.0, 0.5]])
    """
    what = "binary_export"
    if not isinstance(state, BinaryState) or not isinstance(state.method, BinaryMethod):
        raise TypeError(f"{what}: state must be a BinaryState (the state of a binarizing "
                        f"compressor), got {type(state).__name__}")
    m = state.method
    keep = set(m.paths)
    sel = flatten(params, lambda p, x: p in keep, what=what, allow_empty=True)
    missing = sorted(keep - set(sel.sel_paths))
    if missing:
        raise ValueError(f"{what}: the params have no leaf at {missing} (the state was made for "
                         "other params)")
    out = []
    for p, w in sel.pairs:
        out.append(m.export(check_weights(w, what, p)))
    return sel.rebuild(out)
