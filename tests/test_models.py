"""Tests for jaxcomp.models: registry, exact parameter/MAC counts, forward passes, nnx twins.

Counts are checked three ways: (1) hand-written per-layer formulas in this file,
(2) parameter leaves of the real (or, for ResNet-50, abstract) variables, and
(3) MACs read off the traced jaxpr (every ``dot_general`` and
``conv_general_dilated``), so the modules really implement the counted
architectures.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp import models
from jaxcomp.models import get_model, list_models, register_model
from jaxcomp.models.registry import _REGISTRY

ALL = [
    "kd_student",
    "kd_teacher",
    "lenet300",
    "lenet5",
    "lenet5_classic",
    "lottery_mlp",
    "mnist1d_cnn",
    "mnist1d_mlp",
    "mobilenet_small",
    "resnet20",
    "resnet50",
    "tiny_transformer",
    "vgg_small",
]
REAL = [n for n in ALL if n != "resnet50"]  # models run for real in the tests


# ----------------------------------------------------------------------------- helpers


def n_params(variables) -> int:
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(item, jcore.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jcore.Jaxpr):
                yield item


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += math.prod(out) * math.prod(lhs[i] for i in lhs_contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            assert eqn.params["batch_group_count"] == 1
            total += math.prod(out) * (math.prod(rhs) // out_features)
        for sub in _subjaxprs(eqn):
            total += _jaxpr_macs(sub)
    return total


def traced_macs(spec, variables) -> int:
    """MACs per example of ``spec``'s inference forward pass, from its jaxpr (batch 1)."""
    x = jax.ShapeDtypeStruct((1, *spec.input_shape), spec.input_dtype)
    closed = jax.make_jaxpr(lambda v, x: spec.module.apply(v, x, train=False))(variables, x)
    return _jaxpr_macs(closed.jaxpr)


_SPECS: dict = {}
_VARS: dict = {}
_APPLY: dict = {}


def spec_of(name):
    """One shared default spec per model (so jitted functions are reused)."""
    if name not in _SPECS:
        _SPECS[name] = get_model(name)
    return _SPECS[name]


def real_variables(name):
    """Real variables for the default configuration, initialised once per session.

    An ``rbg`` key is used only because XLA:CPU compiles threefry-based
    initialisers several times slower; the models do not care.
    """
    if name not in _VARS:
        _VARS[name] = spec_of(name).init(jax.random.key(0, impl="rbg"), batch_size=1)
    return _VARS[name]


def jitted_apply(name):
    if name not in _APPLY:
        _APPLY[name] = jax.jit(spec_of(name).apply_fn, static_argnames=("train", "return_state"))
    return _APPLY[name]


# ----------------------------------------------------------------------------- hand formulas
#
# Each returns (params, macs). dense(i, o): i*o + o params, i*o MACs.
# conv with P output positions, k taps, c_in -> c_out: k*c_in*c_out (+c_out bias)
# params, P*k*c_in*c_out MACs. BatchNorm/LayerNorm: 2*c params, no MACs.


def _dense(i, o, bias=True):
    return i * o + (o if bias else 0), i * o


def _mlp(*widths):
    layers = [_dense(a, b) for a, b in itertools.pairwise(widths)]
    return sum(p for p, _ in layers), sum(m for _, m in layers)


def hand_lenet5():
    # conv1 20@5x5 on 28x28x1 -> 24x24x20; pool -> 12x12; conv2 50@5x5x20 -> 8x8x50; pool -> 4x4
    conv1 = (25 * 1 * 20 + 20, 24 * 24 * 20 * 25 * 1)
    conv2 = (25 * 20 * 50 + 50, 8 * 8 * 50 * 25 * 20)
    fc1 = _dense(4 * 4 * 50, 500)
    fc2 = _dense(500, 10)
    assert [conv1[1], conv2[1], fc1[1], fc2[1]] == [288_000, 1_600_000, 400_000, 5_000]
    layers = [conv1, conv2, fc1, fc2]
    return sum(p for p, _ in layers), sum(m for _, m in layers)


