"""Ghost skip connections (GSk, paper 000 §2.2): α-gated extra paths around a 3×3 conv.

A ghost path adds a path from the input x of a 3×3 conv to that conv's (BatchNorm-ed) output, before
the activation, scaled by the gate α (a call argument: 1 at the start, scheduled to exactly 0).
Two kinds:

- ``"conv1x1"`` (default, `DEFAULT_GHOST`): the released ToST code's "jump" branch
  (``skip_connection/models/resnet_modified.py``: ``conv_jump{1,2}`` + ``conv_jump{1,2}_bn``), a 1×1
  conv with the bridged conv's stride + its own BatchNorm, conv weights filled with 1e-4, trained
  densely. This is what produced the paper's tables, and it is the default for that reason and for a
  measured one: its BatchNorm keeps the block outputs at the scale of the plain network (RMS 1.1–2.8
  on ResNet-20), while identity paths at α = 1 double the block-output RMS at every stage
  (1.9 → 4.0 → 8.0) and stall early training.
- ``"identity"`` (the paper text's reading, an option): x itself; where the conv changes the shape
  (stride or channels) a 1×1 conv + BatchNorm projection, like a ResNet projection shortcut.

Ghost modules must be named with the prefix "ghost" (`sparsejax.paths.is_ghost`) so that the
default prunable filter leaves their parameters dense and `remove_ghosts` can drop them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.nn.layers import HE_NORMAL, batch_norm, conv

GHOST_KINDS: tuple[str, ...] = ("conv1x1", "identity")
DEFAULT_GHOST = "conv1x1"
RELEASED_JUMP_INIT = 1e-4


def check_ghost_kind(kind: str | None) -> None:
    """Raises ValueError unless ``kind`` is None (no ghost paths) or one of `GHOST_KINDS`."""
    if kind is not None and kind not in GHOST_KINDS:
        raise ValueError(f"unknown ghost_skip {kind!r}; use None or one of "
                         f"{', '.join(GHOST_KINDS)}")


class GhostSkip(nn.Module):
    """α · path(x) for the 3×3 conv ``x -> features`` at ``strides`` with ``groups`` groups.

    Input (N, H, W, C); output (N, ceil(H / strides), ceil(W / strides), features), to be added to
    the conv's output before its activation. A projection has the bridged conv's stride and grouping
    (a depthwise 3×3 gets a depthwise 1×1 path).
    """

    kind: str
    features: int
    strides: int = 1
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, alpha: jax.typing.ArrayLike, train: bool) -> jax.Array:
        check_ghost_kind(self.kind)
        if self.kind == "identity" and self.strides == 1 and x.shape[-1] == self.features:
            path = x
        else:
            init = (nn.initializers.constant(RELEASED_JUMP_INIT) if self.kind == "conv1x1"
                    else HE_NORMAL)
            path = conv(self.features, 1, self.strides, groups=self.groups, kernel_init=init,
                        name="conv")(x)
            path = batch_norm(train, name="bn")(path)
        return jnp.asarray(alpha, path.dtype) * path
