"""sparsejax.analysis.structure: hand-counted reports and FLOPs; condensed nets, same logits.

Variables are drawn with numpy from `jax.eval_shape` (no init compile) and forward passes are
compiled at XLA backend optimisation level 0: compiles dominate the run time on CPU.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import paths
from sparsejax.analysis import structure
from sparsejax.models import build
from sparsejax.models.mobilenet import MobileNetV1
from sparsejax.models.resnet import ResNet
from sparsejax.models.vgg import VGG

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _logits(model, variables, x):
    return jax.jit(model.apply, compiler_options=FAST_COMPILE)(variables, x)


def _variables(model, seed=0):
    """Variables shaped as ``model.init``'s on 8×8 images, drawn with numpy; BN statistics random
    (mean ~ N(0, 0.3), var in [0.5, 1.5]), so BN constants of empty channels have either sign.
    Kernels have std 2 / sqrt(fan-in): with less, the 27 layers of MobileNetV1 on 8×8 images
    forget their input (logits equal to 1e-7 for different images) and hide any change."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))

    def draw(path, leaf):
        name, dims = paths.key_name(path[-1]), leaf.shape
        if name == "var":
            return rng.uniform(0.5, 1.5, dims).astype(np.float32)
        if name == "kernel":
            return rng.normal(0.0, 2.0 / np.sqrt(np.prod(dims[:-1])), dims).astype(np.float32)
        center = 1.0 if name == "scale" else 0.0
        return rng.normal(center, 0.3, dims).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _flat(variables):
    return {c: paths.flatten(tree) for c, tree in variables.items()}


def _tree(variables, flat):
    return {c: paths.unflatten(variables[c], flat[c]) for c in variables}


def _all_true(params):
    return {p: np.ones(np.shape(v), bool) for p, v in paths.flatten(params).items()}


def _all_true_tree(params):
    return paths.unflatten(params, _all_true(params))


def _set_bn(flat, bn, channel, *, beta, mean, scale=1.0, var=1.0):
    """Sets BN ``bn``'s entries of ``channel``: b_c = beta + scale·(bias − mean)/sqrt(var + eps)."""
    flat["params"][f"{bn}/bias"][channel] = beta
    flat["params"][f"{bn}/scale"][channel] = scale
    flat["batch_stats"][f"{bn}/mean"][channel] = mean
    flat["batch_stats"][f"{bn}/var"][channel] = var


def _size(tree):
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def _check_same_logits(model, variables, masks, x):
    """Condenses and returns the smaller (model, variables), after checking the logits."""
    smaller, small_variables = structure.condense(model, variables, masks)
    # sparsejax.masks.apply without a compile per shape:
    masked = {"params": jax.tree.map(lambda w, m: np.where(m, w, 0), variables["params"], masks),
              "batch_stats": variables["batch_stats"]}
    want = _logits(model, masked, x)
    got = _logits(smaller, small_variables, x)
    assert float(jnp.abs(want[0] - want[1]).max()) > 0.1  # the logits depend on the input
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    assert _size(small_variables["params"]) < _size(variables["params"])
    return smaller, small_variables


# ---- report ---------------------------------------------------------------------------------


def _report_case():
    """Params with a conv (3, 3, 4, 6), a depthwise conv (3, 3, 1, 4) and a dense (6, 5) layer."""
    params = {"conv": {"kernel": np.ones((3, 3, 4, 6), np.float32)},
              "dw": {"kernel": np.ones((3, 3, 1, 4), np.float32)},
              "dense": {"kernel": np.ones((6, 5), np.float32), "bias": np.zeros(5, np.float32)}}
    conv = np.ones((3, 3, 4, 6), bool)
    conv[..., [1, 4]] = False   # output channels 1 and 4 empty
    conv[:, :, 2, :] = False    # input channel 2 empty
    conv[0, 0, 0, 0] = False    # a lone pruned weight empties nothing
    dw = np.ones((3, 3, 1, 4), bool)
    dw[..., 2] = False          # channel 2 empty
    dw[1, 1, 0, 0] = False
    dense = np.array([[1, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0],
                      [0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 1],
                      [0, 0, 0, 0, 0]], bool)  # inputs 1, 3, 5 and outputs 2, 3 empty
    masks = {"conv": {"kernel": conv}, "dw": {"kernel": dw},
             "dense": {"kernel": dense, "bias": np.ones(5, bool)}}
    return params, masks


