"""Masks at initialization: hand-computed scores, exact sparsity, SynFlow vs layer collapse, IMP."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import distributions, masks as masks_lib, paths
from sparsejax import pruning

# --------------------------------------------------------------------------------------------------
# A 2-2-2 linear network small enough to differentiate by hand. Flax kernels are (in, out): x @ W.
#   W1 = [[1, 2], [3, -1]],  W2 = [[1, 2], [-1, -5]],  biases 0 (never pruned, not scored).
#   Batch A: x = [1, 1], y = 0  ->  h = x W1 = [4, 1],  z = h W2 = [3, 3],  softmax p = [1/2, 1/2].
#   Batch B: x = [2, 2], y = 0  ->  h = [8, 2],  z = [6, 6],  p = [1/2, 1/2].
# With equal logits, ∂L/∂z = p − onehot(y) = [−1/2, 1/2] =: δ for both batches.


class TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(2, name="Dense_0")(x)
        return nn.Dense(2, name="Dense_1")(x)


HAND_PARAMS = {"Dense_0": {"kernel": jnp.array([[1.0, 2.0], [3.0, -1.0]]), "bias": jnp.zeros(2)},
               "Dense_1": {"kernel": jnp.array([[1.0, 2.0], [-1.0, -5.0]]), "bias": jnp.zeros(2)}}
BATCH_A = {"x": jnp.array([[1.0, 1.0]]), "y": jnp.array([0])}
BATCH_B = {"x": jnp.array([[2.0, 2.0]]), "y": jnp.array([0])}


def hand_apply(params, x):
    return TwoLayer().apply({"params": params}, x)


def assert_scores(got, want):
    assert list(got) == list(want)
    for path in want:
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(want[path]), err_msg=path)


def test_magnitude_scores_are_abs_weights():
    assert_scores(pruning.magnitude_scores(HAND_PARAMS),
                  {"Dense_0/kernel": [[1, 2], [3, 1]], "Dense_1/kernel": [[1, 2], [1, 5]]})


def test_snip_scores_by_hand():
    # Batch A: ∂L/∂W2 = hᵀδ = [[-2, 2], [-1/2, 1/2]];  ∂L/∂h = δ W2ᵀ = [1/2, -2];
    #          ∂L/∂W1 = xᵀ(δ W2ᵀ) = [[1/2, -2], [1/2, -2]].
    # Batch B: h doubles and x doubles: ∂L/∂W2 = [[-4, 4], [-1, 1]], ∂L/∂W1 = [[1, -4], [1, -4]].
    # Sum g: W1 [[3/2, -6], [3/2, -6]], W2 [[-6, 6], [-3/2, 3/2]].
    # |g ⊙ w|: W1 |[[3/2, -12], [9/2, 6]]|, W2 |[[-6, 12], [3/2, -15/2]]|.
    got = pruning.snip_scores(HAND_PARAMS, hand_apply, [BATCH_A, BATCH_B])
    assert_scores(got, {"Dense_0/kernel": [[1.5, 12], [4.5, 6]],
                        "Dense_1/kernel": [[6, 12], [1.5, 7.5]]})


def test_snip_sums_gradients_before_the_absolute_value():
    # Label 1 instead of 0 flips δ, so the two batches' gradients cancel: g = 0 and every score is 0
    # (taking |g_b ⊙ w| per batch and summing would give twice batch A's scores instead).
    flipped = {"x": BATCH_A["x"], "y": jnp.array([1])}
    got = pruning.snip_scores(HAND_PARAMS, hand_apply, iter([BATCH_A, flipped]))
    assert_scores(got, {"Dense_0/kernel": np.zeros((2, 2)), "Dense_1/kernel": np.zeros((2, 2))})


def test_grasp_scores_by_hand_at_temperature_1():
    # g on batch A (above): U1 = [[1/2, -2], [1/2, -2]], U2 = [[-2, 2], [-1/2, 1/2]].
    # Hg = directional derivative of ∇L along g (biases are not prunable: no tangent on them).
    #   dh = x U1 = [1, -4];  dz = dh W2 + h U2 = [5, 22] + [-8.5, 8.5] = [-3.5, 30.5]
    #   dp = (diag p − p pᵀ) dz = 1/4·[[1, -1], [-1, 1]]·dz = [-8.5, 8.5] = dδ
    #   Hg_W2 = dhᵀδ + hᵀdδ = [[-1/2, 1/2], [2, -2]] + [[-34, 34], [-8.5, 8.5]]
    #         = [[-34.5, 34.5], [-6.5, 6.5]]
    #   Hg_W1 = xᵀ(dδ W2ᵀ + δ U2ᵀ) = xᵀ([8.5, -34] + [2, 1/2]) = [[10.5, -33.5], [10.5, -33.5]]
    # θ ⊙ Hg: W1 [[10.5, -67], [31.5, 33.5]], W2 [[-34.5, 69], [6.5, -32.5]].
    got = pruning.grasp_scores(HAND_PARAMS, hand_apply, [BATCH_A], temperature=1.0)
    assert_scores(got, {"Dense_0/kernel": [[10.5, -67], [31.5, 33.5]],
                        "Dense_1/kernel": [[-34.5, 69], [6.5, -32.5]]})


def test_grasp_scores_by_hand_at_temperature_2():
    # Logits / 2: δ = [-1/4, 1/4];  U2 = hᵀδ = [[-1, 1], [-1/4, 1/4]];
    #   U1 = xᵀ(δ W2ᵀ) = rows [1/4, -1]
    #   dh = [1/2, -2];  dz = dh W2 + h U2 = [2.5, 11] + [-4.25, 4.25] = [-1.75, 15.25]
    #   dp = 1/4·[[1, -1], [-1, 1]]·dz/2 = [-2.125, 2.125];  dδ = dp/2 = [-1.0625, 1.0625]
    #   Hg_W2 = dhᵀδ + hᵀdδ = [[-1/8, 1/8], [1/2, -1/2]] + [[-4.25, 4.25], [-1.0625, 1.0625]]
    #         = [[-4.375, 4.375], [-0.5625, 0.5625]]
    #   Hg_W1 = xᵀ(dδ W2ᵀ + δ U2ᵀ) = xᵀ([1.0625, -4.25] + [1/2, 1/8]) = rows [1.5625, -4.125]
    got = pruning.grasp_scores(HAND_PARAMS, hand_apply, [BATCH_A], temperature=2.0)
    assert_scores(got, {"Dense_0/kernel": [[1.5625, -8.25], [4.6875, 4.125]],
                        "Dense_1/kernel": [[-4.375, 8.75], [0.5625, -2.8125]]})


def test_synflow_scores_by_hand():
    # |W1| = [[1, 2], [3, 1]], |W2| = [[1, 2], [1, 5]], input ones(1, 2):
    #   h = [4, 3], z = [7, 23], R = 30.
    #   ∂R/∂W2[i, j] = h_i -> score |W2| ⊙ [[4, 4], [3, 3]] = [[4, 8], [3, 15]]  (sums to R)
    #   ∂R/∂W1[i, j] = Σ_k |W2|[j, k] = [3, 6] -> score |W1| ⊙ [[3, 6], [3, 6]] = [[3, 12], [9, 6]]
    got = pruning.synflow_scores(HAND_PARAMS, hand_apply, (1, 2))
    assert_scores(got, {"Dense_0/kernel": [[3, 12], [9, 6]], "Dense_1/kernel": [[4, 8], [3, 15]]})
    assert all(v.dtype == np.float64 for v in got.values())


def test_synflow_scores_on_masked_weights():
    # W2[1, 1] pruned: |W2| ⊙ m = [[1, 2], [1, 0]], h = [4, 3], z = [7, 8], R = 15.
    #   W2 scores [[4, 8], [3, 0]];  column sums of masked W2 rows: [3, 1] -> W1 [[3, 2], [9, 1]].
    pruned = {"Dense_1/kernel": np.array([[True, True], [True, False]])}
    got = pruning.synflow_scores(HAND_PARAMS, hand_apply, (1, 2), masks=pruned)
    assert_scores(got, {"Dense_0/kernel": [[3, 2], [9, 1]], "Dense_1/kernel": [[4, 8], [3, 0]]})


def test_scores_dispatches_by_name():
    batches = [BATCH_A, BATCH_B]
    assert_scores(pruning.scores("snip", HAND_PARAMS, apply_fn=hand_apply, batches=batches),
                  pruning.snip_scores(HAND_PARAMS, hand_apply, batches))
    assert_scores(pruning.scores("synflow", HAND_PARAMS, apply_fn=hand_apply, input_shape=(1, 2)),
                  pruning.synflow_scores(HAND_PARAMS, hand_apply, (1, 2)))


def test_find_mask_keeps_the_largest_hand_scores():
    # SynFlow, one round, 50% of 8 weights: scores 15, 12, 9, 8 are the four largest.
    masks = pruning.find_mask("synflow", HAND_PARAMS, 0.5, apply_fn=hand_apply, input_shape=(1, 2),
                              rounds=1)
    np.testing.assert_array_equal(masks["Dense_0"]["kernel"], [[False, True], [True, False]])
    np.testing.assert_array_equal(masks["Dense_1"]["kernel"], [[False, True], [False, True]])
    # GraSP at T = 1 keeps the largest θ ⊙ Hg (signed): 69, 33.5, 31.5, 10.5.
    masks = pruning.find_mask("grasp", HAND_PARAMS, 0.5, apply_fn=hand_apply, batches=[BATCH_A],
                              temperature=1.0)
    np.testing.assert_array_equal(masks["Dense_0"]["kernel"], [[True, False], [True, True]])
    np.testing.assert_array_equal(masks["Dense_1"]["kernel"], [[False, True], [False, False]])
    assert masks["Dense_0"]["bias"].all() and masks["Dense_1"]["bias"].all()


# --------------------------------------------------------------------------------------------------
# A small conv net with BatchNorm, biases and a ghost path: everything but the 3 kernels is kept.


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Conv(8, (3, 3), use_bias=False, name="conv1")(x)
        y = nn.BatchNorm(use_running_average=not train, name="bn1")(y)
        y = y + nn.Conv(8, (1, 1), use_bias=False, name="ghost1")(x)
        y = nn.relu(y)
        y = nn.Conv(16, (3, 3), strides=2, use_bias=False, name="conv2")(y)
        y = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn2")(y))
        return nn.Dense(10, name="fc")(y.mean(axis=(1, 2)))


KERNELS = ["conv1/kernel", "conv2/kernel", "fc/kernel"]


def numpy_init(model, input_shape, seed=0):
    """Variables of ``model`` drawn with NumPy (LeCun-normal kernels, zero biases, BatchNorm at its
    init), so that tests compile no initializer."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones(input_shape))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = paths.path_str(path)
        if name.endswith("kernel"):
            return rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        return np.ones(leaf.shape) if name.endswith(("scale", "var")) else np.zeros(leaf.shape)

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(draw(path, leaf), jnp.float32), shapes)


