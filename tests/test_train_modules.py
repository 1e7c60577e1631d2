"""The train package's modules in process: plan, build, state, step, checkpoint, workdir."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sparsejax import dst, files, masks as masks_lib, paths
from sparsejax.errors import FileFormatError, TrainError
from sparsejax.train import build, plan as plan_lib, state as state_lib, step as step_lib
from sparsejax.train import workdir as workdir_lib
from sparsejax.train.checkpoint import Checkpoints


def config(**tost):
    c = base.get_config("runlocal")
    c.tost.update(tost)
    return c


TOST = dict(ghost_skip="conv1x1", ghost_swish=True, beta_max=4.0, label_smoothing=0.1)


# ----------------------------------------------------------------------------------------- plan


def test_plan_resolves_epochs_and_fractions_to_steps():
    c = base.get_config()
    c.tost.ghost_swish = True
    c.dst.start_epoch, c.dst.end_fraction, c.dst.update_every = 1, 0.5, 0
    c.init.save_at_epoch = 2
    p = plan_lib.make(c, steps_per_epoch=10)
    assert (p.total_steps, p.lr_boundaries, p.ghost_end) == (1800, (900, 1350), 900)
    assert (p.dst_start, p.dst_end, p.dst_every) == (10, 900, 10)
    assert (p.eval_every, p.checkpoint_every, p.rewind_step, p.log_every) == (10, 10, 20, 50)
    assert plan_lib.make(base.get_config(), 10).ghost_end is None
    assert [t for t in range(1, 31) if plan_lib.itstime(t, 10, 25)] == [10, 20, 25, 30]


def test_learning_rate_warms_up_then_decays():
    c = base.get_config()
    c.num_epochs, c.optimizer.warmup_epochs, c.optimizer.decay_epochs = 5, 1, (3,)
    lr = build.learning_rate(c, plan_lib.make(c, steps_per_epoch=10))
    got = [float(lr(t)) for t in (0, 5, 10, 29, 30, 49)]
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


# ---------------------------------------------------------------------------------------- build


@pytest.mark.parametrize("key, value, words", [
    ("mode", "sweep", "mode"),
    ("model.name", "resnet9", "resnet9"),
    ("mask.sparsity", 1.0, "sparsity"),
    ("mask.method", "lth", "mask.method"),
    ("batch_size", 12, "divisible"),
    ("dst.method", "rigl2", "dst.method"),
    ("tost.alpha_shape", "sigmoid", "alpha_shape"),
    ("tost.label_smoothing", 1.0, "label smoothing"),
    ("dst.drop_fraction", 1.5, "drop_fraction"),
])
def test_check_names_the_bad_key(key, value, words):
    c = config()
    c.update_from_flattened_dict({key: value})
    with pytest.raises(TrainError, match=words):
        build.check(c)


def test_check_asks_the_constructors():
    c = config()
    c.dst.options = {"grow_gradient_fraction": 0.5}  # RigL has no such option
    c.dst.method = "rigl"
    with pytest.raises(TrainError, match="grow_gradient_fraction"):
        build.check(c)
    build.check(config(**TOST))
    c = config(ghost_swish=True)
    c.tost.beta0, c.tost.beta_max = 2.0, 1.0  # β only grows
    with pytest.raises(TrainError, match="beta0"):
        build.check(c)
    c = config(ghost_swish=True)
    c.optimizer.decay_epochs = (0, 3)  # the ghost phase would end at step 0
    with pytest.raises(TrainError, match="lr_boundaries"):
        build.check(c)
    c = config()
    c.mask.method, c.mask.samples = "snip", -1
    with pytest.raises(TrainError, match="mask.samples"):
        build.check(c)


def test_check_sees_every_variant_before_the_first_trains():
    from configs import quickstart
    c = quickstart.get_config()
    build.check(c)
    c.compare.tost.tost.alpha_shape = "sigmoid"
    with pytest.raises(TrainError, match="alpha_shape"):
        build.check(c)


# ------------------------------------------------------------------------------ state and step


@pytest.fixture(scope="module")
def ghosted():
    """A ToST run's pieces on mock 8×8 digits-shaped data: plan, model, tx, step-0 state, a batch."""
    c = config(**TOST)
    plan = plan_lib.make(c, steps_per_epoch=5)
    model = build.model(c, 10)
    variables = state_lib.init_variables(model, jax.random.key(0), (8, 8, 1), alpha=1.0)
    plain_masks = build.initial_masks(c, paths.without_ghosts(variables["params"]), None, None,
                                      (8, 8, 1), 10)
    masks = build.overlay(masks_lib.ones_like(variables["params"]), plain_masks)
    tx = build.optimizer(c, plan, masks)
    state = state_lib.create(variables, masks, tx)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32), "mask": np.ones(16, bool)}
    return c, plan, model, tx, state, masks, batch