def test_report_counts_match_hand_counts():
    params, masks = _report_case()
    got = structure.report(params, masks)
    # conv: 216 weights − 2 empty columns (72) − row 2 of the other 4 columns (36) − 1 = 107;
    # 9 · (4 − 1) · (6 − 2) = 108 after removal.
    assert got["layers"]["conv/kernel"] == {
        "shape": (3, 3, 4, 6), "size": 216, "active": 107, "density": 107 / 216,
        "neurons": 6, "empty_neurons": 2, "inputs": 4, "empty_inputs": 1, "condensed_size": 108}
    # depthwise: 36 − 9 − 1 = 26 active; its one input slice is not empty; 9 · 1 · 3 = 27.
    assert got["layers"]["dw/kernel"] == {
        "shape": (3, 3, 1, 4), "size": 36, "active": 26, "density": 26 / 36,
        "neurons": 4, "empty_neurons": 1, "inputs": 1, "empty_inputs": 0, "condensed_size": 27}
    assert got["layers"]["dense/kernel"] == {
        "shape": (6, 5), "size": 30, "active": 4, "density": 4 / 30,
        "neurons": 5, "empty_neurons": 2, "inputs": 6, "empty_inputs": 3, "condensed_size": 9}
    assert list(got["layers"]) == ["conv/kernel", "dense/kernel", "dw/kernel"]  # no bias
    assert got["total"] == {
        "size": 282, "active": 137, "neurons": 15, "empty_neurons": 5, "inputs": 11,
        "empty_inputs": 4, "condensed_size": 144, "density": 137 / 282,
        "empty_neuron_fraction": 5 / 15, "empty_input_fraction": 4 / 11}


def test_report_filter_and_misfit_masks():
    params, masks = _report_case()
    only_dense = structure.report(params, masks, filter_fn=lambda p, _: p == "dense/kernel")
    assert list(only_dense["layers"]) == ["dense/kernel"]
    assert only_dense["total"]["condensed_size"] == 9
    masks["conv"]["kernel"] = masks["conv"]["kernel"][..., :3]
    with pytest.raises(ValueError, match="conv/kernel"):
        structure.report(params, masks)


# ---- flops ----------------------------------------------------------------------------------


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding=1, name="conv_a")(x)
        x = nn.Conv(6, (3, 3), strides=2, padding=1, name="conv_b")(x)
        x = nn.Conv(6, (3, 3), padding=1, feature_group_count=6, name="dw")(x)
        return nn.Dense(5, name="head")(jnp.mean(x, axis=(1, 2)))


def _first_true(shape, count):
    mask = np.zeros(int(np.prod(shape)), bool)
    mask[:count] = True
    return mask.reshape(shape)


def test_flops_match_hand_counts():
    model = _Tiny()
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    masks = jax.tree.map(lambda leaf: np.ones(leaf.shape, bool), variables["params"])
    active = {"conv_a": 50, "conv_b": 100, "dw": 20, "head": 7}
    for name, count in active.items():
        masks[name]["kernel"] = _first_true(masks[name]["kernel"].shape, count)
    got = structure.flops(model, variables, masks, (8, 8, 3))
    # dense: H_out·W_out·kh·kw·(C_in/groups)·C_out; sparse: H_out·W_out·active.
    assert got["layers"] == {
        "conv_a/kernel": {"output_shape": (8, 8, 4), "dense": 64 * 9 * 3 * 4, "sparse": 64 * 50},
        "conv_b/kernel": {"output_shape": (4, 4, 6), "dense": 16 * 9 * 4 * 6, "sparse": 16 * 100},
        "dw/kernel": {"output_shape": (4, 4, 6), "dense": 16 * 9 * 1 * 6, "sparse": 16 * 20},
        "head/kernel": {"output_shape": (5,), "dense": 6 * 5, "sparse": 7}}
    assert got["dense"] == 6912 + 3456 + 864 + 30
    assert got["sparse"] == 3200 + 1600 + 320 + 7


