"""``python -m launch --config=configs/X.py[:args] [--workdir=DIR] [--config.key=value ...]``.

Parses flags into a locked ml-collections config and calls ``sparsejax.train``. Bad input ends with one
line on stderr and exit code 2; nothing else is printed for it.
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


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        fail(" ".join(str(e).split()) or type(e).__name__)


def multi_host() -> bool:
    """Whether this run is one process of several (flags, or a cluster environment JAX detects)."""
    return bool(FLAGS.coordinator_address or FLAGS.num_processes or
                os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES")
                or int(os.environ.get("SLURM_NTASKS", "1")) > 1)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)  # tfds/orbax chatter off: bad input stays one line
    import jax
    from sparsejax import lottery, train

    if FLAGS.config is None:
        fail("no config given; pass --config=configs/quickstart.py (or another file in configs/)")
    if multi_host():
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # CPU hosts talk through gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join("runs", config.name)
    logging.info("process %d/%d, %d devices, workdir %s", jax.process_index(), jax.process_count(),
                 jax.device_count(), workdir)
    try:
        if config.mask.method == "lth":
            records = lottery.run(config, workdir)
            if jax.process_index() == 0:
                print(lottery.table(records))
        elif "compare" in config:
            summaries = train.run_variants(config, workdir)
            if jax.process_index() == 0:
                print(train.comparison_table(summaries))
        else:
            summary = train.train_and_evaluate(config, workdir)
            if jax.process_index() == 0:
                print(f"test accuracy {summary['test_accuracy']:.4f} (best validation), "
                      f"{summary['final_test_accuracy']:.4f} (final), sparsity "
                      f"{summary['sparsity']:.4f}; summary in {workdir}/summary.json")
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        fail(" ".join(str(e).split()))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
