"""sparsejax.analysis.activations: zero and near-zero activation fractions per site and stage.

Checked against independent computations: the stem activation recomputed by hand (conv + BatchNorm in
eval mode + activation), a block output read with flax's ``capture_intermediates``, count-weighted
means over sites and batches. Tiny ResNets on 8×8 images; the MobileNets are only traced abstractly.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.analysis import activations
from sparsejax.models import build
from sparsejax.models.resnet import ResNet
from sparsejax.models.vgg import VGG
from sparsejax.nn import activate
from sparsejax.nn.activations import observe_activations

BN_EPS = 1e-5  # sparsejax.nn.layers.batch_norm


def _variables(model, seed=0):
    """Initial variables with random BatchNorm statistics, so that eval-mode BN shifts and scales."""
    variables = dict(model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3))))
    rng = np.random.default_rng(seed)

    def draw(path, stat):
        values = (rng.uniform(0.5, 1.5, stat.shape) if path[-1].key == "var"
                  else rng.normal(0.0, 0.3, stat.shape))
        return jnp.asarray(values, stat.dtype)

    variables["batch_stats"] = jax.tree_util.tree_map_with_path(draw, variables["batch_stats"])
    return variables


BATCHES = [jax.random.normal(jax.random.key(1), (3, 8, 8, 3)),
           {"image": jax.random.normal(jax.random.key(2), (2, 8, 8, 3))}]
IMAGES = [BATCHES[0], BATCHES[1]["image"]]


@pytest.fixture(scope="module")
def resnet():
    model = ResNet((1, 1), (4, 8), 10)
    return model, _variables(model)


@pytest.fixture(scope="module")
def relu_report(resnet):
    model, variables = resnet
    return activations.activation_sparsity(model, variables, BATCHES)


def _stem_pre_activation(variables, x):
    """bn1(conv1(x)) of the ResNet stem, computed without the model: 3×3 conv, padding 1, eval BN."""
    params, stats = variables["params"], variables["batch_stats"]
    y = jax.lax.conv_general_dilated(x, params["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = (y - stats["bn1"]["mean"]) / jnp.sqrt(stats["bn1"]["var"] + BN_EPS)
    return y * params["bn1"]["scale"] + params["bn1"]["bias"]


def _assert_fraction(reported, values, count, slack=1):
    """``reported`` equals the fraction of True in ``values``, within ``slack`` elements of rounding
    (a value at the threshold can round differently in the model's compiled graph)."""
    assert values.size == count
    assert abs(reported * count - int(np.sum(values))) <= slack, (reported, np.mean(values))


def test_sites_and_stages_of_a_small_resnet(relu_report):
    assert relu_report["sites"]["stage"] == {
        "activation0": "stem", "layer1_0/activation0": "layer1", "layer1_0/activation1": "layer1",
        "layer2_0/activation0": "layer2", "layer2_0/activation1": "layer2"}
    assert list(relu_report["stages"]["zero"]) == ["stem", "layer1", "layer2"]
    # 5 images of 8×8: stem and stage 1 at 8×8×4, stage 2 at 4×4×8.
    assert relu_report["sites"]["count"] == {
        "activation0": 1280, "layer1_0/activation0": 1280, "layer1_0/activation1": 1280,
        "layer2_0/activation0": 640, "layer2_0/activation1": 640}
    assert relu_report["stages"]["count"] == {"stem": 1280, "layer1": 2560, "layer2": 1280}
    assert relu_report["eps"] == activations.DEFAULT_EPS


def test_relu_zero_fraction_of_the_stem_matches_a_hand_computation(resnet, relu_report):
    _, variables = resnet
    outputs = np.concatenate([np.asarray(jax.nn.relu(_stem_pre_activation(variables, x)))
                              for x in IMAGES]).ravel()
    zero = relu_report["sites"]["zero"]["activation0"]
    _assert_fraction(zero, outputs == 0, 1280)
    assert 0.2 < zero < 0.8  # a real mix, not a degenerate all-zero or no-zero site
    # ReLU outputs are >= 0, so exactly the zeros are below eps = 1e-3 except rare tiny positives.
    _assert_fraction(relu_report["sites"]["near_zero"]["activation0"],
                     np.abs(outputs) < activations.DEFAULT_EPS, 1280)


def test_relu_zero_fraction_of_a_block_output_matches_captured_intermediates(resnet, relu_report):
    model, variables = resnet

    @jax.jit
    def block_output(x):
        _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]["layer2_0"]["__call__"][0]  # post-activation block output

    outputs = np.concatenate([np.asarray(block_output(x)) for x in IMAGES]).ravel()
    _assert_fraction(relu_report["sites"]["zero"]["layer2_0/activation1"], outputs == 0, 640)


def test_pswish_at_beta_inf_gives_relu_numbers(resnet, relu_report):
    model, variables = resnet
    pswish = model.clone(activation="pswish")
    assert activations.activation_sparsity(pswish, variables, BATCHES, beta=jnp.inf) == relu_report
    swish_like = activations.activation_sparsity(pswish, variables, BATCHES[:1], beta=1.0)
    assert max(swish_like["stages"]["zero"].values()) < 0.01


