"""Compressors on Flax linen variables, nnx modules and plain pytrees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxcomp as jc


def zero_small(threshold):
    return jc.stateless(lambda t: jax.tree.map(lambda w: jnp.where(jnp.abs(w) < threshold, 0, w), t))


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(2, name="fc")(x.reshape(x.shape[0], -1))


def test_linen_variables_with_batch_stats():
    model = CNN()
    variables = model.init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
    comp = jc.masked(zero_small(0.2), r"params/.*/kernel")
    state = comp.init(variables)
    view = comp.apply(variables, state)
    assert view["batch_stats"]["bn"]["mean"] is variables["batch_stats"]["bn"]["mean"]
    k = view["params"]["conv"]["kernel"]
    assert float(jnp.min(jnp.where(k == 0, 1.0, jnp.abs(k)))) >= 0.2
    y = jax.jit(model.apply)(view, jnp.ones((2, 4, 4, 1)))
    assert y.shape == (2, 2)
    with pytest.raises(ValueError, match="'params' collection"):
        jc.params_of({"batch_stats": {}})
    assert jc.params_of(variables) is variables["params"]


class NMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.bn(self.fc1(x))))


def test_nnx_split_compress_merge_under_jit():
    model = NMLP(nnx.Rngs(0))
    model.eval()
    nnxdef, params, rest = jc.nnx_split(model)
    assert jc.select.paths(params) == ["bn/bias", "bn/scale", "fc1/bias", "fc1/kernel",
                                       "fc2/bias", "fc2/kernel"]
    comp = jc.masked(zero_small(0.3), r".*kernel")
    cstate = comp.init(params)
    x = jax.random.normal(jax.random.key(1), (5, 4))

    @jax.jit
    def forward(p, s, x):
        return jc.nnx_merge(nnxdef, comp.apply(p, s), rest)(x)

    y = forward(params, cstate, x)
    # oracle: the same zeroing written into a copy of the module by hand
    ref = NMLP(nnx.Rngs(0))
    ref.eval()
    for lin in (ref.fc1, ref.fc2):
        lin.kernel[...] = jnp.where(jnp.abs(lin.kernel[...]) < 0.3, 0, lin.kernel[...])
    np.testing.assert_allclose(y, ref(x), rtol=1e-6, atol=1e-6)
    # inputs are not mutated
    assert float(jnp.abs(params["fc1"]["kernel"]).min()) < 0.3
    # gradients flow through merge into the pure dict
    g = jax.grad(lambda p: forward(p, cstate, x).sum())(params)
    assert g["fc1"]["kernel"].shape == (4, 8) and float(jnp.abs(g["fc2"]["bias"]).sum()) > 0


def test_nnx_merge_errors():
    nnxdef, params, rest = jc.nnx_split(NMLP(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="missing \\['fc2/kernel'\\]"):
        bad = {k: v for k, v in params.items()}
        bad["fc2"] = {"bias": params["fc2"]["bias"]}
        jc.nnx_merge(nnxdef, bad, rest)
    lr = dict(params)
    lr["fc2"] = {"bias": params["fc2"]["bias"],
                 "kernel": jc.LowRank(jnp.ones((8, 1)), jnp.ones((1, 3)))}
    # a compressed leaf has the dense shape but must be materialized first
    merged = jc.nnx_merge(nnxdef, jc.materialize(lr), rest)
    assert merged.fc2.kernel[...].shape == (8, 3)
    bad_shape = dict(params)
    bad_shape["fc2"] = {"bias": params["fc2"]["bias"], "kernel": jnp.ones((3, 3))}
    with pytest.raises(ValueError, match="'fc2/kernel' has shape \\(3, 3\\)"):
        jc.nnx_merge(nnxdef, bad_shape, rest)
    with pytest.raises(TypeError, match="nnx.Module"):
        jc.nnx_split({"a": 1})
    with pytest.raises(TypeError, match="first value returned"):
        jc.nnx_merge(None, params, rest)


def test_plain_pytree_with_tuples_and_none():
    params = ({"w": jnp.array([0.1, 1.0])}, [jnp.array([0.05]), None])
    comp = zero_small(0.2)
    out = comp.apply(params, comp.init(params))
    assert out[0]["w"].tolist() == [0.0, 1.0] and out[1][0].tolist() == [0.0] and out[1][1] is None
