"""A generic supervised config: LeNet-300-100 pruned to 90% with the cubic schedule.

It has no ``entry``, so ``jaxcomp run`` trains it with the generic recipe
(:func:`jaxcomp.experiment.run_experiment`): every seed is trained and
evaluated on the test split, and the compressed model is measured
(parameters, non-zeros, MACs, effective MACs). Fields: ``data``, ``model``,
``train``, ``compression``, ``seeds``.

Run: ``jaxcomp run configs/lenet300_magnitude.py --workdir runs/lenet300_magnitude``
(``configs/lenet300_magnitude.py:smoke``: one seed, 20 steps).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "lenet300_magnitude"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist5k", "layout": "flat", "batch_size": 100}
    c.model = {"name": "lenet300", "overrides": {}}
    c.train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 3000,
               "eval_every": 500}
    c.compression = [{
        "method": "magnitude_pruning", "where": ".*/kernel",
        "sparsity": {"name": "polynomial", "initial_sparsity": 0.0, "final_sparsity": 0.9,
                     "begin_step": 200, "end_step": 2000, "update_every": 100},
    }]
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.train.steps = 20
        c.train.eval_every = 20
        c.compression[0]["sparsity"].update(begin_step=0, end_step=10, update_every=5)
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
