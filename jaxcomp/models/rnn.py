"""Recurrent models: the bidirectional GRU baseline of MNIST-1D.

The MNIST-1D reference code (``notebooks/models.py``, ``GRUBase``) reads the
40-sample signal one value per time step with a bidirectional GRU of 6 hidden
units per direction, concatenates the hidden states of *every* time step
(``40 * 2 * 6 = 480`` features) and classifies them with one linear layer.

:class:`GRU` follows PyTorch's ``torch.nn.GRU`` cell exactly (two bias
vectors, the reset gate applied to the hidden projection *including* its
bias), so parameter counts match the reference:

.. code-block:: text

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

Per direction and time step a GRU of input width ``I`` and hidden width
``H`` costs ``3*H*(I + H)`` MACs (the gate products are elementwise and not
counted) and holds ``3*H*(I + H) + 6*H`` parameters.

=============  ======  ========  ===============
name           input   params    MACs / example
=============  ======  ========  ===============
mnist1d_gru    40      5,134     14,880
=============  ======  ========  ===============

``5,134 = 2 * (3*6*(1+6) + 6*6) + (480*10 + 10)`` and
``14,880 = 2 * 40 * 3*6*(1+6) + 480*10``.

References:
  Cho et al. 2014, arXiv:1406.1078 (GRU); Greydanus 2020, Scaling down deep
  learning, arXiv:2011.14439.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomp.models import costs
from jaxcomp.models.registry import register_model

__all__ = ["GRU", "MNIST1DGRU", "gru_costs", "mnist1d_gru"]


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class GRU(nn.Module):
    """One GRU layer over a sequence ``(batch, time, features)`` (PyTorch cell semantics).

    Parameters: ``input_kernel`` ``(I, 3H)`` and ``input_bias`` ``(3H,)``,
    ``hidden_kernel`` ``(H, 3H)`` and ``hidden_bias`` ``(3H,)``, gates ordered
    ``r, z, n``; all initialised ``U(-1/sqrt(H), 1/sqrt(H))`` as in PyTorch.
    The input projection of all time steps is one matmul; the recurrence is a
    ``lax.scan`` starting from a zero state.

    Attributes:
      hidden: hidden width ``H``.
      reverse: run from the last time step to the first (outputs stay in
        time order).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = GRU(hidden=4)
      >>> v = layer.init(jax.random.key(0), jnp.zeros((2, 7, 3)))
      >>> layer.apply(v, jnp.ones((2, 7, 3))).shape
      (2, 7, 4)

    References:
      Cho et al. 2014, arXiv:1406.1078.
    """

    hidden: int
    reverse: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 3:
            raise ValueError(f"GRU expects (batch, time, features), got shape {x.shape}")
        h_dim = self.hidden
        init = _uniform(1.0 / float(h_dim) ** 0.5)
        w_i = self.param("input_kernel", init, (x.shape[-1], 3 * h_dim))
        b_i = self.param("input_bias", init, (3 * h_dim,))
        w_h = self.param("hidden_kernel", init, (h_dim, 3 * h_dim))
        b_h = self.param("hidden_bias", init, (3 * h_dim,))
        xs = jnp.swapaxes(x @ w_i + b_i, 0, 1)  # (time, batch, 3H)

        def cell(h, xi):
            hh = h @ w_h + b_h
            xr, xz, xn = jnp.split(xi, 3, axis=-1)
            hr, hz, hn = jnp.split(hh, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return h, h

        h0 = jnp.zeros((x.shape[0], h_dim), xs.dtype)
        _, hs = jax.lax.scan(cell, h0, xs, reverse=self.reverse)
        return jnp.swapaxes(hs, 0, 1)


class MNIST1DGRU(nn.Module):
    """The MNIST-1D GRU baseline: (bi)directional GRU over the signal, all states -> linear.

    Inputs ``(batch, 40)`` or ``(batch, 40, 1)``; layers ``gru_fwd``
    (and ``gru_bwd`` when bidirectional) and ``fc``.

    Attributes:
      num_classes: number of logits.
      hidden: hidden units per direction (6 in the reference code).
      bidirectional: add a backward GRU (the reference default).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = MNIST1DGRU()
      >>> v = model.init(jax.random.key(0), jnp.zeros((1, 40)))
      >>> model.apply(v, jnp.zeros((3, 40))).shape
      (3, 10)

    References:
      Greydanus 2020, arXiv:2011.14439.
    """

    num_classes: int = 10
    hidden: int = 6
    bidirectional: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim == 2:
            x = x[..., None]
        hs = [GRU(self.hidden, name="gru_fwd")(x)]
        if self.bidirectional:
            hs.append(GRU(self.hidden, reverse=True, name="gru_bwd")(x))
        h = jnp.concatenate(hs, axis=-1)
        return nn.Dense(self.num_classes, name="fc")(h.reshape((h.shape[0], -1)))


def gru_costs(
    num_classes: int = 10, hidden: int = 6, bidirectional: bool = True, length: int = 40,
    **_unused,
) -> tuple[int, int]:
    """``(params, MACs per example)`` of :class:`MNIST1DGRU` on 1-channel signals of ``length``."""
    dirs = 2 if bidirectional else 1
    recurrent = 3 * hidden * (1 + hidden)
    params = dirs * (recurrent + 6 * hidden)
    fc_p, fc_m = costs.dense(length * dirs * hidden, num_classes)
    return params + fc_p, dirs * length * recurrent + fc_m


@register_model(
    "mnist1d_gru",
    input_shape=(40,),
    num_classes=10,
    description="MNIST-1D GRU: bidirectional GRU (6 units/direction), all 40 states -> linear",
    reference="Greydanus 2020, arXiv:2011.14439; Cho et al. 2014, arXiv:1406.1078",
    expected_params=5_134,
    expected_macs=14_880,
    costs=gru_costs,
)
def mnist1d_gru(num_classes: int = 10, hidden: int = 6, bidirectional: bool = True) -> MNIST1DGRU:
    """Builds :class:`MNIST1DGRU` (the MNIST-1D reference ``GRUBase``).

    Example:
      >>> from jaxcomp.models import get_model
      >>> spec = get_model("mnist1d_gru")
      >>> spec.expected_params, spec.expected_macs
      (5134, 14880)

    References:
      Greydanus 2020, arXiv:2011.14439.
    """
    return MNIST1DGRU(num_classes=num_classes, hidden=hidden, bidirectional=bidirectional)
