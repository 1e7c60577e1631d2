"""DST rules on tiny examples worked out by hand, the report, the drop schedules, and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax
from sparsejax.dst import METHODS, RULES, dsr, report, timing

B = np.bool_


def _one_update(method, params, masks, grads, drop_fraction, inner=None, **kwargs):
    """Step 0 (no rewiring) with zero gradients, then step 1 rewires with ``grads``."""
    inner = optax.sgd(0.0) if inner is None else inner
    tx = sparsejax.sparse_training(inner, masks, method=method, update_every=1, start_step=1,
                                   end_step=2, drop_fraction=drop_fraction,
                                   drop_schedule="constant", **kwargs)

    @jax.jit
    def run(params, grads):
        state = tx.init(params)
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        params = optax.apply_updates(params, updates)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return run(params, grads)


def _tree(a, b):
    return {"a": {"kernel": jnp.asarray(a, jnp.float32)}, "b": {"kernel": jnp.asarray(b, jnp.float32)}}


def _masks(a, b):
    return {"a": {"kernel": jnp.asarray(a, bool)}, "b": {"kernel": jnp.asarray(b, bool)}}


def _assert_masks(state, a, b):
    chex.assert_trees_all_equal(sparsejax.get_masks(state), _masks(a, b))


def test_static_never_changes_the_mask():
    params = _tree([[1.0, 2.0, 3.0]], [[4.0, 5.0]])
    masks = _masks([[1, 0, 1]], [[0, 1]])
    new_params, state = _one_update("static", params, masks, _tree([[9.0, 9.0, 9.0]], [[9.0, 9.0]]),
                                    0.5)
    _assert_masks(state, [[1, 0, 1]], [[0, 1]])
    np.testing.assert_array_equal(new_params["a"]["kernel"], np.float32([[1.0, 0.0, 3.0]]))


def test_rigl_drops_smallest_and_grows_largest_gradient():
    # a: active {0: .9, 1: -.1, 2: .5, 4: .3}; f = .5 drops floor(2) = 2 smallest: 1 and 4.
    # Not kept: 1, 3, 4, 5; largest |g| there: 5 (3.0) and 1 (2.0) -> 1 comes back with its value.
    params = _tree([[0.9, -0.1, 0.5, 0.0, 0.3, 0.0]], [[0.2, -0.4, 0.0, 0.0]])
    masks = _masks([[1, 1, 1, 0, 1, 0]], [[1, 1, 0, 0]])
    grads = _tree([[0.0, 2.0, 0.0, 1.0, 0.5, -3.0]], [[0.0, 0.0, 0.1, -0.2]])
    # b: active 2, drops floor(1) = 1 (0.2); not kept: 0, 2, 3; largest |g|: 3.
    new_params, state = _one_update("rigl", params, masks, grads, 0.5)
    _assert_masks(state, [[1, 1, 1, 0, 0, 1]], [[0, 1, 0, 1]])
    np.testing.assert_array_equal(new_params["a"]["kernel"],
                                  np.float32([[0.9, -0.1, 0.5, 0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(new_params["b"]["kernel"], np.float32([[0.0, -0.4, 0.0, 0.0]]))
    metrics = report(state)
    assert metrics["grown/a/kernel"] == 1 and metrics["dropped/a/kernel"] == 1
    assert metrics["grown/b/kernel"] == 1 and metrics["dropped/b/kernel"] == 1
    assert metrics["mask_updates"] == 1 and metrics["mask_updated"] == 1
    assert metrics["density/a/kernel"] == pytest.approx(4 / 6)


def test_report_after_steps_with_and_without_a_mask_update():
    # The RigL example above (only step 1 rewires) plus a dense bias that is not rewired: sparsity
    # is over the kernels, 1 - (4 + 2) / (6 + 4) = 0.4 (over all params it would be 1 - 9 / 13).
    params = {**_tree([[0.9, -0.1, 0.5, 0.0, 0.3, 0.0]], [[0.2, -0.4, 0.0, 0.0]]),
              "c": {"bias": jnp.ones(3)}}
    masks = {**_masks([[1, 1, 1, 0, 1, 0]], [[1, 1, 0, 0]]), "c": {"bias": jnp.ones(3, bool)}}
    grads = {**_tree([[0.0, 2.0, 0.0, 1.0, 0.5, -3.0]], [[0.0, 0.0, 0.1, -0.2]]),
             "c": {"bias": jnp.zeros(3)}}
    tx = sparsejax.sparse_training(optax.sgd(0.0), masks, method="rigl", update_every=1,
                                   start_step=1, end_step=2, drop_fraction=0.5,
                                   drop_schedule="constant")

    @jax.jit
    def reports(params):
        state, zeros, out = tx.init(params), jax.tree.map(jnp.zeros_like, params), []
        for g in (zeros, grads, zeros):
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            out.append(report(state))
        return out

    density = {"density/a/kernel": 4 / 6, "density/b/kernel": 2 / 4, "sparsity": 0.4}
    none = {"grown/a/kernel": 0, "dropped/a/kernel": 0, "grown/b/kernel": 0, "dropped/b/kernel": 0}
    one = {"grown/a/kernel": 1, "dropped/a/kernel": 1, "grown/b/kernel": 1, "dropped/b/kernel": 1}
    expected = [{**density, **none, "mask_updates": 0, "mask_updated": 0},  # step 0: no update
                {**density, **one, "mask_updates": 1, "mask_updated": 1},   # step 1: update
                {**density, **one, "mask_updates": 1, "mask_updated": 0}]   # step 2: last is kept
    got = [{name: float(value) for name, value in r.items()} for r in reports(params)]
    assert got == [pytest.approx(e, rel=1e-6) for e in expected]


def test_set_drops_smallest_and_grows_at_random_among_not_kept():
    params = _tree([[0.9, -0.1, 0.5, 0.0]], [[0.2, -0.4, 0.7, 0.1]])
    masks = _masks([[1, 1, 1, 0]], [[1, 1, 1, 1]])
    grads = _tree([[0.0, 0.0, 0.0, 5.0]], [[1.0, 1.0, 1.0, 1.0]])
    new_params, state = _one_update("set", params, masks, grads, 0.5)
    # a drops floor(1.5) = 1 (index 1) and grows 1 of the not-kept {1, 3}; b is dense: unchanged.
    got = np.asarray(sparsejax.get_masks(state)["a"]["kernel"])
    assert any((got == np.asarray(m, B)).all() for m in ([[1, 1, 1, 0]], [[1, 0, 1, 1]]))
    np.testing.assert_array_equal(sparsejax.get_masks(state)["b"]["kernel"], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(new_params["a"]["kernel"], np.where(got, params["a"]["kernel"], 0))


def test_dsr_prunes_below_threshold_and_regrows_by_survivors():
    # H = 1e-3: a loses index 1 (|5e-4| < H); survivors a: 2, b: 3. K = 1 is shared 2:3 by
    # cumulative rounding -> (0, 1); b's only zero (index 3) is regrown, a's just-pruned is not.
    params = _tree([[0.5, 5e-4, 0.3, 0.0]], [[0.2, 0.4, -0.3, 0.0]])
    masks = _masks([[1, 1, 1, 0]], [[1, 1, 1, 0]])
    grads = _tree([[1.0] * 4], [[1.0] * 4])
    new_params, state = _one_update("dsr", params, masks, grads, 0.3)
    _assert_masks(state, [[1, 0, 1, 0]], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(new_params["a"]["kernel"], np.float32([[0.5, 0.0, 0.3, 0.0]]))
    np.testing.assert_array_equal(new_params["b"]["kernel"], np.float32([[0.2, 0.4, -0.3, 0.0]]))
    # K = 1 < 0.9 · (0.3 · 6): the threshold doubles.
    assert float(sparsejax.dst.find_state(state).rule_state) == pytest.approx(2e-3)


def test_ggr_global_quota_split_insertion_and_tiny_init():
    # f = .7: a (3 active) drops floor(2.1) = 2 -> keeps index 0; b (2 active) drops 1 (index 1).
    # K = 3 over the not-kept of both layers: |g| b2 = 3, b3 = 2, b1 = .2 beat every a -> quota
    # a: 0, b: 3, so b becomes dense. In b, round(.5 · 3) = 2 at the largest |g| (2, 3) and 1 at
    # random among the rest ({1}: the just-dropped one, which keeps its value).
    params = _tree([[0.9, 0.1, 0.5, 0.0]], [[0.8, 0.7, 0.0, 0.0]])
    masks = _masks([[1, 1, 1, 0]], [[1, 1, 0, 0]])
    grads = _tree([[0.0, 0.05, 0.01, 0.02]], [[0.0, 0.2, 3.0, 2.0]])
    new_params, state = _one_update("ggr", params, masks, grads, 0.7)
    _assert_masks(state, [[1, 0, 0, 0]], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(new_params["a"]["kernel"], np.float32([[0.9, 0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(new_params["b"]["kernel"], np.float32([[0.8, 0.7, 1e-10, 1e-10]]))


def test_ggr_gives_weights_to_the_layer_whose_gradients_dominate():
    rng = np.random.default_rng(0)
    params = {name: {"kernel": jnp.asarray(rng.normal(size=(16, 16)), jnp.float32)}
              for name in ("quiet", "loud")}
    masks = {name: {"kernel": jnp.asarray(rng.random((16, 16)) < 0.2)} for name in params}
    grads = {"quiet": {"kernel": jnp.full((16, 16), 0.01)},
             "loud": {"kernel": jnp.asarray(rng.normal(size=(16, 16)) + 10.0, jnp.float32)}}
    _, state = _one_update("ggr", params, masks, grads, 0.5)
    before = sparsejax.masks.counts(masks)
    after = sparsejax.masks.counts(sparsejax.get_masks(state))
    assert after["loud/kernel"][0] > before["loud/kernel"][0]
    assert after["quiet/kernel"][0] < before["quiet/kernel"][0]
    assert sum(c for c, _ in after.values()) == sum(c for c, _ in before.values())


@pytest.mark.parametrize("fraction", [1.0, 0.0])
def test_ggr_grow_gradient_fraction_is_forwarded(fraction):
    # One layer: weights 1..16 kept at 0..15, f = .25 drops 4 (positions 0..3); |g| = 1..16 at the
    # not-kept 16..31. Fraction 1 grows all 4 at the largest |g| (28..31); fraction 0 grows 4 at
    # random among the 20 not kept, here not those 4.
    weights = np.concatenate([np.arange(1.0, 17.0), np.zeros(16)])
    params = {"a": {"kernel": jnp.asarray(weights[None], jnp.float32)}}
    masks = {"a": {"kernel": jnp.asarray(np.arange(32) < 16)[None]}}
    grads = {"a": {"kernel": jnp.asarray(np.concatenate([np.zeros(16), np.arange(1.0, 17.0)])[None],
                                         jnp.float32)}}
    _, state = _one_update("ggr", params, masks, grads, 0.25, grow_gradient_fraction=fraction)
    got = np.asarray(sparsejax.get_masks(state)["a"]["kernel"][0])
    by_gradient = (np.arange(32) >= 4) & ((np.arange(32) < 16) | (np.arange(32) >= 28))
    assert got.sum() == 16 and got[4:16].all()
    assert (got == by_gradient).all() == (fraction == 1.0)


def test_dsr_shares_add_up_and_respect_room():
    # Cumulative rounding of 10 · [1, 2, 4] / 4 = [2.5, 5, 10] -> [2, 5, 10] -> shares [2, 3, 5].
    shares = dsr.shares(jnp.int32(10), jnp.array([1, 1, 2]), jnp.array([100, 100, 100]))
    assert shares.tolist() == [2, 3, 5]
    # Proportional [1, 1, 8], but the last layer has room for 1: its 7 spill to the first layer.
    shares = dsr.shares(jnp.int32(10), jnp.array([1, 1, 8]), jnp.array([100, 100, 1]))
    assert shares.tolist() == [8, 1, 1]


def test_drop_fraction_schedules():
    cosine = timing.drop_fraction_schedule("cosine", 0.3, 100, 1100)
    assert float(cosine(100)) == pytest.approx(0.3)
    assert float(cosine(600)) == pytest.approx(0.15)
    assert float(cosine(1100)) == pytest.approx(0.0, abs=1e-7)
    assert float(cosine(5000)) == pytest.approx(0.0, abs=1e-7)
    assert float(timing.drop_fraction_schedule("constant", 0.3, 0, 10)(7)) == pytest.approx(0.3)
    exponential = timing.drop_fraction_schedule("exponential", 0.3, 0, 1000)
    assert float(exponential(500)) == pytest.approx(0.03)
    assert float(exponential(2000)) == pytest.approx(0.003)


def test_update_steps():
    steps = [t for t in range(0, 40) if timing.is_update_step(t, 0, 30, 10)]
    assert steps == [10, 20]
    steps = [t for t in range(0, 40) if timing.is_update_step(t, 5, 26, 10)]
    assert steps == [5, 15, 25]


def test_methods_are_the_rules_registry():
    assert METHODS == tuple(RULES) == ("static", "set", "rigl", "dsr", "ggr", "gmp")


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="magic"), "unknown method"),
    (dict(method="set", drop_schedule="linear"), "unknown drop_schedule"),
    (dict(method="set", drop_fraction=1.5), "drop_fraction"),
    (dict(method="set", drop_fraction=-0.1), "drop_fraction"),
    (dict(method="set", update_every=0), "update_every"),
    (dict(method="ggr", grow_gradient_fraction=2.0), "grow_gradient_fraction"),
    (dict(method="rigl", grow_gradient_fraction=0.5),
     r"rigl takes no option 'grow_gradient_fraction' \(its options: none\)"),
    (dict(method="ggr", drop_rate=0.1),
     r"ggr takes no option 'drop_rate' \(its options: grow_gradient_fraction\)"),
    (dict(method="set", start_step=50, end_step=10), "end_step"),
    (dict(method="rigl", end_step=None), "end_step is required"),
])
def test_bad_arguments_raise(kwargs, message):
    masks = _masks([[1, 0]], [[1, 1]])
    kwargs = {"end_step": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        sparsejax.sparse_training(optax.sgd(0.1), masks, **kwargs)


def test_masks_that_do_not_fit_raise_at_init():
    params = _tree([[1.0, 2.0]], [[3.0, 4.0]])
    tx = sparsejax.sparse_training(optax.sgd(0.1), _masks([[1, 0, 1]], [[1, 1]]), method="set",
                                   end_step=10)
    with pytest.raises(ValueError, match="a/kernel"):
        tx.init(params)
    tx = sparsejax.sparse_training(optax.sgd(0.1), {"a": {"kernel": jnp.ones((1, 2), bool)}},
                                   method="set", end_step=10)
    with pytest.raises(ValueError, match="b/kernel"):
        tx.init(params)
