"""Structure of a sparse network: per-layer density, empty neurons and inputs, FLOPs, condensing.

ALGORITHMS.md, "Analysis the papers report", after paper 004 (GGR):

- `report`: per prunable tensor its density and number of active weights (GGR Figure 2), its
  empty neurons (output units / output channels with no active weight) and empty inputs (input
  units / input channels with no active weight), and its dense size after removing both
  (GGR Table 4, "Params*": "the number of dense parameters that remain when the original parameter
  is scaled down in size by removing all completely empty neurons and inputs").
- `flops`: inference multiply-adds of each conv and dense layer, dense and sparse (GGR §4: a
  ResNet-18 at 97 % sparsity "processes 80 MFLOPs during inference compared to 119 MFLOPs with the
  dense MobileNetv2"; the paper does not define its FLOP, we count multiply-adds).
- `condense`: the network with its removable channels physically removed, a smaller dense network
  with the masked network's eval-mode logits (GGR §4: downsized tensors "are easier to accelerate
  on modern hardware than a sparse parameter tensor").

Kernels are HWIO for convolutions and (in, out) for dense layers: neurons are the last axis, inputs
the axis before it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib, paths
from sparsejax.models.common import conv_bn
from sparsejax.models.mobilenet import V1_BLOCKS, V2_STAGES, MobileNetV1, MobileNetV2
from sparsejax.models.resnet import ResNet
from sparsejax.models.vgg import POOL, VGG
from sparsejax.nn import activate, batch_norm


def _count_empty(mask: np.ndarray) -> tuple[int, int]:
    """(empty neurons, empty inputs) of a kernel mask: last-axis / second-to-last-axis slices with
    no True."""
    per_neuron = mask.reshape(-1, mask.shape[-1]).any(axis=0)
    per_input = np.moveaxis(mask, -2, 0).reshape(mask.shape[-2], -1).any(axis=1)
    return int(np.sum(~per_neuron)), int(np.sum(~per_input))


def report(params: Any, masks: Any, *, filter_fn: paths.FilterFn | None = None) -> dict[str, Any]:
    """Per-layer density, active weights, empty neurons and inputs, and size after removing them.

    For each prunable tensor (``sparsejax.paths.prunable`` with ``filter_fn``; default: conv and
    dense kernels), keyed by path in tree order, a dict with ``shape``; ``size`` (weights);
    ``active`` (True in the mask) and ``density`` = active / size (GGR Figure 2); ``neurons`` =
    shape[-1] and ``empty_neurons``, those with no active weight (a conv's output channel, a dense
    layer's output unit); ``inputs`` = shape[-2] and ``empty_inputs``, those from which no active
    weight leaves; ``condensed_size`` = size / (inputs · neurons) · (inputs − empty_inputs) ·
    (neurons − empty_neurons), the dense size once those rows and columns are cut out (GGR
    Table 4's Params*).

    Each tensor is counted on its own, as in Table 4: a neuron emptied in one layer is not counted
    as an empty input of the next (`condense` removes channels across layers). A depthwise kernel
    (kh, kw, 1, C) has a single input slice, empty only when the whole kernel is.

    ``total`` sums size, active, neurons, empty_neurons, inputs, empty_inputs and condensed_size
    over the layers, with ``density`` = active / size and the fractions ``empty_neuron_fraction``
    and ``empty_input_fraction`` (Table 4 reports them as percentages).

    Returns ``{"layers": {path: {...}}, "total": {...}}``. Raises ``ValueError`` if ``masks`` does
    not fit ``params`` (``sparsejax.masks.validate``) or there is no prunable tensor.
    """
    masks_lib.validate(masks, params)
    flat_masks = paths.flatten(masks)
    layers = {}
    for path, weight in paths.prunable(params, filter_fn, required=True).items():
        mask = np.asarray(flat_masks[path], bool)
        shape = tuple(int(d) for d in np.shape(weight))
        size, active = int(mask.size), int(np.count_nonzero(mask))
        empty_neurons, empty_inputs = _count_empty(mask)
        neurons, inputs = shape[-1], shape[-2]
        layers[path] = {
            "shape": shape, "size": size, "active": active, "density": active / size,
            "neurons": neurons, "empty_neurons": empty_neurons,
            "inputs": inputs, "empty_inputs": empty_inputs,
            "condensed_size": size // (inputs * neurons) * (inputs - empty_inputs)
                              * (neurons - empty_neurons)}
    keys = ("size", "active", "neurons", "empty_neurons", "inputs", "empty_inputs",
            "condensed_size")
    total: dict[str, Any] = {k: sum(layer[k] for layer in layers.values()) for k in keys}
    total["density"] = total["active"] / total["size"]
    total["empty_neuron_fraction"] = total["empty_neurons"] / total["neurons"]
    total["empty_input_fraction"] = total["empty_inputs"] / total["inputs"]
    return {"layers": layers, "total": total}


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise ValueError(f"input_shape is {input_shape!r}; expected the positive sizes of one "
                         "input without the batch axis, e.g. (32, 32, 3)")
    return tuple(int(d) for d in shape)


def flops(model: nn.Module, variables: Any, masks: Any,
          input_shape: Sequence[int]) -> dict[str, Any]:
    """Dense and sparse multiply-adds of each conv and dense layer for one input of ``input_shape``.

    ``model.apply(variables, x)`` runs once, abstractly (``jax.eval_shape``), on x of shape
    (1, *input_shape) (e.g. (H, W, C)), with every ``nn.Conv`` and ``nn.Dense`` call intercepted
    (``flax.linen.intercept_methods``) to read its input and output shapes. With P = the number of
    output positions (H_out · W_out for a conv, 1 for a dense layer on a vector):

    - dense = P · kh · kw · (C_in / feature_group_count) · C_out (dense layer: P · in · out);
      a depthwise conv (groups = C_in) costs P · kh · kw · C_out;
    - sparse = P · (active weights of the kernel in ``masks``): every active weight is one
      multiply-add per output position.

    Taps on zero padding count as multiply-adds; biases, BatchNorm, activations and pooling are
    not counted (the usual convention). A layer called more than once adds up its calls.

    Returns ``{"layers": {kernel path: {"output_shape", "dense", "sparse"}}, "dense": total,
    "sparse": total}``; kernel paths as in ``report``. Raises ``ValueError`` if ``masks`` does not
    fit ``variables["params"]`` (``sparsejax.masks.validate``) or ``input_shape`` is not a tuple of
    positive ints.
    """
    shape = _check_input_shape(input_shape)
    masks_lib.validate(masks, variables["params"])
    flat_masks = paths.flatten(masks)
    calls: list[tuple[str, tuple[int, ...], int]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            c_in = int(args[0].shape[-1])
            if isinstance(module, nn.Conv):
                per_position = (int(np.prod(module.kernel_size))
                                * (c_in // module.feature_group_count)
                                * module.features)
            else:
                per_position = c_in * module.features
            calls.append(("/".join(module.path) + "/kernel", tuple(out.shape), per_position))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                       jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    layers: dict[str, dict[str, Any]] = {}
    for path, out_shape, per_position in calls:
        positions = int(np.prod(out_shape[:-1]))
        active = int(np.count_nonzero(np.asarray(flat_masks[path])))
        layer = layers.setdefault(path, {"output_shape": out_shape[1:], "dense": 0, "sparse": 0})
        layer["dense"] += positions * per_position
        layer["sparse"] += positions * active
    return {"layers": layers, "dense": sum(layer["dense"] for layer in layers.values()),
            "sparse": sum(layer["sparse"] for layer in layers.values())}


# ---- condense: a generic network that replays the zoo's layer sequence with any widths ----------


@dataclasses.dataclass(frozen=True)
class Unit:
    """``conv{suffix}`` → ``bn{suffix}`` (→ activation if ``act``), by ``models.common.conv_bn``.

    A depthwise unit has ``features`` groups (one per channel)."""

    suffix: str
    features: int
    kernel_size: int
    strides: int = 1
    depthwise: bool = False
    use_bias: bool = False
    act: bool = True


@dataclasses.dataclass(frozen=True)
class Pool:
    """2×2 max-pool, stride 2, "SAME" padding (VGG)."""


@dataclasses.dataclass(frozen=True)
class Block:
    """A named submodule: ``body`` units in sequence; with ``residual``, plus the block input
    (``shortcut`` None) or ``shortcut``(input); then the activation if ``act_after``."""

    name: str
    body: tuple[Unit, ...]
    residual: bool = False
    shortcut: Unit | None = None
    act_after: bool = False


@dataclasses.dataclass(frozen=True)
class Classify:
    """Global average pooling and the dense layer ``classifier``."""

    features: int


Op = Union[Unit, Pool, Block, Classify]


def _run_unit(x: jax.Array, unit: Unit, activation: str) -> jax.Array:
    groups = unit.features if unit.depthwise else 1
    y = conv_bn(x, unit.suffix, unit.features, unit.kernel_size, unit.strides, train=False,
                groups=groups, use_bias=unit.use_bias)
    return activate(activation, y) if unit.act else y


class _Block(nn.Module):
    block: Block
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for unit in self.block.body:
            y = _run_unit(y, unit, self.activation)
        if self.block.residual:
            y = y + (x if self.block.shortcut is None
                     else _run_unit(x, self.block.shortcut, self.activation))
        return activate(self.activation, y) if self.block.act_after else y


class Condensed(nn.Module):
    """A zoo network replayed op by op from ``program`` with any widths; eval mode only.

    Parameter paths are the original model's (``conv1/kernel``, ``layer1_0/bn1/scale``,
    ``block3/conv_dw/kernel``, ``classifier/kernel``), so per-path tools carry over. Called as
    ``Condensed(...).apply(variables, x)`` on NHWC images; BatchNorm always uses the running
    statistics.
    """

    program: tuple[Op, ...]
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (N, classes) of images x (N, H, W, C)."""
        for op in self.program:
            if isinstance(op, Unit):
                x = _run_unit(x, op, self.activation)
            elif isinstance(op, Pool):
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
            elif isinstance(op, Block):
                x = _Block(op, self.activation, name=op.name)(x)
            else:
                x = nn.Dense(op.features, name="classifier")(jnp.mean(x, axis=(1, 2)))
        return x


def _unit(params: dict[str, Any], prefix: str, suffix: str, strides: int = 1, *,
          depthwise: bool = False, act: bool = True) -> Unit:
    """The Unit of ``{prefix}conv{suffix}``, its width and kernel size read from the params."""
    kernel = np.shape(params[f"{prefix}conv{suffix}/kernel"])
    return Unit(suffix, int(kernel[-1]), int(kernel[0]), strides, depthwise,
                f"{prefix}conv{suffix}/bias" in params, act)


def _shortcut(params: dict[str, Any], prefix: str, strides: int) -> Unit | None:
    if f"{prefix}conv_shortcut/kernel" not in params:
        return None
    return _unit(params, prefix, "_shortcut", strides, act=False)


def _resnet(model: ResNet, params: dict[str, Any]) -> list[Op]:
    ops: list[Op] = [_unit(params, "", "1")]
    for stage, size in enumerate(model.stage_sizes):
        for index in range(size):
            strides = 2 if stage > 0 and index == 0 else 1
            name = f"layer{stage + 1}_{index}"
            p = name + "/"
            if model.bottleneck:
                body = (_unit(params, p, "1"), _unit(params, p, "2", strides),
                        _unit(params, p, "3", act=False))
            else:
                body = (_unit(params, p, "1", strides), _unit(params, p, "2", act=False))
            ops.append(Block(name, body, True, _shortcut(params, p, strides), True))
    return ops


def _vgg(model: VGG, params: dict[str, Any]) -> list[Op]:
    ops: list[Op] = []
    index = 0
    for layer in model.layers:
        if layer == POOL:
            ops.append(Pool())
        else:
            ops.append(_unit(params, "", f"_{index}"))
            index += 1
    return ops


def _mobilenet_v1(params: dict[str, Any]) -> list[Op]:
    ops: list[Op] = [_unit(params, "", "1")]
    for index, (_, strides) in enumerate(V1_BLOCKS):
        p = f"block{index}/"
        ops.append(Block(f"block{index}", (_unit(params, p, "_dw", strides, depthwise=True),
                                           _unit(params, p, "_pw"))))
    return ops


def _mobilenet_v2(params: dict[str, Any]) -> list[Op]:
    ops: list[Op] = [_unit(params, "", "1")]
    index = 0
    for _, _, blocks, first_stride in V2_STAGES:
        for block in range(blocks):
            strides = first_stride if block == 0 else 1
            p = f"block{index}/"
            body = (_unit(params, p, "1"), _unit(params, p, "_dw", strides, depthwise=True),
                    _unit(params, p, "3", act=False))
            ops.append(Block(f"block{index}", body, strides == 1, _shortcut(params, p, 1)))
            index += 1
    ops.append(_unit(params, "", "2"))
    return ops


SUPPORTED = (ResNet, VGG, MobileNetV1, MobileNetV2)


def _program(model: nn.Module, params: dict[str, Any]) -> tuple[Op, ...]:
    """The op sequence of a zoo model, with the widths of ``params`` (flat, by path)."""
    if isinstance(model, ResNet):
        ops = _resnet(model, params)
    elif isinstance(model, VGG):
        ops = _vgg(model, params)
    elif isinstance(model, MobileNetV1):
        ops = _mobilenet_v1(params)
    else:
        ops = _mobilenet_v2(params)
    return (*ops, Classify(int(np.shape(params["classifier/kernel"])[-1])))


@dataclasses.dataclass(frozen=True)
class _Place:
    """Where a unit's modules are: ``{prefix}conv{suffix}`` and ``{prefix}bn{suffix}``."""

    prefix: str
    suffix: str

    @property
    def conv(self) -> str:
        return f"{self.prefix}conv{self.suffix}"

    @property
    def bn(self) -> str:
        return f"{self.prefix}bn{self.suffix}"


@dataclasses.dataclass(frozen=True)
class _Link:
    """Channels made by ``producer`` (conv, BN, activation), passed through ``chain`` (depthwise
    conv, BN, activation; per channel), read only by the kernel of the module ``consumer`` (its
    axis −2); max-pools in between keep a spatially constant channel constant."""

    producer: _Place
    chain: tuple[_Place, ...]
    consumer: str


_BARRIER = object()


def _links(program: tuple[Op, ...]) -> list[_Link]:
    """Every producer → [depthwise …] → consumer link of ``program``.

    A residual block's input feeds its body and its shortcut, and its output is a sum: both are
    barriers, no link crosses them. A unit without activation ends a link (its output may be any
    value, e.g. a linear bottleneck).
    """
    events: list[Any] = []
    for op in program:
        if isinstance(op, Block):
            barrier = op.residual or op.act_after
            events += [_BARRIER] * barrier
            events += [(op.name + "/", unit) for unit in op.body]
            events += [_BARRIER] * barrier
        else:
            events.append(op if isinstance(op, (Pool, Classify)) else ("", op))
    links, producer, chain = [], None, []
    for event in events:
        if event is _BARRIER:
            producer, chain = None, []
        elif isinstance(event, Classify):
            if producer:
                links.append(_Link(producer, tuple(chain), "classifier"))
        elif isinstance(event, tuple):
            prefix, unit = event
            place = _Place(prefix, unit.suffix)
            if unit.depthwise and producer and unit.act:
                chain.append(place)
                continue
            if producer and not unit.depthwise:
                links.append(_Link(producer, tuple(chain), place.conv))
            producer = place if unit.act and not unit.depthwise else None
            chain = []
    return links


def _active_out(mask: np.ndarray) -> np.ndarray:
    """Per output channel (last axis): has any active weight."""
    return mask.reshape(-1, mask.shape[-1]).any(axis=0)


_BN_EPSILON = batch_norm(False, name="bn").epsilon
ZERO_MARGIN = 1e-6  # ≈ 8 float32 ulps: a BN constant this close to 0 may round to either side


class _Network:
    """The flat (by path) params, BatchNorm statistics and masks being condensed."""

    def __init__(self, params: dict[str, np.ndarray], stats: dict[str, np.ndarray],
                 masks: dict[str, np.ndarray], activation: str):
        self.params, self.stats, self.masks, self.activation = params, stats, masks, activation

    def _zero_after(self, unit: _Place, pre_bn: np.ndarray) -> np.ndarray:
        """Per channel of ``unit``: act(BN(pre_bn)) in eval mode is provably exactly 0.

        BN as Flax computes it: (x − mean) · γ / sqrt(var + eps) + β. It is exactly β when
        x = mean or γ = 0, so act(0) = 0 for β = 0 (every activation); and ReLU maps any BN value
        ≤ 0 to 0, provided it stays ≤ 0 under float32 rounding: it must lie at least
        `ZERO_MARGIN` (relative to the size of its terms) below 0.
        """
        gamma = self.params[f"{unit.bn}/scale"].astype(np.float64)
        beta = self.params[f"{unit.bn}/bias"].astype(np.float64)
        mean = self.stats[f"{unit.bn}/mean"].astype(np.float64)
        var = self.stats[f"{unit.bn}/var"].astype(np.float64)
        scaled = (pre_bn.astype(np.float64) - mean) * gamma / np.sqrt(var + _BN_EPSILON)
        exact = (scaled == 0) & (beta == 0)
        if self.activation != "relu":
            return exact
        return exact | (scaled + beta <= -ZERO_MARGIN * (np.abs(scaled) + np.abs(beta)))

    def _pre_bn_constant(self, unit: _Place, width: int) -> np.ndarray:
        """A conv channel's value before BN when no active weight enters it: its bias, or 0."""
        bias = self.params.get(unit.conv + "/bias")
        return np.zeros(width, np.float32) if bias is None else bias

    def removable(self, link: _Link) -> np.ndarray:
        """Per channel of ``link``: True if removing it provably leaves the logits unchanged.

        Removable if the consumer reads it with no active weight, or if it is exactly 0
        everywhere the consumer reads it. Tracked per channel along the link: ``zero``, the value
        is 0 at every position. A conv channel with no active incoming weight is its bias (or 0)
        everywhere, hence zero after BN and activation if `_zero_after` says so; a depthwise
        channel is constant before BN if it has no active weight or its input is zero (zero
        padding turns any other constant input into a position-dependent border pattern).
        """
        kernel = self.masks[link.producer.conv + "/kernel"]
        width = kernel.shape[-1]
        constant = ~_active_out(kernel)
        zero = constant & self._zero_after(link.producer,
                                           self._pre_bn_constant(link.producer, width))
        for unit in link.chain:
            constant = zero | ~_active_out(self.masks[unit.conv + "/kernel"])
            zero = constant & self._zero_after(unit, self._pre_bn_constant(unit, width))
        read = self.masks[link.consumer + "/kernel"]
        used = np.moveaxis(read, -2, 0).reshape(width, -1).any(axis=1)
        return zero | ~used

    def _cut(self, path: str, keep: np.ndarray, axis: int) -> None:
        for tree in (self.params, self.stats, self.masks):
            if path in tree:
                tree[path] = np.compress(keep, tree[path], axis=axis)

    def remove(self, link: _Link, keep: np.ndarray) -> None:
        """Cuts the channels not in ``keep`` out of every tensor of ``link``."""
        for unit in (link.producer, *link.chain):
            self._cut(unit.conv + "/kernel", keep, -1)
            self._cut(unit.conv + "/bias", keep, 0)
            for name in ("scale", "bias", "mean", "var"):
                self._cut(f"{unit.bn}/{name}", keep, 0)
        self._cut(link.consumer + "/kernel", keep, -2)


def _check_condensable(model: nn.Module, variables: Any) -> None:
    if not isinstance(model, SUPPORTED):
        raise ValueError(f"condense supports the zoo's {', '.join(c.__name__ for c in SUPPORTED)}, "
                         f"got {type(model).__name__}; build the model with "
                         "sparsejax.models.build")
    if model.ghost_skip is not None:
        raise ValueError(f"condense needs the plain network, got ghost_skip="
                         f"{model.ghost_skip!r}; call sparsejax.models.remove_ghosts first")
    if model.activation == "pswish":
        raise ValueError("condense needs a fixed activation, got 'pswish' (β is a call "
                         "argument); call sparsejax.models.remove_ghosts first (it gives ReLU)")
    if "params" not in variables or "batch_stats" not in variables:
        raise ValueError(f"variables has collections {sorted(variables)}; expected 'params' and "
                         "'batch_stats' as returned by model.init")


def condense(model: nn.Module, variables: Any, masks: Any) -> tuple[Condensed, dict[str, Any]]:
    """The masked network with its removable channels physically removed: (model, variables).

    The reference is the masked network in eval mode,
    ``model.apply({"params": sparsejax.masks.apply(params, masks), "batch_stats": ...}, x)``;
    the returned ``Condensed`` model computes the same logits (up to float rounding: the convs
    have other shapes) with smaller dense tensors. Its variables are the masked params (pruned
    weights exactly 0) and statistics with the removed channels cut out, under the original
    paths (``masks`` of the smaller network: ``jax.tree.map(lambda p: p != 0, params)``).

    Removed: a channel c between a conv (+ BN + activation) and the one conv or dense layer that
    reads it, possibly through max-pools (VGG) and per-channel depthwise convs (+ BN +
    activation; MobileNets), when
    - the reader has no active weight leaving c (its value is never used), or
    - c is exactly 0 where it is read: its conv has no active weight into c, so before BN it is
      its bias (or 0) everywhere and after BN (eval) the constant
      b_c = β_c + γ_c·(bias_c − mean_c)/sqrt(var_c + eps), and act(b_c) == 0: with ReLU
      b_c ≤ 0 (at least `ZERO_MARGIN` relative below 0, so that float32 rounding cannot make it
      positive, or exactly β_c = 0 with bias_c = mean_c or γ_c = 0); with Swish or Mish only
      that exact b_c = 0. Through a depthwise conv only 0 stays a constant (zero padding makes
      any other constant position-dependent at the borders); a depthwise channel with no active
      weight is its own BN constant, again removable only if act of it is 0.
    Removing a channel cuts its column (and bias, BN entries) from the producer, the depthwise
    convs and BNs on the way, and its row from the reader. Removal repeats until nothing changes
    (cutting a reader's output channel can leave an earlier channel unused). Each link keeps at
    least one channel.

    Not removed: a constant nonzero channel that is still read (it could be folded into the
    reader's BN or bias for 1×1 convs and the classifier, which is not done); channels on the
    residual stream (ResNet stem and block outputs, MobileNetV2 block outputs), which feed a sum
    and keep their width; ResNet blocks lose only inner channels (conv1 → conv2, and conv2 →
    conv3 in bottlenecks), MobileNetV2 blocks only expanded ones (conv1 → depthwise → conv3, and
    its head conv2 → classifier); VGG and MobileNetV1 are chains, every channel can go.

    Supports ResNet (basic and bottleneck), VGG, MobileNetV1 and MobileNetV2 of
    ``sparsejax.models`` without ghost paths and with ReLU, Swish or Mish. Raises ``ValueError``
    for other models, ghost paths or PSwish (``sparsejax.models.remove_ghosts`` first), variables
    without ``batch_stats``, or masks that do not fit (``sparsejax.masks.validate``).
    """
    _check_condensable(model, variables)
    params = variables["params"]
    masks_lib.validate(masks, params)
    as_numpy = lambda tree: {p: np.asarray(v) for p, v in paths.flatten(tree).items()}
    flat_masks = as_numpy(masks)
    masked = {p: np.where(flat_masks[p], v, np.zeros_like(v)) for p, v in as_numpy(params).items()}
    net = _Network(masked, as_numpy(variables["batch_stats"]), flat_masks, model.activation)
    links = _links(_program(model, net.params))
    changed = True
    while changed:
        changed = False
        for link in links:
            keep = ~net.removable(link)
            if not keep.any():
                keep[0] = True
            if not keep.all():
                net.remove(link, keep)
                changed = True
    smaller = Condensed(_program(model, net.params), model.activation)
    as_arrays = lambda flat: {p: jnp.asarray(v) for p, v in flat.items()}
    return smaller, {"params": paths.unflatten(params, as_arrays(net.params)),
                     "batch_stats": paths.unflatten(variables["batch_stats"],
                                                    as_arrays(net.stats))}
