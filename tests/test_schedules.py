"""sparsejax.schedules: ghost α and PSwish β end exactly, are jit-safe, and reject bad bounds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.nn import pswish, relu
from sparsejax.schedules import ALPHA_SHAPES, BETA_SHAPES, LATE_START, ghost_alpha, ghost_beta, ghost_end_step

END = 90
STEPS = jnp.arange(0, 2 * END)


def _values(schedule):
    """The schedule over STEPS, evaluated inside jit on a traced int32 step."""
    return np.asarray(jax.jit(jax.vmap(schedule))(STEPS))


@pytest.mark.parametrize("shape", ALPHA_SHAPES)
def test_alpha_starts_at_one_and_is_exactly_zero_from_end_step(shape):
    alpha = _values(ghost_alpha(END, shape))
    assert alpha[0] == 1.0
    assert np.all(alpha[END:] == 0.0)
    assert np.all(alpha[:END] > 0.0)
    assert np.all(np.diff(alpha) <= 0.0)
    assert float(ghost_alpha(END, shape)(END)) == 0.0  # also with a Python int step


def test_alpha_shapes():
    linear, cosine, step = (_values(ghost_alpha(END, s)) for s in ("linear", "cosine", "step"))
    np.testing.assert_allclose(linear[:END], 1.0 - np.arange(END) / END, atol=1e-6)
    np.testing.assert_allclose(cosine[:END], 0.5 * (1 + np.cos(np.pi * np.arange(END) / END)),
                               atol=1e-6)
    assert np.all(step[:END] == 1.0)  # the abrupt-removal ablation


@pytest.mark.parametrize("shape", BETA_SHAPES)
def test_beta_grows_from_beta0_to_beta_max_then_is_exact_relu(shape):
    beta = _values(ghost_beta(1.0, 8.0, END, shape))
    assert beta[0] == 1.0
    moving = beta[int(LATE_START * END):END] if shape == "late_linear" else beta[:END]
    assert np.all(np.diff(moving) > 0.0) and np.all(np.diff(beta[:END]) >= 0.0)
    assert 7.5 < beta[END - 1] <= 8.0
    assert np.all(np.isposinf(beta[END:]))
    x = jnp.linspace(-3.0, 3.0, 61)
    np.testing.assert_array_equal(pswish(x, beta[END]), relu(x))


@pytest.mark.parametrize("shape, midpoint", [("linear", (1.0 + 8.0) / 2),
                                             ("exponential", math.sqrt(1.0 * 8.0))])
def test_beta_midpoint(shape, midpoint):
    # Halfway to end_step: the arithmetic mean of β0 and β_max (linear), the geometric (exponential).
    assert _values(ghost_beta(1.0, 8.0, END, shape))[END // 2] == pytest.approx(midpoint, rel=1e-5)


def test_late_linear_holds_then_moves_linearly():
    hold = int(LATE_START * END)
    alpha, beta = _values(ghost_alpha(END, "late_linear")), _values(ghost_beta(1.0, 8.0, END,
                                                                             "late_linear"))
    assert np.all(alpha[:hold + 1] == 1.0) and np.all(beta[:hold + 1] == 1.0)
    ramp = (np.arange(hold, END) - hold) / (END - hold)
    np.testing.assert_allclose(alpha[hold:END], 1.0 - ramp, atol=1e-6)
    np.testing.assert_allclose(beta[hold:END], 1.0 + 7.0 * ramp, rtol=1e-6)


def test_beta_exponential_is_geometric():
    beta = _values(ghost_beta(1.0, 8.0, END, "exponential"))
    np.testing.assert_allclose(beta[:END], 8.0 ** (np.arange(END) / END), rtol=1e-5)


def test_fixed_beta_until_relu_is_the_released_code_setting():
    beta = _values(ghost_beta(2.0, 2.0, END))
    assert np.all(beta[:END] == 2.0) and np.all(np.isposinf(beta[END:]))


def test_keep_forever():
    assert ghost_end_step([90, 135], "never") is None
    assert np.all(_values(ghost_alpha(None)) == 1.0)
    assert np.all(_values(ghost_beta(1.0, 1.0, None)) == 1.0)


def test_end_step_from_lr_boundaries():
    assert ghost_end_step([135, 90]) == 90  # right before the first decay (paper)
    assert ghost_end_step([90, 135], "after_first_decay") == 135  # ablation: removed late


@pytest.mark.parametrize("call,match", [
    (lambda: ghost_alpha(0), "end_step must be a positive int"),
    (lambda: ghost_alpha(-5, "cosine"), "end_step must be a positive int"),
    (lambda: ghost_alpha(9.5), "end_step must be a positive int"),
    (lambda: ghost_alpha(90, "exponential"), "unknown alpha shape 'exponential'"),
    (lambda: ghost_beta(1.0, 8.0, 0), "end_step must be a positive int"),
    (lambda: ghost_beta(4.0, 2.0, 90), "beta0 <= beta_max"),
    (lambda: ghost_beta(-1.0, 2.0, 90), "beta0 <= beta_max"),
    (lambda: ghost_beta(1.0, math.inf, 90), "finite"),
    (lambda: ghost_beta(0.0, 2.0, 90, "exponential"), "cannot start at beta0=0"),
    (lambda: ghost_beta(1.0, 2.0, 90, "cosine"), "unknown beta shape 'cosine'"),
    (lambda: ghost_beta(1.0, 2.0, None), "set beta_max=beta0 or give an end_step"),
    (lambda: ghost_end_step([]), "at least one"),
    (lambda: ghost_end_step([0, 90]), "positive int steps"),
    (lambda: ghost_end_step([90], "after_first_decay"), "pass end_step yourself"),
    (lambda: ghost_end_step([90], "late"), "unknown removal 'late'"),
])
def test_bad_bounds_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
