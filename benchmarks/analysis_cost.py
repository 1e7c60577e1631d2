"""What one look through the Hessian lens costs, in train steps.

Run from the repository root: ``python -m benchmarks.analysis_cost`` (writes the "Eigenvalue cost
(issue 12)" section of ``benchmarks/RESULTS.md``). ResNet-20 with a 90% ERK random mask, batch 128 of
random 32×32×3 images (CIFAR's shapes), one CPU device, eval-mode loss; the load average is printed
next to the figures.

- train step: the loop's jitted, donated ``train_step`` (static mask), back to back;
- one power iteration: ``sparsejax.analysis.hessian.top_eigenvalue`` with ``iterations`` fixed and
  ``tol=0`` on one batch, after a first call that compiles, per iteration (one Hessian-vector product,
  forward-over-reverse, plus the projections and the Rayleigh quotient);
- one eigenvalue estimate as the papers take it: 100 iterations at most (PyHessian), each over 10
  batches (paper 002), i.e. up to 1,000 Hessian-vector products, in train steps.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np
import optax

from benchmarks.recipe_cost import load, sparse_resnet20, timed
from benchmarks.results import write_section
from sparsejax.analysis import hessian
from sparsejax.train import build, state as state_lib, step as step_lib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=10, help="power iterations timed")
    parser.add_argument("--steps", type=int, default=10, help="train steps timed")
    args = parser.parse_args()

    batch, c, plan, model, variables, m, tx = sparse_resnet20()
    params = variables["params"]
    step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, inputs=None,
                                     loss=build.loss(c)), donate_argnums=0)
    holder = {"state": jax.device_put(jax.tree.map(np.array, state_lib.create(variables, m, tx)))}

    def train():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics

    jax.block_until_ready(train())
    step_s = timed(train, args.steps)
    step_load = load()

    def loss_fn(p, b):
        logits = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, b["image"],
                             train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean()

    def estimate(iterations):
        return hessian.top_eigenvalue(loss_fn, params, m, [batch], iterations=iterations, tol=0.0,
                                      rng=jax.random.key(2))

    t = time.perf_counter()
    estimate(1)
    first = time.perf_counter() - t
    t = time.perf_counter()
    estimate(args.iterations)
    iteration_s = (time.perf_counter() - t) / args.iterations
    hvp_load = load()
    paper = 100 * 10 * iteration_s

    body = f"""
| measure | value | machine |
|---|---:|---|
| train step (mean of {args.steps}, back to back) | {step_s * 1e3:.0f} ms | {step_load} |
| one power iteration on one batch (mean of {args.iterations}) | {iteration_s * 1e3:.0f} ms = {iteration_s / step_s:.2f} train steps | {hvp_load} |
| first call (compiles the Hessian-vector product) | {first:.1f} s | {hvp_load} |
| one eigenvalue estimate, 100 iterations × 10 batches (at most) | {paper:.0f} s = {paper / step_s:.0f} train steps ({paper / (step_s * 351):.1f} CIFAR epochs) | |

PyHessian's tolerance (1e-3) usually stops the power iteration well before 100 iterations; the last
row is the bound. Measuring the eigenvalue at every epoch of a 180-epoch run this way would cost more
than the training; the papers measure it at a handful of epochs (`config.analysis.epochs`).
"""
    print(body)
    write_section("Eigenvalue cost (issue 12)", body)


if __name__ == "__main__":
    main()
