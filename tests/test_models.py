"""sparsejax.models: exact parameter counts, ghost paths that vanish exactly, all models and sizes.

Compiles dominate the run time on CPU, so variables are drawn with numpy from `jax.eval_shape`
(no init compile), steps are compiled at XLA backend optimisation level 0, and the batch is 2.
"""

from typing import NamedTuple

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import paths
from sparsejax.models import MODELS, build, remove_ghosts
from sparsejax.models.resnet import ResNet
from sparsejax.schedules import ghost_alpha, ghost_beta

COUNTS = {  # params collection incl. BatchNorm scale/bias, as the PyTorch CIFAR definitions
    "resnet18": (11_173_962, 11_220_132), "resnet34": (21_282_122, 21_328_292),
    "resnet50": (23_520_842, 23_705_252), "resnet20": (272_474, 278_324),
    "resnet32": (466_906, 472_756), "resnet56": (855_770, 861_620),
    "resnet104": (1_633_498, 1_639_348), "vgg16": (14_728_266, 14_774_436),
    "mobilenet_v1": (3_217_226, 3_309_476), "mobilenet_v2": (2_296_922, 2_412_212),
}
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn):
    return jax.jit(fn, compiler_options=FAST_COMPILE)


def _shapes(model, size=8):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 3))))


