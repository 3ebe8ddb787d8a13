"""Small convolutional networks: LeNet-5 (Caffe and classic), the MNIST-1D CNN and a small VGG.

Inputs are channels-last (NHWC, or NWC for 1-D) and must carry a batch
dimension.

Registered models:

==============  ===========  =========  ==========
name            input        params     MACs
==============  ===========  =========  ==========
lenet5          28x28x1      431,080    2,293,000
lenet5_classic  32x32x1      61,706     416,520
mnist1d_cnn     40x1         5,210      31,750
vgg_small       32x32x3      2,310,186  38,636,032
==============  ===========  =========  ==========

References:
  LeCun et al. 1998, Gradient-based learning applied to document recognition;
  Han et al. 2015, arXiv:1506.02626; Greydanus 2020, arXiv:2011.14439;
  Simonyan & Zisserman 2014, arXiv:1409.1556; Ioffe & Szegedy 2015 (BatchNorm),
  arXiv:1502.03167.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomp.models import costs
from jaxcomp.models.registry import register_model

__all__ = [
    "MNIST1DCNN",
    "VGG_SMALL_CFG",
    "LeNet5",
    "LeNet5Classic",
    "VGGSmall",
    "lenet5",
    "lenet5_classic",
    "mnist1d_cnn",
    "vgg_small",
]

_PAD1 = ((1, 1), (1, 1))


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


def _pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example (the model pruned by Han et al.).

    ``conv1`` (20 @ 5x5, VALID) -> 2x2 max pool -> ``conv2`` (50 @ 5x5, VALID)
    -> 2x2 max pool -> flatten (4*4*50 = 800) -> ``fc1`` (500) -> ReLU ->
    ``fc2`` (num_classes). Like the Caffe prototxt, there is no nonlinearity
    after the convolutions (only max pooling); set ``conv_relu=True`` to add a
    ReLU after each convolution. Counts do not depend on that choice.

    Attributes:
      num_classes: number of logits.
      conv_relu: apply ReLU after ``conv1`` and ``conv2``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = LeNet5()
      >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> jax.eval_shape(model.apply, v, jnp.zeros((2, 28, 28, 1))).shape
      (2, 10)

    References:
      LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626.
    """

    num_classes: int = 10
    conv_relu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = nn.relu if self.conv_relu else (lambda y: y)
        x = _pool(act(nn.Conv(20, (5, 5), padding="VALID", name="conv1")(x)))
        x = _pool(act(nn.Conv(50, (5, 5), padding="VALID", name="conv2")(x)))
        x = nn.relu(nn.Dense(500, name="fc1")(_flatten(x)))
        return nn.Dense(self.num_classes, name="fc2")(x)


