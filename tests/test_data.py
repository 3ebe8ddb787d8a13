"""jaxcomp.data: offline datasets with fixed splits, and batching."""

import random

import jax
import numpy as np
import pytest

from jaxcomp import data, parallel


def _rows(a):
    return {r.tobytes() for r in np.ascontiguousarray(a.reshape(len(a), -1))}


# Fingerprints of the fixed splits: first labels of train and test, and per-row sums of |x| of
# the first test inputs. A change here changes every published delta: do it on purpose only.
FINGERPRINTS = {
    "mnist1d": ([2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9], [2, 6, 3, 9, 4, 3, 1, 9, 5, 2, 0, 7],
                [22.034, 42.9474, 43.5547]),
    "mnist5k": ([6, 0, 5, 4, 9, 9, 8, 3, 1, 2, 2, 0], [6, 3, 0, 8, 8, 3, 0, 0, 7, 8, 5, 8],
                [53.0588, 62.0471, 164.0745]),
    "digits": ([3, 9, 1, 3, 1, 9, 4, 4, 2, 8, 3, 5], [7, 6, 3, 7, 7, 3, 2, 8, 9, 3, 2, 6],
               [17.375, 19.5, 20.875]),
}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_fixed_split_fingerprints(name):
    ds = data.load(name)
    train_labels, test_labels, row_sums = FINGERPRINTS[name]
    assert ds.y_train[:12].tolist() == train_labels
    assert ds.y_test[:12].tolist() == test_labels
    np.testing.assert_allclose(np.abs(ds.x_test[:3].astype(np.float64)).sum(1), row_sums,
                               atol=1e-3)


def test_mnist1d_split_shapes_and_layouts(tmp_path):
    ds = data.mnist1d()
    # regeneration is deterministic and leaves numpy's and Python's global generators alone
    np.random.seed(123)
    random.seed(123)
    fresh = data.datasets._mnist1d_make()
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    assert random.random() == random.Random(123).random()
    np.testing.assert_array_equal(fresh["x"], ds.x_train)
    np.testing.assert_array_equal(fresh["y_test"], ds.y_test)
    assert (ds.n_train, ds.n_test, ds.input_shape, ds.num_classes) == (4000, 1000, (40,), 10)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert "4,000 train" in ds.meta["split"]
    ch = data.load("mnist1d", layout="channels")
    assert ch.x_train.shape == (4000, 40, 1) and ch.input_shape == (40, 1)
    np.testing.assert_array_equal(ch.x_train[..., 0], ds.x_train)
    # regenerated deterministically; the npz cache gives the same arrays
    cached = data.mnist1d(cache_dir=tmp_path)
    again = data.mnist1d(cache_dir=tmp_path)
    assert (tmp_path / "mnist1d_default.npz").exists()
    for a in (cached, again):
        np.testing.assert_array_equal(a.x_test, ds.x_test)
        np.testing.assert_array_equal(a.y_train, ds.y_train)
    assert not _rows(ds.x_train) & _rows(ds.x_test)
    with pytest.raises(ValueError, match="layout"):
        data.mnist1d(layout="image")


