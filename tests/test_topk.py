"""Exact top-k (sparsejax.topk) against numpy stable-argsort references on exact keys: counts, ties,
traced k, sharding, every dtype, subnormals, infinities, NaN."""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sparsejax import topk

# Odd shapes; a fixed pool so that each compiles once for the whole module (compiling is ~0.7 s).
SHAPES = [(3, 5, 7), (1,), (13, 1, 2), (2, 9), (5, 1, 3), (1, 1, 1)]
SPECIAL = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 0.5, np.float32(3.4e38)]

# topk compiles its selection once per shapes (k traced) also when called outside jit; the explicit
# jit versions check that it also works inside a caller's jit.
jit_mask = jax.jit(topk.mask)
jit_keys = jax.jit(topk.keys)
jit_global = jax.jit(topk.global_masks)
PROPERTY = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


FLOATS = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32),
          np.dtype(np.float64))


def as_float64(a) -> np.ndarray:
    """Exact float64 values (NaN stays NaN; numpy warns when it casts a bfloat16 NaN)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(a).astype(np.float64)


def exact_keys(scores) -> np.ndarray:
    """Keys by numpy from the bit patterns, as uint64: sign-flip for floats (-0.0 as 0.0, NaN 0,
    below -inf), sign bit flipped for signed integers (of at least 16 bits).
    ``test_numpy_keys_follow_the_values`` checks them against numpy's float comparisons."""
    a = np.asarray(scores).reshape(-1)
    width = max(16, 8 * a.dtype.itemsize)
    if a.dtype in FLOATS:
        bits = a.view(f"uint{width}").astype(np.uint64)
        sign, full = np.uint64(1 << (width - 1)), np.uint64((1 << width) - 1)
        bits = np.where(bits == sign, np.uint64(0), bits)
        key = np.where(bits >= sign, ~bits & full, bits | sign)
        return np.where(np.isnan(as_float64(a)), np.uint64(0), key)
    if a.dtype == np.bool_ or a.dtype.kind == "u":
        return a.astype(np.uint64)
    return a.astype(np.int64).view(np.uint64) + np.uint64(1 << (width - 1))  # wraps: x + 2^(w-1)


def reference(scores, k: int) -> np.ndarray:
    """Top-k by numpy: the first k of a stable argsort of the exact keys, descending (``~key`` is
    ``-key`` for unsigned keys): ties to the lower flat index, NaN last."""
    order = np.argsort(~exact_keys(scores), kind="stable")
    out = np.zeros(np.size(scores), bool)
    out[order[:k]] = True
    return out.reshape(np.shape(scores))


def value_reference(values, k: int) -> np.ndarray:
    """Top-k by value (an oracle independent of the bits): numbers compared exactly as float64
    (which holds every float16/bfloat16/float32/int32 value), NaN last, ties to the lower index."""
    v = np.concatenate([as_float64(x).reshape(-1) for x in values])
    nan = np.isnan(v)
    order = np.lexsort((np.arange(v.size), -np.where(nan, 0.0, v), nan))
    out = np.zeros(v.size, bool)
    out[order[:k]] = True
    return out


def scores_for(shape):
    """float32 scores with many duplicates: arbitrary floats, small integers, or special values."""
    elements = st.one_of(
        st.floats(width=32, allow_nan=False),
        st.integers(-2, 2).map(float),
        st.sampled_from(SPECIAL),
    )
    return hnp.arrays(np.float32, shape, elements=elements)


@st.composite
def scores_and_k(draw):
    shape = draw(st.sampled_from(SHAPES))
    scores = draw(scores_for(shape))
    return scores, draw(st.integers(0, scores.size))


@PROPERTY
@given(scores_and_k())
def test_mask_matches_lexsort_reference(case):
    scores, k = case
    got = np.asarray(topk.mask(scores, k))
    assert got.shape == scores.shape and got.dtype == np.bool_
    assert int(got.sum()) == k
    np.testing.assert_array_equal(got, reference(scores, k))


