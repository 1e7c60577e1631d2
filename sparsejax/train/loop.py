"""``train_and_evaluate(config, workdir)``: the training loop of the papers (DESIGN.md, "A run").

One jitted, donated train step over a 1-D mesh of all devices (batches sharded on "data", params and
masks replicated); ``sparse_training`` over SGD for static or dynamic sparsity; masks found on the
plain network at step 0; optional LRsI before step 0 and distillation from a frozen teacher; the ToST
ghost phase, after which the step is compiled for the plain network, the ghost parameters leave the
state and (optionally) BatchNorm statistics are re-estimated; validation every epoch and the test
accuracy at the best validation epoch; orbax checkpoints, so that a killed run relaunched with the
same command ends bit-identical (CPU) to an uninterrupted one.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from sparsejax import data as data_lib, dst, masks as masks_lib, paths
from sparsejax.analysis import lenses
from sparsejax.errors import TrainError
from sparsejax.recipe import losses, lrsi
from sparsejax.train import build, plan as plan_lib, state as state_lib, step as step_lib
from sparsejax.train import workdir as workdir_lib
from sparsejax.train.checkpoint import Checkpoints
from sparsejax.train.metrics import MetricWriter

LRSI_MAX_BATCHES = 100  # LRsI cycles through at most this many training batches (host memory)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains the configured sparse network; returns (and writes) ``workdir/summary.json``."""
    build.check(config)
    with workdir_lib.locked(workdir) as workdir:
        workdir_lib.check_config(workdir, config)
        return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    # Mesh: devices ordered by process, so each host's rows of a global batch land on its devices.
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    repl, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    # Input.
    ds = data_lib.load(config.data.name, batch_size=config.batch_size, seed=config.seed,
                       data_dir=config.data.data_dir or None,
                       manual_dir=config.data.manual_dir or None)
    train_iter = iter(ds.train)
    plan = plan_lib.make(config, ds.steps_per_epoch)

    def to_global(batch):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
                            batch)

    # Model and optimizer: the ghosted network until plan.ghost_end, then the plain one.
    model = build.model(config, ds.num_classes)
    plain = build.plain_model(model) if plan.ghost_end is not None else model
    teacher_model = teacher_variables = None  # distillation's frozen teacher, if any
    if config.recipe.distill.teacher:
        teacher_model, teacher_variables = build.teacher(config, ds.num_classes, ds.image_shape[-1])
        teacher_variables = jax.device_put(teacher_variables, repl)
    ghost_inputs = build.ghost_inputs(config, plan)
    init_inputs = build.init_inputs(config)
    make_tx = functools.partial(build.optimizer, config, plan)
    rng = jax.random.key(config.seed)

    def plain_at(step: int) -> bool:
        return plan.ghost_end is not None and step >= plan.ghost_end

    # State: the newest readable checkpoint, restored onto an abstract target; else step 0.
    checkpoints = Checkpoints(workdir, config.keep_checkpoints)

    def target(step: int) -> state_lib.TrainState:
        s = state_lib.abstract(model, rng, ds.image_shape, make_tx, **init_inputs)
        s = state_lib.without_ghosts(s) if plain_at(step) else s
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), s)

    restored = checkpoints.restore(target)
    if restored:
        state, meta = restored
        train_iter.set_state(meta.pop("data"))
        if jax.process_index() == 0:
            print(f"resuming from step {int(state.step)} of {plan.total_steps} "
                  f"({workdir / 'checkpoints'})")
    else:
        state, lrsi_scales = _fresh_state(config, model, rng, ds, make_tx, init_inputs,
                                          ghost_inputs, workdir)
        if plan.start_step:  # rewinding: the schedules and the data order go on from there
            state = state.replace(step=jnp.int32(plan.start_step))
            train_iter.set_state({"next_index": plan.start_step})
        meta = {"best_validation_accuracy": -1.0, "test_accuracy": None, "best_step": None,
                "lrsi_scales": lrsi_scales}
    state = state_lib.replicate(state, repl)
    tx = make_tx(dst.get_masks(state.opt_state))  # one transformation for the whole run

    # Steps, compiled once per phase.
    def compile_steps(plain_model: bool):
        net, inputs = (plain, None) if plain_model else (model, ghost_inputs)
        train = functools.partial(step_lib.train_step, model=net, tx=tx, inputs=inputs,
                                  loss=build.loss(config), teacher_model=teacher_model)
        jitted = jax.jit(train, in_shardings=(repl, batch_sharding, repl),
                         out_shardings=(repl, repl), donate_argnums=0)
        return (lambda state, batch: jitted(state, batch, teacher_variables),
                jax.jit(functools.partial(step_lib.eval_step, model=net, inputs=inputs),
                        in_shardings=(repl, batch_sharding), out_shardings=repl))

    step = int(state.step)
    train_step, eval_step = compile_steps(plain_at(step))

    def batches(split: str):
        return (to_global(b) for b in getattr(ds, split))

    # Loop.
    writer = MetricWriter(workdir, resume_step=step)
    if step == plan.start_step and meta.get("lrsi_scales"):
        writer.write(step, {f"lrsi/{path}": scale for path, scale in meta["lrsi_scales"].items()})
    bar = tqdm(total=plan.total_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not config.progress, mininterval=1.0)
    learning_rate = build.learning_rate(config, plan)
    pending: list[dict] = []
    lens_names, lens_epochs = build.lens_names(config), set(config.analysis.epochs)
    lens_batches = list(itertools.islice(iter(ds.train), config.analysis.batches if lens_names else 0))

    def analyze(state) -> None:  # the lenses after the epochs config.analysis names (process 0)
        step = int(state.step)
        if (not lens_names or step % plan.steps_per_epoch or plan.epoch(step) not in lens_epochs
                or jax.process_index() != 0):
            return
        net, inputs = (plain, None) if plain_at(step) else (model, ghost_inputs)
        subject = lenses.Subject(net, {"params": state.params, "batch_stats": state.batch_stats},
                                 dst.get_masks(state.opt_state),
                                 inputs(state.step) if inputs else {})
        results = lenses.run(lens_names, subject, lens_batches, rng=jax.random.fold_in(rng, step),
                             input_shape=ds.image_shape, settings=build.lens_settings(config))
        for name, result in results.items():
            writer.write(step, lenses.scalars(name, result), file=f"analysis/{name}.jsonl",
                         record={"epoch": plan.epoch(step), **result})

    if step == plan.start_step:
        analyze(state)
    if step == plan.rewind_step:
        _save_variables(workdir / workdir_lib.REWIND_VARIABLES, state)
    try:
        while step < plan.total_steps:
            state, metrics = train_step(state, to_global(next(train_iter)))
            step += 1
            bar.update(1)
            pending.append(metrics)
            if step == plan.rewind_step:
                _save_variables(workdir / workdir_lib.REWIND_VARIABLES, state)
            if step == plan.ghost_end:
                state = state_lib.without_ghosts(state)
                train_step, eval_step = compile_steps(plain_model=True)
                if config.tost.bn_reestimate_batches:
                    state = _reestimate_batch_stats(
                        state, jax.jit(functools.partial(step_lib.batch_statistics, model=plain,
                                                         inputs=None),
                                       in_shardings=(repl, batch_sharding), out_shardings=repl),
                        (to_global(b) for b in ds.train), config.tost.bn_reestimate_batches)
            if (plan_lib.itstime(step, plan.log_every, plan.total_steps)
                    or step % plan.steps_per_epoch == 0):
                scalars = {f"train/{k}": float(np.mean([m[k] for m in jax.device_get(pending)]))
                           for k in pending[0]}
                pending = []
                if not math.isfinite(scalars["train/loss"]):
                    _diverged(scalars["train/loss"], step, checkpoints.latest_step(), workdir)
                scalars["train/learning_rate"] = float(learning_rate(step - 1))
                bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", refresh=False)
                writer.write(step, scalars)
            if plan_lib.itstime(step, plan.eval_every, plan.total_steps):
                scalars = _evaluate(eval_step, state, batches("validation"), "validation")
                if scalars["validation/accuracy"] > meta["best_validation_accuracy"]:
                    test = _evaluate(eval_step, state, batches("test"), "test")
                    meta.update(best_validation_accuracy=scalars["validation/accuracy"],
                                best_step=step, test_accuracy=test["test/accuracy"])
                    scalars.update(test)
                report = dst.report(state.opt_state)
                if config.dst.method == "static":  # per-layer numbers only when they can change
                    report = {"sparsity": report["sparsity"]}
                scalars.update({k: float(v) for k, v in report.items()})
                writer.write(step, {"epoch": plan.epoch(step), **scalars})
            analyze(state)
            if plan_lib.itstime(step, plan.checkpoint_every, plan.total_steps):
                checkpoints.save(step, state, {**meta, "data": train_iter.get_state()})
    finally:
        bar.close()
        checkpoints.close()
        writer.close()

    # End: the final test accuracy, the summary and the trained network's variables.
    final_masks = dst.get_masks(state.opt_state)
    summary = {
        "test_accuracy": meta["test_accuracy"],
        "final_test_accuracy": _evaluate(eval_step, state, batches("test"), "test")["test/accuracy"],
        "best_validation_accuracy": meta["best_validation_accuracy"],
        "best_step": meta["best_step"],
        "lrsi_scales": meta.get("lrsi_scales"),
        "sparsity": masks_lib.sparsity(final_masks, state.params),
        "layer_densities": masks_lib.layer_densities(final_masks, state.params),
        "step": step,
        "seed": config.seed,
        "config": json.loads(config.to_json_best_effort()),
    }
    _save_variables(workdir / workdir_lib.FINAL_VARIABLES, state)
    if jax.process_index() == 0:
        workdir_lib.write_json(workdir / "summary.json", summary)
    return summary


