"""Schedules for the ToST ghost phase (paper 000 §2.2 and §3.4): the ghost-skip gate α and PSwish β.

Each is an optax-style schedule ``step -> value`` (jit-safe, built from optax schedules), evaluated
inside the jitted train step and fed to the model as ``alpha=`` / ``beta=`` call arguments.

The ghost phase ends at ``end_step`` (by default the first learning-rate boundary,
`ghost_end_step`): from that step on α is exactly 0.0 and β is +inf, which `sparsejax.nn.pswish`
computes as exactly ReLU, so the model at ``end_step`` already is the original network. From that
step on the train loop may switch to the plain model given by `sparsejax.models.remove_ghosts`,
which computes the same function without the ghost work.

The paper's ablations are schedule options:
- gradual removal right before the first lr decay (paper default): ``ghost_end_step(boundaries)``;
- removal late, after the first decay: ``ghost_end_step(boundaries, "after_first_decay")``;
- kept forever: ``ghost_end_step(boundaries, "never")`` → ``end_step=None`` (α = 1, β = β0 always);
- abrupt removal at the end step: ``ghost_alpha(end, shape="step")`` and for β ``beta_max=beta0``
  (β fixed, as the released code's β = 2, then ReLU at once);
- a late cut-over: ``shape="late_linear"`` holds α = 1 (β = β0) for the first `LATE_START` of the
  ghost phase and moves linearly to its end value over the rest.

Neither paper 000 nor its released code gives the shapes (the release keeps its 1×1 jump branches
for the whole run and fixes β = 2), so they are ours. The defaults, linear α and linear β, are the
simplest reading of "decreased gradually" / "increased gradually" in the paper's text.
"""

from __future__ import annotations

import math
from typing import Iterable

import optax

ALPHA_SHAPES: tuple[str, ...] = ("linear", "cosine", "step", "late_linear")
BETA_SHAPES: tuple[str, ...] = ("linear", "exponential", "late_linear")
LATE_START = 0.75  # "late_linear": the fraction of the ghost phase held at the start value
REMOVALS: tuple[str, ...] = ("first_decay", "after_first_decay", "never")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")


def _check_end_step(end_step: int | None) -> None:
    if end_step is not None and (not isinstance(end_step, int) or end_step <= 0):
        raise ValueError(f"end_step must be a positive int (the step at which the ghost phase "
                         f"ends) or None (keep the ghosts forever), got {end_step!r}")


def ghost_end_step(lr_boundaries: Iterable[int], removal: str = "first_decay") -> int | None:
    """The step at which the ghost phase ends, from the learning-rate decay steps.

    ``lr_boundaries``: the steps at which the lr decays (e.g. the keys of optax's
    ``boundaries_and_scales``; the lr is decayed from that step on). ``removal``:
    "first_decay" (paper): the first boundary, so the last ghost step is right before the first
    decay; "after_first_decay" (ablation "removed too late"): the second boundary;
    "never" (ablation "kept forever"): None.
    """
    _check_choice("removal", removal, REMOVALS)
    boundaries = sorted(lr_boundaries)
    if not boundaries or any(not isinstance(b, int) or b <= 0 for b in boundaries):
        raise ValueError(f"lr_boundaries must be positive int steps, at least one, "
                         f"got {boundaries}")
    if removal == "never":
        return None
    if removal == "first_decay":
        return boundaries[0]
    if len(boundaries) < 2:
        raise ValueError(f"removal='after_first_decay' ends the ghost phase at the second lr "
                         f"decay, but lr_boundaries {boundaries} has one; pass end_step yourself "
                         "instead")
    return boundaries[1]


def _until(end_step: int, schedule: optax.Schedule, final: float) -> optax.Schedule:
    """``schedule`` before ``end_step``, exactly ``final`` from it on."""
    return optax.join_schedules([schedule, optax.constant_schedule(final)], [end_step])


def _late_linear(start: float, end: float, end_step: int) -> optax.Schedule:
    """``start`` until ``LATE_START · end_step``, then linear to ``end`` at ``end_step``."""
    hold = int(LATE_START * end_step)
    return optax.join_schedules(
        [optax.constant_schedule(start), optax.linear_schedule(start, end, end_step - hold)],
        [hold])


def ghost_alpha(end_step: int | None, shape: str = "linear") -> optax.Schedule:
    """The ghost-skip gate α: 1 at step 0, exactly 0 from ``end_step`` on (paper 000 GSk).

    ``shape``: "linear" or "cosine" decay from 1 to 0 over [0, end_step], "late_linear" (1 until
    `LATE_START` of the way, then linear to 0), or "step" (1 until ``end_step``, then 0: the
    abrupt-removal ablation). ``end_step=None``: α = 1 forever.
    """
    _check_choice("alpha shape", shape, ALPHA_SHAPES)
    _check_end_step(end_step)
    if end_step is None:
        return optax.constant_schedule(1.0)
    if shape == "linear":
        decay = optax.linear_schedule(1.0, 0.0, end_step)
    elif shape == "cosine":
        decay = optax.cosine_decay_schedule(1.0, end_step)
    elif shape == "late_linear":
        decay = _late_linear(1.0, 0.0, end_step)
    else:
        decay = optax.constant_schedule(1.0)
    return _until(end_step, decay, 0.0)


def ghost_beta(beta0: float, beta_max: float, end_step: int | None,
               shape: str = "linear") -> optax.Schedule:
    """PSwish's β: from ``beta0`` growing to ``beta_max``, then +inf (exact ReLU) from ``end_step``.

    ``shape``: "linear", "exponential" (β0 · (β_max/β0)^(t/end_step), needs β0 > 0) or
    "late_linear" (β0 until `LATE_START` of the way, then linear to β_max) growth (paper 000 GSw;
    the paper does not publish its shape). ``beta_max == beta0`` keeps β fixed until
    ReLU takes over (the released code's β = 2). ``end_step=None`` keeps β = ``beta0`` forever (the
    "kept forever" ablation) and so needs ``beta_max == beta0``.
    """
    _check_choice("beta shape", shape, BETA_SHAPES)
    _check_end_step(end_step)
    if not (math.isfinite(beta0) and math.isfinite(beta_max)) or beta0 < 0 or beta_max < beta0:
        raise ValueError(f"need finite 0 <= beta0 <= beta_max, got beta0={beta0}, "
                         f"beta_max={beta_max}; β only grows (towards ReLU)")
    if shape == "exponential" and beta0 == 0:
        raise ValueError("exponential β growth cannot start at beta0=0; use beta0 > 0 or "
                         "shape='linear'")
    if end_step is None:
        if beta_max != beta0:
            raise ValueError(f"end_step=None keeps β at beta0 forever, but beta_max={beta_max} != "
                             f"beta0={beta0}; set beta_max=beta0 or give an end_step")
        return optax.constant_schedule(beta0)
    if shape == "linear":
        growth = optax.linear_schedule(beta0, beta_max, end_step)
    elif shape == "late_linear":
        growth = _late_linear(beta0, beta_max, end_step)
    else:
        growth = optax.exponential_decay(beta0, end_step, beta_max / beta0, end_value=beta_max)
    return _until(end_step, growth, math.inf)
