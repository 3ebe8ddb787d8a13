"""jaxcomp.ops.capture: inputs/outputs of submodules by path, linen and nnx, early stop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.ops.capture import (
    Captured,
    ModuleInfo,
    capture_linen,
    capture_nnx,
    module_of,
    patched_calls,
)

RNG = np.random.default_rng(0)
CALLED: list[str] = []  # modules append their name when their Python __call__ runs


class _Loud(nn.Module):
    """A Dense layer that says when it runs (to see where a pass stopped)."""

    features: int

    @nn.compact
    def __call__(self, x):
        CALLED.append(self.name)
        return nn.Dense(self.features, name="dense")(x)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = _Loud(4, name="shared")
        h = shared(nn.relu(shared(x)))
        h = _Loud(3, name="mid")(h)
        return _Loud(2, name="head")(nn.relu(h))


@pytest.fixture(scope="module")
def net():
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    v = jax.jit(_Net().init)(jax.random.key(0), x)
    return v, x


def _dense(v, name, x):
    p = v["params"][name]["dense"]
    return np.asarray(x) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])


def test_linen_records_inputs_and_outputs_of_every_call(net):
    v, x = net
    cap = capture_linen(_Net().apply, v, x, where=["shared", "mid"], record="both")
    assert isinstance(cap, Captured) and not cap.stopped
    h1 = _dense(v, "shared", x)
    h2 = _dense(v, "shared", np.maximum(h1, 0))
    h3 = _dense(v, "mid", h2)
    assert len(cap.inputs["shared"]) == 2 and len(cap.outputs["shared"]) == 2
    np.testing.assert_allclose(cap.inputs["shared"][0], x)
    np.testing.assert_allclose(cap.inputs["shared"][1], np.maximum(h1, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap.outputs["shared"][1], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cap.inputs["mid"][0], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cap.outputs["mid"][0], h3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cap.output, _Net().apply(v, x), rtol=1e-6)
    # every module that ran, parents before children, with its call count
    assert list(cap.modules) == ["", "shared", "shared/dense", "mid", "mid/dense", "head",
                                 "head/dense"]
    assert cap.modules["shared"].calls == 2 and cap.modules["head/dense"].calls == 1
    assert isinstance(cap.modules["mid/dense"], ModuleInfo)
    assert isinstance(cap.modules["mid/dense"].module, nn.Dense)
    # record= chooses what is kept
    only_in = capture_linen(_Net().apply, v, x, where="mid", record="inputs")
    assert set(only_in.inputs) == {"mid"} and only_in.outputs == {}
    only_out = capture_linen(_Net().apply, v, x, where="mid")
    assert only_out.inputs == {} and set(only_out.outputs) == {"mid"}
    survey = capture_linen(_Net().apply, v, x)  # where=None: nothing recorded
    assert survey.inputs == survey.outputs == {} and list(survey.modules) == list(cap.modules)


def test_linen_stop_after_ends_the_pass_after_the_last_needed_call(net):
    v, x = net
    CALLED.clear()
    cap = capture_linen(_Net().apply, v, x, where="shared", record="inputs",
                        stop_after={"shared": 2})
    assert cap.stopped and cap.output is None
    assert CALLED == ["shared", "shared"]  # mid and head never ran
    assert list(cap.modules) == ["", "shared", "shared/dense"]
    assert len(cap.inputs["shared"]) == 2
    CALLED.clear()
    cap = capture_linen(_Net().apply, v, x, where="shared", record="inputs",
                        stop_after={"shared": 1})
    assert CALLED == ["shared"] and len(cap.inputs["shared"]) == 1
    # several paths: stops once all of them are done
    CALLED.clear()
    cap = capture_linen(_Net().apply, v, x, stop_after={"shared": 1, "mid": 1})
    assert CALLED == ["shared", "shared", "mid"] and cap.stopped
    # under jit, with gradients through the recorded inputs
    def loss(params):
        c = capture_linen(_Net().apply, {"params": params}, x, where="mid", record="inputs",
                          stop_after={"mid": 1})
        return jnp.sum(c.inputs["mid"][0] ** 2)

    g = jax.jit(jax.grad(loss))(v["params"])
    assert float(jnp.abs(g["shared"]["dense"]["kernel"]).sum()) > 0
    assert float(jnp.abs(g["head"]["dense"]["kernel"]).sum()) == 0.0


def test_linen_selection_and_stop_errors(net):
    v, x = net
    with pytest.raises(ValueError, match="where='mdi' matches no module path") as e:
        capture_linen(_Net().apply, v, x, where="mdi")
    assert "closest first" in str(e.value)
    assert str(e.value).splitlines()[1].strip() == "mid"
    with pytest.raises(ValueError, match="where='conv.*'"):
        capture_linen(_Net().apply, v, x, where=["mid", "conv.*"])
    with pytest.raises(ValueError, match="before the pass was stopped"):
        capture_linen(_Net().apply, v, x, where="head", stop_after={"shared": 1})
    with pytest.raises(ValueError, match="invalid regex"):
        capture_linen(_Net().apply, v, x, where="mid(")
    for bad in ([1], [], 3):
        with pytest.raises(TypeError, match="where"):
            capture_linen(_Net().apply, v, x, where=bad)
    with pytest.raises(TypeError, match="record='input'"):
        capture_linen(_Net().apply, v, x, where="mid", record="input")
    with pytest.raises(ValueError, match=r"'mdi': '0 of 1'") as e:
        capture_linen(_Net().apply, v, x, stop_after={"mdi": 1})
    assert str(e.value).splitlines()[1].strip() == "mid"  # modules that ran, closest first
    with pytest.raises(ValueError, match=r"'shared': '2 of 3'"):
        capture_linen(_Net().apply, v, x, stop_after={"shared": 3})
    for bad in ({"mid": 0}, {"mid": True}, {}, ["mid"]):
        with pytest.raises(TypeError, match="stop_after"):
            capture_linen(_Net().apply, v, x, stop_after=bad)
    with pytest.raises(ValueError, match="capture_nnx"):
        capture_linen(lambda v, x: x, {}, x)
    with pytest.raises(TypeError, match="linen Module"):
        capture_linen(3, v, x)


class _Remat(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.remat(nn.Dense)(3, name="inner")(x)
        self.sow("intermediates", "feat", 2.0 * h)
        return h


def test_linen_module_form_lifted_transforms_sown_values_and_stop():
    m = _Remat()
    x = np.ones((2, 3), np.float32)
    v = jax.jit(m.init)(jax.random.key(4), x)
    run = jax.jit(lambda v: capture_linen(m, v, x, where=["inner", "feat"])[:3])
    out, _, outputs = run(v)
    np.testing.assert_allclose(outputs["inner"][0], out)
    np.testing.assert_allclose(outputs["feat"][0], 2 * out)
    assert "inner" in capture_linen(m, v, x).modules
    # inputs come from the interceptor: inside the lifted transform they cannot escape
    with pytest.raises(ValueError, match="inside a transform"):
        jax.jit(lambda v: capture_linen(m.apply, v, x, where="inner", record="inputs"))(v)
    # with stop_after a Module runs as its apply function
    top = capture_linen(m, v, x, where="", record="inputs", stop_after={"": 1})
    assert top.stopped and top.output is None
    np.testing.assert_allclose(top.inputs[""][0], x)


def test_module_of_maps_parameter_paths_to_module_paths():
    assert module_of("stage1_block0/conv1/kernel") == "stage1_block0/conv1"
    assert module_of("fc1/bias") == "fc1" and module_of("kernel") == ""


# ------------------------------------------------------------------------------- nnx


class _LoudNNX(nnx.Module):
    def __init__(self, din, dout, name, rngs):
        self.lin = nnx.Linear(din, dout, rngs=rngs)
        self.label = name

    def __call__(self, x):
        CALLED.append(self.label)
        return self.lin(x)


class _NetNNX(nnx.Module):
    def __init__(self, rngs):
        self.a = _LoudNNX(4, 4, "a", rngs)
        self.b = _LoudNNX(4, 2, "b", rngs)

    def __call__(self, x):
        h = self.a(nnx.relu(self.a(x)))
        self.sow(nnx.Intermediate, "feat", h)
        return self.b(h)


def test_nnx_records_inputs_outputs_and_stops_early():
    model = _NetNNX(nnx.Rngs(0))
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    k, b = np.asarray(model.a.lin.kernel[...]), np.asarray(model.a.lin.bias[...])
    h1 = x @ k + b
    h2 = np.maximum(h1, 0) @ k + b
    state_before = jax.tree.map(np.asarray, nnx.state(model))
    call_before = nnx.Linear.__dict__["__call__"]

    cap = capture_nnx(model, x, where=["a", "feat"], record="both")
    assert not cap.stopped and len(cap.inputs["a"]) == 2
    np.testing.assert_allclose(cap.inputs["a"][1], np.maximum(h1, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap.outputs["a"][1], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cap.outputs["feat"][0], h2, rtol=1e-5, atol=1e-5)
    assert list(cap.modules) == ["", "a", "a/lin", "b", "b/lin"]
    assert cap.modules["a/lin"].calls == 2 and cap.modules["a/lin"].module is model.a.lin

    CALLED.clear()
    early = capture_nnx(model, x, where="a/lin", record="inputs", stop_after={"a": 2})
    assert early.stopped and early.output is None and CALLED == ["a", "a"]
    np.testing.assert_allclose(early.inputs["a/lin"][0], x)
    # nothing left behind: classes restored, no sown or capture attributes, same state
    assert nnx.Linear.__dict__["__call__"] is call_before
    assert "__call__" not in _LoudNNX.__dict__ or _LoudNNX.__dict__["__call__"] is \
        _LoudNNX.__call__
    assert not hasattr(model, "feat") and not hasattr(model, "__captures__")
    after = jax.tree.map(np.asarray, nnx.state(model))
    assert jax.tree.structure(after) == jax.tree.structure(state_before)
    kb, bb = np.asarray(model.b.lin.kernel[...]), np.asarray(model.b.lin.bias[...])
    np.testing.assert_allclose(cap.output, h2 @ kb + bb, rtol=1e-5, atol=1e-5)


def test_nnx_capture_under_jit_and_errors():
    model = _NetNNX(nnx.Rngs(1))
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    graphdef, state = nnx.split(model)

    def first_input_norm(s):
        c = capture_nnx(nnx.merge(graphdef, s), x, where="b", record="inputs",
                        stop_after={"b": 1})
        return jnp.sum(c.inputs["b"][0] ** 2)

    g = jax.jit(jax.grad(first_input_norm))(state)
    assert float(jnp.abs(g["a"]["lin"]["kernel"][...]).sum()) > 0
    assert float(jnp.abs(g["b"]["lin"]["kernel"][...]).sum()) == 0.0
    with pytest.raises(ValueError, match="where='c' matches no module or sown-value path"):
        capture_nnx(model, x, where="c")
    with pytest.raises(ValueError, match=r"'c': '0 of 1'"):
        capture_nnx(model, x, stop_after={"c": 1})
    with pytest.raises(TypeError, match="nnx.Module"):
        capture_nnx(lambda x: x, x)
    with pytest.raises(TypeError, match="stop_after"):
        capture_nnx(model, x, stop_after={"a": -1})


class _Base:
    def __call__(self, x):
        return x + 1


class _Own(_Base):
    def __call__(self, x):
        return 10 * x


class _Inherits(_Base):
    pass


def _times2(original):
    def __call__(self, x):
        return 2 * original(self, x)

    return __call__


def _minus1(original):
    def __call__(self, x):
        return original(self, x) - 1

    return __call__


def test_patched_calls_counts_uses_stacks_factories_and_restores():
    own_call = _Own.__dict__["__call__"]
    with patched_calls([_Own, _Inherits], _times2):
        assert (_Own()(3), _Inherits()(3), _Base()(3)) == (60, 8, 4)
        assert _Own.__call__.__wrapped__ is own_call
        with patched_calls({_Own}, _times2):  # same factory: one wrapper, counted
            assert _Own()(3) == 60
        assert _Own()(3) == 60  # still patched by the outer block
        with patched_calls({_Own}, _minus1):  # another factory wraps the first wrapper
            assert _Own()(3) == 59
        assert _Own()(3) == 60
    assert _Own.__dict__["__call__"] is own_call
    assert "__call__" not in _Inherits.__dict__ and _Inherits()(3) == 4
    with pytest.raises(RuntimeError), patched_calls((c for c in [_Inherits]), _times2):
        raise RuntimeError("restored on errors too")
    assert "__call__" not in _Inherits.__dict__