def test_abstract_state_has_the_fresh_state_shapes(ghosted):
    c, plan, model, tx, state, masks, _ = ghosted
    abstract = state_lib.abstract(model, jax.random.key(0), (8, 8, 1),
                                  lambda m: build.optimizer(c, plan, m), alpha=1.0)
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert shapes(abstract) == shapes(state)


def test_train_step_keeps_pruned_weights_zero(ghosted):
    c, plan, model, tx, state, masks, batch = ghosted
    step = jax.jit(lambda s, b: step_lib.train_step(
        s, b, model=model, tx=tx, inputs=build.ghost_inputs(c, plan), loss=build.loss(c)))
    new, metrics = step(state, batch)
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
    chex.assert_trees_all_equal(dst.get_masks(new.opt_state), masks)
    pruned = jax.tree.map(lambda p, m: jnp.where(m, 0.0, p), new.params, masks)
    chex.assert_trees_all_equal(pruned, jax.tree.map(jnp.zeros_like, new.params))
    assert not jnp.array_equal(new.params["conv1"]["kernel"], state.params["conv1"]["kernel"])


@pytest.mark.slow
def test_one_optimizer_serves_the_plain_network(ghosted):
    """After the ghost phase the same tx updates the plain params: its state lost the ghosts."""
    c, plan, model, tx, state, masks, batch = ghosted
    plain = state_lib.without_ghosts(state)
    assert not any(paths.is_ghost(p) for p in paths.flatten(plain))
    assert any(paths.is_ghost(p) for p in paths.flatten(state.params))
    from sparsejax import models
    net = models.remove_ghosts(model, {})[0]
    new, _ = step_lib.train_step(plain, batch, model=net, tx=tx, inputs=None,
                                 loss=build.loss(config()))
    chex.assert_trees_all_equal(dst.get_masks(new.opt_state), paths.without_ghosts(masks))
    counts = step_lib.eval_step(new, {**batch, "mask": np.arange(16) < 10}, model=net, inputs=None)
    assert float(counts[2]) == 10.0


# ------------------------------------------------------------------------------------ checkpoint


def test_checkpoints_fall_back_past_a_damaged_step(tmp_path, ghosted):
    *_, state, _, _ = ghosted
    ckpt = Checkpoints(tmp_path, keep=3)
    for step in (1, 2):
        ckpt.save(step, state.replace(step=jnp.int32(step)), {"data": {"next_index": step}})
    ckpt.close()
    for f in (tmp_path / "checkpoints" / "2").rglob("*"):
        if f.is_file():
            f.write_bytes(gzip.compress(b"garbage"))
    target = lambda step: jax.eval_shape(lambda: state)  # noqa: E731
    ckpt = Checkpoints(tmp_path, keep=3)
    restored, meta = ckpt.restore(target)
    assert int(restored.step) == 1 and meta == {"data": {"next_index": 1}}
    assert ckpt.latest_step() == 1 and (tmp_path / "damaged_checkpoints" / "2").is_dir()
    chex.assert_trees_all_equal(restored.params, state.params)
    ckpt.save(2, state.replace(step=jnp.int32(2)), {"data": {"next_index": 2}})  # damaged again
    ckpt.close()
    (tmp_path / "checkpoints" / "2" / "meta" / "metadata").write_bytes(b"\x8b")
    assert int(Checkpoints(tmp_path, keep=3).restore(target)[0].step) == 1
    assert (tmp_path / "damaged_checkpoints" / "2.1").is_dir()
    for f in (tmp_path / "checkpoints" / "1").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x8b")
    with pytest.raises(TrainError, match="no checkpoint .* can be read"):
        Checkpoints(tmp_path, keep=3).restore(target)
    assert Checkpoints(tmp_path / "empty", keep=3).restore(target) is None


