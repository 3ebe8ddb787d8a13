"""Checkpoints of whole training states with orbax, verified on restore.

Layout: ``workdir/<step>/`` holds the orbax items ``state`` (every leaf of
the state as a flat dict of arrays; absent for a state without leaves),
``meta`` (JSON: the canonical path, shape, dtype and CRC-32 of every leaf,
the PRNG key implementation of key leaves, the tree structure) and, when
given, ``extra`` (JSON the caller attaches, e.g. the position of
:func:`~jaxcomp.train.fit` in its run). Orbax writes a step into
``<step>.orbax-checkpoint-tmp`` and renames it when complete, so a crash
mid-save leaves the previous steps intact; :func:`latest_step` only reports
finalized steps.

Restoring checks the target against the recorded leaves first (a different
tree structure, shape or dtype is a ``ValueError`` naming the paths, never a
partial load) and the checksums after reading (a truncated, deleted or
bit-flipped array file is a ``ValueError``, never silent garbage).

The readers (:func:`all_steps`, :func:`latest_step`,
:func:`restore_checkpoint`, :func:`checkpoint_extra`, :func:`read_arrays`)
also accept the ``workdir`` of :func:`~jaxcomp.train.fit`, whose checkpoints
live in its ``checkpoints/`` sub-directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxcomp.core.errors import list_paths
from jaxcomp.select.paths import path_str
from jaxcomp.train.state import is_prng_key

__all__ = [
    "all_steps",
    "checkpoint_extra",
    "latest_step",
    "read_arrays",
    "restore_checkpoint",
    "save_checkpoint",
]

_FORMAT = "jaxcomp.train.checkpoint/1"
_MAX_LISTED = 10


def _ocp():
    import orbax.checkpoint as ocp  # deferred: importing orbax costs ~0.5 s

    return ocp


def _manager(workdir: os.PathLike | str, keep: int | None = None, create: bool = False):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(pathlib.Path(workdir).absolute(), options=options)


def _name(i: int) -> str:
    return f"leaf_{i:05d}"


def _flatten(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(kp) or "<root>", leaf) for kp, leaf in flat], treedef


def _crc(x: Any) -> int | None:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None  # multi-host: each host holds only its shards
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    return zlib.crc32(a.view(np.uint8).reshape(-1)) if a.size else 0


def _describe(leaf: Any) -> dict:
    if is_prng_key(leaf):
        impl = str(jax.random.key_impl(leaf)) if isinstance(leaf, jax.Array) else None
        data_shape = jax.eval_shape(jax.random.key_data, leaf).shape
        return {"shape": list(leaf.shape), "dtype": "key", "key_impl": impl,
                "data_shape": list(data_shape)}
    if isinstance(leaf, (bool, int, float, complex, np.number)):
        return {"shape": [], "dtype": np.asarray(leaf).dtype.name, "python": type(leaf).__name__}
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return {"shape": list(leaf.shape), "dtype": np.dtype(leaf.dtype).name}
    raise TypeError(
        f"cannot checkpoint a leaf of type {type(leaf).__name__}; state leaves must be arrays, "
        "PRNG keys or Python scalars"
    )


def _finalized_steps(workdir: pathlib.Path) -> list[int]:
    if not workdir.is_dir():
        return []
    steps = []
    for p in workdir.iterdir():
        # Orbax renames "<step>.orbax-checkpoint-tmp" to "<step>" once complete; the commit file
        # and our meta item guard against partially copied or hand-made directories.
        committed = (p / "commit_success.txt").exists() or (p / "_CHECKPOINT_METADATA").exists()
        if p.is_dir() and p.name.isdigit() and (p / "meta").is_dir() and committed:
            steps.append(int(p.name))
    return sorted(steps)


def _resolve(workdir: os.PathLike | str) -> pathlib.Path:
    """``workdir``, or its ``checkpoints/`` sub-directory when only that one holds steps."""
    workdir = pathlib.Path(workdir).absolute()
    sub = workdir / "checkpoints"
    if not _finalized_steps(workdir) and _finalized_steps(sub):
        return sub
    return workdir


def all_steps(workdir: os.PathLike | str) -> list[int]:
    """The finalized checkpoint steps in ``workdir``, ascending (temporary dirs ignored).

    ``workdir`` may also be a :func:`~jaxcomp.train.fit` workdir (its
    checkpoints are in ``workdir/checkpoints``).
    """
    return _finalized_steps(_resolve(workdir))


def latest_step(workdir: os.PathLike | str) -> int | None:
    """The newest finalized checkpoint step in ``workdir``, or ``None`` if there is none.

    Unfinished saves (``<step>.orbax-checkpoint-tmp`` directories left by a
    crash) are ignored. ``workdir`` may also be a :func:`~jaxcomp.train.fit`
    workdir (its checkpoints are in ``workdir/checkpoints``).

    Example:
      >>> import tempfile
      >>> latest_step(tempfile.mkdtemp()) is None
      True
    """
    steps = all_steps(workdir)
    return steps[-1] if steps else None


def save_checkpoint(
    workdir: os.PathLike | str,
    state: Any,
    *,
    step: int | None = None,
    keep: int | None = 3,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Saves a whole training state (any pytree) synchronously and atomically.

    Every leaf is written: params (compressed leaves such as
    :class:`jaxcomp.LowRank`, :class:`jaxcomp.QArray`, :class:`jaxcomp.Codebook`
    included), optimizer state, model state, compressor state and the PRNG key
    (typed keys are stored as ``jax.random.key_data`` with their
    implementation name). The call returns when the step is on disk. A state
    without array leaves (``{}``, ``None``) is saved too (only its
    structure) and restores as itself.

    Args:
      workdir: directory holding one sub-directory per step (created if
        missing).
      state: a :class:`~jaxcomp.train.TrainState` or any pytree of arrays.
      step: the step number (default: ``int(state.step)``).
      keep: keep at most this many newest steps (``None``: all).
      overwrite: replace an existing checkpoint of the same step.
      extra: JSON-serialisable data saved atomically with the step (read
        back with :func:`checkpoint_extra`).

    Returns:
      The step's directory.

    Raises:
      ValueError: if the step exists and ``overwrite`` is false, or ``step`` /
        ``keep`` is invalid.
      TypeError: if a leaf cannot be checkpointed, or ``extra`` is not a
        JSON-serialisable mapping.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> d = tempfile.mkdtemp()
      >>> _ = save_checkpoint(d, {"w": jnp.ones(2), "key": jax.random.key(0)}, step=7)
      >>> latest_step(d)
      7
    """
    ocp = _ocp()
    if step is None:
        if not hasattr(state, "step"):
            raise ValueError("save_checkpoint: pass step= (the state has no 'step' field)")
        step = int(jax.device_get(state.step))
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"save_checkpoint: step must be a non-negative int, got {step!r}")
    step = int(step)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"save_checkpoint: keep must be a positive int or None, got {keep!r}")
    workdir = pathlib.Path(workdir).absolute()
    flat, treedef = _flatten(state)
    entries, arrays = [], {}
    for i, (path, leaf) in enumerate(flat):
        entry = {"path": path, **_describe(leaf)}
        if is_prng_key(leaf):
            leaf = jax.random.key_data(leaf)
        elif "python" in entry:
            leaf = np.asarray(leaf)
        entry["crc32"] = _crc(leaf)
        entries.append(entry)
        arrays[_name(i)] = leaf
    meta = {"format": _FORMAT, "step": step, "treedef": str(treedef), "leaves": entries,
            "jax_version": jax.__version__}
    items = {"meta": ocp.args.JsonSave(meta)}
    if arrays:  # orbax refuses an empty item: a leafless state is all in meta
        items["state"] = ocp.args.StandardSave(arrays)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise TypeError(f"save_checkpoint: extra must be a mapping, got {type(extra).__name__}")
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as e:
            raise TypeError(f"save_checkpoint: extra must be JSON-serialisable ({e})") from None
        items["extra"] = ocp.args.JsonSave(dict(extra))
    mngr = _manager(workdir, keep, create=True)
    try:
        if step in _finalized_steps(workdir):
            if not overwrite:
                raise ValueError(
                    f"save_checkpoint: step {step} already exists in {workdir}; pass overwrite=True "
                    "to replace it"
                )
            mngr.delete(step)
        mngr.save(step, args=ocp.args.Composite(**items), force=True)
        mngr.wait_until_finished()
    finally:
        mngr.close()
    return workdir / str(step)


