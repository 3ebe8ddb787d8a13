"""One-step smoke runs of the pruning studies through ``jaxcomp run``."""

import pytest


def test_lottery_ticket_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "lottery_ticket_mnist1d", "--config.train.steps=3",
               "--config.train.eval_every=3", "--config.prune.rounds=2")
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


def test_gradual_pruning_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "gradual_pruning", "--config.train.steps=4", "--config.train.eval_every=4",
               "--config.sparsities=[0.9]", "--config.schedule.begin_step=0",
               "--config.schedule.end_step=2", "--config.schedule.update_every=1")
    (row,) = res["table"]
    # the large model reaches exactly 90% of every kernel pruned (layerwise, exact counts)
    assert row["kernel_nonzeros_large"] == 266_200 - (
        round(0.9 * 235_200) + round(0.9 * 30_000) + round(0.9 * 1_000))
    # the small dense model is the closest width scaling to the same kernel count
    assert abs(row["kernel_nonzeros_small"] - row["kernel_nonzeros_large"]) < 0.03 * 26_620
    assert (tmp_path / "large_sparse_vs_small_dense.png").exists()


def test_han2015_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "han2015_pruning", "--config.run_models=['lenet300']",
               "--config.models.lenet300.train.steps=5", "--config.models.lenet300.retrain.steps=2",
               "--config.models.lenet300.ratios=[4.0]")
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


def test_network_slimming_smoke(tmp_path, run_study):
    res = run_study(tmp_path, "network_slimming", "--config.train.epochs=1",
               "--config.finetune.epochs=1", "--config.latency_repeat=1", "--config.ratios=[0.5]",
               "--config.widths=[4, 6, 8]")
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
