"""jaxcomp.quant.sharing.trained: trained quantization against hand computations and finite differences."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxcomp as jc
import jaxcomp.prune as jp
from jaxcomp.metrics import StorageSpec, model_size_bytes
from jaxcomp.quant.sharing.model_file import decode_model, encode_model, export_model, load_model
from jaxcomp.quant.sharing.trained import (
    WeightSharingState,
    shared_codebooks,
    shared_view,
    weight_sharing,
)

# clusters: 0 = {1.0, 1.2, 1.4}, 1 = {-2.0, -2.2}, 2 = {0.5}, 3 empty; the zero is pruned (4)
W = np.array([[1.0, -2.0, 0.0], [1.2, 0.5, -2.2], [1.4, 0.0, 0.0]], np.float32)
IDX = np.array([[0, 1, 4], [0, 2, 1], [0, 4, 4]], np.int32)
G = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], np.float32)


def _hand_state():
    return WeightSharingState({"w": jnp.asarray(IDX)}, {"w": jnp.zeros(4, jnp.float32)})


def test_view_and_gradient_by_hand():
    comp, state = weight_sharing(2), _hand_state()
    p = {"w": jnp.asarray(W)}
    view = np.asarray(comp.apply(p, state)["w"])
    np.testing.assert_allclose(view, [[1.2, -2.1, 0.0], [1.2, 0.5, -2.1], [1.2, 0.0, 0.0]],
                               rtol=1e-6)
    loss = lambda p: jnp.sum(comp.apply(p, state)["w"] * G)
    for grad in (jax.grad(loss), jax.jit(jax.grad(loss))):
        g = np.asarray(grad(p)["w"])
        # cluster 0: 1 + 4 + 7 = 12; cluster 1: 2 + 6 = 8; cluster 2: 5; pruned: 0
        np.testing.assert_array_equal(g, [[12.0, 8.0, 0.0], [12.0, 5.0, 8.0], [12.0, 0.0, 0.0]])


def test_gradient_is_cluster_size_times_the_mean_derivative():
    """Finite differences of the view give G_k / n_k per member; the VJP gives G_k."""
    state = _hand_state()
    w = jnp.asarray(W)
    f = lambda w: float(jnp.sum(weight_sharing(2).apply({"w": w}, state)["w"] * G))
    sizes = np.array([[3, 2, 1], [3, 1, 2], [3, 1, 1]], np.float32)
    fd = np.zeros_like(W)
    eps = 1e-2
    for i in range(3):
        for j in range(3):
            if W[i, j] == 0:
                continue
            d = np.zeros_like(W)
            d[i, j] = eps
            fd[i, j] = (f(w + d) - f(w - d)) / (2 * eps)
    vjp = np.asarray(jax.grad(lambda w: jnp.sum(shared_view(w, IDX, 4) * G))(w))
    np.testing.assert_allclose(vjp, fd * sizes, rtol=2e-3, atol=1e-3)


def test_sgd_moves_centroids_by_the_summed_gradient():
    comp, state = weight_sharing(2), _hand_state()
    p = {"w": jnp.asarray(W)}
    p = comp.project(p, state)  # tie the stored weights to their centroids
    lr = 0.05
    tx = optax.chain(optax.sgd(lr), jc.keep_compressed(comp))
    opt = tx.init(p)
    loss = lambda p: jnp.sum(comp.apply(p, state)["w"] * G)
    step = jax.jit(lambda p, opt: _step(tx, loss, p, opt, state))
    p, opt = step(p, opt)
    c = np.array([1.2 - lr * 12.0, -2.1 - lr * 8.0, 0.5 - lr * 5.0], np.float32)
    want = np.array([[c[0], c[1], 0.0], [c[0], c[2], c[1]], [c[0], 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(p["w"]), want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(comp.apply(p, state)["w"]), np.asarray(p["w"]))


def _step(tx, loss, p, opt, state):
    g = jax.grad(loss)(p)
    u, opt = tx.update(g, opt, p, compressor_state=state)
    return optax.apply_updates(p, u), opt


@pytest.fixture(scope="module")
def trained():
    """chain(pruning, sharing) trained for 3 Adam steps: (comp, state, stored params, start)."""
    k = jax.random.split(jax.random.key(0), 3)
    params = {"a": {"kernel": jax.random.normal(k[0], (16, 8))},
              "b": {"kernel": jax.random.normal(k[1], (8, 4)).astype(jnp.bfloat16),
                    "bias": jnp.zeros(4)}}
    x = jax.random.normal(k[2], (5, 16))
    comp = jc.chain(jp.magnitude_pruning(0.5), weight_sharing(2))
    state = comp.init(params)
    tx = optax.chain(optax.adam(1e-2), jc.keep_compressed(comp))
    params = comp.project(params, state)
    opt = tx.init(params)

    def loss(p):
        v = comp.apply(p, state)
        h = jnp.tanh(x @ v["a"]["kernel"])
        return jnp.sum((h @ v["b"]["kernel"].astype(jnp.float32) + v["b"]["bias"]) ** 2)

    step = jax.jit(lambda p, opt: _step(tx, loss, p, opt, state))
    start = jax.tree.map(np.asarray, params)
    for _ in range(3):
        params, opt = step(params, opt)
    return comp, state, params, start


def test_adam_keeps_members_tied_and_zeros_zero_after_pruning(trained):
    """chain(pruning, sharing): clusters form on the surviving weights; training keeps the
    pruned weights at zero and every cluster's members equal (float32 and bfloat16)."""
    comp, state, params, start = trained
    view = comp.apply(params, state)
    masks, shared = state[0].masks, state[1]
    for name in ("a", "b"):
        w = np.asarray(params[name]["kernel"]).astype(np.float32)
        np.testing.assert_array_equal(w, np.asarray(view[name]["kernel"]).astype(np.float32))
        assert view[name]["kernel"].dtype == params[name]["kernel"].dtype
        m = np.asarray(masks[name]["kernel"])
        assert np.all(w[~m] == 0) and np.all(w[m] != 0)
        idx = np.asarray(shared.indices[name]["kernel"])
        assert np.all(idx[~m] == 4) and np.all(idx[m] < 4)
        for j in range(4):  # tied members, moved by training
            if (idx == j).any():
                assert len(np.unique(w[idx == j])) == 1
        assert not np.array_equal(w, start[name]["kernel"].astype(np.float32))
    info = jc.compression_info(state)
    assert info["a/kernel"].weight_bits == 2 and info["a/kernel"].density == 0.5
    assert "b/bias" not in info


