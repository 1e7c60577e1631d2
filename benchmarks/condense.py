"""Condensed inference (issue 12): the masked network against `analysis.structure.condense` of it.

For each model (CIFAR ResNet-20 and VGG-16, 10 classes, 32×32 inputs), mask kind and sparsity
(90/95/98/99 %), one run compares the eval-mode forward pass (jitted, CPU) of
- the masked network: the zoo model with pruned weights set to 0 (dense convs, the baseline), and
- its condensed form: `structure.condense`, with the removable channels cut out.
Masks: random with ERK densities (`masks.random` + `distributions.erk`), global magnitude
(`pruning.find_mask("magnitude")`) and global SynFlow (`pruning.find_mask("synflow")`, 100 rounds),
all at initialisation. Random masks rarely empty a whole channel at 90 %; magnitude and SynFlow
concentrate the pruning and empty more (paper 004, Table 4, counts empty neurons of trained nets).
The variables are the init ones (BN mean 0, β 0): every channel with no incoming weight is then
exactly 0 after BN and ReLU, so every empty channel is removable, the best case; in a trained
network an empty channel with a positive BN constant that is still read stays.

The structure table is noise-free: empty neurons (`structure.report`, all prunable tensors),
kernel weights (active in the mask; dense size of the masked and of the condensed kernels),
multiply-adds per image (`structure.flops`: dense and sparse of the masked network, dense of the
condensed one) and the largest logit difference between the two networks on the timed batch.
Timing: each forward is compiled and run once, then every round runs both networks once in shuffled
order; the condensed/masked time ratio is taken per round (load drift cancels) and the table gives
its median and quartiles with the median times, next to the noise-free ratio of the FLOPs of the
two compiled programs (XLA cost analysis, which counts BN, activations and adds too). 2 CPU cores
shared with other users: the load average (1 min) is printed next to every figure.

Run from the repository root: ``python -m benchmarks.condense`` (``--rounds 3`` for a quick look).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.results import write_section
from sparsejax import distributions, masks as masks_lib, paths, pruning
from sparsejax.analysis import structure
from sparsejax.models import build

MODELS = ("resnet20", "vgg16")
SPARSITIES = (0.9, 0.95, 0.98, 0.99)
MASK_KINDS = ("random ERK", "magnitude", "SynFlow")
BATCHES = (1, 128)
SIZE, CLASSES = 32, 10


def load() -> str:
    """The 1-minute load average, as printed next to each figure."""
    return f"{os.getloadavg()[0]:.1f}"


def find_masks(kind: str, apply_fn: Callable, params: Any, sparsity: float) -> Any:
    if kind == "random ERK":
        return masks_lib.random(jax.random.key(1), params, distributions.erk(params, sparsity))
    if kind == "magnitude":
        return pruning.find_mask("magnitude", params, sparsity)
    return pruning.find_mask("synflow", params, sparsity, apply_fn=apply_fn,
                             input_shape=(1, SIZE, SIZE, 3))


def kernel_sizes(params: Any) -> int:
    return sum(int(np.size(w)) for w in paths.prunable(params).values())


def time_rounds(runs: dict[str, Callable[[], jax.Array]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each run, one call per run per round, in shuffled order."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = random.Random(0)
    for _ in range(rounds):
        for name in order.sample(list(runs), len(runs)):
            start = time.perf_counter()
            jax.block_until_ready(runs[name]())
            times[name].append(time.perf_counter() - start)
    return times


def one_model(name: str, rounds: int, structure_rows: list[str], timing_rows: list[str]) -> None:
    model = build(name, CLASSES)
    images = {b: jax.random.normal(jax.random.key(b), (b, SIZE, SIZE, 3)) for b in BATCHES}
    variables = jax.jit(model.init)(jax.random.key(0), images[1])
    stats = variables["batch_stats"]
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x)
    masked_programs = {b: jax.jit(model.apply).lower(variables, x).compile()
                       for b, x in images.items()}  # the params are arguments: one per batch size
    for kind in MASK_KINDS:
        for sparsity in SPARSITIES:
            masks = find_masks(kind, apply_fn, variables["params"], sparsity)
            masked = {"params": masks_lib.apply(variables["params"], masks), "batch_stats": stats}
            smaller, small_variables = structure.condense(model, variables, masks)
            small_masks = jax.tree.map(lambda w: w != 0, small_variables["params"])
            small_programs = {b: jax.jit(smaller.apply).lower(small_variables, x).compile()
                              for b, x in images.items()}
            total = structure.report(variables["params"], masks)["total"]
            macs = structure.flops(model, variables, masks, (SIZE, SIZE, 3))
            small_macs = structure.flops(smaller, small_variables, small_masks, (SIZE, SIZE, 3))
            b = BATCHES[-1]
            difference = float(jnp.abs(masked_programs[b](masked, images[b])
                                       - small_programs[b](small_variables, images[b])).max())
            case = f"{name} | {kind} | {sparsity:.0%}"
            row = (f"| {case} | {total['empty_neuron_fraction']:.1%} | {total['active']:,} | "
                   f"{kernel_sizes(variables['params']):,} | "
                   f"{kernel_sizes(small_variables['params']):,} | {macs['dense'] / 1e6:.1f} | "
                   f"{macs['sparse'] / 1e6:.2f} | {small_macs['dense'] / 1e6:.2f} | "
                   f"{difference:.1e} | {load()} |")
            print(row, flush=True)
            structure_rows.append(row)
            for batch, x in images.items():
                runs = {"masked": lambda x=x, b=batch: masked_programs[b](masked, x),
                        "condensed": lambda x=x, b=batch: small_programs[b](small_variables, x)}
                flops_ratio = (small_programs[batch].cost_analysis()["flops"]
                               / masked_programs[batch].cost_analysis()["flops"])
                for run in runs.values():
                    jax.block_until_ready(run())  # compile and warm up
                times = time_rounds(runs, rounds)
                ratios = [c / m for c, m in zip(times["condensed"], times["masked"])]
                low, _, high = statistics.quantiles(ratios * 2 if len(ratios) == 1 else ratios,
                                                    n=4, method="inclusive")
                row = (f"| {case} | {batch} | {1e3 * statistics.median(times['masked']):.2f} | "
                       f"{1e3 * statistics.median(times['condensed']):.2f} | "
                       f"{statistics.median(ratios):.3f}× | {low:.3f}–{high:.3f} | "
                       f"{flops_ratio:.3f}× | {load()} |")
                print(row, flush=True)
                timing_rows.append(row)


def paper_scale() -> str:
    """Dense multiply-adds of the two networks paper 004 compares (CIFAR-100, one 32×32 image)."""
    counts = {}
    for name in ("resnet18", "mobilenet_v2"):
        model = build(name, 100)
        x = jnp.zeros((1, SIZE, SIZE, 3))
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
        everything = jax.tree.map(lambda leaf: np.ones(leaf.shape, bool), shapes["params"])
        counts[name] = structure.flops(model, shapes, everything, (SIZE, SIZE, 3))["dense"] / 1e6
    return (f"For scale (`structure.flops`, CIFAR-100, dense): ResNet-18 {counts['resnet18']:.1f} "
            f"M and MobileNetV2 {counts['mobilenet_v2']:.1f} M multiply-adds per image. Paper 004 "
            "quotes 80 MFLOPs for a 97 % sparse ResNet-18 against 119 MFLOPs for the dense "
            "MobileNetv2 on CIFAR-100, without saying how it counts.")


def run(models: tuple[str, ...], rounds: int) -> str:
    load_before = load()
    start = time.perf_counter()
    structure_rows = ["| model | masks | sparsity | empty neurons | active weights | kernel "
                      "weights, masked | kernel weights, condensed | MMACs dense | MMACs "
                      "sparse | MMACs condensed | max abs Δlogits | load |",
                      "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
                      "---: | ---: |"]
    timing_rows = ["| model | masks | sparsity | batch | masked ms | condensed ms | time ratio "
                   "condensed / masked | quartiles | XLA FLOPs ratio | load |",
                   "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for name in models:
        one_model(name, rounds, structure_rows, timing_rows)
    setup = (f"{', '.join(models)} (CIFAR, {CLASSES} classes) at {SIZE}×{SIZE}, eval mode, jitted, "
             f"CPU; masks at initialisation; {rounds} paired rounds per batch size. Load average "
             f"(1 min) {load_before} at the start, {load()} at the end, on {os.cpu_count()} cores; "
             f"total {time.perf_counter() - start:.0f} s.")
    return "\n\n".join([setup, "\n".join(structure_rows), "\n".join(timing_rows),
                        paper_scale()])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=11, help="paired timing rounds per case")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    body = run(tuple(args.models), args.rounds)
    print(body)
    if not args.no_write:
        write_section("Condensed inference (issue 12)", body)
