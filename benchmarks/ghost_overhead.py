"""Step-time overhead of the ToST ghost phase (issue 4): ResNet-18 (CIFAR, 10 classes) train step.

Compares, in one run, a jitted SGD-momentum train step (batch 32 at 32×32, CPU) of
- the plain ResNet-18 (ReLU, no ghost paths): the baseline;
- the ghost phase: ghost skips (paper "identity" kind, and the released code's "conv1x1" kind) with
  PSwish, α and β from their schedules inside the step;
- after removal: the plain model and variables returned by `remove_ghosts` of the conv1x1 model.
Each step is compiled and warmed up, then every round times each variant once, in a shuffled
order; a variant's ratio to the baseline is taken per round (so drift in machine load cancels) and
the table reports the median and quartiles of these ratios, with the median time per step. Two
noise-free columns back the timings: the FLOPs of each compiled step (XLA cost analysis) relative to
the plain one, and whether the step's program (StableHLO text) is identical to the plain step's.
Targets: ≤ 1.3× during the ghost phase, ≤ 1.01× after removal.

Run from the repository root: ``python -m benchmarks.ghost_overhead``.
"""

from __future__ import annotations

import random
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
ROUNDS, STEPS_PER_ROUND = 21, 1
END_STEP = 10_000  # far away: every timed step is inside the ghost phase
GHOST_TARGET, REMOVED_TARGET = 1.3, 1.01


def make_step(model: nn.Module, tx: optax.GradientTransformation, x: jax.Array,
              labels: jax.Array) -> Callable[[tuple], tuple]:
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
    steps, states, programs, flops = {}, {}, {}, {}
    for name, (model, variables) in variants(x).items():
        states[name] = initial_state(variables, tx)
        lowered = make_step(model, tx, x, labels).lower(states[name])
        steps[name] = lowered.compile()
        programs[name], flops[name] = lowered.as_text(), steps[name].cost_analysis()["flops"]
        states[name] = jax.block_until_ready(steps[name](states[name]))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = random.Random(0)
    for _ in range(ROUNDS):
        for name in order.sample(list(steps), len(steps)):
            start = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                states[name] = steps[name](states[name])
            jax.block_until_ready(states[name])
            times[name].append((time.perf_counter() - start) / STEPS_PER_ROUND)
    plain = "plain ReLU (baseline)"
    rows = ["| variant | median ms/step | time ratio to plain | quartiles | XLA FLOPs ratio | "
            "same program as plain | target |", "| --- | ---: | ---: | --- | ---: | --- | --- |"]
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[plain])]  # paired by round: cancels load drift
        low, _, high = statistics.quantiles(ratios, n=4)
        target = ("—" if name == plain else
                  f"≤ {REMOVED_TARGET}×" if name.startswith("after") else f"≤ {GHOST_TARGET}×")
        same = "yes" if programs[name] == programs[plain] else "no"
        rows.append(f"| {name} | {1e3 * statistics.median(t):.1f} | "
                    f"{statistics.median(ratios):.3f}× | {low:.3f}–{high:.3f} | "
                    f"{flops[name] / flops[plain]:.3f}× | {same} | {target} |")
    setup = (f"ResNet-18 (CIFAR, {CLASSES} classes), jitted SGD-momentum train step, "
             f"batch {BATCH} at {SIZE}×{SIZE}; {ROUNDS} rounds of {STEPS_PER_ROUND} step(s) per "
             "variant in shuffled order; ratios paired by round.")
    note = ("A step whose program is the plain one does exactly the plain step's work: its time "
            "ratio shows the timing noise of the machine, not an overhead.")
    return setup + "\n\n" + "\n".join(rows) + "\n\n" + note


if __name__ == "__main__":
    table = run()
    print(table)
    write_section("Ghost overhead (issue 4)", table)
