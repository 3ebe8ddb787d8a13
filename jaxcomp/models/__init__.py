"""Reference models for compression experiments, with a registry.

Every model is a ``flax.linen`` module whose ``__call__`` takes
``(x, train=False)`` and returns logits; submodules have explicit names
(``conv1``, ``fc2``, ``stage2_block0``, ...) so parameter paths are readable.
Look models up by name with :func:`get_model`, which returns a
:class:`ModelSpec` carrying the module, the input shape, the published
parameter and MAC counts, and helpers to initialise and apply it.

==================  ============  ============  ===============
name                input         params        MACs / example
==================  ============  ============  ===============
lenet300            784           266,610       266,200
lenet5              28x28x1       431,080       2,293,000
lenet5_classic      32x32x1       61,706        416,520
mnist1d_mlp         40            15,210        15,000
mnist1d_cnn         40x1          5,210         31,750
mnist1d_gru         40            5,134         14,880
lottery_mlp         40            276,010       275,000
kd_teacher          784           2,395,210     2,392,800
kd_student          784           1,276,810     1,275,200
vgg_small           32x32x3       2,310,186     38,636,032
resnet20            32x32x3       272,474       40,813,184
resnet50            224x224x3     25,557,032    4,089,184,256
mobilenet_small     32x32x3       543,050       22,930,432
tiny_transformer    32 tokens     119,178       3,408,512
==================  ============  ============  ===============

Example:
  >>> import jax
  >>> from jaxcomp.models import get_model, list_models
  >>> "resnet20" in list_models()
  True
  >>> spec = get_model("mnist1d_cnn")
  >>> variables = spec.init(jax.random.key(0))
  >>> spec.apply_fn(variables, spec.example_input(2)).shape
  (2, 10)
  >>> abstract = get_model("resnet50").eval_init()  # shapes only, nothing computed
  >>> abstract["params"]["conv1"]["kernel"].shape
  (7, 7, 3, 64)

References:
  LeCun et al. 1998; Han et al. 2015, arXiv:1506.02626; He et al. 2016,
  arXiv:1512.03385; Howard et al. 2017, arXiv:1704.04861; Greydanus 2020,
  arXiv:2011.14439; Hinton et al. 2015, arXiv:1503.02531; Simonyan &
  Zisserman 2014, arXiv:1409.1556; Vaswani et al. 2017, arXiv:1706.03762.
"""

from jaxcomp.models.convnets import (
    MNIST1DCNN,
    VGG_SMALL_CFG,
    LeNet5,
    LeNet5Classic,
    VGGSmall,
    lenet5,
    lenet5_classic,
    mnist1d_cnn,
    vgg_small,
)
from jaxcomp.models.mlp import (
    MLP,
    kd_student,
    kd_teacher,
    lenet300,
    lottery_mlp,
    mlp,
    mnist1d_mlp,
)
from jaxcomp.models.mobilenet import (
    MOBILENET_SMALL_BLOCKS,
    DepthwiseSeparable,
    MobileNetSmall,
    mobilenet_small,
)
from jaxcomp.models.nnx_models import (
    MLPNNX,
    MNIST1DMLPNNX,
    LeNet300NNX,
    load_params,
    params_dict,
)
from jaxcomp.models.registry import ModelSpec, get_model, list_models, register_model
from jaxcomp.models.resnet import BasicBlock, Bottleneck, CifarResNet, ResNet, resnet20, resnet50
from jaxcomp.models.rnn import GRU, MNIST1DGRU, mnist1d_gru
from jaxcomp.models.transformer import (
    EncoderBlock,
    SelfAttention,
    TinyTransformer,
    tiny_transformer,
)

__all__ = [
    "GRU",
    "MLP",
    "MLPNNX",
    "MNIST1DCNN",
    "MNIST1DGRU",
    "MNIST1DMLPNNX",
    "MOBILENET_SMALL_BLOCKS",
    "VGG_SMALL_CFG",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "DepthwiseSeparable",
    "EncoderBlock",
    "LeNet5",
    "LeNet5Classic",
    "LeNet300NNX",
    "MobileNetSmall",
    "ModelSpec",
    "ResNet",
    "SelfAttention",
    "TinyTransformer",
    "VGGSmall",
    "get_model",
    "kd_student",
    "kd_teacher",
    "lenet5",
    "lenet5_classic",
    "lenet300",
    "list_models",
    "load_params",
    "lottery_mlp",
    "mlp",
    "mnist1d_cnn",
    "mnist1d_gru",
    "mnist1d_mlp",
    "mobilenet_small",
    "params_dict",
    "register_model",
    "resnet20",
    "resnet50",
    "tiny_transformer",
    "vgg_small",
]
