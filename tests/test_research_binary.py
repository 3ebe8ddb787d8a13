"""The binary_ternary study: a one-step smoke run and its report.

The smoke run checks what the study records (binarized paths, weight bits,
storage and BOPs, hand-computed for the smoke MLP); the report test renders
altered results and checks that the sentences follow the numbers; the
committed report must be what the renderer makes of the committed results.
"""

import copy
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
STUDY = "binary_ternary"


def test_binary_ternary_smoke(tmp_path, run_study):
    res = run_study(tmp_path, STUDY)
    s = res["models"]["mlp"]["summary"]
    assert list(s) == ["float", "xnor"]
    assert s["xnor"]["binarized"] == ["fc2/kernel"] and s["xnor"]["weight_bits"] == [1]
    # 784-16-16-10: fc2's kernel at 1 bit + 16 per-filter scales + a zero point (32 bits each)
    n = 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert s["float"]["storage_bytes"] == n * 32 // 8
    assert s["xnor"]["storage_bytes"] == ((n - 256) * 32 + 256 + 17 * 32) // 8
    # BOPs: 32 x 32 bits except fc2 (1-bit weights, 1-bit inputs)
    assert s["float"]["bops"] == (784 * 16 + 256 + 160) * 32 * 32
    assert s["xnor"]["bops"] == (784 * 16 + 160) * 32 * 32 + 256
    assert s["float"]["delta"]["mean"] == 0.0
    assert (tmp_path / "accuracy_delta.png").exists()


def results(deltas):
    summary = {"float": {"accuracy": {"mean": 0.95, "std": 0.002, "n": 3},
                         "delta": {"mean": 0.0, "std": 0.0, "n": 3}}}
    for m, (d, sd) in deltas.items():
        summary[m] = {"accuracy": {"mean": 0.95 + d, "std": sd, "n": 3},
                      "delta": {"mean": d, "std": sd, "n": 3}}
    return {"models": {"mlp": {"summary": summary}}}


def test_report_follows_the_numbers(study_module):
    m = study_module(STUDY)
    res = results({"binary_connect": (-0.004, 0.002), "ternary": (-0.001, 0.001),
                   "xnor": (-0.05, 0.01)})
    text = m.findings(res)[0]
    assert text.startswith("- mlp: accuracy order float > TWN > BinaryConnect > XNOR-Net")
    assert "the expected float ≥ TWN ≥ BinaryConnect holds" in text
    assert "BinaryConnect -0.40 pp (below the published +0.01 pp)" in text
    assert "TWN -0.10 pp (within noise of the published -0.06 pp)" in text
    assert "XNOR-Net -5.00 pp (above the published -12.40 pp)" in text
    flipped = copy.deepcopy(res)
    flipped["models"]["mlp"]["summary"]["binary_connect"]["accuracy"]["mean"] = 0.96
    text = m.findings(flipped)[0]
    assert "float ≥ TWN ≥ BinaryConnect does not hold" in text


def test_committed_report_is_rendered_from_committed_results(rerender):
    assert rerender(STUDY) == (ROOT / "research" / STUDY / "RESULTS.md").read_text()
    res = json.loads((ROOT / "research" / STUDY / "results.json").read_text())
    assert res["config"]["seeds"] == [0, 1, 2] and res["overrides"] == []
