"""sparse_training with real optimizers: RigL's state reset and skipped update, composition, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax
from sparsejax.dst import find_state, report

rng = np.random.default_rng(0)
PARAMS = {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
                      "bias": jnp.zeros(8)},
          "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}}
MASKS = {"Dense_0": {"kernel": jnp.asarray(rng.random((6, 8)) < 0.4), "bias": jnp.ones(8, bool)},
         "Dense_1": {"kernel": jnp.asarray(rng.random((8, 4)) < 0.4)}}


def _grads(t):
    return jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
                                          * 1.7 + t), PARAMS)


def _steps(tx, n):
    """n jitted steps; returns the params and states before and after each step."""
    @jax.jit
    def step(params, state, t):
        updates, state = tx.update(_grads(t), state, params)
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, jax.jit(tx.init)(PARAMS)
    history = [(params, state)]
    for t in range(n):
        params, state = step(params, state, t)
        history.append((params, state))
    return history


def _where(tree, masks):
    """``tree`` where ``masks`` is True, 0 elsewhere."""
    return jax.tree.map(lambda x, m: jnp.where(m, x, 0), tree, masks)


def _mirrors(state):
    """Every subtree of the inner state with the params' structure (momentum, mu, nu, ...)."""
    structure = jax.tree.structure(PARAMS)
    found = []
    jax.tree.map(lambda n: found.append(n) if jax.tree.structure(n) == structure else None,
                 find_state(state).inner_state, is_leaf=lambda n: jax.tree.structure(n) == structure)
    return found


@pytest.mark.parametrize("inner", [
    optax.sgd(0.1, momentum=0.9),
    optax.adam(0.1),
    optax.adamw(0.1, weight_decay=0.1),
    optax.lion(0.1),
    optax.chain(optax.add_decayed_weights(0.1), optax.inject_hyperparams(optax.sgd)(0.1, 0.9)),
], ids=["sgd_momentum", "adam", "adamw", "lion", "chain_inject_hyperparams"])
def test_rigl_resets_grown_state_and_skips_the_update(inner):
    tx = sparsejax.sparse_training(inner, MASKS, method="rigl", update_every=3, end_step=10,
                                   drop_fraction=0.5)
    history = _steps(tx, 4)
    (params_before, state_before), (params_after, state_after) = history[3], history[4]
    old, new = sparsejax.get_masks(state_before), sparsejax.get_masks(state_after)
    grown = jax.tree.map(lambda n, o: n & ~o, new, old)
    assert sum(int(g.sum()) for g in jax.tree.leaves(grown)) > 0
    kept = jax.tree.map(lambda n, g: n & ~g, new, grown)
    mirrors_before, mirrors_after = _mirrors(state_before), _mirrors(state_after)
    assert mirrors_before, "expected per-weight optimizer state"
    for before, after in zip(mirrors_before, mirrors_after):
        # On the new mask: 0 where grown (reset), unchanged where kept (no update).
        chex.assert_trees_all_equal(_where(after, new), _where(before, kept))
    # Weights: unchanged where kept, 0 where grown or pruned.
    chex.assert_trees_all_equal(params_after, _where(params_before, kept))
    # The steps around it do update.
    assert not np.array_equal(history[2][0]["Dense_1"]["kernel"], history[3][0]["Dense_1"]["kernel"])


def test_rigl_refuses_state_it_cannot_reset():
    opaque = optax.GradientTransformation(
        lambda params: [jnp.zeros((6, 8))], lambda updates, state, params=None: (updates, state))
    tx = sparsejax.sparse_training(opaque, MASKS, method="rigl", end_step=10)
    with pytest.raises(ValueError, match=r"shape \(6, 8\).*cannot reset"):
        tx.init(PARAMS)
    # Other rules do not reset and accept it.
    sparsejax.sparse_training(opaque, MASKS, method="set", end_step=10).init(PARAMS)


