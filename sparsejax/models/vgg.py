"""VGG-16 with BatchNorm for CIFAR, with ghost skips.

Architecture as the PyTorch CIFAR definition (kuangliu pytorch-cifar): 13 3×3 convs with bias, each
followed by BN and the activation, five 2×2 max-pools, global average pooling, one dense classifier
(512 → num_classes). Input (N, H, W, 3) NHWC; output (N, num_classes) logits. Max-pools use "SAME"
padding: identical to PyTorch's on even sizes (32×32, 64×64), and a 1×1 map stays 1×1, so inputs as
small as 8×8 work.

Ghost skips (paper 000's rule "add the input of each 3×3 conv to its output before the activation",
applied where shapes allow): every conv whose input already has its output channel count gets one
(9 of the 13 convs; VGG convs never stride). The 4 convs that change the channel count (3→64,
64→128, 128→256, 256→512) get none, so the model keeps its plain-VGG character; kind "conv1x1" uses
the released code's 1×1 conv + BN path at the same places.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.models.common import check_config, conv_bn
from sparsejax.nn import activate

POOL = "M"
VGG16_LAYERS: tuple[int | str, ...] = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                                       512, 512, 512, POOL, 512, 512, 512, POOL)


class VGG(nn.Module):
    """A VGG with BN; ``layers`` lists conv widths and "M" for 2×2 max-pools.

    Parameter paths: ``conv_{i}``, ``bn_{i}``, ``ghost_{i}`` of conv i (from 0), ``classifier``.
    """

    num_classes: int
    layers: Sequence[int | str] = VGG16_LAYERS
    activation: str = "relu"
    ghost_skip: str | None = None

    def __post_init__(self) -> None:
        check_config(self.num_classes, self.activation, self.ghost_skip)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, alpha: jax.typing.ArrayLike = 0.0,
                 beta: jax.typing.ArrayLike | None = None) -> jax.Array:
        """Logits (N, num_classes) of images x (N, H, W, C); see `sparsejax.models` for α, β."""
        index = 0
        for layer in self.layers:
            if layer == POOL:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
                continue
            ghost = self.ghost_skip if x.shape[-1] == layer else None
            x = conv_bn(x, f"_{index}", layer, 3, train=train, use_bias=True, ghost_skip=ghost,
                        alpha=alpha)
            x = activate(self.activation, x, beta)
            index += 1
        return nn.Dense(self.num_classes, name="classifier")(jnp.mean(x, axis=(1, 2)))