def _mismatches(saved: list[dict], target: list[tuple[str, dict]]) -> list[str]:
    """Human-readable differences between recorded leaves and the target's."""
    problems = []
    saved_paths = [e["path"] for e in saved]
    target_paths = [p for p, _ in target]
    if saved_paths != target_paths:
        s, t = set(saved_paths), set(target_paths)
        for p in [p for p in target_paths if p not in s]:
            problems.append(f"{p}: in the target but not in the checkpoint")
        for p in [p for p in saved_paths if p not in t]:
            problems.append(f"{p}: in the checkpoint but not in the target")
        if not problems:
            problems.append("the leaves are in a different order (different tree structure)")
        return problems
    for e, (p, d) in zip(saved, target):
        if e["dtype"] == "key" or d["dtype"] == "key":
            if e["dtype"] != d["dtype"]:
                what = "a PRNG key" if e["dtype"] == "key" else f"a {e['dtype']} array"
                problems.append(f"{p}: the checkpoint holds {what}, the target does not")
            elif list(e["shape"]) != list(d["shape"]):
                problems.append(f"{p}: key shape {tuple(e['shape'])} saved, "
                                f"{tuple(d['shape'])} in the target")
            elif d.get("key_impl") and e.get("key_impl") and d["key_impl"] != e["key_impl"]:
                problems.append(f"{p}: key implementation {e['key_impl']} saved, "
                                f"{d['key_impl']} in the target")
            continue
        if list(e["shape"]) != list(d["shape"]):
            problems.append(f"{p}: shape {tuple(e['shape'])} saved, {tuple(d['shape'])} in the target")
        elif e["dtype"] != d["dtype"] and "python" not in d and "python" not in e:
            problems.append(f"{p}: dtype {e['dtype']} saved, {d['dtype']} in the target")
    return problems


