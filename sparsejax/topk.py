"""Exact top-k selection without sorting: per tensor and globally across a pytree.

``mask(scores, k)`` marks exactly ``k`` entries, the ones with the largest scores; among equal scores
the lower flat index wins. ``k`` may be a traced integer (it follows a schedule in dynamic sparse
training), so nothing here needs ``k`` at trace time.

Method (ALGORITHMS.md, "Exact top-k masks"): every score is mapped to an order-preserving unsigned
32-bit key (its float bits, with negative numbers flipped). The k-th largest key ``t`` is built one bit
at a time, from the most significant down: a candidate bit is kept when at least ``k`` keys are still
``>= candidate``. That is 32 counting passes, each one fused read of the scores and one scalar sum;
on a sharded array each pass is one scalar all-reduce. Keys above ``t`` are all selected; among the
keys equal to ``t`` the first ``k - count(key > t)`` in flat order are selected, found by a second
bisection on the flat index that runs only when the tie actually has to be broken.

Memory: no sort and no index array. XLA:CPU (jax 0.10) does not fuse a comparison into a reduction:
it keeps the uint32 keys (4N bytes, hoisted out of the loop) and writes each pass's int32 indicator
before summing it (4N bytes); with the boolean arrays, measured peak ~3.3x the float32 scores at 10M
(``benchmarks/topk.py``). JaxPruner's argsort measures ~10x there.

Scores are compared as float32 (integer, bfloat16 and float16 scores are converted first); ``-0.0``
counts as ``0.0``; NaN scores are rejected by the callers that can see concrete values
(``sparsejax.masks.from_scores``) and must not be passed under ``jit``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_BITS = 32
_SIGN = np.uint32(0x80000000)


def keys(scores: jax.Array) -> jax.Array:
    """Order-preserving uint32 keys: ``keys(a) < keys(b)`` exactly when ``a < b`` as float32."""
    x = jnp.asarray(scores).astype(jnp.float32)
    x = jnp.where(x == 0, jnp.float32(0), x)  # -0.0 and 0.0 get one key.
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    negative = bits >= _SIGN
    return jnp.where(negative, ~bits, bits | _SIGN)


def _count(leaves: list[jax.Array], fn) -> jax.Array:
    """Sum over all leaves of ``fn(leaf)`` counted as int32."""
    return sum((jnp.sum(fn(leaf), dtype=jnp.int32) for leaf in leaves), jnp.int32(0))


def _kth_largest_key(leaves: list[jax.Array], k: jax.Array) -> jax.Array:
    """The largest key ``t`` with ``count(keys >= t) >= k``, over all leaves, in 32 counting passes."""

    def step(i, t):
        candidate = t | (jnp.uint32(1) << (jnp.uint32(_BITS - 1) - i.astype(jnp.uint32)))
        enough = _count(leaves, lambda s: keys(s) >= candidate) >= k
        return jnp.where(enough, candidate, t)

    return jax.lax.fori_loop(0, _BITS, step, jnp.uint32(0))


def _first_ties(ties: list[jax.Array], need: jax.Array) -> list[jax.Array]:
    """Keeps the first ``need`` True entries of the flat bool arrays ``ties``, taken in list order.

    A bisection on the global flat index (leaf offset + index in the leaf); the leaves are never
    concatenated, so they may be sharded differently and no copy of their size is made.
    """
    sizes = [t.size for t in ties]
    offsets = [int(o) for o in np.cumsum([0] + sizes[:-1])]

    def before(p):
        # ties[:p] of the concatenation, leaf by leaf; the index is made where it is used (fused).
        return [t & (jax.lax.broadcasted_iota(jnp.int32, t.shape, 0) < p - o)
                for t, o in zip(ties, offsets)]

    def cut(_):
        # Smallest p with count(ties[:p]) >= need; then ties[:p] holds exactly `need` Trues.
        def step(_, bounds):
            lo, hi = bounds
            mid = (lo + hi) // 2
            enough = _count(before(mid), lambda b: b) >= need
            return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

        n = sum(sizes)
        steps = max(1, int(np.ceil(np.log2(n + 1))) + 1)
        _, p = jax.lax.fori_loop(0, steps, step, (jnp.int32(0), jnp.int32(n)))
        return before(p)

    total = _count(ties, lambda t: t)
    return jax.lax.cond(total > need, cut, lambda _: ties, None)


@jax.jit  # Compiled once per shapes (k is traced), also when called outside a user's jit.
def _select(leaves: list[jax.Array], k: jax.Array) -> list[jax.Array]:
    """Exactly ``k`` True in total over ``leaves`` at the largest scores, ties by global flat order."""
    k = jnp.asarray(k, jnp.int32)
    t = _kth_largest_key(leaves, k)
    above = [keys(s) > t for s in leaves]
    need = k - _count(above, lambda a: a)
    ties = _first_ties([(keys(s) == t).reshape(-1) for s in leaves], need)
    return [a | tie.reshape(s.shape) for s, a, tie in zip(leaves, above, ties)]


def mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool array of ``scores.shape`` with exactly ``k`` True at the largest scores.

    Ties: the lower flat index wins. ``k`` may be traced; it must lie in ``[0, scores.size]``.
    """
    scores = jnp.asarray(scores)
    if scores.size == 0:
        return jnp.zeros(scores.shape, bool)
    return _select([scores], k)[0]


def global_masks(scores: Any, k: int | jax.Array) -> Any:
    """Bool pytree with exactly ``k`` True in total at the largest scores across all leaves.

    All leaves are ranked together; ties go to the earlier leaf (tree order), then the lower flat
    index. Leaves that are ``None`` stay ``None``. ``k`` may be traced.
    """
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    nonempty = [leaf for leaf in leaves if leaf.size]
    selected = iter(_select(nonempty, k) if nonempty else [])
    out = [next(selected) if leaf.size else jnp.zeros(leaf.shape, bool) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)

