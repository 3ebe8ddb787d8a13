"""jaxcomp.parallel: meshes, batch sharding, replication."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp import parallel


def test_make_mesh_lays_devices_out_in_order():
    devs = jax.devices()
    mesh = parallel.make_mesh({"data": -1, "model": 2})
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 4, "model": 2}
    np.testing.assert_array_equal(np.vectorize(lambda d: d.id)(mesh.devices),
                                  np.array([d.id for d in devs]).reshape(4, 2))
    sub = parallel.make_mesh({"x": 2, "y": -1}, devices=devs[:4])
    assert dict(sub.shape) == {"x": 2, "y": 2} and set(sub.devices.flat) == set(devs[:4])
    assert parallel.make_mesh().axis_names == ("data",)


@pytest.mark.parametrize("axes, match", [
    ({}, "at least one axis"),
    ({"data": 0}, "positive int or -1"),
    ({"data": -2}, "positive int or -1"),
    ({"data": True}, "positive int or -1"),
    ({"data": 2.0}, "positive int or -1"),
    ({"a": -1, "b": -1}, "at most one axis"),
    ({"data": 3}, "multiply to 3"),
    ({"data": -1, "model": 3}, "cannot be split"),
])
def test_make_mesh_errors(axes, match):
    with pytest.raises(ValueError, match=match):
        parallel.make_mesh(axes)


def test_mesh_axis_size():
    mesh = parallel.make_mesh({"data": 4, "model": 2})
    assert parallel.mesh_axis_size(mesh) == 4
    assert parallel.mesh_axis_size(mesh, "model") == 2
    with pytest.raises(ValueError, match=r"caller: the mesh has no axis 'batch'; its axes are "
                                         r"\('data', 'model'\)"):
        parallel.mesh_axis_size(mesh, "batch", "caller")
    with pytest.raises(ValueError, match="no axis 0"):
        parallel.mesh_axis_size(mesh, 0)
    with pytest.raises(TypeError, match="caller: mesh must be a jax.sharding.Mesh .*got dict"):
        parallel.mesh_axis_size({"data": 8}, "data", "caller")


def test_shard_batch_puts_each_block_of_rows_on_its_device():
    mesh = parallel.make_mesh({"data": 4, "model": 2})
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    b = parallel.shard_batch({"x": x, "y": np.arange(16)}, mesh)
    np.testing.assert_array_equal(np.asarray(b["x"]), x)
    row_of = {d: i for i, d in enumerate(mesh.devices[:, 0])} | {
        d: i for i, d in enumerate(mesh.devices[:, 1])}
    for shard in b["x"].addressable_shards:
        i = row_of[shard.device]
        np.testing.assert_array_equal(np.asarray(shard.data), x[4 * i : 4 * (i + 1)])
    assert b["y"].sharding == parallel.batch_sharding(mesh)
    model = parallel.shard_batch({"x": x}, mesh, axis="model")
    assert all(s.data.shape == (8, 3) for s in model["x"].addressable_shards)


def test_shard_batch_and_batch_sharding_errors():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match=r"batch\['x'\]\['a'\] has leading size 6"):
        parallel.shard_batch({"x": {"a": np.zeros((6, 2))}}, mesh)
    with pytest.raises(ValueError, match="none \\(scalar\\)"):
        parallel.shard_batch({"n": np.float32(3.0)}, mesh)
    with pytest.raises(ValueError, match="batch_sharding: the mesh has no axis 'model'"):
        parallel.batch_sharding(mesh, "model")
    with pytest.raises(TypeError, match="shard_batch: mesh must be"):
        parallel.shard_batch({"x": np.zeros(8)}, None)


def test_replicate():
    mesh = parallel.make_mesh({"data": 4, "model": 2})
    tree = {"w": jnp.arange(3.0), "k": jax.random.key(1)}
    r = parallel.replicate(tree, mesh)
    for leaf in jax.tree.leaves(r):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
    np.testing.assert_array_equal(r["w"], tree["w"])
    np.testing.assert_array_equal(jax.random.key_data(r["k"]), jax.random.key_data(tree["k"]))
    with pytest.raises(TypeError, match="replicate: mesh must be"):
        parallel.replicate(tree, "data")
