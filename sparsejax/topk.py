"""Exact top-k selection without sorting: per tensor and globally across a pytree.

``mask(scores, k)`` marks exactly ``k`` entries, the ones with the largest scores; among equal scores
the lower flat index wins. ``k`` may be a traced integer (it follows a schedule in dynamic sparse
training), so nothing here needs ``k`` at trace time.

Ranking is exact on every input: scores are compared by the exact bit pattern of their own dtype,
never through a float computation. Every score is mapped, with integer operations only, to an
order-preserving unsigned key of its width (``keys``): a float's bits with the sign-flip trick
(negative numbers complemented, positive ones with the sign bit set), a signed integer's bits with
the sign bit flipped, an unsigned integer as is; 8-bit integers and bool are widened to 16-bit
keys. So subnormal floats keep their order (no flush to zero, as XLA:CPU float comparisons do),
float64 and int64/uint64 scores are not rounded, and float16/bfloat16/int16 scores take 16-bit keys.
Special values:

- ``-0.0`` and ``+0.0`` are equal (one key); which of them is kept is decided by flat index.
- ``+inf`` ranks above every finite score, ``-inf`` below every finite score.
- NaN (any sign, any payload) ranks below everything, ``-inf`` included (key 0), so it is selected
  only when ``k`` exceeds the number of non-NaN scores (the count stays exactly ``k``); NaNs among
  themselves go by flat index. NaN is not a score: an eager call (concrete scores) raises
  ``ValueError`` when the scores contain NaN; under ``jit`` (traced scores) it is not checked and
  NaN simply ranks last.

Dtypes: bool, signed and unsigned integers, float16, bfloat16, float32 and float64 (float64 and
64-bit integers exist only with ``jax_enable_x64``; without it JAX itself converts 64-bit inputs to
32 bits when they become JAX arrays, and the ranking is exact on what JAX holds). Other dtypes
(float8 formats, complex) raise ``ValueError``. In ``global_masks`` the leaves may mix floating
dtypes: they are then ranked exactly in the widest of them (float16 with bfloat16: float32), each
leaf's bits widened by integer operations (subnormals of the narrower format are normal numbers of
the wider one); integer and bool leaves must share one dtype with all other leaves (ValueError
otherwise).

Method (ALGORITHMS.md, "Exact top-k masks"): the k-th largest key ``t`` is found 16 bits at a time,
most significant first, with one histogram pass per 16 bits of key (1 pass for 16-bit keys, 2 for
32-bit, 4 for 64-bit). The first pass scatter-adds the keys' top 16 bits into 65536 int32 bins
(summed over all leaves for a global top-k) and takes the top 16 bits of ``t`` as the largest bin
with at least ``k`` keys at or above it, by cumulative counts from the top; each further pass counts
the next 16 bits of only the keys that share the prefix of ``t`` found so far (the others get an
out-of-range index, so their update is dropped) and picks the next digit with the rank left over.
The histograms also give ``count(key > t)`` and ``count(key == t)``. Keys above ``t`` are all
selected; among the keys equal to ``t`` the first ``k - count(key > t)`` in flat order are selected,
up to a cut on the global flat index found, only when the tie actually has to be broken, by one
more histogram pass over the high bits of the tied keys' flat indices and one over the low bits
within the chosen block, which reads only that block. The mask is then written in one elementwise
pass per leaf. For float32 scores that is 2 or 3 reads of the scores before the mask (this
replaced 32 bisection counting passes for ``t``, plus ~log2(N) for a tie); on a sharded array each
pass is a histogram per shard and one all-reduce of the (at most 65536) bins.

Memory: no sort, no index array and no copy of the scores. XLA:CPU does not fuse a comparison into
a reduction or the bin computation into a scatter: a whole-array pass writes the keys and int32 bin
indices of the full size first. So each pass reads a leaf in chunks of ``_CHUNK`` (2^18) scores
through ``lax.dynamic_slice`` (the last partial chunk is a static slice, no padding), scatter-adding
chunk by chunk into the histogram: the keys and bin indices are at most a chunk long (1 MiB each
for 32-bit keys), and each histogram is 256 KiB. The peak memory beyond the scores is then the bool
output mask (N bytes) plus these few MiB. Measured figures, also for the whole-array passes and for
an argsort (JaxPruner's): benchmarks/RESULTS.md, "Top-k selection" (``benchmarks/topk.py``).

Exception: a leaf that may be split over several devices is counted whole, since dynamic slices of
it would make XLA gather it onto every device; it then has the full-size temporaries above (per
device of its shard). That is a non-replicated sharded array, a tracer whose type carries an
explicit sharded spec, and also any tracer of unknown sharding (a caller's ``jit`` without explicit
sharding types) when the process has more than one device.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Elements per chunk: 2^18 float32 = 1 MiB read, 1 MiB int32 bin indices (stay in cache).
_CHUNK = 1 << 18
_DIGIT = 16  # bits of key per histogram pass (65536 bins)

# IEEE binary formats whose bits are ranked: dtype -> (mantissa bits, exponent bits).
_FLOATS = {jnp.dtype(jnp.float16): (10, 5), jnp.dtype(jnp.bfloat16): (7, 8),
           jnp.dtype(jnp.float32): (23, 8), jnp.dtype(jnp.float64): (52, 11)}
_UINT = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


def _key_dtype(dtypes) -> jnp.dtype:
    """The dtype whose keys rank scores of ``dtypes`` together: their common dtype, or for mixed
    floating dtypes the widest (float16 with bfloat16: float32). ValueError if there is none."""
    dtypes = sorted({jnp.dtype(d) for d in dtypes}, key=str)
    for d in dtypes:
        if not (d == jnp.bool_ or jnp.issubdtype(d, jnp.integer) or d in _FLOATS):
            raise ValueError(f"top-k scores of dtype {d} are not supported; expected bool, an "
                             "integer dtype, float16, bfloat16, float32 or float64")
    if len(dtypes) == 1:
        return dtypes[0]
    if not all(d in _FLOATS for d in dtypes):
        raise ValueError(f"top-k scores mix dtypes {', '.join(map(str, dtypes))}; floating dtypes "
                         "may mix, otherwise all leaves must share one dtype")
    if jnp.dtype(jnp.float64) in dtypes:
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def _key_bits(dtype: jnp.dtype) -> int:
    """Width of the keys of ``dtype``: its own width, at least 16."""
    return max(_DIGIT, 8 * jnp.dtype(dtype).itemsize)


def _widen(bits: jax.Array, src: jnp.dtype, dst: jnp.dtype) -> jax.Array:
    """The bits of a ``dst`` float with the value of the ``src`` float with bits ``bits`` (exact:
    ``dst`` holds every ``src`` value), by integer operations only."""
    (ms, es), (md, ed) = _FLOATS[src], _FLOATS[dst]
    ws, wd = 8 * src.itemsize, 8 * dst.itemsize
    u = _UINT[wd]
    b = bits.astype(u)
    sign = (b >> u(ws - 1)) << u(wd - 1)
    e = (b >> u(ms)) & u((1 << es) - 1)
    m = b & u((1 << ms) - 1)
    fraction = m << u(md - ms)
    if es == ed:  # bfloat16 -> float32: same exponents, subnormals stay subnormal.
        return sign | (e << u(md)) | fraction
    rebias = ((1 << (ed - 1)) - 1) - ((1 << (es - 1)) - 1)
    normal = sign | ((e + u(rebias)) << u(md)) | fraction
    special = sign | (u((1 << ed) - 1) << u(md)) | fraction  # inf and NaN (payload kept nonzero)
    # A subnormal m * 2^(1 - bias - ms) is normal in dst: top bit p of m gives the exponent.
    top = u(wd - 1) - jax.lax.clz(m)
    exponent = top + u(rebias + 1 - ms)
    subnormal = sign | (exponent << u(md)) | ((m << (u(md) - top)) & u((1 << md) - 1))
    out = jnp.where(e == u((1 << es) - 1), special, normal)
    out = jnp.where(e == 0, jnp.where(m == 0, sign, subnormal), out)
    return out


def _keys_as(scores: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Order-preserving unsigned keys of ``scores`` ranked as ``dtype`` (``_key_dtype``)."""
    x = jnp.asarray(scores)
    src = jnp.dtype(x.dtype)
    if src == jnp.bool_:
        return x.astype(jnp.uint16)
    if jnp.issubdtype(src, jnp.unsignedinteger):
        return x.astype(_UINT[_key_bits(src)])
    if jnp.issubdtype(src, jnp.signedinteger):
        width = _key_bits(src)
        x = x.astype(jnp.dtype(f"int{width}"))  # int8 -> int16: exact
        u = _UINT[width]
        return jax.lax.bitcast_convert_type(x, u) ^ u(1 << (width - 1))
    width = 8 * src.itemsize
    bits = jax.lax.bitcast_convert_type(x, _UINT[width])
    if src != dtype:
        bits = _widen(bits, src, dtype)
        width = 8 * dtype.itemsize
    mantissa, exponent = _FLOATS[dtype]
    u = _UINT[width]
    sign, infinity = u(1 << (width - 1)), u(((1 << exponent) - 1) << mantissa)
    bits = jnp.where(bits == sign, u(0), bits)  # -0.0 gets the key of 0.0
    key = jnp.where(bits >= sign, ~bits, bits | sign)
    return jnp.where((bits & ~sign) > infinity, u(0), key)  # NaN: key 0, below -inf