def test_flops_of_a_zoo_vgg_by_hand():
    model = VGG(10, layers=(8, 8, "M", 16))
    variables = _variables(model)
    got = structure.flops(model, variables, _all_true_tree(variables["params"]), (8, 8, 3))
    # conv_0 3→8 and conv_1 8→8 on 8×8, a max-pool, conv_2 8→16 on 4×4, classifier 16→10.
    dense = {"conv_0/kernel": 64 * 9 * 3 * 8, "conv_1/kernel": 64 * 9 * 8 * 8,
             "conv_2/kernel": 16 * 9 * 8 * 16, "classifier/kernel": 16 * 10}
    assert {p: layer["dense"] for p, layer in got["layers"].items()} == dense
    assert got["sparse"] == got["dense"] == sum(dense.values())


def test_flops_rejects_bad_input_shape():
    model = _Tiny()
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    masks = jax.tree.map(lambda leaf: np.ones(leaf.shape, bool), variables["params"])
    with pytest.raises(ValueError, match="input_shape"):
        structure.flops(model, variables, masks, (8, 0, 3))


# ---- condense -------------------------------------------------------------------------------


def test_condense_resnet_removes_exactly_the_removable_inner_channels():
    model = ResNet((1, 1), (8, 16), 10)
    variables = _variables(model)
    flat = _flat(variables)
    masks = _all_true(variables["params"])
    for c in (0, 1, 2):  # layer1_0: inner channels 0, 1, 2 get no active weight
        masks["layer1_0/conv1/kernel"][..., c] = False
    _set_bn(flat, "layer1_0/bn1", 0, beta=-0.5, mean=0.0)   # b = −0.5: ReLU 0, removed
    _set_bn(flat, "layer1_0/bn1", 1, beta=0.5, mean=0.0)    # b = +0.5 and read: kept
    _set_bn(flat, "layer1_0/bn1", 2, beta=0.5, mean=0.0)    # b = +0.5 but never read: removed
    masks["layer1_0/conv2/kernel"][:, :, 2, :] = False
    masks["layer1_0/conv2/kernel"][:, :, 3, :] = False       # channel 3 is active but never read
    for c in (5, 6, 7):  # layer2_0: channels 5, 6, 7 empty
        masks["layer2_0/conv1/kernel"][..., c] = False
    _set_bn(flat, "layer2_0/bn1", 5, beta=-0.1, mean=0.3)   # b = −0.1 − 0.3 < 0: removed
    _set_bn(flat, "layer2_0/bn1", 6, beta=0.2, mean=2.0)    # b = 0.2 − 2 < 0: removed
    _set_bn(flat, "layer2_0/bn1", 7, beta=0.3, mean=-1.0)   # b = 0.3 + 1 > 0: kept
    masks["conv1/kernel"][..., 4] = False                   # the stem's channel 4 is 0, but it
    _set_bn(flat, "bn1", 4, beta=-0.5, mean=0.0)            # is on the residual stream: kept
    variables = _tree(variables, flat)
    masks = paths.unflatten(variables["params"], masks)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    smaller, small_variables = _check_same_logits(model, variables, masks, x)
    small = paths.flatten(small_variables["params"])
    assert small["layer1_0/conv1/kernel"].shape == (3, 3, 8, 5)
    assert small["layer1_0/bn1/scale"].shape == (5,)
    assert small["layer1_0/conv2/kernel"].shape == (3, 3, 5, 8)
    assert small["layer2_0/conv1/kernel"].shape == (3, 3, 8, 14)
    assert small["layer2_0/conv2/kernel"].shape == (3, 3, 14, 16)
    assert small["layer2_0/conv_shortcut/kernel"].shape == (1, 1, 8, 16)  # residual stream kept
    assert small["conv1/kernel"].shape == (3, 3, 3, 8)
    macs = structure.flops(smaller, small_variables, _all_true_tree(small_variables["params"]),
                           (8, 8, 3))["layers"]  # the condensed model's layers, by their paths
    assert macs["layer1_0/conv1/kernel"]["dense"] == 64 * 9 * 8 * 5
    assert macs["layer2_0/conv2/kernel"]["dense"] == 16 * 9 * 14 * 16  # 4×4 after stride 2


