"""sparsejax.nn: PSwish/Swish/Mish/ReLU and the α-gated ghost skip (paper 000 §2.2)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import paths
from sparsejax.nn import GhostSkip, activate, mish, pswish, relu, swish

X = jnp.linspace(-6.0, 6.0, 1201)  # contains 0.0 exactly


def test_pswish_at_beta_one_is_swish():
    np.testing.assert_array_equal(pswish(X, 1.0), swish(X))
    np.testing.assert_array_equal(pswish(X, 1.0), jax.nn.silu(X))


def test_pswish_at_beta_zero_is_half_identity():
    np.testing.assert_array_equal(pswish(X, 0.0), X / 2)


def test_pswish_approaches_relu_as_beta_grows():
    # max_x |x| sigmoid(-beta |x|) = 0.2785 / beta
    gaps = [float(jnp.max(jnp.abs(pswish(X, b) - relu(X)))) for b in (1.0, 4.0, 16.0, 64.0, 256.0)]
    assert gaps == sorted(gaps, reverse=True)
    for beta, gap in zip((1.0, 4.0, 16.0, 64.0, 256.0), gaps):
        assert gap <= 0.279 / beta


def test_pswish_at_infinite_beta_is_exactly_relu_values_and_gradients():
    np.testing.assert_array_equal(pswish(X, jnp.inf), relu(X))
    grad = jax.vmap(jax.grad(pswish), in_axes=(0, None))
    g_inf, g_relu = grad(X, jnp.inf), jax.vmap(jax.grad(relu))(X)
    assert not np.isnan(np.asarray(g_inf)).any()
    np.testing.assert_array_equal(g_inf, g_relu)


def test_pswish_beta_is_traced_so_changing_it_never_retraces():
    traces = []

    @jax.jit
    def f(x, beta):
        traces.append(1)
        return pswish(x, beta)

    for beta in (0.5, 1.0, 2.0, jnp.inf):
        f(X, jnp.float32(beta))
    assert len(traces) == 1


def test_mish_and_activate_by_name():
    np.testing.assert_allclose(mish(X), X * jnp.tanh(jax.nn.softplus(X)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(activate("relu", X, 5.0), relu(X))
    np.testing.assert_array_equal(activate("swish", X), swish(X))
    np.testing.assert_array_equal(activate("mish", X), mish(X))
    np.testing.assert_array_equal(activate("pswish", X), swish(X))  # beta=None means beta = 1
    np.testing.assert_array_equal(activate("pswish", X, 3.0), pswish(X, 3.0))


def test_unknown_activation_is_a_value_error():
    with pytest.raises(ValueError, match="unknown activation 'gelu'.*relu"):
        activate("gelu", X)


class _Holder(nn.Module):
    """A parent that names its ghost path as the models do."""

    kind: str
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, alpha):
        ghost = GhostSkip(self.kind, self.features, self.strides, name="ghost1")
        return ghost(x, alpha, train=True)


def _init(kind, features, strides=1, channels=4):
    module = _Holder(kind, features, strides)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, channels))
    return module, module.init(jax.random.key(1), x, 1.0), x


def test_identity_ghost_is_alpha_times_input_without_parameters():
    module, variables, x = _init("identity", 4)
    assert "params" not in variables
    np.testing.assert_array_equal(module.apply(variables, x, 0.25), 0.25 * x)


@pytest.mark.parametrize("kind,features,strides", [("identity", 8, 2), ("conv1x1", 4, 1),
                                                   ("conv1x1", 8, 2)])
def test_projection_ghost_is_conv1x1_and_batchnorm(kind, features, strides):
    module, variables, x = _init(kind, features, strides)
    kernel = variables["params"]["ghost1"]["conv"]["kernel"]
    assert kernel.shape == (1, 1, 4, features)
    assert set(variables["params"]["ghost1"]) == {"conv", "bn"}
    if kind == "conv1x1":  # the released code fills the jump conv with 1e-4
        np.testing.assert_array_equal(kernel, np.full(kernel.shape, 1e-4, np.float32))
    out, _ = module.apply(variables, x, 1.0, mutable=["batch_stats"])
    assert out.shape == (2, 6 // strides, 6 // strides, features)


def test_ghost_parameters_are_not_prunable():
    _, variables, _ = _init("conv1x1", 8, 2)
    flat = paths.flatten(variables["params"])
    assert flat and all(paths.is_ghost(p) for p in flat)
    assert paths.prunable(variables["params"]) == {}


def test_ghost_gradients_are_zero_at_alpha_zero_and_not_otherwise():
    module, variables, x = _init("conv1x1", 8, 2)

    def loss(params, alpha):
        out, _ = module.apply({**variables, "params": params}, x, alpha, mutable=["batch_stats"])
        return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))

    grad = jax.jit(jax.grad(loss))
    at_zero = grad(variables["params"], 0.0)
    chex.assert_trees_all_equal(at_zero, jax.tree.map(np.zeros_like, at_zero))
    assert all(np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(grad(variables["params"], 0.5)))


def test_unknown_ghost_kind_is_a_value_error():
    with pytest.raises(ValueError, match="unknown ghost_skip 'dense'"):
        _init("dense", 4)
