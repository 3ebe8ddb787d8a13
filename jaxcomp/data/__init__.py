"""Offline datasets with fixed splits, and deterministic batching.

* :func:`load` (``"mnist1d"``, ``"mnist5k"``, ``"digits"``, ``"synthetic"``)
  returns a :class:`Dataset` of numpy arrays; nothing is downloaded.
* :func:`batches` iterates dict batches ``{"x", "y"[, "mask"]}``, optionally
  sharded over a mesh.
"""

from jaxcomp.data.batching import Batches, batches
from jaxcomp.data.datasets import (
    Dataset,
    digits,
    list_datasets,
    load,
    mnist1d,
    mnist5k,
    register_dataset,
    synthetic,
)

__all__ = [
    "Batches",
    "Dataset",
    "batches",
    "digits",
    "list_datasets",
    "load",
    "mnist1d",
    "mnist5k",
    "register_dataset",
    "synthetic",
]
