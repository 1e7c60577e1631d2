"""``train_and_evaluate(config, workdir)``: the training loop of the papers (DESIGN.md, "A run").

One jitted, donated train step over a 1-D mesh of all devices (batches sharded on "data", params and
masks replicated); SGD with momentum and weight decay under a piecewise-constant learning rate with
optional warm-up; masks from the config; ``sparse_training`` for static or dynamic sparsity; the ToST
ghost schedules with the switch to the plain model when the ghost phase ends; label smoothing;
validation every epoch, test accuracy at the best validation epoch and at the end; orbax checkpoints
(params, BatchNorm statistics, optimizer state with masks, step, data position, best metrics) so that a
killed run relaunched with the same command ends bit-identical (CPU) to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from sparsejax import data as data_lib
from sparsejax import distributions, dst, masks as masks_lib, models, paths, pruning, schedules
from sparsejax.recipe import losses


TORCH_SUFFIXES = (".pt", ".pth", ".tar")  # mask.file from PyTorch (sparsejax.pruning.load_torch_masks)
FINAL_VARIABLES = "final_variables.npz"  # the trained (plain) network's params and batch_stats


class TrainError(ValueError):
    """A problem the user can fix (bad config, unfit workdir, divergence): one line says what."""


# --------------------------------------------------------------------------------------- workdir


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _prepare_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Creates ``workdir``; refuses one that is unwritable or holds a run of another config."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=workdir, prefix=".probe", delete=True)
        probe.close()
    except OSError as e:
        raise TrainError(f"workdir {str(workdir)!r} is not writable ({e.strerror}); "
                         "pass a writable --workdir") from None
    saved = workdir / "config.json"
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous != current:
            keys = sorted(k for k in set(_flat(previous)) | set(_flat(current))
                          if _flat(previous).get(k) != _flat(current).get(k))
            raise TrainError(f"workdir {str(workdir)!r} holds a run of a different config "
                             f"(differs in {', '.join(keys[:5])}); use another --workdir or "
                             "delete that one")
    elif jax.process_index() == 0:
        write_atomic(saved, json.dumps(current, indent=2, sort_keys=True))


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------------ schedules


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step counts derived from the config and the dataset."""
    steps_per_epoch: int
    total_steps: int
    lr_boundaries: tuple[int, ...]
    ghost_end: int | None  # step from which the plain model is trained; None: no ghost phase


def _plan(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Plan:
    total = config.num_epochs * steps_per_epoch
    boundaries = tuple(int(e * steps_per_epoch) for e in config.optimizer.decay_epochs)
    ghost_end = None
    if config.tost.ghost_skip or config.tost.ghost_swish:
        ghost_end = schedules.ghost_end_step(boundaries or (total,), config.tost.removal)
    return Plan(steps_per_epoch, total, boundaries, ghost_end)


def learning_rate(config: ml_collections.ConfigDict, plan: Plan) -> optax.Schedule:
    """Piecewise-constant lr (× decay_factor at each boundary) after an optional linear warm-up."""
    o = config.optimizer
    warmup = int(o.warmup_epochs * plan.steps_per_epoch)
    decay = optax.piecewise_constant_schedule(
        o.learning_rate, {b - warmup: o.decay_factor for b in plan.lr_boundaries if b > warmup})
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup), decay],
                                [warmup])


# ----------------------------------------------------------------------------------------- masks


