"""Hessian lens (sparsejax.analysis.hessian) and gradient flow (sparsejax.analysis.gradient_flow).

The reference is the explicit Hessian of the mean loss as a function of the flattened ACTIVE
weights only (pruned coordinates held at 0 and excluded), by ``jax.hessian``, and its
``numpy.linalg.eigvalsh``; gradient flow is checked against ``jax.grad``, the mask and
``numpy.linalg.norm``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import masks as masks_lib, paths
from sparsejax.analysis import gradient_flow, hessian

BIAS_INIT = nn.initializers.normal(0.5)  # nonzero biases: no accidental symmetry at init
# Adds WEIGHT_DECAY·I to the Hessian: at init the cross-entropy Hessian has negative eigenvalues
# about as large as the top one, and power iteration finds the largest in magnitude.
WEIGHT_DECAY = 0.3


class MLP(nn.Module):
    """hidden/kernel (4, 5) and head/kernel (5, 3): 35 prunable weights, 8 biases."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(5, bias_init=BIAS_INIT, name="hidden")(x))
        return nn.Dense(3, bias_init=BIAS_INIT, name="head")(x)


class ConvNet(nn.Module):
    """conv/kernel (3, 3, 1, 4) on 8x8 inputs and head/kernel (4, 3): 48 prunable weights."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3), bias_init=BIAS_INIT, name="conv")(x))
        return nn.Dense(3, bias_init=BIAS_INIT, name="head")(x.mean(axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class Case:
    loss_fn: Callable[[Any, Any], jax.Array]
    params: Any  # pruned weights are NOT zero: the lenses must evaluate the sparse network
    masks: Any
    batches: list


@functools.cache
def case(name: str) -> Case:
    model, shape = {"mlp": (MLP(), (6, 4)), "conv": (ConvNet(), (6, 8, 8, 1))}[name]
    init_key, mask_key = jax.random.split(jax.random.key(1))
    params = jax.jit(model.init)(init_key, jnp.ones(shape))["params"]
    densities = {p: 0.5 for p in paths.prunable(params)}
    masks = masks_lib.random(mask_key, params, densities)
    data = np.random.default_rng(1)
    batches = [{"x": data.normal(size=shape).astype(np.float32), "y": data.integers(0, 3, shape[0])}
               for _ in range(2)]

    def loss_fn(p, batch):
        logits = model.apply({"params": p}, batch["x"])
        decay = WEIGHT_DECAY / 2 * optax.tree_utils.tree_norm(p, squared=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean() + decay

    return Case(loss_fn, params, masks, batches)


def coordinates(c: Case, tensors: str, pruned: bool) -> dict[str, np.ndarray]:
    """Flat indices per tensor of the reference's variables: ``tensors`` "prunable" or "all";
    only the active coordinates unless ``pruned``."""
    flat_masks = paths.flatten(c.masks)
    chosen = paths.prunable(c.params) if tensors == "prunable" else flat_masks
    return {p: np.arange(np.size(flat_masks[p])) if pruned
            else np.flatnonzero(np.asarray(flat_masks[p])) for p in chosen}


@functools.cache
def explicit_hessian(name: str, batches: tuple[int, int], tensors: str, pruned: bool
                     ) -> np.ndarray:
    """``jax.hessian`` of the mean loss over ``case(name).batches[slice(*batches)]`` as a function
    of the ``coordinates(c, tensors, pruned)`` only, everything else held at the sparse network
    (pruned weights 0)."""
    c = case(name)
    batches = c.batches[slice(*batches)]
    index = coordinates(c, tensors, pruned)
    flat = paths.flatten(masks_lib.apply(c.params, c.masks))
    sizes = np.cumsum([0] + [len(i) for i in index.values()])

    def loss_of(w):
        values = dict(flat)
        for (p, i), a, b in zip(index.items(), sizes, sizes[1:]):
            values[p] = jnp.zeros(flat[p].size).at[i].set(w[a:b]).reshape(flat[p].shape)
        full = paths.unflatten(c.params, values)
        return jnp.mean(jnp.stack([c.loss_fn(full, batch) for batch in batches]))

    w0 = jnp.concatenate([jnp.ravel(flat[p])[i] for p, i in index.items()])
    h = np.asarray(jax.jit(jax.hessian(loss_of))(w0), np.float64)
    return (h + h.T) / 2


def gather(tree: Any, index: dict[str, np.ndarray]) -> np.ndarray:
    flat = paths.flatten(tree)
    return np.concatenate([np.ravel(np.asarray(flat[p], np.float64))[i] for p, i in index.items()])


# ---------------------------------------------------------------- top eigenvalue


@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("prunable_only", [True, False])
def test_top_eigenvalue_is_the_largest_eigenvalue_of_the_active_hessian(name, prunable_only):
    c = case(name)
    tensors = "prunable" if prunable_only else "all"
    index = coordinates(c, tensors, pruned=False)
    h = explicit_hessian(name, (0, 1), tensors, False)
    spectrum = np.linalg.eigvalsh(h)
    # power iteration finds the eigenvalue of largest magnitude: the reference must be that one
    assert spectrum[-1] > abs(spectrum[0])

    value, vector = hessian.top_eigenvalue(c.loss_fn, c.params, c.masks, c.batches[:1],
                                           iterations=2000, tol=1e-7, rng=jax.random.key(3),
                                           prunable_only=prunable_only)

    assert value == pytest.approx(spectrum[-1], rel=1e-3)
    chex.assert_trees_all_equal_shapes_and_dtypes(vector, c.params)
    flat_masks = paths.flatten(c.masks)
    for p, leaf in paths.flatten(vector).items():
        keep = np.asarray(flat_masks[p]) if p in index else np.zeros(np.shape(leaf), bool)
        assert np.all(np.asarray(leaf)[~keep] == 0), p  # pruned and excluded coordinates
    u = gather(vector, index)
    assert np.linalg.norm(u) == pytest.approx(1.0, rel=1e-5)
    assert np.linalg.norm(h @ u - value * u) < 1e-2 * value


def test_top_eigenvalue_over_two_batches_is_that_of_the_mean_hessian():
    c = case("mlp")
    first, second, both = (explicit_hessian("mlp", b, "prunable", False)
                           for b in ((0, 1), (1, 2), (0, 2)))
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-6)
    spectrum = np.linalg.eigvalsh(both)
    top = spectrum[-1]
    assert top > abs(spectrum[0])
    # the test can tell one batch, or the sum over batches, from the mean
    for wrong in (np.linalg.eigvalsh(first)[-1], np.linalg.eigvalsh(second)[-1], 2 * top):
        assert abs(wrong - top) > 0.02 * top

    value, _ = hessian.top_eigenvalue(c.loss_fn, c.params, c.masks, c.batches,
                                      iterations=2000, tol=1e-7, rng=jax.random.key(4))

    assert value == pytest.approx(top, rel=1e-3)


def test_top_eigenvalue_with_pyhessian_defaults_is_near_the_top_from_below():
    c = case("conv")
    top = np.linalg.eigvalsh(explicit_hessian("conv", (0, 2), "prunable", False))[-1]
    value, _ = hessian.top_eigenvalue(c.loss_fn, c.params, c.masks, c.batches,
                                      rng=jax.random.key(5))
    assert 0.95 * top < value <= top * (1 + 1e-5)  # a Rayleigh quotient never exceeds the top


# ---------------------------------------------------------------- trace


def test_top_eigenvalue_is_the_top_one_when_a_negative_one_dominates():
    # loss = ½ Σ d_i w_i² has the Hessian diag(d); −3 dominates in magnitude, the top is 2. The
    # pruned coordinate (d = 5) must not count.
    d = jnp.array([[-3.0, 1.0, 2.0, 5.0]])
    params = {"dense": {"kernel": jnp.ones((1, 4))}}
    masks = {"dense": {"kernel": jnp.array([[True, True, True, False]])}}

    def loss_fn(p, batch):
        return 0.5 * jnp.sum(d * p["dense"]["kernel"] ** 2) * batch

    value, vector = hessian.top_eigenvalue(loss_fn, params, masks, [jnp.float32(1.0)],
                                           rng=jax.random.key(0), tol=1e-6)
    assert value == pytest.approx(2.0, rel=1e-3)
    np.testing.assert_allclose(np.abs(vector["dense"]["kernel"]), [[0, 0, 1, 0]], atol=1e-2)


def test_hutchinson_trace_is_within_4_standard_errors_of_the_exact_active_trace():
    c = case("mlp")
    h = explicit_hessian("mlp", (0, 2), "prunable", False)
    active = np.trace(h)
    with_pruned = np.trace(explicit_hessian("mlp", (0, 2), "prunable", True))
    # for Rademacher v, Var(vᵀHv) = 2 Σ_{i≠j} H_ij²
    exact_error = np.sqrt(2 * (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)) / 300)

    mean, error = hessian.trace(c.loss_fn, c.params, c.masks, c.batches, samples=300,
                                rng=jax.random.key(6))

    assert error == pytest.approx(exact_error, rel=0.2)
    assert abs(mean - active) < 4 * error
    assert abs(with_pruned - active) > 8 * error  # an estimate over pruned coordinates would fail


def test_trace_with_all_tensors_counts_the_biases():
    c = case("mlp")
    exact = np.trace(explicit_hessian("mlp", (0, 1), "all", False))
    mean, error = hessian.trace(c.loss_fn, c.params, c.masks, c.batches[:1], samples=300,
                                rng=jax.random.key(7), prunable_only=False)
    assert abs(mean - exact) < 4 * error


def test_trace_of_one_sample_has_no_standard_error():
    c = case("mlp")
    mean, error = hessian.trace(c.loss_fn, c.params, c.masks, c.batches, samples=1,
                                rng=jax.random.key(8))
    assert np.isfinite(mean) and np.isnan(error)


# ---------------------------------------------------------------- gradient flow


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_gradient_flow_is_the_mean_over_batches_of_the_masked_gradient_norms(name):
    c = case(name)
    sparse = masks_lib.apply(c.params, c.masks)
    flat_masks = paths.flatten(c.masks)
    chosen = list(paths.prunable(c.params))
    grad_fn = jax.jit(jax.grad(c.loss_fn))
    per_batch, unmasked = [], []
    for batch in c.batches:
        grads = paths.flatten(grad_fn(sparse, batch))
        per_batch.append([np.linalg.norm(np.where(flat_masks[p], grads[p], 0)) for p in chosen])
        unmasked.append([np.linalg.norm(grads[p]) for p in chosen])
    per_batch, unmasked = np.asarray(per_batch), np.asarray(unmasked)
    layers = per_batch.mean(axis=0)
    total = np.sqrt((per_batch ** 2).sum(axis=1)).mean()

    flow = gradient_flow.average_gradient_norm(c.loss_fn, c.params, c.masks, c.batches)

    assert list(flow["layers"]) == chosen
    np.testing.assert_allclose([flow["layers"][p] for p in chosen], layers, rtol=1e-5)
    assert flow["total"] == pytest.approx(total, rel=1e-5)
    # the test can tell: the mask matters, and the mean of norms is not the norm of the mean
    assert np.all(np.abs(unmasked.mean(axis=0) - layers) > 1e-3 * layers)
    mean_gradient = np.mean([np.concatenate([np.where(flat_masks[p], g[p], 0).ravel()
                                             for p in chosen]) for g in (
        paths.flatten(grad_fn(sparse, batch)) for batch in c.batches)], axis=0)
    assert abs(np.linalg.norm(mean_gradient) - total) > 1e-3 * total


def test_gradient_flow_filter_fn_chooses_the_layers():
    c = case("mlp")
    flow = gradient_flow.average_gradient_norm(c.loss_fn, c.params, c.masks, c.batches,
                                               filter_fn=lambda p, _: p == "head/kernel")
    everything = gradient_flow.average_gradient_norm(c.loss_fn, c.params, c.masks, c.batches)
    assert list(flow["layers"]) == ["head/kernel"]
    assert flow["layers"]["head/kernel"] == pytest.approx(everything["layers"]["head/kernel"])
    assert flow["total"] == pytest.approx(flow["layers"]["head/kernel"])


# ---------------------------------------------------------------- errors


def lenses(**options):
    return {
        "top_eigenvalue": functools.partial(hessian.top_eigenvalue, rng=jax.random.key(0),
                                            iterations=2, **options),
        "trace": functools.partial(hessian.trace, samples=2, rng=jax.random.key(0), **options),
        "gradient_flow": gradient_flow.average_gradient_norm,
    }


@pytest.mark.parametrize("lens", ["top_eigenvalue", "trace", "gradient_flow"])
def test_masks_that_do_not_fit_are_refused(lens):
    c = case("mlp")
    bad = paths.unflatten(c.masks, {**paths.flatten(c.masks),
                                    "head/kernel": jnp.ones((3, 5), bool)})
    with pytest.raises(ValueError, match="head/kernel.*shape"):
        lenses()[lens](c.loss_fn, c.params, bad, c.batches)
    float_masks = jax.tree.map(lambda m: m.astype(jnp.float32), c.masks)
    with pytest.raises(ValueError, match="dtype"):
        lenses()[lens](c.loss_fn, c.params, float_masks, c.batches)


@pytest.mark.parametrize("lens", ["top_eigenvalue", "trace", "gradient_flow"])
def test_empty_batches_are_refused(lens):
    c = case("mlp")
    with pytest.raises(ValueError, match="batches is empty"):
        lenses()[lens](c.loss_fn, c.params, c.masks, [])


@pytest.mark.parametrize("iterations", [0, -1, 2.5])
def test_iterations_below_one_are_refused(iterations):
    c = case("mlp")
    with pytest.raises(ValueError, match=f"iterations is {iterations}"):
        hessian.top_eigenvalue(c.loss_fn, c.params, c.masks, c.batches, iterations=iterations,
                               rng=jax.random.key(0))


@pytest.mark.parametrize("samples", [0, -3])
def test_samples_below_one_are_refused(samples):
    c = case("mlp")
    with pytest.raises(ValueError, match=f"samples is {samples}"):
        hessian.trace(c.loss_fn, c.params, c.masks, c.batches, samples=samples,
                      rng=jax.random.key(0))


def test_negative_tolerance_is_refused():
    c = case("mlp")
    with pytest.raises(ValueError, match="tol is -0.1"):
        hessian.top_eigenvalue(c.loss_fn, c.params, c.masks, c.batches, tol=-0.1,
                               rng=jax.random.key(0))


@pytest.mark.parametrize("lens", ["top_eigenvalue", "trace"])
def test_hessian_lenses_refuse_masks_without_active_weights_and_unread_filters(lens):
    c = case("mlp")
    kernels_pruned = paths.unflatten(c.masks, {
        p: jnp.zeros(np.shape(m), bool) if p in paths.prunable(c.params) else m
        for p, m in paths.flatten(c.masks).items()})
    with pytest.raises(ValueError, match="keep no weight"):
        lenses()[lens](c.loss_fn, c.params, kernels_pruned, c.batches)
    with pytest.raises(ValueError, match="filter_fn is given with prunable_only=False"):
        lenses(prunable_only=False, filter_fn=paths.default_filter)[lens](
            c.loss_fn, c.params, c.masks, c.batches)
    with pytest.raises(ValueError, match="no prunable parameters"):
        lenses(filter_fn=lambda p, _: False)[lens](c.loss_fn, c.params, c.masks, c.batches)
