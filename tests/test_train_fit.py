"""jaxcomp.train.fit: training, evaluation, early stopping, logs, progress, determinism."""

import functools
import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from rich.console import Console

from jaxcomp import data, train


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(3)(nn.tanh(nn.Dense(8)(x)))


MODULE = Net()


def apply_fn(variables, x, train=False, rng=None, return_state=False):
    out = MODULE.apply(variables, x)
    return (out, {}) if return_state else out


DS = data.synthetic(n_train=256, n_test=100, num_classes=3, input_shape=(6,), separation=3.0)


@functools.cache
def _functions(donate):
    # built once, so the jit cache is shared by the tests (fit re-jits the same functions)
    tx = optax.adam(0.05)
    step = train.make_train_step(train.supervised_loss(apply_fn), tx, donate=donate)
    ev = train.make_eval_step(train.supervised_loss(apply_fn, train=False))
    return tx, step, ev


def setup(seed=0, donate=False):
    tx, step, ev = _functions(donate)
    params = MODULE.init(jax.random.key(seed), jnp.zeros((1, 6)))["params"]
    state = train.TrainState.create(params, tx, key=jax.random.key(seed + 1))
    return state, step, ev


def train_batches(epochs=None, start=0):
    return data.batches(DS.x_train, DS.y_train, 32, key=jax.random.key(3), epochs=epochs,
                        start=start)


def eval_batches():
    return list(data.batches(DS.x_test, DS.y_test, 32, shuffle=False, pad_last=True, epochs=1))


def test_fit_trains_logs_jsonl_and_evaluates_each_epoch(tmp_path):
    state, step, ev = setup()
    state, hist = train.fit(state, step, train_batches(epochs=6), eval_fn=ev,
                            eval_batches=eval_batches(), workdir=tmp_path, progress=False)
    assert int(state.step) == 6 * 8
    tr = [r for r in hist if r["split"] == "train"]
    evs = [r for r in hist if r["split"] == "eval"]
    assert tr[0]["metrics"]["loss"] > 2 * tr[-1]["metrics"]["loss"]
    assert [r["step"] for r in evs] == [8, 16, 24, 32, 40, 48]  # one per epoch end
    assert [r["epoch"] for r in evs] == list(range(6))
    assert evs[-1]["metrics"]["accuracy"] > 0.9
    assert evs[-1]["metrics"]["num_examples"] == 100.0
    # exact dataset accuracy from the padded eval batches
    logits = apply_fn({"params": state.params}, DS.x_test)
    np.testing.assert_allclose(evs[-1]["metrics"]["accuracy"],
                               np.mean(np.argmax(logits, -1) == DS.y_test), rtol=1e-6)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(hist)
    for r in records:
        assert set(r) == {"step", "epoch", "split", "metrics", "time", "elapsed"}
        assert r["split"] in ("train", "eval") and isinstance(r["metrics"]["loss"], float)
    assert records == json.loads(json.dumps(hist))
    assert [r["elapsed"] for r in records] == sorted(r["elapsed"] for r in records)


def test_fit_is_deterministic():
    runs = []
    for _ in range(2):
        state, step, _ = setup()
        state, hist = train.fit(state, step, train_batches(epochs=2), progress=False)
        runs.append((state, hist))
    for a, b in zip(jax.tree.leaves(runs[0][0].params), jax.tree.leaves(runs[1][0].params)):
        np.testing.assert_array_equal(a, b)
    assert [r["metrics"] for r in runs[0][1]] == [r["metrics"] for r in runs[1][1]]


def scripted_eval(values):
    def ev(state, batch):
        return {"loss": values[int(state.step) - 1], "num_examples": 1.0}
    return ev


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_stops_and_restores_best(restore_best):
    state, step, _ = setup()
    values = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9] + [4.0] * 100
    es = train.EarlyStopping("eval/loss", mode="min", patience=2, restore_best=restore_best)
    seen = []
    state, hist = train.fit(state, jax.jit(step), train_batches(), steps=100,
                            eval_fn=scripted_eval(values), eval_batches=[{}], eval_every=1,
                            early_stopping=es, progress=False, jit=False,
                            callbacks=[lambda s, r: seen.append((int(s.step), r["split"]))])
    evs = [r for r in hist if r["split"] == "eval"]
    assert [r["step"] for r in evs] == [1, 2, 3, 4, 5]  # best at 3, two checks without gain
    assert int(state.step) == (3 if restore_best else 5)
    assert seen[-1] == (5, "eval") and len(seen) == len(hist)


