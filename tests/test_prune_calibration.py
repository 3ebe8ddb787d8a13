"""jaxcomp.prune.oneshot.calibration: chunks, layer survey, layer inputs with an early stop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.prune.oneshot.calibration import calibration_chunks, layer_inputs, linen_layers

RAN: list[str] = []


class _Tracked(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        RAN.append(self.name)
        return nn.Dense(self.features, name="dense")(x)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = _Tracked(3, name="shared")
        h = shared(nn.relu(shared(x)))
        return _Tracked(2, name="last")(h)


@pytest.fixture(scope="module")
def net():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    return _Net(), jax.jit(_Net().init)(jax.random.key(0), x), x


def test_linen_layers_lists_modules_in_forward_order_with_call_counts(net):
    m, v, x = net
    layers = linen_layers(m.apply, v, x[:1])
    assert list(layers) == ["", "shared", "shared/dense", "last", "last/dense"]
    assert [layers[p].calls for p in layers] == [1, 2, 2, 1, 1]
    assert isinstance(layers["last/dense"].module, nn.Dense)


def test_layer_inputs_stop_after_the_layers_last_call(net):
    m, v, x = net
    RAN.clear()
    got = layer_inputs(m.apply, v, x, "shared/dense", 2)
    assert RAN == ["shared", "shared"]  # the pass ended before "last"
    p = v["params"]["shared"]["dense"]
    h1 = x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    assert len(got) == 2
    np.testing.assert_allclose(got[0], x)
    np.testing.assert_allclose(got[1], np.maximum(h1, 0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stop_after"):
        layer_inputs(m.apply, v, x, "shared/dense", 3)  # it is called twice only
    with pytest.raises(ValueError, match="closest first"):
        layer_inputs(m.apply, v, x, "shared/dnese", 1)


def test_calibration_chunks_split_and_check():
    x = jnp.arange(10.0).reshape(5, 2)
    assert [c.shape[0] for c in calibration_chunks(x, 2)] == [2, 2, 1]
    assert [c.shape[0] for c in calibration_chunks(x)] == [5]
    assert [c.shape[0] for c in calibration_chunks([x[:2], x[2:]])] == [2, 3]
    for bad, match in ((jnp.zeros((0, 2)), "empty"), ([], "empty"),
                       (x.at[3, 1].set(jnp.nan), "chunk 1 contains NaN")):
        with pytest.raises(ValueError, match=match):
            calibration_chunks(bad, 3)
    with pytest.raises(ValueError, match="chunk_size=0"):
        calibration_chunks(x, 0)
