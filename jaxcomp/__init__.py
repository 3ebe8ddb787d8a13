"""jaxcomp: neural network compression for JAX and Flax.

Pure functions over parameter pytrees: pruning, quantization, factorization,
structured matrices, distillation and compression-aware cost accounting.
"""

from jaxcomp import (
    data,
    distill,
    encode,
    metrics,
    models,
    parallel,
    prune,
    quant,
    select,
    train,
)
from jaxcomp.core import *
from jaxcomp.core import __all__ as core_names

__version__ = "0.1.0"
__all__ = [
    "data", "distill", "encode", "metrics", "models", "parallel", "prune", "quant", "select",
    "train",
]
__all__.extend(core_names)
del core_names
