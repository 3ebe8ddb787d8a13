"""Conformance rows of the uniform quantizers (``jaxcomp.quant.compressors``)."""

import jax
from conformance_kit import Row

from jaxcomp.quant.compressors import fake_quantization, lsq_quantization

ROWS = [
    Row("fake_quantization", fake_quantization),
    Row("fake_quantization", lambda: fake_quantization({r"fc1/.*": 4, r".*": 8}, axis=None,
                                                       symmetric=False),
        label="fake_quantization/mixed-asymmetric"),
    Row("fake_quantization", lambda: fake_quantization(4, group_size=2, ste="identity"),
        label="fake_quantization/groups-identity"),
    Row("fake_quantization", lambda: fake_quantization(4, calibration="mse", n_grid=8,
                                                       update_every=3),
        label="fake_quantization/mse"),
    Row("fake_quantization", lambda: fake_quantization(6, calibration="percentile",
                                                       percentile=99.0, update_every=2),
        injectable={"calibration": "percentile", "percentile": 99.0, "update_every": 2},
        factory=fake_quantization, label="fake_quantization/percentile"),
    Row("fake_quantization", lambda: fake_quantization(8, rounding="stochastic",
                                                       key=jax.random.key(2)),
        label="fake_quantization/stochastic", every_step=True),
    Row("lsq_quantization", lsq_quantization),
]
