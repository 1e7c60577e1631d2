"""The parts of an inner optimizer's state that mirror the params, and resetting them (RigL).

Optimizers keep per-weight state in subtrees with exactly the params' tree structure and shapes
(SGD's momentum trace, Adam's mu and nu, Lion's mu, ...), at any depth of their state (inside
``optax.chain``, ``optax.inject_hyperparams``, ...). Those subtrees are found by walking the state;
a leaf shaped like a param that lives anywhere else cannot be reset safely and is refused.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _mirror_test(params: Any) -> Callable[[Any], bool]:
    leaves, treedef = jax.tree.flatten(params)
    shapes = [np.shape(leaf) for leaf in leaves]

    def is_mirror(node: Any) -> bool:
        node_leaves, node_def = jax.tree.flatten(node)
        return node_def == treedef and [np.shape(leaf) for leaf in node_leaves] == shapes

    return is_mirror


def check_resettable(inner_state: optax.OptState, params: Any, prunable: dict[str, Any]) -> None:
    """Raises ``ValueError`` if a state leaf shaped like a prunable param is outside a mirror subtree."""
    is_mirror = _mirror_test(params)
    shapes = {np.shape(p) for p in prunable.values()}
    for path, node in jax.tree_util.tree_flatten_with_path(inner_state, is_leaf=is_mirror)[0]:
        if not is_mirror(node) and np.shape(node) in shapes:
            raise ValueError(
                f"the inner optimizer's state has a leaf of shape {np.shape(node)} at "
                f"{jax.tree_util.keystr(path)} that looks per-weight but is not in a subtree with "
                f"the params' structure, so RigL cannot reset it for grown weights; use an "
                f"optimizer whose per-weight state mirrors the params (SGD, Adam, Lion, ...)")


def reset(inner_state: optax.OptState, params: Any, grown: Any) -> optax.OptState:
    """Zeroes every params-mirroring subtree of ``inner_state`` where ``grown`` (params' tree) is True."""
    is_mirror = _mirror_test(params)

    def zero_grown(node: Any) -> Any:
        if not is_mirror(node):
            return node
        return jax.tree.map(lambda leaf, g: jnp.where(g, jnp.zeros_like(leaf), leaf), node, grown)

    return jax.tree.map(zero_grown, inner_state, is_leaf=is_mirror)
