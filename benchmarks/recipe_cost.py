"""What the recipe's extras cost: LRsI before step 0, and a distillation step vs a plain step.

Run from the repository root: ``python -m benchmarks.recipe_cost`` (writes the "Recipe cost
(issue 11)" section of ``benchmarks/RESULTS.md``). ResNet-20 with a 90% ERK random mask, batch 128 of
random 32×32×3 images (CIFAR's shapes), one CPU device; the machine's load average is printed next to
every figure, since a loaded machine slows everything and hides fixed costs.

- plain step: the loop's jitted, donated ``train_step`` (static mask, label smoothing 0.1);
- distillation step: the same with a dense ResNet-20 teacher in eval mode inside the step
  (``recipe.distill``), timed in rounds alternating with the plain step (paired, same batch);
- LRsI: seconds per GradInit iteration after compilation (``--iterations`` of them, then scaled to the
  recipe's 180), compile time apart, and the total as a fraction of one CIFAR epoch (45,000 images,
  351 steps of 128) at the measured plain step time.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.results import write_section
from configs import base
from sparsejax import distributions, masks, models
from sparsejax.recipe import losses, lrsi
from sparsejax.train import build, plan as plan_lib, state as state_lib, step as step_lib

CIFAR_STEPS_PER_EPOCH = 45_000 // 128
LRSI_ITERATIONS = 180


def load() -> str:
    return "load " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(fn, n: int) -> float:
    """Seconds per call of ``n`` calls back to back, synced once."""
    t = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n


def sparse_resnet20():
    """A CIFAR-shaped batch of 128, the base config and its plan, a ResNet-20 with a 90% ERK random
    mask and its variables, and the loop's optimizer: what the benchmarks time."""
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(128, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 128), jnp.int32)}
    c = base.get_config()
    plan = plan_lib.make(c, CIFAR_STEPS_PER_EPOCH)
    model = models.build("resnet20", 10)
    variables = state_lib.init_variables(model, jax.random.key(0), (32, 32, 3))
    params = variables["params"]
    m = masks.random(jax.random.key(1), params, distributions.erk(params, 0.9))
    return batch, c, plan, model, variables, m, build.optimizer(c, plan, m)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=20, help="LRsI iterations timed")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds plain / distillation")
    args = parser.parse_args()

    batch, c, plan, model, variables, m, tx = sparse_resnet20()
    c.tost.label_smoothing = 0.1
    params = variables["params"]
    teacher_variables = state_lib.init_variables(model, jax.random.key(2), (32, 32, 3))

    def make_step(teacher: bool):
        kd = c.copy_and_resolve_references()
        kd.recipe.distill.teacher = "teacher.npz" if teacher else ""
        step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, inputs=None,
                                         loss=build.loss(kd),
                                         teacher_model=model if teacher else None),
                       donate_argnums=0)
        state = jax.device_put(jax.tree.map(np.array, state_lib.create(variables, m, tx)))
        holder = {"state": state}

        def run():
            holder["state"], metrics = step(holder["state"], batch,
                                            teacher_variables if teacher else None)
            return metrics
        jax.block_until_ready(run())  # compile
        return run

    plain, distill = make_step(False), make_step(True)
    pairs = []
    for _ in range(args.rounds):
        pairs.append((timed(plain, args.steps), timed(distill, args.steps)))
    plain_s = statistics.median(p for p, _ in pairs)
    ratios = [d / p for p, d in pairs]
    step_load = load()

    def loss_fn(p, b):  # BatchNorm in train mode, running statistics discarded
        logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, b["image"],
                                train=True, mutable=["batch_stats"])
        return losses.cross_entropy(logits, b["label"]).mean()

    halves = [jax.tree.map(lambda x, i=i: x[i * 64:(i + 1) * 64], batch) for i in range(2)]
    lrsi_batches = [halves[0], halves[1], halves[0]]
    t = time.perf_counter()
    lrsi.rescale(loss_fn, params, m, lrsi_batches, iterations=1)
    first = time.perf_counter() - t
    t = time.perf_counter()
    lrsi.rescale(loss_fn, params, m, lrsi_batches, iterations=args.iterations)
    per_iteration = (time.perf_counter() - t) / args.iterations
    lrsi_load = load()
    total = per_iteration * LRSI_ITERATIONS
    epoch = plain_s * CIFAR_STEPS_PER_EPOCH

    body = f"""
| measure | value | machine |
|---|---:|---|
| plain train step (median of {args.rounds} rounds of {args.steps}) | {plain_s * 1e3:.0f} ms | {step_load} |
| distillation step / plain step, paired rounds: median (min–max) | {statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | {step_load} |
| LRsI, one iteration after compilation (mean of {args.iterations}) | {per_iteration:.2f} s | {lrsi_load} |
| LRsI, first call of one iteration (compilation included) | {first:.1f} s | {lrsi_load} |
| LRsI, {LRSI_ITERATIONS} iterations | {total:.0f} s | |
| … as a fraction of one CIFAR epoch ({CIFAR_STEPS_PER_EPOCH} plain steps = {epoch:.0f} s) | {total / epoch:.2f} | |

The teacher is a dense ResNet-20 (the student's architecture); a larger teacher costs more. LRsI's
iteration is two or three forward/backward passes plus a Hessian-vector product (the gradient-norm
constraint) on two batch halves of 64; it runs once, before step 0.
"""
    print(body)
    write_section("Recipe cost (issue 11)", body)


if __name__ == "__main__":
    main()