def _normalized_treedef(s: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", s)


def _format_problems(problems: list[str]) -> str:
    return list_paths(problems, limit=_MAX_LISTED)


def _abstract(leaf: Any, entry: dict) -> Any:
    if "python" in entry or isinstance(leaf, (np.ndarray, np.number)):
        # host values come back as numpy, keeping 64-bit dtypes that jax would narrow
        return np.zeros(tuple(entry["shape"]), np.dtype(entry["dtype"]))
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if entry["dtype"] == "key":
        sharding = None
        if isinstance(leaf, jax.Array):
            sharding = jax.random.key_data(leaf).sharding
        return jax.ShapeDtypeStruct(tuple(entry["data_shape"]), np.uint32,
                                    sharding=sharding or default)
    sharding = getattr(leaf, "sharding", None) if isinstance(
        leaf, (jax.Array, jax.ShapeDtypeStruct)) else None
    return jax.ShapeDtypeStruct(tuple(entry["shape"]), np.dtype(entry["dtype"]),
                                sharding=sharding or default)


def _locate_unreadable(mngr: Any, step: int, abstract: dict, paths: list[str]) -> list[str]:
    """After a failed restore: which leaves cannot be read (one partial restore each)."""
    ocp = _ocp()
    broken = []
    for i, (name, item) in enumerate(abstract.items()):
        try:
            mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item={name: item},
                restore_args=ocp.checkpoint_utils.construct_restore_args({name: item}),
                partial_restore=True,
            )))
        except Exception:  # noqa: BLE001 - any failure to read this leaf counts
            broken.append(f"{paths[i]}: unreadable")
    return broken


