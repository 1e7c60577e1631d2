"""Average gradient flow: the L2 norm of the loss gradient over the active weights (Tessera et al.).

ALGORITHMS.md, "Analysis the papers report": ToST (Figure 9b, §4.4) plots the "Average Gradient
Flow" of the unpruned weights during training, after Tessera, Hooker and Rosman 2021, "Keep the
gradients flowing" (arXiv 2102.01670), where gradient flow is the norm of the gradient. Here it is
the L2 norm of the gradient masked by the mask (pruned coordinates contribute nothing), at the
sparse network (``sparsejax.masks.apply``: pruned weights exactly 0). Tessera et al.'s Effective
Gradient Flow additionally normalises by the number of active weights; divide by
``sparsejax.masks.counts`` for that.

``loss_fn(params, batch) -> scalar``: close over everything else (BatchNorm statistics, eval mode).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import masks as masks_lib, paths

LossFn = Callable[[Any, Any], jax.Array]


def average_gradient_norm(loss_fn: LossFn, params: optax.Params, masks: Any,
                          batches: Sequence[Any], *, filter_fn: paths.FilterFn | None = None
                          ) -> dict[str, Any]:
    """The mean over ``batches`` of the per-batch L2 norm of the active weights' gradient.

    For each batch b: ``g_b = ∇ loss_fn(sparse params, b) ⊙ mask``; per prunable tensor
    (``sparsejax.paths.prunable`` with ``filter_fn``; default: conv and dense kernels) the norm
    ``‖g_b[path]‖₂``, and in total the norm over all prunable tensors together,
    ``sqrt(Σ_path ‖g_b[path]‖₂²)``. Each is then averaged over the batches (so the total is not
    computed from the averaged layer norms).

    The mean of per-batch norms, not the norm of the mean gradient: "average gradient flow during
    training" averages the norm of the gradient each optimizer step sees, a mini-batch gradient,
    including its noise (the norm of the mean would approach the full-batch gradient norm and shrink
    as batches are added). It is at least the norm of the mean gradient (Jensen).

    Returns ``{"total": float, "layers": {path: float}}``, layers in tree order.
    Raises ``ValueError`` for masks that do not fit (``sparsejax.masks.validate``), no batches or
    no prunable tensor.
    """
    masks_lib.validate(masks, params)
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; pass a non-empty list of batches")
    chosen = tuple(paths.prunable(params, filter_fn, required=True))
    sparse = jax.jit(masks_lib.apply)(params, masks)
    per_batch = np.asarray([_squared_norms(loss_fn, sparse, masks, batch, chosen)
                            for batch in batches], np.float64)  # (batches, layers)
    layers = np.sqrt(per_batch).mean(axis=0)
    total = np.sqrt(per_batch.sum(axis=1)).mean()
    return {"total": float(total), "layers": {p: float(n) for p, n in zip(chosen, layers)}}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _squared_norms(loss_fn: LossFn, params: Any, masks: Any, batch: Any,
                   chosen: tuple[str, ...]) -> jax.Array:
    """``[‖∇loss ⊙ mask‖₂² of each path in chosen]`` for one batch."""
    grads = paths.flatten(jax.grad(loss_fn)(params, batch))
    keep = paths.flatten(masks)
    return jnp.stack([jnp.sum(jnp.square(jnp.where(keep[p], grads[p], 0).astype(jnp.float32)))
                      for p in chosen])