@pytest.fixture(scope="module")
def convnet():
    model = ConvNet()
    variables = numpy_init(model, (1, 8, 8, 3))
    params, stats = variables["params"], variables["batch_stats"]

    def train_apply(p, x):
        return model.apply({"params": p, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])[0]

    def eval_apply(p, x):
        return model.apply({"params": p, "batch_stats": stats}, x, train=False)

    rng = np.random.default_rng(0)
    batches = [{"x": jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32),
                "y": jnp.asarray(rng.integers(0, 10, size=4))} for _ in range(2)]
    return params, train_apply, eval_apply, batches


def finder_kwargs(method, convnet):
    _, train_apply, eval_apply, batches = convnet
    return {"random": {"rng": jax.random.key(3)},
            "magnitude": {},
            "snip": {"apply_fn": train_apply, "batches": batches},
            "grasp": {"apply_fn": train_apply, "batches": batches},
            "synflow": {"apply_fn": eval_apply, "input_shape": (1, 8, 8, 3), "rounds": 10},
            }[method]


def assert_untouched(masks, params):
    masks_lib.validate(masks, params)
    for path, m in paths.flatten(masks).items():
        if path not in KERNELS:
            assert np.asarray(m).all(), f"{path} was pruned"


@pytest.mark.parametrize("method", pruning.METHODS)
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9])
def test_global_scope_hits_sparsity_exactly(method, sparsity, convnet):
    params = convnet[0]
    masks = pruning.find_mask(method, params, sparsity, **finder_kwargs(method, convnet))
    assert_untouched(masks, params)
    counts = masks_lib.counts(masks, params)
    total = sum(n for _, n in counts.values())
    assert list(counts) == KERNELS
    assert sum(k for k, _ in counts.values()) == round((1 - sparsity) * total)


