"""DSR (Dynamic Sparse Reparameterization, Mostafa & Wang 2019).

One global magnitude threshold H, shared by all layers. On a mask update:

1. prune every kept weight with |w| < H, in every layer (K_l per layer, K in total);
2. adapt H toward the target N_p = f(t) · (kept weights before pruning): H ← H/2 if K > 1.1 N_p,
   H ← 2H if K < 0.9 N_p (the adapted H is used at the next update);
3. regrow K weights in total, shared between layers in proportion to each layer's surviving
   non-zeros R_l (cumulative rounding: the shares add up to K exactly and each is within one of
   K · R_l / ΣR), at uniformly random zero positions excluding the just-pruned ones. Only when a
   layer has no other zero left are just-pruned positions used (they keep their value), and a share
   larger than a layer's room passes on to the next layers that have room.

New weights start at 0. The optimizer update of the step is applied first. The total number of
non-zeros stays constant; per-layer counts move. H starts at ``INITIAL_THRESHOLD``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsejax.dst.rewiring import Layers, Rewiring, Rule, active, grow, random_scores

INITIAL_THRESHOLD = 1e-3
TOLERANCE = 0.1


def shares(total: jax.Array, surviving: jax.Array, room: jax.Array) -> jax.Array:
    """Splits ``total`` over layers in proportion to ``surviving``, at most ``room`` each (int32 [L]).

    The result adds up to ``total`` whenever ``room.sum() >= total``.
    """
    cumulative = jnp.cumsum(surviving.astype(jnp.float32))
    ideal = jnp.round(total.astype(jnp.float32) * cumulative / jnp.maximum(cumulative[-1], 1.0))
    ideal = jax.lax.cummax(jnp.minimum(ideal.astype(jnp.int32), total).at[-1].set(total))
    share = jnp.minimum(jnp.diff(ideal, prepend=0), room)
    spare = room - share
    spill = total - jnp.sum(share)
    return share + jnp.clip(spill - (jnp.cumsum(spare) - spare), 0, spare)


def rewire(r: Rewiring) -> tuple[Layers, Any]:
    """DSR's mask update (see the module docstring)."""
    threshold = r.state
    pruned = {p: m & (jnp.abs(r.weights[p]) < threshold) for p, m in r.masks.items()}
    survivors = {p: m & ~pruned[p] for p, m in r.masks.items()}
    n_pruned = jnp.stack([active(m) for m in pruned.values()])
    n_surviving = jnp.stack([active(m) for m in survivors.values()])
    size = jnp.array([m.size for m in r.masks.values()], jnp.int32)
    total_pruned = jnp.sum(n_pruned)
    target = r.drop_fraction * jnp.sum(n_pruned + n_surviving).astype(jnp.float32)
    pruned_f = total_pruned.astype(jnp.float32)
    threshold = jnp.where(pruned_f > (1 + TOLERANCE) * target, threshold / 2,
                          jnp.where(pruned_f < (1 - TOLERANCE) * target, threshold * 2, threshold))
    regrow = shares(total_pruned, n_surviving, size - n_surviving)
    new = {}
    for i, (path, mask) in enumerate(r.masks.items()):
        scores = random_scores(r.seed, i, mask.shape)
        priority = jnp.where(mask, -scores, scores)  # zeros first, just-pruned last
        new[path] = survivors[path] | grow(priority, ~survivors[path], regrow[i])
    return new, threshold


def rule() -> Rule:
    """DSR's rule; it takes no options."""
    return Rule(rewire=rewire, init_state=lambda: jnp.float32(INITIAL_THRESHOLD))
