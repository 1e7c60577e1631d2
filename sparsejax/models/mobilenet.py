"""CIFAR MobileNet v1 and v2, with ghost skips.

Architectures as the PyTorch CIFAR definitions (kuangliu pytorch-cifar): stride-1 3×3 stem conv
(32 channels) + BN + activation; v1: 13 depthwise-separable blocks (3×3 depthwise, 1×1 pointwise,
each + BN + activation); v2: 17 inverted-residual blocks (1×1 expand, 3×3 depthwise, 1×1 linear
project; shortcut at stride 1, a 1×1 conv + BN where channels differ), the second stage at stride 1
for CIFAR, then a 1×1 conv to 1280 channels; both end with global average pooling and one dense
classifier. Convs have no bias; ReLU is the configured activation. Input (N, H, W, 3) NHWC; output
(N, num_classes) logits.

Ghost skips (paper 000's rule, applied where shapes allow): the only 3×3 convs inside the blocks are
depthwise, and each one at stride 1 gets a ghost path (the stem changes 3 → 32 channels and the
stride-2 depthwise convs change the shape, so they get none). Kind "conv1x1" uses a depthwise 1×1
conv + BN path, matching the grouping of the conv it bridges.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.models.common import check_config, conv_bn, shortcut
from sparsejax.nn import activate

# v1: (out channels, stride) per block.
# v2: (expansion, out channels, blocks, first stride) per stage.
V1_BLOCKS: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                                          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
                                          (1024, 2), (1024, 1))
V2_STAGES: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2),
                                                    (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                                    (6, 320, 1, 1))
STEM_WIDTH = 32
V2_HEAD_WIDTH = 1280


def _depthwise(x: jax.Array, strides: int, train: bool, ghost_skip: str | None,
               alpha: jax.typing.ArrayLike) -> jax.Array:
    """``conv_dw``/``bn_dw`` (3×3 depthwise), with ``ghost_dw`` when the stride is 1."""
    channels = x.shape[-1]
    return conv_bn(x, "_dw", channels, 3, strides, train=train, groups=channels,
                   ghost_skip=ghost_skip if strides == 1 else None, alpha=alpha)


class SeparableBlock(nn.Module):
    """v1 block: 3×3 depthwise (stride) → 1×1 pointwise to ``features`` channels."""

    features: int
    strides: int
    activation: str
    ghost_skip: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, alpha: jax.typing.ArrayLike,
                 beta: jax.typing.ArrayLike | None) -> jax.Array:
        y = activate(self.activation, _depthwise(x, self.strides, train, self.ghost_skip, alpha),
                     beta)
        return activate(self.activation, conv_bn(y, "_pw", self.features, 1, train=train), beta)


class InvertedResidual(nn.Module):
    """v2 block: 1×1 expand → 3×3 depthwise → 1×1 project (+ shortcut if stride 1)."""

    expansion: int
    features: int
    strides: int
    activation: str
    ghost_skip: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, alpha: jax.typing.ArrayLike,
                 beta: jax.typing.ArrayLike | None) -> jax.Array:
        y = activate(self.activation, conv_bn(x, "1", self.expansion * x.shape[-1], 1, train=train),
                     beta)
        y = activate(self.activation, _depthwise(y, self.strides, train, self.ghost_skip, alpha),
                     beta)
        y = conv_bn(y, "3", self.features, 1, train=train)
        return y if self.strides != 1 else y + shortcut(x, self.features, 1, train)


class _CifarMobileNet(nn.Module):
    """Common fields and checks of the two MobileNets."""

    num_classes: int
    activation: str = "relu"
    ghost_skip: str | None = None

    def __post_init__(self) -> None:
        check_config(self.num_classes, self.activation, self.ghost_skip)
        super().__post_init__()

    def _stem(self, x: jax.Array, train: bool, beta: jax.typing.ArrayLike | None) -> jax.Array:
        return activate(self.activation, conv_bn(x, "1", STEM_WIDTH, 3, train=train), beta)

    def _classify(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="classifier")(jnp.mean(x, axis=(1, 2)))


class MobileNetV1(_CifarMobileNet):
    """CIFAR MobileNet v1. Parameter paths: ``conv1``, ``block{i}/conv_{dw,pw}``, ``classifier``."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, alpha: jax.typing.ArrayLike = 0.0,
                 beta: jax.typing.ArrayLike | None = None) -> jax.Array:
        """Logits (N, num_classes) of images x (N, H, W, C); see `sparsejax.models` for α, β."""
        x = self._stem(x, train, beta)
        for index, (features, strides) in enumerate(V1_BLOCKS):
            x = SeparableBlock(features, strides, self.activation, self.ghost_skip,
                               name=f"block{index}")(x, train, alpha, beta)
        return self._classify(x)


class MobileNetV2(_CifarMobileNet):
    """CIFAR MobileNet v2.

    Parameter paths: ``conv1``, ``block{i}/conv{1,_dw,3}``, ``conv2``, ``classifier``.
    """

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, alpha: jax.typing.ArrayLike = 0.0,
                 beta: jax.typing.ArrayLike | None = None) -> jax.Array:
        """Logits (N, num_classes) of images x (N, H, W, C); see `sparsejax.models` for α, β."""
        x = self._stem(x, train, beta)
        index = 0
        for expansion, features, blocks, first_stride in V2_STAGES:
            for block in range(blocks):
                strides = first_stride if block == 0 else 1
                x = InvertedResidual(expansion, features, strides, self.activation, self.ghost_skip,
                                     name=f"block{index}")(x, train, alpha, beta)
                index += 1
        x = activate(self.activation, conv_bn(x, "2", V2_HEAD_WIDTH, 1, train=train), beta)
        return self._classify(x)
