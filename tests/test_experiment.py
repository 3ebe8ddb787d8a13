"""The generic experiment runner and the run/compare CLI."""

import json
import textwrap

import ml_collections
import pytest

from jaxcomp import cli
from jaxcomp.config import ConfigError
from jaxcomp.experiment import compare, mean_std, run_experiment


def _config(**over):
    c = ml_collections.ConfigDict({
        "name": "tiny",
        "seeds": [0, 1],
        "data": {"name": "digits", "layout": "flat", "batch_size": 32},
        "model": {"name": "lenet300", "overrides": {}},
        "train": {"optimizer": {"name": "adam", "learning_rate": 1e-2}, "steps": 3},
    })
    for k, v in over.items():
        c[k] = v
    return c


def test_mean_std():
    assert mean_std([2.0]) == {"mean": 2.0, "std": 0.0, "n": 1}
    with pytest.raises(ValueError):
        mean_std([])


def test_generic_run_writes_results(tmp_path):
    c = _config(data={"name": "mnist1d", "batch_size": 50},
                model={"name": "mnist1d_mlp", "overrides": {}})
    res = run_experiment(c, tmp_path / "a", progress=False)
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["summary"]["params"]["mean"] == 15_210
    assert saved["summary"]["macs"]["mean"] == 15_000
    assert len(saved["runs"]) == 2 and 0.0 <= saved["summary"]["test.accuracy"]["mean"] <= 1.0
    assert (tmp_path / "a" / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "a" / "seed_0" / "metrics.jsonl").is_file()
    assert res["config"]["name"] == "tiny"
    rows = compare([tmp_path / "a", tmp_path / "a"])
    assert rows[0]["metric"] == "test.accuracy" and "±" in rows[0][str(tmp_path / "a")]


@pytest.mark.parametrize(
    "over,msg",
    [
        ({"model": {"name": "lenet300", "overrides": {}}},
         r"config.model.name: model 'lenet300' expects inputs of shape \(784,\)"),
        ({"model": {"name": "lenet30"}}, r"config.model: unknown model 'lenet30'"),
        ({"data": {"name": "mnist", "batch_size": 8}}, r"config.data.name: unknown dataset 'mnist'"),
        ({"seeds": []}, r"config.seeds: expected a non-empty list of integers"),
        ({"compresion": [{"method": "magnitude_pruning", "sparsity": 0.9}]},
         r"config.compresion: unknown field; did you mean 'compression'"),
        ({"train": {"optimizer": {"name": "adam", "learning_rate": -1e-3}, "steps": 2}},
         r"config.train.optimizer.learning_rate: must be a positive finite number"),
        ({"train": {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 2,
                    "epochs": 1}}, r"config.train: give exactly one of steps and epochs"),
        ({"train": {"optimizer": {"name": "adm", "learning_rate": 1e-3}, "steps": 2}},
         r"config.train.optimizer.name: unknown optimizer 'adm'"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, over, msg):
    base = {"data": {"name": "mnist1d", "batch_size": 50},
            "model": {"name": "mnist1d_mlp", "overrides": {}}}
    base.update(over)
    with pytest.raises(ConfigError, match=msg):
        run_experiment(_config(**base), tmp_path, progress=False)


def test_cli_run_and_compare(tmp_path, capsys):
    cfg = tmp_path / "study.py"
    cfg.write_text(textwrap.dedent("""
        import ml_collections
        def get_config():
            return ml_collections.ConfigDict({
                "name": "cli", "seeds": [0],
                "data": {"name": "mnist1d", "batch_size": 50},
                "model": {"name": "mnist1d_mlp", "overrides": {}},
                "train": {"optimizer": {"name": "sgd", "learning_rate": 0.1}, "steps": 5},
            })
    """))
    out = tmp_path / "out"
    assert cli.main(["run", str(cfg), "--workdir", str(out), "--no-progress",
                     "--config.train.steps=2"]) == 0
    assert "test.accuracy" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["config"]["train"]["steps"] == 2
    assert cli.main(["compare", str(out)]) == 0
    assert "test.accuracy" in capsys.readouterr().out
    assert cli.main(["run", str(cfg), "--workdir", str(out), "--config.train.stps=2"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
    assert cli.main(["run", str(cfg), "--workdir", str(out), "--bogus"]) == 2
    assert cli.main(["compare", str(tmp_path / "missing")]) == 2


def _tiny(**over):
    base = {"seeds": [0], "data": {"name": "synthetic", "n_train": 32, "n_test": 8,
                                   "num_classes": 10, "input_shape": (40,), "batch_size": 16},
            "model": {"name": "mnist1d_mlp", "overrides": {}},
            "train": {"optimizer": {"name": "sgd", "learning_rate": 0.1}, "steps": 2}}
    return _config(**{**base, **over})


def test_a_used_workdir_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "seed_7").mkdir()  # a seed of an earlier run, no longer in the config
    with pytest.raises(ValueError, match=r"is not empty \(notes.txt, seed_7\).*--resume.*"
                                         r"--overwrite"):
        run_experiment(_tiny(), tmp_path, progress=False)
    first = run_experiment(_tiny(), tmp_path, progress=False, overwrite=True)
    assert not (tmp_path / "seed_7").exists() and (tmp_path / "notes.txt").exists()
    assert (tmp_path / "seed_0" / "checkpoints").is_dir()  # the final checkpoint, for --resume
    # resuming a finished run reads it back without training: the same results
    again = run_experiment(_tiny(), tmp_path, progress=False, resume=True)
    assert [r["test"] for r in again["runs"]] == [r["test"] for r in first["runs"]]
    assert again["runs"][0]["nonzero"] == first["runs"][0]["nonzero"]
    with pytest.raises(ValueError, match="config differs .* config.train"):
        run_experiment(_tiny(train={"optimizer": {"name": "sgd", "learning_rate": 0.2},
                                    "steps": 2}), tmp_path, progress=False, resume=True)
    with pytest.raises(ValueError, match="not both"):
        run_experiment(_tiny(), tmp_path, progress=False, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="cannot resume"):
        run_experiment(_tiny(entry="research/x/main.py"), tmp_path / "study", progress=False,
                       resume=True)


def test_only_process_zero_writes_results_plots_and_logs(tmp_path, monkeypatch):
    import jax

    from jaxcomp.train import loop

    saved = []
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    # checkpoints are collective (orbax coordinates the processes): record the calls instead
    monkeypatch.setattr(loop, "save_checkpoint", lambda d, s, **kw: saved.append(kw["step"]))
    res = run_experiment(_tiny(), tmp_path / "out", progress=True)
    assert res["runs"][0]["params"] == 15_210
    assert saved == [2]  # every process takes part in saving the checkpoint
    assert not (tmp_path / "out").exists()  # no results.json, plot, config or metrics.jsonl
