"""Multi-layer perceptrons: LeNet-300-100, MNIST-1D MLPs and the distillation pair.

All MLPs here are instances of one module, :class:`MLP`, built by the factory
:func:`mlp`. Dense layers are named ``fc1``, ``fc2``, ... in order, so
parameter paths read ``fc1/kernel``, ``fc1/bias`` and so on.

Registered models:

=============  ==================  ==========  =========
name           widths              params      MACs
=============  ==================  ==========  =========
lenet300       784-300-100-10      266,610     266,200
mnist1d_mlp    40-100-100-10 (+r)  15,210      15,000
lottery_mlp    40-500-500-10 (+r)  276,010     275,000
kd_teacher     784-1200-1200-10    2,395,210   2,392,800
kd_student     784-800-800-10      1,276,810   1,275,200
=============  ==================  ==========  =========

``(+r)``: a residual connection around the hidden-to-hidden layer.

References:
  LeCun et al. 1998, Gradient-based learning applied to document recognition;
  Han et al. 2015, arXiv:1506.02626; Greydanus 2020 (MNIST-1D),
  arXiv:2011.14439; Hinton et al. 2015 (knowledge distillation),
  arXiv:1503.02531; Frankle & Carbin 2019 (lottery tickets), arXiv:1803.03635.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxcomp.models import costs
from jaxcomp.models.nnx_models import MLPNNX
from jaxcomp.models.registry import register_model

__all__ = [
    "MLP",
    "kd_student",
    "kd_teacher",
    "lenet300",
    "lottery_mlp",
    "mlp",
    "mlp_costs",
    "mnist1d_mlp",
]


class MLP(nn.Module):
    """A ReLU multi-layer perceptron with optional residual hidden layers.

    Layer ``i`` maps ``widths[i-1] -> widths[i]`` and is named ``fc{i}``. Every
    layer but the last is followed by ReLU. With ``residual=True``, each
    hidden-to-hidden layer whose input and output widths agree computes
    ``h + relu(fc(h))`` (the first layer, reading the raw input, never has a
    residual). Dropout, if any, follows each hidden activation.

    Attributes:
      widths: all layer widths, input first and logits last, e.g.
        ``(784, 300, 100, 10)``.
      residual: add identity shortcuts around equal-width hidden layers.
      dropout: dropout rate after each hidden layer (active only with
        ``train=True``; needs a ``"dropout"`` rng).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = MLP(widths=(40, 100, 100, 10), residual=True)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 40)))
      >>> model.apply(variables, jnp.zeros((3, 40))).shape
      (3, 10)
    """

    widths: Sequence[int]
    residual: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        widths = tuple(self.widths)
        if len(widths) < 2:
            raise ValueError(f"MLP needs at least an input and an output width, got {widths}")
        if x.shape[-1] != widths[0]:
            raise ValueError(
                f"MLP expects inputs with last dimension {widths[0]}, got shape {x.shape}"
            )
        n_layers = len(widths) - 1
        for i in range(n_layers):
            y = nn.Dense(widths[i + 1], name=f"fc{i + 1}")(x)
            if i == n_layers - 1:
                return y
            y = nn.relu(y)
            if self.residual and i > 0 and widths[i] == widths[i + 1]:
                y = x + y
            if self.dropout > 0.0:
                y = nn.Dropout(self.dropout, name=f"dropout{i + 1}")(y, deterministic=not train)
            x = y
        raise AssertionError("unreachable")


def mlp(widths: Sequence[int], residual: bool = False, dropout: float = 0.0) -> MLP:
    """Builds an :class:`MLP`.

    Args:
      widths: all layer widths, input first and number of classes last.
      residual: identity shortcuts around equal-width hidden layers.
      dropout: dropout rate after each hidden layer.

    Returns:
      An unbound :class:`MLP` module.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = mlp((784, 300, 100, 10))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
      >>> sorted(params)
      ['fc1', 'fc2', 'fc3']

    References:
      LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    return MLP(
        widths=tuple(int(w) for w in widths), residual=bool(residual), dropout=float(dropout)
    )


def mlp_costs(
    in_features: int, hidden: Sequence[int], num_classes: int, **_unused
) -> tuple[int, int]:
    """``(params, macs)`` of an MLP ``in_features-hidden...-num_classes`` (residuals are free)."""
    widths = (in_features, *hidden, num_classes)
    return costs.total(*(costs.dense(a, b) for a, b in itertools.pairwise(widths)))


def _input_shape(in_features: int, **_unused) -> tuple[int, ...]:
    return (in_features,)


def _nnx_mlp(rngs, *, in_features, hidden, num_classes, residual=False, dropout=0.0):
    return MLPNNX(
        (in_features, *hidden, num_classes), residual=residual, dropout=dropout, rngs=rngs
    )


