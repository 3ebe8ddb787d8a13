"""Post-training quantization with calibration data: GPTQ, bit sensitivities, mixed-precision search.

The public names are re-exported by :mod:`jaxcomp.quant`.
"""
