"""jaxcomp.quant.sharing.kmeans: 1-D k-means against scikit-learn, numpy and brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from jaxcomp.quant.sharing.kmeans import kmeans_1d, kmeans_init, kmeans_objective, kmeans_quantize

N = 1000


def _data(kind, seed=0):
    r = np.random.default_rng(seed)
    if kind == "normal":
        return r.normal(size=N).astype(np.float32)
    if kind == "laplace":
        return r.laplace(size=N).astype(np.float32)
    # a trained-layer-like bimodal mixture
    return np.concatenate([r.normal(-0.5, 0.1, N // 2), r.normal(0.3, 0.2, N - N // 2)]
                          ).astype(np.float32)


def _sse(x, c, lab):
    return float(((x.astype(np.float64) - np.asarray(c, np.float64)[lab]) ** 2).sum())


_JIT = {}


def _km(init, k, n_iter=30, n_init=1):
    """kmeans_1d jitted once per static configuration: f(x, mask, key)."""
    return _JIT.setdefault((init, k, n_iter, n_init), jax.jit(
        lambda x, mask, key: kmeans_1d(x, k=k, init=init, key=key, n_iter=n_iter,
                                       n_init=n_init, mask=mask)))


def _init7(init):
    """kmeans_init(k=7) jitted once per init: f(x, mask, key)."""
    return _JIT.setdefault((init, 7), jax.jit(
        lambda x, mask, key: kmeans_init(x, k=7, init=init, key=key, mask=mask)))


ALL = np.ones(N, bool)


def _sklearn(x, k, **kw):
    with threadpool_limits(1):
        return KMeans(n_clusters=k, **kw).fit(x[:, None].astype(np.float64))


@pytest.mark.parametrize("kind", ["normal", "laplace", "mixture"])
def test_objective_no_worse_than_sklearn(kind):
    """Same data, same init count (3 k-means++ restarts): mean SSE over 4 seeds within 1%."""
    x = _data(kind)
    sk = [_sklearn(x, 16, n_init=3, random_state=s).inertia_ for s in range(4)]
    ours = []
    for s in range(4):
        c, lab = _km("kmeans++", 16, 60, 3)(x, None, jax.random.key(s))
        ours.append(_sse(x, np.asarray(c), np.asarray(lab)))
    assert float(kmeans_objective(x, c, lab)) == pytest.approx(ours[-1], rel=1e-4)
    assert np.mean(ours) <= 1.01 * np.mean(sk), (ours, sk)


def test_same_start_same_lloyd_as_sklearn():
    """From the same initial centroids, Lloyd's iterations (empty clusters relocated as
    scikit-learn does) give sklearn's centroids and objective."""
    x = _data("normal", seed=3)
    x[0] = 20.0  # an outlier: linear init leaves the centroids between 5 and 16 without members
    c0 = np.asarray(_init7("linear")(x, ALL, None))
    assert len(np.unique(np.abs(x[:, None] - c0[None, :]).argmin(1))) < 7
    c, lab = _km("linear", 7)(x, ALL, None)
    sk = _sklearn(x, 7, init=c0[:, None].astype(np.float64), n_init=1, max_iter=30, tol=0.0,
                  algorithm="lloyd")
    np.testing.assert_allclose(np.asarray(c), np.sort(sk.cluster_centers_[:, 0]), rtol=1e-4,
                               atol=1e-5)
    assert _sse(x, np.asarray(c), np.asarray(lab)) == pytest.approx(sk.inertia_, rel=1e-5)


def test_inits_match_numpy():
    x = _data("laplace", seed=1)
    np.testing.assert_allclose(np.asarray(_init7("linear")(x, ALL, None)),
                               np.linspace(x.min(), x.max(), 7), rtol=1e-6, atol=1e-6)
    q = (np.arange(7) + 0.5) / 7
    np.testing.assert_allclose(np.asarray(_init7("density")(x, ALL, None)),
                               np.quantile(x.astype(np.float64), q), rtol=1e-5, atol=1e-6)
    # random (Forgy) and k-means++: k distinct members of the data, a function of the key
    for init in ("random", "kmeans++"):
        a = np.asarray(_init7(init)(x, ALL, jax.random.key(0)))
        b = np.asarray(_init7(init)(x, ALL, jax.random.key(1)))
        assert len(set(a.tolist())) == 7 and set(a.tolist()) <= set(x.tolist())
        assert not np.array_equal(a, b) and np.all(np.diff(a) >= 0)


