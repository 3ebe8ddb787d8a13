"""A tiny pre-LayerNorm transformer encoder classifier over integer tokens.

Layout (defaults: vocab 256, sequence 32, d_model 64, 4 heads, MLP 256,
2 blocks, 10 classes):

* ``token_embed`` (``nn.Embed``, vocab x d) plus a learned positional table
  ``pos_embed`` (seq x d);
* ``block0``, ``block1``: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``, where
  ``attn`` projects with ``query``/``key``/``value`` (d -> d, with bias),
  computes scores and the weighted values with explicit ``jnp.einsum`` calls
  carrying batch and head dimensions, and projects back with ``out``;
  ``mlp`` is ``mlp_fc1`` (d -> mlp) -> GELU -> ``mlp_fc2`` (mlp -> d);
* ``ln_final``, mean over the sequence, ``head`` (d -> classes).

Exact counts for the defaults: 119,178 params and 3,408,512 MACs per example.
Per block (T = sequence length, d = model width, m = MLP width):
``3*T*d*d`` (q, k, v) + ``T*T*d`` (scores, summed over heads) + ``T*T*d``
(attention-weighted values) + ``T*d*d`` (out) + ``2*T*d*m`` (MLP), i.e.
1,703,936 MACs; plus ``d * classes`` for the head. The embedding lookup is a
gather and costs no MACs.

References:
  Vaswani et al. 2017, Attention is all you need, arXiv:1706.03762;
  Xiong et al. 2020 (pre-LN), arXiv:2002.04745.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomp.models import costs
from jaxcomp.models.registry import register_model

__all__ = ["EncoderBlock", "SelfAttention", "TinyTransformer", "tiny_transformer"]


class SelfAttention(nn.Module):
    """Multi-head self-attention written out with ``jnp.einsum``.

    Shapes: ``x`` is ``(batch, T, d)``; q/k/v are reshaped to
    ``(batch, T, heads, d/heads)``; scores ``einsum('bqhd,bkhd->bhqk')``;
    output ``einsum('bhqk,bkhd->bqhd')``.

    Attributes:
      num_heads: number of heads; must divide the model width.
    """

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, t, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"d_model={d} is not divisible by num_heads={self.num_heads}")
        hd = d // self.num_heads

        def heads(y):
            return y.reshape(b, t, self.num_heads, hd)

        q = heads(nn.Dense(d, name="query")(x))
        k = heads(nn.Dense(d, name="key")(x))
        v = heads(nn.Dense(d, name="value")(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(hd, x.dtype))
        if mask is not None:  # mask: (batch, T) booleans, True = attend to this key
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
        return nn.Dense(d, name="out")(y)


class EncoderBlock(nn.Module):
    """Pre-LN encoder block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    Attributes:
      num_heads: attention heads.
      mlp_dim: hidden width of the MLP.
    """

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        d = x.shape[-1]
        x = x + SelfAttention(self.num_heads, name="attn")(nn.LayerNorm(name="ln1")(x), mask)
        y = nn.LayerNorm(name="ln2")(x)
        y = nn.Dense(d, name="mlp_fc2")(nn.gelu(nn.Dense(self.mlp_dim, name="mlp_fc1")(y)))
        return x + y


class TinyTransformer(nn.Module):
    """A small transformer encoder classifier (see the module docstring).

    Inputs are integer tokens of shape ``(batch, T)`` with ``T <= seq_len``.

    Attributes:
      vocab_size: number of token ids.
      seq_len: maximum sequence length (size of the positional table).
      d_model: model width.
      num_heads: attention heads.
      mlp_dim: MLP hidden width.
      num_layers: number of encoder blocks.
      num_classes: number of logits.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = TinyTransformer()
      >>> tokens = jnp.zeros((2, 32), jnp.int32)
      >>> v = jax.eval_shape(model.init, jax.random.key(0), tokens)
      >>> jax.eval_shape(model.apply, v, tokens).shape
      (2, 10)

    References:
      Vaswani et al. 2017, arXiv:1706.03762.
    """

    vocab_size: int = 256
    seq_len: int = 32
    d_model: int = 64
    num_heads: int = 4
    mlp_dim: int = 256
    num_layers: int = 2
    num_classes: int = 10

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        if tokens.ndim != 2 or tokens.shape[1] > self.seq_len:
            raise ValueError(
                f"expected integer tokens of shape (batch, T<={self.seq_len}), got {tokens.shape}"
            )
        t = tokens.shape[1]
        x = nn.Embed(self.vocab_size, self.d_model, name="token_embed")(tokens)
        pos = self.param(
            "pos_embed", nn.initializers.normal(0.02), (self.seq_len, self.d_model), x.dtype
        )
        x = x + pos[None, :t]
        for i in range(self.num_layers):
            x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"block{i}")(x)
        x = nn.LayerNorm(name="ln_final")(x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=1))


def _transformer_costs(
    vocab_size: int = 256,
    seq_len: int = 32,
    d_model: int = 64,
    num_heads: int = 4,
    mlp_dim: int = 256,
    num_layers: int = 2,
    num_classes: int = 10,
    **_unused,
) -> tuple[int, int]:
    t, d = seq_len, d_model

    def per_token(n_in: int, n_out: int) -> tuple[int, int]:  # a dense layer applied at T positions
        params, macs = costs.dense(n_in, n_out)
        return params, t * macs

    embed = (vocab_size * d + t * d, 0)
    block = costs.total(
        costs.norm(d),
        per_token(d, d),  # query
        per_token(d, d),  # key
        per_token(d, d),  # value
        (0, t * t * d),  # scores: heads * T * T * (d / heads)
        (0, t * t * d),  # weights @ values
        per_token(d, d),  # out
        costs.norm(d),
        per_token(d, mlp_dim),
        per_token(mlp_dim, d),
    )
    blocks = (num_layers * block[0], num_layers * block[1])
    return costs.total(embed, blocks, costs.norm(d), costs.dense(d, num_classes))


@register_model(
    "tiny_transformer",
    input_shape=lambda seq_len=32, **_: (seq_len,),
    num_classes=10,
    description="2-block pre-LN transformer encoder (d=64, 4 heads, MLP 256) on 32 tokens",
    reference="Vaswani et al. 2017, arXiv:1706.03762",
    expected_params=119_178,
    expected_macs=3_408_512,
    costs=_transformer_costs,
    input_dtype=jnp.int32,
    input_max=lambda vocab_size=256, **_: vocab_size,
)
def tiny_transformer(
    vocab_size: int = 256,
    seq_len: int = 32,
    d_model: int = 64,
    num_heads: int = 4,
    mlp_dim: int = 256,
    num_layers: int = 2,
    num_classes: int = 10,
) -> TinyTransformer:
    """Builds :class:`TinyTransformer`.

    Example:
      >>> from jaxcomp.models import get_model
      >>> spec = get_model("tiny_transformer")
      >>> spec.input_shape, spec.expected_params, spec.expected_macs
      ((32,), 119178, 3408512)

    References:
      Vaswani et al. 2017, arXiv:1706.03762.
    """
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    return TinyTransformer(
        vocab_size=vocab_size,
        seq_len=seq_len,
        d_model=d_model,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_layers=num_layers,
        num_classes=num_classes,
    )
