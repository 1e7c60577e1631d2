"""What the launchers share: one-line failures, flag parsing, config loading, the compile cache."""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS

# What flag parsing and config loading raise for a bad flag, a missing or misspelt config file, or a
# bad ``:args`` / ``--config.key=value``.
FLAG_ERRORS = (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError)

# Compiled steps are kept here across runs (a sweep's points share their shapes, so every point after
# the first skips compiling); JAX_COMPILATION_CACHE_DIR overrides it.
COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "sparsejax", "jax")


def fail(message: str) -> None:
    """Ends the process with one ``error:`` line on stderr and exit code 2."""
    print(f"error: {' '.join(message.split()) or 'bad input'}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except FLAG_ERRORS as e:
        fail(str(e) or type(e).__name__)


def define_config_flag() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py[:arg].",
                                    lock_config=True)


def config_filename() -> str:
    return config_flags.get_config_filename(FLAGS["config"])


def load_config():
    """The config; ml-collections loads the file at first access, so its errors surface here."""
    config = FLAGS.config
    if config is None:
        fail("no config given; pass --config=configs/quickstart.py (or another file in configs/)")
    try:
        config.keys()
    except FLAG_ERRORS as e:
        reason = ([line.strip() for line in str(e).splitlines() if line.strip()] or [""])[-1]
        fail(f"cannot load config {config_filename()!r}: {reason}")
    return config


def use_compile_cache() -> None:
    """Keeps compiled programs on disk (`COMPILE_CACHE`), so that a relaunch or the next point of a
    sweep reuses them: on a CPU a small run spends most of its first minute compiling."""
    import jax
    jax.config.update("jax_compilation_cache_dir",
                      os.environ.get("JAX_COMPILATION_CACHE_DIR") or COMPILE_CACHE)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
