"""The train state: what a step reads and writes, what a checkpoint holds.

``TrainState`` is a ``flax.struct`` dataclass of four fields. The masks are not a field of their own:
they live in ``opt_state`` (``sparsejax.sparse_training``'s state; ``sparsejax.get_masks``).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from sparsejax import distributions, masks as masks_lib, paths


@flax.struct.dataclass
class TrainState:
    step: jax.Array       # int32: train steps done
    params: Any
    batch_stats: Any      # BatchNorm running statistics
    opt_state: Any        # sparse_training's state, masks included


def init_variables(model, rng: jax.Array, input_shape: tuple[int, ...], **inputs) -> dict:
    """``model.init`` compiled, with the dicts in the model's definition order (first layer first).

    A jitted function returns its dicts with sorted keys; the order in which the layers were created
    is read inside the trace (``sparsejax.distributions.definition_order``) and restored, since the
    "first"/"last" layer options of the densities depend on it. These are fresh variables only:
    ``init.variables_file`` is read afterwards by ``sparsejax.train.workdir.load_variables`` (an
    ``.npz``, or a PyTorch ``.pt`` via ``sparsejax.pruning.load_torch_variables``), which pairs
    leaves by path or by name (``sparsejax.pruning.torch_names``), never by order.
    """
    order: list[str] = []

    def init(key):
        variables = model.init(key, jnp.zeros((1, *input_shape)), train=False, **inputs)
        order.extend(distributions.definition_order(variables))
        return variables

    flat = paths.flatten(jax.jit(init)(rng))
    return traverse_util.unflatten_dict({tuple(p.split("/")): flat[p] for p in order})


def create(variables: dict, masks: Any, tx: optax.GradientTransformation) -> TrainState:
    """The step-0 state: ``variables`` with pruned weights zeroed, ``tx`` initialised on them."""
    params = masks_lib.apply(variables["params"], masks)
    return TrainState(step=jnp.int32(0), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def abstract(model, rng: jax.Array, input_shape: tuple[int, ...],
             make_tx: Callable[[Any], optax.GradientTransformation], **inputs) -> TrainState:
    """Shapes and dtypes of the step-0 state, by ``jax.eval_shape``: no init runs, no mask search."""
    def fresh():
        variables = model.init(rng, jnp.zeros((1, *input_shape)), train=False, **inputs)
        masks = masks_lib.ones_like(variables["params"])
        return create(variables, masks, make_tx(masks))

    return jax.eval_shape(fresh)


def without_ghosts(state: TrainState) -> TrainState:
    """The state of the plain network: every "ghost*" entry gone from params, statistics and
    optimizer state (masks included), all else unchanged."""
    return state.replace(params=paths.without_ghosts(state.params),
                         batch_stats=paths.without_ghosts(state.batch_stats),
                         opt_state=paths.without_ghosts(state.opt_state))


def replicate(state: TrainState, sharding: jax.sharding.Sharding) -> TrainState:
    """``state`` on the devices of ``sharding``, every leaf its own buffer (the step donates them)."""
    return jax.device_put(jax.tree.map(np.array, state), sharding)
