"""RigL (Rigging the Lottery, Evci et al. 2020).

Per layer: drop the floor(f · active) smallest-magnitude kept weights, grow as many connections not
kept with the largest |dense gradient| (a just-dropped one may come back and keeps its value). New
weights start at 0 and their optimizer state (momentum, Adam moments, ...) is reset to 0. On
mask-update steps the optimizer update is skipped, so magnitudes are those before the step.
Per-layer non-zero counts stay constant.

With N:M structure (``sparse_training(..., structure="n:m")``) the drop is the same; then every
group of M (``sparsejax.masks.n_of_m``) grows back, at its own largest |dense gradient| among its
connections not kept, as many as it lost, so every group keeps exactly N (``rewiring.refill``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from sparsejax.dst.rewiring import Layers, Rewiring, Rule, refill, remove_smallest


def rewire(r: Rewiring, structure: tuple[int, int] | None = None) -> tuple[Layers, Any]:
    """RigL's mask update (see the module docstring)."""
    kept, dropped = remove_smallest(r)
    new = {path: refill(jnp.abs(r.grads[path]), keep, dropped[path], structure)
           for path, keep in kept.items()}
    return new, r.state


def rule(structure: tuple[int, int] | None = None) -> Rule:
    """RigL's rule; it takes no options (``structure`` comes from ``sparse_training``)."""
    return Rule(rewire=functools.partial(rewire, structure=structure), skips_update=True,
                resets_optimizer_state=True)