def restore_checkpoint(
    workdir: os.PathLike | str, target_state: Any, *, step: int | None = None
) -> Any:
    """Restores a checkpoint into the structure of ``target_state``.

    ``target_state`` gives the tree structure, shapes, dtypes and shardings
    (a freshly built state, or ``jax.eval_shape`` of one); its values are not
    used. Arrays come back with the target's sharding (single device for
    abstract leaves without one); typed PRNG keys come back as typed keys.

    Args:
      workdir: the checkpoint directory given to :func:`save_checkpoint`.
      target_state: a state of the same structure as the saved one.
      step: the step to restore (default: the latest finalized one).

    Returns:
      The restored state, a tree of the target's structure.

    Raises:
      FileNotFoundError: if there is no finalized checkpoint (or not ``step``).
      ValueError: if the target's structure, shapes or dtypes differ from the
        checkpoint's (the mismatching paths are listed), or the checkpoint is
        corrupted (unreadable files or checksum mismatches, paths listed).

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> d = tempfile.mkdtemp()
      >>> _ = save_checkpoint(d, {"w": jnp.arange(3.0)}, step=1)
      >>> restore_checkpoint(d, {"w": jnp.zeros(3)})["w"].tolist()
      [0.0, 1.0, 2.0]
    """
    ocp = _ocp()
    workdir = _resolve(workdir)
    steps = _finalized_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"restore_checkpoint: no finalized checkpoint in {workdir}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(
            f"restore_checkpoint: no finalized checkpoint for step {step} in {workdir}; "
            f"available steps: {steps}"
        )
    where = f"checkpoint step {step} in {workdir}"
    mngr = _manager(workdir)
    try:
        try:
            meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise ValueError(f"{where} has unreadable metadata ({type(e).__name__}: {e})") from e
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{where} was not written by jaxcomp.train.save_checkpoint")
        saved = meta["leaves"]
        flat, treedef = _flatten(target_state)
        target = [(p, _describe(leaf)) for p, leaf in flat]
        problems = _mismatches(saved, target)
        if not problems and _normalized_treedef(meta.get("treedef", "")) != _normalized_treedef(
            str(treedef)
        ):
            problems.append(
                "same leaves, different tree structure (node types or static fields such as "
                f"QArray.bits): saved {meta.get('treedef')}, target {treedef}"
            )
        if problems:
            raise ValueError(
                f"restore_checkpoint: the target state does not match {where}:\n"
                f"{_format_problems(problems)}\nBuild the target exactly like the saved state "
                "(same model, optimizer, compressor and dtypes)."
            )
        abstract = {_name(i): _abstract(leaf, e) for i, ((_, leaf), e) in
                    enumerate(zip(flat, saved))}
        try:
            restored = mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"] if abstract else {}
        except Exception as e:
            broken = _locate_unreadable(mngr, step, abstract, [p for p, _ in flat])
            listed = f":\n{_format_problems(broken)}\n" if broken else " "
            raise ValueError(
                f"{where} is corrupted or unreadable ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}){listed}Restore an earlier step "
                f"(available: {steps})."
            ) from e
    finally:
        mngr.close()

    bad = []
    leaves = []
    for i, ((path, tleaf), e) in enumerate(zip(flat, saved)):
        value = restored[_name(i)]
        if e.get("crc32") is not None and _crc(value) != e["crc32"]:
            bad.append(f"{path}: checksum mismatch")
            continue
        if e["dtype"] == "key":
            impl = e.get("key_impl") or (
                str(jax.random.key_impl(tleaf)) if isinstance(tleaf, jax.Array) else None
            )
            value = jax.random.wrap_key_data(value, impl=impl)
        elif isinstance(tleaf, (bool, int, float, complex, np.number)):
            value = type(tleaf)(np.asarray(value).item())
        elif isinstance(tleaf, np.ndarray):
            value = np.asarray(value)
        leaves.append(value)
    if bad:
        raise ValueError(
            f"{where} is corrupted: the data read back differ from what was saved:\n"
            f"{_format_problems(bad)}\nRestore an earlier step (available: {steps})."
        )
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _pick(workdir: os.PathLike | str, step: int | None, what: str) -> tuple[pathlib.Path, int]:
    workdir = _resolve(workdir)
    steps = _finalized_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"{what}: no finalized checkpoint in {workdir}")
    if step is None:
        return workdir, steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"{what}: no finalized checkpoint for step {step} in {workdir}; "
                                f"available steps: {steps}")
    return workdir, int(step)


