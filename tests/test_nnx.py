"""sparse_training as the ``tx`` of ``nnx.Optimizer`` over a Flax NNX model (issue 14).

Pruned weights stay exactly 0 through training and through RigL's rewiring (grown weights start at
exactly 0), the masks in the optimizer state are the model's zero pattern, the numbers equal the
Linen path's, NNX states with their ``nnx.Variable`` boxes work like their values, and the README
example runs.
"""

import functools
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import sparsejax
from sparsejax import distributions, masks

# The README's NNX example, verbatim (README.md, "Flax NNX").
README_EXAMPLE = '''
import jax, optax, sparsejax
from flax import nnx
from sklearn.datasets import load_digits
from sparsejax import distributions, masks

class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.linear = nnx.Linear(32 * 8 * 8, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.linear(x.reshape(len(x), -1))

model = CNN(nnx.Rngs(0))
params = nnx.as_pure(nnx.state(model, nnx.Param))  # {"conv1": {"kernel": ..., "bias": ...}, ...}
m = masks.random(jax.random.key(1), params, distributions.erk(params, 0.9))
nnx.update(model, masks.apply(params, m))  # start from the pruned weights
tx = sparsejax.sparse_training(optax.adam(1e-2), m, method="rigl", update_every=25, end_step=100)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

@nnx.jit
def train_step(model, optimizer, x, y):
    loss_fn = lambda model: optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)  # pruned weights stay exactly 0; RigL rewires every 25 steps
    return loss

x, y = load_digits(return_X_y=True)
x = x.reshape(-1, 8, 8, 1) / 16
for step in range(100):
    i = step % 14 * 128
    loss = train_step(model, optimizer, x[i:i + 128], y[i:i + 128])
print(f"loss {loss:.3f}")
print(masks.summary(sparsejax.get_masks(optimizer.opt_state), params))  # per-layer kept counts
'''

SPARSITY, LR, STEPS, UPDATE_EVERY = 0.8, 0.5, 12, 3
_digits_x, _digits_y = load_digits(return_X_y=True)
X = jnp.asarray(_digits_x[:256].reshape(-1, 8, 8, 1) / 16, jnp.float32)
Y = jnp.asarray(_digits_y[:256])


class CNN(nnx.Module):
    """Two convs and a linear layer; tanh, so every weight gets a non-zero gradient and a grown
    weight leaves 0 after one step (exact non-zero counts)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(4, 8, (3, 3), rngs=rngs)
        self.linear = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

    def __call__(self, x):
        x = jnp.tanh(self.conv2(jnp.tanh(self.conv1(x))))
        return self.linear(x.reshape(len(x), -1))


class LinenCNN(nn.Module):
    """The same network in Linen, with the same parameter names."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3), name="conv1")(x))
        x = jnp.tanh(nn.Conv(8, (3, 3), name="conv2")(x))
        return nn.Dense(10, name="linear")(x.reshape(len(x), -1))


def _loss(logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


@nnx.jit
def _train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda model: _loss(model(X)))(model)
    optimizer.update(model, grads)
    return loss


def _values(model):
    return nnx.as_pure(nnx.state(model, nnx.Param))


def _pruned_model():
    """The CNN with ERK random masks at SPARSITY applied to its weights, and the masks."""
    model = CNN(nnx.Rngs(0))
    params = _values(model)
    m = masks.random(jax.random.key(1), params, distributions.erk(params, SPARSITY))
    nnx.update(model, masks.apply(params, m))
    return model, m


def _tx(m, method):
    return sparsejax.sparse_training(optax.sgd(LR, momentum=0.9), m, method=method,
                                     update_every=UPDATE_EVERY, end_step=STEPS)


@functools.cache
def _train(method):
    """STEPS steps through nnx.Optimizer: losses, and the weights and masks after every step."""
    model, m = _pruned_model()
    optimizer = nnx.Optimizer(model, _tx(m, method), wrt=nnx.Param)
    losses, weights, kept = [], [], [m]
    for _ in range(STEPS):
        losses.append(float(_train_step(model, optimizer)))
        weights.append(_values(model))
        kept.append(sparsejax.get_masks(optimizer.opt_state))
    return losses, weights, kept, optimizer


