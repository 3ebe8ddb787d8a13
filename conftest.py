"""Root pytest configuration: 8 host CPU devices for tests and doctests alike.

This must run before jax is imported anywhere, so sharding code is exercised
on every machine.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
