"""The compiled steps: ``train_step`` (one SGD step with masked updates) and ``eval_step``.

Both are pure functions of the state and a global batch. ``inputs(step)`` gives the model's ghost
inputs (α, β) of the ghost phase; the plain model takes none (``inputs=None``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sparsejax.recipe import losses
from sparsejax.train.state import TrainState

Inputs = Callable[[jax.Array], dict] | None


def _apply(model, state: TrainState, params, images, inputs: Inputs, **kwargs):
    return model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                       **(inputs(state.step) if inputs else {}), **kwargs)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               inputs: Inputs, smoothing: float, variant: str) -> tuple[TrainState, dict]:
    """``(state, batch) -> (state, {"loss", "accuracy"})`` with the label-smoothed cross-entropy."""
    def loss_fn(params):
        logits, new = _apply(model, state, params, batch["image"], inputs, train=True,
                             mutable=["batch_stats"])
        loss = losses.cross_entropy(logits, batch["label"], smoothing, variant).mean()
        return loss, (logits, new["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def eval_step(state: TrainState, batch: dict, *, model, inputs: Inputs) -> jax.Array:
    """``[correct, loss_sum, count]`` over the batch's real (unpadded) examples."""
    logits = _apply(model, state, state.params, batch["image"], inputs, train=False)
    weight = batch["mask"].astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weight)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return jnp.stack([correct, jnp.sum(loss * weight), jnp.sum(weight)])