def initial_masks(config: ml_collections.ConfigDict, params: Any, apply_fn: Callable,
                  train_batches: Callable[[int], list[dict]], input_shape: tuple[int, ...]) -> Any:
    """The masks the run starts from, by ``config.mask.method``."""
    m = config.mask
    if m.method == "dense":
        return masks_lib.ones_like(params)
    if m.method == "file":
        if not m.file:
            raise TrainError("mask.method is 'file' but mask.file is empty; pass "
                             "--config.mask.file=PATH.npz")
        try:  # the file holds no ghost parameters: they get all-True masks
            if pathlib.Path(m.file).suffix in TORCH_SUFFIXES:
                loaded, report = pruning.load_torch_masks(m.file, without_ghosts(params))
                logging.warning("mask import from %s: %s", m.file, report)
            else:
                loaded = masks_lib.load(m.file, without_ghosts(params))
            return overlay(masks_lib.ones_like(params), loaded)
        except FileNotFoundError:
            raise TrainError(f"mask file {m.file!r} does not exist; check --config.mask.file") from None
    densities = distributions.by_name(m.distribution)(params, m.sparsity, dense=m.dense_layers)
    rng = jax.random.key(config.seed + 1)
    if m.method == "random":
        return masks_lib.random(rng, params, densities)
    scope = m.scope
    batches = None
    if m.method in ("snip", "grasp"):
        batches = [{"x": b["image"], "y": b["label"]} for b in train_batches(m.batches)]
    return pruning.find_mask(m.method, params, m.sparsity, apply_fn=apply_fn, batches=batches,
                             input_shape=(1, *input_shape), scope=scope,
                             densities=densities if scope == "layer" else None, rng=rng)


# -------------------------------------------------------------------------------------- the step


def _model_kwargs(config: ml_collections.ConfigDict, plan: Plan) -> Callable[[jax.Array], dict]:
    """α and β for a step (traced), or nothing once the model is plain."""
    t = config.tost
    alpha = schedules.ghost_alpha(plan.ghost_end, t.alpha_shape) if t.ghost_skip else None
    beta = (schedules.ghost_beta(t.beta0, t.beta_max if plan.ghost_end else t.beta0,
                                 plan.ghost_end, t.beta_shape) if t.ghost_swish else None)

    def kwargs(step):
        out = {}
        if alpha is not None:
            out["alpha"] = alpha(step)
        if beta is not None:
            out["beta"] = beta(step)
        return out

    return kwargs


def make_train_step(model, tx, model_kwargs, smoothing: float, rule: str):
    """``(state, batch) -> (state, metrics)``: one SGD step with masked updates."""

    def train_step(state, batch):
        def loss_fn(params):
            logits, new = model.apply({"params": params, "batch_stats": state["batch_stats"]},
                                      batch["image"], train=True, mutable=["batch_stats"],
                                      **model_kwargs(state["step"]))
            loss = losses.cross_entropy(logits, batch["label"], smoothing, rule).mean()
            return loss, (logits, new["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
                     "opt_state": opt_state}
        return new_state, {"loss": loss, "accuracy": accuracy}

    return train_step


def make_eval_step(model, model_kwargs):
    """``(state, batch) -> [correct, loss_sum, count]`` over the batch's real (unpadded) examples."""

    def eval_step(state, batch):
        logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                             batch["image"], train=False, **model_kwargs(state["step"]))
        weight = batch["mask"].astype(jnp.float32)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weight)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return jnp.stack([correct, jnp.sum(loss * weight), jnp.sum(weight)])

    return eval_step


def init_variables(model, rng: jax.Array, x: jax.Array, sharding, **kwargs) -> dict:
    """``model.init`` compiled, with the dicts in the model's definition order (first layer first).

    A jitted function returns its dicts with sorted keys; the order in which the layers were created
    is read inside the trace and restored, since "first"/"last" layer options and the PyTorch mask
    matcher (``sparsejax.distributions.definition_order``) depend on it.
    """
    order: list[str] = []

    def init(key):
        variables = model.init(key, x, train=False, **kwargs)
        order.extend(distributions.definition_order(variables))
        return variables

    flat = paths.flatten(jax.jit(init, out_shardings=sharding)(rng))
    return traverse_util.unflatten_dict({tuple(p.split("/")): flat[p] for p in order})


def overlay(tree: Any, values: Any) -> Any:
    """``tree`` with the leaves that ``values`` has at the same paths replaced by those."""
    return paths.unflatten(tree, {**paths.flatten(tree), **paths.flatten(values)})


