"""The parts of an inner optimizer's state that mirror the params: resetting them and keeping them
through a skipped update (RigL).

Optimizers keep per-weight state in subtrees with the params' structure (SGD's momentum trace, Adam's
mu and nu, Lion's mu, ...), at any depth of their state (inside ``optax.chain``,
``optax.inject_hyperparams``, ...). ``optax.tree_map_params`` finds them: it runs the optimizer's
``init`` on a placeholder for the params and maps over the subtrees where the placeholder ends up. A
leaf shaped like a prunable param anywhere else cannot be reset safely and is refused. Such a subtree
may hold leaves of other shapes (Adafactor's factored row and column statistics); those are not
per-weight and are left as they are.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def check_resettable(inner: optax.GradientTransformation, inner_state: optax.OptState,
                     prunable: dict[str, Any]) -> None:
    """Raises ``ValueError`` if a leaf shaped like a prunable param is outside the params subtrees."""
    shapes = {np.shape(p) for p in prunable.values()}

    def shape_if_per_weight(leaf: Any) -> str | None:
        return str(np.shape(leaf)) if np.shape(leaf) in shapes else None

    found = jax.tree_util.tree_flatten_with_path(optax.tree_map_params(
        inner.init, lambda _: None, inner_state, transform_non_params=shape_if_per_weight))[0]
    if found:
        path, shape = found[0]
        raise ValueError(
            f"the inner optimizer's state has a leaf of shape {shape} at "
            f"{jax.tree_util.keystr(path)} that looks per-weight but is not in a subtree with the "
            f"params' structure, so RigL cannot reset it for grown weights; use an optimizer whose "
            f"per-weight state mirrors the params (SGD, Adam, Lion, ...)")


def reset(inner: optax.GradientTransformation, inner_state: optax.OptState, grown: Any
          ) -> optax.OptState:
    """Zeroes every params subtree of ``inner_state`` where ``grown`` (params' tree) is True."""
    def zero_grown(leaf: jax.Array, g: jax.Array) -> jax.Array:
        return jnp.where(g, jnp.zeros_like(leaf), leaf) if np.shape(leaf) == np.shape(g) else leaf

    return optax.tree_map_params(inner.init, zero_grown, inner_state, grown)


def keep_per_weight(inner: optax.GradientTransformation, new_state: optax.OptState,
                    old_state: optax.OptState) -> optax.OptState:
    """``new_state`` with every params subtree taken from ``old_state`` (RigL's skipped update).

    The per-weight statistics (momentum, Adam's moments) stay as they were, while everything else,
    in particular the step counts of ``optax.scale_by_schedule`` and ``inject_hyperparams``, advances:
    a skipped step still counts for the learning-rate schedule (ALGORITHMS.md, RigL).
    """
    per_weight = optax.tree_map_params(inner.init, lambda _: True, new_state,
                                       transform_non_params=lambda _: False)
    return jax.tree.map(lambda keep, new, old: old if keep else new, per_weight, new_state,
                        old_state)
