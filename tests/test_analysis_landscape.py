"""Loss landscape (sparsejax.analysis.landscape): filter-normalised, mask-restricted directions and
1-D / 2-D surfaces, checked against hand computations in numpy."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import masks as masks_lib
from sparsejax import paths
from sparsejax.analysis import landscape


class Net(nn.Module):
    """conv (3,3,2,4) + BatchNorm + a 1x1 ghost conv (2->4, never pruned) -> mean pool -> head (4,3)."""

    @nn.compact
    def __call__(self, x):
        y = nn.BatchNorm(use_running_average=True, name="bn")(nn.Conv(4, (3, 3), name="conv")(x))
        y = nn.relu(y + nn.Conv(4, (1, 1), name="ghost")(x))
        return nn.Dense(3, name="head")(y.mean(axis=(1, 2)))


NET = Net()
_VARIABLES = jax.jit(NET.init)(jax.random.key(0), jnp.ones((1, 6, 6, 2)))
BATCH_STATS = _VARIABLES["batch_stats"]


def _masks(params):
    """Half of conv/kernel and head/kernel pruned at random, plus conv filter 0 pruned entirely."""
    drawn = masks_lib.random(jax.random.key(1), params, {"conv/kernel": 0.5, "head/kernel": 0.5})
    flat = {p: np.array(m) for p, m in paths.flatten(drawn).items()}
    flat["conv/kernel"][..., 0] = False
    return paths.unflatten(params, {p: jnp.asarray(m) for p, m in flat.items()})


MASKS = _masks(_VARIABLES["params"])
PARAMS = masks_lib.apply(_VARIABLES["params"], MASKS)


@jax.jit
def loss_fn(params, batch):
    """Cross-entropy of the net in eval mode (BatchNorm statistics closed over)."""
    logits = NET.apply({"params": params, "batch_stats": BATCH_STATS}, batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


def _batch(seed, n=4):
    key_x, key_y = jax.random.split(jax.random.key(seed))
    return {"image": jax.random.normal(key_x, (n, 6, 6, 2)),
            "label": jax.random.randint(key_y, (n,), 0, 3)}


BATCHES = [_batch(10), _batch(11, n=3)]  # two shapes: the mean is over batches, not examples


def _mean_loss(params):
    return np.mean([float(loss_fn(params, b)) for b in BATCHES])


def _np(tree):
    return {p: np.asarray(v, np.float64) for p, v in paths.flatten(tree).items()}


# --- directions -------------------------------------------------------------------------------------

def test_direction_is_zero_at_pruned_weights_and_vectors():
    d = landscape.random_direction(PARAMS, MASKS, jax.random.key(2))
    chex.assert_trees_all_equal_shapes_and_dtypes(d, PARAMS)
    m = {p: np.asarray(v) for p, v in paths.flatten(MASKS).items()}
    for path, value in _np(d).items():
        if value.ndim <= 1:  # biases, BatchNorm scale and bias: the reference's ignore="biasbn"
            assert np.all(value == 0.0), path
        else:
            assert np.all(value[~m[path]] == 0.0), path
            assert np.all(value[m[path]] != 0.0), path  # Gaussian, nonzero at every kept weight
    assert np.all(_np(d)["ghost/kernel"] != 0.0)  # never pruned: all-True mask, perturbed


def test_filter_norms_equal_masked_weight_filter_norms():
    raw = _VARIABLES["params"]  # nonzero at pruned weights: only active entries may count
    d = _np(landscape.random_direction(raw, MASKS, jax.random.key(3)))
    w = _np(masks_lib.apply(raw, MASKS))
    for path in ("conv/kernel", "ghost/kernel", "head/kernel"):
        out = w[path].shape[-1]  # HWIO / (in, out): a filter is [..., o]
        want = np.array([np.linalg.norm(w[path][..., o]) for o in range(out)])
        got = np.array([np.linalg.norm(d[path][..., o]) for o in range(out)])
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=path)
    assert np.all(d["conv/kernel"][..., 0] == 0.0)  # a filter without active weights stays at 0


def test_direction_depends_on_rng_and_filter_fn():
    a = _np(landscape.random_direction(PARAMS, MASKS, jax.random.key(4)))
    b = _np(landscape.random_direction(PARAMS, MASKS, jax.random.key(5)))
    assert not np.allclose(a["head/kernel"], b["head/kernel"])
    prunable = _np(landscape.random_direction(PARAMS, MASKS, jax.random.key(4),
                                              filter_fn=paths.default_filter))
    assert np.all(prunable["ghost/kernel"] == 0.0)
    np.testing.assert_array_equal(prunable["conv/kernel"], a["conv/kernel"])
    everything = _np(landscape.random_direction(PARAMS, MASKS, jax.random.key(4),
                                                filter_fn=lambda path, leaf: True))
    # a chosen 1-D tensor gets the reference's non-"biasbn" branch: the weight itself (d.copy_(w))
    np.testing.assert_array_equal(everything["bn/scale"], _np(PARAMS)["bn/scale"])
    np.testing.assert_array_equal(everything["conv/bias"], _np(PARAMS)["conv/bias"])


# --- 1-D surfaces -----------------------------------------------------------------------------------

def test_surface_1d_center_is_loss_at_params():
    alphas, losses = landscape.surface_1d(loss_fn, PARAMS, MASKS, BATCHES, steps=5, span=0.5,
                                          rng=jax.random.key(6))
    np.testing.assert_allclose(alphas, np.linspace(-0.5, 0.5, 5), rtol=0, atol=1e-15)
    assert alphas[2] == 0.0 and alphas[0] == -0.5 and alphas[-1] == 0.5
    assert losses.shape == (5,)
    np.testing.assert_allclose(losses[2], _mean_loss(PARAMS), rtol=1e-6)
    assert np.ptp(losses) > 1e-3  # the random direction moves the loss


def test_surface_1d_along_given_direction_matches_direct_evaluation():
    # an arbitrary params-shaped direction, nonzero everywhere (also at pruned weights and biases)
    leaves, treedef = jax.tree.flatten(PARAMS)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    direction = jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(p))
                                             for k, p in zip(keys, leaves)])
    alphas, losses = landscape.surface_1d(loss_fn, PARAMS, MASKS, BATCHES, steps=7, span=0.3,
                                          direction=direction)
    masked = {p: np.where(np.asarray(m), np.asarray(d), 0.0)
              for (p, d), m in zip(paths.flatten(direction).items(), jax.tree.leaves(MASKS))}
    for i in (0, 2, 5, 6):
        moved = paths.unflatten(PARAMS, {p: np.asarray(w) + alphas[i] * masked[p]
                                         for p, w in paths.flatten(PARAMS).items()})
        moved = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), moved)
        np.testing.assert_allclose(losses[i], _mean_loss(moved), rtol=1e-5, err_msg=str(i))


# --- 2-D surfaces -----------------------------------------------------------------------------------

QUAD_PARAMS = {"a": {"kernel": jnp.zeros((2, 2))}, "b": {"bias": jnp.zeros((2,))}}
QUAD_MASKS = {"a": {"kernel": jnp.array([[True, True], [True, False]])},
              "b": {"bias": jnp.ones((2,), bool)}}
QUAD_BATCHES = [{"scale": jnp.float32(1.0)}, {"scale": jnp.float32(3.0)}]  # mean factor 2


def quad_loss(params, batch):
    """scale · ‖w‖²: along directions d1 ⊥ d2 through w = 0, a paraboloid α²‖d1‖² + β²‖d2‖²."""
    return batch["scale"] * sum(jnp.sum(x * x) for x in jax.tree.leaves(params))


def test_surface_2d_quadratic_paraboloid_by_hand():
    # d1 = e_(0,0); d2 = 2 e_bias0 plus 5 at the pruned weight (1,1), which the mask removes
    d1 = {"a": {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]])}, "b": {"bias": jnp.zeros(2)}}
    d2 = {"a": {"kernel": jnp.array([[0.0, 0.0], [0.0, 5.0]])}, "b": {"bias": jnp.array([2.0, 0])}}
    alphas, betas, losses = landscape.surface_2d(quad_loss, QUAD_PARAMS, QUAD_MASKS, QUAD_BATCHES,
                                                 steps=5, span=1.0, directions=(d1, d2))
    np.testing.assert_array_equal(alphas, [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(betas, alphas)
    assert losses.shape == (5, 5)
    # losses[j, i] = 2 (α_i² + 4 β_j²): rows β, columns α
    np.testing.assert_allclose(losses, 2 * (alphas[None, :] ** 2 + 4 * betas[:, None] ** 2),
                               rtol=1e-6)
    assert losses[2, 2] == 0.0 and losses[2, 4] == 2.0 and losses[4, 2] == 8.0
    assert losses[0, 4] == 10.0
    np.testing.assert_array_equal(losses, losses[::-1, :])
    np.testing.assert_array_equal(losses, losses[:, ::-1])


def test_surface_2d_matches_direct_evaluation_off_center():
    w = {"a": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.0]])}, "b": {"bias": jnp.array([1.0, 3.0])}}
    d1 = {"a": {"kernel": jnp.array([[1.0, 2.0], [0.0, 7.0]])}, "b": {"bias": jnp.array([0.0, 1.0])}}
    d2 = {"a": {"kernel": jnp.array([[0.0, 1.0], [-1.0, 7.0]])}, "b": {"bias": jnp.array([2.0, 0])}}
    alphas, betas, losses = landscape.surface_2d(quad_loss, w, QUAD_MASKS, QUAD_BATCHES, steps=3,
                                                 span=2.0, directions=(d1, d2))
    m = _np(QUAD_MASKS)
    for j, beta in enumerate(betas):
        for i, alpha in enumerate(alphas):
            want = 2 * sum(np.sum((_np(w)[p] + m[p] * (alpha * _np(d1)[p] + beta * _np(d2)[p])) ** 2)
                           for p in m)
            np.testing.assert_allclose(losses[j, i], want, rtol=1e-6, err_msg=f"{j},{i}")


def test_surface_2d_center_and_random_directions():
    rng = jax.random.key(8)
    alphas, betas, losses = landscape.surface_2d(loss_fn, PARAMS, MASKS, BATCHES, steps=3,
                                                 span=0.5, rng=rng)
    assert losses.shape == (3, 3)
    np.testing.assert_allclose(losses[1, 1], _mean_loss(PARAMS), rtol=1e-6)
    first, second = jax.random.split(rng)
    given = (landscape.random_direction(PARAMS, MASKS, first),
             landscape.random_direction(PARAMS, MASKS, second))
    _, _, again = landscape.surface_2d(loss_fn, PARAMS, MASKS, BATCHES, steps=3, span=0.5,
                                       directions=given)
    np.testing.assert_allclose(losses, again, rtol=1e-6)
    assert not np.allclose(losses[1, :], losses[:, 1])  # two different directions


# --- errors -----------------------------------------------------------------------------------------

def _bad_masks():
    flat = paths.flatten(MASKS)
    flat["head/kernel"] = jnp.ones((3, 4), bool)
    return paths.unflatten(MASKS, flat)


KEY = jax.random.key(9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=1), "steps is 1"),
    (dict(steps=2.5), "steps is 2.5"),
    (dict(span=0.0), "span is 0.0"),
    (dict(span=-1.0), "span is -1.0"),
    (dict(masks=_bad_masks()), "head/kernel"),
    (dict(masks={"conv": {}}), "missing parameter"),
    (dict(batches=[]), "batches is empty"),
    (dict(batches=BATCHES[0]), "single batch"),
    (dict(rng=None), "exactly one of rng"),
    (dict(direction=PARAMS), "exactly one of rng"),
    (dict(rng=None, direction={"conv": PARAMS["conv"]}), "no entry for parameter"),
    (dict(rng=None, direction=jax.tree.map(lambda x: x[None], PARAMS)), "has shape"),
])
def test_surface_1d_errors(kwargs, match):
    call = dict(masks=MASKS, batches=BATCHES, rng=KEY) | kwargs
    with pytest.raises(ValueError, match=match):
        landscape.surface_1d(loss_fn, PARAMS, call.pop("masks"), call.pop("batches"), **call)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps is 0"),
    (dict(span=float("inf")), "span is inf"),
    (dict(masks=_bad_masks()), "head/kernel"),
    (dict(batches=[]), "batches is empty"),
    (dict(rng=None), "exactly one of rng"),
    (dict(rng=None, directions=(PARAMS,)), "pair"),
    (dict(rng=None, directions=(PARAMS, {"conv": PARAMS["conv"]})), r"directions\[1\]"),
])
def test_surface_2d_errors(kwargs, match):
    call = dict(masks=MASKS, batches=BATCHES, rng=KEY) | kwargs
    with pytest.raises(ValueError, match=match):
        landscape.surface_2d(loss_fn, PARAMS, call.pop("masks"), call.pop("batches"), **call)


def test_random_direction_rejects_masks_that_do_not_fit():
    with pytest.raises(ValueError, match="head/kernel"):
        landscape.random_direction(PARAMS, _bad_masks(), KEY)


def test_non_scalar_loss_is_rejected():
    with pytest.raises(ValueError, match="scalar"):
        landscape.surface_1d(lambda p, b: jnp.stack([quad_loss(p, b)] * 2), QUAD_PARAMS,
                             QUAD_MASKS, QUAD_BATCHES, steps=3, rng=KEY)
