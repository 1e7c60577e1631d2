"""The ToST recipe inside a run: masks found on the plain network, initial_masks.npz, LRsI before step
0, distillation from a teacher, BatchNorm re-estimation, rewinding that continues the schedule, and
the reference implementations' defaults. In process, on the embedded digits data."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base, lth, quickstart, tost
from sparsejax import data as data_lib, dst, masks as masks_lib, paths
from sparsejax.errors import TrainError
from sparsejax.models.resnet import ResNet
from sparsejax.recipe import losses
from sparsejax.train import build, loop, plan as plan_lib, state as state_lib, step as step_lib
from sparsejax.train import workdir as workdir_lib

TWEAKS = dict(ghost_skip="conv1x1", ghost_swish=True, beta_max=4.0, label_smoothing=0.1)


@pytest.fixture(scope="module")
def digits():
    return data_lib.load("digits", batch_size=64, seed=0)


def _config(method="random", **tweaks):
    c = base.get_config("runlocal")
    c.batch_size = 64
    c.mask.method, c.mask.sparsity = method, 0.9
    c.tost.update(tweaks)
    return c


def _fresh(c, ds, workdir):
    """``loop._fresh_state`` as ``_run`` calls it: (state, lrsi scales)."""
    plan = plan_lib.make(c, ds.steps_per_epoch)
    model = build.model(c, ds.num_classes)
    workdir.mkdir(parents=True, exist_ok=True)
    return loop._fresh_state(c, model, jax.random.key(c.seed), ds,
                             functools.partial(build.optimizer, c, plan), build.init_inputs(c),
                             build.ghost_inputs(c, plan), workdir)


# ------------------------------------------------------------------- masks on the plain network

@pytest.mark.parametrize("method", [pytest.param("random", marks=pytest.mark.slow),
                                    pytest.param("magnitude", marks=pytest.mark.slow), "snip",
                                    pytest.param("grasp", marks=pytest.mark.slow),
                                    pytest.param("synflow", marks=pytest.mark.slow)])
def test_mask_is_the_same_with_and_without_the_tweaks(method, digits, tmp_path):
    found = {}
    for name, tweaks in (("vanilla", {}), ("tost", TWEAKS)):
        state, _ = _fresh(_config(method, **tweaks), digits, tmp_path / name)
        found[name] = state
        written = masks_lib.load(tmp_path / name / workdir_lib.INITIAL_MASKS,
                                 paths.without_ghosts(state.params))
        chex.assert_trees_all_equal(written, paths.without_ghosts(_masks(state)))
    vanilla, ghosted = _masks(found["vanilla"]), _masks(found["tost"])
    assert any(paths.is_ghost(p) for p in paths.flatten(ghosted))
    assert all(bool(np.all(m)) for p, m in paths.flatten(ghosted).items() if paths.is_ghost(p))
    chex.assert_trees_all_equal(paths.without_ghosts(ghosted), vanilla)
    assert 0.89 < masks_lib.sparsity(vanilla, found["vanilla"].params) < 0.91


def _masks(state):
    return dst.get_masks(state.opt_state)


def test_snip_scores_ten_examples_per_class_by_default(monkeypatch):
    seen = {}

    def find_mask(method, params, sparsity, *, batches, **kwargs):
        seen["rows"] = [len(b["y"]) for b in batches]
        return masks_lib.ones_like(params)

    monkeypatch.setattr(build.pruning, "find_mask", find_mask)
    batch = {"image": np.zeros((64, 8, 8, 1), np.float32), "label": np.zeros(64, np.int32)}
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}}
    asked = []

    def train_batches(examples):
        asked.append(examples)
        return [batch] * -(-examples // 64)

    build.initial_masks(_config("snip"), params, None, train_batches, (8, 8, 1), 10)
    assert asked == [100] and seen["rows"] == [64, 36]  # 10 × 10 classes (Synaptic-Flow)
    c = _config("grasp")
    c.mask.samples = 1280  # the old default: 10 batches of 128
    build.initial_masks(c, params, None, train_batches, (8, 8, 1), 100)
    assert asked[-1] == 1280 and sum(seen["rows"]) == 1280


# ------------------------------------------------------------------------------------------ LRsI

@pytest.mark.slow  # LRsI's second-order step compiles for ResNet-20 (its unit tests: test_lrsi.py)
def test_lrsi_in_a_run_scales_every_tensor_and_keeps_zeros(digits, tmp_path):
    c = _config("random", **TWEAKS)
    c.recipe.lrsi, c.recipe.lrsi_iterations = True, 3
    state, scales = _fresh(c, digits, tmp_path / "lrsi")
    c.recipe.lrsi = False
    plain, none = _fresh(c, digits, tmp_path / "plain")
    assert none is None
    flat, before = paths.flatten(state.params), paths.flatten(plain.params)
    assert set(scales) == set(flat) and any(paths.is_ghost(p) for p in scales)
    assert any(s != 1.0 for s in scales.values())
    for p, leaf in flat.items():
        np.testing.assert_allclose(leaf, scales[p] * before[p], rtol=1e-6, atol=0)
    pruned = jax.tree.map(lambda w, m: jnp.where(m, 0.0, w), state.params, _masks(state))
    chex.assert_trees_all_equal(pruned, jax.tree.map(jnp.zeros_like, state.params))


# ---------------------------------------------------------------------------------- distillation

@pytest.mark.slow
def test_train_step_distills_from_the_frozen_teacher(digits):
    c = _config(**TWEAKS)
    c.recipe.distill.teacher, c.recipe.distill.weight = "teacher.npz", 0.5
    plan = plan_lib.make(c, digits.steps_per_epoch)
    inputs = build.ghost_inputs(c, plan)
    model = ResNet((1,), (4,), 10, activation="pswish", ghost_skip="conv1x1")  # small: fast compile
    variables = state_lib.init_variables(model, jax.random.key(0), (8, 8, 1), alpha=1.0)
    state = state_lib.create(variables, masks_lib.ones_like(variables["params"]), optax.sgd(0.1))
    teacher = ResNet((1, 1), (8, 16), 10)
    teacher_variables = state_lib.init_variables(teacher, jax.random.key(1), (8, 8, 1))
    batch = next(iter(digits.train))
    new, metrics = jax.jit(functools.partial(
        step_lib.train_step, model=model, tx=optax.sgd(0.1), inputs=inputs, loss=build.loss(c),
        teacher_model=teacher))(state, batch, teacher_variables)

    @jax.jit
    def expected(params):  # KD loss by hand: student in train mode, teacher in eval mode
        logits = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                             train=True, mutable=["batch_stats"], **inputs(state.step))[0]
        t = teacher.apply(teacher_variables, batch["image"], train=False)
        return losses.distillation(logits, t, batch["label"], temperature=4.0, weight=0.5,
                                   smoothing=0.1).mean()

    value, grads = jax.value_and_grad(expected)(state.params)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
    chex.assert_trees_all_close(new.params, jax.tree.map(lambda p, g: p - 0.1 * g, state.params,
                                                         grads), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_teacher_of_another_model_or_class_count_is_refused_before_anything_is_written(tmp_path):
    teacher = build.model(_config(), 100)  # a CIFAR-100 head
    workdir_lib.save_variables(tmp_path / "t100.npz",
                               state_lib.init_variables(teacher, jax.random.key(0), (8, 8, 1)))
    c = _config()
    c.recipe.distill.teacher = str(tmp_path / "t100.npz")
    with pytest.raises(TrainError, match="t100.npz.*classifier.*does not fit.*recipe.distill.teacher"):
        build.check(c)
    c.recipe.distill.teacher_model = "vgg16"
    with pytest.raises(TrainError, match="t100.npz.*does not fit"):
        build.check(c)
    c.recipe.distill.teacher_model = "resnet20"
    c.recipe.distill.teacher = str(tmp_path / "missing.npz")
    with pytest.raises(TrainError, match="does not exist.*recipe.distill.teacher"):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    for key, value, words in (("temperature", 0.0, "temperature is 0.0"),
                              ("weight", 1.5, "weight is 1.5")):
        c = _config()
        c.recipe.distill.teacher = str(tmp_path / "t100.npz")
        c.recipe.distill[key] = value
        with pytest.raises(TrainError, match=words):
            build.check(c)


# ------------------------------------------------------------------ BatchNorm after the switch

def test_batch_statistics_are_the_batch_mean_and_variance(digits):
    c = _config()
    model = build.model(c, 10)
    variables = state_lib.init_variables(model, jax.random.key(0), (8, 8, 1))
    masks = masks_lib.ones_like(variables["params"])
    state = state_lib.create(variables, masks, optax.sgd(0.1))
    batch = next(iter(digits.train))
    stats = jax.jit(functools.partial(step_lib.batch_statistics, model=model, inputs=None))(
        state, batch)
    kernel = variables["params"]["conv1"]["kernel"]
    y = jax.lax.conv_general_dilated(batch["image"], kernel, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(stats["bn1"]["mean"], y.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["bn1"]["var"], y.var((0, 1, 2)), rtol=1e-4, atol=1e-5)
    several = [next(it) for it in [iter(digits.train)] for _ in range(3)]
    averaged = loop._reestimate_batch_stats(
        state, jax.jit(functools.partial(step_lib.batch_statistics, model=model, inputs=None)),
        iter(several), 3)
    each = [step_lib.batch_statistics(state, b, model=model, inputs=None) for b in several]
    chex.assert_trees_all_close(averaged.batch_stats,
                                jax.tree.map(lambda *x: sum(x) / 3, *each), rtol=1e-5)


# ----------------------------------------------------------------------------------- rewinding

def test_rewinding_continues_the_learning_rate_schedule():
    c = _config()
    c.num_epochs, c.optimizer.decay_epochs, c.optimizer.weight_decay = 6, (3,), 0.0
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.ones(3)}
    first_update = {}
    for start in (0, 4):
        c.init.start_epoch = start
        plan = plan_lib.make(c, steps_per_epoch=10)
        assert plan.start_step == 10 * start
        tx = build.optimizer(c, plan, masks_lib.ones_like(params))
        first_update[start] = float(tx.update(grads, tx.init(params), params)[0]["w"][0])
    assert first_update == pytest.approx({0: -0.1, 4: -0.01})  # after the decay at epoch 3
    c.dst.method = "set"
    with pytest.raises(TrainError, match="static masks only"):
        build.check(c)


# -------------------------------------------------------------------------------------- defaults

def test_configs_use_the_released_ghost_path_and_conv_only_imp():
    assert quickstart.get_config().compare.tost.tost.ghost_skip == "conv1x1"
    assert tost.get_config().tost.ghost_skip == "conv1x1"
    assert tost.get_config("model=resnet50").tost.ghost_skip == "conv1x1"  # bottleneck ghosts
    assert tost.get_config("ghost=identity").tost.ghost_skip == "identity"
    c = lth.get_config("tost")
    assert c.tost.ghost_skip == "conv1x1" and not c.lottery.prune_dense
    assert c.lottery.rewind_schedule == "continue"


def test_pswish_with_ghost_skips_needs_ghost_swish():
    c = _config(ghost_skip="conv1x1")
    c.model.activation = "pswish"
    with pytest.raises(TrainError, match="tost.ghost_swish"):
        build.check(c)
    c.model.activation = "swish"  # a fixed smooth activation is kept after removal
    build.check(c)


@pytest.mark.slow  # one short run (about a minute): LRsI, distillation and BatchNorm re-estimation
def test_a_run_with_the_whole_recipe(tmp_path, monkeypatch):
    teacher = build.model(_config(), 10)
    workdir_lib.save_variables(tmp_path / "teacher.npz",
                               state_lib.init_variables(teacher, jax.random.key(5), (8, 8, 1)))
    c = _config(**TWEAKS)
    c.batch_size, c.num_epochs, c.optimizer.decay_epochs, c.progress = 128, 2, (1,), False
    c.recipe.lrsi, c.recipe.lrsi_iterations = True, 2
    c.recipe.distill.teacher = str(tmp_path / "teacher.npz")
    c.tost.bn_reestimate_batches = 2
    calls = []
    original = loop._reestimate_batch_stats

    def spy(state, stats_step, batches, count):
        calls.append((int(state.step), count))
        return original(state, stats_step, batches, count)

    monkeypatch.setattr(loop, "_reestimate_batch_stats", spy)
    summary = loop.train_and_evaluate(c, tmp_path / "run")
    assert calls == [(10, 2)]  # right after the switch to the plain network, at the first decay
    assert set(summary["lrsi_scales"]) == set(paths.flatten(
        state_lib.init_variables(build.model(c, 10), jax.random.key(0), (8, 8, 1), alpha=1.0)
        ["params"]))
    first = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
    assert '"step": 0' in first and "lrsi/conv1/kernel" in first
    assert summary["step"] == 20 and np.isfinite(summary["final_test_accuracy"])
    assert (tmp_path / "run" / workdir_lib.INITIAL_MASKS).exists()
