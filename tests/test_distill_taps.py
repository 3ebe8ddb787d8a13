"""Tests for feature taps on Flax linen and nnx models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.distill import linen_taps, nnx_taps
from jaxcomp.models import get_model
from jaxcomp.models.nnx_models import MLPNNX
from jaxcomp.models.resnet import BasicBlock

RNG = np.random.default_rng(0)


def np_init(spec):
    """Random variables from NumPy (compiling the Flax initialisers is slow on CPU)."""
    shapes = spec.eval_init(1)

    def fill(path, s):
        scale = 1.0 / np.sqrt(s.shape[-2]) if len(s.shape) > 1 else 0.1
        value = RNG.normal(size=s.shape) * scale
        if "var" in jax.tree_util.keystr(path):
            value = np.abs(value) + 0.5
        return value.astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def lenet():
    spec = get_model("lenet300")
    return spec, np_init(spec), RNG.normal(size=(3, 784)).astype(np.float32)


def test_lenet_taps_equal_manual_layers(lenet):
    spec, v, x = lenet
    out, taps = jax.jit(lambda v, x: linen_taps(spec.apply_fn, v, x, where=r"fc[12]"))(v, x)
    p = jax.tree.map(np.asarray, v["params"])
    fc1 = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    fc2 = np.maximum(fc1, 0) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    assert list(taps) == ["fc1", "fc2"]
    np.testing.assert_allclose(taps["fc1"], fc1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(taps["fc2"], fc2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out, spec.apply_fn(v, x), rtol=1e-5, atol=1e-5)


def test_taps_carry_gradients(lenet):
    spec, v, x = lenet

    def loss(params):
        _, taps = linen_taps(spec.apply_fn, {"params": params}, x, where="fc1")
        return jnp.sum(taps["fc1"] ** 2)

    g = jax.jit(jax.grad(loss))(v["params"])
    p = v["params"]
    h = x @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"])
    np.testing.assert_allclose(g["fc1"]["kernel"], 2 * x.T @ h, rtol=1e-3, atol=1e-3)
    assert float(jnp.abs(g["fc2"]["kernel"]).sum()) == 0.0


def test_unmatched_pattern_lists_paths_closest_first(lenet):
    spec, v, x = lenet
    with pytest.raises(ValueError, match="where='fc4' matches no module path") as e:
        linen_taps(spec.apply_fn, v, x, where="fc4")
    listed = [ln.strip() for ln in str(e.value).splitlines()[1:]]
    assert set(listed[:3]) == {"fc1", "fc2", "fc3"}
    # In a list every pattern must match something.
    with pytest.raises(ValueError, match="where='conv.*'"):
        linen_taps(spec.apply_fn, v, x, where=["fc1", "conv.*"])
    with pytest.raises(TypeError, match="where"):
        linen_taps(spec.apply_fn, v, x, where=[1])
    with pytest.raises(ValueError, match="invalid regex"):
        linen_taps(spec.apply_fn, v, x, where="fc(")


def test_callable_where_and_root_output(lenet):
    spec, v, x = lenet
    out, taps = jax.jit(
        lambda v, x: linen_taps(spec.apply_fn, v, x, where=lambda p: p in ("", "fc3"))
    )(v, x)
    assert sorted(taps) == ["", "fc3"]
    np.testing.assert_allclose(taps[""], out)
    np.testing.assert_allclose(taps["fc3"], out)


def test_resnet20_block_tap_equals_block_applied_to_its_input():
    spec = get_model("resnet20", widths=(4, 8, 8))  # narrow, on 8x8 inputs: fast
    v = np_init(spec)
    x = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)

    @jax.jit
    def run(v, x):
        (logits, _state), taps = linen_taps(
            spec.apply_fn,
            v,
            x,
            where=["stage1_block2", "stage2_block0"],
            train=False,
            return_state=True,
        )
        block = BasicBlock(8, 2, "projection")
        sub = {c: v[c]["stage2_block0"] for c in ("params", "batch_stats")}
        manual = block.apply(sub, taps["stage1_block2"], False)
        return logits, taps, manual

    _logits, taps, manual = run(v, x)
    assert taps["stage2_block0"].shape == (2, 4, 4, 8)
    np.testing.assert_allclose(taps["stage2_block0"], manual, rtol=1e-4, atol=1e-4)


class _Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(3, name="shared")
        h = dense(dense(x))
        self.sow("intermediates", "feat", 2.0 * h)
        return nn.Dense(2, name="head")(h)


def test_module_form_shared_module_and_sown_values():
    m = _Shared()
    x = RNG.normal(size=(4, 3)).astype(np.float32)
    v = jax.jit(m.init)(jax.random.key(2), x)

    @jax.jit
    def run(v, x):
        out, taps = linen_taps(m, v, x, where=["shared", "feat"])
        # The apply-function form sees the shared module twice as well.
        _, taps2 = linen_taps(m.apply, v, x, where="shared")
        return out, taps, taps2, m.apply(v, x)

    out, taps, taps2, plain = run(v, x)
    p = jax.tree.map(np.asarray, v["params"]["shared"])
    h1 = x @ p["kernel"] + p["bias"]
    h2 = h1 @ p["kernel"] + p["bias"]
    assert isinstance(taps["shared"], tuple) and len(taps["shared"]) == 2
    np.testing.assert_allclose(taps["shared"][0], h1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps["shared"][1], h2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps["feat"], 2 * h2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)
    assert len(taps2["shared"]) == 2
    with pytest.raises(ValueError, match="closest first"):
        linen_taps(m, v, x, where="fet")


class _BN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(4, name="fc")(x)
        return nn.BatchNorm(use_running_average=not train, name="bn")(h)


def test_module_form_with_mutable_collections():
    m = _BN()
    x = RNG.normal(size=(5, 3)).astype(np.float32)
    v = jax.jit(m.init)(jax.random.key(3), x)
    (_out, state), taps = jax.jit(
        lambda v: linen_taps(m, v, x, where="fc", train=True, mutable=["batch_stats"])
    )(v)
    assert set(state) == {"batch_stats"}
    assert not np.allclose(state["batch_stats"]["bn"]["mean"], v["batch_stats"]["bn"]["mean"])
    assert taps["fc"].shape == (5, 4)


class _Remat(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.remat(nn.Dense)(3, name="inner")(x)


def test_lifted_transform_taps_error_for_apply_fn_and_work_for_module():
    m = _Remat()
    x = np.ones((2, 3), np.float32)
    v = jax.jit(m.init)(jax.random.key(4), x)
    with pytest.raises(ValueError, match="inside a transform"):
        jax.jit(lambda v: linen_taps(m.apply, v, x, where="inner"))(v)
    out, taps = jax.jit(lambda v: linen_taps(m, v, x, where="inner"))(v)
    np.testing.assert_allclose(taps["inner"], out)


def test_apply_fn_without_linen_modules():
    with pytest.raises(ValueError, match="nnx_taps"):
        linen_taps(lambda v, x: x, {}, np.ones(2), where=".*")
    with pytest.raises(TypeError, match="callable"):
        linen_taps(3, {}, np.ones(2), where=".*")


# ------------------------------------------------------------------------------- nnx


class _Sub(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        y = self.lin(self.lin(x))
        self.sow(nnx.Intermediate, "feat", y)
        return y


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.sub = _Sub(rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.sub(x)))


def test_nnx_mlp_taps_equal_manual_and_restore_classes():
    model = MLPNNX((5, 8, 6, 3), rngs=nnx.Rngs(0))
    x = RNG.normal(size=(2, 5)).astype(np.float32)
    before = (MLPNNX.__dict__["__call__"], nnx.Linear.__dict__["__call__"])
    out, taps = nnx_taps(model, x, where="fc[12]")
    assert (MLPNNX.__dict__["__call__"], nnx.Linear.__dict__["__call__"]) == before
    w = {
        k: (np.asarray(getattr(model, k).kernel[...]), np.asarray(getattr(model, k).bias[...]))
        for k in ("fc1", "fc2")
    }
    fc1 = x @ w["fc1"][0] + w["fc1"][1]
    fc2 = np.maximum(fc1, 0) @ w["fc2"][0] + w["fc2"][1]
    assert sorted(taps) == ["fc1", "fc2"]  # fc3 is an nnx.Linear too, but not selected
    np.testing.assert_allclose(taps["fc1"], fc1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(taps["fc2"], fc2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, model(x), rtol=1e-6)


def test_nnx_taps_under_jit_and_grad():
    model = MLPNNX((5, 8, 3), rngs=nnx.Rngs(1))
    x = RNG.normal(size=(2, 5)).astype(np.float32)

    @nnx.jit
    def grads(model, x):
        def loss(model):
            _, taps = nnx_taps(model, x, where="fc1")
            return jnp.sum(taps["fc1"] ** 2)

        return nnx.grad(loss)(model)

    g = grads(model, x)
    h = x @ np.asarray(model.fc1.kernel[...]) + np.asarray(model.fc1.bias[...])
    np.testing.assert_allclose(g.fc1.kernel[...], 2 * x.T @ h, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(g.fc2.kernel[...]).sum()) == 0.0

    # jax.jit over a pure function of the params (split/merge), as in a train step.
    graphdef, state = nnx.split(model)
    _out, taps = jax.jit(lambda s: nnx_taps(nnx.merge(graphdef, s), x, where="fc1"))(state)
    np.testing.assert_allclose(taps["fc1"], h, rtol=1e-5, atol=1e-5)


def test_nnx_shared_calls_sown_values_and_errors():
    model = _Net(nnx.Rngs(2))
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    out, taps = nnx_taps(model, x, where=["sub/lin", "sub/feat", ""])
    k, b = np.asarray(model.sub.lin.kernel[...]), np.asarray(model.sub.lin.bias[...])
    h1 = x @ k + b
    h2 = h1 @ k + b
    assert len(taps["sub/lin"]) == 2
    np.testing.assert_allclose(taps["sub/lin"][1], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(taps["sub/feat"], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(taps[""], out)
    assert not hasattr(model.sub, "feat")  # sow did not mutate the module
    with pytest.raises(ValueError, match="sub/lin") as e:
        nnx_taps(model, x, where="sub/lni")
    assert "closest first" in str(e.value)
    with pytest.raises(TypeError, match="nnx.Module"):
        nnx_taps(lambda x: x, x, where=".*")


class _RematNNX(nnx.Module):
    def __init__(self, rngs):
        self.inner = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return nnx.remat(lambda m, x: m(x))(self.inner, x)


def test_nnx_tap_inside_a_transform_is_a_clear_error():
    model = _RematNNX(nnx.Rngs(0))
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="none of them produced an output"):
        jax.jit(lambda s: nnx_taps(nnx.merge(nnx.graphdef(model), s), x, where="inner"))(
            nnx.state(model)
        )
    out, taps = jax.jit(lambda s: nnx_taps(nnx.merge(nnx.graphdef(model), s), x, where=""))(
        nnx.state(model)
    )
    np.testing.assert_allclose(taps[""], out)
