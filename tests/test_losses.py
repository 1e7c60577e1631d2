"""Label smoothing and cross-entropy of the ToST recipe (sparsejax.recipe.losses) against hand values."""

import chex
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
