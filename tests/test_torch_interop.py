"""PyTorch interop: a ticket's weights and masks from PyTorch CIFAR models (kuangliu pytorch-cifar
layouts, written here) onto the zoo, the same eval-mode logits, masks back bit for bit."""

import functools
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from flax import traverse_util

from sparsejax import models, paths, pruning
from sparsejax.errors import FileFormatError, TrainError
from sparsejax.train import workdir as workdir_lib

torch = pytest.importorskip("torch")
tnn, F = torch.nn, torch.nn.functional


# --------------------------------------------------------------- kuangliu pytorch-cifar models
class BasicBlock(tnn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.shortcut = tnn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = tnn.Sequential(
                tnn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                tnn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(tnn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(4 * planes)
        self.shortcut = tnn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = tnn.Sequential(
                tnn.Conv2d(in_planes, 4 * planes, 1, stride=stride, bias=False),
                tnn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(tnn.Module):
    """kuangliu ``resnet.py`` ResNet; widths (16, 32, 64) give a 6n+2 ResNet with projection
    shortcuts (akamaster option B)."""

    def __init__(self, num_blocks, widths=(64, 128, 256, 512), block=BasicBlock, num_classes=10,
                 in_channels=3):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for stage, (blocks, planes) in enumerate(zip(num_blocks, widths)):
            layer = []
            for stride in [1 if stage == 0 else 2] + [1] * (blocks - 1):
                layer.append(block(in_planes, planes, stride))
                in_planes = planes * getattr(block, "expansion", 1)
            setattr(self, f"layer{stage + 1}", tnn.Sequential(*layer))
        self.stages = len(num_blocks)
        self.linear = tnn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in range(self.stages):
            out = getattr(self, f"layer{stage + 1}")(out)
        out = F.avg_pool2d(out, out.size(3))  # kuangliu: avg_pool2d(out, 4), the same at 32×32
        return self.linear(out.view(out.size(0), -1))


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(tnn.Module):
    """kuangliu ``vgg.py`` VGG('VGG16')."""

    def __init__(self, num_classes=10):
        super().__init__()
        layers, in_channels = [], 3
        for x in VGG16:
            if x == "M":
                layers += [tnn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [tnn.Conv2d(in_channels, x, kernel_size=3, padding=1),
                           tnn.BatchNorm2d(x), tnn.ReLU(inplace=True)]
                in_channels = x
        layers += [tnn.AvgPool2d(kernel_size=1, stride=1)]
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Linear(512, num_classes)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.view(out.size(0), -1))


class MobileBlock(tnn.Module):
    """kuangliu ``mobilenet.py`` Block: depthwise 3×3 + pointwise 1×1."""

    def __init__(self, in_planes, out_planes, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, in_planes, 3, stride=stride, padding=1,
                                groups=in_planes, bias=False)
        self.bn1 = tnn.BatchNorm2d(in_planes)
        self.conv2 = tnn.Conv2d(in_planes, out_planes, 1, stride=1, padding=0, bias=False)
        self.bn2 = tnn.BatchNorm2d(out_planes)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class MobileNet(tnn.Module):
    """kuangliu ``mobilenet.py`` MobileNet (v1)."""

    cfg = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(32)
        layers, in_planes = [], 32
        for x in self.cfg:
            out_planes, stride = (x, 1) if isinstance(x, int) else x
            layers.append(MobileBlock(in_planes, out_planes, stride))
            in_planes = out_planes
        self.layers = tnn.Sequential(*layers)
        self.linear = tnn.Linear(1024, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, 2)
        return self.linear(out.view(out.size(0), -1))


class InvertedBlock(tnn.Module):
    """kuangliu ``mobilenetv2.py`` Block: expand + depthwise + pointwise."""

    def __init__(self, in_planes, out_planes, expansion, stride):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = tnn.Conv2d(in_planes, planes, 1, stride=1, padding=0, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes,
                                bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, out_planes, 1, stride=1, padding=0, bias=False)
        self.bn3 = tnn.BatchNorm2d(out_planes)
        self.shortcut = tnn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = tnn.Sequential(
                tnn.Conv2d(in_planes, out_planes, 1, stride=1, padding=0, bias=False),
                tnn.BatchNorm2d(out_planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(tnn.Module):
    """kuangliu ``mobilenetv2.py`` MobileNetV2 (CIFAR strides)."""

    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(32)
        layers, in_planes = [], 32
        for expansion, out_planes, num_blocks, stride in self.cfg:
            for s in [stride] + [1] * (num_blocks - 1):
                layers.append(InvertedBlock(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = tnn.Sequential(*layers)
        self.conv2 = tnn.Conv2d(320, 1280, 1, stride=1, padding=0, bias=False)
        self.bn2 = tnn.BatchNorm2d(1280)
        self.linear = tnn.Linear(1280, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


TORCH_MODELS = {
    "resnet18": lambda **kw: ResNet((2, 2, 2, 2), **kw),
    "resnet20": lambda **kw: ResNet((3, 3, 3), (16, 32, 64), **kw),
    "resnet50": lambda **kw: ResNet((3, 4, 6, 3), block=Bottleneck, **kw),
    "vgg16": VGG,
    "mobilenet_v1": MobileNet,
    "mobilenet_v2": MobileNetV2,
}


def torch_model(name, seed=0, **kwargs):
    """A random PyTorch model in eval mode with non-trivial BatchNorm weights and statistics."""
    torch.manual_seed(seed)
    net = TORCH_MODELS[name](**kwargs)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def torch_logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


# --------------------------------------------------------------------------------- flax side
IMAGES = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


@functools.cache
def flax_model(name, ghost_skip=None):
    """The zoo model's eval-mode logits (jitted) and variables of its shapes, filled with a
    constant (what the import replaces)."""
    model = models.build(name, 10, ghost_skip=ghost_skip)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            IMAGES[:1])
    logits = jax.jit(functools.partial(model.apply, train=False))
    return logits, jax.tree.map(lambda s: np.full(s.shape, 0.25, s.dtype), shapes)


def assert_same_logits(net, logits, variables):
    want = torch_logits(net, IMAGES)
    got = np.asarray(logits(variables, IMAGES))
    assert np.abs(want).max() > 0.1  # not a trivial network
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "mobilenet_v1", "mobilenet_v2",
                                  pytest.param("resnet50", marks=pytest.mark.slow)])
def test_imported_weights_give_the_same_logits(name):
    net = torch_model(name)
    logits, like = flax_model(name)
    variables, report = pruning.load_torch_variables(net.state_dict(), like)
    assert report.unused == () and report.unpaired == ()
    assert len(report.matched) == len(paths.flatten(like))
    assert_same_logits(net, logits, variables)


def test_ghost_parameters_are_untouched_and_off_at_alpha_zero():
    net = torch_model("resnet20")
    logits, like = flax_model("resnet20", ghost_skip="conv1x1")
    ghosts = {p: v for p, v in paths.flatten(like).items() if paths.is_ghost(p)}
    # Even a tensor named as the rule would name a ghost parameter is left alone.
    state = {**net.state_dict(), "layer1.0.ghost1.conv.weight": torch.ones(16, 16, 1, 1)}
    variables, report = pruning.load_torch_variables(state, like)
    assert ghosts and report.unpaired == () and report.unused == ("layer1.0.ghost1.conv.weight",)
    chex.assert_trees_all_equal({p: paths.flatten(variables)[p] for p in ghosts}, ghosts)
    assert_same_logits(net, logits, variables)


def reorder(tree, reverse):
    """``tree`` with every dict's keys in sorted (or reverse sorted) order."""
    if not isinstance(tree, dict):
        return tree
    return {k: reorder(tree[k], reverse) for k in sorted(tree, reverse=reverse)}


def test_pairing_does_not_depend_on_dict_order():
    from torch.nn.utils import prune
    net = torch_model("resnet18")
    for m in net.modules():
        if isinstance(m, (tnn.Conv2d, tnn.Linear)):
            prune.random_unstructured(m, "weight", amount=0.5)
    state = net.state_dict()
    params = flax_model("resnet18")[1]["params"]
    orders = {"reversed": reorder(params, True), "sorted": reorder(params, False),
              "unflatten": paths.unflatten(params, paths.flatten(params)),
              "jit": jax.jit(lambda p: p)(params)}
    # A jit sorts the keys: the classifier's kernel comes first, and pairing by position gave it
    # conv1.weight.
    assert list(orders["jit"])[:2] == ["bn1", "classifier"]
    assert list(orders["reversed"])[0] == "layer4_1"
    results = {k: pruning.load_torch_masks(state, p) for k, p in orders.items()}
    for masks, report in results.values():
        assert report == results["sorted"][1]
        chex.assert_trees_all_equal(reorder(masks, False), results["sorted"][0])
    matched = {t: f for t, f, _ in results["sorted"][1].matched}
    assert matched["conv1.weight"] == "conv1/kernel"
    assert matched["linear.weight"] == "classifier/kernel"
    assert matched["layer2.0.shortcut.0.weight"] == "layer2_0/conv_shortcut/kernel"


def test_masks_round_trip_torch_to_sparsejax_to_torch(tmp_path):
    from torch.nn.utils import prune
    net = torch_model("mobilenet_v2")
    for m in net.modules():
        if isinstance(m, (tnn.Conv2d, tnn.Linear)):
            prune.random_unstructured(m, "weight", amount=0.8)
    state = net.state_dict()
    logits, like = flax_model("mobilenet_v2")
    masks, report = pruning.load_torch_masks(state, like["params"])
    assert report.unused == () and report.unpaired == ()
    assert {src for _, _, src in report.matched} == {"weight_mask"}

    pruning.save_torch_masks(tmp_path / "masks.pt", masks, like["params"])
    back = torch.load(tmp_path / "masks.pt", weights_only=True)
    want = {k: v for k, v in state.items() if k.endswith("weight_mask")}
    assert set(back) == set(want)
    for k, v in want.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k

    # PyTorch code applies them, and the pruned weights (weight_orig * weight_mask) come over too.
    fresh = torch_model("mobilenet_v2")
    for name, m in fresh.named_modules():
        if isinstance(m, (tnn.Conv2d, tnn.Linear)):
            prune.custom_from_mask(m, "weight", back[f"{name}.weight_mask"])
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in want.items())
    variables, report = pruning.load_torch_variables(state, like)
    assert ("conv1.weight", "params/conv1/kernel", "weight_orig * weight_mask") in report.matched
    weights = paths.flatten(variables["params"])
    for path, mask in paths.flatten(masks).items():
        assert not np.asarray(weights[path])[~np.asarray(mask)].any(), path
    assert_same_logits(net, logits, variables)


def test_a_tensor_that_does_not_fit_names_both():
    state = torch_model("resnet20", num_classes=100).state_dict()
    _, like = flax_model("resnet20")
    match = (r"^torch tensor 'linear.weight' has shape \(100, 64\) \(\(64, 100\) in Flax layout\) "
             r"but flax parameter 'params/classifier/kernel' has shape \(64, 10\); build the Flax "
             r"model the checkpoint was made for .* or pass names=\{torch name: flax path\}$")
    with pytest.raises(FileFormatError, match=match):
        pruning.load_torch_variables(state, like)
    with pytest.raises(FileFormatError, match=r"'linear.weight' has shape \(100, 64\)"):
        pruning.load_torch_masks(state, like["params"])


def test_names_override_the_rule_and_the_report_lists_the_rest(tmp_path):
    state = {k.replace("linear.", "fc."): v
             for k, v in torch_model("resnet20").state_dict().items()}
    _, like = flax_model("resnet20")
    variables, report = pruning.load_torch_variables(state, like)
    assert report.unused == ("fc.weight", "fc.bias")
    assert report.unpaired == ("params/classifier/bias", "params/classifier/kernel")
    np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"], 0.25)
    assert "unused torch tensor: fc.weight" in str(report)

    names = {"fc.weight": "params/classifier/kernel", "bn1.running_var": "batch_stats/bn1/var"}
    variables, report = pruning.load_torch_variables(state, like, names=names)
    assert [(t, f) for t, f, _ in report.matched] == list(names.items())
    np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"],
                                  state["fc.weight"].numpy().T)
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"],
                                  state["bn1.running_var"].numpy())
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], 0.25)
    with pytest.raises(FileFormatError, match="names maps 'fc.kernel', which is not a tensor"):
        pruning.load_torch_variables(state, like, names={"fc.kernel": "params/classifier/kernel"})
    with pytest.raises(FileFormatError, match="no tensor of the PyTorch checkpoint has the name"):
        pruning.load_torch_variables({f"model.{k}": v for k, v in state.items()}, like)

    names = {"fc.weight_mask": "classifier/kernel"}
    masks, _ = pruning.load_torch_masks(state, like["params"], names=names)
    pruning.save_torch_masks(tmp_path / "fc.pt", masks, like["params"], names)
    assert list(torch.load(tmp_path / "fc.pt", weights_only=True)) == ["fc.weight_mask"]
    with pytest.raises(FileFormatError, match="'classifier/bias', which is not a prunable param"):
        pruning.save_torch_masks(tmp_path / "bias.pt", masks, like["params"],
                                 {"fc.bias": "classifier/bias"})


def test_variables_file_pt_through_the_config_key(tmp_path, capsys):
    state = torch_model("resnet20").state_dict()
    torch.save(state, tmp_path / "ticket.pt")
    _, like = flax_model("resnet20")
    want, _ = pruning.load_torch_variables(state, like)
    got = workdir_lib.load_variables(tmp_path / "ticket.pt", like)
    chex.assert_trees_all_equal(got, want)
    printed = capsys.readouterr().out
    assert "layer3.2.conv2.weight -> params/layer3_2/conv2/kernel (value)" in printed
    with pytest.raises(TrainError, match=r"'conv1.weight' has shape .*init.variables_file\)$"):
        workdir_lib.load_variables(tmp_path / "ticket.pt", flax_model("resnet18")[1])
    torch.save({k.replace("linear.", "fc."): v for k, v in state.items()}, tmp_path / "fc.pt")
    with pytest.raises(TrainError, match=r"lacks 'params/classifier/bias' \(2 entries\).*teacher"):
        workdir_lib.load_variables(tmp_path / "fc.pt", like, flag="recipe.distill.teacher",
                                   complete=True)
    with pytest.raises(TrainError, match="missing.pt' does not exist"):
        workdir_lib.load_variables(tmp_path / "missing.pt", like)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(TrainError, match="text.pt' is not a PyTorch checkpoint"):
        workdir_lib.load_variables(tmp_path / "text.pt", like)


@pytest.mark.slow
def test_a_run_starts_from_the_ticket_in_init_variables_file(tmp_path):
    state = torch_model("resnet20", in_channels=1).state_dict()  # digits are 8×8×1
    torch.save(state, tmp_path / "ticket.pt")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run(
        [sys.executable, "-m", "launch", "--config=configs/quickstart.py:variant=vanilla",
         f"--workdir={tmp_path}/w", "--config.num_epochs=1", "--config.batch_size=64",
         "--config.progress=False", "--config.mask.method=dense",
         f"--config.init.variables_file={tmp_path}/ticket.pt", "--config.init.save_at_epoch=0"],
        cwd=pathlib.Path(__file__).parents[1], env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    step0 = traverse_util.unflatten_dict(dict(np.load(tmp_path / "w" / "rewind.npz")), sep="/")
    want, report = pruning.load_torch_variables(state, step0)
    assert report.unused == () and report.unpaired == ()
    chex.assert_trees_all_equal(step0, want)
