"""What a full-scale run of each paper spec (configs/paper/) costs, from FLOPs counted by XLA.

``python -m benchmarks.paper_cost`` prints Markdown tables, also written to ``benchmarks/paper_cost.md``.
Nothing is trained or compiled: every sweep point is built as ``launch.sweep`` builds it, IMP rounds
as ``sparsejax.lottery`` runs them, and each (model, dataset) is lowered once for XLA's HLO cost
analysis. A run costs (num_epochs − init.start_epoch) × (train examples // batch) training steps of a
forward+backward (loss and gradient w.r.t. the params; dense FLOPs, since a GPU does not skip the
zeros of an unstructured mask), plus a teacher forward per example with distillation, plus LRsI's
iterations (``sparsejax.recipe.lrsi.step`` lowered; XLA counts the dearer branch of its cond, the
second-order constraint step: an upper bound), plus one validation forward pass per epoch. Left out:
ToST's ghost paths (a 1×1 conv per 3×3 conv, first half of training), the optimizer update, the mask
finders, DST's rewiring gradients and the test passes (run only when validation improves).
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

from configs.paper import ggr, lottery, tost
from launch import sweep
from sparsejax import files, lottery as imp, models
from sparsejax.data.catalog import NUM_CLASSES
from sparsejax.recipe import losses, lrsi

# Assumption: an NVIDIA A100 sustains half of its 156 TFLOP/s TF32 tensor-core peak (the training is
# float32, which XLA runs as TF32 on an A100) on these small-image CNNs; small convolutions at batch
# 128, BatchNorm and the input pipeline make real runs slower, so the hours are a lower bound.
A100_PEAK_FLOPS = 156e12
UTILIZATION = 0.5
RATE = A100_PEAK_FLOPS * UTILIZATION  # ≈ 78 TFLOP/s sustained
BATCH = 128  # the lowered batch; every paper config trains with batch 128
# The 9:1 train/validation split (sparsejax/data/splits.py): CIFAR 50,000 → 45,000 + 5,000,
# TinyImageNet 100,000 → 90,000 + 10,000 (its test set is the official val split).
TRAIN = {"cifar10": 45_000, "cifar100": 45_000, "tiny_imagenet": 90_000}
VALIDATION = {"cifar10": 5_000, "cifar100": 5_000, "tiny_imagenet": 10_000}
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "tiny_imagenet": 64}
PAPERS = (("paper 000 (ToST)", tost), ("paper 002 (lottery)", lottery), ("paper 004 (GGR)", ggr))
EXTRA_ARGS = {"fig9": ",teacher=teacher/final_variables.npz"}  # a dummy path: never read here


def _lowered(kind: str, name: str, dataset: str):
    """``kind`` on a batch of ``BATCH``, lowered: "forward" (eval mode), "train" (the loss and its
    gradient w.r.t. the params, BatchNorm in train mode) or "lrsi" (one GradInit iteration)."""
    net, size = models.build(name, NUM_CLASSES[dataset]), IMAGE_SIZE[dataset]
    v = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    params = v["params"]
    stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v.get("batch_stats", {}))
    batch = {"image": jax.ShapeDtypeStruct((BATCH, size, size, 3), jnp.float32),
             "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32)}
    if kind == "forward":
        apply = lambda p, x: net.apply({"params": p, "batch_stats": stats}, x, train=False)  # noqa: E731
        return jax.jit(apply).lower(params, batch["image"])

    def loss(params, batch):
        logits, _ = net.apply({"params": params, "batch_stats": stats}, batch["image"], train=True,
                              mutable=["batch_stats"])
        return losses.cross_entropy(logits, batch["label"]).mean()

    if kind == "train":
        return jax.jit(jax.grad(loss)).lower(params, batch)
    n = len(jax.tree.leaves(params))
    masks = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bool_), params)
    settings = lrsi.Settings(*[jnp.float32(1.0)] * 4, min_scale=jnp.zeros((n,), jnp.float32))
    return lrsi.step.lower(lrsi.init_state(n), params, masks, jnp.ones((n,), bool), settings,
                           batch, batch, batch, loss_fn=loss, first_step="sgd")


MEASURED: dict[tuple[str, str, str], float] = {}  # (kind, model, dataset) -> FLOPs per example


def per_example(kind: str, name: str, dataset: str) -> float:
    """FLOPs of ``kind`` per example of its batch, measured once per (kind, model, dataset)."""
    key = (kind, name, dataset)
    if key not in MEASURED:
        MEASURED[key] = float(_lowered(*key).cost_analysis()["flops"]) / BATCH
    return MEASURED[key]


def run_cost(c) -> tuple[int, float]:
    """(epochs trained, FLOPs) of one training run with config ``c``."""
    name, data = c.model.name, c.data.name
    epochs = c.num_epochs - c.init.start_epoch
    examples = epochs * (TRAIN[data] // c.batch_size) * c.batch_size
    step = per_example("train", name, data)
    if c.recipe.distill.teacher:
        step += per_example("forward", c.recipe.distill.teacher_model or name, data)
    flops = examples * step + epochs * VALIDATION[data] * per_example("forward", name, data)
    if c.recipe.lrsi:  # an iteration on 3 batches of c.batch_size
        flops += c.recipe.lrsi_iterations * per_example("lrsi", name, data) * c.batch_size
    return epochs, flops


def point_runs(c) -> list:
    """The training runs of one point: IMP's rounds 0..R for a lottery point, else the point."""
    rounds = range(c.lottery.rounds + 1) if c.mode == "lottery" else ()
    return [imp._round_config(c, r, pathlib.Path("x")) for r in rounds] or [c]


