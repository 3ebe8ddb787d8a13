"""The pruning studies: smoke runs of ``research/<study>/main.py`` and their reports.

Each smoke test runs a study on ``configs/<study>.py:smoke``. The report tests
render ``RESULTS.md`` from altered results and check that the sentences follow
the numbers, and that the committed reports are what the renderer makes of
the committed ``results.json``.
"""

import copy
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def committed(study):
    return json.loads((ROOT / "research" / study / "results.json").read_text())


@pytest.mark.parametrize("study", ["gradual_pruning", "lottery_ticket_mnist1d",
                                   "han2015_pruning", "network_slimming"])
def test_committed_report_is_rendered_from_committed_results(study, rerender):
    assert rerender(study) == (ROOT / "research" / study / "RESULTS.md").read_text()


# ---------------------------------------------------------------- lottery_ticket_mnist1d


@pytest.mark.slow
def test_lottery_ticket_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "lottery_ticket_mnist1d")
    t = res["table"]
    assert [r["round"] for r in t] == [0, 1, 2]
    # kernels 40x500, 500x500, 500x10: round 1 prunes 20% of the hidden ones, 10% of fc3
    n = 40 * 500 + 500 * 500 + 500 * 10
    pruned1 = round(0.2 * 20_000) + round(0.2 * 250_000) + round(0.1 * 5_000)
    assert t[1]["sparsity"] == pytest.approx(pruned1 / n)
    assert t[0]["sparsity"] == 0.0 and t[2]["sparsity"] > t[1]["sparsity"]
    for r in t:
        assert 0.0 <= r["ticket"]["mean"] <= 1.0 and 0.0 <= r["random"]["mean"] <= 1.0
    assert (tmp_path / "lottery.png").exists()


def test_lottery_report_follows_the_numbers(study_module):
    m = study_module("lottery_ticket_mnist1d")
    res = committed("lottery_ticket_mnist1d")
    text = "\n".join(m.findings(res))
    assert "ticket − dense +12.7 pp (above the published +6–10 pp)" in text
    assert "ticket − random -0.6 pp (below the published +10–14 pp)" in text
    assert "Dense 63.4% (below the published 64–66%)" in text
    assert "differ by less than one standard deviation over 3 seeds" in text
    assert "comes from the sparsity itself" in text

    ahead = copy.deepcopy(res)
    ahead["at_90"]["ticket_minus_random"].update(mean=0.12, std=0.01)
    text = "\n".join(m.findings(ahead))
    assert "ticket − random +12.0 pp (within the published +10–14 pp)" in text
    assert "the ticket is ahead of the random mask with the same per-layer counts" in text
    assert "The ticket is ahead of the dense network there." in text

    behind = copy.deepcopy(res)
    behind["at_90"]["ticket_minus_dense"].update(mean=-0.02, std=0.01)
    text = "\n".join(m.findings(behind))
    assert "comes from the sparsity itself" not in text
    assert "The ticket is behind the dense network there." in text


# ---------------------------------------------------------------- gradual_pruning


def test_gradual_pruning_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "gradual_pruning")
    (row,) = res["table"]
    # the large model reaches exactly 90% of every kernel pruned (layerwise, exact counts)
    assert row["kernel_nonzeros_large"] == 266_200 - (
        round(0.9 * 235_200) + round(0.9 * 30_000) + round(0.9 * 1_000))
    # the small dense model is the closest width scaling to the same kernel count
    assert abs(row["kernel_nonzeros_small"] - row["kernel_nonzeros_large"]) < 0.03 * 26_620
    assert (tmp_path / "large_sparse_vs_small_dense.png").exists()


def test_gradual_helpers(study_module):
    m = study_module("gradual_pruning")
    assert m.kernel_count([784, 300, 100, 10]) == 266_200
    hidden = m.small_dense_hidden([784, 300, 100, 10], 26_620)
    n = m.kernel_count([784, *hidden, 10])
    # brute force over the first hidden width: nothing comes closer to the target
    for h0 in range(1, 301):
        other = [max(1, round(w * h0 / 300)) for w in (300, 100)]
        assert abs(n - 26_620) <= abs(m.kernel_count([784, *other, 10]) - 26_620)


