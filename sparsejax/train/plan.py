"""Step units, resolved once: every ``*_epochs`` / ``*_fraction`` / ``*_steps`` of the config as steps,
and one predicate, `itstime`, for "does periodic work run after this step".

The papers count in epochs (lr decays at epochs 90 and 135, the ghost phase ends right before the
first decay, GGR rewires once an epoch); the loop counts steps. `make` turns the one into the other
for a dataset's ``steps_per_epoch``, so nothing downstream multiplies by it again.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from sparsejax import schedules


@dataclasses.dataclass(frozen=True)
class Plan:
    """When things happen, in steps (step t = number of train steps done)."""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr_boundaries: tuple[int, ...]  # the lr is × decay_factor from each of these steps on
    ghost_end: int | None           # first step of the plain model; None: no ghost phase
    dst_start: int                  # mask updates at start <= t < end, every dst_every steps
    dst_end: int
    dst_every: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    rewind_step: int | None         # step whose variables go to rewind.npz; None: never
    start_step: int                 # the step a fresh run starts at (0, or a rewinding point)

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch


def make(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Plan:
    """The plan of ``config`` on a dataset with ``steps_per_epoch`` train steps per epoch."""
    epochs = lambda e: int(round(e * steps_per_epoch))  # noqa: E731
    total = epochs(config.num_epochs)
    boundaries = tuple(epochs(e) for e in config.optimizer.decay_epochs)
    t, d = config.tost, config.dst
    ghost_end = None
    if t.ghost_skip or t.ghost_swish:
        ghost_end = schedules.ghost_end_step(boundaries or (total,), t.removal)
    dst_start = epochs(d.start_epoch)
    return Plan(
        steps_per_epoch=steps_per_epoch, total_steps=total,
        warmup_steps=epochs(config.optimizer.warmup_epochs), lr_boundaries=boundaries,
        ghost_end=ghost_end, dst_start=dst_start,
        dst_end=max(int(d.end_fraction * total), dst_start),
        dst_every=d.update_every or steps_per_epoch, log_every=config.log_every_steps,
        eval_every=epochs(config.eval_every_epochs),
        checkpoint_every=epochs(config.checkpoint_every_epochs),
        rewind_step=epochs(config.init.save_at_epoch) if config.init.save_at_epoch >= 0 else None,
        start_step=epochs(config.init.start_epoch))


def itstime(step: int, every: int, total: int) -> bool:
    """Whether work done every ``every`` steps runs after ``step`` (always after the last one)."""
    return step % every == 0 or step == total