def _evaluate(eval_step, state: state_lib.TrainState, batches, split: str) -> dict[str, float]:
    """Accuracy and mean loss of ``state`` over one pass of ``batches``."""
    totals = np.zeros(3)  # float64 sums of [correct, loss, count]
    for batch in batches:
        totals += np.asarray(eval_step(state, batch))
    correct, loss, count = totals
    return {f"{split}/accuracy": correct / count, f"{split}/loss": loss / count}


def _save_variables(path: pathlib.Path, state: state_lib.TrainState) -> None:
    if jax.process_index() == 0:
        workdir_lib.save_variables(path, {"params": state.params, "batch_stats": state.batch_stats})


def _fresh_state(config, model, rng, ds, make_tx, init_inputs, ghost_inputs, workdir
                 ) -> tuple[state_lib.TrainState, dict[str, float] | None]:
    """The step-0 state and LRsI's scales (None without LRsI).

    Initial variables (or ``init.variables_file``); the masks found on the plain network (ReLU, no
    ghost paths), so that a seed gives the same mask with and without the ToST tweaks, written to
    ``initial_masks.npz``; then, with ``recipe.lrsi``, the learned per-tensor scales applied.
    """
    variables = state_lib.init_variables(model, rng, ds.image_shape, **init_inputs)
    if config.init.variables_file:
        variables = workdir_lib.load_variables(config.init.variables_file, variables)
    plain, plain_variables = build.plain_model(model), paths.without_ghosts(variables)

    def apply_fn(params, x):  # the finders' view of the network at step 0
        return plain.apply({"params": params, "batch_stats": plain_variables.get("batch_stats", {})},
                           x, train=False)

    def train_batches(examples: int) -> list[dict]:  # global batches, the same on every host
        it, batches = iter(ds.train), []
        while sum(len(b["label"]) for b in batches) < examples:
            batch = next(it)
            if jax.process_count() > 1:
                batch = multihost_utils.process_allgather(batch, tiled=True)
            batches.append(batch)
        return batches

    plain_masks = build.initial_masks(config, plain_variables["params"], apply_fn, train_batches,
                                      ds.image_shape, ds.num_classes)
    if jax.process_index() == 0:
        masks_lib.save(workdir / workdir_lib.INITIAL_MASKS, plain_masks)
    masks = build.overlay(masks_lib.ones_like(variables["params"]), plain_masks)
    scales = None
    if config.recipe.lrsi:
        batch_stats, inputs = variables.get("batch_stats", {}), ghost_inputs(jnp.int32(0))

        def loss_fn(params, batch):  # BatchNorm in train mode, running statistics not updated
            logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                    train=True, mutable=["batch_stats"], **inputs)
            return losses.cross_entropy(logits, batch["label"]).mean()

        r = config.recipe
        count = max(lrsi.MIN_BATCHES, min(ds.steps_per_epoch, LRSI_MAX_BATCHES))
        try:
            params, scales = lrsi.rescale(
                loss_fn, masks_lib.apply(variables["params"], masks), masks,
                train_batches(count * config.batch_size), iterations=r.lrsi_iterations,
                learning_rate=r.lrsi_learning_rate)
        except ValueError as e:  # a non-finite gradient norm at the init, a setting out of range
            raise TrainError(f"recipe.lrsi: {' '.join(str(e).split())}") from None
        variables = {**variables, "params": params}
    return state_lib.create(variables, masks, make_tx(masks)), scales


def _reestimate_batch_stats(state, stats_step, train_batches, count: int):
    """``state`` with BatchNorm running statistics replaced by the mean of ``count`` batches'."""
    total = None
    for batch in itertools.islice(train_batches, count):
        stats = stats_step(state, batch)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    return state.replace(batch_stats=jax.tree.map(lambda x: x / count, total))


def _diverged(loss: float, step: int, last_checkpoint: int | None, workdir: pathlib.Path) -> None:
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in {str(workdir)!r}"
            if last_checkpoint is not None else "no checkpoint was written yet")
    raise TrainError(f"training diverged: loss is {loss} at step {step}; {kept}; lower "
                     "--config.optimizer.learning_rate")