def _nonzero(tree):
    return jax.tree.map(lambda w: w != 0, tree)


def test_static_masks_are_the_zero_pattern_after_every_step():
    losses, weights, kept, _ = _train("static")
    for w, m in zip(weights, kept[1:]):
        chex.assert_trees_all_equal(m, kept[0])
        chex.assert_trees_all_equal(_nonzero(w), m)  # pruned exactly 0, every kept weight live
    assert losses[-1] < 0.9 * losses[0]


def test_rigl_rewires_with_dropped_weights_at_zero_and_grown_ones_from_zero():
    losses, weights, kept, optimizer = _train("rigl")
    updates = [t for t in range(1, STEPS) if t % UPDATE_EVERY == 0]
    assert int(sparsejax.dst.report(optimizer.opt_state)["mask_updates"]) == len(updates)
    for t, w in enumerate(weights):
        old, new = kept[t], kept[t + 1]
        born = jax.tree.map(lambda n, o: n & ~o, new, old)
        assert any(np.any(b) for b in jax.tree.leaves(born)) == (t in updates), t
        # Dropped and never-kept weights are exactly 0; grown ones are exactly 0 on their step and
        # live afterwards; the per-layer counts stay those of the initial masks.
        chex.assert_trees_all_equal(_nonzero(w), jax.tree.map(lambda n, b: n & ~b, new, born))
        assert masks.counts(new, w) == masks.counts(kept[0], w)
    assert np.mean(losses[-3:]) < 0.9 * losses[0]


def test_same_numbers_as_the_linen_path():
    """The same masks, weights and data through Linen and plain optax give the same weights."""
    _, weights, kept, _ = _train("rigl")
    model, m = _pruned_model()
    params, m = nnx.to_pure_dict(_values(model)), nnx.to_pure_dict(m)
    tx = _tx(m, "rigl")

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: _loss(LinenCNN().apply({"params": p}, X)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(STEPS):
        params, state = step(params, state)
    chex.assert_trees_all_equal(sparsejax.get_masks(state), nnx.to_pure_dict(kept[-1]))
    chex.assert_trees_all_equal(params, nnx.to_pure_dict(weights[-1]))


def test_boxed_nnx_state_works_like_its_values():
    """``nnx.state(model, nnx.Param)`` (nnx.Variable leaves) gives the paths, densities and masks
    of its values, and boxed masks are accepted."""
    model, m = _pruned_model()
    boxed = nnx.state(model, nnx.Param)
    assert set(sparsejax.paths.flatten(boxed)) == {f"{layer}/{name}" for layer in
                                                   ("conv1", "conv2", "linear")
                                                   for name in ("kernel", "bias")}
    densities = distributions.erk(boxed, SPARSITY)
    assert densities == distributions.erk(_values(model), SPARSITY)
    chex.assert_trees_all_equal(masks.random(jax.random.key(1), boxed, densities),
                                masks.random(jax.random.key(1), _values(model), densities))
    boxed_masks = jax.tree.map(lambda w: (w != 0) | (w.ndim < 2), boxed)  # biases kept
    optimizer = nnx.Optimizer(model, _tx(boxed_masks, "rigl"), wrt=nnx.Param)
    chex.assert_trees_all_equal(sparsejax.get_masks(optimizer.opt_state), m)


def test_readme_shows_the_example_verbatim():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert f"```python{README_EXAMPLE}```" in readme


def test_readme_example_runs(capsys):
    namespace: dict = {}
    exec(README_EXAMPLE, namespace)
    weights, optimizer = _values(namespace["model"]), namespace["optimizer"]
    final = sparsejax.get_masks(optimizer.opt_state)
    chex.assert_trees_all_equal(masks.apply(weights, final), weights)  # pruned weights exactly 0
    assert masks.counts(final, weights) == masks.counts(namespace["m"], weights)
    assert int(sparsejax.dst.report(optimizer.opt_state)["mask_updates"]) == 3
    assert float(namespace["loss"]) < 0.5
    assert "conv2/kernel" in capsys.readouterr().out
