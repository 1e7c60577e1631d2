"""GMP (``sparse_training(method="gmp")``): the cubic schedule's exact counts at every pruning step,
magnitude selection per layer and global against numpy, no regrowth, a resumed run, bad input.

Weights, gradients and the learning rate are dyadic (k / 2^j), so a step's ``p - lr * g`` is exact
in float32 and numpy reproduces the magnitudes the rule ranks bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import sparsejax
from sparsejax import masks as masks_lib, paths

LR = 0.25
SHAPES = {"a": (8, 25), "b": (3, 3, 2, 5)}  # 200 and 90 prunable weights; b/bias is not prunable
KERNELS = ("a/kernel", "b/kernel")


def _params(seed=0, scale_b=1.0):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in SHAPES.items():
        size = int(np.prod(shape))
        values = rng.permutation(np.arange(1, size + 1)) * rng.choice([-1, 1], size) / 64.0
        params[name] = {"kernel": jnp.asarray(values.reshape(shape) * scale_b ** (name == "b"),
                                              jnp.float32)}
    params["b"]["bias"] = jnp.zeros(5)
    return params


def _grads(params, steps, seed=1):
    """Stacked dyadic gradients, nonzero at pruned positions too (tempting regrowth)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(
        rng.integers(-64, 65, size=(steps, *p.shape)) / 16.0, jnp.float32), params)


def _dense(params):
    return masks_lib.ones_like(params)


def _random_masks(params, densities, seed=2):
    rng = np.random.default_rng(seed)
    flat = {}
    for path, p in paths.flatten(params).items():
        size = int(np.size(p))
        kept = masks_lib.kept_count(densities.get(path, 1.0), size)
        flat[path] = jnp.asarray(np.isin(np.arange(size), rng.permutation(size)[:kept])
                                 .reshape(p.shape))
    return paths.unflatten(params, flat)


def _run(params, masks, steps, inner=None, **kwargs):
    """``steps`` jitted steps in one scan; per step: params before, params after, masks after."""
    inner = optax.sgd(LR) if inner is None else inner
    tx = sparsejax.sparse_training(inner, masks, method="gmp", **kwargs)
    grads = _grads(params, steps)

    def step(carry, g):
        p, state = carry
        updates, state = tx.update(g, state, p)
        new = optax.apply_updates(p, updates)
        return (new, state), (p, new, sparsejax.get_masks(state))

    (_, state), trace = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), grads))(params)
    before, after, masks_after = (
        {k: np.asarray(v) for k, v in paths.flatten(t).items()} for t in trace)
    grads = {k: np.asarray(v) for k, v in paths.flatten(grads).items()}
    return state, before, after, masks_after, grads


def _pruning_steps(t0, t1, every):
    return sorted(set(range(t0, t1 + 1, every)) | {t1})


def _expected_kept(t, initial, size, s_f, t0, t1, every):
    """Kept count after step t, by hand: the last pruning step p <= t sets s_p of the cubic."""
    done = [p for p in _pruning_steps(t0, t1, every) if p <= t]
    if not done:
        return initial
    progress = 1.0 if t1 == t0 else (done[-1] - t0) / (t1 - t0)
    s_i = 1.0 - initial / size
    s_t = s_f + (s_i - s_f) * (1.0 - progress) ** 3
    return masks_lib.kept_count(1.0 - s_t, size)


def _topk_mask(scores, k):
    """numpy oracle: the k largest scores, ties to the lower flat index."""
    flat = scores.reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))
    out = np.zeros(flat.size, bool)
    out[order[:k]] = True
    return out.reshape(scores.shape)


def _check_schedule(masks, masks_after, steps, s_f, t0, t1, every):
    sizes = {k: int(np.prod(masks_after[k].shape[1:])) for k in KERNELS}
    initial = {k: int(np.sum(paths.flatten(masks)[k])) for k in KERNELS}
    for t in range(steps):
        for k in KERNELS:
            expected = _expected_kept(t, initial[k], sizes[k], s_f, t0, t1, every)
            assert int(masks_after[k][t].sum()) == expected, (k, t)