def spec_row(module, spec: str) -> tuple[int, int, set, float]:
    arg = f"spec={spec}" + EXTRA_ARGS.get(spec, "")
    config, grid = module.get_config(arg), module.get_sweep(arg)
    points = sweep.points(config, grid, [], tuple(grid["seeds"]))
    seen: dict = {}  # the seed changes nothing here: cost each setting once
    trainings, epochs, total = 0, set(), 0.0
    for p in points:
        key = tuple(sorted((k, repr(v)) for k, v in p.overrides.items() if k != sweep.SEED))
        if key not in seen:
            seen[key] = [run_cost(c) for c in point_runs(sweep.point_config(config, p))]
        trainings += len(seen[key])
        epochs.update(e for e, _ in seen[key])
        total += sum(f for _, f in seen[key])
    return len(points), trainings, epochs, total


def main() -> None:
    rows = ["| paper / spec | points | trainings | epochs each | PFLOPs | A100-hours (at the stated rate) |",
            "|---|---:|---:|---|---:|---:|"]
    grand = 0.0
    for paper, module in PAPERS:
        for spec in module.SPECS:
            n, trainings, epochs, flops = spec_row(module, spec)
            grand += flops
            rows.append(f"| {paper} / {spec} | {n} | {trainings} | "
                        f"{'/'.join(map(str, sorted(epochs, reverse=True)))} | {flops / 1e15:,.0f} | "
                        f"{flops / RATE / 3600:,.0f} |")
    rows.append(f"| **all** | | | | {grand / 1e15:,.0f} | {grand / RATE / 3600:,.0f} |")
    models_rows = ["| model | dataset | forward GFLOP/example | fwd+bwd GFLOP/example | fwd+bwd / fwd "
                   "| LRsI iteration / training step |", "|---|---|---:|---:|---:|---:|"]
    for name, data in sorted({(n, d) for _, n, d in MEASURED}):
        fwd, both = (per_example(k, name, data) / 1e9 for k in ("forward", "train"))
        li = MEASURED.get(("lrsi", name, data))
        models_rows.append(f"| {name} | {data} | {fwd:.3f} | {both:.3f} | {both / fwd:.2f} | "
                           f"{'' if li is None else f'{li / 1e9 / both:.1f}×'} |")
    text = "\n".join([
        "# Full-scale cost of the paper specs", "",
        f"Assumed throughput: one NVIDIA A100 sustaining {UTILIZATION:.0%} of its "
        f"{A100_PEAK_FLOPS / 1e12:.0f} TFLOP/s TF32 peak = {RATE / 1e12:.0f} TFLOP/s. FLOPs from XLA's "
        "HLO cost analysis (dense: unstructured sparsity is not sped up; ghost paths, optimizer, mask "
        "finders left out; LRsI an upper bound; validation forward once per epoch; no multiply-adds "
        "counted on convolutions' zero padding). Seeds included. Command: `python -m "
        "benchmarks.paper_cost`.", "", *rows, "",
        "FLOPs per example measured (batch 128):", "", *models_rows, ""])
    print(text)
    files.write_atomic(pathlib.Path(__file__).with_name("paper_cost.md"), text)


if __name__ == "__main__":
    main()
