"""Tests for jaxcomp.metrics.analyze (hand counts; 1 MAC = 2 FLOPs)."""

import functools
import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from rich.table import Table

from jaxcomp.core.info import LeafInfo
from jaxcomp.core.leaves import Codebook, LowRank, QArray, materialize
from jaxcomp.metrics.analyze import Analysis, analyze
from jaxcomp.metrics.report import format_bytes, format_count, render_text
from jaxcomp.metrics.xla import MemoryStats, normalize_cost_analysis

SIZES = (784, 300, 100, 10)
DENSE_MACS = 784 * 300 + 300 * 100 + 100 * 10  # 266,200


def _mlp_params(key=0):
    keys = jax.random.split(jax.random.key(key), len(SIZES) - 1)
    return {
        f"Dense_{i}": {
            "kernel": jax.random.normal(k, (a, b)) + 3.0,  # no accidental zeros
            "bias": jnp.zeros((b,)),
        }
        for i, (k, a, b) in enumerate(zip(keys, SIZES[:-1], SIZES[1:]))
    }


def _mlp(params, x):
    for i in range(len(SIZES) - 1):
        layer = params[f"Dense_{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        if i < len(SIZES) - 2:
            x = jax.nn.relu(x)
    return x


def _mask_90(shape, seed):
    """Exactly 90% zeros (sizes here are multiples of 10)."""
    n = int(np.prod(shape))
    flat = np.zeros(n, np.float32)
    keep = np.random.default_rng(seed).permutation(n)[: n // 10]
    flat[keep] = 1.0
    return jnp.asarray(flat.reshape(shape))


def _masks():
    return {
        f"Dense_{i}": {"kernel": _mask_90((a, b), i)}
        for i, (a, b) in enumerate(itertools.pairwise(SIZES))
    }


X = jnp.ones((1, 784))


# -- dense counts and sparsity -------------------------------------------------------


def test_dense_mlp_counts_and_paths():
    a = analyze(_mlp, _mlp_params(), X, compile=False)
    assert isinstance(a, Analysis)
    assert a.macs == DENSE_MACS and a.flops == 2 * DENSE_MACS
    assert a.effective_macs == pytest.approx(DENSE_MACS)
    assert [l.weight_path for l in a.layers] == [f"Dense_{i}/kernel" for i in range(3)]
    assert [l.name for l in a.layers] == ["Dense_0", "Dense_1", "Dense_2"]
    assert all(l.op == "dense" and l.density == 1.0 for l in a.layers)
    assert a.bops == pytest.approx(DENSE_MACS * 32 * 32)
    assert a.xla_flops is None and a.memory is None and a.compile_seconds is None


def test_masked_params_zeroed_outside():
    params, masks = _mlp_params(), _masks()
    pruned = jax.tree.map(
        lambda p, m: p * m, {k: {"kernel": v["kernel"]} for k, v in params.items()}, masks
    )
    for k in params:
        pruned[k]["bias"] = params[k]["bias"]
    a = analyze(_mlp, pruned, X, compile=False)
    assert a.macs == DENSE_MACS
    assert abs(a.effective_macs - 0.1 * DENSE_MACS) <= 0.01 * 0.1 * DENSE_MACS
    assert all(l.density == pytest.approx(0.1) for l in a.layers)


def test_mask_applied_inside_fn_as_second_params_arg():
    params, masks = _mlp_params(), _masks()

    def fn(p, m, x):
        p = {k: {"kernel": v["kernel"] * m[k]["kernel"], "bias": v["bias"]} for k, v in p.items()}
        return _mlp(p, x)

    a = analyze(fn, params, masks, X, params_argnums=(0, 1), compile=False)
    assert a.macs == DENSE_MACS
    assert a.effective_macs == pytest.approx(0.1 * DENSE_MACS, rel=0.01)
    assert [l.weight_path for l in a.layers] == [f"0/Dense_{i}/kernel" for i in range(3)]


def test_mask_as_closure_constant():
    params, masks = _mlp_params(), _masks()

    def fn(p, x):
        p = {
            k: {"kernel": v["kernel"] * masks[k]["kernel"], "bias": v["bias"]} for k, v in p.items()
        }
        return _mlp(p, x)

    a = analyze(fn, params, X, compile=False)
    assert a.effective_macs == pytest.approx(0.1 * DENSE_MACS, rel=0.01)


def test_compression_info_overrides_density_and_bits():
    info = {"Dense_0/kernel": LeafInfo(density=0.5, weight_bits=8, act_bits=8)}
    a = analyze(_mlp, _mlp_params(), X, compression=info, compile=False)
    l0 = a.layers[0]
    assert (l0.density, l0.weight_bits, l0.act_bits) == (0.5, 8, 8)
    assert l0.effective_macs == pytest.approx(0.5 * 784 * 300)
    assert l0.bops == pytest.approx(0.5 * 784 * 300 * 64)
    assert a.layers[1].density == 1.0 and a.layers[1].weight_bits == 32


def test_compression_state_object_and_suffix_paths():
    class FakeState:
        def __jaxcomp_info__(self):
            return {"Dense_1/kernel": LeafInfo(compute_fraction=0.25)}

    variables = {"params": _mlp_params()}
    a = analyze(
        lambda v, x: _mlp(v["params"], x), variables, X, compression=(FakeState(),), compile=False
    )
    l1 = a.layers[1]
    assert l1.weight_path == "params/Dense_1/kernel" and l1.compute_fraction == 0.25
    assert l1.effective_macs == pytest.approx(0.25 * 300 * 100)


# -- compressed leaves ---------------------------------------------------------------


def test_lowrank_leaf_effective_macs_by_rank_fraction():
    r = 10
    u = jax.random.normal(jax.random.key(1), (784, r))
    v = jax.random.normal(jax.random.key(2), (r, 300))
    params = {"w": LowRank(u, v)}
    a = analyze(lambda p, x: x @ materialize(p)["w"], params, jnp.ones((4, 784)), compile=False)
    dense = [l for l in a.layers if l.op == "dense"]
    wt = [l for l in a.layers if l.op == "weight_transform"]
    assert len(dense) == 1 and len(wt) == 1
    frac = r * (784 + 300) / (784 * 300)
    assert dense[0].weight_path == "w" and dense[0].compute_fraction == pytest.approx(frac)
    assert a.macs == 4 * 784 * 300
    assert a.effective_macs == pytest.approx(4 * 784 * 300 * frac)
    assert a.weight_transform_macs == 784 * r * 300


def test_qarray_bits_give_bops():
    values = jnp.asarray(np.random.default_rng(0).integers(1, 8, (64, 32)), jnp.int8)
    q = QArray(values, jnp.float32(0.1), jnp.int8(0), bits=4)
    a = analyze(lambda p, x: x @ materialize(p)["w"], {"w": q}, jnp.ones((2, 64)), compile=False)
    (l,) = a.layers
    assert (l.weight_bits, l.act_bits, l.density) == (4, 32, 1.0)
    assert a.bops == pytest.approx(a.macs * 4 * 32) and a.macs == 2 * 64 * 32


def test_codebook_index_bits():
    c = Codebook(jnp.array([0.5, -1.0, 2.0, 3.0]), jnp.asarray(np.arange(48).reshape(6, 8) % 4))
    a = analyze(lambda p, x: x @ materialize(p)["w"], {"w": c}, jnp.ones((1, 6)), compile=False)
    assert a.layers[0].weight_bits == 2 and a.bops == pytest.approx(48 * 2 * 32)


# -- conv and loops through analyze --------------------------------------------------


def test_conv_depthwise_and_scan_through_analyze():
    def fn(p, x):
        x = lax.conv_general_dilated(
            x,
            p["dw"],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=8,
        )
        h = x.reshape(x.shape[0], -1)[:, :16]
        return lax.scan(lambda h, w: (jnp.tanh(h @ w), None), h, p["stack"])[0]

    stack = jnp.ones((4, 16, 16)).at[:2].set(0.0)  # half the stacked layers are pruned
    p = {"dw": jnp.ones((3, 3, 1, 8)), "stack": stack}
    a = analyze(fn, p, jnp.ones((2, 5, 5, 8)), compile=False)
    conv, dense = a.layers
    assert conv.op == "conv" and conv.macs == 2 * 5 * 5 * 8 * 9
    assert dense.multiplier == 4 and dense.macs == 4 * 2 * 16 * 16 and dense.weight_path == "stack"
    assert dense.density == pytest.approx(0.5)


def test_weight_indexed_by_loop_counter_density_unknown_warns():
    def fn(p, x):
        return lax.fori_loop(0, 3, lambda i, h: h @ p[i], x)

    a = analyze(fn, jnp.zeros((3, 8, 8)), jnp.ones((2, 8)), compile=False)
    assert a.macs == 3 * 2 * 8 * 8 and a.layers[0].density == 1.0
    assert any("density could not be evaluated" in w for w in a.warnings)


# -- flax -----------------------------------------------------------------------------


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3))(x)
        return nn.Dense(3)(nn.relu(x))


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        return _Block(name="block_0")(x)