# --------------------------------------------------------------------------------------- workdir


def test_workdir_lock_refuses_a_second_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sparsejax.train import workdir as w\n"
         f"with w.locked({str(tmp_path)!r}):\n print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainError, match=f"in use by process {holder.pid} on"):
            with workdir_lib.locked(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir_lib.locked(tmp_path):  # a killed holder leaves no lock behind
        pass


def test_load_variables_refuses_what_does_not_fit(tmp_path):
    like = {"params": {"dense": {"kernel": jnp.ones((3, 2))}}}
    workdir_lib.save_variables(tmp_path / "v.npz", {"params": {"dense": {"kernel": np.ones((2, 2))}}})
    with pytest.raises(TrainError, match="does not fit"):
        workdir_lib.load_variables(tmp_path / "v.npz", like)
    (tmp_path / "bad.npz").write_text("print('not arrays')")
    with pytest.raises(FileFormatError, match="not a sparsejax"):
        workdir_lib.load_variables(tmp_path / "bad.npz", like)
    with pytest.raises(TrainError, match="does not exist"):
        workdir_lib.load_variables(tmp_path / "missing.npz", like)
    workdir_lib.save_variables(tmp_path / "ok.npz", {"params": {"dense": {"kernel": np.full((3, 2), 7.0)}}})
    chex.assert_trees_all_equal(workdir_lib.load_variables(tmp_path / "ok.npz", like),
                                {"params": {"dense": {"kernel": jnp.full((3, 2), 7.0)}}})


def test_workdir_of_another_config_is_refused(tmp_path):
    workdir_lib.check_config(tmp_path, config())
    workdir_lib.check_config(tmp_path, config())  # the same config: fine
    with pytest.raises(TrainError, match="differs in tost.ghost_swish"):
        workdir_lib.check_config(tmp_path, config(ghost_swish=True))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    files.write_atomic(tmp_path / "a.json", "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        files.write_atomic(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_read_npz_refuses_what_is_not_an_npz(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(3))
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
    for name in ("one.npy", "text.npz", "pickled.npz"):
        with pytest.raises(FileFormatError, match=f"mask file .*{name}.* is not a sparsejax .npz.*; fix"):
            files.read_npz(tmp_path / name, "mask file", "fix")
    np.savez(tmp_path / "ok.npz", a=np.arange(3))
    chex.assert_trees_all_equal(files.read_npz(tmp_path / "ok.npz", "mask file", "fix"),
                                {"a": np.arange(3)})


def test_initial_masks_from_a_file_say_what_is_wrong(tmp_path, ghosted):
    c, _, _, _, state, masks, _ = ghosted
    c = config(**TOST)
    plain = paths.without_ghosts(state.params)
    c.mask.method, c.mask.file = "file", str(tmp_path / "missing.npz")
    with pytest.raises(TrainError, match="missing.npz.* does not exist"):
        build.initial_masks(c, plain, None, None, (8, 8, 1), 10)
    c.mask.file = __file__
    with pytest.raises(FileFormatError, match="not a sparsejax"):
        build.initial_masks(c, plain, None, None, (8, 8, 1), 10)
    c.mask.file = str(tmp_path / "plain.npz")  # a mask of the plain network
    masks_lib.save(c.mask.file, paths.without_ghosts(masks))
    chex.assert_trees_all_equal(build.initial_masks(c, plain, None, None, (8, 8, 1), 10),
                                paths.without_ghosts(masks))
    c.dst.options = {}
    c.mask.method, c.mask.dense_layers = "random", ("no_such_layer",)
    with pytest.raises(TrainError, match="masks: .*no_such_layer"):
        build.initial_masks(c, plain, None, None, (8, 8, 1), 10)
