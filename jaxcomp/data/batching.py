"""Deterministic mini-batch iteration over in-memory arrays.

:func:`batches` yields dict batches ``{"x", "y"}`` (plus ``"mask"`` with
``pad_last=True`` and any ``extras``) as numpy arrays, or as ``jax.Array``s
sharded over a mesh's data axis. The training loop
(:func:`jaxcomp.train.fit`) also accepts any other iterable of dict batches
(numpy or jax arrays: a generator, a list, a tf.data/grain pipeline converted
with ``as_numpy_iterator``), so this is a convenience, not a requirement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxcomp.core.keys import check_key
from jaxcomp.parallel.mesh import mesh_axis_size, shard_batch

__all__ = ["Batches", "batches"]


class Batches:
    """An iterator of dict batches; see :func:`batches`.

    Attributes:
      steps_per_epoch: batches per epoch.
      epochs: number of epochs (``None``: repeats forever).
      position: index of the next batch (counting across epochs).
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        batch_size: int,
        *,
        key: Any,
        shuffle: bool,
        drop_last: bool,
        epochs: int | None,
        mesh: Any,
        axis: str,
        pad_last: bool,
        start: int,
    ):
        self._arrays = arrays
        self._n = next(iter(arrays.values())).shape[0]
        self.batch_size = batch_size
        self._key = key
        self._shuffle = shuffle
        self._drop_last = drop_last
        self.epochs = epochs
        self._mesh = mesh
        self._axis = axis
        self._pad_last = pad_last
        n, b = self._n, batch_size
        self.steps_per_epoch = n // b if drop_last else math.ceil(n / b)
        self.position = start
        self._perm_epoch = None
        self._perm = None

    def __iter__(self) -> Iterator[dict]:
        return self

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("batches(..., epochs=None) repeats forever and has no length")
        return self.epochs * self.steps_per_epoch

    def remaining(self) -> int | None:
        """Batches left (``None`` when repeating forever)."""
        if self.epochs is None:
            return None
        return max(0, len(self) - self.position)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            if self._shuffle:
                k = jax.random.fold_in(self._key, epoch)
                self._perm = np.asarray(jax.random.permutation(k, self._n))
            else:
                self._perm = np.arange(self._n)
            self._perm_epoch = epoch
        return self._perm

    def __next__(self) -> dict:
        if self.steps_per_epoch == 0 or (
            self.epochs is not None and self.position >= self.epochs * self.steps_per_epoch
        ):
            raise StopIteration
        epoch, j = divmod(self.position, self.steps_per_epoch)
        self.position += 1
        perm = self._permutation(epoch)
        idx = perm[j * self.batch_size : (j + 1) * self.batch_size]
        real = len(idx)
        if self._pad_last and real < self.batch_size:
            idx = np.concatenate([idx, np.full(self.batch_size - real, idx[0])])
        batch = {k: a[idx] for k, a in self._arrays.items()}
        if self._pad_last:
            mask = np.zeros(len(idx), np.float32)
            mask[:real] = 1.0
            batch["mask"] = mask
        if self._mesh is not None:
            batch = shard_batch(batch, self._mesh, self._axis)
        return batch


def batches(
    x: Any,
    y: Any,
    batch_size: int,
    *,
    key: Any = None,
    shuffle: bool = True,
    drop_last: bool | None = None,
    epochs: int | None = None,
    mesh: Any = None,
    axis: str = "data",
    pad_last: bool = False,
    extras: Mapping[str, Any] | None = None,
    start: int = 0,
) -> Batches:
    """Mini-batches of ``(x, y)`` as dicts, deterministic given ``key``.

    Each epoch ``e`` visits the examples in the order
    ``jax.random.permutation(jax.random.fold_in(key, e), n)`` (or in order
    with ``shuffle=False``), so every example appears exactly once per epoch
    (or is dropped with the final partial batch when ``drop_last``).

    Args:
      x: inputs, leading axis = examples (numpy or jax array).
      y: labels with the same leading size, or ``None``.
      batch_size: examples per batch.
      key: PRNG key for shuffling (required when ``shuffle``).
      shuffle: reshuffle every epoch.
      drop_last: drop the final partial batch of each epoch. Default: ``True``,
        or ``False`` when ``pad_last``.
      epochs: number of epochs, or ``None`` to repeat forever.
      mesh: a ``jax.sharding.Mesh``: batches come as ``jax.Array``s sharded
        over ``axis`` (``batch_size`` must be divisible by its size).
      axis: the mesh axis that splits the batch.
      pad_last: pad the final partial batch to ``batch_size`` (repeating its
        first example) and add ``"mask"`` to every batch: 1 for real examples,
        0 for padding. Use it for exact evaluation with a fixed batch shape.
      extras: more per-example arrays to batch alongside, e.g.
        ``{"teacher_logits": logits}``.
      start: skip the first ``start`` batches (resume mid-run; counts across
        epochs).

    Returns:
      A :class:`Batches` iterator (with ``steps_per_epoch``).

    Raises:
      ValueError: for mismatched lengths, a bad ``batch_size``, no batches,
        ``drop_last=True`` with ``pad_last=True``, a batch size the mesh axis
        does not divide, or a missing ``key`` when shuffling.

    Example:
      >>> import jax, numpy as np
      >>> it = batches(np.arange(10), np.arange(10), 4, key=jax.random.key(0), epochs=1,
      ...              pad_last=True)
      >>> [b["mask"].tolist() for b in it]
      [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}")
    batch_size = int(batch_size)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or epochs < 1):
        raise ValueError(f"batches: epochs must be a positive int or None, got {epochs!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"batches: start must be a non-negative int, got {start!r}")
    if drop_last is None:
        drop_last = not pad_last
    if drop_last and pad_last:
        raise ValueError("batches: pad_last=True keeps the final partial batch; pass "
                         "drop_last=False (or leave it unset)")
    if shuffle:
        if key is None:
            raise ValueError("batches: shuffle=True needs key= (a PRNG key such as "
                             "jax.random.key(0)); or pass shuffle=False")
        key = check_key(key, "batches(key=)")
    arrays = {"x": np.asarray(x)}
    if y is not None:
        arrays["y"] = np.asarray(y)
    for k, v in dict(extras or {}).items():
        if k in ("x", "y", "mask"):
            raise ValueError(f"batches: extras may not use the reserved name '{k}'")
        arrays[k] = np.asarray(v)
    n = arrays["x"].shape[0] if arrays["x"].ndim else None
    for k, a in arrays.items():
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(
                f"batches: '{k}' has leading size {a.shape[0] if a.ndim else 'none (scalar)'} but "
                f"'x' has {n}; every array needs one row per example"
            )
    if drop_last and n < batch_size:
        raise ValueError(
            f"batches: batch_size={batch_size} is larger than the {n} examples and drop_last "
            "drops the only (partial) batch; use a smaller batch_size or drop_last=False"
        )
    if mesh is not None:
        d = mesh_axis_size(mesh, axis, "batches")
        if batch_size % d:
            raise ValueError(
                f"batches: batch_size={batch_size} is not divisible by the {d} devices of mesh "
                f"axis '{axis}'; use a multiple of {d}"
            )
        if not drop_last and not pad_last and n % batch_size and n % batch_size % d:
            raise ValueError(
                f"batches: the final batch of {n % batch_size} examples cannot be split over {d} "
                "devices; pass pad_last=True or drop_last=True"
            )
    return Batches(arrays, batch_size, key=key, shuffle=shuffle, drop_last=drop_last,
                   epochs=epochs, mesh=mesh, axis=axis, pad_last=pad_last, start=start)