@PROPERTY
@given(scores_for((64,)))
def test_keys_preserve_float_order(values):
    v = values  # numpy compares subnormals exactly, -0.0 == 0.0
    keys = np.asarray(jit_keys(values))
    np.testing.assert_array_equal(keys[:, None] < keys[None, :], v[:, None] < v[None, :])
    np.testing.assert_array_equal(keys[:, None] == keys[None, :], v[:, None] == v[None, :])


@pytest.mark.parametrize("shape", [(3, 5, 7), (1,), (13, 1, 2)])
def test_all_equal_scores_keep_the_first_k_flat_indices(shape):
    n = int(np.prod(shape))
    for k in sorted({0, 1, n // 2, n - 1, n}):
        got = np.asarray(topk.mask(jnp.full(shape, 0.25), k)).reshape(-1)
        np.testing.assert_array_equal(got, np.arange(n) < k)


def test_negative_zero_ties_with_zero_and_infinities_rank_at_the_ends():
    scores = np.array([-0.0, 0.0, -np.inf, np.inf, -0.0, 1.0, -1.0, np.inf, -np.inf], np.float32)
    expected_order = [3, 7, 5, 0, 1, 4, 6, 2, 8]  # inf, inf, 1, (-0, 0, -0 by index), -1, -inf, -inf
    for k in range(scores.size + 1):
        want = np.zeros(scores.size, bool)
        want[expected_order[:k]] = True
        np.testing.assert_array_equal(np.asarray(jit_mask(scores, k)), want, err_msg=f"k={k}")


def test_k_zero_and_k_full():
    scores = np.array([[np.inf, -np.inf, 0.0], [3.4e38, 2.0, -3.0]], np.float32)
    assert not np.asarray(jit_mask(scores, 0)).any()
    assert np.asarray(jit_mask(scores, scores.size)).all()
    assert np.asarray(topk.mask(jnp.array([-np.inf]), 1)).all()
    assert not np.asarray(topk.mask(jnp.array([np.inf]), 0)).any()


def test_empty_scores_give_an_empty_mask():
    got = topk.mask(jnp.zeros((0, 3)), 0)
    assert got.shape == (0, 3) and got.dtype == jnp.bool_


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bfloat16, jnp.float16])
def test_non_float32_scores_rank_by_value(dtype):
    values = np.array([3, -1, 3, 0, 7, -1, 2, 7, 0, 3, 5], np.float32)
    for k in [0, 2, 5, 11]:
        got = np.asarray(topk.mask(jnp.asarray(values, dtype), k))
        np.testing.assert_array_equal(got, reference(values, k))


def test_traced_k_compiles_once():
    traces = []

    @jax.jit
    def select(scores, k):
        traces.append(k)
        return topk.mask(scores, k)

    scores = jnp.asarray(np.random.default_rng(0).integers(0, 4, (3, 5, 7)), jnp.float32)
    for k in [0, 1, 17, 52, 105]:
        got = np.asarray(select(scores, k))
        assert int(got.sum()) == k
        np.testing.assert_array_equal(got, reference(np.asarray(scores), k))
    assert len(traces) == 1 and isinstance(traces[0], jax.core.Tracer)


# ---------------------------------------------------------------- global top-k


