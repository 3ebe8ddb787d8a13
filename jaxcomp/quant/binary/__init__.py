"""Binary and ternary weights and activations: BinaryConnect, BNN, XNOR-Net, TWN, ABC-Net.

The public names are re-exported by :mod:`jaxcomp.quant`.
"""
