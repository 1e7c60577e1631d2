"""RigL (Rigging the Lottery, Evci et al. 2020).

Per layer: drop the floor(f · active) smallest-magnitude kept weights, grow as many connections not
kept with the largest |dense gradient| (a just-dropped one may come back and keeps its value). New
weights start at 0 and their optimizer state (momentum, Adam moments, ...) is reset to 0. On
mask-update steps the optimizer update is skipped, so magnitudes are those before the step.
Per-layer non-zero counts stay constant.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from sparsejax.dst.rewiring import Layers, Rewiring, Rule, grow, remove_smallest


def rewire(r: Rewiring) -> tuple[Layers, Any]:
    """RigL's mask update (see the module docstring)."""
    kept, dropped = remove_smallest(r)
    new = {path: keep | grow(jnp.abs(r.grads[path]), ~keep, dropped[path])
           for path, keep in kept.items()}
    return new, r.state


def rule() -> Rule:
    """RigL's rule; it takes no options."""
    return Rule(rewire=rewire, skips_update=True, resets_optimizer_state=True)
