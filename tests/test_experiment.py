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
        ({"seeds": []}, r"config.seeds: invalid value"),
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
