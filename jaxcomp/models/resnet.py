"""Residual networks: CIFAR ResNet-20 and ImageNet ResNet-50 (v1.5).

Both use convolutions without bias, each followed by BatchNorm (momentum 0.9,
epsilon 1e-5, matching PyTorch's defaults), and explicit integer padding so the
output sizes (and therefore the MAC counts) match the PyTorch reference
implementations exactly.

Registered models:

========  ==========  ===========  =============
name      input       params       MACs
========  ==========  ===========  =============
resnet20  32x32x3     272,474      40,813,184
resnet50  224x224x3   25,557,032   4,089,184,256
========  ==========  ===========  =============

``resnet20`` defaults to 1x1-convolution projection shortcuts (+BatchNorm)
where the shape changes (He et al.'s option B); ``shortcut="pad"`` selects the
paper's parameter-free option A (stride-2 subsampling plus zero channel
padding), which gives 269,722 params and 40,551,040 MACs.

References:
  He et al. 2016, Deep residual learning for image recognition,
  arXiv:1512.03385.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomp.models import costs
from jaxcomp.models.registry import register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ResNet",
    "resnet20",
    "resnet50",
]


def _norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features: int, kernel: int, stride: int, pad: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or downsampling shortcut.

    Submodules: ``conv1``/``bn1`` (3x3, stride ``strides``), ``conv2``/``bn2``
    (3x3), and, when the shape changes with ``shortcut="projection"``,
    ``shortcut_conv``/``shortcut_bn`` (1x1, stride ``strides``).

    Attributes:
      features: output channels.
      strides: stride of the first convolution (and of the shortcut).
      shortcut: ``"projection"`` (1x1 conv + BN) or ``"pad"`` (option A:
        subsample and zero-pad channels, no parameters).
    """

    features: int
    strides: int = 1
    shortcut: str = "projection"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = _conv(self.features, 3, self.strides, 1, "conv1")(x)
        y = nn.relu(_norm(train, "bn1")(y))
        y = _conv(self.features, 3, 1, 1, "conv2")(y)
        y = _norm(train, "bn2")(y)
        if x.shape[-1] != self.features or self.strides != 1:
            if self.shortcut == "projection":
                x = _conv(self.features, 1, self.strides, 0, "shortcut_conv")(x)
                x = _norm(train, "shortcut_bn")(x)
            elif self.shortcut == "pad":
                x = x[:, :: self.strides, :: self.strides, :]
                extra = self.features - x.shape[-1]
                if extra < 0:
                    raise ValueError("shortcut='pad' cannot reduce the number of channels")
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                raise ValueError(f"shortcut must be 'projection' or 'pad', got {self.shortcut!r}")
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (4x width).

    Submodules: ``conv1``/``bn1`` (1x1, ``features``), ``conv2``/``bn2`` (3x3,
    stride ``strides``, padding 1), ``conv3``/``bn3`` (1x1, ``4 * features``)
    and, when the shape changes, ``downsample_conv``/``downsample_bn`` (1x1,
    stride ``strides``). Putting the stride on the 3x3 convolution is what
    distinguishes v1.5 (torchvision) from the original v1.

    Attributes:
      features: bottleneck width; the block outputs ``4 * features`` channels.
      strides: spatial stride of the block.
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = 4 * self.features
        y = nn.relu(_norm(train, "bn1")(_conv(self.features, 1, 1, 0, "conv1")(x)))
        y = nn.relu(_norm(train, "bn2")(_conv(self.features, 3, self.strides, 1, "conv2")(y)))
        y = _norm(train, "bn3")(_conv(out, 1, 1, 0, "conv3")(y))
        if x.shape[-1] != out or self.strides != 1:
            x = _norm(train, "downsample_bn")(_conv(out, 1, self.strides, 0, "downsample_conv")(x))
        return nn.relu(y + x)


