"""The compiled steps: ``train_step`` (one SGD step with masked updates), ``eval_step`` and
``batch_statistics`` (BatchNorm statistics re-estimated on training batches).

All are pure functions of the state and a global batch. ``inputs(step)`` gives the model's ghost
inputs (α, β) of the ghost phase; the plain model takes none (``inputs=None``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sparsejax.nn.layers import BN_MOMENTUM
from sparsejax.train.state import TrainState

Inputs = Callable[[jax.Array], dict] | None


def _apply(model, state: TrainState, params, images, inputs: Inputs, **kwargs):
    return model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                       **(inputs(state.step) if inputs else {}), **kwargs)


def train_step(state: TrainState, batch: dict, teacher_variables: dict | None = None, *, model,
               tx: optax.GradientTransformation, inputs: Inputs,
               loss: Callable[..., jax.Array], teacher_model=None) -> tuple[TrainState, dict]:
    """``(state, batch, teacher_variables) -> (state, {"loss", "accuracy"})``.

    ``loss(logits, labels, teacher_logits)`` is the per-example loss (`sparsejax.train.build.loss`);
    with a ``teacher_model``, its logits come from ``teacher_variables`` in eval mode, frozen.
    """
    teacher_logits = None
    if teacher_model is not None:
        teacher_logits = jax.lax.stop_gradient(
            teacher_model.apply(teacher_variables, batch["image"], train=False))

    def loss_fn(params):
        logits, new = _apply(model, state, params, batch["image"], inputs, train=True,
                             mutable=["batch_stats"])
        return loss(logits, batch["label"], teacher_logits).mean(), (logits, new["batch_stats"])

    (value, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)
    return state, {"loss": value, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def batch_statistics(state: TrainState, batch: dict, *, model, inputs: Inputs) -> dict:
    """The BatchNorm statistics (mean, biased var) of ``batch`` at ``state.params``, every layer.

    A train-mode pass from all-zero running statistics leaves ``(1 − momentum)`` · the batch's
    statistics; dividing by ``1 − momentum`` gives them back. Averaged over N batches they are the
    re-estimated statistics (as ``torch.optim.swa_utils.update_bn``'s cumulative average).
    """
    zeros = state.replace(batch_stats=jax.tree.map(jnp.zeros_like, state.batch_stats))
    _, new = _apply(model, zeros, state.params, batch["image"], inputs, train=True,
                    mutable=["batch_stats"])
    return jax.tree.map(lambda x: x / (1.0 - BN_MOMENTUM), new["batch_stats"])


def eval_step(state: TrainState, batch: dict, *, model, inputs: Inputs) -> jax.Array:
    """``[correct, loss_sum, count]`` over the batch's real (unpadded) examples."""
    logits = _apply(model, state, state.params, batch["image"], inputs, train=False)
    weight = batch["mask"].astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weight)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return jnp.stack([correct, jnp.sum(loss * weight), jnp.sum(weight)])