@pytest.mark.parametrize("t0, t1, every", [(3, 23, 4), (0, 10, 4)])
def test_dense_to_sparse_follows_the_cubic_exactly(t0, t1, every):
    """Counts equal kept_count(1 - s_t, N) after every step; t1 prunes (on the grid or not) and the
    mask is constant between pruning steps and after t1 (s_f reached and kept)."""
    params, steps, s_f = _params(), 30, 0.8
    state, _, _, masks_after, _ = _run(params, _dense(params), steps, final_sparsity=s_f,
                                       start_step=t0, end_step=t1, update_every=every)
    _check_schedule(_dense(params), masks_after, steps, s_f, t0, t1, every)
    prune = set(_pruning_steps(t0, t1, every))
    for k in KERNELS:
        assert masks_after[k][-1].sum() == masks_lib.kept_count(1 - s_f, masks_after[k][0].size)
        for t in range(1, steps):
            if t not in prune:
                np.testing.assert_array_equal(masks_after[k][t], masks_after[k][t - 1])
    assert int(state.mask_updates) == len(prune)
    assert masks_after["b/bias"].all()  # not prunable: untouched


def test_counts_by_hand():
    """The schedule's numbers for a 200-weight tensor, written out: s = .8 (1 - (1 - k/5)^3)."""
    params = _params()
    *_, masks_after, _ = _run(params, _dense(params), 12, final_sparsity=0.8, start_step=1,
                              end_step=11, update_every=2)
    # after steps 1, 3, ..., 11 (k = 0..5): 1 - (1 - k/5)^3 = 0, .488, .784, .936, .992, 1, so
    # 200·(1 - s) = 200, 121.92, 74.56, 50.24, 41.28, 40 -> 200, 122, 75, 50, 41, 40
    counts = [int(masks_after["a/kernel"][t].sum()) for t in range(12)]
    assert counts == [200, 200, 200, 122, 122, 75, 75, 50, 50, 41, 41, 40]


def test_from_a_sparse_mask_s_i_per_layer():
    """s_i is each tensor's sparsity in the given masks; pruned weights stay pruned."""
    params, steps, s_f, t0, t1, every = _params(), 26, 0.9, 2, 20, 3
    masks = _random_masks(params, {"a/kernel": 0.6, "b/kernel": 0.45})
    _, _, after, masks_after, _ = _run(params, masks, steps, final_sparsity=s_f, start_step=t0,
                                       end_step=t1, update_every=every)
    _check_schedule(masks, masks_after, steps, s_f, t0, t1, every)
    for k in KERNELS:
        old = np.asarray(paths.flatten(masks)[k])
        for t in range(steps):
            assert not (masks_after[k][t] & ~old).any(), (k, t)
            old = masks_after[k][t]
            assert (after[k][t][~old] == 0).all()


def test_pruned_weights_stay_zero_and_never_return():
    """Momentum and weight decay push at pruned weights; they stay exactly 0 and out of the mask."""
    params = _params()
    inner = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.05, momentum=0.9))
    _, _, after, masks_after, _ = _run(params, _dense(params), 40, inner=inner, final_sparsity=0.9,
                                       start_step=0, end_step=30, update_every=5)
    for k in KERNELS:
        for t in range(1, 40):
            assert not (masks_after[k][t] & ~masks_after[k][t - 1]).any(), (k, t)
            assert (after[k][t][~masks_after[k][t]] == 0).all(), (k, t)
        assert masks_after[k][-1].sum() == masks_lib.kept_count(0.1, masks_after[k][0].size)


def test_pruned_connections_rank_below_kept_zero_weights():
    """A kept weight that is exactly 0 outranks every pruned connection (no regrowth on ties)."""
    w = np.zeros((4, 5), np.float32)
    w[3, :] = [4.0, 3.0, 2.0, 1.0, 0.5]
    mask = np.zeros((4, 5), bool)
    mask[2:, :] = True  # kept: row 2 (zeros, after the pruned rows 0-1 in flat order) and row 3
    params = {"a": {"kernel": jnp.asarray(w)}}
    tx = sparsejax.sparse_training(optax.sgd(0.0), {"a": {"kernel": jnp.asarray(mask)}},
                                   method="gmp", final_sparsity=0.6, start_step=0, end_step=0)
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    expected = np.zeros((4, 5), bool)
    expected[3, :] = True
    expected[2, :3] = True  # 8 kept: row 3, then the first three kept zeros
    np.testing.assert_array_equal(sparsejax.get_masks(state)["a"]["kernel"], expected)


def _oracle_steps(masks, before, grads, masks_after, t0, t1, every, steps):
    """(t, weights the rule ranks, old masks, new masks) at each pruning step t."""
    old = {k: np.asarray(paths.flatten(masks)[k]) for k in KERNELS}
    for t in range(steps):
        new = {k: masks_after[k][t] for k in KERNELS}
        if t in _pruning_steps(t0, t1, every):
            weights = {k: np.where(old[k], before[k][t] - np.float32(LR) * grads[k][t] * old[k], 0)
                       for k in KERNELS}
            yield t, weights, old, new
        old = new


