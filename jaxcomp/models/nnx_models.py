"""``flax.nnx`` versions of the MLP reference models.

The nnx modules mirror the linen :class:`~jaxcomp.models.mlp.MLP` exactly:
layers are attributes named ``fc1``, ``fc2``, ... with ``kernel`` of shape
``(in, out)`` and ``bias`` of shape ``(out,)``, so ``nnx.state(model,
nnx.Param)`` has the same tree as the linen ``variables['params']`` and weights
can be moved across with :func:`load_params`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> model = LeNet300NNX(rngs=nnx.Rngs(0))
  >>> model(jnp.zeros((2, 784))).shape
  (2, 10)

References:
  LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626; Greydanus 2020,
  arXiv:2011.14439.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

__all__ = ["MLPNNX", "MNIST1DMLPNNX", "LeNet300NNX", "load_params", "params_dict"]


class MLPNNX(nnx.Module):
    """nnx counterpart of :class:`jaxcomp.models.mlp.MLP` (same semantics, same names).

    Args:
      widths: all layer widths, input first and logits last.
      residual: ``h + relu(fc(h))`` for equal-width hidden-to-hidden layers.
      dropout: dropout rate after each hidden layer (only with ``train=True``).
      rngs: ``nnx.Rngs`` for initialisation (and dropout).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> MLPNNX((40, 100, 100, 10), residual=True, rngs=nnx.Rngs(0))(jnp.ones((1, 40))).shape
      (1, 10)
    """

    def __init__(
        self,
        widths: Sequence[int],
        *,
        residual: bool = False,
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise ValueError(f"MLPNNX needs at least an input and an output width, got {widths}")
        self.widths = widths
        self.residual = bool(residual)
        self.num_layers = len(widths) - 1
        for i in range(self.num_layers):
            setattr(self, f"fc{i + 1}", nnx.Linear(widths[i], widths[i + 1], rngs=rngs))
        self.dropout = nnx.Dropout(float(dropout), rngs=rngs) if dropout > 0.0 else None

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[-1] != self.widths[0]:
            raise ValueError(
                f"MLPNNX expects inputs with last dimension {self.widths[0]}, got shape {x.shape}"
            )
        for i in range(self.num_layers):
            y = getattr(self, f"fc{i + 1}")(x)
            if i == self.num_layers - 1:
                return y
            y = nnx.relu(y)
            if self.residual and i > 0 and self.widths[i] == self.widths[i + 1]:
                y = x + y
            if self.dropout is not None:
                y = self.dropout(y, deterministic=not train)
            x = y
        raise AssertionError("unreachable")


class LeNet300NNX(MLPNNX):
    """LeNet-300-100 (784-300-100-10, ReLU) as an nnx module.

    Example:
      >>> from flax import nnx
      >>> model = LeNet300NNX(rngs=nnx.Rngs(0))
      >>> sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
      266610

    References:
      LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626.
    """

    def __init__(self, *, num_classes: int = 10, dropout: float = 0.0, rngs: nnx.Rngs):
        super().__init__((784, 300, 100, num_classes), dropout=dropout, rngs=rngs)


class MNIST1DMLPNNX(MLPNNX):
    """MNIST-1D MLP (40-100-100-10, residual around ``fc2``) as an nnx module.

    Example:
      >>> from flax import nnx
      >>> model = MNIST1DMLPNNX(rngs=nnx.Rngs(0))
      >>> sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
      15210

    References:
      Greydanus 2020, arXiv:2011.14439.
    """

    def __init__(self, *, num_classes: int = 10, dropout: float = 0.0, rngs: nnx.Rngs):
        super().__init__((40, 100, 100, num_classes), residual=True, dropout=dropout, rngs=rngs)


def params_dict(model: nnx.Module) -> dict[str, Any]:
    """The model's ``nnx.Param`` values as a plain nested dict (linen ``params`` layout)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def load_params(model: nnx.Module, params: Mapping[str, Any]) -> nnx.Module:
    """Copies a linen-style params tree into ``model`` in place and returns it.

    Args:
      model: an nnx module whose parameter tree matches ``params``.
      params: nested mapping ``{layer: {"kernel": ..., "bias": ...}}``, e.g.
        a linen ``variables["params"]``.

    Raises:
      ValueError: the trees or the leaf shapes differ.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxcomp.models import get_model
      >>> spec = get_model("lenet300")
      >>> params = spec.init(jax.random.key(0))["params"]
      >>> model = load_params(LeNet300NNX(rngs=nnx.Rngs(1)), params)
      >>> x = jnp.ones((1, 784))
      >>> bool(jnp.allclose(model(x), spec.apply_fn(params, x), atol=1e-5))
      True
    """
    state = nnx.state(model, nnx.Param)
    current = nnx.to_pure_dict(state)
    params = _to_plain(params)
    cur_paths = {
        jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(current)
    }
    new_paths = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    if set(cur_paths) != set(new_paths):
        missing = sorted(set(cur_paths) - set(new_paths))
        extra = sorted(set(new_paths) - set(cur_paths))
        raise ValueError(f"parameter trees differ; missing: {missing}, unexpected: {extra}")
    for path, value in new_paths.items():
        if tuple(value.shape) != tuple(cur_paths[path].shape):
            raise ValueError(
                f"shape mismatch at {path}: model has {cur_paths[path].shape}, got {value.shape}"
            )
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def _to_plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_plain(v) for k, v in tree.items()}
    return tree
