"""jaxcomp.studies: the command line, progress lines and report helpers of research studies.

A fake study (a config file and two small functions) stands in for
``research/<study>/main.py`` so the command line is tested without training.
"""

import io
import json
import pathlib
import re
import shlex
import sys

import ml_collections
import pytest

from jaxcomp import cli
from jaxcomp.config import ConfigError, apply_overrides, load_config
from jaxcomp.experiment import run_experiment
from jaxcomp.studies import (
    RunCounter,
    accuracy,
    by_sign,
    config_overrides,
    default_workdir,
    entry_command,
    fmt_ms,
    markdown_table,
    plain,
    plural,
    read_results,
    run_section,
    signed,
    study_main,
    train_budget,
    words,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- progress


def test_run_counter_names_runs_counts_and_estimates():
    ticks = iter([10.0, 40.0, 70.0])
    out = io.StringIO()
    runs = RunCounter(3, study="s", stream=out, clock=lambda: next(ticks))
    runs.start("teacher", seed=0)
    runs.start("student", seed=0, T=20.0)
    runs.start("student", seed=1, T=2.5)
    assert out.getvalue().splitlines() == [
        "[s] run 1/3: teacher, seed 0",
        # 30 s for one finished run: about 2 runs (60 s) left
        "[s] run 2/3: student, seed 0, T 20 (0:30 elapsed, about 1:00 left)",
        "[s] run 3/3: student, seed 1, T 2.5 (1:00 elapsed, about 0:30 left)",
    ]
    assert runs.done == 3


def test_only_process_zero_prints_progress(monkeypatch):
    from jaxcomp import studies

    monkeypatch.setattr(studies, "is_main_process", lambda: False)
    out = io.StringIO()
    runs = RunCounter(2, stream=out, clock=iter([0.0, 1.0]).__next__)
    runs.start("a")
    runs.start("b")
    assert out.getvalue() == "" and runs.done == 2


def test_run_counter_quiet_and_hours(capsys):
    ticks = iter([0.0, 3725.0])
    runs = RunCounter(2, enabled=False, clock=lambda: next(ticks))
    runs.start("a")
    runs.start("b")
    assert capsys.readouterr().out == "" and runs.done == 2
    loud = RunCounter(2, clock=iter([0.0, 3725.0]).__next__)
    loud.start("a")
    loud.start("b")
    assert capsys.readouterr().out.splitlines()[-1] == (
        "run 2/2: b (1:02:05 elapsed, about 1:02:05 left)")


@pytest.mark.parametrize("total", [0, -1, True, 2.0, "3"])
def test_run_counter_rejects_bad_totals(total):
    with pytest.raises(ValueError, match="total must be a positive int"):
        RunCounter(total)


# ---------------------------------------------------------------- text helpers


def test_number_formatting():
    assert fmt_ms({"mean": 0.93712, "std": 0.01, "n": 3}, scale=100, unit="%") == "93.7 ± 1.0%"
    assert fmt_ms({"mean": 27.333, "std": None, "n": 1}, digits=2) == "27.33 ± 0.00"
    assert fmt_ms(None) == fmt_ms({"mean": None}) == "n/a"
    assert fmt_ms({"mean": -0.006, "std": 0.018}, scale=100, unit=" pp", sign=True) == (
        "-0.6 ± 1.8 pp")
    assert fmt_ms({"mean": 0.0, "std": 0.0}, sign=True) == "+0.0 ± 0.0"
    assert [plural(n, "seed") for n in (0, 1, 2)] == ["0 seeds", "1 seed", "2 seeds"]
    assert plural(3, "copy") == "3 copies" and plural(2, "day") == "2 days"
    assert plural(1200, "step") == "1,200 steps"
    assert signed(-0.0345, scale=100, digits=2, unit=" pp") == "-3.45 pp"
    assert signed(0.0) == "+0.0"
    assert signed(None) == signed(float("nan")) == "n/a"
    assert train_budget({"steps": 12000}) == "12,000 steps"
    assert train_budget(ml_collections.ConfigDict({"epochs": 3})) == "3 epochs"


def test_by_sign_and_words():
    assert [by_sign(x, "+", "-", "0") for x in (1e-9, -1e-9, 0.0)] == ["+", "-", "0"]
    assert [by_sign(x, "+", "-", "0", tol=0.5) for x in (0.5, -0.5, 0.51, -0.51)] == [
        "0", "0", "+", "-"]
    with pytest.raises(ValueError, match="x is NaN"):
        by_sign(float("nan"), "+", "-", "0")
    with pytest.raises(ValueError, match="tol must be >= 0"):
        by_sign(1.0, "+", "-", "0", tol=-0.1)
    assert words(["a", "b"]) == "a and b"
    assert words([], empty="nothing") == "nothing"
    assert words([1, 2, 3, 4]) == "1, 2, 3 and 4"


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, 2], ["x", "y"]]) == [
        "| a | b |", "|---|---|", "| 1 | 2 |", "| x | y |"]
    with pytest.raises(ValueError, match="row 1 has 1 cells, the header 2"):
        markdown_table(["a", "b"], [[1, 2], [3]])


