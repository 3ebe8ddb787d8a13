"""Test configuration: force 8 host CPU devices before jax is imported."""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis
import jax

hypothesis.settings.register_profile("ci", max_examples=30, deadline=None)
hypothesis.settings.load_profile("ci")


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} ({jax.default_backend()})"
