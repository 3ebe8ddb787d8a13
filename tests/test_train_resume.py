"""Resuming fit and `jaxcomp run`: bit-identical continuation after a crash, history, refusals."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcomp as jc
from jaxcomp import data, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(8)(x)
        h = nn.Dropout(0.3, deterministic=not train)(nn.tanh(h))  # uses the step key
        return nn.Dense(3)(h)


MODULE = Net()


def apply_fn(variables, x, train=False, rng=None, return_state=False):
    out = MODULE.apply(variables, x, train=train, rngs=None if rng is None else {"dropout": rng})
    return (out, {}) if return_state else out


DS = data.synthetic(n_train=96, n_test=40, num_classes=3, input_shape=(6,), separation=2.0)


def threshold_pruning():
    """A cheap gradual pruner: every 4 steps up to step 12, zero the weights below a rising bar."""

    def init(params):
        return {"mask": jax.tree.map(lambda p: jnp.ones(p.shape, bool), params),
                "updates": jnp.zeros((), jnp.int32)}

    def apply(params, state):
        return jax.tree.map(lambda p, m: p * m, params, state["mask"])

    def update(params, state, *, step, grads=None, **extra):
        bar = 0.05 * (state["updates"] + 1).astype(jnp.float32)
        mask = jax.tree.map(lambda p, m: m & (jnp.abs(p) > bar), params, state["mask"])
        state = {"mask": mask, "updates": state["updates"] + 1}
        return apply(params, state), state

    def due(step):
        return (step % 4 == 0) & (step <= 12)

    def reached(state):
        return state["updates"] >= 4

    return jc.Compressor(init, apply, update, apply, due, reached)


COMP = threshold_pruning()
TX = optax.chain(optax.adam(0.05), train.keep_compressed(COMP))
STEPS = {
    where: train.make_train_step(train.supervised_loss(apply_fn), TX, compressor=COMP,
                                 compressor_update=where, donate=True)
    for where in ("step", "host")
}
EVAL = train.make_eval_step(train.supervised_loss(apply_fn, train=False), compressor=COMP)


class Crash(Exception):
    pass


def fresh():
    params = MODULE.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    return train.TrainState.create(params, TX, key=jax.random.key(1), compressor=COMP)


def sources(kind):
    def make():
        return data.batches(DS.x_train, DS.y_train, 16, key=jax.random.key(2), epochs=8)
    if kind == "batches":
        return make()
    if kind == "iterator":
        return iter(list(make()))
    return lambda epoch: list(data.batches(DS.x_train, DS.y_train, 16, key=jax.random.key(epoch),
                                           epochs=1))


def leaves(state):
    out = []
    for x in jax.tree.leaves(state):
        x = jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        out.append(np.asarray(x))
    return out


def strip(history):
    return [{k: v for k, v in r.items() if k not in ("time", "elapsed")} for r in history]


def run(workdir, kind, where, crash_at=None, resume=False):
    def crash(state, record):
        if crash_at is not None and record["step"] >= crash_at:
            raise Crash
    es = train.EarlyStopping("eval/accuracy", mode="max", patience=20)
    return train.fit(fresh(), STEPS[where], sources(kind), epochs=8 if kind == "factory" else None,
                     steps=None if kind == "factory" else 45, eval_fn=EVAL,
                     eval_batches=list(data.batches(DS.x_test, DS.y_test, 20, shuffle=False,
                                                    epochs=1)),
                     eval_every=7, log_every=5, early_stopping=es, workdir=workdir,
                     checkpoint_every=15, resume=resume, progress=False, callbacks=[crash])


@pytest.mark.parametrize("kind,where", [("batches", "step"), ("iterator", "host"),
                                        ("factory", "step")])
def test_resume_after_a_crash_is_bit_identical(tmp_path, kind, where):
    straight, history = run(tmp_path / "straight", kind, where)
    with pytest.raises(Crash):
        run(tmp_path / "crashed", kind, where, crash_at=33)  # checkpoints at 15, 30
    assert train.latest_step(tmp_path / "crashed") == 30
    logged = [json.loads(x)["step"] for x in
              (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) > 30  # lines past the checkpoint, to be dropped on resume
    resumed, resumed_history = run(tmp_path / "crashed", kind, where, resume=True)
    for a, b in zip(leaves(straight), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert strip(resumed_history) == strip(history)
    lines = [json.loads(x) for x in
             (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert strip(lines) == strip(history)  # no mixing of the two attempts


def test_resuming_a_finished_run_returns_it_without_training(tmp_path):
    state, history = run(tmp_path, "batches", "step")
    calls = []
    again, again_history = train.fit(
        fresh(), lambda s, b: calls.append(1), sources("batches"), steps=45, workdir=tmp_path,
        resume=True, progress=False, jit=False, eval_fn=EVAL, eval_batches=[{}],
        early_stopping=train.EarlyStopping("eval/accuracy", mode="max", patience=20))
    assert calls == []
    for a, b in zip(leaves(state), leaves(again)):  # the best state, restored from best/
        np.testing.assert_array_equal(a, b)
    assert strip(again_history) == strip(history)


def test_resume_without_a_checkpoint_starts_afresh_and_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(Crash):
        run(tmp_path / "a", "batches", "step", crash_at=5)  # before the first checkpoint
    assert (tmp_path / "a" / "metrics.jsonl").read_text()
    state, history = run(tmp_path / "a", "batches", "step", resume=True)
    straight, straight_history = run(tmp_path / "b", "batches", "step")
    for a, b in zip(leaves(straight), leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert strip(history) == strip(straight_history)
    train.save_checkpoint(tmp_path / "c" / "checkpoints", fresh())
    with pytest.raises(ValueError, match="not written by fit"):
        run(tmp_path / "c", "batches", "step", resume=True)


# ------------------------------------------------------------------- jaxcomp run, killed
CONFIG = """
import ml_collections

