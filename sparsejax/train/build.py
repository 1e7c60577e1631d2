"""What a run is made of, from its config: checked once up front, then the model, the optimizer (one
``sparse_training`` transformation for the whole run, ghost phase included), the α/β inputs of the
ghost phase, the loss (label smoothing, distillation), and the masks the run starts from.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from sparsejax import data as data_lib
from sparsejax import distributions, dst, masks as masks_lib, models, nn, paths, pruning, schedules
from sparsejax.analysis import lenses
from sparsejax.dst import timing
from sparsejax.errors import TrainError, UserError
from sparsejax.recipe import losses
from sparsejax.train import plan as plan_lib, workdir as workdir_lib
from sparsejax.train.plan import Plan

MODES = ("train", "compare", "lottery")  # one run; config.compare's variants; IMP rounds
MASK_METHODS = ("dense", "file", *pruning.METHODS)


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise TrainError(f"{key} is {value!r}; use one of {', '.join(map(str, choices))}")


def check(config: ml_collections.ConfigDict) -> None:
    """Raises `TrainError` (one line naming the key and the fix) for a config that cannot run."""
    _choice("mode", config.mode, MODES)
    if config.mode == "compare" and not config.get("compare"):
        raise TrainError("mode is 'compare' but the config has no compare variants; add "
                         "config.compare = {name: overrides} or use mode 'train'")
    if config.mode == "lottery":
        if "lottery" not in config:
            raise TrainError("mode is 'lottery' but the config has no lottery settings; start "
                             "from configs/lth.py")
        lt = config.lottery
        if lt.rounds < 1 or not 0.0 < lt.fraction < 1.0 or lt.rewind_epoch < 0:
            raise TrainError(f"lottery needs rounds >= 1, 0 < fraction < 1 and rewind_epoch >= 0; "
                             f"got rounds={lt.rounds}, fraction={lt.fraction}, "
                             f"rewind_epoch={lt.rewind_epoch}")
        _choice("lottery.rewind_schedule", lt.rewind_schedule, ("continue", "restart"))
    for key in ("num_epochs", "batch_size", "log_every_steps", "eval_every_epochs",
                "checkpoint_every_epochs"):
        if config[key] <= 0:
            raise TrainError(f"{key} is {config[key]}; it must be a positive integer")
    if config.batch_size % jax.device_count():
        raise TrainError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{jax.device_count()} devices; choose a multiple")
    _choice("data.name", config.data.name, data_lib.NAMES)
    _choice("model.name", config.model.name, tuple(models.MODELS))
    _choice("model.activation", config.model.activation, nn.ACTIVATIONS)
    m = config.mask
    _choice("mask.method", m.method, MASK_METHODS)
    _choice("mask.distribution", m.distribution, distributions.NAMES)
    _choice("mask.scope", m.scope, pruning.SCOPES)
    try:
        distributions.check_sparsity(m.sparsity)
        if m.method in pruning.METHODS:
            pruning.finders.check_structure(m.structure, m.sparsity, m.scope)
    except ValueError as e:
        raise TrainError(f"mask.{e}") from None
    if m.method == "file" and not m.file:
        raise TrainError("mask.method is 'file' but mask.file is empty; pass "
                         "--config.mask.file=PATH.npz (made by sparsejax.masks.save) or a PyTorch .pt")
    d = config.dst
    _choice("dst.method", d.method, dst.METHODS)
    _choice("dst.drop_schedule", d.drop_schedule, timing.DROP_SCHEDULES)
    t = config.tost
    _choice("tost.ghost_skip", t.ghost_skip, ("", *nn.GHOST_KINDS))
    _choice("tost.alpha_shape", t.alpha_shape, schedules.ALPHA_SHAPES)
    _choice("tost.beta_shape", t.beta_shape, schedules.BETA_SHAPES)
    _choice("tost.removal", t.removal, schedules.REMOVALS)
    if m.samples < 0:
        raise TrainError(f"mask.samples is {m.samples}; give the number of examples SNIP/GraSP "
                         "score, or 0 for 10 per class (Synaptic-Flow)")
    if config.model.activation == "pswish" and t.ghost_skip and not t.ghost_swish:
        raise TrainError("model.activation is 'pswish' with ghost skips but tost.ghost_swish is "
                         "off, so its β would jump to ReLU at removal; set tost.ghost_swish=True "
                         "(β scheduled to ReLU) or model.activation=swish (kept after removal)")
    if not 0 <= config.init.start_epoch < config.num_epochs:
        raise TrainError(f"init.start_epoch is {config.init.start_epoch}; it must lie in "
                         f"[0, num_epochs={config.num_epochs})")
    if config.init.start_epoch and config.dst.method != "static":
        raise TrainError("init.start_epoch > 0 (rewinding) works with static masks only; set "
                         "dst.method=static or init.start_epoch=0")
    r = config.recipe
    if r.lrsi and (r.lrsi_iterations < 1 or not r.lrsi_learning_rate > 0):
        raise TrainError(f"recipe.lrsi_iterations is {r.lrsi_iterations} and "
                         f"recipe.lrsi_learning_rate {r.lrsi_learning_rate}; they must be >= 1 "
                         "and > 0")
    try:  # what only the constructors know: a model's ghost skips, a rule's options, the schedules
        model(config, 10)
        plan = plan_lib.make(config, steps_per_epoch=1)
        ghost_inputs(config, plan)
        optimizer(config, plan, masks=None)  # the masks are needed only by its init
        losses.check_smoothing(t.label_smoothing, t.label_smoothing_variant)
        if r.distill.teacher:
            losses.check_distillation(r.distill.temperature, r.distill.weight)
    except ValueError as e:
        raise TrainError(" ".join(str(e).split())) from None
    lens_names(config)
    a = config.analysis
    if any(not 0 <= e <= config.num_epochs for e in a.epochs):
        raise TrainError(f"analysis.epochs {tuple(a.epochs)} has an epoch outside the run "
                         f"[0, {config.num_epochs}]")
    if min(a.batches, a.hessian_iterations, a.trace_samples, a.landscape_steps - 1,
           a.landscape_batches) < 1 \
            or not a.landscape_span > 0:
        raise TrainError("analysis: batches, hessian_iterations, trace_samples and "
                         "landscape_batches must be >= 1, "
                         "landscape_steps >= 2 and landscape_span > 0")
    if r.distill.teacher:  # the file must fit the teacher model at this dataset's class count
        teacher(config, data_lib.NUM_CLASSES[config.data.name], data_lib.CHANNELS[config.data.name])
    if config.mode == "compare":  # every variant, before the first one trains
        for name in config.compare:
            check(variant(config, name))


def variant(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """``config`` with the overrides of ``config.compare[name]``, as a plain train run."""
    c = ml_collections.ConfigDict(config.to_dict())
    del c["compare"]
    c.update_from_flattened_dict(traverse_util.flatten_dict(config.compare[name].to_dict(), sep="."))
    c.name, c.mode = f"{config.name}/{name}", "train"
    return c


def init_inputs(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The ghost inputs ``model.init`` needs (ghost skips are created only when α is given)."""
    return {"alpha": 1.0} if config.tost.ghost_skip else {}


