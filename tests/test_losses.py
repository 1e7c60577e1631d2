"""Label smoothing, cross-entropy and distillation of the ToST recipe (sparsejax.recipe.losses)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax.recipe import losses

LABELS = jnp.array([2, 0])
# softmax(log [1, 2, 3, 4]) = [0.1, 0.2, 0.3, 0.4]: the log-probabilities are log(0.1) ... log(0.4).
LOGITS = jnp.log(jnp.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
LOG_P = np.log([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])


def test_variants_are_paper_and_released():
    assert losses.VARIANTS == ("paper", "released")


def test_paper_targets_by_hand():
    # K = 4, ε = 0.1: y(1 − ε) + ε/K = 0.9 + 0.025 = 0.925 at the label, 0.025 elsewhere.
    chex.assert_trees_all_close(losses.smoothed_targets(LABELS, 4, 0.1),
                                jnp.array([[0.025, 0.025, 0.925, 0.025],
                                           [0.925, 0.025, 0.025, 0.025]]))
    chex.assert_trees_all_close(losses.smoothed_targets(LABELS, 4, 0.1, "paper"),
                                losses.smoothed_targets(LABELS, 4, 0.1))


def test_released_targets_by_hand():
    # K = 4, ε = 0.1: 1 − ε = 0.9 at the label, ε/(K − 1) = 1/30 elsewhere.
    third = 0.1 / 3
    chex.assert_trees_all_close(losses.smoothed_targets(LABELS, 4, 0.1, "released"),
                                jnp.array([[third, third, 0.9, third], [0.9, third, third, third]]))


@pytest.mark.parametrize("variant", losses.VARIANTS)
def test_targets_are_distributions(variant):
    targets = losses.smoothed_targets(jnp.arange(10) % 7, 7, 0.3, variant)
    assert targets.shape == (10, 7)
    chex.assert_trees_all_close(targets.sum(-1), jnp.ones(10))


def test_cross_entropy_by_hand():
    # Plain: −log p(label) = −log 0.3 and −log 0.4.
    chex.assert_trees_all_close(losses.cross_entropy(LOGITS, LABELS),
                                jnp.array([-np.log(0.3), -np.log(0.4)]), rtol=1e-6)
    # Paper, ε = 0.1: −(0.925·log p(label) + 0.025·Σ_other log p).
    rest = LOG_P.sum(-1) - LOG_P[[0, 1], [2, 0]]
    paper = -(0.925 * LOG_P[[0, 1], [2, 0]] + 0.025 * rest)
    chex.assert_trees_all_close(losses.cross_entropy(LOGITS, LABELS, 0.1),
                                jnp.asarray(paper, jnp.float32), rtol=1e-6)
    # Released, ε = 0.1: −(0.9·log p(label) + (0.1/3)·Σ_other log p).
    released = -(0.9 * LOG_P[[0, 1], [2, 0]] + 0.1 / 3 * rest)
    chex.assert_trees_all_close(losses.cross_entropy(LOGITS, LABELS, 0.1, "released"),
                                jnp.asarray(released, jnp.float32), rtol=1e-6)


@pytest.mark.parametrize("variant", losses.VARIANTS)
def test_smoothing_zero_is_plain_cross_entropy(variant):
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
    labels = jnp.array([0, 4, 1, 1, 3, 2])
    chex.assert_trees_all_equal(losses.smoothed_targets(labels, 5, 0.0, variant),
                                jnp.eye(5)[labels])
    chex.assert_trees_all_close(losses.cross_entropy(logits, labels, 0.0, variant),
                                optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                                rtol=1e-6)


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match=r"unknown label-smoothing variant 'rule'; use one of "
                                         r"\('paper', 'released'\)"):
        losses.smoothed_targets(LABELS, 4, 0.1, "rule")
    with pytest.raises(ValueError, match="unknown label-smoothing variant 'tost'"):
        losses.cross_entropy(LOGITS, LABELS, 0.1, variant="tost")


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize("variant", losses.VARIANTS)
def test_smoothing_outside_zero_one_is_an_error(smoothing, variant):
    with pytest.raises(ValueError, match=rf"label smoothing is {smoothing}; it must lie in \[0, 1\)"):
        losses.cross_entropy(LOGITS, LABELS, smoothing, variant)


# Knowledge distillation: (1 − w)·CE(y_LS, softmax(s)) + w·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)).

def _random_logits(seed, shape=(6, 5)):
    rng = np.random.default_rng(seed)
    return jnp.asarray(3.0 * rng.normal(size=shape), jnp.float32)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("variant", losses.VARIANTS)
def test_distillation_weight_zero_is_smoothed_cross_entropy(smoothing, variant):
    student, teacher = _random_logits(1), _random_logits(2)
    labels = jnp.array([0, 4, 1, 1, 3, 2])
    chex.assert_trees_all_equal(
        losses.distillation(student, teacher, labels, temperature=3.0, weight=0.0,
                            smoothing=smoothing, variant=variant),
        losses.cross_entropy(student, labels, smoothing, variant))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 20.0])
def test_distillation_from_itself_is_zero(temperature):
    # Teacher = student: the KL term is 0, and weight 1 leaves nothing else.
    student = _random_logits(3)
    loss = losses.distillation(student, student, jnp.array([0, 4, 1, 1, 3, 2]),
                               temperature=temperature, weight=1.0, smoothing=0.1)
    assert loss.shape == (6,)
    chex.assert_trees_all_close(loss, jnp.zeros(6), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("weight", [0.3, 0.9])
@pytest.mark.parametrize("variant", losses.VARIANTS)
def test_distillation_gradient_by_hand(temperature, weight, variant):
    # ∂loss_b/∂s_b = (1 − w)·(softmax(s) − y_LS) + w·τ·(softmax(s/τ) − softmax(t/τ)).
    student, teacher = _random_logits(4), _random_logits(5)
    labels = jnp.array([0, 4, 1, 1, 3, 2])
    grad = jax.grad(lambda s: losses.distillation(s, teacher, labels, temperature=temperature,
                                                  weight=weight, smoothing=0.1,
                                                  variant=variant).sum())(student)
    s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    targets = np.asarray(losses.smoothed_targets(labels, 5, 0.1, variant), np.float64)
    expected = ((1 - weight) * (_softmax(s) - targets)
                + weight * temperature * (_softmax(s / temperature) - _softmax(t / temperature)))
    chex.assert_trees_all_close(grad, jnp.asarray(expected, jnp.float32), atol=1e-6)


def test_distillation_teacher_gets_no_gradient():
    student, teacher = _random_logits(6), _random_logits(7)
    grad = jax.grad(lambda t: losses.distillation(student, t, jnp.array([0, 4, 1, 1, 3, 2]),
                                                  temperature=2.0, weight=0.5,
                                                  smoothing=0.1).sum())(teacher)
    chex.assert_trees_all_equal(grad, jnp.zeros_like(teacher))


@pytest.mark.parametrize("variant", losses.VARIANTS)
def test_distillation_by_hand(variant):
    # K = 3, τ = 2, w = 0.25 (so w·τ² = 1), ε = 0.1.
    # Example 0: s = log [1, 4, 4], label 1: softmax(s) = [1, 4, 4]/9, softmax(s/2) = [1, 2, 2]/5;
    #   teacher softmax(t/2) = [0.5, 0.25, 0.25];
    #   KL = 0.5·log(0.5/0.2) + 2·0.25·log(0.25/0.4) = 0.5·log(2.5·0.625) = log 1.25.
    # Example 1: s = 0, label 2: softmax(s) = softmax(s/2) = 1/3 each, so CE = log 3 for any target;
    #   teacher softmax(t/2) = [0.25, 0.25, 0.5]; KL = Σ q·log(3q) = log 3 − 1.5·log 2.
    student = jnp.log(jnp.array([[1.0, 4.0, 4.0], [1.0, 1.0, 1.0]]))
    teacher = 2.0 * jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]))
    labels = jnp.array([1, 2])
    label, other = (0.9 + 0.1 / 3, 0.1 / 3) if variant == "paper" else (0.9, 0.05)
    ce0 = -(label * np.log(4 / 9) + other * (np.log(1 / 9) + np.log(4 / 9)))
    expected = np.array([0.75 * ce0 + np.log(1.25),
                         0.75 * np.log(3) + np.log(3) - 1.5 * np.log(2)])
    chex.assert_trees_all_close(
        losses.distillation(student, teacher, labels, temperature=2.0, weight=0.25, smoothing=0.1,
                            variant=variant),
        jnp.asarray(expected, jnp.float32), rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_distillation_bad_temperature_is_an_error(temperature):
    with pytest.raises(ValueError, match=rf"distillation temperature is {temperature}; "
                                         r"it must be finite and > 0"):
        losses.distillation(LOGITS, LOGITS, LABELS, temperature=temperature, weight=0.5)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_distillation_weight_outside_zero_one_is_an_error(weight):
    with pytest.raises(ValueError,
                       match=rf"distillation weight is {weight}; it must lie in \[0, 1\]"):
        losses.distillation(LOGITS, LOGITS, LABELS, temperature=2.0, weight=weight)


def test_distillation_checks_smoothing_and_shapes():
    with pytest.raises(ValueError, match="label smoothing is 1.0"):
        losses.distillation(LOGITS, LOGITS, LABELS, temperature=2.0, weight=0.5, smoothing=1.0)
    with pytest.raises(ValueError, match="unknown label-smoothing variant 'tost'"):
        losses.distillation(LOGITS, LOGITS, LABELS, temperature=2.0, weight=0.5, variant="tost")
    with pytest.raises(ValueError, match=r"teacher logits \(1, 4\); they must be equal"):
        losses.distillation(LOGITS, LOGITS[:1], LABELS, temperature=2.0, weight=0.5)
