"""Device meshes and data-parallel placement helpers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_sharding", "make_mesh", "mesh_axis_size", "replicate", "shard_batch"]


def make_mesh(
    axes: Mapping[str, int] | None = None, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh over the available devices with named axes.

    Args:
      axes: axis name → size, in order; one size may be ``-1`` (all remaining
        devices). Default ``{"data": -1}``: pure data parallelism.
      devices: the devices to use (default ``jax.devices()``).

    Returns:
      A ``jax.sharding.Mesh`` with automatic (GSPMD) axis types.

    Raises:
      ValueError: if the sizes do not multiply to the device count or more
        than one is ``-1``.

    Example:
      >>> mesh = make_mesh({"data": -1})
      >>> mesh.axis_names, mesh.size == len(jax.devices())
      (('data',), True)
    """
    axes = {"data": -1} if axes is None else dict(axes)
    if not axes:
        raise ValueError("make_mesh: axes must name at least one axis, e.g. {'data': -1}")
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = list(axes.values())
    for name, size in axes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"make_mesh: size of axis '{name}' must be a positive int or -1, "
                             f"got {size!r}")
    if sizes.count(-1) > 1:
        raise ValueError(f"make_mesh: at most one axis may have size -1, got {axes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(
                f"make_mesh: {n} devices cannot be split into {axes}: the fixed sizes multiply to "
                f"{known}, which does not divide {n}"
            )
        sizes = [n // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != n:
        raise ValueError(
            f"make_mesh: axis sizes {dict(zip(axes, sizes))} multiply to {math.prod(sizes)}, but "
            f"there are {n} devices; use -1 for one axis to take the rest"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), tuple(axes))


def mesh_axis_size(mesh: Mesh, axis: str = "data", what: str = "mesh_axis_size") -> int:
    """The number of devices along one named axis of a mesh, after checking both.

    Args:
      mesh: the mesh (see :func:`make_mesh`).
      axis: the name of one of its axes.
      what: the caller's name, used in error messages.

    Returns:
      ``mesh.shape[axis]``.

    Raises:
      TypeError: if ``mesh`` is not a ``jax.sharding.Mesh``.
      ValueError: if the mesh has no axis ``axis``.

    Example:
      >>> mesh_axis_size(make_mesh({"data": -1})) == len(jax.devices())
      True
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{what}: mesh must be a jax.sharding.Mesh (see make_mesh), got "
                        f"{type(mesh).__name__}")
    if not isinstance(axis, str) or axis not in mesh.axis_names:
        raise ValueError(f"{what}: the mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    return int(mesh.shape[axis])


def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
    """The sharding that splits the leading (batch) axis over ``axis``.

    Example:
      >>> batch_sharding(make_mesh()).spec == jax.sharding.PartitionSpec("data")
      True
    """
    mesh_axis_size(mesh, axis, "batch_sharding")
    return NamedSharding(mesh, PartitionSpec(axis))


def shard_batch(batch: Any, mesh: Mesh, axis: str = "data") -> Any:
    """Places every array of a batch split along its leading axis over a mesh axis.

    Args:
      batch: a dict (or any pytree) of arrays with a common leading batch axis.
      mesh: the mesh.
      axis: the mesh axis that splits the batch.

    Returns:
      The batch as ``jax.Array``s sharded ``PartitionSpec(axis)``.

    Raises:
      ValueError: if a leading size is not divisible by the axis size.

    Example:
      >>> import numpy as np
      >>> mesh = make_mesh()
      >>> b = shard_batch({"x": np.zeros((8, 3))}, mesh)
      >>> b["x"].sharding.spec == jax.sharding.PartitionSpec("data")
      True
    """
    n = mesh_axis_size(mesh, axis, "shard_batch")
    sharding = NamedSharding(mesh, PartitionSpec(axis))

    def put(path, a):
        shape = np.shape(a)
        if not shape or shape[0] % n:
            raise ValueError(
                f"shard_batch: batch{jax.tree_util.keystr(path)} has leading size "
                f"{shape[0] if shape else 'none (scalar)'}, not divisible by the {n} devices of "
                f"mesh axis '{axis}'; use a batch size that is a multiple of {n}"
            )
        return jax.device_put(a, sharding)

    return jax.tree_util.tree_map_with_path(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (e.g. a :class:`~jaxcomp.train.TrainState`) fully replicated on a mesh.

    Example:
      >>> import jax.numpy as jnp
      >>> r = replicate({"w": jnp.ones(3)}, make_mesh())
      >>> r["w"].sharding.is_fully_replicated
      True
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"replicate: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
