"""The distillation studies and the MNIST-1D baselines: smoke runs and their reports.

Each smoke test runs ``research/<study>/main.py`` on ``configs/<study>.py:smoke``
(the variant documented as the one-minute check). The report tests render
``RESULTS.md`` from altered results and check that the sentences follow the
numbers, and that the committed reports are what the renderer makes of the
committed ``results.json``.
"""

import copy
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def committed(study):
    return json.loads((ROOT / "research" / study / "results.json").read_text())


@pytest.mark.parametrize("study", ["mnist1d_baselines", "hinton_kd", "fitnets_multiteacher"])
def test_committed_report_is_rendered_from_committed_results(study, rerender):
    assert rerender(study) == (ROOT / "research" / study / "RESULTS.md").read_text()


# ---------------------------------------------------------------- hinton_kd


@pytest.mark.slow
def test_hinton_kd_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "hinton_kd")
    assert (tmp_path / "gap_closure.png").stat().st_size > 1000
    runs = res["runs"]
    # teacher + (hard + one KD run) for each of the two students
    assert [(r["model"], r["temperature"]) for r in runs] == [
        ("teacher", None), ("narrow", None), ("narrow", 20.0), ("wide", None), ("wide", 20.0)]
    for r in runs:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["errors"] == round((1 - r["accuracy"]) * res["test_examples"])
    s = res["summary"]
    wide = s["wide"]["kd"]["20"]
    hard, kd, teacher = runs[3]["errors"], runs[4]["errors"], runs[0]["errors"]
    if hard > teacher:
        assert wide["gap_closure_of_means"] == pytest.approx((hard - kd) / (hard - teacher))
    else:
        assert wide["gap_closure_of_means"] is None  # NaN is written as null
    assert res["students"]["narrow"]["params"] == 784 * 30 + 30 + 30 * 30 + 30 + 30 * 10 + 10
    assert res["teacher_params"] == 2_395_210
    assert res["config"]["teacher"]["jitter"]["copies"] == 1  # the smoke variant's setting


def _kd_row(res, student, temp, kd_errors):
    """Sets the seed-mean KD errors of one cell and its closure consistently."""
    mod_row = res["summary"][student]
    hard = mod_row["hard_errors"]["mean"]
    teacher = res["summary"]["teacher_errors"]["mean"]
    cell = mod_row["kd"][f"{temp:g}"]
    cell["errors"]["mean"] = kd_errors
    cell["gap_closure_of_means"] = (hard - kd_errors) / (hard - teacher)


def test_hinton_report_follows_the_numbers(study_module):
    m = study_module("hinton_kd")
    res = committed("hinton_kd")
    text = "\n".join(m.findings(res))
    # committed numbers: wide closes 37% at T=20; narrow widens the gap at T=20; narrow best T=1
    assert "The wide student at T = 20 closes 37% of the gap" in text
    assert "The narrow student at T = 20 widens the gap by 71%" in text
    assert "As in the paper, the smaller student's best T (1, narrow) is lower than" in text
    assert "is below the published 91%" in text

    worse = copy.deepcopy(res)
    hard = worse["summary"]["wide"]["hard_errors"]["mean"]
    _kd_row(worse, "wide", 20.0, hard + 5)  # KD now worse than hard labels at T = 20
    text = "\n".join(m.findings(worse))
    assert "The wide student at T = 20 widens the gap by" in text
    assert "more at T = 1 and 20" in text

    flipped = copy.deepcopy(res)
    flipped["summary"]["wide"]["best_temperature"] = 1.0
    flipped["summary"]["narrow"]["best_temperature"] = 8.0
    assert "Unlike the paper, the smaller student's best T (8, narrow) is higher than" in \
        "\n".join(m.findings(flipped))

    above = copy.deepcopy(res)
    teacher = above["summary"]["teacher_errors"]["mean"]
    _kd_row(above, "wide", 20.0, teacher + 0.01 * (hard - teacher))  # 99% closed
    assert "(99%) is above the published 91%" in "\n".join(m.findings(above))

    no_gap = copy.deepcopy(res)
    no_gap["summary"]["wide"]["hard_errors"]["mean"] = teacher - 1
    text = "\n".join(m.findings(no_gap))
    assert "The hard-label wide student makes no more errors than the teacher" in text
    assert "The wide student's closure" not in text


def test_hinton_gap_closure_and_jitter(study_module):
    import numpy as np

    from jaxcomp.data import Dataset

    m = study_module("hinton_kd")
    assert m.gap_closure(hard=50, kd=40, teacher=30) == 0.5
    assert np.isnan(m.gap_closure(hard=30, kd=20, teacher=30))
    x = np.zeros((2, 16), np.float32)
    x[:, 5] = 1.0  # one lit pixel at (1, 1) of a 4x4 image
    ds = Dataset(name="t", x_train=x, y_train=np.array([0, 1]), x_test=x, y_test=np.array([0, 1]),
                 num_classes=2, input_shape=(16,))
    out = m.jitter(ds, copies=2, max_shift=1, seed=0)
    assert out.x_train.shape == (6, 16) and list(out.y_train) == [0, 1] * 3
    # every shifted copy keeps the pixel (a shift of at most 1 from (1, 1) stays inside)
    assert np.all(out.x_train.sum(axis=1) == 1.0)
    assert m.jitter(ds, copies=0, max_shift=2, seed=0) is ds


