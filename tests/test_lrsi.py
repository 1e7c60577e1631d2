"""LRsI (sparsejax.recipe.lrsi): one scale per tensor, lower bounds, zeros stay zero, GradInit's
steps, the batch order, a lower first-step objective than the masked init, and the input errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import distributions, masks, paths
from sparsejax.recipe import lrsi


class Net(nn.Module):
    """Two conv + BatchNorm blocks and a dense head: kernels are pruned, biases and BN are not."""

    @nn.compact
    def __call__(self, x, train=True):
        for i, features in enumerate((8, 16), start=1):
            x = nn.Conv(features, (3, 3), name=f"conv{i}")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, name=f"bn{i}")(x))
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def lecun_init(rng):
    """Flax's defaults drawn with NumPy (no PRNG program to compile): LeCun-normal kernels, unit
    BatchNorm scales and variances, zero biases and means."""
    def init(path, leaf):
        name = paths.key_name(path[-1])
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape).astype(np.float32) / np.sqrt(fan_in))
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)
    return init


MODEL = Net()
SHAPES = jax.eval_shape(MODEL.init, jax.random.key(0), jnp.ones((2, 8, 8, 3)))
VARIABLES = jax.tree_util.tree_map_with_path(lecun_init(np.random.default_rng(0)), SHAPES)
PARAMS, STATS = VARIABLES["params"], VARIABLES["batch_stats"]
MASKS = masks.random(jax.random.key(1), PARAMS, distributions.uniform(PARAMS, 0.8))
MASKED = masks.apply(PARAMS, MASKS)


def make_batches(n, seed=0, weight=1.0):
    """Random images labelled by a fixed random linear teacher (so the loss can be lowered).

    ``weight`` multiplies each example's loss: a data value, so batches of another weight reuse the
    compiled LRsI step.
    """
    rng = np.random.default_rng(seed)
    teacher = np.random.default_rng(99).normal(size=(8 * 8 * 3, 10))
    out = []
    for _ in range(n):
        x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
        out.append({"image": x, "label": (x.reshape(16, -1) @ teacher).argmax(-1),
                    "weight": np.full((16,), weight, np.float32)})
    return out


BATCHES = make_batches(6)


def loss_fn(params, batch):
    """BatchNorm in training mode; the updated running statistics are discarded."""
    logits, _ = MODEL.apply({"params": params, "batch_stats": STATS}, batch["image"], train=True,
                            mutable=["batch_stats"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return (batch["weight"] * losses).mean()


def concat(a, b):
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


@jax.jit
def masked_grad(params, batch):
    grads = jax.grad(loss_fn)(params, batch)
    return jax.tree.map(lambda g, m: g * m, grads, MASKS)


def l2(tree):
    return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


@jax.jit
def first_step_loss(params, b0, b1, b2, eta=0.1):
    """L(S~; θ − η·g/‖g‖) with g the masked gradient on S = [b0, b1] and S~ = [b0, b2]."""
    g = masked_grad(params, concat(b0, b1))
    norm = l2(g)
    return loss_fn(jax.tree.map(lambda p, d: p - eta * d / norm, params, g), concat(b0, b2))


def objective(params):
    """The mean first-step loss over the triples (b_c, b_c+1, b_c+2) of BATCHES, cyclically."""
    n = len(BATCHES)
    return float(np.mean([first_step_loss(params, *(BATCHES[(c + k) % n] for k in range(3)))
                          for c in range(n)]))


@pytest.fixture(scope="module")
def result():
    return lrsi.rescale(loss_fn, PARAMS, MASKS, BATCHES)


def test_one_scale_per_parameter_tensor(result):
    _, scales = result
    assert list(scales) == list(paths.flatten(PARAMS))
    assert all(isinstance(s, float) and math.isfinite(s) for s in scales.values())


def test_scales_respect_their_lower_bounds_and_moved(result):
    _, scales = result
    for path, scale in scales.items():
        assert scale >= (0.0 if path.endswith("bias") else 0.01), path
    # The flax biases start at 0: a zero tensor is skipped (RescaleAdam) and keeps scale 1 exactly.
    assert all(scales[p] == 1.0 for p in scales if p.endswith("bias"))
    assert all(abs(scales[p] - 1.0) > 1e-3 for p in scales if not p.endswith("bias"))


def test_pruned_weights_stay_zero_and_params_are_scale_times_masked_init(result):
    out, scales = result
    assert jax.tree.structure(out) == jax.tree.structure(PARAMS)
    flat_out, flat_in, flat_mask = paths.flatten(out), paths.flatten(PARAMS), paths.flatten(MASKS)
    for path, scale in scales.items():
        got, mask = np.asarray(flat_out[path]), np.asarray(flat_mask[path])
        want = np.float32(scale) * np.where(mask, np.asarray(flat_in[path]), np.float32(0))
        assert got.dtype == np.asarray(flat_in[path]).dtype
        np.testing.assert_array_equal(got, want, err_msg=path)
        assert np.all(got[~mask] == 0), path
    assert masks.sparsity(jax.tree.map(lambda p: p != 0, out), PARAMS) >= 0.8


def test_first_step_objective_is_lower_than_at_the_masked_init(result):
    out, _ = result
    before, after = objective(MASKED), objective(out)
    assert after < before - 1e-3, (before, after)


def scaled(alpha, tree=MASKED):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [a * leaf for a, leaf in zip(alpha, leaves)])


TINY = 1e-8  # loss scale that makes the α-gradients about Adam's ε (1e-8)
TINY_BATCHES = make_batches(6, weight=TINY)


@pytest.mark.parametrize("gamma, clip", [(math.inf, 1.0), (math.inf, 5e-11), (1e-12, 1.0)],
                         ids=["objective", "objective-clipped", "constraint"])
def test_first_iteration_is_gradinits_rescale_adam_step(gamma, clip):
    """From α = 1, RescaleAdam's first step is α = 1 − lr·c/(|c| + ε), c the α-gradient clipped.

    Objective branch (‖g‖ <= γ): c = d/dα L(S~; α⊙θ − η·ĝ)/η, the step ĝ = g/‖g‖₂ held constant.
    Constraint branch (‖g‖ > γ): c = d/dα ‖g(S; α⊙θ)‖₂. S = [b0, b1], S~ = [b0, b2] (first batches).
    The loss is scaled by 1e-8 so that c is about ε and the step shows its size, not only its sign.
    """
    b0, b1, b2 = BATCHES[:3]
    ones = jnp.ones(len(paths.flatten(PARAMS)))
    step = jax.jit(lambda g: jax.tree.map(lambda d: 0.1 * d / l2(g), g))(
        masked_grad(MASKED, concat(b0, b1)))
    if gamma == math.inf:
        grad = jax.jit(jax.grad(lambda a: loss_fn(jax.tree.map(jnp.subtract, scaled(a), step),
                                                  concat(b0, b2)) / 0.1))(ones)
    else:
        assert TINY * float(jax.jit(l2)(masked_grad(MASKED, concat(b0, b1)))) > gamma
        grad = jax.jit(jax.grad(lambda a: l2(masked_grad(scaled(a), concat(b0, b1)))))(ones)
    raw = TINY * np.asarray(grad, np.float64)
    clipped = np.clip(raw, -clip, clip)
    active = np.array([np.any(np.asarray(x) != 0) for x in jax.tree.leaves(MASKED)])
    want = np.where(active, 1e-2 * clipped / (np.abs(clipped) + 1e-8), 0.0)
    _, scales = lrsi.rescale(loss_fn, PARAMS, MASKS, TINY_BATCHES, iterations=1, gamma=gamma,
                             gradient_clip=clip)
    moved = 1.0 - np.array(list(scales.values()))
    np.testing.assert_allclose(moved, want, rtol=1e-2, atol=1e-7)
    assert np.all(np.abs(raw[active]) > 1e-13)  # every active scale moved measurably
    if clip < 1:
        assert np.any(np.abs(raw[active]) > clip) and np.any(np.abs(raw[active]) < clip)


def quadratic(params, batch):
    """½‖θ‖²: every first step and every constraint step wants smaller scales."""
    return 0.5 * sum(jnp.sum(x ** 2) for x in jax.tree.leaves(params)) + 0.0 * jnp.sum(batch)


def test_constraint_and_objective_steps_keep_separate_first_moments():
    """Two iterations on ½‖θ‖², the first violating ‖g‖ <= γ and the second not, without clipping.

    RescaleAdam keeps one first moment per kind of step and one second moment for both, corrected by
    the total step count (gradinit_optimizers.py). With g = θ_α the α-gradients are analytic:
    constraint ∂‖θ_α‖/∂α_i = α_i‖θ_i‖²/‖θ_α‖, objective α_i‖θ_i‖²(1 − η/‖θ_α‖)/η.
    """
    params = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.full((3, 1), 2.0)}}
    sq = np.array([16.0, 12.0])  # ‖θ_i‖²
    lr, eta, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
    c1 = sq / np.sqrt(sq.sum())  # constraint gradient at α = 1
    alpha1 = 1 - lr * (c1 * (1 - b1) / (1 - b1)) / (np.sqrt(c1 ** 2 * (1 - b2) / (1 - b2)) + eps)
    norm1 = np.sqrt((alpha1 ** 2 * sq).sum())
    gamma = (np.sqrt(sq.sum()) + norm1) / 2  # violated at α = 1, holds at α1
    o2 = alpha1 * sq * (1 - eta / norm1) / eta
    v2 = b2 * (1 - b2) * c1 ** 2 + (1 - b2) * o2 ** 2
    alpha2 = alpha1 - lr * (o2 * (1 - b1) / (1 - b1)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
    _, scales = lrsi.rescale(quadratic, params, masks.ones_like(params), [jnp.ones((2,))] * 3,
                             iterations=2, gamma=float(gamma), gradient_clip=0.0)
    np.testing.assert_allclose([scales["a/kernel"], scales["b/kernel"]], alpha2, rtol=1e-5)


@pytest.mark.parametrize("gamma, grad", [(math.inf, (0.75 - 0.1 * 1.5) / 0.1), (1e-12, 1.5)],
                         ids=["objective", "constraint"])
def test_adam_first_step_is_a_sign_step_with_an_l1_norm(gamma, grad):
    """first_step="adam": θ' = θ_α − η·sign(g) and ‖g‖ = ‖g‖₁. On w·½‖θ‖² with the kept θ = three
    0.5s (‖θ‖² = 0.75, ‖θ‖₁ = 1.5) the α-gradient is w·(‖θ‖² − η‖θ‖₁)/η or w·‖θ‖₁ at α = 1."""
    params = {"dense": {"kernel": jnp.full((2, 3), 0.5)}}
    keep = {"dense": {"kernel": jnp.array([[True] * 3, [False] * 3])}}
    weight = 1e-9  # α-gradients about Adam's ε, so the first step shows their size

    def loss(p, batch):
        return batch[0] * quadratic(p, batch)

    out, scales = lrsi.rescale(loss, params, keep, [jnp.full((2,), weight)] * 3, iterations=1,
                               gamma=gamma, first_step="adam")
    c = weight * grad
    assert scales["dense/kernel"] == pytest.approx(1 - 1e-2 * c / (c + 1e-8), abs=1e-7)
    np.testing.assert_array_equal(out["dense"]["kernel"][1], 0.0)


def test_scales_stop_at_their_lower_bounds():
    params = {"dense": {"kernel": jnp.full((6, 5), 3.0), "bias": jnp.full((5,), 2.0)},
              "bn": {"scale": jnp.full((5,), 4.0), "bias": jnp.zeros((5,))}}
    keep = masks.random(jax.random.key(2), params, {"dense/kernel": 0.5})
    batches = [jnp.ones((2,))] * 3
    out, scales = lrsi.rescale(quadratic, params, keep, batches, iterations=60, learning_rate=0.1,
                               min_scale_weight=0.05)
    assert scales == {"bn/bias": 1.0, "bn/scale": pytest.approx(0.05), "dense/bias": 0.0,
                      "dense/kernel": pytest.approx(0.05)}
    assert min(scales["bn/scale"], scales["dense/kernel"]) >= np.float32(0.05)
    np.testing.assert_array_equal(out["dense"]["bias"], 0.0)
    assert int(jnp.count_nonzero(out["dense"]["kernel"])) == 15


@pytest.mark.parametrize("gamma, pairs", [
    (math.inf, {(0, 1), (0, 2), (3, 4), (3, 5), (6, 0), (6, 1), (2, 3), (2, 4)}),  # cursor + 3
    (1e-9, {(0, 1), (2, 3), (4, 5), (6, 0)}),  # violated: b2 unused, cursor + 2
], ids=["objective", "constraint"])
def test_batches_are_used_as_documented(gamma, pairs):
    """S = [b_c, b_c+1], S~ = [b_c, b_c+2]; the cursor c moves on by 3, or by 2 when ‖g‖ > γ."""
    seen = set()

    def record(ids):
        seen.add((int(ids[0]), int(ids[-1])))

    def loss(params, batch):
        jax.debug.callback(record, batch["id"])
        return quadratic(params, batch["x"])

    batches = [{"x": jnp.ones((2,)), "id": jnp.full((2,), i)} for i in range(7)]
    params = {"dense": {"kernel": jnp.full((2, 2), 0.1)}}
    lrsi.rescale(loss, params, masks.ones_like(params), batches, iterations=4, gamma=gamma)
    jax.effects_barrier()
    assert seen == pairs


BAD_MASKS = {**MASKS, "conv1": {**MASKS["conv1"], "kernel": jnp.ones((), bool)}}


@pytest.mark.parametrize("change, match", [
    ({"masks": BAD_MASKS}, "mask of 'conv1/kernel' has shape"),
    ({"batches": []}, "at least 3 batches"),
    ({"batches": BATCHES[:2]}, "at least 3 batches"),
    ({"iterations": 0}, "iterations"),
    ({"eta": 0.0}, "eta"),
    ({"eta": -0.1}, "eta"),
    ({"gamma": 0.0}, "gamma"),
    ({"min_scale_weight": -0.01}, "min_scale_weight"),
    ({"min_scale_bias": -1.0}, "min_scale_bias"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"gradient_clip": -1.0}, "gradient_clip"),
    ({"first_step": "rmsprop"}, "first_step"),
])
def test_bad_input_raises_one_line_value_error(change, match):
    kwargs = {"masks": MASKS, "batches": BATCHES, **change}
    mask, batches = kwargs.pop("masks"), kwargs.pop("batches")
    with pytest.raises(ValueError, match=match) as info:
        lrsi.rescale(loss_fn, PARAMS, mask, batches, **kwargs)
    assert "\n" not in str(info.value)


def test_batches_must_be_a_list():
    with pytest.raises(TypeError, match="list of batches"):
        lrsi.rescale(loss_fn, PARAMS, MASKS, iter(BATCHES))
