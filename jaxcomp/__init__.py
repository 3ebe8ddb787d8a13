"""jaxcomp: neural network compression for JAX and Flax."""

__version__ = "0.1.0"