def global_reference(tree, k: int):
    """numpy on the concatenation in tree (flatten) order: ties go to the earlier leaf, lower index."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    flat = reference(np.concatenate([np.asarray(x).reshape(-1) for x in leaves]), k)
    out, start = [], 0
    for x in leaves:
        out.append(flat[start:start + np.size(x)].reshape(np.shape(x)))
        start += np.size(x)
    return jax.tree_util.tree_unflatten(treedef, out)


TREE_LAYOUTS = [[(3, 5, 7)], [(1,), (13, 1, 2)], [(2, 9), (1,), (3, 5, 7)], [(1, 1, 1), (1, 1, 1), (5, 1, 3)]]


@st.composite
def trees_and_k(draw):
    shapes = draw(st.sampled_from(TREE_LAYOUTS))
    tree = {f"layer{i}": {"kernel": draw(scores_for(s))} for i, s in enumerate(shapes)}
    total = sum(int(np.prod(s)) for s in shapes)
    return tree, draw(st.integers(0, total))


@PROPERTY
@given(trees_and_k())
def test_global_masks_match_reference_on_the_concatenation(case):
    tree, k = case
    got = topk.global_masks(tree, k)
    assert jax.tree.structure(got) == jax.tree.structure(tree)
    assert sum(int(np.sum(m)) for m in jax.tree.leaves(got)) == k
    chex.assert_trees_all_equal(got, global_reference(tree, k))


def test_global_ties_go_to_the_earlier_leaf_then_the_lower_index():
    # Key order, not insertion order, is the tree order of a dict: "a" comes before "b".
    tree = {"b": jnp.ones((2, 3)), "a": jnp.ones((4,))}
    got = topk.global_masks(tree, 6)
    np.testing.assert_array_equal(np.asarray(got["a"]), [True] * 4)
    np.testing.assert_array_equal(np.asarray(got["b"]), [[True, True, False], [False] * 3])


def test_global_differs_from_per_tensor():
    tree = {"a": jnp.arange(6.0) + 100, "b": jnp.arange(6.0)}
    got = topk.global_masks(tree, 6)
    assert np.asarray(got["a"]).all() and not np.asarray(got["b"]).any()
    per_tensor = {name: topk.mask(s, 3) for name, s in tree.items()}
    np.testing.assert_array_equal(np.asarray(per_tensor["b"]), [False] * 3 + [True] * 3)


def test_global_keeps_none_and_empty_leaves():
    tree = {"a": jnp.array([1.0, 5.0, 3.0]), "bias": None, "empty": jnp.zeros((0,)),
            "c": jnp.array([[4.0], [2.0]])}
    got = topk.global_masks(tree, 2)
    assert got["bias"] is None and got["empty"].shape == (0,)
    np.testing.assert_array_equal(np.asarray(got["a"]), [False, True, False])
    np.testing.assert_array_equal(np.asarray(got["c"]), [[True], [False]])
    assert topk.global_masks({"x": jnp.zeros((0,))}, 0)["x"].shape == (0,)


def test_global_traced_k_compiles_once():
    traces = []

    @jax.jit
    def select(tree, k):
        traces.append(k)
        return topk.global_masks(tree, k)

    rng = np.random.default_rng(1)
    tree = {"a": rng.integers(0, 3, (5, 3)).astype(np.float32), "b": rng.integers(0, 3, (7,)).astype(np.float32)}
    for k in [0, 4, 11, 22]:
        chex.assert_trees_all_equal(select(tree, k), global_reference(tree, k))
    assert len(traces) == 1


# ---------------------------------------------------------------- 8 simulated devices


def test_sharded_scores_on_8_devices_give_the_single_device_mask():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    rng = np.random.default_rng(2)
    # Coarse values: many ties that straddle the shard boundaries.
    scores = np.round(rng.normal(size=(40, 7)) * 2).astype(np.float32)
    sharded = jax.device_put(scores, NamedSharding(mesh, P("data")))
    assert len(sharded.sharding.device_set) == 8
    single = jax.device_put(scores, jax.devices()[0])
    for k in [0, 1, 93, 140, 279, 280]:
        got = jit_mask(sharded, k)
        want = jit_mask(single, k)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_array_equal(np.asarray(got), reference(scores, k))


def test_sharded_global_masks_on_8_devices_give_the_single_device_masks():
    mesh = jax.make_mesh((8,), ("data",))
    rng = np.random.default_rng(3)
    tree = {"a": np.round(rng.normal(size=(16, 3))).astype(np.float32),
            "b": np.round(rng.normal(size=(24,))).astype(np.float32),
            "c": np.round(rng.normal(size=(3,))).astype(np.float32)}
    specs = {"a": P("data"), "b": P("data"), "c": P()}
    sharded = {n: jax.device_put(x, NamedSharding(mesh, specs[n])) for n, x in tree.items()}
    for k in [0, 5, 37, 75]:
        got = jit_global(sharded, k)
        chex.assert_trees_all_equal(got, jit_global(jax.device_put(tree, jax.devices()[0]), k),
                                    global_reference(tree, k))


# ---------------------------------------------------------------- chunked counting


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_chunked_counting_gives_the_reference_masks(chunk):
    # Leaves shorter than, equal to, and several chunks long with a ragged tail; many ties.
    rng = np.random.default_rng(4)
    shapes = [(3, 5, 7), (16,), (2,), (1, 1)]
    tree = [rng.integers(-2, 3, s).astype(np.float32) for s in shapes]
    n = sum(x.size for x in tree)
    select = jax.jit(lambda leaves, k: topk._select(leaves, k, chunks=(chunk,) * len(shapes)))
    for k in sorted({0, 1, 40, n // 2, n - 1, n}):
        got, nans = select([jnp.asarray(x) for x in tree], k)
        assert int(nans) == 0
        assert sum(int(np.sum(g)) for g in got) == k, f"chunk={chunk} k={k}"
        chex.assert_trees_all_equal(got, global_reference(tree, k))


def test_tie_cut_blocks_that_straddle_leaf_ends_match_the_reference():
    # Over 2^18 scores the tie cut reads blocks of 2^3 flat indices, slicing each leaf a block
    # overlaps; leaf sizes that are not multiples of 8 put leaf ends inside blocks. Scores from
    # {-2, ..., 2} tie everywhere; float16 with bfloat16 leaves are ranked as float32.
    rng = np.random.default_rng(7)
    shapes = [(3, 5, 7), (150001,), (3,), (333, 401), (7,)]
    tree = [jnp.asarray(rng.integers(-2, 3, s), jnp.bfloat16 if i == 3 else jnp.float16)
            for i, s in enumerate(shapes)]
    assert (sum(x.size for x in tree) - 1).bit_length() - 16 == 3
    twos = np.cumsum([int(np.sum(np.asarray(x, np.float32) == 2)) for x in tree])
    for k in sorted({0, 1, *twos, *(twos - 1), *(twos + 1), 200_000}):
        got = topk.global_masks(tree, int(k))
        assert sum(int(np.sum(g)) for g in got) == k, f"k={k}"
        chex.assert_trees_all_equal(got, global_reference([np.asarray(x, np.float32) for x in tree],
                                                          int(k)))


def test_tie_cut_in_the_last_block_below_2_31_scores():
    # A leaf placed at the end of a 2^31 - 1 score tree (offsets only; nothing that big is made):
    # the last tie-cut block starts at 2^31 - 2^15, and its end must not wrap around int32.
    leaf = jnp.asarray([0, 1, 0, 1, 1, 0, 1], jnp.float32)  # ties (1.0) at 1, 3, 4, 6
    offset, t = 2**31 - 8, topk.keys(jnp.float32(1.0))
    for chunk in (topk._CHUNK, 0):
        cut = jax.jit(lambda need, c=chunk: topk._tie_cut([leaf], [offset], t, need,
                                                          jnp.int32(4), (c,)))
        assert [int(cut(jnp.int32(need))) - offset for need in (1, 2, 3)] == [2, 4, 5], chunk


def test_chunked_counting_keeps_temporaries_chunk_sized():
    # XLA's static estimate (temporaries + output) matched the measured peak before chunking
    # (benchmarks/RESULTS.md); whole-array counting needs ~3x the scores here.
    n = 1 << 22
    scores = jax.ShapeDtypeStruct((n,), jnp.float32)
    analysis = topk._select.lower([scores], 7, chunks=(topk._CHUNK,)).compile().memory_analysis()
    # The bool mask, the int32 NaN count and the output tuple's table of pointers.
    assert n + 4 <= analysis.output_size_in_bytes <= n + 4 + 64
    assert analysis.temp_size_in_bytes <= 4 * 4 * topk._CHUNK


def test_leaves_that_may_be_split_over_devices_are_counted_whole():
    mesh = jax.make_mesh((8,), ("data",))
    x = np.zeros((16, 3), np.float32)
    assert topk._chunks([jax.device_put(x, jax.devices()[0])]) == (topk._CHUNK,)
    assert topk._chunks([jax.device_put(x, NamedSharding(mesh, P()))]) == (topk._CHUNK,)
    assert topk._chunks([jax.device_put(x, NamedSharding(mesh, P("data")))]) == (0,)
    seen = []
    jax.jit(lambda a: seen.append(topk._chunks([a])))(jax.device_put(x, jax.devices()[0]))
    assert seen == [(0,)]  # a tracer of unknown sharding with 8 devices


def test_chunked_counting_of_a_sharded_leaf_is_still_exact():
    # Forced chunks on a leaf split over 8 devices: the counting passes still find the exact k-th
    # key and its counts. (The tie cut's block read is a slice of 2^shift scores, which a split
    # leaf never gets: ``_chunks`` gives it chunk 0.)
    mesh = jax.make_mesh((8,), ("data",))
    scores = np.round(np.random.default_rng(5).normal(size=(40, 7)) * 2).astype(np.float32)
    sharded = jax.device_put(scores, NamedSharding(mesh, P("data")))
    keys = np.sort(exact_keys(scores).reshape(-1))[::-1]
    count = jax.jit(lambda leaf, k: topk._kth_largest_key([leaf], [0], k, (16,))[:3])
    for k in [1, 93, 280]:
        t, above, ties = map(int, count(sharded, k))
        assert t == keys[k - 1]
        assert (above, ties) == (int(np.sum(keys > t)), int(np.sum(keys == t)))


# ---------------------------------------------------------------- exact on every input (issue 14)

# The dtypes of the oracle tests; float64 exists only with x64 (enabled inside the tests).
DTYPES = ["float16", "bfloat16", "float32", "float64", "int32"]
SPECIAL_BITS = {  # bit patterns: ±0, ±inf, ±NaN (quiet and with a payload), extreme subnormals
    16: [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x0001, 0x8001, 0x03FF, 0x0400],
    32: [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 1, 0x80000001,
         0x007FFFFF, 0x00800000],
    64: [0, 1 << 63, 0x7FF0 << 48, 0xFFF0 << 48, 0x7FF8 << 48, 0xFFF8 << 48, (0x7FF0 << 48) | 1, 1,
         (1 << 63) | 1, (1 << 52) - 1, 1 << 52],
}
ORACLE_SIZE = 29  # one length for the oracle tests: one compile per dtype
BFLOAT16_SPECIAL_BITS = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0x0001, 0x8001,
                         0x007F, 0x0080]


def x64_if(dtype: str):
    """The x64 context for 64-bit dtypes (jax 0.10: ``jax.enable_x64`` is a context manager)."""
    return jax.enable_x64(dtype.endswith("64"))


def from_bits(bits, dtype: str) -> np.ndarray:
    """numpy array of ``dtype`` with the given bit patterns."""
    dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    return np.asarray(bits, f"uint{8 * dtype.itemsize}").view(dtype)


def special_values(dtype: str) -> np.ndarray:
    """Specials of ``dtype``: ±0, ±inf, ±NaN, extreme subnormals; for int32 its ends and 2^24 ± 1."""
    if dtype == "int32":
        return np.array([0, 1, -1, 2**31 - 1, -2**31, 2**24, 2**24 + 1, -2**24 - 1], np.int32)
    width = 8 * np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).itemsize
    return from_bits(BFLOAT16_SPECIAL_BITS if dtype == "bfloat16" else SPECIAL_BITS[width], dtype)


def test_numpy_keys_follow_the_values():
    """The oracle's keys against numpy's exact float comparisons, on every 16-bit pattern (float16,
    bfloat16) and on float32/float64 specials: same order and equality, NaN alone at key 0."""
    patterns = [from_bits(np.arange(1 << 16), "float16"), from_bits(np.arange(1 << 16), "bfloat16")]
    for dtype in ["float32", "float64"]:
        rng = np.random.default_rng(0)
        width = np.dtype(dtype).itemsize * 8
        bits = rng.integers(0, (1 << width) - 1, 4000, dtype=np.uint64, endpoint=True)
        tiny = np.arange(1, 200, dtype=np.uint64)  # subnormals of both signs, from the smallest
        bits = np.concatenate([SPECIAL_BITS[width], bits, tiny, tiny | np.uint64(1 << (width - 1))])
        patterns.append(from_bits(bits.astype(f"uint{width}"), dtype))
    for values in patterns:
        key = exact_keys(values)
        v = as_float64(values)
        nan = np.isnan(v)
        assert (key[nan] == 0).all() and (key[~nan] > 0).all()
        order = np.argsort(v[~nan], kind="stable")
        sorted_keys, sorted_values = key[~nan][order], v[~nan][order]
        assert (np.diff(sorted_keys.astype(object)) >= 0).all()
        np.testing.assert_array_equal(sorted_keys[1:] == sorted_keys[:-1],
                                      sorted_values[1:] == sorted_values[:-1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_keys_are_exact_on_every_bit_pattern(dtype):
    values = from_bits(np.arange(1 << 16), dtype)
    got = np.asarray(jit_keys(values))
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got.astype(np.uint64), exact_keys(values))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_wider_keys_are_the_exact_keys(dtype):
    with x64_if(dtype):
        values = special_values(dtype)
        got = np.asarray(topk.keys(values))
        assert got.dtype == np.dtype(f"uint{8 * values.dtype.itemsize}")
        np.testing.assert_array_equal(got.astype(np.uint64), exact_keys(values))


def test_subnormals_are_not_flushed_to_zero():
    scores = np.array([0, 1e-45, 1e-40, 1e-38, 2e-38], np.float32)  # all but 0 subnormal or tiny
    for select in (topk.mask, jit_mask):
        got = np.asarray(select(scores, 3))
        np.testing.assert_array_equal(np.flatnonzero(got), [2, 3, 4])
    np.testing.assert_array_equal(np.asarray(jit_mask(-scores, 2)), [1, 1, 0, 0, 0])


def test_float64_and_large_integers_are_not_rounded_through_float32():
    with jax.enable_x64(True):
        scores = jnp.asarray([1.0, 1.0 + 1e-12, 1.0, 1.0 - 1e-12], jnp.float64)
        assert scores.dtype == jnp.float64
        for select in (topk.mask, jit_mask):
            np.testing.assert_array_equal(np.asarray(select(scores, 1)), [0, 1, 0, 0])
            np.testing.assert_array_equal(np.asarray(select(scores, 3)), [1, 1, 1, 0])
        big = jnp.asarray([2**53, 2**53 + 1, -2**62, 2**62 + 1, 2**62], jnp.int64)
        np.testing.assert_array_equal(np.asarray(jit_mask(big, 2)), [0, 0, 0, 1, 1])
        np.testing.assert_array_equal(np.asarray(jit_mask(big, 3)), [0, 1, 0, 1, 1])
    # int32 above 2^24 is not a float32 either.
    ints = np.array([2**24, 2**24 + 1, 2**31 - 2, 2**31 - 1], np.int32)
    np.testing.assert_array_equal(np.asarray(jit_mask(ints, 1)), [0, 0, 0, 1])
    np.testing.assert_array_equal(np.asarray(jit_mask(ints, 3)), [0, 1, 1, 1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_nan_ranks_last_whatever_its_sign_and_infinities_at_the_ends(dtype):
    # 0: +NaN, 1: -NaN, 2: +inf, 3: -inf, 4: 1, 5: -0.0, 6: 0.0, 7: -1, 8: NaN with a payload
    with x64_if(dtype):
        w = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}[dtype]
        nan = {16: 0xFE00 if dtype == "float16" else 0xFFC0, 32: 0xFFC00000, 64: 0xFFF8 << 48}[w]
        scores = np.array([np.nan, np.nan, np.inf, -np.inf, 1.0, -0.0, 0.0, -1.0, np.nan],
                          from_bits([0], dtype).dtype)
        bits = scores.view(f"uint{w}").copy()
        bits[1] = nan  # the sign bit set
        bits[8] = bits[8] | 1
        scores = bits.view(scores.dtype)
        assert np.signbit(scores[1]) and not np.signbit(scores[0])
        expected_order = [2, 4, 5, 6, 7, 3, 0, 1, 8]  # inf, 1, -0 and 0 by index, -1, -inf, NaNs
        for k in range(scores.size + 1):
            want = np.zeros(scores.size, bool)
            want[expected_order[:k]] = True
            np.testing.assert_array_equal(np.asarray(jit_mask(scores, k)), want, err_msg=f"k={k}")
            np.testing.assert_array_equal(want, reference(scores, k))


def test_nan_in_an_eager_call_raises_one_line_and_under_jit_ranks_last():
    scores = np.array([1.0, np.nan, -np.inf], np.float32)
    with pytest.raises(ValueError, match="contain NaN") as raised:
        topk.mask(scores, 1)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match=r"at \['b'\]\['kernel'\] contain NaN"):
        topk.global_masks({"a": np.ones(3, np.float32), "b": {"kernel": scores}}, 2)
    np.testing.assert_array_equal(np.asarray(jit_mask(scores, 2)), [True, False, True])
    got = jit_global({"a": np.ones(3, np.float32), "b": {"kernel": scores}}, 5)
    np.testing.assert_array_equal(np.asarray(got["b"]["kernel"]), [True, False, True])
    # Integer scores have no NaN: the eager path does not raise.
    assert int(np.asarray(topk.mask(np.array([3, 1], np.int32), 1)).sum()) == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_match_the_argsort_oracle_for_every_k(dtype):
    with x64_if(dtype):
        values = special_values(dtype)
        scores = np.resize(np.concatenate([values, values[::-1]]), ORACLE_SIZE)  # ties
        nan = np.isnan(as_float64(scores))
        for k in range(scores.size + 1):
            want = reference(scores, k)
            np.testing.assert_array_equal(want, value_reference([scores], k))
            np.testing.assert_array_equal(np.asarray(jit_mask(scores, k)), want, err_msg=f"k={k}")
            if nan.any():
                with pytest.raises(ValueError, match="NaN"):
                    topk.mask(scores, k)
            else:
                np.testing.assert_array_equal(np.asarray(topk.mask(scores, k)), want)
        if nan.any():  # the eager call with the NaNs made -inf (same shape: no new compile)
            clean = scores.copy()
            clean[nan] = -np.inf
            for k in range(scores.size + 1):
                np.testing.assert_array_equal(np.asarray(topk.mask(clean, k)), reference(clean, k))


@st.composite
def dtype_scores_and_k(draw):
    """(dtype, scores, k): arbitrary bit patterns, special values and a few small numbers (ties)."""
    dtype = draw(st.sampled_from(DTYPES))
    n = ORACLE_SIZE
    if dtype == "int32":
        elements = st.one_of(st.integers(-2**31, 2**31 - 1), st.integers(-2, 2),
                             st.sampled_from(special_values(dtype).tolist()))
        scores = np.array(draw(st.lists(elements, min_size=n, max_size=n)), np.int32)
    else:
        width = 8 * from_bits([0], dtype).dtype.itemsize
        small = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]).astype(from_bits([0], dtype).dtype)
        small_bits = small.view(f"uint{width}").tolist()
        specials = special_values(dtype).view(f"uint{width}").tolist()
        elements = st.one_of(st.integers(0, (1 << width) - 1), st.sampled_from(specials),
                             st.sampled_from(small_bits))
        scores = from_bits(draw(st.lists(elements, min_size=n, max_size=n)), dtype)
    return dtype, scores, draw(st.integers(0, n))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype_scores_and_k())
def test_random_bits_match_the_argsort_oracle_with_static_and_traced_k(case):
    dtype, scores, k = case
    with x64_if(dtype):
        want = reference(scores, k)
        np.testing.assert_array_equal(want, value_reference([scores], k))
        np.testing.assert_array_equal(np.asarray(jit_mask(scores, k)), want)  # k traced
        if np.isnan(as_float64(scores)).any():
            with pytest.raises(ValueError, match="NaN"):
                topk.mask(scores, k)
        else:
            np.testing.assert_array_equal(np.asarray(topk.mask(scores, k)), want)  # k a Python int


def widen(bits: np.ndarray, src: np.dtype, dst) -> np.ndarray:
    return np.asarray(jax.jit(topk._widen, static_argnums=(1, 2))(bits, src, jnp.dtype(dst)))


def test_widening_is_exact_on_every_16_bit_pattern_and_float32_specials():
    """topk._widen (mixed-dtype global top-k) against numpy's exact conversions; NaN stays NaN."""
    rng = np.random.default_rng(1)
    bits32 = np.concatenate([np.array(SPECIAL_BITS[32], np.uint32),
                             rng.integers(0, 1 << 32, 5000, dtype=np.uint64).astype(np.uint32),
                             np.arange(1, 1 << 12, dtype=np.uint32)])  # the smallest subnormals
    cases = [("float16", np.float32), ("bfloat16", np.float32), ("float16", np.float64),
             ("bfloat16", np.float64), ("float32", np.float64)]
    for src, dst in cases:
        with x64_if(dst.__name__):
            bits = bits32 if src == "float32" else np.arange(1 << 16, dtype=np.uint16)
            values = from_bits(bits, src)
            got = widen(bits, values.dtype, dst)
            nan = np.isnan(as_float64(values))
            assert np.isnan(got.view(dst)[nan]).all(), (src, dst)
            np.testing.assert_array_equal(got[~nan], values[~nan].astype(dst).view(got.dtype),
                                          err_msg=f"{src} -> {dst.__name__}")