def test_mnist5k_stratified_split():
    ds = data.mnist5k()
    assert (ds.n_train, ds.n_test, ds.input_shape) == (4000, 1000, (784,))
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 100))
    assert ds.x_train.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # shuffled: the class-sorted source order is gone
    assert len(set(ds.y_train[:50].tolist())) > 5
    assert not _rows(ds.x_train) & _rows(ds.x_test)
    img = data.mnist5k(layout="image")
    assert img.x_test.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(img.x_test.reshape(1000, -1), ds.x_test)
    again = data.mnist5k()
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    norm = data.mnist5k(normalize=True)
    used = ds.x_train.std(0) > 0
    np.testing.assert_allclose(norm.x_train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(norm.x_train.std(0)[used], 1, rtol=1e-3)
    np.testing.assert_allclose(norm.x_test, (ds.x_test - norm.meta["train_mean"])
                               / norm.meta["train_std"], rtol=1e-5, atol=1e-5)


def test_digits_stratified_80_20():
    ds = data.digits()
    assert (ds.n_train, ds.n_test, ds.input_shape) == (1437, 360, (64,))
    counts_tr, counts_te = np.bincount(ds.y_train), np.bincount(ds.y_test)
    frac = counts_te / (counts_tr + counts_te)
    np.testing.assert_allclose(frac, 0.2, atol=0.01)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert data.digits(layout="image").x_train.shape == (1437, 8, 8, 1)
    assert not _rows(ds.x_train) & _rows(ds.x_test)
    with pytest.raises(ValueError, match="layout"):
        data.digits(layout="channels")


def test_synthetic_is_seeded_and_separable():
    a = data.synthetic(n_train=300, n_test=90, num_classes=3, input_shape=(2, 3),
                       key=jax.random.key(1))
    b = data.synthetic(n_train=300, n_test=90, num_classes=3, input_shape=(2, 3),
                       key=jax.random.key(1))
    c = data.synthetic(n_train=300, n_test=90, num_classes=3, input_shape=(2, 3),
                       key=jax.random.key(2))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape == (300, 2, 3) and a.x_test.shape == (90, 2, 3)
    np.testing.assert_array_equal(np.bincount(a.y_train), [100, 100, 100])
    # nearest-class-mean classifier (from the training split) is almost perfect on the test split
    flat = a.x_train.reshape(300, -1)
    means = np.stack([flat[a.y_train == k].mean(0) for k in range(3)])
    pred = np.argmin(((a.x_test.reshape(90, 1, -1) - means) ** 2).sum(-1), 1)
    assert np.mean(pred == a.y_test) > 0.95
    many = data.synthetic(num_classes=5, input_shape=(2,))  # more classes than dimensions
    assert many.num_classes == 5
    with pytest.raises(ValueError, match="num_classes"):
        data.synthetic(num_classes=1)
    with pytest.raises(TypeError, match="PRNG key"):
        data.synthetic(key=3)


def test_load_registry():
    assert data.list_datasets() == ["digits", "mnist1d", "mnist5k", "synthetic"]
    with pytest.raises(ValueError, match=r"known datasets: .*did you mean 'mnist1d'"):
        data.load("mnist1")
    data.register_dataset("tiny_test_ds", lambda: data.synthetic(n_train=4, n_test=2))
    assert data.load("tiny_test_ds").n_train == 4
    with pytest.raises(ValueError, match="already registered"):
        data.register_dataset("tiny_test_ds", data.synthetic)


# ---------------------------------------------------------------- batching


def test_batches_cover_each_example_once_per_epoch_and_are_deterministic():
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50)
    it = data.batches(x, y, 8, key=jax.random.key(0), epochs=2, drop_last=False)
    assert it.steps_per_epoch == 7 and len(it) == 14
    got = list(it)
    assert len(got) == 14
    for epoch in (got[:7], got[7:]):
        seen = np.concatenate([b["y"] for b in epoch])
        assert sorted(seen.tolist()) == list(range(50))
        for b in epoch:
            np.testing.assert_array_equal(b["x"][:, 0], b["y"])
    order0 = np.concatenate([b["y"] for b in got[:7]])
    order1 = np.concatenate([b["y"] for b in got[7:]])
    assert not np.array_equal(order0, order1)  # reshuffled each epoch
    again = list(data.batches(x, y, 8, key=jax.random.key(0), epochs=2, drop_last=False))
    for a, b in zip(got, again):
        np.testing.assert_array_equal(a["y"], b["y"])
    other = list(data.batches(x, y, 8, key=jax.random.key(1), epochs=1, drop_last=False))
    assert not np.array_equal(np.concatenate([b["y"] for b in other]), order0)
    # drop_last drops the final partial batch; start= resumes mid-run
    dropped = list(data.batches(x, y, 8, key=jax.random.key(0), epochs=1))
    assert len(dropped) == 6 and all(len(b["y"]) == 8 for b in dropped)
    resumed = list(data.batches(x, y, 8, key=jax.random.key(0), epochs=2, drop_last=False,
                                start=9))
    for a, b in zip(resumed, got[9:]):
        np.testing.assert_array_equal(a["y"], b["y"])
    # unshuffled order, infinite repetition
    inf = data.batches(x, y, 10, shuffle=False)
    firsts = [next(inf)["y"][0] for _ in range(7)]
    assert firsts == [0, 10, 20, 30, 40, 0, 10]


def test_pad_last_mask_and_extras():
    x = np.arange(10, dtype=np.float32)
    t = np.arange(10) * 10
    got = list(data.batches(x, x.astype(int), 4, shuffle=False, epochs=1, pad_last=True,
                            extras={"teacher_logits": t}))
    assert [len(b["x"]) for b in got] == [4, 4, 4]
    np.testing.assert_array_equal(got[-1]["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(got[0]["mask"], [1, 1, 1, 1])
    np.testing.assert_array_equal(got[-1]["x"][:2], [8, 9])
    np.testing.assert_array_equal(got[-1]["teacher_logits"][:2], [80, 90])
    real = np.concatenate([b["x"][b["mask"] > 0] for b in got])
    np.testing.assert_array_equal(np.sort(real), x)


def test_batches_errors():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="needs key"):
        data.batches(x, np.zeros(10), 4)
    with pytest.raises(ValueError, match="'y' has leading size 9"):
        data.batches(x, np.zeros(9), 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(x, np.zeros(10), 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="larger than the 10 examples"):
        data.batches(x, np.zeros(10), 16, key=jax.random.key(0))
    with pytest.raises(ValueError, match="drop_last=False"):
        data.batches(x, np.zeros(10), 4, key=jax.random.key(0), drop_last=True, pad_last=True)
    with pytest.raises(ValueError, match="reserved"):
        data.batches(x, np.zeros(10), 4, key=jax.random.key(0), extras={"mask": np.zeros(10)})
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        data.batches(x, np.zeros(10), 4, key=jax.random.key(0), mesh=mesh)
    with pytest.raises(ValueError, match="batches: the mesh has no axis 'batch'"):
        data.batches(x, np.zeros(10), 8, key=jax.random.key(0), mesh=mesh, axis="batch")
    with pytest.raises(TypeError, match="batches: mesh must be a jax.sharding.Mesh"):
        data.batches(x, np.zeros(10), 8, key=jax.random.key(0), mesh="data")
    with pytest.raises(TypeError, match=r"batches\(key=\) must be a PRNG key"):
        data.batches(x, np.zeros(10), 4, key=7)
    with pytest.raises(TypeError, match="forever"):
        len(data.batches(x, np.zeros(10), 4, key=jax.random.key(0)))


def test_sharded_batches_on_8_device_mesh():
    mesh = parallel.make_mesh({"data": -1})
    ds = data.synthetic(n_train=40, n_test=8)
    it = data.batches(ds.x_train, ds.y_train, 16, key=jax.random.key(0), epochs=1, mesh=mesh,
                      pad_last=True)
    got = list(it)
    assert len(got) == 3
    for b in got:
        for k in ("x", "y", "mask"):
            assert isinstance(b[k], jax.Array)
            assert b[k].sharding.spec == jax.sharding.PartitionSpec("data")
            assert len(b[k].sharding.device_set) == 8
            assert b[k].addressable_shards[0].data.shape[0] == 2
    np.testing.assert_array_equal(np.asarray(got[-1]["mask"]), [1] * 8 + [0] * 8)
