"""The base config: the papers' CIFAR recipe (ALGORITHMS.md, "Training protocol").

Every other config starts from ``get_config()`` here and overrides what it changes. Values can be
overridden on the command line: ``--config=configs/x.py:sparsity=0.95,runlocal`` (the file's own
arguments, parsed by ``parse_arg``) and ``--config.mask.sparsity=0.95`` (any key; the config is locked,
so a misspelt key fails at once). Every config file takes ``runlocal``, which shrinks the run to the
embedded digits data and a ResNet-20 for a laptop (`runlocal`).
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults):
    """Parses ``"a=1,b=x,flag"`` into a ConfigDict typed like ``defaults`` (a bare name means True).

    Raises ``ValueError`` naming the argument for an unknown name, a bare name that is not a switch,
    or a value of the wrong type.
    """
    result = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, has_value, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            if not has_value:
                value = "true"
            if value.lower() not in BOOLEANS:
                raise ValueError(f"config argument {key} is a switch; give {key} or "
                                 f"{key}=true|false, not {value!r}")
            result[key] = BOOLEANS[value.lower()]
        elif not has_value or not value:
            raise ValueError(f"config argument {key} needs a value: {key}=...")
        elif default is None:
            result[key] = value
        else:
            try:
                result[key] = type(default)(value)
            except ValueError:
                raise ValueError(f"config argument {key}={value!r} is not a "
                                 f"{type(default).__name__}") from None
    return result


BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def runlocal(c: ml_collections.ConfigDict, epochs: int = 6) -> ml_collections.ConfigDict:
    """Shrinks ``c`` for a laptop: the embedded digits data, a ResNet-20, ``epochs`` epochs, with the
    lr decays (and warm-up) at the same fractions of training as in ``c``."""
    scale = epochs / c.num_epochs
    c.data.name, c.model.name, c.num_epochs = "digits", "resnet20", epochs
    decays = sorted({min(max(round(e * scale), 1), epochs) for e in c.optimizer.decay_epochs})
    c.optimizer.decay_epochs = tuple(decays)
    c.optimizer.warmup_epochs = min(c.optimizer.warmup_epochs, 1)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, runlocal=False)
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.mode = "train"  # train (one run) | compare (the runs of c.compare) | lottery (IMP rounds)
    c.seed = 0
    c.num_epochs = 180
    c.batch_size = 128  # global batch, split over all devices and hosts

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"  # digits | cifar10 | cifar100 | tiny_imagenet
    c.data.data_dir = ""  # tfds data dir ('' = tfds default)
    c.data.manual_dir = ""  # where tiny-imagenet-200.zip lies

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.activation = "relu"  # relu | swish | pswish | mish

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 2e-4
    c.optimizer.decay_epochs = (90, 135)  # lr × decay_factor at each of these epochs
    c.optimizer.decay_factor = 0.1
    c.optimizer.warmup_epochs = 0  # linear warm-up from 0

    c.mask = ml_collections.ConfigDict()
    c.mask.method = "random"  # dense | file | random | magnitude | snip | grasp | synflow
    c.mask.sparsity = 0.9
    c.mask.distribution = "erk"  # uniform | er | erk (random masks, scope='layer' finders)
    c.mask.scope = "global"  # finders: global | layer
    c.mask.structure = ""  # N:M masks, e.g. "2:4" (then sparsity 1 - n/m; dst static|set|rigl)
    c.mask.dense_layers = ()  # e.g. ("first", "last")
    c.mask.file = ""  # .npz written by sparsejax.masks.save (mask.method = file)
    c.mask.samples = 0  # snip / grasp: training examples scored; 0 = 10 × classes (Synaptic-Flow)

    c.dst = ml_collections.ConfigDict()
    c.dst.method = "static"  # static | set | rigl | dsr | ggr
    c.dst.update_every = 100  # steps (0 = once per epoch)
    c.dst.start_epoch = 0
    c.dst.end_fraction = 0.75  # mask updates stop at this fraction of training
    c.dst.drop_fraction = 0.3
    c.dst.drop_schedule = "cosine"  # constant | cosine | exponential
    c.dst.options = ml_collections.ConfigDict()  # the rule's own, e.g. GGR's grow_gradient_fraction

    c.tost = ml_collections.ConfigDict()
    c.tost.ghost_skip = ""  # '' (off) | conv1x1 (released code, the tost configs' choice) | identity
    c.tost.ghost_swish = False  # PSwish with β rising to ReLU
    c.tost.alpha_shape = "linear"  # linear | cosine | step | late_linear (see sparsejax.schedules)
    c.tost.beta0 = 1.0
    c.tost.beta_max = 10.0
    c.tost.beta_shape = "linear"  # linear | exponential | late_linear
    c.tost.removal = "first_decay"  # first_decay | after_first_decay | never
    c.tost.label_smoothing = 0.0  # the paper uses 0.1
    c.tost.label_smoothing_variant = "paper"  # paper | released
    c.tost.bn_reestimate_batches = 0  # >0: BatchNorm statistics re-estimated on N train batches
                                      # right after the switch to the plain network

    c.recipe = ml_collections.ConfigDict()
    c.recipe.lrsi = False  # layer-wise re-scaled init (sparsejax.recipe.lrsi) before step 0
    c.recipe.lrsi_iterations = 180
    c.recipe.lrsi_learning_rate = 1e-2
    c.recipe.distill = ml_collections.ConfigDict()
    c.recipe.distill.teacher = ""  # final_variables.npz of a trained (dense) run; '' = off
    c.recipe.distill.teacher_model = ""  # its model name ('' = model.name)
    c.recipe.distill.temperature = 4.0  # τ and w: not given by paper 002 (Hinton et al.'s range)
    c.recipe.distill.weight = 0.5

    c.init = ml_collections.ConfigDict()
    c.init.variables_file = ""  # start from these variables instead of a fresh init: an .npz of
                                # save_variables, or a PyTorch state_dict (.pt, .pth, .tar) read by
                                # pruning.load_torch_variables (paired by name, pruning.torch_names)
    c.init.save_at_epoch = -1  # write the variables at this epoch to workdir/rewind.npz (-1: never)
    c.init.start_epoch = 0  # >0: step 0 is this epoch's first step (lr schedule and data order
                            # continue from there: rewinding as open_lth); static masks only

    c.analysis = ml_collections.ConfigDict()  # the papers' lenses during training (sparsejax.analysis)
    c.analysis.lenses = ""  # comma-separated: activations,hessian,trace,gradient_flow,landscape,structure
    c.analysis.epochs = ()  # after these epochs (0: before training); results in DIR/analysis/
    c.analysis.batches = 10  # training batches the lenses average over (paper 002: 10)
    c.analysis.hessian_iterations = 100
    c.analysis.trace_samples = 20
    c.analysis.landscape_steps = 21  # per axis: 21 points in 1-D, 21 × 21 in 2-D
    c.analysis.landscape_span = 1.0
    c.analysis.landscape_batches = 2  # the surfaces' loss is the mean over this many of the batches

    c.eval_every_epochs = 1
    c.checkpoint_every_epochs = 1
    c.log_every_steps = 50
    c.keep_checkpoints = 2
    c.progress = True  # progress bar with steps/s and ETA
    return runlocal(c) if args.runlocal else c
