"""jaxcomp: neural network compression for JAX and Flax.

Pure functions over parameter pytrees: pruning, quantization, factorization,
structured matrices, distillation and compression-aware cost accounting.
"""

from jaxcomp import distill, encode, metrics, models, select
from jaxcomp.core import *
from jaxcomp.core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = ["distill", "encode", "metrics", "models", "select"]
__all__.extend(_core_all)
