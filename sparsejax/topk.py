"""Exact top-k selection without sorting: per tensor and globally across a pytree.

``mask(scores, k)`` marks exactly ``k`` entries, the ones with the largest scores; among equal scores
the lower flat index wins. ``k`` may be a traced integer (it follows a schedule in dynamic sparse
training), so nothing here needs ``k`` at trace time.

Method (ALGORITHMS.md, "Exact top-k masks"): every score is mapped to an order-preserving unsigned
32-bit key (its float bits, with negative numbers flipped). The k-th largest key ``t`` is built one bit
at a time, from the most significant down: a candidate bit is kept when at least ``k`` keys are still
``>= candidate``. That is 32 counting passes, each one read of the scores and one scalar sum; on a
sharded array each pass is one scalar all-reduce. Keys above ``t`` are all selected; among the keys
equal to ``t`` the first ``k - count(key > t)`` in flat order are selected, up to a cut on the global
flat index found by a second bisection that runs only when the tie actually has to be broken. The
mask is then written in one elementwise pass per leaf.

Memory: no sort, no index array and no copy of the scores. XLA:CPU (jax 0.10) does not fuse a
comparison into a reduction: a whole-array count writes the keys and an int32 indicator of the full
size first (~3.3x the float32 scores measured at 10M before this was changed). So each count reads a
leaf in chunks of ``_CHUNK`` (2^18) scores through ``lax.dynamic_slice`` (the last partial chunk is
a static slice, no padding): the keys and indicators are at most a chunk long (1 MiB each). Measured
by ``benchmarks/topk.py`` on one CPU device, as the peak resident memory of one run beyond the
scores (the output mask included; benchmarks/RESULTS.md): 0.26x the float32 scores at 10M and 0.25x
at 100M, i.e. the bool output mask (N bytes) plus a few MiB; 0.75x (3 MiB) at 1M; 0.44x for the 21
leaves of a global ResNet-18 (11.2M). JaxPruner's argsort measures ~10x.

Exception: a leaf that may be split over several devices is counted whole, since dynamic slices of
it would make XLA gather it onto every device; it then has the full-size temporaries above (~3x,
per device of its shard). That is a non-replicated sharded array, a tracer whose type carries an
explicit sharded spec, and also any tracer of unknown sharding (a caller's ``jit`` without explicit
sharding types) when the process has more than one device.

Scores are compared as float32 (integer, bfloat16 and float16 scores are converted first); ``-0.0``
counts as ``0.0``; NaN scores are rejected by the callers that can see concrete values
(``sparsejax.masks.from_scores``) and must not be passed under ``jit``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_BITS = 32
_SIGN = np.uint32(0x80000000)
# Elements per counting chunk: 2^18 float32 = 1 MiB read, 1 MiB int32 indicator (stays in cache).
_CHUNK = 1 << 18


def keys(scores: jax.Array) -> jax.Array:
    """Order-preserving uint32 keys: ``keys(a) < keys(b)`` exactly when ``a < b`` as float32."""
    x = jnp.asarray(scores).astype(jnp.float32)
    x = jnp.where(x == 0, jnp.float32(0), x)  # -0.0 and 0.0 get one key.
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    negative = bits >= _SIGN
    return jnp.where(negative, ~bits, bits | _SIGN)


def _may_be_split(leaf: jax.Array) -> bool:
    """Whether ``leaf`` may be partitioned over devices, so that slicing it would gather it."""
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
        return not leaf.sharding.is_fully_replicated
    sharding = getattr(jax.typeof(leaf), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and not mesh.empty and all(
            t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return any(axis is not None for axis in sharding.spec)
    # A tracer in a caller's jit without explicit sharding: only one device makes it certain.
    return jax.device_count() > 1


def _chunks(leaves: list[jax.Array]) -> tuple[int, ...]:
    """Counting chunk per leaf: ``_CHUNK``, or 0 (whole leaf at once) when it may be split."""
    return tuple(0 if _may_be_split(leaf) else _CHUNK for leaf in leaves)


def _count(leaves: list[jax.Array], offsets: list[int], fn, chunks: tuple[int, ...]) -> jax.Array:
    """Number of True in ``fn(keys, flat_index)`` over all leaves, as int32, in chunks.

    ``fn`` gets the keys of a run of one leaf's flat scores and their global flat indices (leaf
    offset + index in the leaf) and returns bools of that size. A leaf longer than its chunk is read
    in a loop over chunk-sized dynamic slices plus one static tail, so the keys and the indicator
    that XLA:CPU writes before summing are at most a chunk long; the scores are never copied. Chunk
    0 reads the leaf at once (full-size temporaries), for leaves that may be split over devices:
    dynamic slices of those would make XLA gather them onto every device.
    """
    total = jnp.int32(0)
    for leaf, offset, chunk in zip(leaves, offsets, chunks):
        flat = leaf.reshape(-1)  # A bitcast: no copy.
        n = flat.size
        chunk = chunk or n

        def part(values, start):
            index = jax.lax.broadcasted_iota(jnp.int32, values.shape, 0) + (start + offset)
            return jnp.sum(fn(keys(values), index), dtype=jnp.int32)

        full, tail = divmod(n, chunk)
        if full > 1:
            def step(j, acc):
                start = j * chunk
                return acc + part(jax.lax.dynamic_slice(flat, (start,), (chunk,)), start)

            total = total + jax.lax.fori_loop(0, full, step, jnp.int32(0))
        elif full == 1:
            total = total + part(flat[:chunk], 0)
        if tail:
            total = total + part(flat[n - tail:], n - tail)
    return total


def _kth_largest_key(leaves, offsets, k, chunks) -> jax.Array:
    """The largest key ``t`` with ``count(keys >= t) >= k``, over all leaves, in 32 counting passes."""

    def step(i, t):
        candidate = t | (jnp.uint32(1) << (jnp.uint32(_BITS - 1) - i.astype(jnp.uint32)))
        enough = _count(leaves, offsets, lambda key, _: key >= candidate, chunks) >= k
        return jnp.where(enough, candidate, t)

    return jax.lax.fori_loop(0, _BITS, step, jnp.uint32(0))


def _tie_cut(leaves, offsets, t, need, chunks) -> jax.Array:
    """Global flat index ``p`` such that the keys equal to ``t`` before ``p`` number exactly ``need``.

    When there are no more than ``need`` such keys, ``p`` is the total size (all are kept). Otherwise
    ``p`` is the smallest index with ``count(key == t and index < p) >= need``, found by a bisection
    on the global flat index (leaf offset + index in the leaf); the leaves are never concatenated,
    so they may be sharded differently and no copy of their size is made.
    """
    n = offsets[-1] + leaves[-1].size

    def bisect(_):
        def step(_, bounds):
            lo, hi = bounds
            mid = lo + ((hi - lo) >> 1)
            enough = _count(leaves, offsets, lambda key, index: (key == t) & (index < mid),
                            chunks) >= need
            return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

        steps = max(1, int(np.ceil(np.log2(n + 1))) + 1)
        return jax.lax.fori_loop(0, steps, step, (jnp.int32(0), jnp.int32(n)))[1]

    ties = _count(leaves, offsets, lambda key, _: key == t, chunks)
    return jax.lax.cond(ties > need, bisect, lambda _: jnp.int32(n), None)


@functools.partial(jax.jit, static_argnames="chunks")  # Compiled once per shapes (k is traced).
def _select(leaves: list[jax.Array], k: jax.Array, chunks: tuple[int, ...]) -> list[jax.Array]:
    """Exactly ``k`` True in total over ``leaves`` at the largest scores, ties by global flat order."""
    if sum(leaf.size for leaf in leaves) >= 2**31:
        raise ValueError("top-k over 2^31 or more scores is not supported (int32 flat indices)")
    k = jnp.asarray(k, jnp.int32)
    offsets = [int(o) for o in np.cumsum([0] + [leaf.size for leaf in leaves[:-1]])]
    t = _kth_largest_key(leaves, offsets, k, chunks)
    need = k - _count(leaves, offsets, lambda key, _: key > t, chunks)
    p = _tie_cut(leaves, offsets, t, need, chunks)
    out = []
    for leaf, offset in zip(leaves, offsets):
        # One elementwise pass per leaf, written straight into the output mask.
        # The flat index is made from the leaf's own axes, so a sharded leaf is not reshaped.
        key = keys(leaf)
        index = sum((jax.lax.broadcasted_iota(jnp.int32, leaf.shape, axis)
                     * int(np.prod(leaf.shape[axis + 1:])) for axis in range(leaf.ndim)),
                    jnp.int32(offset))
        out.append((key > t) | ((key == t) & (index < p)))
    return out


def mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool array of ``scores.shape`` with exactly ``k`` True at the largest scores.

    Ties: the lower flat index wins. ``k`` may be traced; it must lie in ``[0, scores.size]``.
    """
    scores = jnp.asarray(scores)
    if scores.size == 0:
        return jnp.zeros(scores.shape, bool)
    return _select([scores], k, _chunks([scores]))[0]


def global_masks(scores: Any, k: int | jax.Array) -> Any:
    """Bool pytree with exactly ``k`` True in total at the largest scores across all leaves.

    All leaves are ranked together; ties go to the earlier leaf (tree order), then the lower flat
    index. Leaves that are ``None`` stay ``None``. ``k`` may be traced.
    """
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    nonempty = [leaf for leaf in leaves if leaf.size]
    selected = iter(_select(nonempty, k, _chunks(nonempty)) if nonempty else [])
    out = [next(selected) if leaf.size else jnp.zeros(leaf.shape, bool) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)