@pytest.mark.parametrize("method", pruning.METHODS)
def test_layer_scope_hits_every_layer_exactly(method, convnet):
    params = convnet[0]
    densities = distributions.erk(params, 0.8)
    masks = pruning.find_mask(method, params, 0.8, scope="layer", densities=densities,
                              **finder_kwargs(method, convnet))
    assert_untouched(masks, params)
    counts = masks_lib.counts(masks, params)
    for path, (kept, size) in counts.items():
        assert kept == masks_lib.kept_count(densities[path], size), path


def test_layer_scope_defaults_to_uniform_and_leaves_unnamed_layers_dense(convnet):
    params = convnet[0]
    counts = masks_lib.counts(pruning.find_mask("magnitude", params, 0.75, scope="layer"), params)
    assert all(kept == masks_lib.kept_count(0.25, n) for kept, n in counts.values())
    counts = masks_lib.counts(pruning.find_mask("magnitude", params, 0.75, scope="layer",
                                                densities={"conv2/kernel": 0.1}), params)
    assert counts["conv1/kernel"] == (216, 216) and counts["fc/kernel"] == (160, 160)
    assert counts["conv2/kernel"] == (115, 1152)


def test_magnitude_layer_scope_keeps_largest_per_layer(convnet):
    params = convnet[0]
    masks = pruning.find_mask("magnitude", params, 0.5, scope="layer")
    for path, w in paths.prunable(params).items():
        m, a = np.asarray(paths.flatten(masks)[path]), np.abs(np.asarray(w))
        assert a[m].min() >= a[~m].max(), path