@pytest.mark.parametrize("name, fn", [("swish", jax.nn.silu), ("mish", jax.nn.mish)])
def test_smooth_activations_have_no_exact_zeros_but_near_zeros(resnet, name, fn):
    model, variables = resnet
    eps = 0.05
    report = activations.activation_sparsity(model.clone(activation=name), variables, BATCHES,
                                             eps=eps)
    outputs = np.concatenate([np.asarray(fn(_stem_pre_activation(variables, x)))
                              for x in IMAGES]).ravel()
    _assert_fraction(report["sites"]["zero"]["activation0"], outputs == 0, 1280)
    _assert_fraction(report["sites"]["near_zero"]["activation0"], np.abs(outputs) < eps, 1280)
    assert max(report["sites"]["zero"].values()) < 0.01
    assert report["sites"]["near_zero"]["activation0"] > 0.01
    assert report["eps"] == eps


def _weighted(fractions, counts, sites):
    return sum(fractions[s] * counts[s] for s in sites) / sum(counts[s] for s in sites)


@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_stage_fraction_is_the_count_weighted_mean_of_its_sites(activation):
    # Bottleneck blocks: the stride-2 conv is the second one, so sites of a stage differ in size.
    model = ResNet((1, 1), (4, 8), 10, bottleneck=True, activation=activation)
    report = activations.activation_sparsity(model, _variables(model), BATCHES[:1], eps=0.05)
    sites = report["sites"]
    by_stage = collections.defaultdict(list)
    for site, stage in sites["stage"].items():
        by_stage[stage].append(site)
    assert len({sites["count"][s] for s in by_stage["layer2"]}) > 1
    assert list(by_stage) == list(report["stages"]["zero"])
    for stage, members in by_stage.items():
        for key in ("zero", "near_zero"):
            expected = _weighted(sites[key], sites["count"], members)
            assert report["stages"][key][stage] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert report["stages"]["count"][stage] == sum(sites["count"][s] for s in members)


def test_batches_weigh_by_their_number_of_activations(resnet, relu_report):
    model, variables = resnet
    parts = [activations.activation_sparsity(model, variables, [batch]) for batch in BATCHES]
    for level in ("sites", "stages"):
        for key in ("zero", "near_zero"):
            for name, fraction in relu_report[level][key].items():
                counts = [part[level]["count"][name] for part in parts]
                expected = sum(part[level][key][name] * c for part, c in zip(parts, counts))
                assert fraction == pytest.approx(expected / sum(counts), rel=1e-12)
        for name, count in relu_report[level]["count"].items():
            assert count == sum(part[level]["count"][name] for part in parts)


def test_vgg_stages_are_the_blocks_between_max_pools():
    model = VGG(10, layers=(4, "M", 8, 8, "M", "M", 8))
    report = activations.activation_sparsity(model, _variables(model), BATCHES[:1])
    assert report["sites"]["stage"] == {"activation0": "block1", "activation1": "block2",
                                        "activation2": "block2", "activation3": "block4"}


def _abstract_sites(name):
    model = build(name, 10)
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return activations.activation_sites(model, variables, x)


def test_mobilenet_v1_stages_start_at_stride_2_blocks():
    sites = _abstract_sites("mobilenet_v1")
    # V1 blocks: stride 2 at blocks 1, 3, 5 and 11; two activations per block.
    assert collections.Counter(sites.values()) == {"stem": 1, "stage1": 2, "stage2": 4, "stage3": 4,
                                                   "stage4": 12, "stage5": 4}
    assert sites["activation0"] == "stem"
    assert (sites["block0/activation1"], sites["block1/activation0"], sites["block4/activation1"],
            sites["block5/activation0"], sites["block11/activation0"]) == (
        "stage1", "stage2", "stage3", "stage4", "stage5")


def test_mobilenet_v2_stages_are_the_rows_of_its_table():
    sites = _abstract_sites("mobilenet_v2")
    # Rows of blocks (1, 2, 3, 4, 3, 3, 1), two activations per block (none after the projection).
    assert collections.Counter(sites.values()) == {"stem": 1, "stage1": 2, "stage2": 4, "stage3": 6,
                                                   "stage4": 8, "stage5": 6, "stage6": 6,
                                                   "stage7": 2, "head": 1}
    assert list(sites)[0] == "activation0" and list(sites)[-1] == "activation1"
    assert (sites["block0/activation1"], sites["block1/activation0"], sites["block3/activation0"],
            sites["block16/activation1"]) == ("stage1", "stage2", "stage3", "stage7")


def test_observe_activations_sees_every_activate_output_inside_its_block():
    x = jnp.array([-1.0, 0.0, 2.0])
    seen = []
    with observe_activations(seen.append):
        y = activate("relu", x)
        z = activate("pswish", x, jnp.inf)
    activate("relu", x)
    assert len(seen) == 2 and seen[0] is y and seen[1] is z


@pytest.mark.parametrize("batches, kwargs, match", [
    ([], {}, "batches is empty"),
    ({"image": IMAGES[0]}, {}, "single batch"),
    (IMAGES[0], {}, "single batch"),
    ([{"label": IMAGES[0]}], {}, "no 'image'"),
    ([IMAGES[0]], {"eps": 0.0}, "eps is 0.0"),
    ([IMAGES[0]], {"eps": float("nan")}, "eps is nan"),
])
def test_bad_input_raises_one_line(resnet, batches, kwargs, match):
    model, variables = resnet
    with pytest.raises(ValueError, match=match) as error:
        activations.activation_sparsity(model, variables, batches, **kwargs)
    assert "\n" not in str(error.value)