def get_config():
    return ml_collections.ConfigDict({
        "name": "resume", "seeds": [0, 1],
        "data": {"name": "synthetic", "n_train": 128, "n_test": 40, "num_classes": 10,
                 "input_shape": (40,), "batch_size": 16},
        "model": {"name": "mnist1d_mlp", "overrides": {}},
        "train": {"optimizer": {"name": "adam", "learning_rate": 1e-2}, "steps": 60,
                  "eval_every": 20, "log_every": 7, "checkpoint_every": 25},
    })
"""

# Runs the CLI in this process and dies abruptly (no cleanup, like a SIGKILL) once seed 1 has
# logged step 35: after its checkpoint at step 25, with lines past it in metrics.jsonl.
KILLER = """
import os, sys
from jaxcomp.train import progress
write = progress.MetricsWriter.write
def dying_write(self, record):
    write(self, record)
    if self.path is not None and "seed_1" in str(self.path) and record["step"] >= 35:
        os._exit(17)
progress.MetricsWriter.write = dying_write
from jaxcomp import cli
sys.exit(cli.main(sys.argv[1:]))
"""
KILLER_FREE = "import sys; from jaxcomp import cli; sys.exit(cli.main(sys.argv[1:]))"


def test_jaxcomp_run_killed_then_resumed_matches_an_uninterrupted_run(tmp_path, capsys):
    cfg = tmp_path / "study.py"
    cfg.write_text(textwrap.dedent(CONFIG))
    args = ["run", str(cfg), "--no-progress", "--workdir"]
    # The three runs share a persistent compilation cache: only the first one compiles.
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jit"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

    def jaxcomp_run(*argv, code=KILLER_FREE):
        return subprocess.run([sys.executable, "-c", code, *args, *argv], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, check=False)

    straight = jaxcomp_run(str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stdout + straight.stderr
    killed = jaxcomp_run(str(tmp_path / "run"), code=KILLER)
    assert killed.returncode == 17, killed.stdout + killed.stderr
    run_dir = tmp_path / "run"
    assert train.all_steps(run_dir / "seed_0") == [25, 50, 60] and train.all_steps(
        run_dir / "seed_1") == [25]
    assert not (run_dir / "results.json").exists()

    from jaxcomp import cli

    assert cli.main([*args, str(run_dir)]) == 2  # refused before any work: not empty
    assert "is not empty" in capsys.readouterr().err
    resumed = jaxcomp_run(str(run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for seed in (0, 1):
        a = train.read_arrays(tmp_path / "straight" / f"seed_{seed}")
        b = train.read_arrays(run_dir / f"seed_{seed}")
        assert train.latest_step(run_dir / f"seed_{seed}") == 60 and a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        lines = [strip([json.loads(x)])[0] for x in
                 (run_dir / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()]
        straight_lines = [strip([json.loads(x)])[0] for x in
                          (tmp_path / "straight" / f"seed_{seed}" / "metrics.jsonl")
                          .read_text().splitlines()]
        assert lines == straight_lines
    res = json.loads((run_dir / "results.json").read_text())
    ref = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert [r["test"] for r in res["runs"]] == [r["test"] for r in ref["runs"]]
    # a changed config does not resume into the same workdir
    assert cli.main([*args, str(run_dir), "--resume", "--config.train.steps=80"]) == 2
    assert "config differs" in capsys.readouterr().err