def test_per_layer_keeps_the_largest_magnitudes():
    params, steps, t0, t1, every = _params(), 20, 1, 16, 3
    masks = _random_masks(params, {"b/kernel": 0.7})
    _, before, _, masks_after, grads = _run(params, masks, steps, final_sparsity=0.85,
                                            start_step=t0, end_step=t1, update_every=every)
    checked = 0
    for t, weights, old, new in _oracle_steps(masks, before, grads, masks_after, t0, t1, every,
                                              steps):
        for k in KERNELS:
            scores = np.where(old[k], np.abs(weights[k]), -np.inf)
            np.testing.assert_array_equal(new[k], _topk_mask(scores, int(new[k].sum())),
                                          err_msg=f"{k} at step {t}")
            checked += 1
    assert checked == 2 * len(_pruning_steps(t0, t1, every))


def test_global_scope_keeps_the_global_top_magnitudes():
    """One threshold over both tensors: total kept follows the cubic on ΣN with the global s_i;
    b's weights are 8x larger, so b keeps far more than the per-layer share."""
    params, steps, s_f, t0, t1, every = _params(scale_b=8.0), 20, 0.8, 2, 14, 4
    masks = _random_masks(params, {"a/kernel": 0.9})
    _, before, _, masks_after, grads = _run(params, masks, steps, final_sparsity=s_f,
                                            scope="global", start_step=t0, end_step=t1,
                                            update_every=every)
    initial = sum(int(paths.flatten(masks)[k].sum()) for k in KERNELS)
    total = sum(int(np.prod(SHAPES[k[0]])) for k in KERNELS)
    for t in range(steps):
        kept = sum(int(masks_after[k][t].sum()) for k in KERNELS)
        assert kept == _expected_kept(t, initial, total, s_f, t0, t1, every), t
    for t, weights, old, new in _oracle_steps(masks, before, grads, masks_after, t0, t1, every,
                                              steps):
        scores = np.concatenate([np.where(old[k], np.abs(weights[k]), -np.inf).reshape(-1)
                                 for k in KERNELS])  # path order: a/kernel, then b/kernel
        got = np.concatenate([new[k].reshape(-1) for k in KERNELS])
        np.testing.assert_array_equal(got, _topk_mask(scores, int(got.sum())), err_msg=f"step {t}")
    final_b = masks_after["b/kernel"][-1].mean()
    assert final_b > 0.5  # per layer it would be 0.2


def test_a_resumed_run_keeps_s_i_from_the_state():
    """The train loop rebuilds the transformation from the current masks on resume; the schedule
    still starts from the masks given at the first init (held in the state)."""
    params = _params()
    kwargs = dict(method="gmp", final_sparsity=0.8, start_step=0, end_step=8, update_every=2)
    tx = sparsejax.sparse_training(optax.sgd(LR), _dense(params), **kwargs)
    grads = jax.tree.map(lambda g: g[0], _grads(params, 1))
    step = jax.jit(lambda tx_update, p, s: tx_update(grads, s, p), static_argnums=0)

    def steps(tx, p, state, n):
        for _ in range(n):
            updates, state = step(tx.update, p, state)
            p = optax.apply_updates(p, updates)
        return p, state

    p_all, s_all = steps(tx, params, tx.init(params), 10)
    p_half, s_half = steps(tx, params, tx.init(params), 5)
    resumed = sparsejax.sparse_training(optax.sgd(LR), sparsejax.get_masks(s_half), **kwargs)
    p_res, s_res = steps(resumed, p_half, s_half, 5)
    for a, b in zip(jax.tree.leaves(sparsejax.get_masks(s_all)),
                    jax.tree.leaves(sparsejax.get_masks(s_res))):
        np.testing.assert_array_equal(a, b)
    assert int(sparsejax.get_masks(s_res)["a"]["kernel"].sum()) == masks_lib.kept_count(0.2, 200)