def test_random_depends_on_rng_only(convnet):
    params = convnet[0]
    one = pruning.find_mask("random", params, 0.5, rng=jax.random.key(7))
    two = pruning.find_mask("random", params, 0.5, rng=jax.random.key(7))
    other = pruning.find_mask("random", params, 0.5, rng=jax.random.key(8))
    chex.assert_trees_all_equal(one, two)
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), one, other))


def test_random_draws_the_scores_of_masks_random(convnet):
    # Densities naming every prunable tensor: the same one flat draw, so the same masks.
    params, rng = convnet[0], jax.random.key(9)
    densities = distributions.erk(params, 0.7)
    chex.assert_trees_all_equal(
        pruning.find_mask("random", params, 0.7, scope="layer", densities=densities, rng=rng),
        masks_lib.random(rng, params, densities))


def test_filter_fn_selects_what_is_pruned(convnet):
    params = convnet[0]
    conv_only = lambda path, leaf: np.ndim(leaf) == 4 and not paths.is_ghost(path)  # noqa: E731
    masks = pruning.find_mask("magnitude", params, 0.5, filter_fn=conv_only)
    counts = masks_lib.counts(masks, params)
    assert counts["fc/kernel"] == (160, 160)
    assert counts["conv1/kernel"][0] + counts["conv2/kernel"][0] == round(0.5 * (216 + 1152))


# --------------------------------------------------------------------------------------------------
# Layer collapse: a deep, narrow MLP whose 5th layer starts 1000x smaller than the others.


class DeepMLP(nn.Module):
    widths: tuple = (32, 24, 40, 16, 32, 24, 48, 16, 32, 10)

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, use_bias=False, name=f"dense{i}")(x)
            if i < len(self.widths) - 1:
                x = nn.relu(x)
        return x


def deep_apply(params, x):
    return DeepMLP().apply({"params": params}, x)