# ---------------------------------------------------------------- mnist1d_baselines


def test_mnist1d_baselines_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "mnist1d_baselines", "--config.train.steps=4",
                    default_workdir=True)
    out = tmp_path / "runs" / "mnist1d_baselines"
    assert res["overrides"] == ["--config.train.steps=4"] and res["config"]["train"]["steps"] == 4
    assert set(res["summary"]) == {"logistic", "mlp", "cnn", "gru"}
    assert res["summary"]["logistic"]["params"] == 410
    assert res["summary"]["gru"]["params"] == 5_134
    for row in res["summary"].values():
        assert 0.0 <= row["accuracy"]["mean"] <= 1.0
        assert row["delta_vs_published"] == pytest.approx(row["accuracy"]["mean"] - row["published"])
    assert (out / "accuracy.png").exists()
    report = (out / "RESULTS.md").read_text()
    assert "`--config.train.steps=4`" in report and "4 steps" in report


def test_study_command_line_from_another_directory(tmp_path):
    """``python research/<study>/main.py ...`` as documented, from outside the repository."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "results.json").write_bytes(
        (ROOT / "research" / "mnist1d_baselines" / "results.json").read_bytes())
    cmd = [sys.executable, str(ROOT / "research" / "mnist1d_baselines" / "main.py"),
           "--config", str(ROOT / "configs" / "mnist1d_baselines.py"), "--workdir", "w",
           "--render"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ),
                          check=False)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "w" / "RESULTS.md").read_text()
    assert report.startswith("# MNIST-1D baselines") and report in proc.stdout
    assert proc.stdout.rstrip().endswith("wrote w/RESULTS.md")
    bad = subprocess.run([*cmd[:-1], "--config.seeds=[0]", "--render"], cwd=tmp_path,
                         capture_output=True, text=True, env=dict(os.environ), check=False)
    assert bad.returncode == 2 and "takes no --config.* overrides" in bad.stderr


def test_mnist1d_report_follows_the_numbers(study_module):
    m = study_module("mnist1d_baselines")
    res = committed("mnist1d_baselines")
    text = m.render(res)
    assert "All 4 models are within ±3 pp of the published means" in text
    assert "below the published mean: cnn, gru, logistic and mlp; above: none" in text
    res["summary"]["gru"].update(delta_vs_published=-0.05, within_tolerance=False)
    res["summary"]["cnn"].update(delta_vs_published=0.01)
    text = m.render(res)
    assert "3 of 4 models are within ±3 pp of the published means; outside: gru (-5.0 pp)" in text
    assert "below the published mean: gru, logistic and mlp; above: cnn" in text


# ---------------------------------------------------------------- fitnets_multiteacher


@pytest.mark.slow
def test_fitnets_multiteacher_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "fitnets_multiteacher")
    names = [r["variant"] for r in res["runs"]]
    assert names == ["teacher_1", "teacher_2", "hard", "kd_1teacher", "kd_2teachers",
                     "kd_1teacher_hint", "kd_2teachers_hints"]
    s = res["summary"]
    assert s["hard"]["delta_vs_hard"]["mean"] == 0.0
    acc = {r["variant"]: r["accuracy"] for r in res["runs"]}
    assert s["kd_2teachers"]["delta_vs_hard"]["mean"] == pytest.approx(
        acc["kd_2teachers"] - acc["hard"])


def test_fitnets_report_follows_the_numbers(study_module):
    m = study_module("fitnets_multiteacher")
    res = committed("fitnets_multiteacher")
    (text,) = m.findings(res)
    assert "KD variants with higher mean accuracy: none;" in text
    assert "Two teachers vs one (no hints): 0.77 pp higher" in text
    assert "is 1.87 pp below the better teacher (teacher_1, 95.70%)" in text
    s = res["summary"]
    s["kd_1teacher"]["accuracy"]["mean"] = 0.95
    s["kd_1teacher"]["delta_vs_hard"]["mean"] = 0.95 - s["hard"]["accuracy"]["mean"]
    s["kd_1teacher_hint"]["accuracy"]["mean"] = 0.97
    (text,) = m.findings(res)
    assert "KD variants with higher mean accuracy: kd_1teacher; lower: kd_2teachers," in text
    assert "Two teachers vs one (no hints): 1.57 pp lower" in text
    assert "The best student (kd_1teacher_hint, 97.00%) is 1.30 pp above the better teacher" in text
