"""The integer_inference study: smoke run and its report."""

import copy
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
STUDY = "integer_inference"


def committed():
    return json.loads((ROOT / "research" / STUDY / "results.json").read_text())


def test_committed_report_is_rendered_from_committed_results(rerender):
    assert rerender(STUDY) == (ROOT / "research" / STUDY / "RESULTS.md").read_text()


def test_smoke_run(tmp_path, run_study):
    res = run_study(tmp_path, STUDY)
    (name,) = res["models"]
    m = res["models"][name]
    assert m["program"] == ["fc1", "relu", "fc2"]
    s = m["summary"]
    for v in ("float", "qat_fake_quant", "integer", "ptq_integer"):
        assert 0.0 <= s[v]["mean"] <= 1.0
    assert s["max_steps_off"] <= 1.0 + 1e-4  # the integer network is the fake-quant model
    assert m["latency"]["float_ms"] > 0 and m["latency"]["integer_ms"] > 0
    assert m["storage"]["integer_bytes"] < m["storage"]["float_bytes"]
    assert (tmp_path / "integer_inference.png").exists()


def test_report_follows_the_numbers(study_module):
    m = study_module(STUDY)
    res = committed()
    name = next(iter(res["models"]))
    text = "\n".join(m.findings(res))
    s = res["models"][name]["summary"]
    assert f"on {s['same_prediction']['mean'] * 100:.2f}% of test images" in text

    alt = copy.deepcopy(res)
    a = alt["models"][name]
    a["summary"]["integer_minus_float"].update(mean=-0.05, std=0.01)
    a["summary"]["integer"].update(std=0.01)
    a["summary"]["float"].update(std=0.01)
    a["summary"]["ptq_minus_float"].update(mean=-0.1234)
    a["latency"]["speedup"] = 0.5
    text = "\n".join(m.findings(alt))
    assert f"{name}: the integer-only network loses 5.00 pp against the float reference " \
           "(more than one seed standard deviation)" in text
    assert "Post-training quantization without QAT loses 12.34 pp." in text
    assert "runs 2.00× slower than the float one" in text

    a["summary"]["integer_minus_float"].update(mean=0.0)
    a["summary"]["ptq_minus_float"].update(mean=0.0)
    a["latency"]["speedup"] = 2.5
    text = "\n".join(m.findings(alt))
    assert "network matches the float reference (within one seed standard deviation)" in text
    assert "keeps the float accuracy" in text and "2.50× faster than the float one" in text