def _random_variables(model, size=8, seed=0):
    """Variables shaped as ``model.init``'s, drawn with numpy (scaled kernels, positive var)."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name, dims = paths.key_name(path[-1]), shape.shape
        if name == "var":
            value = rng.uniform(0.5, 1.5, dims)
        elif name == "kernel":
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(dims[:-1])), dims)
        else:
            value = rng.normal(1.0 if name == "scale" else 0.0, 0.1, dims)
        return jnp.asarray(value, shape.dtype)

    return jax.tree_util.tree_map_with_path(draw, _shapes(model, size))


def _images(size, seed=1):
    return jax.random.normal(jax.random.key(seed), (2, size, size, 3))


def _forward_backward(model):
    """Jitted (logits, new batch_stats, grads of a fixed linear loss) in train mode; α, β traced."""

    def loss(params, batch_stats, x, alpha, beta):
        logits, state = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                    alpha=alpha, beta=beta, mutable=["batch_stats"])
        weights = jnp.arange(logits.size, dtype=logits.dtype).reshape(logits.shape) / logits.size
        return jnp.sum(logits * weights), (logits, state["batch_stats"])

    def step(variables, x, alpha, beta):
        grads, (logits, stats) = jax.grad(loss, has_aux=True)(
            variables["params"], variables["batch_stats"], x, alpha, beta)
        return logits, stats, grads

    return _jit(step)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts_match_the_pytorch_definitions(name, num_classes):
    params = _shapes(build(name, num_classes))["params"]
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == COUNTS[name][num_classes == 100]


def _ghost_module(path):
    """"layer1_0/ghost1/conv/kernel" -> "layer1_0/ghost1"."""
    parts = path.split("/")
    return "/".join(parts[:1 + next(i for i, p in enumerate(parts) if p.startswith("ghost"))])


@pytest.mark.parametrize("name,kind,ghost_modules", [
    ("resnet18", "conv1x1", 16), ("resnet20", "identity", 2), ("vgg16", "conv1x1", 9),
    ("mobilenet_v1", "conv1x1", 9), ("mobilenet_v2", "conv1x1", 14), ("resnet50", "conv1x1", 16)])
def test_ghost_parameters_are_not_prunable_and_other_paths_are_unchanged(name, kind, ghost_modules):
    model = build(name, 10, ghost_skip=kind, activation="mish")
    ghosted = _shapes(model)
    plain_model, without = remove_ghosts(model, ghosted)
    # A fixed smooth activation trained with ghost skips stays; only ghost Swish (PSwish) ends as ReLU.
    assert (plain_model.ghost_skip, plain_model.activation) == (None, "mish")
    assert remove_ghosts(build(name, 10, ghost_skip=kind, activation="pswish"), {})[0].activation \
        == "relu"
    plain = _shapes(plain_model)
    assert jax.tree.structure(without) == jax.tree.structure(plain)
    flat = paths.flatten(ghosted["params"])
    assert len({_ghost_module(path) for path in flat if paths.is_ghost(path)}) == ghost_modules
    assert list(paths.prunable(ghosted["params"])) == list(paths.prunable(plain["params"]))


GHOST_CASES = [  # (model, ghost kind, activation that can end as exact ReLU)
    ("resnet20", "identity", "pswish"),
    ("vgg16", "conv1x1", "relu"),
    ("bottleneck", "conv1x1", "pswish"),
    ("bottleneck", "identity", "relu"),
    pytest.param("mobilenet_v1", "conv1x1", "pswish", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", "conv1x1", "relu", marks=pytest.mark.slow),
    pytest.param("resnet18", "conv1x1", "pswish", marks=pytest.mark.slow),
    pytest.param("resnet18", "identity", "relu", marks=pytest.mark.slow),
    pytest.param("resnet34", "identity", "pswish", marks=pytest.mark.slow),
    pytest.param("resnet32", "conv1x1", "relu", marks=pytest.mark.slow),
    pytest.param("resnet56", "identity", "relu", marks=pytest.mark.slow),
    pytest.param("resnet104", "conv1x1", "relu", marks=pytest.mark.slow),
    pytest.param("vgg16", "identity", "pswish", marks=pytest.mark.slow),
    pytest.param("mobilenet_v1", "identity", "relu", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", "identity", "pswish", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,kind,activation", GHOST_CASES)
def test_ghosted_model_at_alpha_zero_and_relu_is_the_plain_model_exactly(name, kind, activation):
    if name == "bottleneck":  # a two-stage bottleneck ResNet: resnet50's blocks at a small size
        ghosted = ResNet((1, 1), (4, 8), 10, bottleneck=True, activation=activation,
                         ghost_skip=kind)
    else:
        ghosted = build(name, 10, ghost_skip=kind, activation=activation)
    variables = _random_variables(ghosted)
    plain, plain_variables = remove_ghosts(ghosted, variables)
    x, relu_beta = _images(8), jnp.float32(jnp.inf)  # PSwish at beta = inf is exactly ReLU

    step = _forward_backward(ghosted)
    logits, stats, grads = step(variables, x, jnp.float32(0.0), relu_beta)
    plain_logits, plain_stats, plain_grads = _forward_backward(plain)(plain_variables, x, 0.0, None)
    # Tolerance zero (logits, statistics, gradients): at alpha = 0 each ghost term is exactly +-0.0.
    np.testing.assert_array_equal(logits, plain_logits)
    assert logits.shape == (2, 10) and np.isfinite(np.asarray(logits)).all()
    chex.assert_trees_all_equal(paths.without_ghosts(stats), plain_stats)
    chex.assert_trees_all_equal(paths.without_ghosts(grads), plain_grads)
    ghost_grads = {p: g for p, g in paths.flatten(grads).items() if paths.is_ghost(p)}
    assert all(not np.any(np.asarray(g)) for g in ghost_grads.values())

    on_logits, _, on_grads = step(variables, x, jnp.float32(0.5), jnp.float32(2.0))
    assert not np.array_equal(on_logits, logits)
    kernels = {p: g for p, g in paths.flatten(on_grads).items()
               if paths.is_ghost(p) and p.endswith("kernel")}  # none for identity-only ghosts
    assert all(np.any(np.asarray(g)) for g in kernels.values())


def test_ghosted_model_equals_plain_in_eval_mode():
    ghosted = build("resnet20", 10, ghost_skip="conv1x1")
    variables = _random_variables(ghosted)
    plain, plain_variables = remove_ghosts(ghosted, variables)
    x = _images(8)
    out = _jit(lambda v, x: ghosted.apply(v, x, alpha=0.0))(variables, x)
    np.testing.assert_array_equal(out, _jit(plain.apply)(plain_variables, x))
    np.testing.assert_array_equal(out, _jit(ghosted.apply)(variables, x))  # default alpha is 0


def _size_cases():
    fast = {("resnet20", 32), ("mobilenet_v1", 8)}
    return [pytest.param(name, size, marks=() if (name, size) in fast else pytest.mark.slow)
            for name in MODELS for size in (8, 32, 64)]


@pytest.mark.parametrize("name,size", _size_cases())
def test_every_model_runs_forward_and_backward_at_every_size(name, size):
    model = build(name, 10, ghost_skip="conv1x1", activation="pswish")
    variables = _random_variables(model, size)
    logits, stats, grads = _forward_backward(model)(variables, _images(size), 1.0, 2.0)
    assert logits.shape == (2, 10) and np.isfinite(np.asarray(logits)).all()
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
    chex.assert_tree_all_finite(grads)


def test_jitted_train_step_does_not_retrace_when_alpha_or_beta_change():
    model = ResNet((1, 1), (4, 8), 10, activation="pswish", ghost_skip="conv1x1")
    x, labels = _images(8), jnp.arange(2)
    variables = _random_variables(model)
    tx = optax.sgd(0.1, momentum=0.9)
    alpha, beta = ghost_alpha(4, "cosine"), ghost_beta(1.0, 4.0, 4, "exponential")
    traces = []

    @_jit
    def train_step(params, batch_stats, opt_state, step):
        traces.append(step)

        def loss(params):
            logits, state = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                        train=True, alpha=alpha(step), beta=beta(step),
                                        mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

        grads, state = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state["batch_stats"], opt_state

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    for step in range(6):  # crosses the end of the ghost phase: alpha -> 0, beta -> inf (ReLU)
        params, batch_stats, opt_state = train_step(params, batch_stats, opt_state, jnp.int32(step))
    assert len(traces) == 1
    chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="resnet19", num_classes=10), "unknown model 'resnet19'; use one of resnet18"),
    (dict(name="resnet18", num_classes=10, activation="gelu"), "unknown activation 'gelu'"),
    (dict(name="vgg16", num_classes=10, ghost_skip="conv3x3"), "unknown ghost_skip 'conv3x3'"),
    (dict(name="mobilenet_v2", num_classes=0), "num_classes must be a positive int"),
])
def test_bad_model_input_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


class _Slots(NamedTuple):
    count: jax.Array
    per_param: dict
    history: list


def test_without_ghosts_strips_ghost_entries_at_any_depth_of_an_optimizer_state():
    params = {"conv": {"kernel": np.ones((3, 3, 2, 4))},
              "ghost1": {"conv": {"kernel": np.ones((1, 1, 2, 4))}, "bn": {"scale": np.ones(4)}},
              "layer1_0": {"bn1": {"scale": np.ones(4)}, "Ghost_2": {"kernel": np.ones((4, 4))}}}
    plain = {"conv": {"kernel": params["conv"]["kernel"]},
             "layer1_0": {"bn1": {"scale": params["layer1_0"]["bn1"]["scale"]}}}
    chex.assert_trees_all_equal(paths.without_ghosts(params), plain)
    # A chained optax state: a tuple of NamedTuples whose fields hold params-shaped dicts.
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    chex.assert_trees_all_equal(paths.without_ghosts(tx.init(params)), tx.init(plain))
    state = (_Slots(np.int32(3), params, [params, {"ghost": 1.0, "lr": 2.0}]), [])
    stripped = paths.without_ghosts(state)
    assert type(stripped) is tuple and type(stripped[0]) is _Slots and stripped[1] == []
    chex.assert_trees_all_equal(stripped, (_Slots(np.int32(3), plain, [plain, {"lr": 2.0}]), []))
    leaf = np.ones(2)
    assert paths.without_ghosts(leaf) is leaf  # leaves pass through, not copied
    assert paths.without_ghosts(params)["conv"]["kernel"] is params["conv"]["kernel"]


def test_remove_ghosts_takes_frozen_dicts_and_returns_nested_dicts():
    model = build("resnet20", 10, ghost_skip="conv1x1")
    variables = _shapes(model)
    frozen = flax.core.freeze(variables)
    _, from_frozen = remove_ghosts(model, frozen)
    _, from_dict = remove_ghosts(model, variables)
    assert jax.tree.structure(from_frozen) == jax.tree.structure(from_dict)
    assert type(from_frozen["params"]) is dict
    assert not any(paths.is_ghost(p) for p in paths.flatten(from_frozen))


def test_remove_ghosts_needs_a_zoo_model():
    with pytest.raises(ValueError, match="needs a model from sparsejax.models.build"):
        remove_ghosts(nn.Dense(3), {})