class LeNet5Classic(nn.Module):
    """The 6-16-120-84-10 LeNet-5 layout on 32x32 inputs, in its common modern form.

    ``conv1`` (6 @ 5x5, VALID) -> ReLU -> 2x2 max pool -> ``conv2`` (16 @ 5x5,
    VALID, fully connected across channels) -> ReLU -> 2x2 max pool -> flatten
    (5*5*16 = 400) -> ``fc1`` (120) -> ReLU -> ``fc2`` (84) -> ReLU -> ``fc3``.
    Differences from LeCun et al. 1998: ReLU instead of scaled tanh, max pooling
    instead of trainable subsampling, a dense C3 instead of the sparse
    connection table, and a linear output instead of RBF units.

    Attributes:
      num_classes: number of logits.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = LeNet5Classic()
      >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
      >>> sum(x.size for x in jax.tree.leaves(v["params"]))
      61706

    References:
      LeCun et al. 1998, Gradient-based learning applied to document recognition.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _pool(nn.relu(nn.Conv(6, (5, 5), padding="VALID", name="conv1")(x)))
        x = _pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID", name="conv2")(x)))
        x = nn.relu(nn.Dense(120, name="fc1")(_flatten(x)))
        x = nn.relu(nn.Dense(84, name="fc2")(x))
        return nn.Dense(self.num_classes, name="fc3")(x)


class MNIST1DCNN(nn.Module):
    """The MNIST-1D convolutional baseline (NWC layout).

    ``conv1`` (C @ k5, stride 2, pad 1): 40 -> 19 positions; ``conv2``
    (C @ k3, stride 2, pad 1): 19 -> 10; ``conv3`` (same): 10 -> 5; ReLU after
    each; flatten (5*C) -> ``fc`` (num_classes). Inputs of shape
    ``(batch, 40)`` are treated as one channel.

    Attributes:
      num_classes: number of logits.
      channels: channels of every convolution (25 in the paper's code).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = MNIST1DCNN()
      >>> v = model.init(jax.random.key(0), jnp.zeros((1, 40, 1)))
      >>> model.apply(v, jnp.zeros((4, 40, 1))).shape
      (4, 10)

    References:
      Greydanus 2020, Scaling down deep learning, arXiv:2011.14439.
    """

    num_classes: int = 10
    channels: int = 25

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim == 2:
            x = x[..., None]
        conv = functools.partial(nn.Conv, self.channels, strides=(2,), padding=((1, 1),))
        x = nn.relu(conv(kernel_size=(5,), name="conv1")(x))
        x = nn.relu(conv(kernel_size=(3,), name="conv2")(x))
        x = nn.relu(conv(kernel_size=(3,), name="conv3")(x))
        return nn.Dense(self.num_classes, name="fc")(_flatten(x))


#: Default ``vgg_small`` layout: VGG-11 ("A") at half width; ``"M"`` = 2x2 max pool.
VGG_SMALL_CFG: tuple[int | str, ...] = (
    32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M"
)  # fmt: skip


class VGGSmall(nn.Module):
    """A CIFAR-sized VGG with BatchNorm.

    Each integer in ``cfg`` is a 3x3 convolution (stride 1, padding 1, no bias)
    followed by BatchNorm and ReLU; ``"M"`` is a 2x2 max pool. Convolutions are
    named ``conv1, conv2, ...`` with norms ``bn1, bn2, ...``. The features are
    global-average-pooled (with the default layout the map is already 1x1, so
    this equals flattening) and a single dense layer ``fc`` gives the logits.

    Attributes:
      num_classes: number of logits.
      cfg: layer layout, default :data:`VGG_SMALL_CFG` (VGG-11 at half width).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = VGGSmall()
      >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> sorted(v)
      ['batch_stats', 'params']

    References:
      Simonyan & Zisserman 2014, arXiv:1409.1556; Ioffe & Szegedy 2015,
      arXiv:1502.03167.
    """

    num_classes: int = 10
    cfg: Sequence[int | str] = VGG_SMALL_CFG

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        i = 0
        for item in self.cfg:
            if item == "M":
                x = _pool(x)
                continue
            i += 1
            x = nn.Conv(int(item), (3, 3), padding=_PAD1, use_bias=False, name=f"conv{i}")(x)
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn{i}"
            )(x)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


# ----------------------------------------------------------------------------- costs


def _lenet5_costs(num_classes: int = 10, **_unused) -> tuple[int, int]:
    return costs.total(
        costs.conv(24 * 24, 1, 20, 25),
        costs.conv(8 * 8, 20, 50, 25),
        costs.dense(4 * 4 * 50, 500),
        costs.dense(500, num_classes),
    )


def _lenet5_classic_costs(num_classes: int = 10, **_unused) -> tuple[int, int]:
    return costs.total(
        costs.conv(28 * 28, 1, 6, 25),
        costs.conv(10 * 10, 6, 16, 25),
        costs.dense(400, 120),
        costs.dense(120, 84),
        costs.dense(84, num_classes),
    )


def _mnist1d_cnn_costs(num_classes: int = 10, channels: int = 25, **_unused) -> tuple[int, int]:
    n1 = costs.conv_out(40, 5, 2, (1, 1))
    n2 = costs.conv_out(n1, 3, 2, (1, 1))
    n3 = costs.conv_out(n2, 3, 2, (1, 1))
    return costs.total(
        costs.conv(n1, 1, channels, 5),
        costs.conv(n2, channels, channels, 3),
        costs.conv(n3, channels, channels, 3),
        costs.dense(n3 * channels, num_classes),
    )


def _vgg_costs(num_classes: int = 10, cfg=VGG_SMALL_CFG, **_unused) -> tuple[int, int]:
    size, c_in, layers = 32, 3, []
    for item in cfg:
        if item == "M":
            size //= 2
            continue
        layers += [costs.conv(size * size, c_in, int(item), 9, bias=False), costs.norm(int(item))]
        c_in = int(item)
    return costs.total(*layers, costs.dense(c_in, num_classes))


# ----------------------------------------------------------------------------- registry


@register_model(
    "lenet5",
    input_shape=(28, 28, 1),
    num_classes=10,
    description="Caffe LeNet-5: conv20-pool-conv50-pool-fc500-fc10 on 28x28x1",
    reference="LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626",
    expected_params=431_080,
    expected_macs=2_293_000,
    costs=_lenet5_costs,
)
def lenet5(num_classes: int = 10, conv_relu: bool = False) -> LeNet5:
    """Builds :class:`LeNet5` (Caffe layout, no ReLU between convolutions by default).

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("lenet5").expected_macs
      2293000

    References:
      LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626.
    """
    return LeNet5(num_classes=num_classes, conv_relu=conv_relu)


@register_model(
    "lenet5_classic",
    input_shape=(32, 32, 1),
    num_classes=10,
    description="LeNet-5 6-16-120-84-10 on 32x32x1, ReLU and max pooling",
    reference="LeCun et al. 1998, Gradient-based learning applied to document recognition",
    expected_params=61_706,
    expected_macs=416_520,
    costs=_lenet5_classic_costs,
)
def lenet5_classic(num_classes: int = 10) -> LeNet5Classic:
    """Builds :class:`LeNet5Classic`.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("lenet5_classic").expected_params
      61706

    References:
      LeCun et al. 1998.
    """
    return LeNet5Classic(num_classes=num_classes)


@register_model(
    "mnist1d_cnn",
    input_shape=(40, 1),
    num_classes=10,
    description="MNIST-1D CNN: 3 strided conv1d (25 ch) + linear",
    reference="Greydanus 2020, arXiv:2011.14439",
    expected_params=5_210,
    expected_macs=31_750,
    costs=_mnist1d_cnn_costs,
)
def mnist1d_cnn(num_classes: int = 10, channels: int = 25) -> MNIST1DCNN:
    """Builds :class:`MNIST1DCNN`.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("mnist1d_cnn").expected_macs
      31750

    References:
      Greydanus 2020, arXiv:2011.14439.
    """
    return MNIST1DCNN(num_classes=num_classes, channels=channels)


@register_model(
    "vgg_small",
    input_shape=(32, 32, 3),
    num_classes=10,
    description="VGG-11 layout at half width with BatchNorm, for 32x32x3 (CIFAR)",
    reference="Simonyan & Zisserman 2014, arXiv:1409.1556",
    expected_params=2_310_186,
    expected_macs=38_636_032,
    costs=_vgg_costs,
    uses_batch_norm=True,
)
def vgg_small(num_classes: int = 10, cfg: Sequence[int | str] = VGG_SMALL_CFG) -> VGGSmall:
    """Builds :class:`VGGSmall`.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("vgg_small").expected_params
      2310186

    References:
      Simonyan & Zisserman 2014, arXiv:1409.1556.
    """
    return VGGSmall(num_classes=num_classes, cfg=tuple(cfg))
