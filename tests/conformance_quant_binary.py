"""Conformance rows of the binary and ternary compressors (``jaxcomp.quant.binary.sign``/``ternary``)."""

import jax
from conformance_kit import Row

from jaxcomp.quant.binary.sign import binary_connect, xnor_binarization
from jaxcomp.quant.binary.ternary import abc_binarization, ternary_weights

ROWS = [
    Row("binary_connect", binary_connect),
    Row("binary_connect", lambda: binary_connect(scale="glorot", ste="clipped"),
        label="binary_connect/bnn-glorot"),
    Row("binary_connect", lambda: binary_connect(stochastic=True, key=jax.random.key(5)),
        label="binary_connect/stochastic", every_step=True),
    Row("ternary_weights", ternary_weights),
    Row("ternary_weights", lambda: ternary_weights(axis=-1), label="ternary_weights/per-filter"),
    Row("xnor_binarization", lambda: xnor_binarization(where=r".*/kernel")),
    Row("abc_binarization", lambda: abc_binarization(3)),
]
