"""``mode = "compare"``: the runs of ``config.compare`` (overrides of the config), one directory each."""

from __future__ import annotations

import os

import ml_collections

from sparsejax.train import build, workdir as workdir_lib
from sparsejax.train.loop import train_and_evaluate


def run_variants(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
    """Trains each entry of ``config.compare`` into ``workdir/<name>``; returns their summaries."""
    build.check(config)
    with workdir_lib.locked(workdir) as workdir:
        return {name: train_and_evaluate(build.variant(config, name), workdir / name)
                for name in config.compare}


def comparison_table(summaries: dict[str, dict]) -> str:
    """A plain-text table of test accuracies (at best validation and final) and sparsity per run."""
    lines = [f"{'run':<12} {'test acc (best val)':>20} {'final test acc':>15} {'sparsity':>9}"]
    for name, s in summaries.items():
        lines.append(f"{name:<12} {s['test_accuracy']:>20.4f} {s['final_test_accuracy']:>15.4f} "
                     f"{s['sparsity']:>9.4f}")
    return "\n".join(lines)