def save_variables(path: pathlib.Path, variables: Any) -> None:
    """Writes variables (params, batch_stats) to an ``.npz`` keyed by path, atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in paths.flatten(variables).items()})
    os.replace(tmp, path)


def load_variables(path: str | os.PathLike, like: Any) -> Any:
    """Variables saved by ``save_variables``, onto ``like``'s structure (paths it lacks keep ``like``'s)."""
    with np.load(path, allow_pickle=False) as stored:
        values = {k: jnp.asarray(stored[k]) for k in stored.files}
    want = paths.flatten(like)
    for k, v in values.items():
        if k not in want or tuple(np.shape(want[k])) != v.shape:
            raise TrainError(f"variables file {str(path)!r} has {k!r} {v.shape}, which does not fit "
                             "this model; it was saved for another model")
    return paths.unflatten(like, {**want, **{k: v for k, v in values.items()}})


def without_ghosts(tree: Any) -> Any:
    """``tree`` with every dict entry named "ghost*" removed, at any depth (params, masks, opt state)."""
    if isinstance(tree, dict):
        return {k: without_ghosts(v) for k, v in tree.items() if not paths.is_ghost(str(k))}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(without_ghosts(v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(without_ghosts(v) for v in tree)
    return tree


# ------------------------------------------------------------------------------------- metrics


def _logged_step(line: str) -> float:
    """The step of one metrics.jsonl line; +inf for a line cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` and TensorBoard, from process 0 only."""

    def __init__(self, workdir: pathlib.Path, resume_step: int):
        self.active = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        if not self.active:
            return
        if self.path.exists():  # drop what a killed run logged after its last checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if _logged_step(line) <= resume_step]
            write_atomic(self.path, "".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.active:
            self.tensorboard.close()


# ------------------------------------------------------------------------------------- the run


class _Phase:
    """The model of one phase (ghosted, or plain after the ghost phase) and its compiled steps."""

    def __init__(self, model, make_tx, masks, config, plan, shardings, ghosted: bool):
        repl, batch = shardings
        self.model = model
        self.tx = make_tx(masks)
        kwargs = _model_kwargs(config, plan) if ghosted else (lambda step: {})
        train_step = make_train_step(model, self.tx, kwargs, config.tost.label_smoothing,
                                     config.tost.label_smoothing_rule)
        self.train_step = jax.jit(train_step, in_shardings=(repl, batch),
                                  out_shardings=(repl, repl), donate_argnums=0)
        self.eval_step = jax.jit(make_eval_step(model, kwargs), in_shardings=(repl, batch),
                                 out_shardings=repl)


def _check_config(config: ml_collections.ConfigDict) -> None:
    if not 0.0 <= config.mask.sparsity < 1.0:
        raise TrainError(f"mask.sparsity is {config.mask.sparsity}; it must lie in [0, 1)")
    for key in ("num_epochs", "batch_size", "log_every_steps", "eval_every_epochs",
                "checkpoint_every_epochs"):
        if config[key] <= 0:
            raise TrainError(f"{key} is {config[key]}; it must be a positive integer")
    if config.batch_size % jax.device_count():
        raise TrainError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{jax.device_count()} devices; choose a multiple")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains the configured sparse network; returns (and writes) ``workdir/summary.json``."""
    _check_config(config)
    workdir = pathlib.Path(workdir)
    _prepare_workdir(workdir, config)

    # Devices ordered by process, so each host's rows of a global batch land on its own devices.
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    repl, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    ds = data_lib.load(config.data.name, batch_size=config.batch_size, seed=config.seed,
                       data_dir=config.data.data_dir or None,
                       manual_dir=config.data.manual_dir or None)
    train_iter = iter(ds.train)
    plan = _plan(config, ds.steps_per_epoch)

    activation = "pswish" if config.tost.ghost_swish else config.model.activation
    model = models.build(config.model.name, ds.num_classes, activation=activation,
                         ghost_skip=config.tost.ghost_skip or None)
    plain_model = models.remove_ghosts(model, {})[0] if plan.ghost_end is not None else model
    inner = optax.chain(optax.add_decayed_weights(config.optimizer.weight_decay),
                        optax.sgd(learning_rate(config, plan), config.optimizer.momentum))
    d = config.dst
    update_every = d.update_every or plan.steps_per_epoch

    def make_tx(masks):
        return dst.sparse_training(
            inner, masks, method=d.method, update_every=update_every,
            start_step=d.start_epoch * plan.steps_per_epoch,
            end_step=max(int(d.end_fraction * plan.total_steps), d.start_epoch * plan.steps_per_epoch),
            drop_fraction=d.drop_fraction, drop_schedule=d.drop_schedule,
            grow_gradient_fraction=d.grow_gradient_fraction, seed=config.seed)

    def to_global(batch):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
                            batch)

    dummy = jnp.zeros((1, *ds.image_shape), jnp.float32)
    init_kwargs = {"alpha": 1.0} if config.tost.ghost_skip else {}

    def fresh_state(resuming: bool):
        """The step-0 state, or on resume only its structure (all-True masks, no mask search)."""
        variables = init_variables(model, jax.random.key(config.seed), dummy, repl, **init_kwargs)
        if config.init.variables_file:
            variables = load_variables(config.init.variables_file, variables)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})

        def apply_fn(p, x):
            return model.apply({"params": p, "batch_stats": batch_stats}, x, train=False,
                               **_model_kwargs(config, plan)(0) if plan.ghost_end else {})

        def train_batches(n):
            it = iter(ds.train)
            return [next(it) for _ in range(n)]

        masks = (masks_lib.ones_like(params) if resuming
                 else initial_masks(config, params, apply_fn, train_batches, ds.image_shape))
        params = masks_lib.apply(params, masks)
        tx = make_tx(masks)
        state = {"step": jnp.int32(0), "params": params, "batch_stats": batch_stats,
                 "opt_state": tx.init(params)}
        # Host copies first: leaves that are one object (e.g. shared zeros) must become distinct
        # buffers, since the train step donates every one of them.
        return jax.device_put(jax.tree.map(np.array, state), repl), masks

    manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                             enable_async_checkpointing=False, create=True))
    latest = manager.latest_step()
    state, masks = fresh_state(resuming=latest is not None)
    meta = {"best_validation_accuracy": -1.0, "test_accuracy": None, "best_step": None}
    ghosted = plan.ghost_end is not None
    if latest is not None:
        if ghosted and latest >= plan.ghost_end:
            state, masks, ghosted = without_ghosts(state), without_ghosts(masks), False
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                                state)
        restored = manager.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], restored["meta"]
        train_iter.set_state(meta.pop("data"))
        masks = dst.get_masks(state["opt_state"])

    phase = _Phase(model if ghosted else plain_model, make_tx, masks, config, plan,
                   (repl, batch_sharding), ghosted)
    writer = MetricWriter(workdir, resume_step=int(state["step"]))
    step = int(state["step"])

    def evaluate(split: str) -> dict[str, float]:
        total = np.zeros(3)
        for batch in getattr(ds, split):
            total += np.asarray(phase.eval_step(state, to_global(batch)))
        correct, loss, count = total
        return {f"{split}/accuracy": correct / count, f"{split}/loss": loss / count}

    from tqdm.auto import tqdm
    bar = tqdm(total=plan.total_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not config.progress, mininterval=1.0)
    pending: list[dict] = []

    def save_rewind_point():
        if (step == config.init.save_at_epoch * plan.steps_per_epoch
                and jax.process_index() == 0):
            save_variables(workdir / "rewind.npz",
                           {"params": state["params"], "batch_stats": state["batch_stats"]})

    save_rewind_point()
    try:
        while step < plan.total_steps:
            state, metrics = phase.train_step(state, to_global(next(train_iter)))
            step += 1
            save_rewind_point()
            bar.update(1)
            pending.append(metrics)
            if ghosted and step >= plan.ghost_end:
                state, masks, ghosted = without_ghosts(state), without_ghosts(masks), False
                phase = _Phase(plain_model, make_tx, masks, config, plan,
                               (repl, batch_sharding), ghosted=False)
            epoch_end = step % plan.steps_per_epoch == 0
            if step % config.log_every_steps == 0 or epoch_end or step == plan.total_steps:
                scalars = {k: float(np.mean([m[k] for m in jax.device_get(pending)]))
                           for k in pending[0]}
                pending = []
                if not math.isfinite(scalars["loss"]):
                    raise TrainError(
                        f"training diverged: loss is {scalars['loss']} at step {step}; the last "
                        f"good checkpoint (step {manager.latest_step()}) is kept in "
                        f"{str(workdir)!r}; lower --config.optimizer.learning_rate")
                scalars = {f"train/{k}": v for k, v in scalars.items()}
                scalars["train/learning_rate"] = float(learning_rate(config, plan)(step - 1))
                bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", refresh=False)
                writer.write(step, scalars)
            epoch = step // plan.steps_per_epoch
            if epoch_end and (epoch % config.eval_every_epochs == 0 or step == plan.total_steps):
                scalars = evaluate("validation")
                if scalars["validation/accuracy"] > meta["best_validation_accuracy"]:
                    meta["best_validation_accuracy"] = scalars["validation/accuracy"]
                    meta["best_step"] = step
                    test = evaluate("test")
                    meta["test_accuracy"] = test["test/accuracy"]
                    scalars.update(test)
                report = dst.report(state["opt_state"])
                if config.dst.method == "static":  # per-layer numbers only when they can change
                    report = {"sparsity": report["sparsity"]}
                scalars.update({k: float(v) for k, v in report.items()})
                writer.write(step, {"epoch": epoch, **scalars})
            if epoch_end and (epoch % config.checkpoint_every_epochs == 0
                              or step == plan.total_steps):
                manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave({**meta, "data": train_iter.get_state()})))
    finally:
        bar.close()
        manager.wait_until_finished()
        writer.close()

    final = evaluate("test")
    final_masks = dst.get_masks(state["opt_state"])
    summary = {
        "test_accuracy": meta["test_accuracy"],
        "final_test_accuracy": final["test/accuracy"],
        "best_validation_accuracy": meta["best_validation_accuracy"],
        "best_step": meta["best_step"],
        "sparsity": masks_lib.sparsity(final_masks, state["params"]),
        "layer_densities": masks_lib.layer_densities(final_masks, state["params"]),
        "step": step,
        "seed": config.seed,
        "config": json.loads(config.to_json_best_effort()),
    }
    if jax.process_index() == 0:
        save_variables(workdir / FINAL_VARIABLES,
                       {"params": state["params"], "batch_stats": state["batch_stats"]})
        write_atomic(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


def run_variants(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
    """Trains each entry of ``config.compare`` (overrides of ``config``) into ``workdir/<name>``."""
    summaries = {}
    for name, overrides in config.compare.items():
        variant = ml_collections.ConfigDict(config.to_dict())
        del variant["compare"]
        variant.update_from_flattened_dict(_flat(overrides.to_dict()))
        variant.name = f"{config.name}/{name}"
        summaries[name] = train_and_evaluate(variant, pathlib.Path(workdir) / name)
    return summaries


def comparison_table(summaries: dict[str, dict]) -> str:
    """A plain-text table of test accuracies (at best validation and final) and sparsity per run."""
    lines = [f"{'run':<12} {'test acc (best val)':>20} {'final test acc':>15} {'sparsity':>9}"]
    for name, s in summaries.items():
        lines.append(f"{name:<12} {s['test_accuracy']:>20.4f} {s['final_test_accuracy']:>15.4f} "
                     f"{s['sparsity']:>9.4f}")
    return "\n".join(lines)
