"""MNIST-1D baselines (Greydanus 2020; REFERENCES.md row 9).

Logistic regression, the 40-100-100-10 residual MLP, the 3-layer conv1d CNN
and the bidirectional GRU, each trained with the reference recipe (Adam,
learning rate 1e-2, batch 100, no weight decay, 6,000 steps) on the
regenerated MNIST-1D split (4000/1000). Published test accuracy means:
logistic 32%, MLP 68%, CNN 94%, GRU 91% (single runs ≈ 2 pp lower);
target: within ±3 pp.

Run: ``python research/mnist1d_baselines/main.py --config configs/mnist1d_baselines.py --workdir research/mnist1d_baselines``
(``--config configs/mnist1d_baselines.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "mnist1d_baselines"
    c.entry = "research/mnist1d_baselines/main.py"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist1d", "batch_size": 100}
    c.models = {
        "logistic": {"name": "mnist1d_mlp", "overrides": {"hidden": [], "residual": False}},
        "mlp": {"name": "mnist1d_mlp", "overrides": {}},
        "cnn": {"name": "mnist1d_cnn", "overrides": {}, "layout": "channels"},
        "gru": {"name": "mnist1d_gru", "overrides": {}},
    }
    c.published = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}
    c.tolerance = 0.03
    c.train = {"optimizer": {"name": "adam", "learning_rate": 1e-2}, "steps": 6000,
               "eval_every": 500}
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.train.steps = 10
        c.train.eval_every = 10
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
