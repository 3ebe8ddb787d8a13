"""The parameter-sharing studies: smoke runs of hashednets and quantization_sensitivity,
and their reports."""

import copy
import json
import pathlib

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STUDIES = ["hashednets", "quantization_sensitivity"]


def committed(study):
    return json.loads((ROOT / "research" / study / "results.json").read_text())


@pytest.mark.parametrize("study", STUDIES)
def test_committed_report_is_rendered_from_committed_results(study, rerender):
    assert rerender(study) == (ROOT / "research" / study / "RESULTS.md").read_text()


# ---------------------------------------------------------------- hashednets


@pytest.mark.slow
def test_hashednets_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "hashednets")
    (row,) = res["table"]
    dense = 784 * 64 + 64 * 10
    assert res["dense_kernel_params"] == dense and row["factor"] == 8
    # equal storage: each net's real kernel parameters are 1/8 of the dense ones (± rounding)
    assert row["hashed"]["kernel_params"] == round(784 * 64 / 8) + round(640 / 8)
    assert row["small_dense"]["kernel_params"] == 794 * 8 and row["small_dense"]["hidden"] == 8
    r1, r2 = (784 * 64 / 8) // (784 + 64), (640 / 8) // (64 + 10)
    assert row["low_rank"]["kernel_params"] == r1 * (784 + 64) + r2 * (64 + 10)
    assert (tmp_path / "accuracy_vs_storage.png").exists()


def test_low_rank_kernels_fit_the_budget(study_module):
    m = study_module("hashednets")
    w = np.asarray(jax.random.normal(jax.random.key(0), (40, 30)))
    lr = m.low_rank_kernels({"fc": {"kernel": w, "bias": np.zeros(30)}}, 1 / 4)["fc"]["kernel"]
    assert lr.rank == 40 * 30 // 4 // 70 and lr.rank * 70 <= 300
    # the rescaled truncated SVD keeps the initial kernel's norm
    assert np.linalg.norm(np.asarray(lr.materialize())) == pytest.approx(np.linalg.norm(w),
                                                                        rel=1e-4)


def test_hashednets_report_follows_the_numbers(study_module):
    m = study_module("hashednets")
    res = committed("hashednets")
    (text,) = m.findings(res)
    for t in res["table"]:
        assert f"At 1/{t['factor']} the HashedNet" in text
    worse = copy.deepcopy(res)
    for t in worse["table"]:
        t["hashed_minus_low_rank"]["mean"] = -0.01
        t["hashed_minus_small_dense"]["mean"] = 0.02
    (text,) = m.findings(worse)
    assert "trails the low-rank net by 1.00 pp and beats the small dense net by 2.00 pp" in text
    assert "It beats both baselines at 0 of 2 factors (none)" in text


# ---------------------------------------------------------------- quantization_sensitivity


@pytest.mark.slow
def test_quantization_sensitivity_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "quantization_sensitivity")
    conv, fc = res["table"]["conv"], res["table"]["fc"]
    # lenet5_classic: conv 5*5*1*6 + 5*5*6*16, fc 400*120 + 120*84 + 84*10
    assert conv[0]["weights"] == 150 + 2400 and fc[0]["weights"] == 48_000 + 10_080 + 840
    assert conv[0]["bits"] == 2 and set(res["min_bits"]) == {"conv", "fc"}
    assert (tmp_path / "drop_vs_bits.png").exists()


def test_min_bits_needs_every_wider_width_within_the_limit(study_module):
    m = study_module("quantization_sensitivity")

    def rows(drops):
        return [{"bits": b, "drop": {"mean": d}} for b, d in drops]

    assert m._min_bits(rows([(1, 0.2), (2, 0.004), (3, 0.001), (4, 0.0)]), "drop", 0.005) == 2
    # a noisy dip below the limit under a wider width that fails does not count
    assert m._min_bits(rows([(2, 0.001), (3, 0.01), (4, 0.0)]), "drop", 0.005) == 4
    assert m._min_bits(rows([(2, 0.1), (8, 0.02)]), "drop", 0.005) is None


def test_quantization_sensitivity_report_follows_the_numbers(study_module):
    m = study_module("quantization_sensitivity")
    res = committed("quantization_sensitivity")
    (text,) = m.findings(res)
    c, f = res["min_bits"]["conv"]["drop"], res["min_bits"]["fc"]["drop"]
    if c is not None and f is not None:
        assert f"the convolutions need {c} bits and the FC layers {f}" in text
    flipped = copy.deepcopy(res)
    flipped["min_bits"] = {"conv": {"drop": 3, "drop_kmeans": 4},
                           "fc": {"drop": 5, "drop_kmeans": 6}}
    (text,) = m.findings(flipped)
    assert "the convolutions need fewer bits than the FC layers (published: FC 5 < conv 8)" in text
