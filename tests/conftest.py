"""Test setup: 8 simulated CPU devices (before JAX starts) and the `slow` marker."""

import os

# XLA:CPU ends the process when a collective's rendezvous waits longer than
# xla_cpu_collective_call_terminate_timeout_seconds (default 40 s) for the other devices' threads,
# which a loaded machine can exceed; 600 s leaves room. (jaxlib 0.10.2 accepts the flag; an older
# jaxlib that does not know it aborts at start. xla_cpu_collective_timeout_seconds is already 1800 s.)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_call_terminate_timeout_seconds=600"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled steps are reused across tests and the launcher subprocesses (same results, less waiting).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test, run only with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