@pytest.fixture(scope="module")
def deep_params():
    params = numpy_init(DeepMLP(), (1, 8))["params"]
    params["dense4"]["kernel"] = params["dense4"]["kernel"] * 1e-3  # the layer to collapse
    return params


def conducts(params, masks):
    """R = Σ outputs of |θ| ⊙ m on ones: > 0 exactly when some input-output path survives."""
    theta = jax.tree.map(lambda w, m: np.abs(w) * m, params, masks)
    return float(jax.jit(deep_apply)(theta, jnp.ones((1, 8))).sum()) > 0


def test_synflow_avoids_the_layer_collapse_of_global_magnitude(deep_params):
    params = deep_params
    total = sum(np.size(w) for w in paths.prunable(params).values())

    magnitude = pruning.find_mask("magnitude", params, 0.99)
    assert masks_lib.counts(magnitude, params)["dense4/kernel"][0] == 0
    assert not conducts(params, magnitude)

    synflow = pruning.find_mask("synflow", params, 0.99, apply_fn=deep_apply, input_shape=(1, 8))
    counts = masks_lib.counts(synflow, params)
    assert sum(k for k, _ in counts.values()) == round(0.01 * total)
    assert all(kept > 0 for kept, _ in counts.values()), counts
    assert conducts(params, synflow)
    one_shot = pruning.find_mask("synflow", params, 0.99, apply_fn=deep_apply, input_shape=(1, 8),
                                 rounds=1)
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), synflow,
                                         one_shot))


def synflow_by_hand(params, apply_fn, input_shape, density, rounds):
    """Iterative SynFlow from ``pruning.synflow_scores`` and a NumPy top-k: round r scores the
    weights alive after round r − 1 and keeps the kept_count(d^((r+1)/R), N) largest, pruned ones
    never (ties to the lower global flat index, tree order)."""
    prunable = paths.prunable(params)
    starts = np.cumsum([0] + [np.size(w) for w in prunable.values()])
    alive = {p: np.ones(np.shape(w), bool) for p, w in prunable.items()}
    for r in range(rounds):
        scores = pruning.synflow_scores(params, apply_fn, input_shape, masks=alive)
        flat = np.concatenate([np.where(alive[p], scores[p], -1.0).reshape(-1) for p in prunable])
        keep = np.zeros(flat.size, bool)
        keep[np.argsort(-flat, kind="stable")[:masks_lib.kept_count(density ** ((r + 1) / rounds),
                                                                    flat.size)]] = True
        alive = {p: keep[a:b].reshape(np.shape(w))
                 for (p, w), a, b in zip(prunable.items(), starts, starts[1:])}
    return alive


def test_synflow_rescores_under_the_mask_of_each_round(deep_params):
    # Two rounds at d = 0.1: score the dense net, keep round(0.1^(1/2)·N); rescore the survivors,
    # keep round(0.1·N). One shot (top round(0.1·N) of the dense scores) is a different mask.
    params = deep_params
    got = pruning.find_mask("synflow", params, 0.9, apply_fn=deep_apply, input_shape=(1, 8),
                            rounds=2)
    two_rounds = synflow_by_hand(params, deep_apply, (1, 8), 0.1, 2)
    chex.assert_trees_all_equal({p: got_m for p, got_m in paths.flatten(got).items()
                                 if p in two_rounds}, two_rounds)
    one_shot = synflow_by_hand(params, deep_apply, (1, 8), 0.1, 1)
    assert sum(int((two_rounds[p] != one_shot[p]).sum()) for p in one_shot) > 100
    assert pruning.SYNFLOW_ROUNDS == 100


def test_synflow_runs_in_float64_where_float32_overflows(deep_params):
    # Weights 1e5 times larger: every layer multiplies R by ~1e5, R ~ 1e50 > float32's 3.4e38.
    params = jax.tree.map(lambda w: w * 1e5, deep_params)
    assert not np.isfinite(float(jax.jit(deep_apply)(jax.tree.map(np.abs, params),
                                                     jnp.ones((1, 8))).sum()))
    masks = pruning.find_mask("synflow", params, 0.99, apply_fn=deep_apply, input_shape=(1, 8))
    counts = masks_lib.counts(masks, params)
    assert sum(k for k, _ in counts.values()) == round(0.01 * sum(n for _, n in counts.values()))
    assert all(kept > 0 for kept, _ in counts.values())
    assert conducts(deep_params, masks)  # R of the unscaled network: float32 suffices


