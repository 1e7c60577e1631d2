"""Conv and BatchNorm factories shared by the model zoo and the ghost paths.

Conventions follow the PyTorch CIFAR definitions the papers use, so that shapes, counts and masks
carry over: inputs NHWC, kernels HWIO; a k×k conv pads k // 2 on every side (PyTorch ``padding=1``
for 3×3, which differs from Flax "SAME" at stride 2); BatchNorm with PyTorch's momentum 0.1 (Flax
``momentum=0.9``) and epsilon 1e-5. Conv kernels use He-normal (fan_out) init, as torchvision.
"""

from __future__ import annotations

import flax.linen as nn

HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
BN_MOMENTUM = 0.9  # Flax's convention: running = momentum · running + (1 − momentum) · batch


def conv(features: int, kernel_size: int, strides: int = 1, *, groups: int = 1,
         use_bias: bool = False, kernel_init: nn.initializers.Initializer = HE_NORMAL,
         name: str) -> nn.Conv:
    """A square ``kernel_size`` conv with PyTorch padding; ``groups`` = in-channels is depthwise."""
    pad = kernel_size // 2
    return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                   padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                   use_bias=use_bias, kernel_init=kernel_init, name=name)


def batch_norm(train: bool, *, name: str) -> nn.BatchNorm:
    """BatchNorm over the channel axis: batch statistics when ``train``, running ones otherwise."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5, name=name)
