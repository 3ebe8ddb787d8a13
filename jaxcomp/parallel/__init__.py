"""Device meshes and sharding: where arrays live across devices.

This package sits below :mod:`jaxcomp.train` and :mod:`jaxcomp.data`, which
both place arrays on a mesh:

* :func:`make_mesh` builds a named-axis mesh over the available devices;
* :func:`shard_batch` / :func:`batch_sharding` split a batch's leading axis
  over a mesh axis; :func:`replicate` copies a pytree to every device;
* :func:`mesh_axis_size` validates a mesh and an axis name and returns the
  axis size.

Example:
  >>> import jax, numpy as np
  >>> from jaxcomp import parallel
  >>> mesh = parallel.make_mesh({"data": -1})
  >>> b = parallel.shard_batch({"x": np.zeros((8, 2))}, mesh)
  >>> len(b["x"].addressable_shards) == len(jax.devices())
  True
"""

from jaxcomp.parallel.mesh import batch_sharding, make_mesh, mesh_axis_size, replicate, shard_batch

__all__ = ["batch_sharding", "make_mesh", "mesh_axis_size", "replicate", "shard_batch"]