class CifarResNet(nn.Module):
    """The CIFAR ResNet family of He et al. (depth ``6n + 2``).

    ``conv1``/``bn1`` (3x3, ``widths[0]``) -> three stages of ``n`` basic blocks
    named ``stage{s}_block{b}`` (stages 2 and 3 start with stride 2) -> global
    average pool -> ``fc``.

    Attributes:
      num_classes: number of logits.
      depth: total depth, ``6n + 2`` (20 for ResNet-20).
      widths: channels of the three stages.
      shortcut: ``"projection"`` (default) or ``"pad"``, see :class:`BasicBlock`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = CifarResNet()
      >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> sum(x.size for x in jax.tree.leaves(v["params"]))
      272474

    References:
      He et al. 2016, arXiv:1512.03385.
    """

    num_classes: int = 10
    depth: int = 20
    widths: Sequence[int] = (16, 32, 64)
    shortcut: str = "projection"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {self.depth}")
        n = (self.depth - 2) // 6
        x = nn.relu(_norm(train, "bn1")(_conv(self.widths[0], 3, 1, 1, "conv1")(x)))
        for s, width in enumerate(self.widths):
            for b in range(n):
                strides = 2 if (s > 0 and b == 0) else 1
                block = BasicBlock(width, strides, self.shortcut, name=f"stage{s + 1}_block{b}")
                x = block(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


class ResNet(nn.Module):
    """ImageNet ResNet v1.5 with bottleneck blocks (torchvision layout).

    ``conv1``/``bn1`` (7x7, 64, stride 2, padding 3) -> ReLU -> 3x3 max pool
    (stride 2, padding 1) -> four stages of bottlenecks named
    ``stage{s}_block{b}`` with widths 64/128/256/512 (output 4x that; stages
    2-4 start with stride 2) -> global average pool -> ``fc``.

    Attributes:
      num_classes: number of logits.
      stage_sizes: blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = ResNet()
      >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
      >>> sum(x.size for x in jax.tree.leaves(v["params"]))
      25557032

    References:
      He et al. 2016, arXiv:1512.03385.
    """

    num_classes: int = 1000
    stage_sizes: Sequence[int] = (3, 4, 6, 3)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(_norm(train, "bn1")(_conv(64, 7, 2, 3, "conv1")(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, n_blocks in enumerate(self.stage_sizes):
            for b in range(n_blocks):
                strides = 2 if (s > 0 and b == 0) else 1
                x = Bottleneck(64 * 2**s, strides, name=f"stage{s + 1}_block{b}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


# ----------------------------------------------------------------------------- costs


def _cifar_resnet_costs(
    num_classes: int = 10,
    depth: int = 20,
    widths: Sequence[int] = (16, 32, 64),
    shortcut: str = "projection",
    **_unused,
) -> tuple[int, int]:
    n = (depth - 2) // 6
    size, c_in = 32, widths[0]
    layers = [costs.conv(size * size, 3, c_in, 9, bias=False), costs.norm(c_in)]
    for s, width in enumerate(widths):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            size = costs.conv_out(size, 3, stride, (1, 1))
            pos = size * size
            layers += [costs.conv(pos, c_in, width, 9, bias=False), costs.norm(width)]
            layers += [costs.conv(pos, width, width, 9, bias=False), costs.norm(width)]
            if (c_in != width or stride != 1) and shortcut == "projection":
                layers += [costs.conv(pos, c_in, width, 1, bias=False), costs.norm(width)]
            c_in = width
    return costs.total(*layers, costs.dense(c_in, num_classes))


def _resnet_costs(
    num_classes: int = 1000, stage_sizes: Sequence[int] = (3, 4, 6, 3), **_unused
) -> tuple[int, int]:
    size = costs.conv_out(224, 7, 2, (3, 3))  # 112
    layers = [costs.conv(size * size, 3, 64, 49, bias=False), costs.norm(64)]
    size = costs.conv_out(size, 3, 2, (1, 1))  # 56
    c_in = 64
    for s, n_blocks in enumerate(stage_sizes):
        width = 64 * 2**s
        for b in range(n_blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            in_pos = size * size
            size = costs.conv_out(size, 3, stride, (1, 1))
            pos = size * size
            layers += [costs.conv(in_pos, c_in, width, 1, bias=False), costs.norm(width)]
            layers += [costs.conv(pos, width, width, 9, bias=False), costs.norm(width)]
            layers += [costs.conv(pos, width, 4 * width, 1, bias=False), costs.norm(4 * width)]
            if c_in != 4 * width or stride != 1:
                layers += [costs.conv(pos, c_in, 4 * width, 1, bias=False), costs.norm(4 * width)]
            c_in = 4 * width
    return costs.total(*layers, costs.dense(c_in, num_classes))


# ----------------------------------------------------------------------------- registry


@register_model(
    "resnet20",
    input_shape=(32, 32, 3),
    num_classes=10,
    description="CIFAR ResNet-20 (16/32/64, 3x3 basic blocks, 1x1 projection shortcuts), BN",
    reference="He et al. 2016, arXiv:1512.03385",
    expected_params=272_474,
    expected_macs=40_813_184,
    costs=_cifar_resnet_costs,
    uses_batch_norm=True,
)
def resnet20(
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
    shortcut: str = "projection",
) -> CifarResNet:
    """Builds the CIFAR ResNet-20.

    ``shortcut="pad"`` gives He et al.'s parameter-free option A (269,722
    params, 40,551,040 MACs).

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("resnet20", shortcut="pad").expected_params
      269722

    References:
      He et al. 2016, arXiv:1512.03385.
    """
    if shortcut not in ("projection", "pad"):
        raise ValueError(f"shortcut must be 'projection' or 'pad', got {shortcut!r}")
    return CifarResNet(num_classes=num_classes, depth=20, widths=tuple(widths), shortcut=shortcut)


@register_model(
    "resnet50",
    input_shape=(224, 224, 3),
    num_classes=1000,
    description="ImageNet ResNet-50 v1.5 (torchvision layout: stride on the 3x3 conv), BN",
    reference="He et al. 2016, arXiv:1512.03385",
    expected_params=25_557_032,
    expected_macs=4_089_184_256,
    costs=_resnet_costs,
    uses_batch_norm=True,
)
def resnet50(num_classes: int = 1000) -> ResNet:
    """Builds ResNet-50 v1.5; counts match torchvision's ``resnet50`` exactly.

    Example:
      >>> from jaxcomp.models import get_model
      >>> get_model("resnet50").expected_macs
      4089184256

    References:
      He et al. 2016, arXiv:1512.03385.
    """
    return ResNet(num_classes=num_classes, stage_sizes=(3, 4, 6, 3))
