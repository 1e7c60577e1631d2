"""Classification losses of the ToST recipe (ALGORITHMS.md, "Label smoothing").

Label smoothing α has two variants: ``"paper"`` (the default), y_LS = y(1 − α) + α/K
(``optax.smooth_labels``), and ``"released"``, the released code's, where the target keeps 1 − α and
every other class gets α/(K − 1).
"""

from __future__ import annotations

import jax
import optax

VARIANTS = ("paper", "released")


def check_smoothing(smoothing: float, variant: str) -> None:
    """Raises ``ValueError`` for an unknown variant or a smoothing outside [0, 1)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown label-smoothing variant {variant!r}; use one of {VARIANTS}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing is {smoothing}; it must lie in [0, 1)")


def smoothed_targets(labels: jax.Array, num_classes: int, smoothing: float,
                     variant: str = "paper") -> jax.Array:
    """Soft targets of shape ``labels.shape + (num_classes,)`` for integer ``labels``."""
    check_smoothing(smoothing, variant)
    one_hot = jax.nn.one_hot(labels, num_classes)
    if variant == "paper":
        return optax.smooth_labels(one_hot, smoothing)
    return one_hot * (1.0 - smoothing) + (1.0 - one_hot) * smoothing / (num_classes - 1)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0,
                  variant: str = "paper") -> jax.Array:
    """Per-example softmax cross-entropy of ``logits`` [B, K] against smoothed integer ``labels`` [B]."""
    targets = smoothed_targets(labels, logits.shape[-1], smoothing, variant)
    return optax.softmax_cross_entropy(logits, targets)
