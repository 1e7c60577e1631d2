"""Exact top-k selection without sorting: per tensor and globally across a pytree.

``mask(scores, k)`` marks exactly ``k`` entries, the ones with the largest scores; among equal scores
the lower flat index wins. ``k`` may be a traced integer (it follows a schedule in dynamic sparse
training), so nothing here needs ``k`` at trace time.

Method (ALGORITHMS.md, "Exact top-k masks"): every score is mapped to an order-preserving unsigned
32-bit key (its float bits, with negative numbers flipped). The k-th largest key ``t`` is found with
two 16-bit histogram passes: a scatter-add of the keys' high 16 bits into 65536 int32 bins (summed
over all leaves for a global top-k) gives the high half of ``t`` as the largest bin with at least
``k`` keys at or above it, by cumulative counts from the top; a second histogram, of the low 16 bits
of the keys in that bin only, gives the low half with the rank left over. The two histograms also
give ``count(key > t)`` and ``count(key == t)``. Keys above ``t`` are all selected; among the keys
equal to ``t`` the first ``k - count(key > t)`` in flat order are selected, up to a cut on the global
flat index found, only when the tie actually has to be broken, by two more histogram passes over the
flat indices of the tied keys (high bits, then low bits within the chosen block). The mask is then
written in one elementwise pass per leaf. That is 2 to 4 reads of the scores before the mask (this
replaced 32 bisection counting passes for ``t``, plus ~log2(N) for a tie); on a sharded array each
pass is a histogram per shard and one all-reduce of the (at most 65537) bins.

Memory: no sort, no index array and no copy of the scores. XLA:CPU does not fuse a comparison into
a reduction or the bin computation into a scatter: a whole-array pass writes the keys and int32 bin
indices of the full size first. So each pass reads a leaf in chunks of ``_CHUNK`` (2^18) scores
through ``lax.dynamic_slice`` (the last partial chunk is a static slice, no padding), scatter-adding
chunk by chunk into the histogram: the keys and bin indices are at most a chunk long (1 MiB each),
and each histogram is 256 KiB. The peak memory beyond the scores is then the bool output mask
(N bytes) plus these few MiB. Measured figures, also for the whole-array passes and for an argsort
(JaxPruner's): benchmarks/RESULTS.md, "Top-k selection" (``benchmarks/topk.py``).

Exception: a leaf that may be split over several devices is counted whole, since dynamic slices of
it would make XLA gather it onto every device; it then has the full-size temporaries above (per
device of its shard). That is a non-replicated sharded array, a tracer whose type carries an
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

_SIGN = np.uint32(0x80000000)
# Elements per chunk: 2^18 float32 = 1 MiB read, 1 MiB int32 bin indices (stay in cache).
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


def _fold(leaves: list[jax.Array], offsets: list[int], fn, init: jax.Array,
          chunks: tuple[int, ...]) -> jax.Array:
    """``fn(acc, keys, flat_index)`` folded over all leaves in chunks, starting from ``init``.

    ``fn`` gets the keys of a run of one leaf's flat scores and their global flat indices (leaf
    offset + index in the leaf) and returns the new accumulator (same shape and type as ``init``). A
    leaf longer than its chunk is read in a loop over chunk-sized dynamic slices plus one static
    tail, so the keys and whatever per-element temporaries XLA:CPU writes (histogram bin
    indices) are at most a chunk long; the scores are never copied. Chunk 0 reads the leaf at once
    (full-size temporaries), for leaves that may be split over devices: dynamic slices of those
    would make XLA gather them onto every device.
    """
    acc = init
    for leaf, offset, chunk in zip(leaves, offsets, chunks):
        flat = leaf.reshape(-1)  # A bitcast: no copy.
        n = flat.size
        chunk = chunk or n

        def part(acc, values, start, offset=offset):
            index = jax.lax.broadcasted_iota(jnp.int32, values.shape, 0) + (start + offset)
            return fn(acc, keys(values), index)

        full, tail = divmod(n, chunk)
        if full > 1:
            def step(j, acc, flat=flat, chunk=chunk, part=part):
                start = j * chunk
                return part(acc, jax.lax.dynamic_slice(flat, (start,), (chunk,)), start)

            acc = jax.lax.fori_loop(0, full, step, acc)
        elif full == 1:
            acc = part(acc, flat[:chunk], 0)
        if tail:
            acc = part(acc, flat[n - tail:], n - tail)
    return acc


def _histogram(leaves, offsets, bins, size: int, chunks, bins_at=None) -> jax.Array:
    """int32 counts of ``bins(keys)`` (or ``bins_at(keys, flat_index)``), int32 in ``[0, size)``, over
    all leaves, in chunks."""
    def add(acc, key, flat_index):
        index = bins(key) if bins_at is None else bins_at(key, flat_index)
        # Indices whose type carries a sharded spec (explicit sharding) need the output sharding:
        # replicated, i.e. a histogram per shard and one all-reduce of the bins.
        sharding = getattr(jax.typeof(index), "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        out = None
        if mesh is not None and not mesh.empty and any(a is not None for a in sharding.spec):
            out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return acc.at[index].add(1, mode="promise_in_bounds", out_sharding=out)

    return _fold(leaves, offsets, add, jnp.zeros(size, jnp.int32), chunks)


def _top_bin(hist: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The largest bin ``b`` with ``count(bin >= b) >= k`` (``size - 1`` when ``k <= 0``), and
    ``count(bin > b)`` and ``count(bin == b)``."""
    size = hist.shape[0]
    at_least = jnp.cumsum(hist[::-1])[::-1]  # at_least[b] = count(bin >= b)
    b = jnp.maximum(jnp.sum(at_least >= k, dtype=jnp.int32) - 1, 0)
    above = jnp.where(b + 1 < size, at_least[jnp.minimum(b + 1, size - 1)], 0)
    return b, above, hist[b]


