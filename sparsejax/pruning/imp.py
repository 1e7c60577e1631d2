"""Pure steps of iterative magnitude pruning (ALGORITHMS.md, "Lottery ticket / IMP").

One IMP round, driven by the training loop: train with ``masks``; ``masks = imp_prune(trained,
masks)``; ``params = rewind(init_or_early_checkpoint, masks)``; repeat. With the default fraction
0.2 the sparsity after r rounds is 1 − 0.8^r up to one rounding per round. One-shot magnitude
pruning (OMP) is ``find_mask('magnitude', ...)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib, paths
from sparsejax.pruning.finders import keep_top


@jax.jit
def _surviving_magnitudes(weights: dict[str, jax.Array], masks: dict[str, jax.Array]
                          ) -> dict[str, jax.Array]:
    """|w| where kept, −1 where already pruned (so pruned weights are never chosen again)."""
    return {p: jnp.where(masks[p], jnp.abs(w).astype(jnp.float32), jnp.float32(-1))
            for p, w in weights.items()}


def imp_prune(params: Any, masks: Any, fraction: float = 0.2, *,
              filter_fn: paths.FilterFn | None = None) -> Any:
    """Prunes ``fraction`` of the remaining prunable weights by global magnitude.

    The kept count goes from k to round((1 − fraction)·k) over all prunable tensors together
    (default: conv and dense kernels; pass ``filter_fn`` for conv kernels only). Pruned weights
    stay pruned; non-prunable masks are returned unchanged. ``params`` are the trained weights.
    """
    masks_lib.validate(masks, params)
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"IMP fraction is {fraction}; it must lie in [0, 1) (the share of the "
                         "remaining weights to prune per round, 0.2 in the lottery-ticket papers)")
    prunable = paths.prunable(params, filter_fn, required=True)
    current = paths.flatten(masks)
    alive = sum(int(np.count_nonzero(np.asarray(current[p]))) for p in prunable)
    kept = masks_lib.kept_count(1.0 - float(fraction), alive)
    scores = _surviving_magnitudes(prunable, {p: current[p] for p in prunable})
    return paths.unflatten(params, {**current, **keep_top(scores, kept)})


def rewind(params: Any, masks: Any) -> Any:
    """``params`` (the initialization or an early checkpoint) with the pruned weights set to 0."""
    masks_lib.validate(masks, params)
    return masks_lib.apply(params, masks)
