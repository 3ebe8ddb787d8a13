"""Hand-counted MACs for jaxcomp.metrics.jaxpr_count (1 MAC = 2 FLOPs)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcomp.metrics.jaxpr_count import clean_scope, count_jaxpr, count_macs


def _count(fn, *args, param_groups=None):
    return count_jaxpr(jax.make_jaxpr(fn)(*args), param_groups=param_groups)


def _ops(res, kind=None):
    return [o for o in res.ops if kind is None or o.op == kind]


# -- dense / einsum ------------------------------------------------------------


def test_dense_layer():
    res = _count(
        lambda w, x: x @ w, jnp.ones((784, 300)), jnp.ones((8, 784)), param_groups=[0, None]
    )
    assert res.macs == 8 * 784 * 300
    (op,) = res.ops
    assert op.op == "dense" and op.weight_shape == (784, 300) and op.input_shape == (8, 784)
    assert op.weight_sources == (0,) and op.flops == 2 * op.macs


def test_weight_on_the_left_and_no_params():
    res = _count(lambda w, x: w @ x, jnp.ones((5, 7)), jnp.ones((7, 3)), param_groups=[0, None])
    assert res.macs == 5 * 7 * 3 and res.ops[0].weight_shape == (5, 7)
    res = _count(lambda a, b: a @ b, jnp.ones((5, 7)), jnp.ones((7, 3)))
    assert res.macs == 105 and res.ops[0].op == "einsum" and res.ops[0].weight_sources == ()


def test_einsum_attention_batch_dims():
    b, h, q, k, d = 2, 4, 16, 12, 8

    def attn(qs, ks, vs):
        s = jnp.einsum("bhqd,bhkd->bhqk", qs, ks)
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s), vs)

    res = _count(attn, jnp.ones((b, h, q, d)), jnp.ones((b, h, k, d)), jnp.ones((b, h, k, d)))
    ops = _ops(res)
    assert [o.op for o in ops] == ["einsum", "einsum"]
    assert ops[0].macs == b * h * q * k * d and ops[0].output_shape == (b, h, q, k)
    assert ops[1].macs == b * h * q * d * k and ops[1].output_shape == (b, h, q, d)
    assert res.macs == 2 * b * h * q * k * d


# -- convolutions ----------------------------------------------------------------


def _conv(x, w, **kw):
    kw.setdefault("dimension_numbers", ("NHWC", "HWIO", "NHWC"))
    kw.setdefault("window_strides", (1, 1))
    kw.setdefault("padding", "SAME")
    return lax.conv_general_dilated(x, w, **kw)


def test_depthwise_conv():
    x, w = jnp.ones((2, 10, 10, 16)), jnp.ones((3, 3, 1, 16))
    res = _count(lambda w, x: _conv(x, w, feature_group_count=16), w, x, param_groups=[0, None])
    assert res.macs == 2 * 10 * 10 * 16 * 9 * 1
    assert res.ops[0].op == "conv"


def test_grouped_conv():
    x, w = jnp.ones((2, 10, 10, 16)), jnp.ones((3, 3, 4, 32))
    res = _count(lambda w, x: _conv(x, w, feature_group_count=4), w, x, param_groups=[0, None])
    assert res.macs == 2 * 10 * 10 * 32 * (9 * 4)


def test_strided_dilated_same_conv_counts_padded_taps():
    # 11x11 input, 3x3 kernel dilated by 2 (5x5 field), stride 2, SAME -> 6x6 output.
    x, w = jnp.ones((1, 11, 11, 3)), jnp.ones((3, 3, 3, 8))
    f = lambda w, x: _conv(x, w, window_strides=(2, 2), rhs_dilation=(2, 2))
    res = _count(f, w, x, param_groups=[0, None])
    assert res.ops[0].output_shape == (1, 6, 6, 8)
    assert res.macs == 6 * 6 * 8 * 9 * 3


def test_nchw_oihw_layout():
    x, w = jnp.ones((2, 3, 8, 8)), jnp.ones((16, 3, 3, 3))
    f = lambda w, x: _conv(x, w, padding="VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    res = _count(f, w, x, param_groups=[0, None])
    assert res.ops[0].output_shape == (2, 16, 6, 6)
    assert res.macs == 2 * 16 * 6 * 6 * 27


def test_batch_group_conv():
    x, w = jnp.ones((4, 6, 6, 3)), jnp.ones((3, 3, 3, 8))
    res = _count(lambda x, w: _conv(x, w, padding="VALID", batch_group_count=2), x, w)
    assert res.ops[0].output_shape == (2, 4, 4, 8)
    assert res.macs == 2 * 4 * 4 * 8 * 27


def test_transposed_conv_counts_from_output():
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5))
    f = lambda w, x: lax.conv_transpose(
        x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    res = _count(f, w, x, param_groups=[0, None])
    assert res.ops[0].output_shape == (1, 8, 8, 5)
    assert res.macs == 8 * 8 * 5 * 9 * 2


def test_conv1d():
    x, w = jnp.ones((3, 40, 1)), jnp.ones((5, 1, 25))
    f = lambda w, x: lax.conv_general_dilated(
        x, w, (2,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
    )
    res = _count(f, w, x, param_groups=[0, None])
    assert res.macs == 3 * 18 * 25 * 5


# -- FFT and elementwise ---------------------------------------------------------


def test_fft_convention():
    res = _count(lambda x: jnp.fft.fft(x), jnp.ones((4, 64), jnp.complex64))
    assert res.fft_flops == 4 * 5 * 64 * 6
    assert res.macs == res.fft_flops // 2 and res.ops[0].op == "fft"
    res = _count(lambda x: jnp.fft.rfft(x), jnp.ones((4, 64)))
    assert res.fft_flops == int(4 * 2.5 * 64 * 6)
    res = _count(lambda x: jnp.fft.fft2(x), jnp.ones((3, 8, 16), jnp.complex64))
    n = 8 * 16
    assert res.fft_flops == round(3 * 5 * n * math.log2(n))


def test_elementwise_bucket_not_in_macs():
    res = _count(lambda x: jnp.tanh(x) + 1.0, jnp.ones((8, 32)))
    assert res.macs == 0 and res.elementwise_flops == 2 * 8 * 32


# -- control flow and calls ------------------------------------------------------


def test_scan_over_layers_counted_per_step():
    ws, x = jnp.ones((4, 32, 32)), jnp.ones((8, 32))

    def f(ws, x):
        def body(h, w):
            return jnp.tanh(h @ w), None

        return lax.scan(body, x, ws)[0]

    res = _count(f, ws, x, param_groups=[0, None])
    (op,) = res.ops
    assert op.multiplier == 4 and op.macs == 4 * 8 * 32 * 32 and res.macs == op.macs
    assert op.op == "dense" and op.weight_sources == (0,)


def test_fori_loop_static_bounds():
    w, x = jnp.ones((16, 16)), jnp.ones((2, 16))
    res = _count(
        lambda w, x: lax.fori_loop(0, 7, lambda i, h: h @ w, x), w, x, param_groups=[0, None]
    )
    assert res.macs == 7 * 2 * 16 * 16 and res.ops[0].multiplier == 7 and not res.warnings


@pytest.mark.parametrize(
    "cond, init, step, trips",
    [
        (lambda i: i < 5, 0, 1, 5),
        (lambda i: i <= 4, 0, 1, 5),
        (lambda i: i < 10, 1, 2, 5),
        (lambda i: 9 > i, 3, 3, 2),
        (lambda i: i > 0, 6, -2, 3),
        (lambda i: i < 0, 0, 1, 0),
    ],
)
def test_while_loop_static_trip_count(cond, init, step, trips):
    w, x = jnp.ones((8, 8)), jnp.ones((3, 8))

    def f(w, x):
        return lax.while_loop(lambda c: cond(c[0]), lambda c: (c[0] + step, c[1] @ w), (init, x))[1]

    res = _count(f, w, x, param_groups=[0, None])
    assert res.macs == trips * 3 * 8 * 8
    assert not res.warnings


def test_while_loop_bound_from_closure_constant():
    n = jnp.int32(6)
    w, x = jnp.ones((8, 8)), jnp.ones((3, 8))
    f = lambda w, x: lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] @ w), (0, x))[1]
    res = _count(f, w, x, param_groups=[0, None])
    assert res.macs == 6 * 3 * 8 * 8 and not res.warnings


def test_while_loop_dynamic_bound_counts_once_and_warns():
    w, x = jnp.ones((8, 8)), jnp.ones((3, 8))

    def f(w, x, n):
        return lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] @ w), (0, x))[1]

    res = _count(f, w, x, jnp.int32(5), param_groups=[0, None, None])
    assert res.macs == 3 * 8 * 8
    assert any("while loop" in s and "counted once" in s for s in res.warnings)


def test_fori_loop_with_traced_bounds_is_a_while():
    w, x = jnp.ones((8, 8)), jnp.ones((3, 8))
    f = lambda w, x, n: lax.fori_loop(0, n, lambda i, h: h @ w, x)
    res = _count(f, w, x, jnp.int32(4), param_groups=[0, None, None])
    assert res.macs == 3 * 8 * 8 and res.warnings


def test_cond_counts_max_branch():
    w1, w2, x = jnp.ones((32, 32)), jnp.ones((32, 64)), jnp.ones((8, 32))

    def f(w1, w2, x):
        return lax.cond(x.sum() > 0, lambda h: (h @ w1) @ w2, lambda h: h @ w2, x)

    res = _count(f, w1, w2, x, param_groups=[0, 1, None])
    assert res.macs == 8 * 32 * 32 + 8 * 32 * 64
    assert len(res.ops) == 2
    assert any("most expensive" in s for s in res.warnings)


def test_checkpoint_jit_and_custom_vjp():
    @jax.custom_vjp
    def mm(x, w):
        return x @ w

    mm.defvjp(lambda x, w: (mm(x, w), (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))

    @jax.custom_jvp
    def act(x):
        return jnp.tanh(x)

    act.defjvp(lambda p, t: (act(p[0]), t[0] * (1 - jnp.tanh(p[0]) ** 2)))

    def f(w, x):
        h = jax.checkpoint(lambda h: h @ w)(x)
        h = jax.jit(lambda h: h @ w)(h)
        return act(mm(h, w))

    w, x = jnp.ones((16, 16)), jnp.ones((4, 16))
    res = _count(f, w, x, param_groups=[0, None])
    assert res.macs == 3 * 4 * 16 * 16
    assert all(o.op == "dense" and o.weight_sources == (0,) for o in res.ops)


def test_weight_transform_is_separate():
    u, v, x = jnp.ones((64, 4)), jnp.ones((4, 32)), jnp.ones((2, 64))
    res = _count(lambda u, v, x: x @ (u @ v), u, v, x, param_groups=[0, 0, None])
    kinds = sorted(o.op for o in res.ops)
    assert kinds == ["dense", "weight_transform"]
    assert res.macs == 2 * 64 * 32 and res.weight_transform_macs == 64 * 4 * 32


def test_grad_counts_forward_and_backward():
    w, x = jnp.ones((16, 8)), jnp.ones((4, 16))
    g = jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)), argnums=(0, 1))
    res = _count(g, w, x, param_groups=[0, None])
    # forward, input gradient and weight gradient, each 4*16*8 MACs
    assert res.macs == 3 * 4 * 16 * 8


def test_scope_names_compose_through_jit_and_strip_wrappers():
    def f(x, w):
        with jax.named_scope("outer"):
            return jax.jit(lambda a, b: jax.named_call(lambda a, b: a @ b, name="inner")(a, b))(
                x, w
            )

    res = _count(f, jnp.ones((2, 3)), jnp.ones((3, 4)))
    assert res.ops[0].scope == "outer/inner"
    assert clean_scope("transpose(jvp(M))/block_0/Conv_0") == "M/block_0/Conv_0"


def test_count_macs_and_bad_groups():
    assert count_macs(lambda a, b: a @ b, jnp.ones((2, 3)), jnp.ones((3, 4))) == 24
    with pytest.raises(ValueError, match="param_groups"):
        count_jaxpr(jax.make_jaxpr(lambda a: a)(jnp.ones(2)), param_groups=[0, 1])


def test_density_evaluated_once_through_reshape_and_mask():
    w = jnp.asarray(np.arange(1, 65, dtype=np.float32).reshape(8, 8))
    mask = jnp.asarray((np.arange(64) % 4 == 0).reshape(8, 8), jnp.float32)
    x = jnp.ones((2, 8))
    cj = jax.make_jaxpr(lambda w, m, x: x @ (w * m).T.reshape(8, 8))(w, mask, x)
    res = count_jaxpr(cj, param_groups=[0, 1, None], values=[w, mask, x])
    (op,) = res.ops
    assert op.weight_sources == (0, 1)
    assert res.weight_density(op) == pytest.approx(0.25)


def test_shard_map_counts_all_shards():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("d",))
    f = jax.shard_map(lambda w, x: x @ w, mesh=mesh, in_specs=(P(), P("d")), out_specs=P("d"))
    x = jax.device_put(jnp.ones((2 * n, 4)), NamedSharding(mesh, P("d")))
    w = jax.device_put(jnp.ones((4, 6)), NamedSharding(mesh, P()))
    res = _count(f, w, x, param_groups=[0, None])
    assert res.macs == 2 * n * 4 * 6 and res.ops[0].multiplier == n and not res.warnings


def test_while_loop_bound_in_invariant_carry():
    # The older fori_loop lowering: (i, upper, x) carried, upper passed through unchanged.
    w, x = jnp.ones((8, 8)), jnp.ones((3, 8))

    def f(w, x):
        body = lambda c: (c[0] + 1, c[1], c[2] @ w)
        return lax.while_loop(lambda c: c[0] < c[1], body, (0, 5, x))[2]

    res = _count(f, w, x, param_groups=[0, None])
    assert res.macs == 5 * 3 * 8 * 8 and not res.warnings
