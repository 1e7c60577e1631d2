"""sparse_training on 8 simulated devices: sharded jit, pmap and shard_map equal a 1-device run."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import sparsejax

STEPS, DEVICES = 7, 8
rng = np.random.default_rng(0)
PARAMS = {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(8, 32)) * 0.5, jnp.float32),
                      "bias": jnp.zeros(32)},
          "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(32, 4)) * 0.5, jnp.float32),
                      "bias": jnp.zeros(4)}}
MASKS = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3) if p.ndim == 2
                     else jnp.ones(p.shape, bool), PARAMS)
X = jnp.asarray(rng.normal(size=(STEPS, 64, 8)), jnp.float32)
Y = jnp.asarray(rng.integers(0, 4, size=(STEPS, 64)), jnp.int32)


def _loss(params, x, y):
    h = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    logits = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _tx(method, axis_name=None):
    return sparsejax.sparse_training(optax.sgd(0.5, momentum=0.9), MASKS, method=method,
                                     update_every=2, end_step=100, drop_fraction=0.5,
                                     axis_name=axis_name)


def _step(tx, params, state, x, y, scale=1.0):
    grads = jax.grad(lambda p: scale * _loss(p, x, y))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _run(step, params, state, place=lambda x: x):
    for t in range(STEPS):
        params, state = step(params, state, place(X[t]), place(Y[t]))
    return params, sparsejax.get_masks(state)


def _assert_same(reference, got):
    (ref_params, ref_masks), (params, masks) = reference, got
    chex.assert_trees_all_equal(masks, ref_masks)
    chex.assert_trees_all_close(params, ref_params, rtol=1e-4, atol=1e-5)


def _per_device(tree):
    """Every device's copy of a replicated pmap output, which must all be identical."""
    tree = jax.tree.map(np.asarray, tree)
    copies = [jax.tree.map(lambda x: x[d], tree) for d in range(DEVICES)]
    chex.assert_trees_all_equal(*copies)
    return copies[0]


@pytest.mark.parametrize("method", ["rigl", pytest.param("ggr", marks=pytest.mark.slow),
                                    pytest.param("set", marks=pytest.mark.slow),
                                    pytest.param("dsr", marks=pytest.mark.slow)])
def test_parallel_runs_equal_one_device(method):
    assert jax.device_count() == DEVICES
    tx = _tx(method)
    reference = _run(jax.jit(functools.partial(_step, tx)), PARAMS, tx.init(PARAMS))
    grown = sum(int((m & ~m0).sum()) for m, m0 in zip(jax.tree.leaves(reference[1]),
                                                     jax.tree.leaves(MASKS)))
    assert grown > 0, "the masks never changed; the comparison would prove nothing"

    # jit with the batch sharded over 8 devices, params and state replicated.
    mesh = jax.make_mesh((DEVICES,), ("data",))
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.device_put(PARAMS, replicated)
    state = jax.jit(tx.init, out_shardings=replicated)(params)
    sharded = _run(jax.jit(functools.partial(_step, tx)), params, state,
                   lambda a: jax.device_put(a, batch))
    _assert_same(reference, sharded)
    for leaf in jax.tree.leaves(sharded[1]):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert all(np.array_equal(s, shards[0]) for s in shards)

    # pmap: per-device gradients, averaged by update() over axis_name.
    tx_axis = _tx(method, axis_name="data")
    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * DEVICES), tree)  # noqa: E731
    split = lambda a: a.reshape(DEVICES, -1, *a.shape[1:])  # noqa: E731
    pmapped = jax.pmap(functools.partial(_step, tx_axis), axis_name="data")
    pmap_params, pmap_masks = _run(pmapped, replicate(PARAMS), replicate(tx_axis.init(PARAMS)),
                                   split)
    _assert_same(reference, (_per_device(pmap_params), _per_device(pmap_masks)))

    # shard_map, per-device gradients (check_vma=False, as pmap): update() averages them.
    place = lambda a: jax.device_put(a, batch)  # noqa: E731
    specs = dict(mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=(P(), P()))
    mapped = jax.jit(jax.shard_map(functools.partial(_step, tx_axis), check_vma=False, **specs))
    _assert_same(reference, _run(mapped, params, tx_axis.init(params), place))

    # shard_map with JAX's varying-axes checks: gradients of replicated params arrive summed over
    # the axis, so the loss is scaled to the global mean and update()'s pmean changes nothing.
    mapped = jax.jit(jax.shard_map(functools.partial(_step, tx_axis, scale=1 / DEVICES), **specs))
    _assert_same(reference, _run(mapped, params, tx_axis.init(params), place))
