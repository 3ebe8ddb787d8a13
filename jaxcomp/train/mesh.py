"""Mesh helpers, re-exported from :mod:`jaxcomp.parallel` where they live."""

from jaxcomp.parallel.mesh import batch_sharding, make_mesh, mesh_axis_size, replicate, shard_batch

__all__ = ["batch_sharding", "make_mesh", "mesh_axis_size", "replicate", "shard_batch"]