def test_global_masks_rank_mixed_floating_dtypes_exactly():
    tree = {"a": np.array([1e-45, 0.0, -0.0, 3.0, 2**-24], np.float32),
            "b": np.array([2**-24, 6e-8, 1.0, -np.inf, 3.0], np.float16),  # 2^-24: a subnormal
            "c": np.array([1e-40, 3.0, 2**-24, np.inf], ml_dtypes.bfloat16)}
    leaves = jax.tree.leaves(tree)
    n = sum(x.size for x in leaves)
    for k in range(n + 1):
        got = jit_global(tree, k)
        want = value_reference(leaves, k)
        np.testing.assert_array_equal(np.concatenate([np.asarray(g) for g in jax.tree.leaves(got)]),
                                      want, err_msg=f"k={k}")
    with jax.enable_x64(True):
        tree = {"a": np.array([1e-45, 0.0, 1.0, np.inf], np.float32),
                "b": np.array([1e-46, 1.4e-45, 1.0 + 1e-12, -1e-320], np.float64),
                "c": np.array([6e-8, -0.0, 1.0], np.float16)}
        leaves = jax.tree.leaves(tree)
        for k in range(sum(x.size for x in leaves) + 1):
            got = topk.global_masks(tree, k)
            np.testing.assert_array_equal(
                np.concatenate([np.asarray(g) for g in jax.tree.leaves(got)]),
                value_reference(leaves, k), err_msg=f"k={k}")


