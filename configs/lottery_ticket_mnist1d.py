"""Lottery tickets on MNIST-1D (Frankle & Carbin 2019; REFERENCES.md row 8).

The 40-500-500-10 residual MLP, Adam 2e-2, batch 100, as in the MNIST-1D
lottery experiment. Iterative magnitude pruning: 20% of the surviving
hidden-layer weights and 10% of the output layer's per round, survivors
rewound to θ0, ten rounds (≈ 89% of the hidden weights pruned). Each round's
ticket is compared with a random mask of the same layerwise sparsity
trained from the same θ0, and with the dense network (round 0). Published:
dense ≈ 64–66%, ticket ≈ 72–75% at 86–92% sparsity, random ≈ 58–62%.

Run: ``python research/lottery_ticket_mnist1d/main.py --config configs/lottery_ticket_mnist1d.py --workdir research/lottery_ticket_mnist1d``
(``--config configs/lottery_ticket_mnist1d.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "lottery_ticket_mnist1d"
    c.entry = "research/lottery_ticket_mnist1d/main.py"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist1d", "batch_size": 100}
    c.model = {"name": "lottery_mlp", "overrides": {}}
    c.train = {"optimizer": {"name": "adam", "learning_rate": 2e-2}, "steps": 2000,
               "eval_every": 500}
    c.prune = {"rounds": 10, "rate": 0.2, "rates": {"fc3/kernel": 0.1}, "where": ".*/kernel",
               "rewind_step": 0}
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.train.steps = 3
        c.train.eval_every = 3
        c.prune.rounds = 2
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