def test_run_section():
    lines = run_section({"command": "python m.py", "overrides": ["--config.a=1", "--config.b='x'"],
                         "seconds": 3600.0, "config_file": "configs/m.py:smoke"})
    assert lines[2] == "`python m.py`"
    assert lines[4] == "Overrides: `--config.a=1`, `--config.b='x'`. Wall time: 1:00:00."
    lines = run_section({"overrides": [], "config_file": "configs/m.py:smoke"})
    assert lines[2] == "Command: n/a (not recorded)"
    assert lines[4] == "Overrides: none (the defaults of `configs/m.py:smoke`). Wall time: n/a."
    assert run_section({})[4].startswith("Overrides: n/a (not recorded).")
    derived = run_section({"overrides": [], "overrides_derived": True})[4]
    assert "derived by comparing the stored config with the config file" in derived


def test_plain_and_default_workdir():
    c = ml_collections.ConfigDict({"a": {"b": [1, 2]}, "c": (3, {"d": 4})})
    assert plain(c) == {"a": {"b": [1, 2]}, "c": (3, {"d": 4})}
    assert str(default_workdir("kd")) == "runs/kd"
    for bad in ("", "a/b", None):
        with pytest.raises(ValueError, match="study must be a plain name"):
            default_workdir(bad)


def test_accuracy_matches_a_numpy_count():
    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    x = rng.normal(size=(23, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=23)
    expected = float(np.mean(np.argmax(x @ w, -1) == y))
    for batch_size in (1, 7, 23, 100):  # a ragged last batch included
        assert accuracy(lambda v, xb: xb @ v, w, x, y, batch_size=batch_size) == expected
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            accuracy(lambda v, xb: xb @ v, w, x, y, batch_size=bad)
    with pytest.raises(ValueError, match="non-empty and of one length, got 23 and 22"):
        accuracy(lambda v, xb: xb @ v, w, x, y[:22])


# ---------------------------------------------------------------- config overrides


def test_config_overrides_round_trip():
    defaults = ml_collections.ConfigDict({
        "seeds": [0, 1, 2], "where": ".*/kernel", "train": {"steps": 10, "opt": {"lr": 0.1}},
        "added_later": 3, "config_path": "/x/configs/s.py"})
    used = {"seeds": [0], "where": ".*/kernel", "train": {"steps": 10, "opt": {"lr": 0.5}},
            "config_path": "/elsewhere/s.py"}
    got = config_overrides(defaults, used)
    assert got == ["--config.seeds=[0]", "--config.train.opt.lr=0.5"]
    # applying the overrides to the defaults gives the used config back
    again = apply_overrides(ml_collections.ConfigDict(plain(defaults)), got)
    assert {k: v for k, v in plain(again).items() if k in used and k != "config_path"} == {
        k: v for k, v in used.items() if k != "config_path"}
    assert config_overrides(defaults, defaults) == []
    assert config_overrides({}, {"where": "a b"}) == ["--config.where='a b'"]
    with pytest.raises(TypeError, match="must be mappings"):
        config_overrides([], {})


# ---------------------------------------------------------------- the fake study

CONFIG = '''
import ml_collections

def get_config(variant=None):
    c = ml_collections.ConfigDict()
    c.name = "fake"
    c.entry = "research/fake/main.py"
    c.seeds = [0, 1]
    c.x = 1
    c.where = ".*/kernel"
    if variant == "smoke":
        c.seeds = [0]
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; the one variant is 'smoke'")
    return c
'''


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository layout with configs/fake.py and research/fake/main.py; cwd at its root."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fake.py").write_text(CONFIG)
    (tmp_path / "configs" / "other.py").write_text(CONFIG.replace('"research/fake/main.py"',
                                                                  '"research/other/main.py"'))
    (tmp_path / "configs" / "plain.py").write_text(
        "import ml_collections\n\ndef get_config():\n"
        "    return ml_collections.ConfigDict({'name': 'plain', 'seeds': [0]})\n")
    (tmp_path / "research" / "fake").mkdir(parents=True)
    (tmp_path / "research" / "fake" / "main.py").write_text("raise SystemExit('never loaded')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fake_train(config, workdir, progress):
    RunCounter(len(config.seeds), study="fake").start("model", seed=config.seeds[0])
    (workdir / "plot.png").write_bytes(b"png")
    return {"name": "fake", "value": config.x * 10, "progress": progress, "seconds": 2.0}


def fake_render(res):
    return "\n".join([f"# fake: value {res['value']}", "", *run_section(res), ""])


def test_study_main_trains_writes_and_prints(repo, capsys):
    code = study_main("fake", fake_train, fake_render, [
        "--config", "configs/fake.py:smoke", "--workdir", "out", "--config.x=5", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads((repo / "out" / "results.json").read_text())
    assert res["value"] == 50 and res["progress"] is False
    assert res["config"]["seeds"] == [0] and res["config"]["x"] == 5
    assert res["overrides"] == ["--config.x=5"] and res["config_file"] == "configs/fake.py:smoke"
    assert shlex.split(res["command"]) == [
        "python", "research/fake/main.py", "--config", "configs/fake.py:smoke", "--workdir", "out",
        "--config.x=5"]
    report = (repo / "out" / "RESULTS.md").read_text()
    assert report.startswith("# fake: value 50") and "`--config.x=5`" in report
    assert out.startswith("[fake] run 1/1: model, seed 0\n")
    assert report in out and out.rstrip().endswith("wrote out/RESULTS.md and results.json")


def test_study_main_default_workdir_is_runs_study(repo, capsys):
    assert study_main("fake", fake_train, fake_render, ["--config", "configs/fake.py"]) == 0
    assert json.loads((repo / "runs" / "fake" / "results.json").read_text())["progress"] is True
    assert (repo / "runs" / "fake" / "plot.png").exists()
    assert not (repo / "research" / "fake" / "results.json").exists()


def test_study_main_render_rewrites_the_report_from_results(repo, capsys):
    argv = ["--config", "configs/fake.py", "--workdir", "w"]
    assert study_main("fake", fake_train, fake_render, [*argv, "--config.x=2"]) == 0
    first = (repo / "w" / "RESULTS.md").read_text()
    (repo / "w" / "RESULTS.md").unlink()

    def no_training(*a):
        raise AssertionError("--render must not train")

    assert study_main("fake", no_training, fake_render, [*argv, "--render"]) == 0
    assert (repo / "w" / "RESULTS.md").read_text() == first
    assert capsys.readouterr().out.rstrip().endswith("wrote w/RESULTS.md")


def test_study_main_render_derives_what_old_results_lack(repo, capsys):
    (repo / "old").mkdir()
    old = {"config": {"name": "fake", "entry": "research/fake/main.py", "seeds": [0, 1], "x": 3,
                      "config_path": "/somewhere/configs/fake.py"}, "value": 30}
    (repo / "old" / "results.json").write_text(json.dumps(old))
    code = study_main("fake", fake_train, fake_render,
                      ["--config", "configs/fake.py", "--workdir", "old", "--render"])
    assert code == 0
    report = (repo / "old" / "RESULTS.md").read_text()
    # x differs from the config file's default; `where` is absent from the old config
    assert "Overrides: `--config.x=3` — derived by comparing the stored config" in report
    assert ("`python research/fake/main.py --config configs/fake.py --workdir old "
            "--config.x=3`") in report
    assert "Wall time: n/a." in report
    assert json.loads((repo / "old" / "results.json").read_text()) == old  # left as it was


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/fake.py", "--render", "--config.x=2"], "it takes no --config.* overrides"),
    (["--config", "configs/fake.py", "--workdir", "empty", "--render"], "no results.json to render"),
    (["--config", "configs/other.py"], "belongs to another study; run python research/other/main.py"),
    (["--config", "configs/fake.py:large"], "configs/fake.py:large: unknown variant 'large'"),
    (["--config", "configs/plain.py:smoke"], "this get_config() takes no variant argument"),
    (["--config", "configs/fake.py", "--config.y=1"], "config.y: no such field"),
    (["--config", "configs/missing.py"], "does not exist"),
])
def test_study_main_errors_name_the_fix(repo, capsys, argv, message):
    assert study_main("fake", fake_train, fake_render, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("research/fake/main.py: error: ") and message in err


def test_study_main_rejects_unknown_flags(repo, capsys):
    with pytest.raises(SystemExit) as e:
        study_main("fake", fake_train, fake_render, ["--config", "configs/fake.py", "--seed=3"])
    assert e.value.code == 2
    assert "overrides look like --config.field=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_main("fake", fake_train, fake_render, [])  # --config is required


def test_read_results(tmp_path):
    with pytest.raises(ValueError, match="no results.json to render"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text('{"a": 1}')
    assert read_results(tmp_path) == {"a": 1}


# ---------------------------------------------------------------- entry configs


def test_entry_command_resolves_the_script_next_to_the_configs(repo, monkeypatch,
                                                              tmp_path_factory):
    config = load_config("configs/fake.py")
    cmd = entry_command(config, workdir="runs/x", overrides=["--config.where='.*'"])
    assert shlex.split(cmd) == ["python", "research/fake/main.py", "--config", "configs/fake.py",
                                "--workdir", "runs/x", "--config.where='.*'"]
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # outside the repository
    cmd = shlex.split(entry_command(config))
    assert cmd[1] == str((repo / "research" / "fake" / "main.py").resolve())
    assert cmd[3] == str((repo / "configs" / "fake.py").resolve()) and "--workdir" not in cmd
    (repo / "research" / "fake" / "main.py").unlink()  # no script next to the configs
    assert shlex.split(entry_command(config))[1] == "research/fake/main.py"  # as written
    for bad in ({"name": "x"}, {"entry": ""}, {"entry": 3}):
        with pytest.raises(ConfigError, match="config.entry: expected the path"):
            entry_command(bad)


def test_run_experiment_refuses_an_entry_config_with_the_command(repo):
    config = load_config("configs/fake.py:smoke", ["--config.x=4"])
    before = set(sys.modules)
    with pytest.raises(ConfigError) as e:
        run_experiment(config, repo / "w", progress=False)
    assert str(e.value).startswith("config.entry: this config belongs to a reproduced study")
    assert "python research/fake/main.py --config configs/fake.py --workdir" in str(e.value)
    assert not (repo / "w").exists()
    assert not any("fake" in m for m in set(sys.modules) - before)  # research code never loaded


def test_cli_run_refuses_an_entry_config_with_the_exact_command(repo, capsys):
    code = cli.main(["run", "configs/fake.py:smoke", "--workdir", "runs/a b",
                     "--config.x=7", "--config.where=.*"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcomp: error: configs/fake.py:smoke is a reproduced study")
    cmd = err.split("run it with its own script: ", 1)[1].strip()
    assert shlex.split(cmd) == [
        "python", "research/fake/main.py", "--config", "configs/fake.py:smoke", "--workdir",
        "runs/a b", "--config.x=7", "--config.where=.*"]
    assert not (repo / "runs").exists()


def test_load_config_variants(repo):
    assert load_config("configs/fake.py").seeds == [0, 1]
    assert load_config("configs/fake.py:smoke").seeds == [0]
    assert load_config("configs/fake.py:smoke", ["--config.x=9"]).x == 9
    with pytest.raises(ConfigError, match="unknown variant 'big'"):
        load_config("configs/fake.py:big")
    with pytest.raises(ConfigError, match="takes no variant argument"):
        load_config("configs/plain.py:smoke")


@pytest.mark.parametrize("study", ["mnist1d_baselines", "hinton_kd", "fitnets_multiteacher",
                                   "gradual_pruning", "lottery_ticket_mnist1d",
                                   "han2015_pruning", "network_slimming"])
def test_every_study_config_has_a_smaller_smoke_variant(study):
    full = load_config(ROOT / "configs" / f"{study}.py")
    smoke = load_config(f"{ROOT / 'configs' / study}.py:smoke")
    assert full.entry == f"research/{study}/main.py" and smoke.entry == full.entry
    assert (ROOT / full.entry).is_file()
    assert len(full.seeds) >= 3 and smoke.seeds == [0]
    assert config_overrides(full, smoke)  # the variant changes something beyond the seeds


README_SECTIONS = ("## Question", "## Published", "## Here", "## Reproduce")


@pytest.mark.parametrize("study", ["mnist1d_baselines", "hinton_kd", "fitnets_multiteacher",
                                   "gradual_pruning", "lottery_ticket_mnist1d",
                                   "han2015_pruning", "network_slimming"])
def test_every_study_has_a_readme_with_its_commands(study):
    text = (ROOT / "research" / study / "README.md").read_text()
    for section in README_SECTIONS:
        assert section in text, section
    full = (f"python research/{study}/main.py --config configs/{study}.py "
            f"--workdir research/{study}")
    assert full in text and f"--config configs/{study}.py:smoke" in text
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (ROOT / "research" / study / image).is_file(), image


def test_generic_example_config_builds_for_jaxcomp_run():
    from jaxcomp.config import build_compressor, build_optimizer
    from jaxcomp.experiment import build_model, load_data

    for spec in ("lenet300_magnitude.py", "lenet300_magnitude.py:smoke"):
        config = load_config(f"{ROOT / 'configs'}/{spec}")
        # the generic recipe's fields only (no entry: jaxcomp run trains it)
        assert set(config) <= {"name", "seeds", "data", "model", "train", "compression",
                               "config_path"}
        model = build_model(config.model, load_data(config.data))
        assert model.expected_params == 266_610
        build_optimizer(config.train.optimizer)
        assert build_compressor(config.compression) is not None
    assert load_config(ROOT / "configs" / "lenet300_magnitude.py:smoke").train.steps == 20
