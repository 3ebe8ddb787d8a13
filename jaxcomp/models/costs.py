"""Closed-form parameter and MAC counts used by the models' cost formulas.

Each helper returns ``(params, macs)`` for one layer, following the counting
conventions of :mod:`jaxcomp.models.registry` (biases and norm scale/bias are
parameters; MACs count multiplications of the weighted layers only).
"""

from __future__ import annotations


def conv_out(size: int, kernel: int, stride: int = 1, pad: tuple[int, int] = (0, 0)) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def dense(n_in: int, n_out: int, bias: bool = True) -> tuple[int, int]:
    """A dense layer ``n_in -> n_out``."""
    return n_in * n_out + (n_out if bias else 0), n_in * n_out


def conv(
    out_positions: int, c_in: int, c_out: int, taps: int, groups: int = 1, bias: bool = True
) -> tuple[int, int]:
    """A convolution with ``taps`` kernel positions producing ``out_positions`` outputs."""
    weights = taps * (c_in // groups) * c_out
    return weights + (c_out if bias else 0), out_positions * weights


def norm(channels: int) -> tuple[int, int]:
    """A BatchNorm/LayerNorm with scale and bias."""
    return 2 * channels, 0


def total(*layers: tuple[int, int]) -> tuple[int, int]:
    """Sums ``(params, macs)`` pairs."""
    return sum(p for p, _ in layers), sum(m for _, m in layers)