@register_model(
    "lenet300",
    input_shape=_input_shape,
    num_classes=10,
    description="LeNet-300-100: MNIST MLP 784-300-100-10 with ReLU",
    reference="LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626",
    expected_params=266_610,
    expected_macs=266_200,
    costs=mlp_costs,
    nnx_factory=_nnx_mlp,
)
def lenet300(
    num_classes: int = 10,
    hidden: Sequence[int] = (300, 100),
    in_features: int = 784,
    dropout: float = 0.0,
) -> MLP:
    """LeNet-300-100, the fully connected MNIST network used by Han et al. for pruning.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("lenet300").expected_params
      266610

    References:
      LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626.
    """
    return mlp((in_features, *hidden, num_classes), dropout=dropout)


@register_model(
    "mnist1d_mlp",
    input_shape=_input_shape,
    num_classes=10,
    description="MNIST-1D MLP 40-100-100-10, ReLU, residual around the 100->100 layer",
    reference="Greydanus 2020, arXiv:2011.14439",
    expected_params=15_210,
    expected_macs=15_000,
    costs=mlp_costs,
    nnx_factory=_nnx_mlp,
)
def mnist1d_mlp(
    num_classes: int = 10,
    hidden: Sequence[int] = (100, 100),
    in_features: int = 40,
    residual: bool = True,
    dropout: float = 0.0,
) -> MLP:
    """The MNIST-1D MLP baseline, with a residual connection around ``fc2``.

    ``fc2`` computes ``h + relu(W h + b)``.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("mnist1d_mlp").expected_macs
      15000

    References:
      Greydanus 2020, Scaling down deep learning, arXiv:2011.14439.
    """
    return mlp((in_features, *hidden, num_classes), residual=residual, dropout=dropout)


@register_model(
    "lottery_mlp",
    input_shape=_input_shape,
    num_classes=10,
    description="MNIST-1D MLP 40-500-500-10, ReLU, residual around the 500->500 layer",
    reference="Frankle & Carbin 2019, arXiv:1803.03635; MNIST-1D, arXiv:2011.14439",
    expected_params=276_010,
    expected_macs=275_000,
    costs=mlp_costs,
    nnx_factory=_nnx_mlp,
)
def lottery_mlp(
    num_classes: int = 10,
    hidden: Sequence[int] = (500, 500),
    in_features: int = 40,
    residual: bool = True,
    dropout: float = 0.0,
) -> MLP:
    """A wider MNIST-1D MLP for lottery-ticket experiments.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("lottery_mlp").expected_params
      276010

    References:
      Frankle & Carbin 2019, arXiv:1803.03635; Greydanus 2020, arXiv:2011.14439.
    """
    return mlp((in_features, *hidden, num_classes), residual=residual, dropout=dropout)


@register_model(
    "kd_teacher",
    input_shape=_input_shape,
    num_classes=10,
    description="Distillation teacher: MNIST MLP 784-1200-1200-10, ReLU, optional dropout",
    reference="Hinton et al. 2015, arXiv:1503.02531",
    expected_params=2_395_210,
    expected_macs=2_392_800,
    costs=mlp_costs,
    nnx_factory=_nnx_mlp,
)
def kd_teacher(
    num_classes: int = 10,
    hidden: Sequence[int] = (1200, 1200),
    in_features: int = 784,
    dropout: float = 0.0,
) -> MLP:
    """The large MNIST teacher of Hinton et al. (they trained it with dropout).

    Pass ``dropout=0.5`` to mimic the paper's hidden-layer dropout (the paper
    also jittered the input images; that is data augmentation, not part of
    the model).

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("kd_teacher", dropout=0.5).config["dropout"]
      0.5

    References:
      Hinton et al. 2015, Distilling the knowledge in a neural network,
      arXiv:1503.02531.
    """
    return mlp((in_features, *hidden, num_classes), dropout=dropout)


@register_model(
    "kd_student",
    input_shape=_input_shape,
    num_classes=10,
    description="Distillation student: MNIST MLP 784-800-800-10, ReLU",
    reference="Hinton et al. 2015, arXiv:1503.02531",
    expected_params=1_276_810,
    expected_macs=1_275_200,
    costs=mlp_costs,
    nnx_factory=_nnx_mlp,
)
def kd_student(
    num_classes: int = 10,
    hidden: Sequence[int] = (800, 800),
    in_features: int = 784,
    dropout: float = 0.0,
) -> MLP:
    """The small MNIST student of Hinton et al.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("kd_student").expected_macs
      1275200

    References:
      Hinton et al. 2015, arXiv:1503.02531.
    """
    return mlp((in_features, *hidden, num_classes), dropout=dropout)