def test_abstract_init_and_one_shot_at_step_0():
    """jax.eval_shape of init (how the train loop builds a restore target) works on traced masks;
    start_step = end_step = 0 prunes to s_f at step 0."""
    params = _params()
    shape = jax.eval_shape(lambda p: sparsejax.sparse_training(
        optax.sgd(LR), masks_lib.ones_like(p), method="gmp", final_sparsity=0.5,
        end_step=10).init(p), params)
    assert shape.rule_state["a/kernel"].dtype == jnp.int32
    _, _, _, masks_after, _ = _run(params, _dense(params), 3, final_sparsity=0.5, start_step=0,
                                   end_step=0, update_every=100)
    assert [int(masks_after["a/kernel"][t].sum()) for t in range(3)] == [100] * 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(final_sparsity=1.0), r"gmp: final_sparsity is 1.0; it must lie in \[0, 1\)"),
    (dict(final_sparsity=-0.1), "final_sparsity is -0.1"),
    (dict(final_sparsity=0.5, scope="per_tensor"), "gmp: unknown scope 'per_tensor'"),
    (dict(final_sparsity=0.5, start_step=20, end_step=10), r"end_step \(10\) is before start_step"),
    (dict(final_sparsity=0.5, end_step=None), "end_step is required for method 'gmp'"),
    (dict(final_sparsity=0.5, begin_step=3), "gmp takes no option 'begin_step'"),
    (dict(), "gmp needs the option final_sparsity"),
])
def test_bad_arguments_raise_one_line(kwargs, message):
    params = _params()
    kwargs = {"end_step": 10, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        sparsejax.sparse_training(optax.sgd(0.1), _dense(params), method="gmp", **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scope, densities, name", [
    ("layer", {"a/kernel": 0.5, "b/kernel": 0.05}, "b/kernel"),
    ("global", {"a/kernel": 0.02, "b/kernel": 0.05}, "all rewired tensors"),
])
def test_masks_sparser_than_the_target_raise_at_init(scope, densities, name):
    params = _params()
    tx = sparsejax.sparse_training(optax.sgd(0.1), _random_masks(params, densities),
                                   method="gmp", final_sparsity=0.9, scope=scope, end_step=10)
    with pytest.raises(ValueError, match=f"below the initial sparsity .* of {name}") as info:
        tx.init(params)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scope, modes", [
    ("layer", ("shard_map",)),
    pytest.param("global", ("pmap", "shard_map"), marks=pytest.mark.slow),
])
def test_on_8_devices_equals_one_device(scope, modes):
    """The counts' host callback runs inside pmap and shard_map; every device gets the same mask."""
    devices = jax.device_count()
    assert devices == 8  # tests/conftest.py
    params = _params()
    rng = np.random.default_rng(3)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.integers(-64, 65, size=(devices, *p.shape))
                                                / 16.0, jnp.float32), params) for _ in range(7)]

    def tx(axis_name=None):
        return sparsejax.sparse_training(optax.sgd(LR), _dense(params), method="gmp",
                                         final_sparsity=0.8, scope=scope, start_step=0,
                                         end_step=6, update_every=2, axis_name=axis_name)

    def step(tx, p, state, g):
        updates, state = tx.update(g, state, p)
        return optax.apply_updates(p, updates), state

    def run(fn, p, state, place):
        for g in grads:
            p, state = fn(p, state, place(g))
        return sparsejax.get_masks(state)

    one = tx()
    mean = lambda g: jax.tree.map(lambda x: x.mean(0), g)  # noqa: E731
    reference = run(jax.jit(lambda p, s, g: step(one, p, s, g)), params, one.init(params), mean)
    kept = [int(reference[k]["kernel"].sum()) for k in SHAPES]
    assert (kept == [40, 18] if scope == "layer" else sum(kept) == masks_lib.kept_count(0.2, 290))
    tx_axis = tx("data")
    if "shard_map" in modes:
        mesh = jax.make_mesh((devices,), ("data",))
        batch = NamedSharding(mesh, P("data"))
        # JAX's varying-axes checks on: the per-device gradient (leading axis 1) is averaged by
        # update()'s pmean over "data".
        mapped = jax.jit(jax.shard_map(
            lambda p, s, g: step(tx_axis, p, s, jax.tree.map(lambda x: x[0], g)), mesh=mesh,
            in_specs=(P(), P(), P("data")), out_specs=(P(), P())))
        got = run(mapped, params, tx_axis.init(params), lambda g: jax.device_put(g, batch))
        for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(got)):
            np.testing.assert_array_equal(a, b)
    if "pmap" in modes:
        replicate = lambda t: jax.tree.map(lambda x: jnp.stack([x] * devices), t)  # noqa: E731
        pmapped = jax.pmap(lambda p, s, g: step(tx_axis, p, s, g), axis_name="data")
        got = run(pmapped, replicate(params), replicate(tx_axis.init(params)), lambda g: g)
        for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(got)):
            for d in range(devices):
                np.testing.assert_array_equal(a, np.asarray(b)[d])