def model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
    """The network of the ghost phase (or the plain one if the run has no ghosts)."""
    activation = "pswish" if config.tost.ghost_swish else config.model.activation
    return models.build(config.model.name, num_classes, activation=activation,
                        ghost_skip=config.tost.ghost_skip or None)


def lens_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The lenses of ``config.analysis.lenses`` (comma-separated), checked."""
    names = tuple(n.strip() for n in config.analysis.lenses.split(",") if n.strip())
    try:
        return lenses.check(names)
    except ValueError as e:
        raise TrainError(f"analysis.lenses: {e}") from None


def lens_settings(config: ml_collections.ConfigDict) -> lenses.Settings:
    a = config.analysis
    return lenses.Settings(hessian_iterations=a.hessian_iterations, trace_samples=a.trace_samples,
                           landscape_steps=a.landscape_steps, landscape_span=a.landscape_span,
                           landscape_batches=a.landscape_batches)


def plain_model(model: Any) -> Any:
    """The network after the ghost phase; the one masks are found on (`initial_masks`)."""
    return models.remove_ghosts(model, {})[0]


def teacher(config: ml_collections.ConfigDict, num_classes: int, channels: int
            ) -> tuple[Any, dict]:
    """The frozen teacher of ``recipe.distill``: its plain model (``teacher_model``, or this run's
    model) and its variables from the ``teacher`` file (a ``final_variables.npz``)."""
    kd = config.recipe.distill
    try:
        net = models.build(kd.teacher_model or config.model.name, num_classes)
    except ValueError as e:
        raise TrainError(f"recipe.distill.teacher_model: {e}") from None
    like = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 8, 8, channels)),
                                           train=False))
    return net, workdir_lib.load_variables(kd.teacher, like, flag="recipe.distill.teacher",
                                           complete=True)


def loss(config: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """``(logits, labels, teacher_logits) -> per-example loss``: label-smoothed cross-entropy, or
    distillation from the teacher's logits when ``recipe.distill.teacher`` is set."""
    t, kd = config.tost, config.recipe.distill

    def per_example(logits, labels, teacher_logits=None):
        if teacher_logits is None:
            return losses.cross_entropy(logits, labels, t.label_smoothing,
                                        t.label_smoothing_variant)
        return losses.distillation(logits, teacher_logits, labels, temperature=kd.temperature,
                                   weight=kd.weight, smoothing=t.label_smoothing,
                                   variant=t.label_smoothing_variant)

    return per_example


def learning_rate(config: ml_collections.ConfigDict, plan: Plan) -> optax.Schedule:
    """Piecewise-constant lr (× decay_factor at each boundary) after an optional linear warm-up."""
    o, warmup = config.optimizer, plan.warmup_steps
    decay = optax.piecewise_constant_schedule(
        o.learning_rate, {b - warmup: o.decay_factor for b in plan.lr_boundaries if b > warmup})
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup), decay],
                                [warmup])


