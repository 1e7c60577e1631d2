"""Scalars to ``workdir/metrics.jsonl`` and TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import math
import pathlib

import jax

from sparsejax import files


def _logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; +inf for a line cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class MetricWriter:
    """Appends ``{"step": t, **scalars}`` lines; on resume first drops what a killed run logged after
    the checkpoint it resumes from, so the file ends as an uninterrupted run's would."""

    def __init__(self, workdir: pathlib.Path, resume_step: int):
        self.active = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        if not self.active:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if _logged_step(line) <= resume_step]
            files.write_atomic(self.path, "".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.active:
            self.tensorboard.close()
