"""GGR (Global Gradient-based Redistribution, paper 004).

On a mask update:

1. local removal: drop the floor(f · active) smallest-magnitude kept weights of each layer;
2. K = total dropped; the K largest |gradient| over the connections not kept, ranked across *all*
   layers at once (``sparsejax.topk.global_masks``), decide each layer's quota q_l = how many of
   them fall in layer l (a layer may become fully dense in one round);
3. inside each layer, round(``grow_gradient_fraction`` · q_l) (halves rounded up) go to the largest
   |gradients| (RigL) and the rest to uniformly random positions (SET) among the connections not
   kept; a just-dropped connection may come back and keeps its value;
4. new weights start at ``NEW_WEIGHT_INIT`` = 1e-10, not 0, so that they are not pruned at once.

The paper splits 50:50 (``grow_gradient_fraction=0.5``). The optimizer update of the step is applied
first. The total number of non-zeros stays constant; per-layer counts move.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from sparsejax import topk
from sparsejax.dst.rewiring import Layers, Rewiring, Rule, active, grow, random_scores, remove_smallest

NEW_WEIGHT_INIT = 1e-10


def rewire(r: Rewiring, grow_gradient_fraction: float) -> tuple[Layers, Any]:
    """GGR's mask update (see the module docstring)."""
    kept, dropped = remove_smallest(r)
    magnitude = {p: jnp.abs(g) for p, g in r.grads.items()}
    candidates = {p: jnp.where(keep, -jnp.inf, magnitude[p]) for p, keep in kept.items()}
    selected = topk.global_masks(candidates, sum(dropped.values()))
    new = {}
    for stream, (path, keep) in enumerate(kept.items()):
        quota = active(selected[path])
        n_gradient = jnp.floor(grow_gradient_fraction * quota.astype(jnp.float32) + 0.5
                               ).astype(jnp.int32)
        by_gradient = grow(magnitude[path], selected[path], n_gradient)
        by_random = grow(random_scores(r.seed, stream, keep.shape), ~keep & ~by_gradient, quota - n_gradient)
        new[path] = keep | by_gradient | by_random
    return new, r.state


def rule(grow_gradient_fraction: float = 0.5) -> Rule:
    """GGR with the given share of each layer's quota placed at the largest gradients.

    ``grow_gradient_fraction`` must lie in [0, 1] (``ValueError`` otherwise); 1 is RigL-like growth
    only, 0 SET-like random growth only.
    """
    if not 0.0 <= grow_gradient_fraction <= 1.0:
        raise ValueError(f"grow_gradient_fraction is {grow_gradient_fraction}; it must lie in [0, 1]")
    return Rule(rewire=functools.partial(rewire, grow_gradient_fraction=grow_gradient_fraction),
                new_weight_init=NEW_WEIGHT_INIT)
