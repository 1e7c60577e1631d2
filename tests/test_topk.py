"""Exact top-k (sparsejax.topk) against a numpy lexsort reference: counts, ties, traced k, sharding."""

import chex
import jax
import jax.numpy as jnp
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


def _flush(flat: np.ndarray) -> np.ndarray:
    """float32 as XLA compares it: -0.0 is 0.0, and CPU flushes subnormals to zero (jnp.sort agrees)."""
    flat = np.asarray(flat, np.float32).reshape(-1)
    return np.where(np.abs(flat) < np.finfo(np.float32).tiny, np.float32(0), flat)


def reference(scores, k: int) -> np.ndarray:
    """Top-k by numpy: descending score, ties to the lower flat index."""
    flat = _flush(scores)
    order = np.lexsort((np.arange(flat.size), -flat))
    out = np.zeros(flat.size, bool)
    out[order[:k]] = True
    return out.reshape(np.shape(scores))


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
    v = _flush(values)
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
    flat = reference(np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in leaves]), k)
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
        got = select([jnp.asarray(x) for x in tree], k)
        assert sum(int(np.sum(g)) for g in got) == k, f"chunk={chunk} k={k}"
        chex.assert_trees_all_equal(got, global_reference(tree, k))


def test_chunked_counting_keeps_temporaries_chunk_sized():
    # XLA's static estimate (temporaries + output) matched the measured peak before chunking
    # (benchmarks/RESULTS.md); whole-array counting needs ~3x the scores here.
    n = 1 << 22
    scores = jax.ShapeDtypeStruct((n,), jnp.float32)
    analysis = topk._select.lower([scores], 7, chunks=(topk._CHUNK,)).compile().memory_analysis()
    assert analysis.output_size_in_bytes == n  # the bool mask
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
    mesh = jax.make_mesh((8,), ("data",))
    scores = np.round(np.random.default_rng(5).normal(size=(40, 7)) * 2).astype(np.float32)
    sharded = jax.device_put(scores, NamedSharding(mesh, P("data")))
    for k in [0, 93, 280]:
        got = topk._select([sharded], k, chunks=(16,))[0]
        np.testing.assert_array_equal(np.asarray(got), reference(scores, k))