def test_mask_excludes_pruned_weights():
    r = np.random.default_rng(2)
    x = r.normal(size=N).astype(np.float32)
    mask = r.random(N) > 0.6
    x[~mask] = 50.0  # would drag a centroid if it took part
    kept = x[mask]
    c, lab = _km("linear", 7)(x, mask, None)
    sk = _sklearn(kept, 7, init=np.linspace(kept.min(), kept.max(), 7)[:, None], n_init=1,
                  max_iter=30, tol=0.0, algorithm="lloyd")
    np.testing.assert_allclose(np.asarray(c), np.sort(sk.cluster_centers_[:, 0]), rtol=1e-4,
                               atol=1e-5)
    assert np.all(np.asarray(lab)[~mask] == -1) and np.all(np.asarray(lab)[mask] >= 0)
    q = (np.arange(7) + 0.5) / 7
    np.testing.assert_allclose(np.asarray(_init7("density")(x, mask, None)),
                               np.quantile(kept.astype(np.float64), q), rtol=1e-5, atol=1e-6)
    for init in ("random", "kmeans++"):  # only kept weights are drawn
        c0 = np.asarray(_init7(init)(x, mask, jax.random.key(0)))
        assert set(c0.tolist()) <= set(kept.tolist())
    # the Codebook: pruned weights get the exact zero of entry 0, kept ones never do
    x[~mask] = 0.0
    for m in (mask, "nonzero"):
        cb = kmeans_quantize(x, bits=3, mask=m)
        w = np.asarray(cb.materialize())
        assert cb.centroids.shape == (8,) and float(cb.centroids[0]) == 0.0
        assert np.all(w[~mask] == 0.0) and np.all(np.asarray(cb.indices)[mask] > 0)
        np.testing.assert_allclose(np.asarray(cb.centroids[1:]), np.asarray(c), rtol=1e-4)
        assert cb.index_bits == 3


def test_labels_are_nearest_centroids_and_lloyd_descends():
    x = _data("mixture", seed=4)
    prev = np.inf
    for n_iter in (1, 30):
        c, lab = _km("linear", 7, n_iter)(x, ALL, None)
        c, lab = np.asarray(c), np.asarray(lab)
        d = np.abs(x[:, None] - c[None, :])
        np.testing.assert_allclose(d[np.arange(x.size), lab], d.min(1), atol=1e-6)
        sse = _sse(x, c, lab)
        assert sse <= prev * (1 + 1e-6)
        prev = sse


@given(hnp.arrays(np.float32, 48, elements=st.floats(-4, 4, width=32, allow_subnormal=False)),
       st.integers(1, 48))
def test_property_nearest_assignment(x, n):
    mask = np.arange(48) < n  # one compiled shape; the mask varies the number of values
    k = 4
    c, lab = _km("linear", k, 10)(x, mask, None)
    c, lab, v = np.asarray(c), np.asarray(lab), x[:n]
    assert np.all(np.diff(c) >= 0) and np.all(lab[n:] == -1)
    assert lab[:n].min() >= 0 and lab[:n].max() < k
    d = np.abs(v[:, None].astype(np.float64) - c[None, :])
    np.testing.assert_allclose(d[np.arange(n), lab[:n]], d.min(1), atol=1e-5)
    # every centroid lies within the range of the values that take part
    assert np.all(c >= v.min() - 1e-5) and np.all(c <= v.max() + 1e-5)


def test_jit_equals_eager_and_dtypes():
    x = jnp.asarray(_data("mixture", seed=5)).reshape(40, 25)
    key = jax.random.key(2)
    eager = kmeans_quantize(x, bits=3, init="random", key=key)
    jitted = jax.jit(lambda w, key: kmeans_quantize(w, bits=3, init="random", key=key))(x, key)
    np.testing.assert_allclose(np.asarray(eager.centroids), np.asarray(jitted.centroids),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(eager.indices), np.asarray(jitted.indices))
    np.testing.assert_array_equal(np.asarray(eager.materialize()),
                                  np.asarray(eager.centroids)[np.asarray(eager.indices)])
    assert eager.indices.dtype == jnp.uint8 and eager.indices.shape == (40, 25)
    bf = kmeans_quantize(x[0, :4].astype(jnp.bfloat16), bits=9, n_iter=0)
    assert bf.centroids.dtype == jnp.bfloat16 and bf.indices.dtype == jnp.uint16
    assert bf.centroids.shape == (512,) and bf.materialize().dtype == jnp.bfloat16


