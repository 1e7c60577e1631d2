"""Step-time overhead of the ToST ghost phase (issue 4): ResNet-18 (CIFAR, 10 classes) train step.

Compares, in one run, a jitted SGD-momentum train step (batch 32 at 32×32, CPU) of
- the plain ResNet-18 (ReLU, no ghost paths): the baseline;
- the ghost phase: ghost skips (paper "identity" kind, and the released code's "conv1x1" kind) with
  PSwish, α and β from their schedules inside the step;
- after removal: the plain model and variables returned by `remove_ghosts` of the conv1x1 model.
Each step is compiled and warmed up, then the variants are timed round-robin (so drift in machine
load hits them alike); the table reports the median time per step and, as ratios to the baseline,
the median and the fastest round (the least disturbed by other work on a shared machine).
Targets: ≤ 1.3× during the ghost phase, ≤ 1.01× after removal.

Run from the repository root: ``python -m benchmarks.ghost_overhead``.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks.results import write_section
from sparsejax.models import build, remove_ghosts
from sparsejax.schedules import ghost_alpha, ghost_beta

BATCH, SIZE, CLASSES = 32, 32, 10
ROUNDS, STEPS_PER_ROUND = 15, 2
END_STEP = 10_000  # far away: every timed step is inside the ghost phase
GHOST_TARGET, REMOVED_TARGET = 1.3, 1.01

Step = Callable[[tuple], tuple]


def make_step(model: nn.Module, tx: optax.GradientTransformation, x: jax.Array,
              labels: jax.Array) -> Step:
    """A donated, jitted train step on state (params, batch_stats, opt_state, step)."""
    alpha, beta = ghost_alpha(END_STEP), ghost_beta(1.0, 4.0, END_STEP)

    def step(state: tuple) -> tuple:
        params, batch_stats, opt_state, count = state

        def loss(params):
            logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, alpha=alpha(count), beta=beta(count),
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new

        grads, new = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new["batch_stats"], opt_state, count + 1

    return jax.jit(step, donate_argnums=0)


def initial_state(variables: dict, tx: optax.GradientTransformation) -> tuple:
    """(params, batch_stats, optimizer state, step 0), on copies: the step donates its state and
    the removed model shares its arrays with the ghosted one."""
    params, batch_stats = jax.tree.map(jnp.copy, (variables["params"], variables["batch_stats"]))
    return params, batch_stats, tx.init(params), jnp.int32(0)


def variants(x: jax.Array) -> dict[str, tuple[nn.Module, dict]]:
    """name -> (model, variables); the last one is the conv1x1 model after `remove_ghosts`."""
    key = jax.random.key(0)
    models = {"plain ReLU (baseline)": build("resnet18", CLASSES),
              "ghost phase: identity GSk + PSwish": build("resnet18", CLASSES, activation="pswish",
                                                          ghost_skip="identity"),
              "ghost phase: conv1x1 GSk + PSwish": build("resnet18", CLASSES, activation="pswish",
                                                         ghost_skip="conv1x1")}
    out = {name: (model, jax.jit(model.init)(key, x)) for name, model in models.items()}
    out["after remove_ghosts (conv1x1 model)"] = remove_ghosts(
        *out["ghost phase: conv1x1 GSk + PSwish"])
    return out


def run() -> str:
    x = jax.random.normal(jax.random.key(1), (BATCH, SIZE, SIZE, 3))
    labels = jnp.arange(BATCH) % CLASSES
    tx = optax.sgd(0.1, momentum=0.9)
    steps, states = {}, {}
    for name, (model, variables) in variants(x).items():
        steps[name] = make_step(model, tx, x, labels)
        states[name] = initial_state(variables, tx)
        for _ in range(2):  # compile, then one warm step
            states[name] = jax.block_until_ready(steps[name](states[name]))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                states[name] = step(states[name])
            jax.block_until_ready(states[name])
            times[name].append((time.perf_counter() - start) / STEPS_PER_ROUND)
    base = times["plain ReLU (baseline)"]
    rows = ["| variant | median ms/step | ratio (median) | ratio (fastest round) | target |",
            "| --- | ---: | ---: | ---: | --- |"]
    for name, t in times.items():
        target = ("—" if name.startswith("plain") else
                  f"≤ {REMOVED_TARGET}×" if name.startswith("after") else f"≤ {GHOST_TARGET}×")
        rows.append(f"| {name} | {1e3 * statistics.median(t):.1f} | "
                    f"{statistics.median(t) / statistics.median(base):.3f}× | "
                    f"{min(t) / min(base):.3f}× | {target} |")
    setup = (f"ResNet-18 (CIFAR, {CLASSES} classes), jitted SGD-momentum train step, "
             f"batch {BATCH} at {SIZE}×{SIZE}; median of {ROUNDS} round-robin rounds of "
             f"{STEPS_PER_ROUND} steps.")
    return setup + "\n\n" + "\n".join(rows)


if __name__ == "__main__":
    table = run()
    print(table)
    write_section("Ghost overhead (issue 4)", table)
