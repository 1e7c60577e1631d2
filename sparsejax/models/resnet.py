"""CIFAR ResNets 18/34/50 (widths 64–512) and 6n+2 (20/32/56/104, widths 16/32/64), with ghosts.

Architecture as the PyTorch CIFAR definitions (kuangliu pytorch-cifar; 6n+2 with 1×1 conv + BN
projection shortcuts): 3×3 stride-1 stem conv + BN + activation, no max-pool; stages of basic or
bottleneck blocks, the first block of every stage after the first with stride 2; global average
pooling; one dense classifier. Convs have no bias. Input (N, H, W, 3) NHWC, any H, W ≥ 1; output
(N, num_classes) logits.

Ghost skips (paper 000 Fig. 4): in every basic block, one ghost path around each 3×3 conv, added
before the activation: ``act(bn1(conv1(x)) + α g1(x))`` and
``act(bn2(conv2(y)) + shortcut(x) + α g2(y))`` (the released code adds the second one together with
the regular shortcut). Bottleneck blocks (ResNet-50) get one ghost path, around their 3×3 conv:
``act(bn2(conv2(y)) + α g2(y))``. The released code has no ghost path in bottleneck blocks
(``resnet_modified.py`` defines jump branches for ``BasicBlock`` only), yet paper 000's tables train
ResNet-50 with ToST; the 3×3 conv is where the paper's rule ("around each 3×3 conv") applies, so
that is the one we bridge. The 1×1 convs keep no ghost path.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.models.common import check_config, conv_bn, shortcut
from sparsejax.nn import activate


class BasicBlock(nn.Module):
    """Two 3×3 convs + shortcut, ``features`` out-channels; optional ghost paths around both."""

    features: int
    strides: int
    activation: str
    ghost_skip: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, alpha: jax.typing.ArrayLike,
                 beta: jax.typing.ArrayLike | None) -> jax.Array:
        ghost = dict(ghost_skip=self.ghost_skip, alpha=alpha, train=train)
        y = conv_bn(x, "1", self.features, 3, self.strides, **ghost)
        y = activate(self.activation, y, beta)
        z = conv_bn(y, "2", self.features, 3, **ghost)
        return activate(self.activation, z + shortcut(x, self.features, self.strides, train), beta)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (4× ``features`` out-channels) + shortcut; optional ghost path
    ``ghost2`` around the 3×3 conv."""

    features: int
    strides: int
    activation: str
    ghost_skip: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, alpha: jax.typing.ArrayLike,
                 beta: jax.typing.ArrayLike | None) -> jax.Array:
        out = 4 * self.features
        y = activate(self.activation, conv_bn(x, "1", self.features, 1, train=train), beta)
        y = activate(self.activation, conv_bn(y, "2", self.features, 3, self.strides, train=train,
                                              ghost_skip=self.ghost_skip, alpha=alpha), beta)
        z = conv_bn(y, "3", out, 1, train=train)
        return activate(self.activation, z + shortcut(x, out, self.strides, train), beta)


class ResNet(nn.Module):
    """A CIFAR ResNet; ``stage_sizes`` blocks per stage of ``widths`` channels (stem = widths[0]).

    Parameter paths: ``conv1``, ``bn1`` (stem), ``layer{stage}_{block}/conv{1,2,3}``,
    ``.../conv_shortcut``, ghost paths ``.../ghost{1,2}/...``, ``classifier``.
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int]
    num_classes: int
    bottleneck: bool = False
    activation: str = "relu"
    ghost_skip: str | None = None

    def __post_init__(self) -> None:
        check_config(self.num_classes, self.activation, self.ghost_skip)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, alpha: jax.typing.ArrayLike = 0.0,
                 beta: jax.typing.ArrayLike | None = None) -> jax.Array:
        """Logits (N, num_classes) of images x (N, H, W, C); see `sparsejax.models` for α, β."""
        x = activate(self.activation, conv_bn(x, "1", self.widths[0], 3, train=train), beta)
        block = partial(Bottleneck if self.bottleneck else BasicBlock, ghost_skip=self.ghost_skip)
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for index in range(size):
                strides = 2 if stage > 0 and index == 0 else 1
                name = f"layer{stage + 1}_{index}"
                x = block(width, strides, self.activation, name=name)(x, train, alpha, beta)
        return nn.Dense(self.num_classes, name="classifier")(jnp.mean(x, axis=(1, 2)))