def hand_lenet5_classic():
    # 32x32x1 -> conv6 5x5 -> 28x28x6 -> pool 14 -> conv16 -> 10x10x16 -> pool 5 -> 400
    conv1 = (25 * 6 + 6, 28 * 28 * 6 * 25)
    conv2 = (25 * 6 * 16 + 16, 10 * 10 * 16 * 25 * 6)
    layers = [conv1, conv2, _dense(400, 120), _dense(120, 84), _dense(84, 10)]
    return sum(p for p, _ in layers), sum(m for _, m in layers)


def hand_mnist1d_cnn():
    # L_out = floor((L + 2*pad - k) / stride) + 1
    l1 = (40 + 2 - 5) // 2 + 1
    l2 = (l1 + 2 - 3) // 2 + 1
    l3 = (l2 + 2 - 3) // 2 + 1
    assert (l1, l2, l3) == (19, 10, 5)
    conv1 = (5 * 1 * 25 + 25, l1 * 25 * 5 * 1)
    conv2 = (3 * 25 * 25 + 25, l2 * 25 * 3 * 25)
    conv3 = (3 * 25 * 25 + 25, l3 * 25 * 3 * 25)
    fc = _dense(l3 * 25, 10)
    assert [conv1[1], conv2[1], conv3[1], fc[1]] == [2_375, 18_750, 9_375, 1_250]
    assert l3 * 25 == 125
    layers = [conv1, conv2, conv3, fc]
    return sum(p for p, _ in layers), sum(m for _, m in layers)


def hand_vgg_small():
    # (c_in, c_out, spatial size) of the eight 3x3 convs (no bias) + BN; pools halve the size
    convs = [(3, 32, 32), (32, 64, 16), (64, 128, 8), (128, 128, 8),
             (128, 256, 4), (256, 256, 4), (256, 256, 2), (256, 256, 2)]  # fmt: skip
    params = sum(9 * ci * co + 2 * co for ci, co, _ in convs) + 256 * 10 + 10
    macs = sum(s * s * co * 9 * ci for ci, co, s in convs) + 256 * 10
    return params, macs


def hand_resnet20(projection=True):
    params = 9 * 3 * 16 + 2 * 16  # stem conv + bn
    macs = 32 * 32 * 16 * 9 * 3
    c_in, size = 16, 32
    for width in (16, 32, 64):
        for b in range(3):
            stride = 2 if (width != 16 and b == 0) else 1
            size //= stride
            params += 9 * c_in * width + 2 * width + 9 * width * width + 2 * width
            macs += size * size * width * 9 * (c_in + width)
            if c_in != width and projection:
                params += c_in * width + 2 * width
                macs += size * size * width * c_in
            c_in = width
    return params + 64 * 10 + 10, macs + 64 * 10


def hand_resnet50():
    params = 49 * 3 * 64 + 2 * 64  # conv1 7x7/2 (224 -> 112) + bn1
    macs = 112 * 112 * 64 * 49 * 3
    size, c_in = 56, 64  # after 3x3/2 max pool with padding 1
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            in_size, size = size, size // stride
            out = 4 * width
            params += c_in * width + 2 * width  # conv1 1x1 + bn1 (at input resolution)
            macs += in_size * in_size * width * c_in
            params += 9 * width * width + 2 * width  # conv2 3x3, strided + bn2
            macs += size * size * width * 9 * width
            params += width * out + 2 * out  # conv3 1x1 + bn3
            macs += size * size * out * width
            if b == 0:  # downsample 1x1 conv (strided) + bn
                params += c_in * out + 2 * out
                macs += size * size * out * c_in
            c_in = out
    return params + 2048 * 1000 + 1000, macs + 2048 * 1000


def hand_mobilenet_small(alpha=1.0, image=32):
    def c(n):
        return max(1, int(n * alpha))

    params, macs = 9 * 3 * c(32) + 2 * c(32), image * image * c(32) * 27
    c_in, size = c(32), image
    for width, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
        width = c(width)
        size = (size + 2 - 3) // stride + 1
        params += 9 * c_in + 2 * c_in  # depthwise 3x3: one 3x3 filter per channel
        macs += size * size * c_in * 9
        params += c_in * width + 2 * width  # pointwise 1x1
        macs += size * size * width * c_in
        c_in = width
    return params + c_in * 10 + 10, macs + c_in * 10


