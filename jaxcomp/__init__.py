"""jaxcomp: neural network compression for JAX and Flax.

Pure functions over parameter pytrees: pruning, quantization, factorization,
structured matrices, distillation and compression-aware cost accounting.
"""

from jaxcomp.core import *  # noqa: F403  (core first: select depends on it)
from jaxcomp.core import __all__ as _core_all
from jaxcomp import encode, metrics, models, select

__version__ = "0.1.0"
__all__ = ["encode", "metrics", "models", "select", *_core_all]
