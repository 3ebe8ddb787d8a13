"""One-step smoke runs of the distillation studies through ``jaxcomp run``."""

import pytest


def test_hinton_kd_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "hinton_kd", "--config.teacher.train.epochs=1", "--config.student_train.epochs=1",
               "--config.temperatures=[20.0]", "--config.teacher.train.eval_every=1000",
               "--config.student_train.eval_every=1000")
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
    assert res["students"]["narrow"]["params"] == 784 * 30 + 30 + 30 * 30 + 30 + 30 * 10 + 10


def test_mnist1d_baselines_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "mnist1d_baselines", "--config.train.steps=3",
               "--config.train.eval_every=3")
    assert set(res["summary"]) == {"logistic", "mlp", "cnn", "gru"}
    assert res["summary"]["logistic"]["params"] == 410
    assert res["summary"]["gru"]["params"] == 5_134
    for row in res["summary"].values():
        assert 0.0 <= row["accuracy"]["mean"] <= 1.0
        assert row["delta_vs_published"] == pytest.approx(row["accuracy"]["mean"] - row["published"])
    assert (tmp_path / "accuracy.png").exists()


def test_fitnets_multiteacher_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "fitnets_multiteacher", "--config.teacher.train.epochs=1",
               "--config.student_train.epochs=1", "--config.teacher.train.eval_every=1000",
               "--config.student_train.eval_every=1000")
    names = [r["variant"] for r in res["runs"]]
    assert names == ["teacher_1", "teacher_2", "hard", "kd_1teacher", "kd_2teachers",
                     "kd_1teacher_hint", "kd_2teachers_hints"]
    s = res["summary"]
    assert s["hard"]["delta_vs_hard"]["mean"] == 0.0
    acc = {r["variant"]: r["accuracy"] for r in res["runs"]}
    assert s["kd_2teachers"]["delta_vs_hard"]["mean"] == pytest.approx(
        acc["kd_2teachers"] - acc["hard"])