def hand_tiny_transformer():
    vocab, t, d, heads, m, layers, classes = 256, 32, 64, 4, 256, 2, 10
    hd = d // heads
    params = vocab * d + t * d  # token + positional embeddings
    per_block_params = 2 * d + 4 * (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
    per_block_macs = (
        3 * t * d * d  # q, k, v projections
        + heads * t * t * hd  # q k^T
        + heads * t * t * hd  # softmax(.) v
        + t * d * d  # output projection
        + t * d * m
        + t * m * d  # MLP
    )
    params += layers * per_block_params + 2 * d + d * classes + classes
    return params, layers * per_block_macs + d * classes


HAND = {
    "lenet300": _mlp(784, 300, 100, 10),
    "lenet5": hand_lenet5(),
    "lenet5_classic": hand_lenet5_classic(),
    "mnist1d_mlp": _mlp(40, 100, 100, 10),
    "mnist1d_cnn": hand_mnist1d_cnn(),
    "lottery_mlp": _mlp(40, 500, 500, 10),
    "kd_teacher": _mlp(784, 1200, 1200, 10),
    "kd_student": _mlp(784, 800, 800, 10),
    "vgg_small": hand_vgg_small(),
    "resnet20": hand_resnet20(),
    "resnet50": hand_resnet50(),
    "mobilenet_small": hand_mobilenet_small(),
    "tiny_transformer": hand_tiny_transformer(),
}

# Numbers given in the specification / the literature.
PUBLISHED = {
    "lenet300": (266_610, 266_200),
    "lenet5": (431_080, 2_293_000),
    "lenet5_classic": (61_706, 416_520),
    "mnist1d_mlp": (15_210, 15_000),
    "mnist1d_cnn": (5_210, 31_750),
    "kd_teacher": (2_395_210, 2_392_800),
    "kd_student": (1_276_810, 1_275_200),
    "resnet50": (25_557_032, 4_089_184_256),  # torchvision resnet50
}


# ----------------------------------------------------------------------------- registry


def test_list_models():
    names = list_models()
    assert names == sorted(names)
    assert set(ALL) <= set(names)  # doctests may have registered extra examples


@pytest.mark.parametrize("name", ALL)
def test_expected_counts_match_hand_formulas(name):
    spec = get_model(name)
    assert (spec.expected_params, spec.expected_macs) == HAND[name]
    if name in PUBLISHED:
        assert HAND[name] == PUBLISHED[name]


def test_resnet_counts_are_in_the_published_range():
    p20, m20 = HAND["resnet20"]
    assert abs(p20 - 0.27e6) < 0.005e6 and abs(m20 - 40.8e6) < 0.05e6
    assert hand_resnet20(projection=False) == (269_722, 40_551_040)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError) as err:
        get_model("lenet")
    msg = str(err.value)
    assert "unknown model 'lenet'" in msg and "did you mean" in msg and "Available:" in msg
    suggestions = msg.split("did you mean")[1].split("?")[0]
    assert "'lenet5'" in suggestions and "'lenet300'" in suggestions
    assert "resnet50" in msg.split("Available:")[1]  # the full list follows
    with pytest.raises(ValueError, match="did you mean 'resnet20'"):
        get_model("resnet2O")


def test_unknown_override_raises_type_error():
    with pytest.raises(TypeError, match="'num_clases'"):
        get_model("lenet300", num_clases=5)
    with pytest.raises(TypeError, match="accepted overrides: .*num_classes"):
        get_model("resnet50", width=2)