def keys(scores: jax.Array) -> jax.Array:
    """Order-preserving unsigned keys of ``scores``, computed from their bits by integer operations.

    ``keys(a) < keys(b)`` exactly when ``a < b`` in ``scores.dtype`` (no rounding, no flush of
    subnormals); ``-0.0`` and ``0.0`` share a key; every NaN has key 0, below ``-inf`` (key >= 1).
    Keys are as wide as the dtype (uint16 for float16/bfloat16/int16, uint32 for float32/int32,
    uint64 for float64/int64/uint64), and uint16 for bool and 8-bit integers.
    """
    scores = jnp.asarray(scores)
    return _keys_as(scores, _key_dtype([scores.dtype]))


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
          chunks: tuple[int, ...], dtype: jnp.dtype | None = None) -> jax.Array:
    """``fn(acc, keys, flat_index)`` folded over all leaves in chunks, starting from ``init``.

    ``fn`` gets the keys (ranking the scores as ``dtype``, by default the leaves' common key dtype)
    of a run of one leaf's flat scores and their global flat indices (leaf
    offset + index in the leaf) and returns the new accumulator (same shape and type as ``init``). A
    leaf longer than its chunk is read in a loop over chunk-sized dynamic slices plus one static
    tail, so the keys and whatever per-element temporaries XLA:CPU writes (histogram bin
    indices) are at most a chunk long; the scores are never copied. Chunk 0 reads the leaf at once
    (full-size temporaries), for leaves that may be split over devices: dynamic slices of those
    would make XLA gather them onto every device.
    """
    acc = init
    dtype = dtype or _key_dtype([leaf.dtype for leaf in leaves])
    for leaf, offset, chunk in zip(leaves, offsets, chunks):
        flat = leaf.reshape(-1)  # A bitcast: no copy.
        n = flat.size
        chunk = chunk or n

        def part(acc, values, start, offset=offset):
            index = jax.lax.broadcasted_iota(jnp.int32, values.shape, 0) + (start + offset)
            return fn(acc, _keys_as(values, dtype), index)

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