def test_gradual_report_follows_the_numbers(study_module):
    m = study_module("gradual_pruning")
    res = committed("gradual_pruning")
    (text,) = m.findings(res)
    assert "more accurate than the small-dense one at 5 of 5 sparsities" in text
    assert "the sparsest of these is 95% (20× fewer non-zero kernel weights)" in text
    assert "falls below at 98%" in text
    res["table"][0]["large_minus_small"]["mean"] = -0.01
    for t in res["table"]:
        t["large_minus_dense"]["mean"] = -0.02
    (text,) = m.findings(res)
    assert "at 4 of 5 sparsities (75%, 90%, 95% and 98%) and less accurate at 50%" in text
    assert "more than 0.5 pp below the dense model at every sparsity" in text


# ---------------------------------------------------------------- han2015_pruning


def test_han2015_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "han2015_pruning")
    m = res["models"]["lenet300"]
    assert m["dense"]["params"] == 266_610 and m["dense"]["macs"] == 266_200
    for method in ("one_shot", "one_shot_retrain", "iterative"):
        (row,) = m["methods"][method]["per_ratio"]
        # 4x compression of all params, biases kept: nnz = 266,610 / 4 (± rounding)
        assert row["compression"]["mean"] == pytest.approx(4.0, rel=1e-3)
        assert 1.0 <= m["methods"][method]["best_compression"]["mean"] <= 4.0 + 1e-3
    # one global threshold prunes the wide first layer hardest
    kept = m["methods"]["one_shot"]["per_ratio"][0]["layers_kept"]
    assert kept["fc1"] < kept["fc3"]


def test_han2015_unknown_model_is_a_config_error(tmp_path, study_module, capsys):
    code = study_module("han2015_pruning").main([
        "--config", str(ROOT / "configs" / "han2015_pruning.py:smoke"), "--workdir",
        str(tmp_path), "--config.run_models=['lenet7']"])
    assert code == 2
    assert "config.run_models: 'lenet7' is not in config.models" in capsys.readouterr().err


def test_han2015_report_follows_the_numbers(study_module):
    m = study_module("han2015_pruning")
    res = committed("han2015_pruning")
    (text,) = m.findings(res)
    assert ("lenet300: retraining raises the best compression from 1.7× to 12.0×; iterative "
            "pruning goes further (13.3×).") in text
    assert "lower bound" not in text
    lenet5 = res["models"]["lenet5"]["methods"]
    lenet5["one_shot_retrain"]["best_compression"]["mean"] = 4.0
    lenet5["iterative"]["best_compression"]["mean"] = 24.0  # the largest ratio tested
    (text,) = m.findings(res)
    assert "lenet5: retraining leaves the best compression at 4.0×; iterative pruning goes" in text
    assert "Iterative reached the largest ratio tested (24×) within the drop limit" in text


# ---------------------------------------------------------------- network_slimming


@pytest.mark.slow
def test_network_slimming_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "network_slimming")
    s = res["summary"]
    assert set(s) == {"dense", "l1", "slimmed_0.5"}
    (w,) = s["slimmed_0.5"]["widths"]
    assert sum(w) == 18 - round(0.5 * 18) and min(w) >= 2  # global cut, min_channels=2
    # params of the rebuilt model follow from its widths (3x3 convs without bias, BN, fc)
    conv = 9 * (1 * w[0] + w[0] * w[1] + w[1] * w[2])
    assert s["slimmed_0.5"]["params"]["mean"] == conv + 2 * sum(w) + 3 * 3 * w[2] * 10 + 10
    assert s["slimmed_0.5"]["macs"]["mean"] < s["dense"]["macs"]["mean"]
    assert s["slimmed_0.5"]["xla_flops_b256"]["mean"] < s["dense"]["xla_flops_b256"]["mean"]
    assert (tmp_path / "bn_scales.png").exists()
    assert res["device"].startswith("cpu")


def test_slimming_report_follows_the_numbers(study_module):
    m = study_module("network_slimming")
    res = committed("network_slimming")
    text = "\n".join(m.findings(res))
    assert "slimmed_0.7: 8.8× fewer parameters, 22.5× fewer MACs" in text
    assert "accuracy 3.50 pp lower than dense" in text
    assert "accuracy the same as dense" in text  # slimmed_0.5: +0.00 pp
    assert "Reading: the measured latency does not follow the MACs" in text
    s = res["summary"]
    for name in ("slimmed_0.5", "slimmed_0.7"):
        s[name]["speedup_b256"]["mean"] = 20.0  # now as fast as the MACs suggest
    s["slimmed_0.5"]["delta_vs_dense"]["mean"] = 0.004
    text = "\n".join(m.findings(res))
    assert "Reading" not in text
    assert "accuracy 0.40 pp higher than dense" in text