def test_synflow_rounds_follow_the_exponential_schedule():
    # With rounds=R the last round lands on d exactly; fewer rounds give the same count.
    params = HAND_PARAMS
    for rounds in (1, 2, 3):
        masks = pruning.find_mask("synflow", params, 0.5, apply_fn=hand_apply, input_shape=(1, 2),
                                  rounds=rounds)
        assert sum(k for k, _ in masks_lib.counts(masks, params).values()) == 4


# --------------------------------------------------------------------------------------------------
# IMP steps.


def test_imp_follows_one_minus_point_eight_to_the_r(convnet):
    params = convnet[0]
    total = sum(np.size(w) for w in paths.prunable(params).values())
    masks, kept = masks_lib.ones_like(params), total
    rng = np.random.default_rng(0)
    for r in range(1, 4):
        # Pretend training: new weights, pruned ones at exactly 0.
        trained = jax.tree.map(lambda w, m: np.where(m, w + rng.normal(size=w.shape), 0), params,
                               masks)
        new = pruning.imp_prune(trained, masks)
        kept = round(0.8 * kept)
        assert sum(k for k, _ in masks_lib.counts(new, params).values()) == kept
        assert abs(masks_lib.sparsity(new, params) - (1 - 0.8 ** r)) <= r / total
        assert jax.tree.all(jax.tree.map(lambda n, o: bool(np.all(~n | o)), new, masks))  # nested
        assert_untouched(new, params)
        masks = new
    chex.assert_trees_all_equal(pruning.rewind(params, masks),
                                jax.tree.map(lambda w, m: np.where(m, w, 0), params, masks))


def test_imp_prunes_within_the_current_mask_whatever_the_masked_weights_hold(convnet):
    # The masked-out weights hold large values (as if the loop did not zero them): they must stay
    # pruned, and the count goes from the mask's kept count k to round(0.8·k), not from the size.
    params = convnet[0]
    masks = pruning.find_mask("random", params, 0.6, rng=jax.random.key(11))
    alive = sum(k for k, _ in masks_lib.counts(masks, params).values())
    assert alive == round(0.4 * (216 + 1152 + 160))
    trained = jax.tree.map(lambda w, m: np.where(m, w, -1e3 * (1 + np.abs(w))), params, masks)
    new = pruning.imp_prune(trained, masks)
    assert sum(k for k, _ in masks_lib.counts(new, params).values()) == round(0.8 * alive)
    assert jax.tree.all(jax.tree.map(lambda n, o: bool(np.all(~n | o)), new, masks))  # nested
    assert_untouched(new, params)
    # Among the survivors the largest magnitudes are kept, over all kernels together.
    old, now, w = paths.flatten(masks), paths.flatten(new), paths.flatten(trained)
    kept = np.concatenate([np.abs(w[p])[now[p]] for p in KERNELS])
    dropped = np.concatenate([np.abs(w[p])[old[p] & ~now[p]] for p in KERNELS])
    assert kept.min() >= dropped.max()


def test_imp_prunes_the_smallest_surviving_magnitudes():
    masks = pruning.imp_prune(HAND_PARAMS, masks_lib.ones_like(HAND_PARAMS), 0.5)
    # |W1| = [[1, 2], [3, 1]], |W2| = [[1, 2], [1, 5]]: keep 5, 3, 2, 2.
    np.testing.assert_array_equal(masks["Dense_0"]["kernel"], [[False, True], [True, False]])
    np.testing.assert_array_equal(masks["Dense_1"]["kernel"], [[False, True], [False, True]])


