"""The jaxcomp command line: acceptance counts of the reference models."""

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
