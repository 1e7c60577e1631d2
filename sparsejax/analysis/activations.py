"""Activation sparsity: the fraction of exactly-zero activations per site and per stage.

Paper 000 Table 1 (and paper 002 Table A1) report, for ResNet-18 on CIFAR-100, the percentage of
activations that are exactly zero in each of the four stages ("Layer 1" … "Layer 4"): 27–58 % with
ReLU, under 1.1 % with Swish or Mish. Smooth activations are almost never exactly zero, so the
fraction with ``|y| < eps`` is reported next to it.

Activation sites are the outputs of `sparsejax.nn.activate` calls, the only place the model zoo
applies its activation. They are found without touching the models: `activate` hands every output
to the observer of `sparsejax.nn.activations.observe_activations`, and `flax.linen.intercept_methods`
tracks which module's method is running, so each output is tagged with that module's path. A site
is named ``"<module path>/activation<i>"``: the i-th (from 0) `activate` call inside that module,
e.g. ``"activation0"`` (ResNet stem, in the root module), ``"layer1_0/activation1"`` (second
activation of the first block of stage 1), ``"block3/activation0"`` (MobileNet). The observer counts
zeros inside the traced (jitted) forward pass and the counts are returned from it.

A site's stage, by model (`stage_of`):

- `ResNet`: ``"stem"`` for the root module's activation, ``"layer{k}"`` for every site in a block
  ``layer{k}_{j}`` (paper 000 Table 1's "Layer k").
- `VGG`: ``"block{b}"``, the convs between two max-pools: the root module's i-th activation follows
  conv i, and b is 1 + the number of max-pools before conv i in ``model.layers``.
- `MobileNetV1`: ``"stem"``; block i is in ``"stage{s}"``, a new stage starting at every stride-2
  block of `V1_BLOCKS` (s = 1 … 5 on the CIFAR network: blocks 0 | 1–2 | 3–4 | 5–10 | 11–12).
- `MobileNetV2`: ``"stem"`` (root activation 0), ``"stage{s}"`` for block i in row s of
  `V2_STAGES` (s = 1 … 7), ``"head"`` (root activation 1, after the 1×1 conv to 1280 channels).
- Any other model: the name of the top-level submodule the site is in, or ``"root"``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.models.mobilenet import V1_BLOCKS, V2_STAGES, MobileNetV1, MobileNetV2
from sparsejax.models.resnet import ResNet
from sparsejax.models.vgg import POOL, VGG
from sparsejax.nn.activations import observe_activations

ModulePath = tuple[str, ...]
StageRule = Callable[[nn.Module, ModulePath, int], str]

DEFAULT_EPS = 1e-3


def _resnet_stage(model: ResNet, module_path: ModulePath, index: int) -> str:
    return module_path[0].split("_")[0] if module_path else "stem"


def _vgg_stage(model: VGG, module_path: ModulePath, index: int) -> str:
    blocks, block = [], 1  # blocks[i]: the block of conv i
    for layer in model.layers:
        if layer == POOL:
            block += 1
        else:
            blocks.append(block)
    if module_path or index >= len(blocks):
        raise ValueError(f"VGG activation {index} in module {'/'.join(module_path)!r} follows no conv "
                         f"of model.layers; use the VGG of sparsejax.models")
    return f"block{blocks[index]}"


def _block_index(module_path: ModulePath) -> int:
    return int(module_path[0].removeprefix("block"))


def _mobilenet_v1_stage(model: MobileNetV1, module_path: ModulePath, index: int) -> str:
    if not module_path:
        return "stem"
    blocks = V1_BLOCKS[:_block_index(module_path) + 1]
    return f"stage{1 + sum(strides == 2 for _, strides in blocks)}"


def _mobilenet_v2_stage(model: MobileNetV2, module_path: ModulePath, index: int) -> str:
    if not module_path:
        return "stem" if index == 0 else "head"
    ends = itertools.accumulate(blocks for _, _, blocks, _ in V2_STAGES)
    block = _block_index(module_path)
    return f"stage{1 + sum(end <= block for end in ends)}"


def _top_level_stage(model: nn.Module, module_path: ModulePath, index: int) -> str:
    return module_path[0] if module_path else "root"


_STAGE_RULES: tuple[tuple[type, StageRule], ...] = (
    (ResNet, _resnet_stage), (VGG, _vgg_stage), (MobileNetV1, _mobilenet_v1_stage),
    (MobileNetV2, _mobilenet_v2_stage))


def stage_of(model: nn.Module, module_path: ModulePath, index: int) -> str:
    """The stage of the ``index``-th activation inside the module at ``module_path`` of ``model``.

    ``module_path`` is a flax module path (``()`` for the root, ``("layer1_0",)``); the rules per
    model are in this module's docstring.
    """
    rule = next((rule for kind, rule in _STAGE_RULES if isinstance(model, kind)), _top_level_stage)
    return rule(model, module_path, index)


def _image(batch: Any) -> jax.Array:
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise ValueError(f"a batch has keys {sorted(batch)} but no 'image'; pass arrays or "
                             f"dicts with an 'image' array")
        batch = batch["image"]
    return jnp.asarray(batch)


class Site(NamedTuple):
    """One activation site of a traced forward pass; ``size`` = number of activation values."""

    name: str
    stage: str
    size: int


def _counting_forward(model: nn.Module, eps: float, apply_kwargs: Mapping[str, Any],
                      sites: list[Site]) -> Callable[[Any, jax.Array], list[tuple[jax.Array, jax.Array]]]:
    """``forward(variables, x)`` -> [(exact zeros, |y| < eps) per site]; tracing it refills ``sites``."""

    def forward(variables: Any, x: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        running: list[ModulePath] = []
        calls: dict[ModulePath, int] = {}
        counts: list[tuple[jax.Array, jax.Array]] = []
        sites.clear()

        def track(next_fun, args, kwargs, context):
            running.append(tuple(context.module.path))
            try:
                return next_fun(*args, **kwargs)
            finally:
                running.pop()

        def count(y: jax.Array) -> None:
            module_path = running[-1] if running else ()
            index = calls.get(module_path, 0)
            calls[module_path] = index + 1
            sites.append(Site("/".join((*module_path, f"activation{index}")),
                              stage_of(model, module_path, index), int(y.size)))
            counts.append((jnp.sum(y == 0), jnp.sum(jnp.abs(y) < eps)))

        with nn.intercept_methods(track), observe_activations(count):
            model.apply(variables, x, **apply_kwargs)
        return counts

    return forward


def activation_sites(model: nn.Module, variables: Any, x: Any, **apply_kwargs: Any) -> dict[str, str]:
    """The activation sites of ``model`` on input ``x``: {site name: stage}, in call order.

    Traces ``model.apply(variables, x, **apply_kwargs)`` abstractly (no compilation, no FLOPs):
    ``variables`` and ``x`` may be `jax.ShapeDtypeStruct` trees, e.g. from
    ``jax.eval_shape(model.init, rng, x)``.
    """
    sites: list[Site] = []
    jax.jit(_counting_forward(model, DEFAULT_EPS, apply_kwargs, sites)).trace(variables, x)
    return {site.name: site.stage for site in sites}


def _fractions(names: Sequence[str], zeros: np.ndarray, near: np.ndarray,
               sizes: np.ndarray) -> dict[str, dict[str, float | int]]:
    return {"zero": {n: float(z / s) for n, z, s in zip(names, zeros, sizes)},
            "near_zero": {n: float(c / s) for n, c, s in zip(names, near, sizes)},
            "count": {n: int(s) for n, s in zip(names, sizes)}}


def activation_sparsity(model: nn.Module, variables: Any, batches: Sequence[Any], *,
                        eps: float = DEFAULT_EPS, **apply_kwargs: Any) -> dict[str, Any]:
    """Fractions of exactly-zero and of near-zero (``|y| < eps``) activations (paper 000 Table 1).

    Runs ``model.apply(variables, image, **apply_kwargs)`` (jitted, once per input shape) on every
    batch: an (N, H, W, C) array or a dict with an ``"image"`` array. ``apply_kwargs`` are the
    model's call arguments, e.g. ``alpha=0.0, beta=jnp.inf`` (eval mode, ``train=False``, is the zoo
    models' default). Fractions are over all activations of all batches (batches weigh by their
    size). Returns::

        {"sites":  {"zero": {site: f}, "near_zero": {site: f}, "count": {site: n},
                    "stage": {site: stage}},
         "stages": {"zero": {stage: f}, "near_zero": {stage: f}, "count": {stage: n}},
         "eps": eps}

    with sites and stages in call order (names and stages: this module's docstring); ``count`` is
    the number of activation values seen, so a stage's fraction is the count-weighted mean of its
    sites'. ReLU zeros are also near zero (``near_zero >= zero``).
    """
    if isinstance(batches, (Mapping, np.ndarray, jax.Array)):
        raise ValueError(f"batches is a single batch ({type(batches).__name__}); pass a list of "
                         f"batches, e.g. [batch]")
    images = [_image(batch) for batch in batches]
    if not images:
        raise ValueError("batches is empty; pass a list of at least one batch")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps is {eps!r}; pass a finite eps > 0 (|y| < eps counts as near zero)")

    compiled: dict[tuple, tuple[list[Site], Callable]] = {}
    first: list[Site] | None = None
    for x in images:
        key = (x.shape, x.dtype)
        if key not in compiled:
            sites: list[Site] = []
            forward = _counting_forward(model, eps, apply_kwargs, sites)
            compiled[key] = sites, jax.jit(forward).trace(variables, x).lower().compile()
        sites, run = compiled[key]
        counts = np.asarray(jax.device_get(run(variables, x)), dtype=np.int64).reshape(-1, 2)
        if first is None:
            first = sites
            zeros, near, sizes = (np.zeros(len(sites), np.int64) for _ in range(3))
        elif [s.name for s in sites] != [s.name for s in first]:
            raise ValueError(f"a batch of shape {x.shape} gives other activation sites than the "
                             f"first batch; pass batches the model treats alike")
        zeros += counts[:, 0]
        near += counts[:, 1]
        sizes += np.array([site.size for site in sites], np.int64)
    if not first:
        raise ValueError(f"{type(model).__name__} makes no sparsejax.nn.activate call; activation "
                         f"sparsity needs a model that applies its activations with it")

    names, stages = [site.name for site in first], [site.stage for site in first]
    stage_names = list(dict.fromkeys(stages))
    members = [np.array([s == stage for s in stages]) for stage in stage_names]
    report_sites = _fractions(names, zeros, near, sizes)
    report_sites["stage"] = dict(zip(names, stages))
    report_stages = _fractions(stage_names, np.array([zeros[m].sum() for m in members]),
                               np.array([near[m].sum() for m in members]),
                               np.array([sizes[m].sum() for m in members]))
    return {"sites": report_sites, "stages": report_stages, "eps": float(eps)}
