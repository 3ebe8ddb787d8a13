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


def test_layerwise_driver_skeleton_orders_checks_and_accumulates(net):
    from jaxcomp.ops.hessian import (
        check_solver_args,
        check_solver_flags,
        kernel_hessian,
        kernel_layers,
        select_kernels,
    )

    m, v, x = net
    sel, rebuild = select_kernels(v, r".*/kernel", what="drv")
    assert rebuild({"a": 1}) == {**v, "params": {"a": 1}}
    assert select_kernels(v["params"], None, what="drv")[1]({"a": 1}) == {"a": 1}
    todo = kernel_layers(m.apply, v, sel, x[:1], what="drv")
    assert [(k.path, k.module_path, k.calls) for k in todo] == [
        ("shared/dense/kernel", "shared/dense", 2), ("last/dense/kernel", "last/dense", 1)]
    w2, st = kernel_hessian(m.apply, v, [x[:3], x[3:]], todo[0],
                            v["params"]["shared"]["dense"]["kernel"])
    p = v["params"]["shared"]["dense"]
    rows = np.concatenate([x, np.maximum(x @ np.asarray(p["kernel"]) + np.asarray(p["bias"]), 0)])
    assert w2.shape == (3, 3) and int(st.count) == 8
    np.testing.assert_allclose(st.hessian, 2 * rows.T @ rows / 8, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="did not run"):
        kernel_layers(m.apply, v, select_kernels({"params": {"gone": {"kernel": jnp.ones((2, 2))}}},
                                                 None, what="drv")[0], x[:1], what="drv")
    with pytest.raises(TypeError, match="drv: parameter 'last/dense/bias' is not the kernel"):
        kernel_layers(m.apply, v, select_kernels(v, r"last/dense/bias", what="drv")[0], x[:1],
                      what="drv")
    with pytest.raises(ValueError, match="blocksize=0"):
        check_solver_args(0.01, 0, "k")
    with pytest.raises(ValueError, match="percdamp"):
        check_solver_args(-1.0, 8, "k")
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_solver_flags(False, True, 0.01, "k")
    with pytest.raises(ValueError, match=r"raise percdamp \(now 0.5\)"):
        check_solver_flags(True, False, 0.5, "k")
