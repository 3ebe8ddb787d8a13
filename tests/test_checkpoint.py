"""jaxcomp.train checkpoints: round trips, exact resume, crash safety, corruption, mismatches."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp as jc
from jaxcomp import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


class MaskState(NamedTuple):
    mask: Any
    scale: jax.Array


def masking():
    def init(params):
        return MaskState(jax.tree.map(lambda p: jnp.abs(p) > 0.05, params), jnp.float32(1.0))

    def apply(params, state):
        return jax.tree.map(lambda p, m: p * m, params, state.mask)

    def update(params, state, *, step, grads=None, **extra):
        return apply(params, state), state._replace(scale=state.scale * 1.5)

    return jc.Compressor(init, apply, update, apply)


def make_params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "dense": {"kernel": jax.random.normal(k1, (6, 4)), "bias": jnp.zeros(4)},
        "lowrank": jc.LowRank(jax.random.normal(k2, (6, 2)), jax.random.normal(k3, (2, 4))),
    }


def loss_fn(params, ms, batch, rng):
    w = params["dense"]["kernel"] + jc.materialize(params["lowrank"])
    h = batch["x"] @ w + params["dense"]["bias"]
    noise = 0.01 * jax.random.normal(rng, h.shape)  # uses the step key: resume must restore it
    loss = jnp.mean((h + noise - batch["y"]) ** 2)
    return loss, (ms, {"loss": loss})


def batch_at(i):
    r = np.random.default_rng(i)
    return {"x": r.standard_normal((8, 6)).astype(np.float32),
            "y": r.standard_normal((8, 4)).astype(np.float32)}


COMP = masking()
TX = optax.chain(optax.adamw(1e-2, weight_decay=1e-3), train.keep_compressed(COMP))
STEP = jax.jit(train.make_train_step(loss_fn, TX, compressor=COMP, compressor_every=2))


def setup(key=0):
    state = train.TrainState.create(make_params(jax.random.key(key)), TX,
                                    key=jax.random.key(100 + key), compressor=COMP,
                                    model_state={"ema": {"v": jnp.zeros(3, jnp.bfloat16)}})
    return state, STEP


def assert_trees_identical(a, b):
    fa, ta = jax.tree.flatten(a)
    fb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(fa, fb):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_whole_train_state_round_trips(tmp_path):
    state, step = setup()
    for i in range(3):
        state, _ = step(state, batch_at(i))
    train.save_checkpoint(tmp_path, state, step=3)
    assert train.latest_step(tmp_path) == 3
    fresh, _ = setup(key=5)
    restored = train.restore_checkpoint(tmp_path, fresh)
    assert_trees_identical(restored, state)
    assert isinstance(restored.params["lowrank"], jc.LowRank)
    assert jnp.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    assert restored.model_state["ema"]["v"].dtype == jnp.bfloat16
    # an abstract target (no values at all) works too
    abstract = jax.eval_shape(lambda: fresh)
    assert_trees_identical(train.restore_checkpoint(tmp_path, abstract), state)


def test_compressed_leaves_and_odd_nodes_round_trip(tmp_path):
    tree = {
        "q": jc.QArray(jnp.array([-3, 0, 7], jnp.int8), jnp.float32(0.25), jnp.int8(1), bits=4),
        "cb": jc.Codebook(jnp.array([-1.0, 0.5, 2.0]), jnp.array([[0, 2], [1, 1]], jnp.int32)),
        "lr": jc.LowRank(jnp.ones((3, 1)), jnp.full((1, 2), 2.0), dense_shape=(6,)),
        "none": None, "masked": jc.MaskedNode(), "empty": {}, "count": 3, "lr_f": 0.5,
        "bools": jnp.array([True, False]), "raw_key": jax.random.PRNGKey(3),
        "key": jax.random.key(4, impl="rbg"),
    }
    train.save_checkpoint(tmp_path, tree, step=0)
    target = jax.tree.map(lambda x: jnp.zeros_like(x) if hasattr(x, "dtype") and not jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x, tree)
    target["key"] = jax.random.key(0, impl="rbg")
    got = train.restore_checkpoint(tmp_path, target)
    assert_trees_identical(got, tree)
    assert got["q"].bits == 4 and got["lr"].dense_shape == (6,)
    assert got["count"] == 3 and isinstance(got["count"], int)


def test_resume_is_bit_identical(tmp_path):
    n, k = 8, 3
    straight, step = setup()
    for i in range(n):
        straight, _ = step(straight, batch_at(i))

    s, step = setup()
    for i in range(k):
        s, _ = step(s, batch_at(i))
    train.save_checkpoint(tmp_path, s)  # step taken from state.step
    del s
    fresh, step2 = setup(key=9)  # a new process would build a different initial state
    resumed = train.restore_checkpoint(tmp_path, fresh)
    assert int(resumed.step) == k
    for i in range(k, n):
        resumed, _ = step2(resumed, batch_at(i))
    assert_trees_identical(resumed, straight)


def test_keep_latest_and_overwrite(tmp_path):
    state, _ = setup()
    for s in (1, 2, 5, 7):
        train.save_checkpoint(tmp_path, state, step=s, keep=3)
    assert train.all_steps(tmp_path) == [2, 5, 7]
    assert train.latest_step(tmp_path) == 7
    with pytest.raises(ValueError, match="already exists"):
        train.save_checkpoint(tmp_path, state, step=7)
    train.save_checkpoint(tmp_path, state.replace(step=jnp.int32(42)), step=7, overwrite=True)
    assert int(train.restore_checkpoint(tmp_path, state).step) == 42
    # an older step can be restored explicitly
    assert int(train.restore_checkpoint(tmp_path, state, step=2).step) == 0
    with pytest.raises(FileNotFoundError, match="available steps"):
        train.restore_checkpoint(tmp_path, state, step=3)
    with pytest.raises(FileNotFoundError, match="no finalized checkpoint"):
        train.restore_checkpoint(tmp_path / "nothing", state)
    assert train.latest_step(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="keep"):
        train.save_checkpoint(tmp_path, state, step=8, keep=0)
    with pytest.raises(ValueError, match="step"):
        train.save_checkpoint(tmp_path, state, step=-1)


def test_restore_onto_a_mesh_keeps_target_sharding(tmp_path):
    state, _ = setup()
    train.save_checkpoint(tmp_path, state, step=0)
    mesh = train.make_mesh()
    target = train.replicate(state, mesh)
    got = train.restore_checkpoint(tmp_path, target)
    assert got.params["dense"]["kernel"].sharding.is_fully_replicated
    assert len(got.params["dense"]["kernel"].sharding.device_set) == 8
    assert_trees_identical(got, state)


# ---------------------------------------------------------------- mismatches


def test_mismatched_target_names_the_paths(tmp_path):
    state, _ = setup()
    train.save_checkpoint(tmp_path, state, step=0)
    p = state.params
    wrong_shape = state.replace(params={**p, "dense": {**p["dense"], "bias": jnp.zeros(5)}})
    with pytest.raises(ValueError, match=r"params/dense/bias: shape \(4,\) saved, \(5,\)"):
        train.restore_checkpoint(tmp_path, wrong_shape)
    wrong_dtype = state.replace(params={**p, "dense": {**p["dense"],
                                                       "bias": jnp.zeros(4, jnp.bfloat16)}})
    with pytest.raises(ValueError, match="params/dense/bias: dtype float32 saved, bfloat16"):
        train.restore_checkpoint(tmp_path, wrong_dtype)
    extra = state.replace(params={**p, "head": jnp.zeros(2)})
    with pytest.raises(ValueError, match="params/head: in the target but not in the checkpoint"):
        train.restore_checkpoint(tmp_path, extra)
    missing = state.replace(model_state={})
    with pytest.raises(ValueError, match="model_state/ema/v: in the checkpoint but not"):
        train.restore_checkpoint(tmp_path, missing)
    not_key = state.replace(rng=jax.random.key_data(state.rng))
    with pytest.raises(ValueError, match="rng: the checkpoint holds a PRNG key"):
        train.restore_checkpoint(tmp_path, not_key)


def test_static_field_mismatch_is_an_error(tmp_path):
    q = jc.QArray(jnp.array([1, 2], jnp.int8), jnp.float32(0.5), jnp.int8(0), bits=4)
    train.save_checkpoint(tmp_path, {"q": q}, step=0)
    with pytest.raises(ValueError, match="different tree structure"):
        train.restore_checkpoint(tmp_path, {"q": jc.QArray(q.values, q.scale, q.zero_point,
                                                            bits=8)})


# ---------------------------------------------------------------- corruption


def _array_files(step_dir):
    files = [p for p in pathlib.Path(step_dir, "state").rglob("*")
             if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "delete", "bitflip"])
def test_corrupted_checkpoint_is_a_clear_error(tmp_path, damage):
    big = {"w": jnp.arange(20000, dtype=jnp.float32) / 7.0, "b": jnp.ones(3)}
    train.save_checkpoint(tmp_path, big, step=1)
    train.save_checkpoint(tmp_path, big, step=2)
    victim = _array_files(tmp_path / "2")[-1]
    if damage == "truncate":
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
    elif damage == "delete":
        victim.unlink()
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checkpoint step 2 .* corrupted") as e:
        train.restore_checkpoint(tmp_path, big)
    if damage == "bitflip":  # read back without an error by orbax: caught by the checksum
        assert "w: checksum mismatch" in str(e.value)
    else:  # orbax fails to read: the unreadable leaves are named (OCDBT packs small arrays
        # into shared data files, so a damaged file can take several leaves with it)
        assert "    w: unreadable" in str(e.value)
    # the earlier step is intact
    got = train.restore_checkpoint(tmp_path, big, step=1)
    np.testing.assert_array_equal(got["w"], big["w"])


# ---------------------------------------------------------------- crash mid-save

WRITER = textwrap.dedent(
    """
    import os, sys, time, pathlib
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np, jax.numpy as jnp
    from jaxcomp import train
    workdir, mode = sys.argv[1], sys.argv[2]
    train.save_checkpoint(workdir, {"w": jnp.ones(4)}, step=1)
    big = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(MB * 2**18, np.float32))}
    if mode == "before_commit":
        # Stop right before orbax's atomic rename, as a crash at the worst moment would.
        from orbax.checkpoint._src.path import atomicity
        async def hang(self):
            pathlib.Path(workdir, "READY").write_text("x")
            time.sleep(600)
        atomicity.AtomicRenameTemporaryPath.finalize = hang
    else:
        pathlib.Path(workdir, "READY").write_text("x")
    train.save_checkpoint(workdir, big, step=2)
    time.sleep(600)
    """
)


def _run_and_kill(workdir, mode, mb):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen([sys.executable, "-c", WRITER.replace("MB", str(mb)), str(workdir),
                             mode], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (workdir / "READY").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "writer never got ready"
            time.sleep(0.01)
        if mode == "during_write":  # kill as soon as the temporary step directory appears
            while not any(".orbax-checkpoint-tmp" in p.name for p in workdir.iterdir()):
                if time.time() > deadline or proc.poll() is not None:
                    break
                time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


@pytest.mark.parametrize("mode,mb", [("before_commit", 8), ("during_write", 64)])
def test_crash_mid_save_keeps_last_good_checkpoint(tmp_path, mode, mb):
    _run_and_kill(tmp_path, mode, mb)
    names = sorted(p.name for p in tmp_path.iterdir())
    if mode == "before_commit":
        # everything was written, but the step was never renamed into place
        assert "2" not in names and any(n.startswith("2.orbax-checkpoint-tmp") for n in names)
        assert train.latest_step(tmp_path) == 1
    else:  # killed somewhere during the save: either step 2 is complete or it is absent
        assert train.latest_step(tmp_path) in (1, 2)
    got = train.restore_checkpoint(tmp_path, {"w": jnp.zeros(4)}, step=1)
    np.testing.assert_array_equal(got["w"], np.ones(4))
    # a later save of the same step succeeds over the leftovers
    train.save_checkpoint(tmp_path, {"w": jnp.full(4, 2.0)}, step=3)
    assert train.latest_step(tmp_path) == 3
    assert float(train.restore_checkpoint(tmp_path, {"w": jnp.zeros(4)})["w"][0]) == 2.0


@pytest.mark.parametrize("tree", [{}, None, {"a": None, "b": [{}, ()]}, jc.MaskedNode()])
def test_a_state_without_arrays_round_trips(tmp_path, tree):
    train.save_checkpoint(tmp_path, tree, step=4, extra={"note": "empty"})
    assert train.latest_step(tmp_path) == 4
    assert train.restore_checkpoint(tmp_path, tree) == tree
    assert train.read_arrays(tmp_path) == {}
    assert train.checkpoint_extra(tmp_path) == {"note": "empty"}
    with pytest.raises(ValueError, match="w: in the target but not in the checkpoint"):
        train.restore_checkpoint(tmp_path, {"w": jnp.zeros(2)})


def test_extra_data_and_reading_arrays_without_a_target(tmp_path):
    state, step = setup()
    state, _ = step(state, batch_at(0))
    train.save_checkpoint(tmp_path, state, extra={"batches": 1, "history": [{"loss": 0.5}]})
    train.save_checkpoint(tmp_path, state, step=9)
    assert train.checkpoint_extra(tmp_path, step=1) == {"batches": 1, "history": [{"loss": 0.5}]}
    assert train.checkpoint_extra(tmp_path) is None  # step 9 has none
    flat = train.read_arrays(tmp_path, step=1)
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = jc.select.path_str(path)
        assert name in flat
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        np.testing.assert_array_equal(flat[name], np.asarray(leaf))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        train.save_checkpoint(tmp_path, state, step=10, extra={"f": object()})
    with pytest.raises(TypeError, match="mapping"):
        train.save_checkpoint(tmp_path, state, step=10, extra=[1])
    with pytest.raises(FileNotFoundError, match="available steps"):
        train.read_arrays(tmp_path, step=3)
    assert train.read_arrays(tmp_path).keys() == flat.keys()  # the latest, step 9


def test_readers_accept_a_fit_workdir(tmp_path):
    state, _ = setup()
    train.save_checkpoint(tmp_path / "checkpoints", state, step=2)
    assert train.all_steps(tmp_path) == [2] and train.latest_step(tmp_path) == 2
    assert int(train.restore_checkpoint(tmp_path, state).step) == int(state.step)
    assert sorted(train.read_arrays(tmp_path)) == sorted(train.read_arrays(tmp_path / "checkpoints"))
    # steps directly in the directory take precedence
    train.save_checkpoint(tmp_path, state, step=5)
    assert train.all_steps(tmp_path) == [5]
