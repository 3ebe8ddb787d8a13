"""Test configuration: force 8 host CPU devices before jax is imported."""

import json
import os
import pathlib

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis
import jax
import pytest

hypothesis.settings.register_profile("ci", max_examples=30, deadline=None)
hypothesis.settings.load_profile("ci")


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} ({jax.default_backend()})"


ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def run_study():
    """Runs ``configs/<study>.py`` through ``jaxcomp run`` with one seed; returns results.json."""
    from jaxcomp import cli

    def run(tmp_path, study, *overrides):
        code = cli.main(["run", str(ROOT / "configs" / f"{study}.py"), "--workdir", str(tmp_path),
                         "--no-progress", "--config.seeds=[0]", *overrides])
        assert code == 0
        res = json.loads((tmp_path / "results.json").read_text())
        assert (tmp_path / "RESULTS.md").read_text().startswith("# ")
        assert res["config"]["name"] == study
        return res

    return run