def test_flax_linen_layer_names_are_module_paths():
    m, x = _Net(), jnp.ones((1, 8, 8, 3))
    variables = m.init(jax.random.key(0), x)
    a = analyze(m.apply, variables, x, compile=False)
    assert [l.name for l in a.layers] == ["conv1", "block_0/Conv_0", "block_0/Dense_0"]
    assert [l.scope for l in a.layers] == [
        "_Net/conv1",
        "_Net/block_0/Conv_0",
        "_Net/block_0/Dense_0",
    ]
    assert a.layers[0].weight_path == "params/conv1/kernel"
    assert a.macs == 64 * 4 * 27 + 64 * 4 * 36 + 64 * 3 * 4


def test_flax_nnx_layers_named_by_weight_path():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.linear1 = nnx.Linear(8, 16, rngs=rngs)
            self.linear2 = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.linear2(nnx.relu(self.linear1(x)))

    graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
    a = analyze(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((2, 8)), compile=False)
    assert [l.name for l in a.layers] == ["linear1", "linear2"]
    assert a.macs == 2 * (8 * 16 + 16 * 4)


# -- XLA, serialisation, report ----------------------------------------------------------


def test_xla_fields_and_json_round_trip():
    a = analyze(_mlp, _mlp_params(), X)
    for v in (a.xla_flops, a.xla_bytes_accessed):
        assert v is None or (isinstance(v, float) and v >= 0)
    assert a.compile_seconds is not None and a.compile_seconds > 0
    if a.memory is not None:
        m = a.memory
        assert isinstance(m, MemoryStats)
        assert m.peak_bytes == m.argument_bytes + m.output_bytes - m.alias_bytes + m.temp_bytes
    d = json.loads(a.to_json())
    assert d["macs"] == DENSE_MACS and d["flops"] == 2 * DENSE_MACS
    assert d["convention"] == "1 MAC = 2 FLOPs"
    assert (
        d["layers"][0]["weight_path"] == "Dense_0/kernel"
        and d["layers"][0]["flops"] == 2 * 784 * 300
    )
    assert d == a.to_dict()