def checkpoint_extra(workdir: os.PathLike | str, *, step: int | None = None) -> dict | None:
    """The ``extra`` data saved with a checkpoint (``None`` if it was saved without).

    Args:
      workdir: the checkpoint directory (or a :func:`~jaxcomp.train.fit` workdir).
      step: the step (default: the latest finalized one).

    Raises:
      FileNotFoundError: if there is no finalized checkpoint (or not ``step``).

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> d = tempfile.mkdtemp()
      >>> _ = save_checkpoint(d, {"w": jnp.ones(2)}, step=3, extra={"epoch": 1})
      >>> checkpoint_extra(d)
      {'epoch': 1}
    """
    ocp = _ocp()
    workdir, step = _pick(workdir, step, "checkpoint_extra")
    if not (workdir / str(step) / "extra").is_dir():
        return None
    mngr = _manager(workdir)
    try:
        return mngr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]
    finally:
        mngr.close()


def read_arrays(workdir: os.PathLike | str, *, step: int | None = None) -> dict[str, np.ndarray]:
    """Reads a checkpoint without a target: ``{leaf path: numpy array}``, checksums verified.

    For inspecting or comparing checkpoints (e.g. two runs bit for bit)
    without rebuilding the state; PRNG keys come back as their raw
    ``key_data``. Use :func:`restore_checkpoint` to continue training.

    Args:
      workdir: the checkpoint directory (or a :func:`~jaxcomp.train.fit` workdir).
      step: the step (default: the latest finalized one).

    Raises:
      FileNotFoundError: if there is no finalized checkpoint (or not ``step``).
      ValueError: if the checkpoint is not jaxcomp's or its data are corrupted.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> d = tempfile.mkdtemp()
      >>> _ = save_checkpoint(d, {"b": jnp.arange(2), "a": {"w": jnp.ones(1)}}, step=0)
      >>> {k: v.tolist() for k, v in read_arrays(d).items()}
      {'a/w': [1.0], 'b': [0, 1]}
    """
    ocp = _ocp()
    workdir, step = _pick(workdir, step, "read_arrays")
    where = f"checkpoint step {step} in {workdir}"
    mngr = _manager(workdir)
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{where} was not written by jaxcomp.train.save_checkpoint")
        entries = meta["leaves"]
        if not entries:
            return {}
        abstract = {}
        for i, e in enumerate(entries):
            shape = e["data_shape"] if e["dtype"] == "key" else e["shape"]
            dtype = np.uint32 if e["dtype"] == "key" else np.dtype(e["dtype"])
            abstract[_name(i)] = np.zeros(tuple(shape), dtype)
        try:
            restored = mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:
            raise ValueError(f"{where} is corrupted or unreadable ({type(e).__name__})") from e
    finally:
        mngr.close()
    out = {}
    for i, e in enumerate(entries):
        value = np.asarray(restored[_name(i)])
        if e.get("crc32") is not None and _crc(value) != e["crc32"]:
            raise ValueError(f"{where} is corrupted: {e['path']}: checksum mismatch")
        out[e["path"]] = value
    return out
