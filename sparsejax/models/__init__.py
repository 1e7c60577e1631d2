"""The model zoo of the papers (CIFAR ResNets, VGG-16, MobileNets) with ToST ghost fields.

Every model is a Flax linen Module called as
``model.apply(variables, x, train=..., alpha=..., beta=...)`` on NHWC images (any size from 8×8 up;
global average pooling at the end), with ``mutable=["batch_stats"]`` when ``train``:

- ``alpha`` gates the ghost skips (paper 000 GSk). Default 0.0: ghost paths off, i.e. the original
  network. Ignored by models built with ``ghost_skip=None``.
- ``beta`` is PSwish's β (paper 000 GSw), read only with ``activation="pswish"``. Default None:
  β = 1 (Swish); +inf gives exactly ReLU.

Both are call arguments: pass them as arrays (or Python floats) into a jitted step and changing them
never recompiles. After the ghost phase, `remove_ghosts` returns the original architecture.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

import flax.linen as nn

from sparsejax.models.mobilenet import MobileNetV1, MobileNetV2
from sparsejax.models.resnet import ResNet
from sparsejax.models.vgg import VGG
from sparsejax.paths import without_ghosts

_CIFAR_WIDTHS = (64, 128, 256, 512)
_6N2_WIDTHS = (16, 32, 64)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": partial(ResNet, (2, 2, 2, 2), _CIFAR_WIDTHS),
    "resnet34": partial(ResNet, (3, 4, 6, 3), _CIFAR_WIDTHS),
    "resnet50": partial(ResNet, (3, 4, 6, 3), _CIFAR_WIDTHS, bottleneck=True),
    "resnet20": partial(ResNet, (3, 3, 3), _6N2_WIDTHS),
    "resnet32": partial(ResNet, (5, 5, 5), _6N2_WIDTHS),
    "resnet56": partial(ResNet, (9, 9, 9), _6N2_WIDTHS),
    "resnet104": partial(ResNet, (17, 17, 17), _6N2_WIDTHS),
    "vgg16": VGG,
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
}


def build(name: str, num_classes: int, *, activation: str = "relu",
          ghost_skip: str | None = None) -> nn.Module:
    """The model ``name`` (a key of `MODELS`) with a ``num_classes``-way classifier.

    ``activation``: one of `sparsejax.nn.ACTIVATIONS` ("relu", "swish", "pswish", "mish"), used
    wherever the original network has ReLU. ``ghost_skip``: None (plain), "identity" (paper rule) or
    "conv1x1" (released ToST code); see each model's module for where the ghost paths go. Raises
    ValueError for an unknown name, activation or ghost kind.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; use one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, activation=activation, ghost_skip=ghost_skip)


def remove_ghosts(model: nn.Module, variables: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """The original architecture after the ghost phase: (plain model, its variables).

    The plain model is ``model`` with ``ghost_skip=None``; a PSwish activation (ghost Swish, whose β
    ends at +inf) becomes ReLU, any other activation (ReLU, or a fixed Swish/Mish trained with ghost
    skips) is kept. Its variables are ``variables`` as nested dicts without the ghost parameters and
    ghost BatchNorm statistics (every entry under a module named "ghost*":
    `sparsejax.paths.without_ghosts`). All other paths are unchanged, so masks and optimizer state
    keyed by path carry over. The plain model equals ``model`` at α = 0 (and PSwish at β = +inf)
    bit for bit: at α = 0 each ghost term is exactly ±0.0 and adding it changes no value (tested
    with zero tolerance on every model).
    """
    if not hasattr(model, "ghost_skip") or not hasattr(model, "activation"):
        raise ValueError(f"remove_ghosts needs a model from sparsejax.models.build, got "
                         f"{type(model).__name__}")
    activation = "relu" if model.activation == "pswish" else model.activation
    plain = model.clone(ghost_skip=None, activation=activation)
    return plain, without_ghosts(variables)
