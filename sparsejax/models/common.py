"""What every model is made of: conv → BatchNorm (→ ghost path) units, shortcuts, config checks."""

from __future__ import annotations

import jax

from sparsejax.nn import GhostSkip, batch_norm, check_activation, check_ghost_kind, conv


def check_config(num_classes: int, activation: str, ghost_skip: str | None) -> None:
    """Raises ValueError naming the bad value of a model's common fields."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    check_activation(activation)
    check_ghost_kind(ghost_skip)


def conv_bn(x: jax.Array, suffix: str, features: int, kernel_size: int, strides: int = 1, *,
            train: bool, groups: int = 1, use_bias: bool = False, ghost_skip: str | None = None,
            alpha: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """``bn{suffix}(conv{suffix}(x))``, plus ``ghost{suffix}`` = α · path(x) if ``ghost_skip``.

    Creates its modules in the calling (compact) module, so their parameter paths are flat:
    ``conv1/kernel``, ``bn1/scale``, ``ghost1/conv/kernel``. The result is pre-activation.
    """
    y = conv(features, kernel_size, strides, groups=groups, use_bias=use_bias,
             name=f"conv{suffix}")(x)
    y = batch_norm(train, name=f"bn{suffix}")(y)
    if ghost_skip is not None:
        ghost = GhostSkip(ghost_skip, features, strides, groups, name=f"ghost{suffix}")
        y = y + ghost(x, alpha, train)
    return y


def shortcut(x: jax.Array, features: int, strides: int, train: bool) -> jax.Array:
    """A residual shortcut: x where shapes match, else ``conv_shortcut`` + ``bn_shortcut`` (1×1)."""
    if strides == 1 and x.shape[-1] == features:
        return x
    return conv_bn(x, "_shortcut", features, 1, strides, train=train)