def test_rigl_leaves_factored_state_alone():
    # Adafactor's row and column statistics sit in subtrees with the params' structure but not their
    # shapes: they are not per-weight, so the reset leaves them (and their shapes) as they are.
    params = {"Dense_0": {"kernel": jnp.ones((128, 128))}}
    masks = {"Dense_0": {"kernel": jnp.asarray(rng.random((128, 128)) < 0.3)}}
    tx = sparsejax.sparse_training(optax.adafactor(0.1), masks, method="rigl", update_every=1,
                                   end_step=10, drop_fraction=0.5)
    state = tx.init(params)
    shapes = jax.tree.map(jnp.shape, state)
    for _ in range(2):  # step 1 rewires
        _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
    assert int(find_state(state).mask_updates) == 1
    assert jax.tree.map(jnp.shape, state) == shapes


def test_nested_in_chain_and_inject_hyperparams():
    def make(learning_rate):
        return optax.chain(optax.clip_by_global_norm(1.0),
                           sparsejax.sparse_training(optax.sgd(learning_rate, momentum=0.9), MASKS,
                                                     method="ggr", update_every=2, end_step=10))

    tx = optax.inject_hyperparams(make)(learning_rate=0.1)
    params, state = _steps(tx, 5)[-1]
    masks = sparsejax.get_masks(state)
    assert jax.tree.structure(masks) == jax.tree.structure(PARAMS)
    chex.assert_trees_all_equal(params, _where(params, masks))
    metrics = report(state)
    assert metrics["mask_updates"] == 2 and metrics["mask_updated"] == 1  # steps 2 and 4
    assert set(metrics) == {"density/Dense_0/kernel", "density/Dense_1/kernel",
                            "grown/Dense_0/kernel", "grown/Dense_1/kernel", "dropped/Dense_0/kernel",
                            "dropped/Dense_1/kernel", "sparsity", "mask_updates", "mask_updated"}


def test_filter_fn_and_new_weight_init():
    tx = sparsejax.sparse_training(optax.sgd(0.1), MASKS, method="rigl", update_every=2,
                                   end_step=10, drop_fraction=0.5, new_weight_init=0.25,
                                   filter_fn=lambda path, leaf: path == "Dense_1/kernel")
    (_, state_before), (params, state) = _steps(tx, 3)[-2:]
    masks = sparsejax.get_masks(state)
    np.testing.assert_array_equal(masks["Dense_0"]["kernel"], MASKS["Dense_0"]["kernel"])
    grown = masks["Dense_1"]["kernel"] & ~sparsejax.get_masks(state_before)["Dense_1"]["kernel"]
    assert grown.any()
    np.testing.assert_array_equal(params["Dense_1"]["kernel"][grown], 0.25)
    assert "density/Dense_0/kernel" not in report(state)


def test_get_masks_without_sparse_training_raises():
    with pytest.raises(ValueError, match="found 0"):
        sparsejax.get_masks(optax.sgd(0.1).init(PARAMS))


def test_update_without_params_raises():
    tx = sparsejax.sparse_training(optax.sgd(0.1), MASKS, method="static")
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(PARAMS, tx.init(PARAMS))


def test_rigl_lr_schedule_counts_skipped_steps_like_static():
    # lr 1 for steps 0..4, 0 from step 5 on. RigL skips its update at the mask update of step 3, but
    # the boundary must still come at step 5 (it came at step 6 when the skip froze the count).
    lr = optax.piecewise_constant_schedule(1.0, {5: 0.0})
    runs = {method: _steps(sparsejax.sparse_training(optax.sgd(lr, momentum=0.9), MASKS,
                                                     method=method, update_every=3, end_step=10,
                                                     drop_fraction=0.5), 7)
            for method in ("static", "rigl")}
    for method, history in runs.items():
        counts = [int(s.count) for s in jax.tree.leaves(
            history[-1][1], is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
        assert counts == [7], (method, counts)
        # At step 5 the lr is 0: the weights do not move (step 6 rewires, which zeroes dropped ones).
        chex.assert_trees_all_equal(history[5][0], history[6][0])
    assert int(find_state(runs["rigl"][-1][1]).mask_updates) == 2  # steps 3 and 6 rewired
