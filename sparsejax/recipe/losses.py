"""Classification losses of the ToST recipe (ALGORITHMS.md, "Label smoothing", "Knowledge distillation").

Label smoothing α has two variants: ``"paper"`` (the default), y_LS = y(1 − α) + α/K
(``optax.smooth_labels``), and ``"released"``, the released code's, where the target keeps 1 − α and
every other class gets α/(K − 1). ``distillation`` mixes that cross-entropy with a teacher's softened
outputs (Hinton et al.).
"""

from __future__ import annotations

import math

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


def check_distillation(temperature: float, weight: float) -> None:
    """Raises ``ValueError`` for a temperature that is not finite and > 0, or a weight outside [0, 1]."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"distillation temperature is {temperature}; it must be finite and > 0")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation weight is {weight}; it must lie in [0, 1]")


def distillation(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
                 temperature: float, weight: float, smoothing: float = 0.0,
                 variant: str = "paper") -> jax.Array:
    """Per-example knowledge-distillation loss [B] of student ``s`` and teacher ``t`` logits [B, K].

    (1 − w)·CE(y_LS, softmax(s)) + w·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), τ the ``temperature``,
    w the ``weight``, y_LS the ``smoothing``/``variant`` targets of ``cross_entropy``. The teacher is
    a constant (``jax.lax.stop_gradient``). The τ² keeps the gradient scale as τ changes: the KL
    term's gradient is ∂/∂s = w·τ·(softmax(s/τ) − softmax(t/τ)), and the softmax difference is
    itself O(1/τ), so without τ² it would shrink as 1/τ². Both sides of the KL are log-probabilities
    (``optax.losses.kl_divergence_with_log_targets``), so a teacher probability that underflows to 0
    is harmless. Paper 002 (§3.2, §4.6) uses the dense network as teacher but gives neither τ nor w,
    and reports KD only marginally better than plain label smoothing.
    """
    check_distillation(temperature, weight)
    check_smoothing(smoothing, variant)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits have shape {student_logits.shape} and teacher logits "
                         f"{teacher_logits.shape}; they must be equal")
    log_student = jax.nn.log_softmax(student_logits / temperature)
    log_teacher = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits) / temperature)
    kl = optax.losses.kl_divergence_with_log_targets(log_student, log_teacher)
    hard = cross_entropy(student_logits, labels, smoothing, variant)
    return (1.0 - weight) * hard + weight * temperature ** 2 * kl