def test_condense_vgg_chain_through_pools_until_nothing_changes():
    model = VGG(10, layers=(8, 8, "M", 16))
    variables = _variables(model)
    flat = _flat(variables)
    masks = _all_true(variables["params"])
    masks["conv_0/kernel"][..., 2] = False                # empty, conv bias and BN give b < 0
    flat["params"]["conv_0/bias"][2] = 0.1
    _set_bn(flat, "bn_0", 2, beta=-0.2, mean=0.5)
    masks["conv_1/kernel"][:, :, 5, :] = False            # channel 5 of conv_0 is read only by
    masks["conv_1/kernel"][1, 1, 5, 3] = True             # conv_1's channel 3, which conv_2
    masks["conv_2/kernel"][:, :, 3, :] = False            # never reads: both go, in two passes
    masks["conv_1/kernel"][..., 6] = False                # empty, b < 0, zero through the pool
    flat["params"]["conv_1/bias"][6] = 0.0
    _set_bn(flat, "bn_1", 6, beta=0.1, mean=0.3)
    masks["conv_2/kernel"][..., 7] = False                # empty, b > 0, read by the classifier
    flat["params"]["conv_2/bias"][7] = 0.0
    _set_bn(flat, "bn_2", 7, beta=0.1, mean=-0.5)
    masks["classifier/kernel"][11, :] = False             # conv_2's channel 11 is never read
    variables = _tree(variables, flat)
    masks = paths.unflatten(variables["params"], masks)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    small = paths.flatten(_check_same_logits(model, variables, masks, x)[1]["params"])
    assert small["conv_0/kernel"].shape == (3, 3, 3, 6)
    assert small["conv_0/bias"].shape == (6,)
    assert small["conv_1/kernel"].shape == (3, 3, 6, 6)
    assert small["conv_2/kernel"].shape == (3, 3, 6, 15)
    assert small["classifier/kernel"].shape == (15, 10)


def test_condense_mobilenet_depthwise_chain():
    model = MobileNetV1(10)
    variables = _variables(model)
    flat = _flat(variables)
    masks = _all_true(variables["params"])
    for c in (0, 1, 3):
        masks["conv1/kernel"][..., c] = False             # stem channels 0, 1, 3 empty
    _set_bn(flat, "bn1", 0, beta=-0.5, mean=0.0)
    _set_bn(flat, "block0/bn_dw", 0, beta=-0.5, mean=0.0)  # zero in, BN const < 0: removed
    _set_bn(flat, "bn1", 1, beta=-0.5, mean=0.0)
    _set_bn(flat, "block0/bn_dw", 1, beta=0.5, mean=0.0)   # zero in, BN const > 0, read: kept
    masks["block0/conv_dw/kernel"][..., 2] = False         # active stem channel 2, no depthwise
    _set_bn(flat, "block0/bn_dw", 2, beta=-0.5, mean=0.0)  # weight, BN const < 0: removed
    _set_bn(flat, "bn1", 3, beta=2.0, mean=0.0)            # constant 2 into a depthwise conv of
    flat["params"]["block0/conv_dw/kernel"][..., 3] = 1.0  # ones: 18 inside, less at the
    _set_bn(flat, "block0/bn_dw", 3, beta=-0.5, mean=0.0)  # borders (zero padding): kept
    variables = _tree(variables, flat)
    masks = paths.unflatten(variables["params"], masks)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    small = paths.flatten(_check_same_logits(model, variables, masks, x)[1]["params"])
    assert small["conv1/kernel"].shape == (3, 3, 3, 30)
    assert small["block0/conv_dw/kernel"].shape == (3, 3, 1, 30)
    assert small["block0/conv_pw/kernel"].shape == (1, 1, 30, 64)
    assert small["block1/conv_dw/kernel"].shape == (3, 3, 1, 64)


def test_condense_rejects_what_it_cannot_make_exact():
    tiny = _Tiny()
    variables = jax.eval_shape(lambda: tiny.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    with pytest.raises(ValueError, match="_Tiny"):
        structure.condense(tiny, variables, _all_true_tree(variables["params"]))
    for ghost in ({"ghost_skip": "identity"}, {"activation": "pswish"}):
        model = build("resnet20", 10, **ghost)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
        with pytest.raises(ValueError, match="remove_ghosts"):
            structure.condense(model, variables, _all_true_tree(variables["params"]))
    model = VGG(10, layers=(8, "M", 16))
    variables = _variables(model)
    masks = _all_true_tree(variables["params"])
    masks["conv_0"]["kernel"] = masks["conv_0"]["kernel"][..., :4]
    with pytest.raises(ValueError, match="conv_0/kernel"):
        structure.condense(model, variables, masks)