def test_spec_is_frozen_and_make_gives_fresh_module():
    spec = get_model("lenet5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 3
    fresh = spec.make()
    assert fresh is not spec.module and fresh == spec.module
    assert spec.reference and "1506.02626" in spec.reference
    assert spec.nnx_factory is None and not spec.uses_batch_norm


def test_register_custom_model():
    import flax.linen as nn

    @register_model("_test_linear", input_shape=(3,), num_classes=2, description="test")
    def _test_linear(num_classes: int = 2):
        return nn.Dense(num_classes, name="fc")

    try:
        spec = get_model("_test_linear", num_classes=4)
        assert spec.num_classes == 4 and spec.expected_params is None
        v = spec.init(jax.random.key(0))
        assert spec.apply_fn(v, spec.example_input(5)).shape == (5, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_model("_test_linear", input_shape=(3,), num_classes=2, description="x")(
                _test_linear
            )
    finally:
        del _REGISTRY["_test_linear"]


# ----------------------------------------------------------------------------- counts of the real modules


@pytest.mark.parametrize("name", REAL)
def test_init_param_count_and_traced_macs(name):
    spec = spec_of(name)
    variables = real_variables(name)
    assert n_params(variables) == spec.expected_params
    assert ("batch_stats" in variables) == spec.uses_batch_norm
    assert traced_macs(spec, variables) == spec.expected_macs


def test_resnet50_abstract_init_counts_and_shapes():
    spec = get_model("resnet50")
    variables = spec.eval_init(batch_size=1)
    assert n_params(variables) == 25_557_032 == spec.expected_params
    assert traced_macs(spec, variables) == 4_089_184_256 == spec.expected_macs
    params = variables["params"]
    assert set(params) == {"conv1", "bn1", "fc"} | {
        f"stage{s + 1}_block{b}" for s, n in enumerate((3, 4, 6, 3)) for b in range(n)
    }
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
    assert "downsample_conv" in params["stage2_block0"]
    assert params["stage2_block0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(spec.apply_fn, variables, x)
    assert out.shape == (2, 1000)
    out, state = jax.eval_shape(
        lambda v, x: spec.apply_fn(v, x, True, return_state=True), variables, x
    )
    assert out.shape == (2, 1000) and set(state) == {"batch_stats"}


# ----------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize("name", REAL)
def test_forward_jit_shape(name):
    spec = spec_of(name)
    variables = real_variables(name)
    apply = jitted_apply(name)
    x = spec.example_input(3, key=jax.random.key(1))
    logits = apply(variables, x)
    assert logits.shape == (3, spec.num_classes)
    assert bool(jnp.all(jnp.isfinite(logits)))
    # eval mode is per-example: changing the other examples leaves example 0 alone
    x2 = x.at[1:].set(spec.example_input(2, key=jax.random.key(2)))
    np.testing.assert_allclose(apply(variables, x2)[0], logits[0], rtol=2e-4, atol=2e-5)


def test_batchnorm_train_and_eval_modes():
    spec = spec_of("resnet20")
    variables = real_variables("resnet20")
    apply = jitted_apply("resnet20")
    x = spec.example_input(3, key=jax.random.key(2))
    logits, state = apply(variables, x, train=True, return_state=True)
    assert logits.shape == (3, 10)
    old = variables["batch_stats"]["bn1"]["mean"]
    new = state["batch_stats"]["bn1"]["mean"]
    assert new.shape == old.shape and not np.allclose(new, old)
    # eval output (fresh running stats) differs from train mode (batch statistics)
    assert not np.allclose(apply(variables, x), logits)
    with pytest.raises(ValueError, match="batch_stats"):
        spec.apply_fn(variables["params"], x)
    # params-only is fine for models without BatchNorm
    lenet = spec_of("lenet300")
    lv = real_variables("lenet300")
    np.testing.assert_allclose(
        lenet.apply_fn(lv["params"], jnp.ones((1, 784))), lenet.apply_fn(lv, jnp.ones((1, 784)))
    )


def test_teacher_dropout():
    spec = get_model("kd_teacher", dropout=0.5)
    assert spec.expected_params == 2_395_210  # dropout adds no parameters
    variables = real_variables("kd_teacher")  # same tree as without dropout
    x = spec.example_input(2, key=jax.random.key(3))
    eval_out = spec.apply_fn(variables, x)
    np.testing.assert_allclose(eval_out, get_model("kd_teacher").apply_fn(variables, x))
    a = spec.apply_fn(variables, x, train=True, rng=jax.random.key(4))
    b = spec.apply_fn(variables, x, train=True, rng=jax.random.key(5))
    assert not np.allclose(a, b) and not np.allclose(a, eval_out)


def test_transformer_tokens():
    spec = get_model("tiny_transformer")
    assert spec.input_shape == (32,) and jnp.issubdtype(spec.input_dtype, jnp.integer)
    tokens = spec.example_input(4, key=jax.random.key(0))
    assert tokens.dtype == jnp.int32 and int(tokens.min()) >= 0 and int(tokens.max()) < 256
    params = real_variables("tiny_transformer")["params"]
    assert set(params["block0"]["attn"]) == {"query", "key", "value", "out"}
    # shorter sequences use a prefix of the positional table
    assert jax.eval_shape(spec.apply_fn, params, tokens[:, :10]).shape == (4, 10)


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("lenet300", {"num_classes": 5, "hidden": (64, 32)}),
        ("mnist1d_mlp", {"residual": False, "num_classes": 3}),
        ("lenet5", {"conv_relu": True, "num_classes": 7}),
        ("mnist1d_cnn", {"channels": 8}),
        ("vgg_small", {"cfg": (8, "M", 16, "M"), "num_classes": 4}),
        ("resnet20", {"shortcut": "pad"}),
        ("resnet20", {"widths": (8, 16, 32), "num_classes": 100}),
        ("mobilenet_small", {"alpha": 0.5, "image_size": 64}),
        ("tiny_transformer", {"d_model": 32, "num_heads": 2, "seq_len": 16, "num_layers": 1}),
    ],
)
def test_overrides_update_counts(name, overrides):
    spec = get_model(name, **overrides)
    variables = spec.eval_init(batch_size=1)
    assert n_params(variables) == spec.expected_params
    assert traced_macs(spec, variables) == spec.expected_macs
    out = jax.eval_shape(
        spec.apply_fn, variables, jax.ShapeDtypeStruct((2, *spec.input_shape), spec.input_dtype)
    )
    assert out.shape == (2, spec.num_classes)
    assert {**spec.config} == {**get_model(name).config, **overrides}


def test_override_counts_against_hand_formulas():
    assert get_model("resnet20", shortcut="pad").expected_params == hand_resnet20(False)[0]
    assert get_model("resnet20", shortcut="pad").expected_macs == hand_resnet20(False)[1]
    alpha_half = get_model("mobilenet_small", alpha=0.5, image_size=64)
    assert alpha_half.input_shape == (64, 64, 3)
    assert (alpha_half.expected_params, alpha_half.expected_macs) == hand_mobilenet_small(0.5, 64)
    assert get_model("lenet300", num_classes=100).expected_params == _mlp(784, 300, 100, 100)[0]


# ----------------------------------------------------------------------------- nnx twins


@pytest.mark.parametrize(
    "name, cls", [("lenet300", models.LeNet300NNX), ("mnist1d_mlp", models.MNIST1DMLPNNX)]
)
def test_nnx_matches_linen(name, cls):
    spec = get_model(name)
    for model in (spec.nnx_factory(rngs=nnx.Rngs(0)), cls(rngs=nnx.Rngs(0))):
        assert (
            sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
            == spec.expected_params
        )
    params = real_variables(name)["params"]
    model = models.load_params(cls(rngs=nnx.Rngs(7)), params)
    jax.tree.map(np.testing.assert_array_equal, models.params_dict(model), params)
    x = spec.example_input(4, key=jax.random.key(9))
    np.testing.assert_allclose(model(x), spec.apply_fn(params, x), rtol=1e-5, atol=1e-6)


def test_nnx_factory_follows_overrides_and_load_checks_shapes():
    spec = get_model("lottery_mlp", num_classes=3)
    model = spec.nnx_factory(rngs=nnx.Rngs(0))
    assert model(jnp.ones((1, 40))).shape == (1, 3)
    assert model.residual
    with pytest.raises(ValueError, match="shape mismatch"):
        models.load_params(
            models.LeNet300NNX(rngs=nnx.Rngs(0), num_classes=5),
            real_variables("lenet300")["params"],
        )
    with pytest.raises(ValueError, match="parameter trees differ"):
        models.load_params(
            models.LeNet300NNX(rngs=nnx.Rngs(0)), {"fc1": {"kernel": jnp.ones((784, 300))}}
        )
    assert [n for n in ALL if get_model(n).nnx_factory is not None] == [
        "kd_student", "kd_teacher", "lenet300", "lottery_mlp", "mnist1d_mlp"
    ]  # fmt: skip


# ----------------------------------------------------------------------------- override checks


@pytest.mark.parametrize(
    "name, overrides, exc, match",
    [
        ("lenet300", {"num_classes": -3}, ValueError, r"num_classes=-3 must be a positive"),
        ("resnet20", {"num_classes": 0}, ValueError, r"num_classes=0 must be a positive"),
        ("lenet300", {"num_classes": "10"}, TypeError, r"num_classes='10' must be an int"),
        ("lenet300", {"num_classes": 2.5}, TypeError, r"num_classes=2.5 must be an int"),
        ("lenet300", {"num_classes": True}, TypeError, r"num_classes=True must be an int"),
        ("lenet300", {"hidden": (300, 0)}, ValueError, r"hidden\[1\]=0 must be a positive"),
        ("lenet300", {"hidden": 300}, TypeError, r"hidden=300 must be a list or tuple"),
        ("lenet300", {"hidden": (300, "100")}, TypeError, r"hidden\[1\]='100' must be an int"),
        ("lenet300", {"dropout": 1.0}, ValueError, r"dropout=1.0 must lie in \[0.0, 1.0\)"),
        ("lenet300", {"dropout": float("nan")}, ValueError, r"dropout=nan must be finite"),
        ("lenet300", {"dropout": "0.5"}, TypeError, r"dropout='0.5' must be a real number"),
        ("mnist1d_cnn", {"channels": -1}, ValueError, r"channels=-1 must be a positive"),
        ("mnist1d_gru", {"hidden": 0}, ValueError, r"hidden=0 must be a positive"),
        ("mnist1d_gru", {"bidirectional": 1}, TypeError, r"bidirectional=1 must be a bool"),
        ("resnet20", {"widths": ()}, ValueError, r"widths=\(\) must not be empty"),
        ("resnet20", {"widths": (16, -32, 64)}, ValueError, r"widths\[1\]=-32 must be a positive"),
        ("resnet20", {"shortcut": None}, TypeError, r"shortcut=None must be a string"),
        ("vgg_small", {"cfg": (8, "X")}, ValueError, r"cfg\[1\]='X' must be one of 'M' or a"),
        ("vgg_small", {"cfg": (8, "M", 0)}, ValueError, r"cfg\[2\]=0 must be a positive"),
        ("mobilenet_small", {"alpha": 0.0}, ValueError, r"alpha=0.0 must lie in \(0.0, inf\)"),
        ("mobilenet_small", {"blocks": ((64,),)}, ValueError, r"blocks\[0\]=\(64,\) must have 2"),
        ("mobilenet_small", {"blocks": ((64, 0),)}, ValueError, r"blocks\[0\]\[1\]=0 must be a"),
        ("tiny_transformer", {"vocab_size": 0}, ValueError, r"vocab_size=0 must be a positive"),
        ("tiny_transformer", {"num_heads": -2}, ValueError, r"num_heads=-2 must be a positive"),
    ],
)
def test_invalid_overrides_name_the_override(name, overrides, exc, match):
    with pytest.raises(exc, match=rf"get_model\('{name}'\): override {match}"):
        get_model(name, **overrides)


def test_valid_override_forms_still_build():
    # lists for tuples, NumPy ints for ints, ints for floats, an empty hidden list (logistic)
    spec = get_model("lenet300", num_classes=np.int64(3), hidden=[8], dropout=0)
    assert spec.num_classes == 3 and type(spec.config["num_classes"]) is int
    assert spec.expected_params == 784 * 8 + 8 + 8 * 3 + 3
    assert get_model("mnist1d_mlp", hidden=[], residual=False).expected_params == 40 * 10 + 10
    assert get_model("mobilenet_small", alpha=1, blocks=[(32, 1), [64, 2]]).num_classes == 10
    assert get_model("vgg_small", cfg=[8, "M"]).config["cfg"] == [8, "M"]


def test_builder_errors_keep_their_type_with_a_note():
    with pytest.raises(ValueError, match="not divisible by num_heads") as err:
        get_model("tiny_transformer", d_model=30, num_heads=4)
    assert "while building model 'tiny_transformer'" in "".join(err.value.__notes__)
