"""Invariants of every DST method over 1000 jitted steps on small MLP and CNN params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax
from sparsejax import masks as masks_lib
from sparsejax.dst import timing

STEPS, UPDATE_EVERY, END_STEP = 1000, 10, 800


def _params():
    shapes = {"Conv_0": (3, 3, 3, 8), "Conv_1": (3, 3, 8, 16), "Dense_0": (64, 32),
              "Dense_1": (32, 10)}
    rng = np.random.default_rng(0)
    params = {name: {"kernel": jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32),
                     "bias": jnp.zeros(s[-1])} for name, s in shapes.items()}
    params["BatchNorm_0"] = {"scale": jnp.ones(8), "bias": jnp.zeros(8)}
    return params


def _noise(x, t):
    """Cheap deterministic pseudo-noise in [-1, 1) (jax.random would dominate compile time)."""
    i = jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)
    return 2.0 * jnp.modf(jnp.abs(jnp.sin(i * 12.9898 + t * 78.233)) * 43758.547)[0] - 1.0


DENSITIES = {"Conv_0/kernel": 0.5, "Conv_1/kernel": 0.2, "Dense_0/kernel": 0.1,
             "Dense_1/kernel": 0.3}


def _masks(params):
    """Exactly round(d·N) kept per tensor named in DENSITIES, at random (numpy: no compile)."""
    rng = np.random.default_rng(1)

    def one(path, p):
        size = int(np.size(p))
        kept = masks_lib.kept_count(DENSITIES.get(path, 1.0), size)
        return jnp.asarray(np.isin(np.arange(size), rng.permutation(size)[:kept]).reshape(p.shape))

    return sparsejax.paths.unflatten(params, {k: one(k, v) for k, v in
                                              sparsejax.paths.flatten(params).items()})


def _run(method, inner):
    """STEPS steps with synthetic gradients (pull toward a target plus noise) in one lax.scan."""
    params = _params()
    masks = _masks(params)
    tx = sparsejax.sparse_training(inner, masks, method=method, update_every=UPDATE_EVERY,
                                   end_step=END_STEP, drop_fraction=0.3)
    rng = np.random.default_rng(2)
    target = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)

    def step(carry, t):
        p, state = carry
        grads = jax.tree.map(lambda x, y: (x - y) + _noise(x, t.astype(jnp.float32)), p, target)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        m = sparsejax.get_masks(state)
        kernels = [k for k in m if k != "BatchNorm_0"]
        kept = jnp.stack([jnp.sum(m[k]["kernel"]) for k in kernels])
        nonzero = jnp.stack([jnp.sum(p[k]["kernel"] != 0) for k in kernels])
        outside = sum(jnp.sum((x != 0) & ~mm) for x, mm in zip(jax.tree.leaves(p), jax.tree.leaves(m)))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)]))
        return (p, state), (kept, nonzero, outside, finite, m)

    def run(p):
        (p, state), trace = jax.lax.scan(step, (p, tx.init(p)), jnp.arange(STEPS))
        return p, state, trace

    return masks, jax.jit(run)(params)


@pytest.mark.parametrize("method, inner", [
    ("static", optax.adamw(1e-2, weight_decay=0.1)),
    ("set", optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9))),
    ("rigl", optax.adam(1e-2)),
    ("dsr", optax.sgd(0.05, momentum=0.9)),
    ("ggr", optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9))),
])
def test_invariants_over_1000_steps(method, inner):
    masks, (params, state, (kept, nonzero, outside, finite, trace_masks)) = _run(method, inner)
    kept, nonzero = np.asarray(kept), np.asarray(nonzero)
    start = np.array([masks_lib.counts(masks)[f"{k}/kernel"][0]
                      for k in ("Conv_0", "Conv_1", "Dense_0", "Dense_1")])
    assert np.asarray(outside).max() == 0, "a pruned weight is not exactly 0"
    assert np.asarray(finite).all()
    assert (nonzero <= kept).all()
    if method in ("static", "set", "rigl"):
        assert (kept == start).all(), "per-layer non-zeros changed"
    else:
        assert (kept.sum(1) == start.sum()).all(), "global non-zeros changed"
    # Masks change only on update steps (step t's mask is the one after update() at t).
    flat = [np.asarray(x) for x in jax.tree.leaves(trace_masks)]
    previous = [np.asarray(x)[None] for x in jax.tree.leaves(masks)]
    changed = np.zeros(STEPS, bool)
    for m, m0 in zip(flat, previous):
        full = np.concatenate([m0, m])
        changed |= (full[1:] != full[:-1]).reshape(STEPS, -1).any(1)
    allowed = np.array([bool(timing.is_update_step(t, 0, END_STEP, UPDATE_EVERY))
                        for t in range(STEPS)])
    assert not (changed & ~allowed).any()
    expected_updates = int(allowed.sum()) if method != "static" else 0
    assert int(sparsejax.dst.find_state(state).mask_updates) == expected_updates
    if method != "static":
        assert changed.sum() > expected_updates // 2, "the mask hardly ever changed"
    if method in ("dsr", "ggr"):
        assert (kept != start).any(), "no layer's density moved"