def test_early_stopping_max_mode_min_delta_and_donation():
    state, step, _ = setup(donate=True)
    values = [0.5, 0.6, 0.605, 0.61, 0.2] + [0.0] * 50
    es = train.EarlyStopping("eval/acc", mode="max", patience=2, min_delta=0.01)

    def ev(state, batch):  # jittable: fit jits it and donates the train state's buffers
        return {"acc": jnp.asarray(values)[state.step - 1], "num_examples": jnp.float32(1)}

    state, hist = train.fit(state, step, train_batches(), steps=50, eval_fn=ev,
                            eval_batches=[{}], eval_every=1, early_stopping=es, progress=False)
    # 0.605 and 0.61 do not beat 0.6 by more than 0.01: stop at step 4, best state is step 2
    assert [r["step"] for r in hist if r["split"] == "eval"] == [1, 2, 3, 4]
    assert int(state.step) == 2
    # the best state was copied before its buffers were donated to later steps
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_early_stopping_validation():
    with pytest.raises(ValueError, match="split/metric"):
        train.EarlyStopping("loss")
    with pytest.raises(ValueError, match="mode"):
        train.EarlyStopping("eval/loss", mode="best")
    with pytest.raises(ValueError, match="patience"):
        train.EarlyStopping("eval/loss", patience=-1)
    state, step, ev = setup()
    with pytest.raises(ValueError, match="no eval_fn"):
        train.fit(state, step, train_batches(), steps=2, early_stopping=train.EarlyStopping(),
                  progress=False)
    with pytest.raises(ValueError, match=r"metrics are \['accuracy', 'loss', 'num_examples'\]"):
        train.fit(state, step, train_batches(), steps=2, eval_fn=ev, eval_batches=eval_batches(),
                  early_stopping=train.EarlyStopping("eval/acc"), progress=False)


def test_progress_off_prints_nothing(capsys):
    state, step, ev = setup()
    train.fit(state, step, train_batches(epochs=1), eval_fn=ev, eval_batches=eval_batches(),
              progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_non_tty_progress_prints_few_plain_lines():
    state, step, ev = setup()
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=120)
    train.fit(state, step, train_batches(), steps=200, log_every=1, eval_fn=ev,
              eval_batches=eval_batches(), eval_every=100, console=console)
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no bar redraws, no escape codes
    lines = text.splitlines()
    train_lines = [ln for ln in lines if " train " in ln and ln.startswith("step ")]
    eval_lines = [ln for ln in lines if " eval " in ln and ln.startswith("step ")]
    assert 8 <= len(train_lines) <= 11  # ~10 periodic lines, not 200
    assert len(eval_lines) == 2
    assert train_lines[-1].startswith("step 200/200")
    assert "Training summary" in text


def test_tty_progress_bar_runs():
    state, step, ev = setup()
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    train.fit(state, step, train_batches(epochs=2), eval_fn=ev, eval_batches=eval_batches(),
              console=console)
    text = buf.getvalue()
    assert "Training summary" in text and "eval" in text and "16/16" in text


