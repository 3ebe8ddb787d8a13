"""Integer-only inference: int8 operands, int32 accumulation, fixed-point requantization.

The public names are re-exported by :mod:`jaxcomp.quant`.
"""
