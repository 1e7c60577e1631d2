"""``python -m launch --config=configs/X.py[:args] [--workdir=DIR] [--config.key=value ...]``.

Parses flags into a locked ml-collections config, checks it, and runs its ``mode``: one training run,
the variants of a comparison, or lottery-ticket rounds. A user's mistake (flag, config, workdir, data,
file) ends with one line on stderr and exit code 2; a bug in sparsejax keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>); a second "
                    "launch with the same workdir resumes.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (else taken "
                    "from the environment, as on TPU pods and SLURM).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")

# What flag parsing and config loading raise for a bad flag, a missing or misspelt config file, or a
# bad ``:args`` / ``--config.key=value``.
FLAG_ERRORS = (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError)


def fail(message: str) -> None:
    print(f"error: {' '.join(message.split()) or 'bad input'}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except FLAG_ERRORS as e:
        fail(str(e) or type(e).__name__)


def load_config():
    """The config; ml-collections loads the file at first access, so its errors surface here."""
    config = FLAGS.config
    if config is None:
        fail("no config given; pass --config=configs/quickstart.py (or another file in configs/)")
    try:
        config.keys()
    except FLAG_ERRORS as e:
        reason = ([line.strip() for line in str(e).splitlines() if line.strip()] or [""])[-1]
        fail(f"cannot load config {config_flags.get_config_filename(FLAGS['config'])!r}: {reason}")
    return config


def multi_host() -> bool:
    """Whether this run is one process of several (flags, or a cluster environment JAX detects)."""
    return bool(FLAGS.coordinator_address or FLAGS.num_processes or
                os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES")
                or int(os.environ.get("SLURM_NTASKS", "1")) > 1)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.FATAL)  # tfds/orbax chatter (even their errors) off: one line
    config = load_config()
    import jax
    from sparsejax import lottery, train
    from sparsejax.errors import UserError
    from sparsejax.train import build

    if multi_host():
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # CPU hosts talk through gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    workdir = FLAGS.workdir or os.path.join("runs", config.name)
    runs = {"train": (train.train_and_evaluate, summary_line),
            "compare": (train.run_variants, train.comparison_table),
            "lottery": (lottery.run, lottery.table)}
    try:
        build.check(config)
        run, show = runs[config.mode]
        result = run(config, workdir)
    except UserError as e:
        fail(str(e))
    if jax.process_index() == 0:
        print(show(result))
        print(f"results in {workdir}")


def summary_line(summary: dict) -> str:
    return (f"test accuracy {summary['test_accuracy']:.4f} (best validation), "
            f"{summary['final_test_accuracy']:.4f} (final), sparsity {summary['sparsity']:.4f}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