def test_edge_cases():
    # fewer values than clusters: the values themselves are centroids, SSE 0
    x = np.array([3.0, -1.0, 3.0, 3.0], np.float32)
    c, lab = kmeans_1d(x, k=8)
    assert float(kmeans_objective(x, c, lab)) == 0.0
    # nothing takes part: zero centroids, every label -1; a tree of zeros stays zeros
    c, lab = kmeans_1d(x, k=8, mask=np.zeros(4, bool))
    assert np.asarray(c).tolist() == [0.0] * 8 and np.asarray(lab).tolist() == [-1] * 4
    cb = kmeans_quantize(np.zeros((2, 2), np.float32), bits=3, mask="nonzero")
    assert np.asarray(cb.materialize()).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # one distinct value; one centroid (the middle of the range)
    cb = kmeans_quantize(np.full((2, 2), 0.5, np.float32), bits=3)
    assert np.all(np.asarray(cb.materialize()) == 0.5)
    c, lab = kmeans_1d(x, k=1)
    assert np.asarray(c).tolist() == [2.0] and np.asarray(lab).tolist() == [0] * 4


def test_bad_input_errors():
    w = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"bits=0 is outside \[1, 16\]"):
        kmeans_quantize(w, bits=0)
    with pytest.raises(ValueError, match="bits=17"):
        kmeans_quantize(w, bits=17)
    with pytest.raises(TypeError, match="bits must be a Python int"):
        kmeans_quantize(w, bits=4.0)
    with pytest.raises(TypeError, match="bits must be a Python int"):
        kmeans_quantize(w, bits=True)
    with pytest.raises(ValueError, match="init='kmeans' must be one of"):
        kmeans_quantize(w, bits=2, init="kmeans")
    with pytest.raises(ValueError, match="init='random' needs key="):
        kmeans_quantize(w, bits=2, init="random")
    with pytest.raises(ValueError, match="init='kmeans\\+\\+' needs key="):
        kmeans_quantize(w, bits=2, init="kmeans++")
    with pytest.raises(ValueError, match="n_init=3 restarts need a random init"):
        kmeans_1d(w, k=2, n_init=3)
    with pytest.raises(ValueError, match=r"mask has shape \(4,\) but the values have \(2, 2\)"):
        kmeans_quantize(w, bits=2, mask=np.ones(4, bool))
    with pytest.raises(TypeError, match="mask must be a bool array"):
        kmeans_quantize(w, bits=2, mask=np.ones((2, 2)))
    with pytest.raises(ValueError, match="mask='zeros'"):
        kmeans_quantize(w, bits=2, mask="zeros")
    with pytest.raises(ValueError, match=r"NaN or Inf \(1 of 4\)"):
        kmeans_quantize(np.array([[1.0, np.nan], [0.0, 2.0]], np.float32), bits=2)
    with pytest.raises(TypeError, match="floating-point"):
        kmeans_quantize(np.ones((2, 2), np.int32), bits=2)
    with pytest.raises(ValueError, match="n_iter=-1 is outside"):
        kmeans_1d(w, k=2, n_iter=-1)
    with pytest.raises(ValueError, match="k=0 is outside"):
        kmeans_1d(w, k=0)
    with pytest.raises(TypeError, match="must be a PRNG key"):
        kmeans_init(w, k=2, init="random", key=3)
    with pytest.raises(ValueError, match="3 labels for 4 values"):
        kmeans_objective(w, jnp.zeros(2), jnp.zeros(3, jnp.int32))
    # under jit the static arguments are still checked at trace time
    with pytest.raises(ValueError, match="bits=20"):
        jax.jit(lambda v: kmeans_quantize(v, bits=20))(w)


@pytest.mark.parametrize("init", ["linear", "density"])
def test_sharded_kernel_keeps_its_sharding_without_all_gather(init):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxcomp.parallel import make_mesh

    mesh = make_mesh({"model": 8})
    spec = NamedSharding(mesh, P(None, "model"))
    host = np.random.default_rng(3).normal(size=(16, 64)).astype(np.float32)
    w = jax.device_put(jnp.asarray(host), spec)
    f = jax.jit(lambda v: kmeans_quantize(v, bits=3, init=init, n_iter=5, mask="nonzero"))
    compiled = f.lower(w).compile()
    hlo = compiled.as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo  # partitioned: k-sized sums only
    cb = compiled(w)
    assert cb.indices.sharding.is_equivalent_to(spec, 2)
    ref = f(jnp.asarray(host))  # the same program on one device
    np.testing.assert_allclose(cb.centroids, ref.centroids, rtol=1e-5, atol=1e-6)  # sum order
    np.testing.assert_array_equal(cb.indices, ref.indices)
