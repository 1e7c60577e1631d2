"""Mask io: PyTorch weight_mask buffers and pruned state_dicts onto Flax params; .npz round trip."""

import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import masks as masks_lib, paths
from sparsejax import pruning
from sparsejax.pruning.io import to_flax_layout


class FlaxNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn1")(x))
        x = nn.Conv(16, (3, 3), strides=2, use_bias=False, name="conv2")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn2")(x))
        return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))


# Shapes are all the import needs; NumPy zeros avoid compiling an initializer.
SHAPES = jax.eval_shape(FlaxNet().init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))["params"]
PARAMS = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), SHAPES)
KERNELS = {"conv1.weight": "conv1/kernel", "conv2.weight": "conv2/kernel", "fc.weight": "fc/kernel"}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def torch_net(torch, conv2_out=16):
    """The PyTorch twin of FlaxNet: same layers in the same order, PyTorch layouts."""
    tnn = torch.nn

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(8)
            self.conv2 = tnn.Conv2d(8, conv2_out, 3, stride=2, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(conv2_out)
            self.fc = tnn.Linear(conv2_out, 10)

    torch.manual_seed(0)
    return Net()


def assert_masks_equal(masks, want):
    """``want``: {torch name: PyTorch-layout bool array}; non-kernels must be all True."""
    flat = paths.flatten(masks)
    for torch_name, flax_path in KERNELS.items():
        np.testing.assert_array_equal(np.asarray(flat[flax_path]), to_flax_layout(want[torch_name]),
                                      err_msg=flax_path)
    for path, m in flat.items():
        if path not in KERNELS.values():
            assert np.asarray(m).all(), path


def roundtrip(tmp_path, masks):
    masks_lib.save(tmp_path / "masks.npz", masks)
    return masks_lib.load(tmp_path / "masks.npz", PARAMS)


def test_torch_prune_weight_mask_buffers(torch, tmp_path):
    from torch.nn.utils import prune
    net = torch_net(torch)
    for module in (net.conv1, net.conv2, net.fc):
        prune.random_unstructured(module, "weight", amount=0.7)
    want = {f"{n}.weight": getattr(net, n).weight_mask.numpy() != 0
            for n in ("conv1", "conv2", "fc")}
    torch.save(net.state_dict(), tmp_path / "pruned.pt")

    masks, report = pruning.load_torch_masks(tmp_path / "pruned.pt", PARAMS)
    masks_lib.validate(masks, PARAMS)
    assert_masks_equal(masks, want)
    assert report.matched == tuple((t, f, "weight_mask") for t, f in KERNELS.items())
    assert report.unused == () and report.unpaired == ()
    assert "conv1.weight -> conv1/kernel (weight_mask)" in str(report)
    assert_masks_equal(roundtrip(tmp_path, masks), want)


def test_pruned_state_dict_gives_weight_not_zero(torch, tmp_path):
    from torch.nn.utils import prune
    net = torch_net(torch)
    for module in (net.conv1, net.conv2, net.fc):
        prune.l1_unstructured(module, "weight", amount=0.5)
        prune.remove(module, "weight")  # folds the mask into the weight: zeros remain
    state = net.state_dict()
    assert not any(k.endswith("_mask") for k in state)
    want = {name: state[name].numpy() != 0 for name in KERNELS}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pt")

    masks, report = pruning.load_torch_masks(str(tmp_path / "checkpoint.pt"), PARAMS)
    assert_masks_equal(masks, want)
    assert {src for _, _, src in report.matched} == {"weight != 0"}
    assert masks_lib.counts(masks, PARAMS)["conv2/kernel"] == (576, 1152)
    assert_masks_equal(roundtrip(tmp_path, masks), want)


def test_weight_mask_buffers_win_over_nonzero_weights(torch, tmp_path):
    # Synaptic-Flow's layers keep `weight` dense and store `weight_mask` (and 1-D `bias_mask`).
    net = torch_net(torch)
    rng = np.random.default_rng(0)
    state = {}
    for name, tensor in net.state_dict().items():
        state[name] = tensor
        if name in KERNELS:
            state[name] = torch.ones_like(tensor)  # no zero anywhere
            state[name + "_mask"] = torch.from_numpy((rng.random(tuple(tensor.shape)) < 0.3)
                                                     .astype(np.float32))
        if name == "fc.bias":
            state["fc.bias_mask"] = torch.ones_like(tensor)
    torch.save(state, tmp_path / "synflow.pt")

    masks, report = pruning.load_torch_masks(tmp_path / "synflow.pt", PARAMS)
    assert_masks_equal(masks, {name: state[name + "_mask"].numpy() != 0 for name in KERNELS})
    assert [t for t, _, _ in report.matched] == list(KERNELS)
    assert_masks_equal(roundtrip(tmp_path, masks), {n: state[n + "_mask"].numpy() != 0
                                                    for n in KERNELS})


def test_names_pair_by_name_and_the_report_lists_the_rest(torch, tmp_path):
    net = torch_net(torch)
    state = dict(net.state_dict())
    state["head.weight"] = torch.zeros(5, 10)  # a layer the Flax model does not have
    torch.save(state, tmp_path / "extra.pt")
    names = {"fc.weight_mask": "fc/kernel", "conv1.weight": "conv1/kernel"}  # either name form

    masks, report = pruning.load_torch_masks(tmp_path / "extra.pt", PARAMS, names=names)
    assert report.matched == (("fc.weight", "fc/kernel", "weight != 0"),
                              ("conv1.weight", "conv1/kernel", "weight != 0"))
    assert report.unused == ("conv2.weight", "head.weight")
    assert report.unpaired == ("conv2/kernel",)
    assert np.asarray(masks["conv2"]["kernel"]).all()


def test_default_matcher_reports_extra_torch_weights(torch, tmp_path):
    state = dict(torch_net(torch).state_dict())
    state["head.weight"] = torch.zeros(5, 10)
    masks, report = pruning.load_torch_masks(state, PARAMS)
    assert [(t, f) for t, f, _ in report.matched] == list(KERNELS.items())
    assert report.unused == ("head.weight",) and report.unpaired == ()


def test_shape_mismatch_names_the_tensor_and_both_shapes(torch, tmp_path):
    torch.save(torch_net(torch, conv2_out=12).state_dict(), tmp_path / "other.pt")
    match = (r"torch tensor 'conv2.weight' has shape \(12, 8, 3, 3\) \(\(3, 3, 8, 12\) in Flax "
             r"layout\) but flax parameter 'conv2/kernel' has shape \(3, 3, 8, 16\); build the "
             r"Flax model the checkpoint was made for")
    with pytest.raises(ValueError, match=match):
        pruning.load_torch_masks(tmp_path / "other.pt", PARAMS)
    with pytest.raises(ValueError, match="'fc.weight' has shape"):
        pruning.load_torch_masks(tmp_path / "other.pt", PARAMS, names={"fc.weight": "fc/kernel"})


def test_bad_names_are_errors(torch):
    state = torch_net(torch).state_dict()
    with pytest.raises(ValueError, match="maps 'conv9.weight', which is not a prunable weight"):
        pruning.load_torch_masks(state, PARAMS, names={"conv9.weight": "conv1/kernel"})
    with pytest.raises(ValueError, match="to 'conv9/kernel', which is not a parameter path"):
        pruning.load_torch_masks(state, PARAMS, names={"conv1.weight": "conv9/kernel"})


def test_not_a_state_dict_is_an_error(torch, tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a PyTorch state_dict"):
        pruning.load_torch_masks(tmp_path / "list.pt", PARAMS)


def test_missing_torch_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"install the extra: pip install -e \.\[torch\]"):
        pruning.load_torch_masks(tmp_path / "model.pt", PARAMS)


def test_state_dict_of_numpy_arrays_needs_no_torch():
    rng = np.random.default_rng(1)
    state = {"conv1.weight": rng.random((8, 3, 3, 3)) < 0.5,
             "bn1.weight": np.ones(8),
             "conv2.weight": rng.random((16, 8, 3, 3)) < 0.5,
             "fc.weight": rng.random((10, 16)) < 0.5, "fc.bias": np.zeros(10)}
    masks, _ = pruning.load_torch_masks(state, PARAMS)
    assert_masks_equal(masks, state)


def test_default_matcher_pairs_by_name_in_any_dict_order():
    # Layers defined zeta, alpha, mid (as an eager model.init returns them); JAX sorts dict keys,
    # so params that went through jit or tree.map list them alpha, mid, zeta. Names pair either way.
    params = {"zeta": {"kernel": np.zeros((4, 6)), "bias": np.zeros(6)},
              "alpha": {"kernel": np.zeros((6, 5))}, "mid": {"kernel": np.zeros((5, 3))}}
    rng = np.random.default_rng(2)
    state = {"zeta.weight": rng.random((6, 4)) < 0.5, "zeta.bias": np.ones(6),
             "alpha.weight": rng.random((5, 6)) < 0.5, "mid.weight": rng.random((3, 5)) < 0.5}
    masks, report = pruning.load_torch_masks(state, params)
    assert [(t, f) for t, f, _ in report.matched] == [
        ("zeta.weight", "zeta/kernel"), ("alpha.weight", "alpha/kernel"),
        ("mid.weight", "mid/kernel")]
    for name in ("zeta", "alpha", "mid"):
        np.testing.assert_array_equal(masks[name]["kernel"], state[f"{name}.weight"].T)
    sorted_params = jax.tree.map(lambda x: x, params)
    assert list(sorted_params) == ["alpha", "mid", "zeta"]
    again, again_report = pruning.load_torch_masks(state, sorted_params)
    chex.assert_trees_all_equal(masks, again)
    assert again_report == report


def test_layouts():
    assert to_flax_layout(np.zeros((16, 8, 3, 5))).shape == (3, 5, 8, 16)  # OIHW -> HWIO
    assert to_flax_layout(np.zeros((10, 16))).shape == (16, 10)  # linear (out, in) -> (in, out)
    assert to_flax_layout(np.zeros((16, 8, 7))).shape == (7, 8, 16)  # conv1d OIW -> WIO
    w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert to_flax_layout(w)[1, 2, 0, 1] == w[1, 0, 1, 2]  # [h, w, i, o] == [o, i, h, w]


def test_found_masks_survive_npz(tmp_path):
    masks = pruning.find_mask("magnitude", jax.tree.map(
        lambda p: np.random.default_rng(0).normal(size=p.shape).astype(np.float32), PARAMS), 0.8)
    reloaded = roundtrip(tmp_path, masks)
    chex.assert_trees_all_equal(masks, reloaded)
