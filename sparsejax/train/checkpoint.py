"""Orbax checkpoints of the train state and the run's bookkeeping, restored from the newest readable.

A checkpoint at step t holds ``state`` (the `TrainState`) and ``meta`` (the data iterator's position
and the best validation result so far), so a killed run relaunched with the same command ends as an
uninterrupted one. A step that cannot be read (cut short or damaged on disk) is moved aside to
``workdir/damaged_checkpoints/<step>`` with a message, and the run resumes from the step before it;
if none can be read the run stops with one line instead of training over the old metrics.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sparsejax.errors import TrainError
from sparsejax.train.state import TrainState


class Checkpoints:
    def __init__(self, workdir: pathlib.Path, keep: int, *, create: bool = True):
        self.workdir = workdir
        self.manager = ocp.CheckpointManager(
            (workdir / "checkpoints").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                                 create=create, read_only=not create))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, target: Callable[[int], TrainState]) -> tuple[TrainState, dict] | None:
        """The newest readable checkpoint as ``(state, meta)``, or None if there is none.

        ``target(step)``: the abstract state (shapes, dtypes, shardings) of a checkpoint at ``step``.
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target(step)),
                                      meta=ocp.args.JsonRestore())
            try:
                restored = self.manager.restore(step, args=args)
            # Whatever a damaged file makes orbax, tensorstore or json raise: try the step before.
            except Exception as error:  # noqa: BLE001
                reason = " ".join(str(error).split())[:200]
                damaged.append((step, f"{type(error).__name__}: {reason}"))
                continue
            self._set_aside(damaged)
            return restored["state"], dict(restored["meta"])
        if damaged:
            raise TrainError(f"no checkpoint in {str(self.workdir / 'checkpoints')!r} can be read "
                             f"(step {damaged[0][0]}: {damaged[0][1]}); delete that directory to "
                             "start over, or use another --workdir")
        return None

    def restore_step(self, step: int, target: Callable[[int], TrainState]) -> TrainState:
        """The state of checkpoint ``step`` (read only; `TrainError` if it cannot be read)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target(step)),
                                  meta=ocp.args.JsonRestore())
        try:
            return self.manager.restore(step, args=args)["state"]
        except Exception as error:  # noqa: BLE001 - whatever a damaged checkpoint makes orbax raise
            raise TrainError(f"checkpoint step {step} in {str(self.workdir / 'checkpoints')!r} "
                             f"cannot be read ({type(error).__name__}); pass another --step") from None

    def _set_aside(self, damaged: list[tuple[int, str]]) -> None:
        """Moves unreadable steps to ``damaged_checkpoints/<step>[.<n>]`` (process 0; all wait)."""
        if not damaged:
            return
        if jax.process_index() == 0:
            for step, error in damaged:
                aside = self.workdir / "damaged_checkpoints" / str(step)
                n = 0
                while aside.exists():
                    n += 1
                    aside = aside.with_name(f"{step}.{n}")
                print(f"checkpoint step {step} is unreadable ({error}); moved to {aside}")
                aside.parent.mkdir(exist_ok=True)
                shutil.move(str(self.workdir / "checkpoints" / str(step)), str(aside))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("sparsejax: damaged checkpoints set aside")
        self.manager.reload()

    def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
