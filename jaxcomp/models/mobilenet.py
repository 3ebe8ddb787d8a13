"""A small MobileNet-V1-style network with depthwise-separable convolutions.

``mobilenet_small`` targets 32x32x3 inputs (CIFAR):

* ``conv1``/``bn1``: 3x3 standard convolution, 32 channels, stride 1, ReLU;
* seven depthwise-separable blocks ``block1`` ... ``block7`` with output
  channels / strides 64/1, 128/2, 128/1, 256/2, 256/1, 512/2, 512/1. Each block
  is ``depthwise`` (3x3, ``feature_group_count`` = channels, padding 1) ->
  ``bn_dw`` -> ReLU -> ``pointwise`` (1x1) -> ``bn_pw`` -> ReLU;
* global average pooling and a dense ``fc``.

All convolutions are bias-free and followed by BatchNorm. The spatial size goes
32 -> 32 -> 16 -> 16 -> 8 -> 8 -> 4 -> 4. Exact counts for the default
configuration: 543,050 params and 22,930,432 MACs.

The width multiplier ``alpha`` scales every channel count
(``max(1, int(c * alpha))``), as in the MobileNet paper; ``image_size`` changes
the expected input resolution (the network is fully convolutional up to the
global pooling).

References:
  Howard et al. 2017, MobileNets, arXiv:1704.04861.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomp.models import costs
from jaxcomp.models.registry import register_model

__all__ = ["MOBILENET_SMALL_BLOCKS", "DepthwiseSeparable", "MobileNetSmall", "mobilenet_small"]

#: ``(output channels, stride)`` of each depthwise-separable block.
MOBILENET_SMALL_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
)
_STEM = 32


def _scale(c: int, alpha: float) -> int:
    return max(1, int(c * alpha))


def _norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU.

    Attributes:
      features: output channels of the pointwise convolution.
      strides: stride of the depthwise convolution.
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        x = nn.Conv(
            c,
            (3, 3),
            strides=(self.strides, self.strides),
            padding=((1, 1), (1, 1)),
            feature_group_count=c,
            use_bias=False,
            name="depthwise",
        )(x)
        x = nn.relu(_norm(train, "bn_dw")(x))
        x = nn.Conv(self.features, (1, 1), use_bias=False, name="pointwise")(x)
        return nn.relu(_norm(train, "bn_pw")(x))


class MobileNetSmall(nn.Module):
    """A CIFAR-sized MobileNet-V1 (see the module docstring for the layout).

    Attributes:
      num_classes: number of logits.
      alpha: width multiplier applied to every channel count.
      blocks: ``(channels, stride)`` per depthwise-separable block.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = MobileNetSmall()
      >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> sum(x.size for x in jax.tree.leaves(v["params"]))
      543050

    References:
      Howard et al. 2017, arXiv:1704.04861.
    """

    num_classes: int = 10
    alpha: float = 1.0
    blocks: Sequence[tuple[int, int]] = MOBILENET_SMALL_BLOCKS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(
            _scale(_STEM, self.alpha),
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            name="conv1",
        )(x)
        x = nn.relu(_norm(train, "bn1")(x))
        for i, (c, s) in enumerate(self.blocks):
            x = DepthwiseSeparable(_scale(c, self.alpha), s, name=f"block{i + 1}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def _mobilenet_costs(
    num_classes: int = 10,
    alpha: float = 1.0,
    image_size: int = 32,
    blocks: Sequence[tuple[int, int]] = MOBILENET_SMALL_BLOCKS,
    **_unused,
) -> tuple[int, int]:
    size, c_in = image_size, _scale(_STEM, alpha)
    layers = [costs.conv(size * size, 3, c_in, 9, bias=False), costs.norm(c_in)]
    for c, s in blocks:
        c = _scale(c, alpha)
        size = costs.conv_out(size, 3, s, (1, 1))
        pos = size * size
        layers += [costs.conv(pos, c_in, c_in, 9, groups=c_in, bias=False), costs.norm(c_in)]
        layers += [costs.conv(pos, c_in, c, 1, bias=False), costs.norm(c)]
        c_in = c
    return costs.total(*layers, costs.dense(c_in, num_classes))


@register_model(
    "mobilenet_small",
    input_shape=lambda image_size=32, **_: (image_size, image_size, 3),
    num_classes=10,
    description="MobileNet-V1-style net, 7 depthwise-separable blocks, for 32x32x3, BN",
    reference="Howard et al. 2017, arXiv:1704.04861",
    expected_params=543_050,
    expected_macs=22_930_432,
    costs=_mobilenet_costs,
    uses_batch_norm=True,
)
def mobilenet_small(
    num_classes: int = 10,
    alpha: float = 1.0,
    image_size: int = 32,
    blocks: Sequence[tuple[int, int]] = MOBILENET_SMALL_BLOCKS,
) -> MobileNetSmall:
    """Builds :class:`MobileNetSmall`.

    Args:
      num_classes: number of logits.
      alpha: width multiplier.
      image_size: input resolution (sets ``input_shape`` and the MAC count;
        the module itself accepts any size).
      blocks: ``(channels, stride)`` per depthwise-separable block.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("mobilenet_small", alpha=0.5).input_shape
      (32, 32, 3)

    References:
      Howard et al. 2017, arXiv:1704.04861.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    blocks = tuple((int(c), int(s)) for c, s in blocks)
    return MobileNetSmall(num_classes=num_classes, alpha=float(alpha), blocks=blocks)
