"""Test configuration: force 8 host CPU devices before jax is imported."""

import importlib.util
import json
import os
import pathlib
import re
import sys

# 8 host devices so sharding is exercised everywhere. The suite is bound by XLA
# compile time (thousands of small programs): LLVM optimization level 0 halves
# it. It changes only the machine code's speed, not what is computed (XLA's
# HLO passes, fusion and float semantics are the same; fast math stays off).
# An XLA_FLAGS that already sets an optimization level is left as it is.
_flags = {"--xla_force_host_platform_device_count": "8", "--xla_backend_optimization_level": "0"}
for _name, _value in _flags.items():
    if _name not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_name}={_value}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis
import jax
import pytest

hypothesis.settings.register_profile("ci", max_examples=30, deadline=None)
hypothesis.settings.load_profile("ci")


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} ({jax.default_backend()})"


ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_study(study):
    """Imports ``research/<study>/main.py`` as a module (tests, not the library, load it)."""
    name = f"research_{study}_main"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "research" / study / "main.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def study_module():
    """``load_study``: a study's ``main.py`` as a module (``render``, ``findings``, ``main``)."""
    return load_study


@pytest.fixture
def run_study(capsys, monkeypatch):
    """Runs ``research/<study>/main.py`` on ``configs/<study>.py:smoke``; returns results.json.

    The outputs go to ``tmp_path``, or with ``default_workdir=True`` to the
    default ``runs/<study>`` under ``tmp_path`` as the current directory. Also
    checks what every study prints: each run named as ``[study] run k/N``
    with k counting 1..N, and the report (RESULTS.md) at the end.
    """

    def run(tmp_path, study, *overrides, default_workdir=False):
        where = []
        if default_workdir:
            monkeypatch.chdir(tmp_path)
            tmp_path = tmp_path / "runs" / study
        else:
            where = ["--workdir", str(tmp_path)]
        code = load_study(study).main([
            "--config", str(ROOT / "configs" / f"{study}.py:smoke"), *where, "--no-progress",
            *overrides])
        out = capsys.readouterr().out
        assert code == 0
        res = json.loads((tmp_path / "results.json").read_text())
        report = (tmp_path / "RESULTS.md").read_text()
        assert report.startswith("# ") and report in out
        assert res["config"]["name"] == study and res["overrides"] == list(overrides)
        assert f"research/{study}/main.py --config " in res["command"]
        runs = [(int(k), int(n)) for k, n in re.findall(rf"\[{study}\] run (\d+)/(\d+): ", out)]
        assert runs and [k for k, _ in runs] == list(range(1, runs[0][1] + 1))
        assert {n for _, n in runs} == {len(runs)}
        return res

    return run


@pytest.fixture
def rerender(monkeypatch, capsys, tmp_path):
    """``RESULTS.md`` re-rendered by ``main.py --render`` from a study's committed results.json.

    Runs from the repository root with ``--workdir`` in a temporary folder,
    then names that folder ``research/<study>`` as the committed report does.
    """

    def render(study):
        monkeypatch.chdir(ROOT)
        work = tmp_path / study
        work.mkdir()
        (work / "results.json").write_bytes((ROOT / "research" / study / "results.json").read_bytes())
        code = load_study(study).main(["--config", f"configs/{study}.py", "--workdir", str(work),
                                       "--render"])
        capsys.readouterr()
        assert code == 0
        return (work / "RESULTS.md").read_text().replace(str(work), f"research/{study}")

    return render