def optimizer(config: ml_collections.ConfigDict, plan: Plan, masks: Any
              ) -> optax.GradientTransformation:
    """SGD with momentum and weight decay inside ``sparse_training`` (masks live in its state).

    ``masks`` are used only by ``init``; the same transformation updates the ghosted and the plain
    params, since its state is keyed by parameter path and loses its ghost entries with them.
    """
    o, d = config.optimizer, config.dst
    schedule = learning_rate(config, plan)

    def lr(count):  # the inner optimizer counts from 0, the run from plan.start_step
        return schedule(count + plan.start_step)

    inner = optax.chain(optax.add_decayed_weights(o.weight_decay), optax.sgd(lr, o.momentum))
    return dst.sparse_training(
        inner, masks, method=d.method, update_every=plan.dst_every, start_step=plan.dst_start,
        end_step=plan.dst_end, drop_fraction=d.drop_fraction, drop_schedule=d.drop_schedule,
        seed=config.seed, structure=config.mask.structure, **rule_options(config))


def rule_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``dst.options``; GMP's ``final_sparsity`` defaults to ``mask.sparsity`` (its masks start dense)."""
    options = dict(config.dst.options)
    if config.dst.method == "gmp":
        options.setdefault("final_sparsity", config.mask.sparsity)
    return options


def ghost_inputs(config: ml_collections.ConfigDict, plan: Plan
                 ) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """``step -> {"alpha": α(step), "beta": β(step)}`` (traced) for the model's ghost inputs."""
    t = config.tost
    alpha = schedules.ghost_alpha(plan.ghost_end, t.alpha_shape) if t.ghost_skip else None
    beta = (schedules.ghost_beta(t.beta0, t.beta_max if plan.ghost_end else t.beta0,
                                 plan.ghost_end, t.beta_shape) if t.ghost_swish else None)

    def inputs(step):
        return {name: f(step) for name, f in (("alpha", alpha), ("beta", beta)) if f is not None}

    return inputs


def overlay(tree: Any, values: Any) -> Any:
    """``tree`` with the leaves that ``values`` has at the same paths replaced by those."""
    return paths.unflatten(tree, {**paths.flatten(tree), **paths.flatten(values)})


def initial_masks(config: ml_collections.ConfigDict, params: Any, apply_fn: Callable,
                  train_batches: Callable[[int], list[dict]], input_shape: tuple[int, ...],
                  num_classes: int) -> Any:
    """The masks the run starts from, by ``config.mask.method``, for the *plain* network's ``params``
    and ``apply_fn`` (ReLU, no ghost paths; `plain_model`), so a seed gives the same mask with and
    without the ToST tweaks. SNIP and GraSP score ``mask.samples`` training examples (0: 10 per
    class, as Synaptic-Flow), in batches of the run's per-host batch size."""
    try:
        return _initial_masks(config.mask, config.seed, params, apply_fn, train_batches,
                              input_shape, num_classes)
    except UserError:
        raise
    except FileNotFoundError:
        raise TrainError(f"mask file {config.mask.file!r} does not exist; check "
                         "--config.mask.file") from None
    except ValueError as e:  # densities the model cannot take, a mask file that does not fit, ...
        raise TrainError(f"masks: {' '.join(str(e).split())}") from None


def _initial_masks(m: ml_collections.ConfigDict, seed: int, params: Any, apply_fn: Callable,
                   train_batches: Callable[[int], list[dict]], input_shape: tuple[int, ...],
                   num_classes: int) -> Any:
    if m.method == "dense":
        return masks_lib.ones_like(params)
    if m.method == "file":
        if pathlib.Path(m.file).suffix in pruning.TORCH_SUFFIXES:
            loaded, report = pruning.load_torch_masks(m.file, params)
            if jax.process_index() == 0:
                print(f"mask import from {m.file}: {report}")
            return loaded
        return masks_lib.load(m.file, params)
    densities = distributions.by_name(m.distribution)(params, m.sparsity, dense=m.dense_layers)
    rng = jax.random.key(seed + 1)
    if m.structure and jax.process_index() == 0:
        print(f"N:M {m.structure}: left dense (reduction size not a multiple of M): "
              f"{masks_lib.n_of_m_unfit(params, masks_lib.parse_structure(m.structure)[1])}")
    if m.method == "random" and not m.structure:
        return masks_lib.random(rng, params, densities)
    batches = None
    if m.method in ("snip", "grasp"):
        batches, left = [], m.samples or 10 * num_classes
        for b in train_batches(left):
            batches.append({"x": b["image"][:left], "y": b["label"][:left]})
            left -= len(batches[-1]["y"])
    return pruning.find_mask(m.method, params, m.sparsity, apply_fn=apply_fn, batches=batches,
                             input_shape=(1, *input_shape), scope=m.scope,
                             densities=densities if m.scope == "layer" else None, rng=rng,
                             structure=m.structure)