def test_trained_pruned_shared_model_exports_to_a_file(trained, tmp_path):
    """Deep Compression's storage: relative indices, 2-bit shared values + the filler zero
    (5 codes), Huffman; the file is model_size_bytes to the byte and loads back exactly."""
    comp, state, params, _ = trained
    view = jax.tree.map(np.asarray, comp.apply(params, state))
    spec = [(r"a/kernel", StorageSpec(format="relative", codebook=5, index_bits=2,
                                      huffman=True)),
            (r"b/kernel", StorageSpec(format="relative", codebook=5, index_bits=2,
                                      codebook_bits=16, huffman=True))]
    path = tmp_path / "model.bin"
    rep = export_model(view, path, spec)
    assert os.path.getsize(path) == rep.total_bytes == model_size_bytes(view, spec).total_bytes
    back = load_model(path, view, spec)
    for name, leaf in (("a", "kernel"), ("b", "kernel"), ("b", "bias")):
        assert back[name][leaf].dtype == view[name][leaf].dtype
        np.testing.assert_array_equal(back[name][leaf], view[name][leaf])
    # the Codebook form of the same weights (dense indices, the zero as a fifth centroid)
    books = shared_codebooks(view, state[1])
    data, rep2 = encode_model(books)
    assert rep2.row("a/kernel").total_bits == 16 * 8 * 3 + 5 * 32 and len(data) == rep2.total_bytes
    np.testing.assert_array_equal(
        np.asarray(jc.materialize(decode_model(data, books))["a"]["kernel"]), view["a"]["kernel"])