def _histogram(leaves, offsets, bins, size: int, chunks, bins_at=None, skip=False, dtype=None
               ) -> jax.Array:
    """int32 counts of ``bins(keys)`` (or ``bins_at(keys, flat_index)``), int32 in ``[0, size)``, over
    all leaves, in chunks; the keys rank the scores as ``dtype`` (default: the leaves' own). With
    ``skip``, an index of ``size`` marks a key that is not counted: its update is dropped.
    (Counting those in an extra bin instead makes every such key add to one memory cell, a serial
    chain that doubled the time of a pass where most keys are skipped.)"""
    def add(acc, key, flat_index):
        index = bins(key) if bins_at is None else bins_at(key, flat_index)
        # Indices whose type carries a sharded spec (explicit sharding) need the output sharding:
        # replicated, i.e. a histogram per shard and one all-reduce of the bins.
        sharding = getattr(jax.typeof(index), "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        out = None
        if mesh is not None and not mesh.empty and any(a is not None for a in sharding.spec):
            out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        mode = "drop" if skip else "promise_in_bounds"
        return acc.at[index].add(1, mode=mode, out_sharding=out)

    return _fold(leaves, offsets, add, jnp.zeros(size, jnp.int32), chunks, dtype)


def _top_bin(hist: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The largest bin ``b`` with ``count(bin >= b) >= k`` (``size - 1`` when ``k <= 0``), and
    ``count(bin > b)`` and ``count(bin == b)``."""
    size = hist.shape[0]
    at_least = jnp.cumsum(hist[::-1], dtype=jnp.int32)[::-1]  # at_least[b] = count(bin >= b)
    b = jnp.maximum(jnp.sum(at_least >= k, dtype=jnp.int32) - 1, 0)
    above = jnp.where(b + 1 < size, at_least[jnp.minimum(b + 1, size - 1)], 0).astype(jnp.int32)
    return b, above, hist[b]


def _kth_largest_key(leaves, offsets, k, chunks
                     ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The largest key ``t`` with ``count(keys >= t) >= k`` over all leaves, ``count(keys > t)``,
    ``count(keys == t)`` and the number of NaN scores, from one 16-bit histogram pass per 16 bits of
    key, most significant first.

    The first pass counts the keys' top 16 bits (65536 int32 bins, summed over leaves) and picks the
    top digit ``b`` of ``t`` from the cumulative counts from the top; each further pass counts the
    next 16 bits of the keys whose higher bits equal the prefix of ``t`` found so far (the others
    get an out-of-range index: not counted) and picks the next digit with the rank left,
    ``k - count(key > t)`` so far. NaN scores have key 0, and no other float key has its top 16
    bits all zero (the smallest, ``-inf``'s, is ``2^m - 1`` for ``m`` mantissa bits, at least
    ``2^16`` for 32/64-bit keys, m = 23 or 52; for 16-bit keys bin 0 is key 0), so bin 0 of the
    first pass counts the NaNs.
    """
    dtype = _key_dtype([leaf.dtype for leaf in leaves])
    width = _key_bits(dtype)
    u = _UINT[width]
    prefix, above, rank = None, jnp.int32(0), k
    for shift in range(width - _DIGIT, -1, -_DIGIT):
        def digit(key, prefix=prefix, shift=shift):
            bits = ((key >> u(shift)) & u((1 << _DIGIT) - 1)).astype(jnp.int32)
            if prefix is None:
                return bits
            return jnp.where((key >> u(shift + _DIGIT)) == prefix, bits, 1 << _DIGIT)

        hist = _histogram(leaves, offsets, digit, 1 << _DIGIT, chunks, skip=prefix is not None)
        if prefix is None:
            nans = hist[0] if dtype in _FLOATS else jnp.int32(0)
        b, above_b, ties = _top_bin(hist, rank)
        above, rank = above + above_b, rank - above_b
        b = b.astype(u)
        prefix = b if prefix is None else (prefix << u(_DIGIT)) | b
    return prefix, above, ties, nans


def _block_ties(leaf, offset: int, start: jax.Array, size: int, t: jax.Array, chunk: int,
                dtype: jnp.dtype) -> jax.Array:
    """int32 counts, per position ``i < size``, of the keys (ranked as ``dtype``) equal to ``t`` at
    global flat index ``start + i`` in ``leaf`` (which begins at global index ``offset``)."""
    def ties_at(key, index):
        inside = (key == t) & (index >= start) & (index - start < size)  # start + size may be 2^31
        return jnp.where(inside, index - start, size)

    if not chunk:  # May be split over devices: a dynamic slice would gather it; read it whole.
        return _histogram([leaf], [offset], None, size, (chunk,), ties_at, skip=True, dtype=dtype)
    flat = leaf.reshape(-1)
    length = min(size, flat.size)
    first = jnp.clip(start - offset, 0, flat.size - length)
    values = jax.lax.dynamic_slice(flat, (first,), (length,))
    index = jax.lax.broadcasted_iota(jnp.int32, (length,), 0) + first + offset
    key = _keys_as(values, dtype)
    return jnp.zeros(size, jnp.int32).at[ties_at(key, index)].add(1, mode="drop")


def _tie_cut(leaves, offsets, t, need, ties, chunks) -> jax.Array:
    """Global flat index ``p`` such that the keys equal to ``t`` before ``p`` number exactly ``need``.

    ``ties`` is the number of keys equal to ``t``. When it is no more than ``need``, ``p`` is the
    total size (all are kept). Otherwise ``p`` is one past the global flat index (leaf offset +
    index in the leaf) of the ``need``-th key equal to ``t`` (0 when ``need`` is 0), found like
    ``t`` from the flat indices of the tied keys: a histogram pass over the high bits of the
    index (at most 65536 bins) picks the block of ``2^shift`` indices holding it, then a histogram
    of the low bits within that block its position. That second histogram reads only the block: a
    slice of at most ``2^shift`` scores of each leaf it overlaps (a leaf that may be split over
    devices is read whole instead, as in ``_fold``). The leaves are never concatenated, so they
    may be sharded differently and no copy of their size is made.
    """
    n = offsets[-1] + leaves[-1].size
    shift = max(0, int(n - 1).bit_length() - 16)  # high bins: ceil(n / 2^shift) <= 65536

    def first_reaching(hist, r):
        """The first bin at which the count from the bottom reaches ``r``, and the count before it."""
        cum = jnp.cumsum(hist, dtype=jnp.int32)
        b = jnp.minimum(jnp.sum(cum < r, dtype=jnp.int32), hist.shape[0] - 1)
        return b, cum[b] - hist[b]

    def locate(_):
        blocks = ((n - 1) >> shift) + 1
        high = _histogram(leaves, offsets, None, blocks, chunks,
                          lambda key, index: jnp.where(key == t, index >> shift, blocks), skip=True)
        block, before = first_reaching(high, need)
        dtype = _key_dtype([leaf.dtype for leaf in leaves])
        low = sum(_block_ties(leaf, offset, block << shift, 1 << shift, t, chunk, dtype)
                  for leaf, offset, chunk in zip(leaves, offsets, chunks))
        position, _ = first_reaching(low, need - before)
        return jnp.where(need > 0, (block << shift) + position + 1, 0)

    return jax.lax.cond(ties > need, locate, lambda _: jnp.int32(n), None)


@functools.partial(jax.jit, static_argnames="chunks")  # Compiled once per shapes (k is traced).
def _select(leaves: list[jax.Array], k: jax.Array, chunks: tuple[int, ...]
            ) -> tuple[list[jax.Array], jax.Array]:
    """Exactly ``k`` True in total over ``leaves`` at the largest scores, ties by global flat order;
    and the number of NaN scores."""
    if sum(leaf.size for leaf in leaves) >= 2**31:
        raise ValueError("top-k over 2^31 or more scores is not supported (int32 flat indices)")
    k = jnp.asarray(k, jnp.int32)
    offsets = [int(o) for o in np.cumsum([0] + [leaf.size for leaf in leaves[:-1]])]
    dtype = _key_dtype([leaf.dtype for leaf in leaves])
    t, above, ties, nans = _kth_largest_key(leaves, offsets, k, chunks)
    p = _tie_cut(leaves, offsets, t, k - above, ties, chunks)
    out = []
    for leaf, offset in zip(leaves, offsets):
        # One elementwise pass per leaf, written straight into the output mask.
        # The flat index is made from the leaf's own axes, so a sharded leaf is not reshaped.
        key = _keys_as(leaf, dtype)
        index = sum((jax.lax.broadcasted_iota(jnp.int32, leaf.shape, axis)
                     * int(np.prod(leaf.shape[axis + 1:])) for axis in range(leaf.ndim)),
                    jnp.int32(offset))
        out.append((key > t) | ((key == t) & (index < p)))
    return out, nans


def _reject_nan(nans: jax.Array, leaves: list[jax.Array], names: list[str] | None = None) -> None:
    """ValueError if the scores are floats, the NaN count is concrete (an eager call) and not 0."""
    if (_key_dtype([leaf.dtype for leaf in leaves]) not in _FLOATS
            or isinstance(nans, jax.core.Tracer) or not int(nans)):
        return
    where = ""
    if names is not None:
        where = " at " + next(name for name, leaf in zip(names, leaves)
                              if bool(jnp.isnan(leaf).any()))
    raise ValueError(f"top-k scores{where} contain NaN ({int(nans)} in all); NaN is not a score "
                     "(under jit it is not checked and ranks below -inf)")


def mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool array of ``scores.shape`` with exactly ``k`` True at the largest scores.

    Ties: the lower flat index wins. ``k`` may be traced; it must lie in ``[0, scores.size]``.
    Ranked by the exact value in ``scores.dtype`` (module docstring); NaN ranks last, and an eager
    call with NaN scores raises ``ValueError``.
    """
    scores = jnp.asarray(scores)
    _key_dtype([scores.dtype])
    if scores.size == 0:
        return jnp.zeros(scores.shape, bool)
    (selected,), nans = _select([scores], k, _chunks([scores]))
    _reject_nan(nans, [scores])
    return selected


def global_masks(scores: Any, k: int | jax.Array) -> Any:
    """Bool pytree with exactly ``k`` True in total at the largest scores across all leaves.

    All leaves are ranked together; ties go to the earlier leaf (tree order), then the lower flat
    index. Leaves that are ``None`` stay ``None``. ``k`` may be traced. Leaves may mix floating
    dtypes (ranked exactly in the widest); otherwise they must share one dtype (``ValueError``).
    NaN ranks last, and an eager call with NaN scores raises ``ValueError`` naming the leaf.
    """
    named, treedef = jax.tree_util.tree_flatten_with_path(scores)
    leaves = [jnp.asarray(leaf) for _, leaf in named]
    names = [jax.tree_util.keystr(path) for path, _ in named]
    if leaves:
        _key_dtype([leaf.dtype for leaf in leaves])
    named = [(name, leaf) for name, leaf in zip(names, leaves) if leaf.size]
    selected = iter([])
    if named:
        nonempty = [leaf for _, leaf in named]
        out, nans = _select(nonempty, k, _chunks(nonempty))
        _reject_nan(nans, nonempty, [name for name, _ in named])
        selected = iter(out)
    out = [next(selected) if leaf.size else jnp.zeros(leaf.shape, bool) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)