def _kth_largest_key(leaves, offsets, k, chunks) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The largest key ``t`` with ``count(keys >= t) >= k`` over all leaves, ``count(keys > t)`` and
    ``count(keys == t)``, from two 16-bit histogram passes.

    The first pass counts the keys' high 16 bits (65536 int32 bins, summed over leaves) and picks the
    high half ``b`` of ``t`` from the cumulative counts from the top; the second counts the low 16
    bits of the keys whose high half is ``b`` (the others go to an extra bin, dropped) and picks the
    low half with the rank left, ``k - count(high > b)``.
    """
    high = _histogram(leaves, offsets, lambda key: (key >> 16).astype(jnp.int32), 1 << 16, chunks)
    b, above_b, _ = _top_bin(high, k)

    def low_bin(key):
        in_b = (key >> 16).astype(jnp.int32) == b
        return jnp.where(in_b, (key & 0xFFFF).astype(jnp.int32), 1 << 16)

    low = _histogram(leaves, offsets, low_bin, (1 << 16) + 1, chunks)[:1 << 16]
    c, above_c, ties = _top_bin(low, k - above_b)
    t = (b.astype(jnp.uint32) << 16) | c.astype(jnp.uint32)
    return t, above_b + above_c, ties


def _tie_cut(leaves, offsets, t, need, ties, chunks) -> jax.Array:
    """Global flat index ``p`` such that the keys equal to ``t`` before ``p`` number exactly ``need``.

    ``ties`` is the number of keys equal to ``t``. When it is no more than ``need``, ``p`` is the
    total size (all are kept). Otherwise ``p`` is one past the global flat index (leaf offset +
    index in the leaf) of the ``need``-th key equal to ``t`` (0 when ``need`` is 0), found like
    ``t`` by two histogram passes, over the flat indices of the tied keys: the high bits of the
    index (at most 65536 bins) pick the block holding it, then a histogram of the low bits within
    that block its position. The leaves are never concatenated, so they may be sharded
    differently and no copy of their size is made.
    """
    n = offsets[-1] + leaves[-1].size
    shift = max(0, int(n - 1).bit_length() - 16)  # high bins: ceil(n / 2^shift) <= 65536

    def first_reaching(hist, r):
        """The first bin at which the count from the bottom reaches ``r``, and the count before it."""
        cum = jnp.cumsum(hist)
        b = jnp.minimum(jnp.sum(cum < r, dtype=jnp.int32), hist.shape[0] - 1)
        return b, cum[b] - hist[b]

    def locate(_):
        blocks = ((n - 1) >> shift) + 1
        high = _histogram(leaves, offsets, None, blocks, chunks,
                          lambda key, index: jnp.where(key == t, index >> shift, blocks))
        block, before = first_reaching(high[:blocks], need)
        low = _histogram(leaves, offsets, None, (1 << shift) + 1, chunks,
                         lambda key, index: jnp.where((key == t) & ((index >> shift) == block),
                                                      index & ((1 << shift) - 1), 1 << shift))
        position, _ = first_reaching(low[:1 << shift], need - before)
        return jnp.where(need > 0, (block << shift) + position + 1, 0)

    return jax.lax.cond(ties > need, locate, lambda _: jnp.int32(n), None)


@functools.partial(jax.jit, static_argnames="chunks")  # Compiled once per shapes (k is traced).
def _select(leaves: list[jax.Array], k: jax.Array, chunks: tuple[int, ...]) -> list[jax.Array]:
    """Exactly ``k`` True in total over ``leaves`` at the largest scores, ties by global flat order."""
    if sum(leaf.size for leaf in leaves) >= 2**31:
        raise ValueError("top-k over 2^31 or more scores is not supported (int32 flat indices)")
    k = jnp.asarray(k, jnp.int32)
    offsets = [int(o) for o in np.cumsum([0] + [leaf.size for leaf in leaves[:-1]])]
    t, above, ties = _kth_largest_key(leaves, offsets, k, chunks)
    p = _tie_cut(leaves, offsets, t, k - above, ties, chunks)
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

