"""Parameter paths: the "/"-joined names by which masks, densities and reports refer to tensors.

A path is the sequence of keys leading to a leaf, joined by "/", e.g. ``"Conv_0/kernel"`` or
``"layer1_0/conv1/kernel"``. Every per-layer dict in sparsejax (densities, counts, scores) is keyed
by these strings, so a user can read and override them by name. Flax NNX ``Variable`` boxes are seen
through: ``nnx.state(model, nnx.Param)`` has the paths ``"conv1/kernel"``, like its values.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

FilterFn = Callable[[str, Any], bool]

GHOST = "ghost"


def key_name(key: Any) -> str:
    """The string of one path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: tuple) -> str:
    """Joins a `jax.tree_util` key path into ``"a/b/kernel"``."""
    return "/".join(key_name(k) for k in path)


def flatten(tree: Any) -> dict[str, Any]:
    """Leaves of ``tree`` keyed by their "/"-joined path, in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.as_pure(tree))[0]
    return {path_str(p): leaf for p, leaf in leaves}


def unflatten(like: Any, values: dict[str, Any]) -> Any:
    """A tree with the structure of ``like`` (NNX boxes dropped) with leaves ``values[path]``."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.as_pure(like))
    return jax.tree_util.tree_unflatten(treedef, [values[path_str(p)] for p, _ in paths_leaves])


def is_ghost(path: str) -> bool:
    """Ghost-skip parameters (ToST) live under modules whose name starts with "ghost"."""
    return any(part.lower().startswith(GHOST) for part in path.split("/"))


def default_filter(path: str, leaf: Any) -> bool:
    """The default prunable tensors: conv and dense kernels (ndim >= 2), never ghost parameters.

    Biases, BatchNorm scales and other vectors have ndim < 2 and are never pruned.
    """
    return np.ndim(leaf) >= 2 and not is_ghost(path)


def prunable(params: Any, filter_fn: FilterFn | None = None, *,
             required: bool = False) -> dict[str, Any]:
    """The prunable leaves of ``params`` keyed by path, in tree order.

    With ``required``, raises ``ValueError`` when there is none (a mask or density would prune
    nothing).
    """
    keep = filter_fn or default_filter
    chosen = {path: leaf for path, leaf in flatten(params).items() if keep(path, leaf)}
    if required and not chosen:
        raise ValueError("no prunable parameters found (default: kernels with ndim >= 2, not "
                         "ghost); pass a filter_fn that selects the tensors to prune")
    return chosen


def without_ghosts(tree: Any) -> Any:
    """``tree`` with each mapping entry whose key is a ghost name (`is_ghost`) removed, at any depth.

    Walks mappings (returned as dicts), NamedTuples, lists and tuples, so it strips params, masks,
    BatchNorm statistics and optimizer states alike; other leaves are returned as they are.
    """
    if isinstance(tree, Mapping):
        return {k: without_ghosts(v) for k, v in tree.items() if not is_ghost(str(k))}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(without_ghosts(v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(without_ghosts(v) for v in tree)
    return tree