def test_batch_sources_and_argument_errors():
    state, step, _ = setup()
    fixed = list(train_batches(epochs=1))  # 8 batches
    # a list is re-iterated each epoch
    s, hist = train.fit(state, step, fixed, epochs=2, progress=False)
    assert int(s.step) == 16 and hist[-1]["epoch"] == 1
    # a function epoch -> iterable
    s, _ = train.fit(state, step, lambda e: fixed[:3], epochs=2, progress=False)
    assert int(s.step) == 6
    # a plain generator with steps (stops early when it runs out)
    s, _ = train.fit(state, step, iter(fixed), steps=5, progress=False)
    assert int(s.step) == 5
    s, hist = train.fit(state, step, (b for b in fixed), progress=False)
    assert int(s.step) == 8 and hist[-1]["split"] == "train" and hist[-1]["step"] == 8
    with pytest.raises(ValueError, match="epochs= needs to know where epochs end"):
        train.fit(state, step, iter(fixed), epochs=2, progress=False)
    with pytest.raises(ValueError, match="repeats forever"):
        train.fit(state, step, train_batches(), progress=False)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train.fit(state, step, fixed, steps=0, progress=False)
    with pytest.raises(ValueError, match="together"):
        train.fit(state, step, fixed, eval_fn=lambda s, b: {}, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every needs workdir"):
        train.fit(state, step, fixed, checkpoint_every=2, progress=False)
    # a callback can stop training
    s, hist = train.fit(state, step, fixed, log_every=1, progress=False,
                        callbacks=[lambda st, r: r["step"] >= 3])
    assert int(s.step) == 3


def test_fit_checkpoints_and_resumes_bit_identically(tmp_path):
    state, step, _ = setup()
    straight, _ = train.fit(state, step, train_batches(), steps=12, progress=False)

    state, step, _ = setup()
    train.fit(state, step, train_batches(), steps=7, workdir=tmp_path, checkpoint_every=5,
              progress=False)
    ckpt = tmp_path / "checkpoints"
    assert train.all_steps(ckpt) == [5, 7]
    fresh, step2, _ = setup(seed=4)
    resumed = train.restore_checkpoint(ckpt, fresh, step=5)
    resumed, hist = train.fit(resumed, step2, train_batches(start=5), steps=7, progress=False)
    assert hist[-1]["step"] == 12
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ compression-aware selection
@pytest.mark.parametrize("where", ["step", "host"])
def test_early_stopping_never_restores_a_state_before_the_sparsity_target(where):
    import jaxcomp.prune as jp
    from jaxcomp.core.base import target_reached

    comp = jp.magnitude_pruning(jp.cubic_schedule(0.0, 0.9, 0, 30, update_every=5))
    tx = optax.chain(optax.adam(0.05), train.keep_compressed(comp))
    params = MODULE.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    state = train.TrainState.create(params, tx, key=jax.random.key(1), compressor=comp)
    step = train.make_train_step(train.supervised_loss(apply_fn), tx, compressor=comp,
                                 compressor_update=where)
    # the eval accuracy only gets worse: the best check is the first one (step 5, still dense)
    values = jnp.linspace(0.9, 0.1, 20)

    def ev(state, batch):
        return {"accuracy": values[state.step // 5 - 1], "num_examples": jnp.float32(1)}

    es = train.EarlyStopping("eval/accuracy", mode="max", patience=2)
    state, hist = train.fit(state, step, train_batches(), steps=100, eval_fn=ev,
                            eval_batches=[{}], eval_every=5, early_stopping=es, progress=False)
    evs = [r["step"] for r in hist if r["split"] == "eval"]
    # the last mask update runs at step index 30 (state.step 31): checks from step 35 count,
    # and patience starts there (35 best, 40 and 45 do not improve)
    assert evs == list(range(5, 50, 5))
    assert int(state.step) == 35
    assert target_reached(comp, state.compressor_state)
    view = comp.apply(state.params, state.compressor_state)
    kernels = [view["Dense_0"]["kernel"], view["Dense_1"]["kernel"]]
    zeros = sum(int(jnp.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros >= 0.88


def test_early_stopping_without_a_reached_target_returns_the_final_state():
    import jaxcomp.prune as jp

    comp = jp.magnitude_pruning(jp.cubic_schedule(0.0, 0.9, 0, 1000, update_every=5))
    tx = optax.chain(optax.adam(0.05), train.keep_compressed(comp))
    params = MODULE.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    state = train.TrainState.create(params, tx, key=jax.random.key(1), compressor=comp)
    step = train.make_train_step(train.supervised_loss(apply_fn), tx, compressor=comp)
    ev = train.make_eval_step(train.supervised_loss(apply_fn, train=False), compressor=comp)
    buf = io.StringIO()
    es = train.EarlyStopping("eval/loss", patience=0)
    state, _ = train.fit(state, step, train_batches(), steps=20, eval_fn=ev,
                            eval_batches=eval_batches(), eval_every=5, early_stopping=es,
                            console=Console(file=buf, width=120))
    assert int(state.step) == 20  # patience 0 would have stopped at step 10 otherwise
    assert "compression target was never reached" in buf.getvalue()


# ------------------------------------------------------------------------ non-finite losses
def poisoned(at):
    fixed = list(train_batches(epochs=2))  # 16 batches
    bad = dict(fixed[at])
    bad["x"] = np.full_like(bad["x"], np.nan)
    return fixed[:at] + [bad] + fixed[at + 1:], fixed[:at] + fixed[at + 1:]


def test_nonfinite_loss_raises_naming_the_step_and_never_checkpoints_it(tmp_path):
    state, step, _ = setup()
    batches, _ = poisoned(6)  # the 7th update (state.step 7) sees NaN inputs
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 7 .*on_nonfinite='skip'"):
        train.fit(state, step, batches, log_every=10, workdir=tmp_path, checkpoint_every=4,
                  progress=False)
    assert train.all_steps(tmp_path) == [4]  # the fetch before the step-8 checkpoint raised
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        train.fit(state, step, batches, on_nonfinite="drop", progress=False)


def test_nonfinite_skip_drops_the_update_and_ignore_trains_on():
    state, step, _ = setup()
    batches, clean = poisoned(6)
    skipped, hist = train.fit(state, step, batches, log_every=1, on_nonfinite="skip",
                              progress=False)
    state, step, _ = setup()
    reference, _ = train.fit(state, step, clean, progress=False)  # the model has no randomness
    for a, b in zip(jax.tree.leaves(skipped.params), jax.tree.leaves(reference.params)):
        np.testing.assert_array_equal(a, b)
    assert int(skipped.step) == 16 and int(reference.step) == 15  # step counts batches seen
    rec = {r["step"]: r["metrics"] for r in hist}
    assert rec[7]["skipped"] == 1.0 and np.isnan(rec[7]["loss"])
    assert rec[8]["skipped"] == 0.0 and np.isfinite(rec[8]["loss"])
    state, step, _ = setup()
    ignored, _ = train.fit(state, step, batches, on_nonfinite="ignore", progress=False)
    assert np.isnan(np.asarray(ignored.params["Dense_0"]["kernel"])).all()


# ----------------------------------------------------------------------------- workdirs
def test_fit_refuses_a_used_workdir_unless_resume_or_overwrite(tmp_path):
    state, step, _ = setup()
    train.fit(state, step, train_batches(), steps=3, workdir=tmp_path, checkpoint_every=3,
              progress=False)
    assert train.latest_step(tmp_path) == 3  # the fit workdir, checkpoints in its subfolder
    with pytest.raises(ValueError, match="already holds a run .*resume=True.*overwrite=True"):
        train.fit(state, step, train_batches(), steps=2, workdir=tmp_path, progress=False)
    train.fit(state, step, train_batches(), steps=2, log_every=1, workdir=tmp_path,
              overwrite=True, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # the first run is gone
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ValueError, match="not both"):
        train.fit(state, step, train_batches(), steps=2, workdir=tmp_path, resume=True,
                  overwrite=True, progress=False)
    with pytest.raises(ValueError, match="resume=True needs workdir"):
        train.fit(state, step, train_batches(), steps=2, resume=True, progress=False)


def test_only_process_zero_writes_logs_and_prints(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    state, step, ev = setup()
    buf = io.StringIO()
    train.fit(state, step, train_batches(), steps=4, eval_fn=ev, eval_batches=eval_batches(),
              workdir=tmp_path / "run", console=Console(file=buf, force_terminal=True))
    assert buf.getvalue() == ""
    assert not (tmp_path / "run").exists()
