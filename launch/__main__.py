"""``python -m launch --config=configs/X.py[:args] [--workdir=DIR] [--config.key=value ...]``.

Parses flags into a locked ml-collections config, checks it, and runs its ``mode``: one training run,
the variants of a comparison, or lottery-ticket rounds. A user's mistake (flag, config, workdir, data,
file) ends with one line on stderr and exit code 2; a bug in sparsejax keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from launch.cli import define_config_flag, fail, load_config, parse_flags, use_compile_cache

FLAGS = flags.FLAGS
define_config_flag()
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>); a second "
                    "launch with the same workdir resumes.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (else taken "
                    "from the environment, as on TPU pods and SLURM).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


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
    use_compile_cache()
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
