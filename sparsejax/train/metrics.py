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
    """Appends ``{"step": t, ...}`` lines to ``metrics.jsonl`` (and the analysis lenses' results to
    ``analysis/<lens>.jsonl``) and scalars to TensorBoard. On resume it first drops what a killed run
    wrote to those files after the checkpoint it resumes from, so they end as an uninterrupted run's.
    """

    def __init__(self, workdir: pathlib.Path, resume_step: int):
        self.active = jax.process_index() == 0
        self.workdir = workdir
        if not self.active:
            return
        for path in [workdir / "metrics.jsonl", *(workdir / "analysis").glob("*.jsonl")]:
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if _logged_step(line) <= resume_step]
                files.write_atomic(path, "".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float], *, record: dict | None = None,
              file: str = "metrics.jsonl") -> None:
        """``scalars`` to TensorBoard and, as one line with ``step``, to ``file`` (or ``record``
        there instead, e.g. a lens's whole result)."""
        if not self.active:
            return
        path = self.workdir / file
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"step": step, **(scalars if record is None else record)}) + "\n")
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.active:
            self.tensorboard.close()