# --------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "obd"}, "unknown pruning method 'obd'"),
    ({"sparsity": 1.0}, r"sparsity is 1.0; it must lie in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity is -0.1"),
    ({"scope": "tensor"}, "unknown scope 'tensor'"),
    ({"method": "snip", "batches": [BATCH_A]}, "snip needs the model: pass apply_fn"),
    ({"method": "grasp", "apply_fn": hand_apply}, "grasp needs data: pass batches"),
    ({"method": "snip", "apply_fn": hand_apply, "batches": []}, "snip got no batches"),
    ({"method": "snip", "apply_fn": hand_apply, "batches": [(1, 2)]}, "batch 0 for snip"),
    ({"method": "grasp", "apply_fn": hand_apply, "batches": [BATCH_A], "temperature": 0},
     "grasp temperature is 0"),
    ({"method": "synflow", "apply_fn": hand_apply}, "synflow needs input_shape"),
    ({"method": "synflow", "input_shape": (1, 2)}, "synflow needs the model"),
    ({"method": "synflow", "apply_fn": hand_apply, "input_shape": (1, 2), "rounds": 0},
     "synflow rounds is 0"),
    ({"rounds": 5}, "rounds applies only to 'synflow'"),
    ({"densities": {"Dense_0/kernel": 0.5}}, "apply only to scope='layer'"),
    ({"scope": "layer", "densities": {"Dense_0/bias": 0.5}}, "'Dense_0/bias', which is not prun"),
    ({"scope": "layer", "densities": {"Dense_9/kernel": 0.5}}, "'Dense_9/kernel', which is not a"),
    ({"scope": "layer", "densities": {"Dense_0/kernel": 1.5}}, "of 'Dense_0/kernel' is 1.5"),
])
def test_bad_input_names_the_problem(kwargs, match):
    args = {"method": "magnitude", "params": HAND_PARAMS, "sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        pruning.find_mask(args.pop("method"), args.pop("params"), args.pop("sparsity"), **args)


NO_PRUNABLE = {"bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}}
NO_PRUNABLE_MESSAGE = (r"^no prunable parameters found \(default: kernels with ndim >= 2, not "
                       r"ghost\); pass a filter_fn that selects the tensors to prune$")


@pytest.mark.parametrize("method", pruning.METHODS)
def test_no_prunable_tensor_is_an_error(method):
    with pytest.raises(ValueError, match=NO_PRUNABLE_MESSAGE):
        pruning.find_mask(method, NO_PRUNABLE, 0.5, apply_fn=hand_apply, batches=[BATCH_A],
                          input_shape=(1, 3))


@pytest.mark.parametrize("call", [
    lambda: pruning.imp_prune(NO_PRUNABLE, masks_lib.ones_like(NO_PRUNABLE)),
    lambda: pruning.magnitude_scores(NO_PRUNABLE),
    lambda: pruning.synflow_scores(NO_PRUNABLE, hand_apply, (1, 3)),
    lambda: distributions.erk(NO_PRUNABLE, 0.5),
    lambda: distributions.uniform(NO_PRUNABLE, 0.5),
    lambda: paths.prunable(NO_PRUNABLE, required=True),
])
def test_no_prunable_tensor_is_one_error_everywhere(call):
    with pytest.raises(ValueError, match=NO_PRUNABLE_MESSAGE):
        call()
    assert paths.prunable(NO_PRUNABLE) == {}  # without required: just empty


def test_nan_scores_are_an_error():
    bad = {**HAND_PARAMS, "Dense_1": {"kernel": jnp.array([[1.0, jnp.nan], [1, 1]]),
                                      "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match="magnitude scores of 'Dense_1/kernel' contain NaN"):
        pruning.find_mask("magnitude", bad, 0.5)


def test_scores_rejects_random_and_unknown():
    with pytest.raises(ValueError, match="'random' has no scores"):
        pruning.scores("random", HAND_PARAMS)


def test_imp_bad_input():
    with pytest.raises(ValueError, match="IMP fraction is 1.0"):
        pruning.imp_prune(HAND_PARAMS, masks_lib.ones_like(HAND_PARAMS), 1.0)
    with pytest.raises(ValueError, match="mask is missing parameter"):
        pruning.imp_prune(HAND_PARAMS, {"Dense_0": masks_lib.ones_like(HAND_PARAMS["Dense_0"])})