def test_table_and_str():
    a = analyze(_mlp, _mlp_params(), X, compile=False)
    t = a.table()
    assert isinstance(t, Table) and "1 MAC = 2 FLOPs" in str(t.title)
    s = str(a)
    assert "1 MAC = 2 FLOPs" in s and "Dense_1" in s and "266 K" in s
    short = a.table(max_rows=1)
    assert len(short.rows) == 2 and "2 more" in render_text(short)


def test_format_helpers():
    assert format_count(4_089_184_256) == "4.09 G"
    assert format_count(266_200) == "266 K"
    assert format_count(999_999) == "1 M"
    assert format_count(12) == "12" and format_count(None) == "-"
    assert format_bytes(2048) == "2 KiB"
    assert normalize_cost_analysis([{"flops": 1.0}, {"flops": 2.0, "x": -1}]) == {"flops": 3.0}
    assert normalize_cost_analysis({"flops": 5}) == {"flops": 5.0}


def test_abstract_args_give_unknown_density():
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), _mlp_params())
    a = analyze(_mlp, params, jax.ShapeDtypeStruct((1, 784), jnp.float32))
    assert a.macs == DENSE_MACS and all(l.density == 1.0 for l in a.layers)
    assert any("abstract" in w for w in a.warnings)


def test_weight_transform_only_warns():
    a = analyze(lambda p: p @ jnp.ones((4, 4)), jnp.ones((2, 4)), params_argnums=0, compile=False)
    assert a.macs == 0 and a.weight_transform_macs == 32
    assert any("pass the inputs as arguments" in w for w in a.warnings)


def test_default_params_argnums():
    a = analyze(lambda x: x @ x.T, jnp.ones((3, 5)), compile=False)
    assert a.macs == 45 and a.layers[0].op == "einsum" and a.layers[0].weight_path is None


# -- errors --------------------------------------------------------------------------


def test_errors():
    with pytest.raises(TypeError, match="callable"):
        analyze(3, jnp.ones(2))

    def branchy(p, x):
        if x.sum() > 0:  # Python control flow on a tracer
            return x @ p
        return x

    with pytest.raises(ValueError, match="could not trace") as e:
        analyze(branchy, jnp.ones((2, 2)), jnp.ones((1, 2)))
    assert "functools.partial" in str(e.value) and e.value.__cause__ is not None

    with pytest.raises(ValueError, match="could not trace"):
        analyze(lambda p, x: x @ p, jnp.ones((3, 2)), jnp.ones((1, 2)))

    with pytest.raises(ValueError, match="out of range"):
        analyze(_mlp, _mlp_params(), X, params_argnums=2)

    with pytest.raises(ValueError, match="Dense_0/kernel") as e:
        analyze(_mlp, _mlp_params(), X, compression={"Dense_9/kernel": LeafInfo(density=0.5)})
    assert "available paths" in str(e.value)

    with pytest.raises(ValueError, match="params_argnums"):
        analyze(lambda x: x @ x, jnp.ones((2, 2)), compression={"w": LeafInfo(density=0.5)})


def test_static_args_via_partial():
    def fn(p, x, act):
        return getattr(jax.nn, act)(x @ p)

    a = analyze(
        functools.partial(fn, act="relu"), jnp.ones((4, 3)), jnp.ones((2, 4)), compile=False
    )
    assert a.macs == 24


def test_scan_masks_applied_per_step_evaluated_over_all_steps():
    ws = jnp.ones((4, 8, 8)) * 2.0
    masks = jnp.zeros((4, 8, 8)).at[:, :2].set(1.0)  # 25% kept in every step

    def fn(p, x):
        return lax.scan(lambda h, wm: (h @ (wm[0] * wm[1]), None), x, (p["w"], p["mask"]))[0]

    a = analyze(fn, {"w": ws, "mask": masks}, jnp.ones((2, 8)), compile=False)
    (l,) = a.layers
    assert l.multiplier == 4 and l.weight_path == "w"
    assert l.density == pytest.approx(0.25) and not a.warnings
    assert a.effective_macs == pytest.approx(0.25 * 4 * 2 * 8 * 8)
