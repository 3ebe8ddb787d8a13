"""The jaxcomp command line: acceptance counts of the reference models."""

import io
import json

import pytest

from jaxcomp import cli

PUBLISHED = {
    "lenet300": (266_610, 266_200, [235_200, 30_000, 1_000]),
    "lenet5": (431_080, 2_293_000, [288_000, 1_600_000, 400_000, 5_000]),
    "lenet5_classic": (61_706, 416_520, [117_600, 240_000, 48_000, 10_080, 840]),
}


def _run_json(capsys, *argv):
    assert cli.main(["summary", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_summary_json_matches_published_counts(capsys, name):
    params, macs, per_layer = PUBLISHED[name]
    d = _run_json(capsys, name)
    assert {"params", "macs", "flops", "xla_flops", "memory", "layers"} <= set(d)
    assert d["params"] == params and d["macs"] == macs and d["flops"] == 2 * macs
    assert [layer["macs"] for layer in d["layers"]] == per_layer
    assert d["xla_flops"] > 0 and d["memory"]["argument_bytes"] >= 4 * params
    assert d["warnings"] == []


def test_summary_resnet50(capsys):
    d = _run_json(capsys, "resnet50", "--no-xla")
    assert d["params"] == 25_557_032
    assert d["macs"] == pytest.approx(4.09e9, rel=0.01)
    assert d["xla_flops"] is None and d["memory"] is None
    assert len(d["layers"]) == 54  # 53 convolutions + the classifier


def test_summary_batch_scales_macs(capsys):
    d = _run_json(capsys, "lenet300", "--batch", "4", "--no-xla")
    assert d["macs"] == 4 * 266_200 and d["macs_per_example"] == 266_200


def test_summary_text_states_the_convention(capsys):
    assert cli.main(["summary", "mnist1d_cnn", "--no-xla"]) == 0
    out = capsys.readouterr().out
    assert "1 MAC = 2 FLOPs" in out and "31,750" in out and "5,210" in out


def test_models_lists_every_model(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet300", "lenet5", "lenet5_classic", "resnet50", "resnet20"):
        assert name in out


def test_unknown_model_and_bad_batch_are_clear_errors(capsys):
    assert cli.main(["summary", "lenet"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'lenet'" in err and "did you mean" in err
    assert cli.main(["summary", "lenet300", "--batch", "0"]) == 2
    assert "--batch must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["summary"])


@pytest.mark.parametrize("name", ["resnet50", "tiny_transformer", "mobilenet_small", "lenet5"])
def test_summary_fits_an_80_column_terminal(name):
    from rich.console import Console

    result = cli.summary(name, xla=False)
    console = Console(width=80, record=True, file=io.StringIO())
    cli._print_summary(result, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # nothing cut short
    rows = [line.split() for line in text.splitlines()]
    for layer in result["layers"]:  # every layer's full name and MACs on its row
        assert any(r and r[0] == layer["name"] for r in rows), layer["name"]
    assert "1 MAC = 2 FLOPs" in text and f"{result['params']:,}" in text


def _results(path, summary):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"summary": summary}))
    return str(path)


def test_compare_prints_numbers_in_80_columns(tmp_path):
    from rich.console import Console

    a = _results(tmp_path / "runs" / "dense", {
        "test.accuracy": {"mean": 0.91234, "std": 0.0123, "n": 3},
        "params": {"mean": 266610.0, "std": 0.0, "n": 3},
        "narrow": {"kd": {"errors": {"mean": 12.0, "std": 1.5, "n": 3}}, "best_temperature": 4.0},
    })
    b = _results(tmp_path / "other" / "dense", {"test.accuracy": {"mean": 0.5, "std": 0.0, "n": 1},
                                                "per_seed": [0.04, -0.07]})
    console = Console(width=80, record=True, file=io.StringIO())
    assert cli._compare([a, b], console=console) == 0
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "{" not in text and "'mean'" not in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "0.9123 ± 0.012" in lines["test.accuracy"] and "0.5 ± 0" in lines["test.accuracy"]
    assert "266,610 ± 0" in lines["params"]
    assert "12 ± 1.5" in lines["narrow.kd.errors"] and "4" in lines["narrow.best_temperature"]
    assert "0.04, -0.07" in lines["per_seed"]
    assert "runs/dense" in text and "other/dense" in text  # short, distinct column labels


STUDY = """
import ml_collections
def get_config():
    return ml_collections.ConfigDict({
        "name": "cli", "seeds": [0],
        "data": {"name": "synthetic", "n_train": 32, "n_test": 8, "num_classes": 10,
                 "input_shape": (40,), "batch_size": 16},
        "model": {"name": "mnist1d_mlp", "overrides": {}},
        "train": {"optimizer": {"name": "sgd", "learning_rate": 0.1}, "steps": 2},
    })
"""


@pytest.mark.parametrize("package", ["ml_collections", "matplotlib", "mnist1d", "mlxtend",
                                     "sklearn"])
def test_run_without_the_research_extra_says_what_to_install(tmp_path, monkeypatch, capsys,
                                                             package):
    import importlib
    import sys

    from jaxcomp import data

    cfg = tmp_path / "study.py"
    cfg.write_text(STUDY)
    real_load = data.load

    def load(name, **kwargs):  # a dataset loader that needs the package, like mnist1d()
        importlib.import_module(package)
        return real_load(name, **kwargs)

    monkeypatch.setattr(data, "load", load)
    monkeypatch.setitem(sys.modules, package, None)
    assert cli.main(["run", str(cfg), "--workdir", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    dist = {"ml_collections": "ml-collections", "sklearn": "scikit-learn"}.get(package, package)
    assert f"'{dist}'" in err and 'pip install "jaxcomp[research]"' in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_extra_follows_re_raised_import_errors():
    from jaxcomp.config.extras import missing_extra

    try:
        try:
            raise ModuleNotFoundError("No module named 'mnist1d'", name="mnist1d")
        except ImportError as e:
            raise ImportError('mnist1d() needs the mnist1d package') from e
    except ImportError as e:
        assert missing_extra(e) == "mnist1d"
    assert missing_extra(ValueError("x")) is None