@given(hnp.arrays(np.float32, (6, 8),
                  elements=st.floats(-3, 3, width=32, allow_subnormal=False)))
def test_property_view_shares_values_and_keeps_zeros(w):
    s = _INIT(w)
    v = np.asarray(_APPLY(w, s))
    assert np.all((v == 0) == (w == 0))
    assert len(np.unique(v[w != 0])) <= 4
    # the view is a fixed point: sharing it again changes nothing
    np.testing.assert_allclose(np.asarray(_APPLY(v, s)), v, rtol=1e-6)


_COMP = weight_sharing(2, where=True)
_INIT = jax.jit(lambda w: _COMP.init({"w": w}))
_APPLY = jax.jit(lambda w, s: _COMP.apply({"w": w}, s)["w"])


def test_shared_codebooks_materialize_to_the_view():
    comp, state = weight_sharing(2), _hand_state()
    p = {"w": jnp.asarray(W), "b": jnp.ones(3)}
    state = WeightSharingState({"w": jnp.asarray(IDX), "b": jc.MaskedNode()},
                               {"w": jnp.zeros(4), "b": jc.MaskedNode()})
    tree = shared_codebooks(p, state)
    cb = tree["w"]
    assert isinstance(cb, jc.Codebook) and cb.num_clusters == 5 and cb.index_bits == 3
    assert float(cb.centroids[4]) == 0.0 and tree["b"] is p["b"]
    np.testing.assert_array_equal(np.asarray(jc.materialize(tree)["w"]),
                                  np.asarray(comp.apply(p, state)["w"]))
    # no pruned weight: no extra centroid
    dense = {"w": jnp.asarray(np.where(W == 0, 3.0, W))}
    s2 = weight_sharing(2).init(dense)
    assert shared_codebooks(dense, s2)["w"].num_clusters == 4


def test_bad_input_errors():
    p = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"weight_sharing: bits=0 is outside \[1, 16\]"):
        weight_sharing(0)
    with pytest.raises(TypeError, match="bits must be a Python int"):
        weight_sharing(2.5)
    with pytest.raises(ValueError, match="init='kmeans' must be one of"):
        weight_sharing(2, init="kmeans")
    with pytest.raises(ValueError, match="init='random' needs key="):
        weight_sharing(2, init="random")
    with pytest.raises(ValueError, match="n_iter must be an int >= 0"):
        weight_sharing(2, n_iter=-1)
    with pytest.raises(ValueError, match=r"bits\['.\*'\]=20 is outside"):
        weight_sharing({".*": 20}).init(p)
    with pytest.raises(ValueError, match="'w' holds NaN or Inf"):
        weight_sharing(2).init({"w": jnp.array([[1.0, jnp.nan], [0.0, 1.0]])})
    with pytest.raises(ValueError, match="where='kernel' matches no parameter"):
        weight_sharing(2, where="kernel").init(p)
    with pytest.raises(TypeError, match="'w' has dtype int32"):
        weight_sharing(2, where="w").init({"w": jnp.ones((2, 2), jnp.int32)})
    with pytest.raises(TypeError, match="is a Codebook"):
        weight_sharing(2, where="w").init({"w": jc.Codebook(jnp.zeros(2), jnp.zeros((2, 2),
                                                                                    jnp.int32))})
    comp = weight_sharing(2)
    s = comp.init(p)
    with pytest.raises(ValueError, match="the state's indices"):
        comp.apply({"v": jnp.ones((2, 2)), "b": jnp.ones(2)}, s)
    with pytest.raises(ValueError, match="k must be a positive Python int"):
        shared_view(jnp.ones(2), jnp.zeros(2, jnp.int32), 0)
    with pytest.raises(ValueError, match="indices of shape"):
        shared_view(jnp.ones(2), jnp.zeros(3, jnp.int32), 2)
    with pytest.raises(TypeError, match="indices must be integers"):
        shared_view(jnp.ones(2), jnp.zeros(2), 2)
    with pytest.raises(TypeError, match="state must be a WeightSharingState"):
        shared_codebooks(p, (s,))