def test_mixed_integer_dtypes_and_unsupported_dtypes_raise():
    with pytest.raises(ValueError, match="mix dtypes float32, int32"):
        topk.global_masks({"a": np.ones(3, np.int32), "b": np.ones(2, np.float32)}, 1)
    with pytest.raises(ValueError, match="mix dtypes"):
        topk.global_masks({"a": np.ones(3, np.int32), "b": np.ones(2, np.int16)}, 1)
    with pytest.raises(ValueError, match="float8_e4m3fn are not supported"):
        topk.mask(jnp.ones(3, jnp.float8_e4m3fn), 1)
    with pytest.raises(ValueError, match="complex64 are not supported"):
        topk.mask(jnp.ones(3, jnp.complex64), 1)


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "uint32"])
def test_other_integer_dtypes_rank_by_value(dtype):
    rng = np.random.default_rng(6)
    info = np.iinfo(dtype) if dtype != "bool" else None
    scores = (rng.integers(0, 2, 23) if info is None
              else rng.integers(info.min, int(info.max) + 1, 23)).astype(dtype)
    scores[:3] = scores[3:6]  # ties
    for k in [0, 1, 7, 22, 23]:
        np.testing.assert_array_equal(np.asarray(jit_mask(scores, k)), reference(scores, k))
        np.testing.assert_array_equal(reference(scores, k), value_reference([scores], k))
