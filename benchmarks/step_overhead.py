"""Training-step cost of sparse_training against dense training (issue 3).

CIFAR ResNet-18 (11.2M parameters), batch 32 at 32×32, SGD with momentum and weight decay, one
jitted forward+backward+update step. Variants, each timed in the same run, interleaved:

- dense: the inner optimizer alone;
- static: sparse_training(method="static") at 90% sparsity;
- rigl / ggr update: a step on which the mask changes (update_every=1, step count > 0), i.e.
  drop + grow selections over every prunable tensor inside the step;
- rigl 2:4 update: the same with 2:4 masks (density 0.5) kept 2:4 (``structure="2:4"``: the drop
  is a top-k per tensor, the growth a selection within each group of 4);
- gmp prune / gmp no prune: sparse_training(method="gmp") from dense masks to sparsity 1 − DENSITY
  (start_step 0, end_step GMP_END, update_every GMP_EVERY), on a pruning step (GMP_END / 2: one
  top-k per prunable tensor plus the host callback of the kept counts) and on the step after it.

Reported as the median and the minimum of ``--reps`` timed calls after a warm-up, each also as a
ratio to dense. On a machine shared with other work the minimum is the steadier estimate of a
step's own cost; the median shows the spread. Next to every figure: the median of the 1-minute load
average (``os.getloadavg()``) read after each of its timed calls.
Also times one exact top-k (``sparsejax.topk.mask``) over all prunable weights, the unit of cost of
a mask update: RigL needs 2 such selections per update, GGR 4 (plus one counter-based random pass),
and one 2:4 selection (``sparsejax.masks.top_in_groups``), the growth of RigL 2:4.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparsejax
from sparsejax import models, paths, topk

DENSITY = 0.1
GMP_EVERY, GMP_END = 100, 1000  # GMP's schedule; step GMP_END // 2 prunes, the step after it not


def _masks(params, rng):
    """Exactly round(d·N) kept per prunable tensor, at random (numpy)."""
    prunable = paths.prunable(params)

    def one(path, p):
        if path not in prunable:
            return jnp.ones(p.shape, bool)
        kept = sparsejax.masks.kept_count(DENSITY, p.size)
        flat = np.zeros(p.size, bool)
        flat[rng.permutation(p.size)[:kept]] = True
        return jnp.asarray(flat.reshape(p.shape))

    return paths.unflatten(params, {k: one(k, v) for k, v in paths.flatten(params).items()})


def _time(fn, args) -> tuple[float, float]:
    """Seconds of one call, and the 1-minute load average right after it."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    model = models.build("resnet18", 10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 32, 32, 3)), jnp.float32)
    y = jnp.arange(args.batch, dtype=jnp.int32) % 10
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
    params, batch_stats = variables["params"], variables["batch_stats"]
    n_params = sum(p.size for p in jax.tree.leaves(params))
    masks = _masks(params, np.random.default_rng(1))
    params = sparsejax.masks.apply(params, masks)
    nm_masks = sparsejax.masks.n_of_m(jax.tree.map(jnp.abs, variables["params"]), 2, 4)
    nm_params = sparsejax.masks.apply(variables["params"], nm_masks)
    inner = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))

    def make_step(tx):
        def step(params, batch_stats, opt_state, x, y):
            def loss_fn(p):
                logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, new["batch_stats"]

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state, loss

        return jax.jit(step)

    def rewiring(method, masks=masks, **options):
        return sparsejax.sparse_training(inner, masks, method=method, update_every=1,
                                         end_step=10**9, drop_fraction=0.3, **options)

    gmp = sparsejax.sparse_training(
        inner, jax.tree.map(lambda p: jnp.ones(p.shape, bool), variables["params"]), method="gmp",
        final_sparsity=1.0 - DENSITY, start_step=0, end_step=GMP_END, update_every=GMP_EVERY)
    # name: (transformation, params it starts from, step count of its state; None = from init)
    variants = {"dense": (inner, params, None),
                "static": (sparsejax.sparse_training(inner, masks, method="static"), params, None),
                "rigl update": (rewiring("rigl"), params, 1),
                "ggr update": (rewiring("ggr"), params, 1),
                "rigl 2:4 update": (rewiring("rigl", nm_masks, structure="2:4"), nm_params, 1),
                "gmp prune": (gmp, variables["params"], GMP_END // 2),
                "gmp no prune": (gmp, variables["params"], GMP_END // 2 + 1)}
    calls, update_calls = {}, {}
    grads = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                    mutable=["batch_stats"])[0], y).mean()))(params)
    for name, (tx, start, count) in variants.items():
        state = tx.init(start)
        if count is not None:  # the state is not carried over: every call is a step at `count`
            state = sparsejax.dst.find_state(state)._replace(count=jnp.int32(count))
        calls[name] = (make_step(tx), (start, batch_stats, state, x, y))
        update = jax.jit(lambda p, s, g, tx=tx: (lambda u, s: (optax.apply_updates(p, u), s))(
            *tx.update(g, s, p)))
        update_calls[name] = (update, (start, state, grads))
    prunable = list(paths.prunable(params).values())
    scores = [jnp.abs(p) for p in prunable]
    selection = jax.jit(lambda s: [topk.mask(leaf, leaf.size // 10) for leaf in s])
    update_calls["one top-k over prunable"] = (selection, (scores,))
    in_groups = jax.jit(lambda s: [sparsejax.masks.top_in_groups(leaf, 2, 4) for leaf in s])
    update_calls["one 2:4 selection over prunable"] = (in_groups, ([
        leaf for leaf in scores if sparsejax.masks.fits_n_of_m(leaf.shape, 4)],))
    for fn, call_args in [*calls.values(), *update_calls.values()]:
        jax.block_until_ready(fn(*call_args))  # compile and warm up

    load_before = os.getloadavg()
    step_times = {name: [] for name in calls}
    update_times = {name: [] for name in update_calls}
    for _ in range(args.reps):
        for name, (fn, call_args) in calls.items():
            step_times[name].append(_time(fn, call_args))
        for _ in range(3):
            for name, (fn, call_args) in update_calls.items():
                update_times[name].append(_time(fn, call_args))
    median = {name: statistics.median(t for t, _ in ts) for name, ts in step_times.items()}
    best = {name: min(t for t, _ in ts) for name, ts in step_times.items()}
    load = {name: statistics.median(l for _, l in ts) for name, ts in step_times.items()}
    update = {name: statistics.median(t for t, _ in ts) for name, ts in update_times.items()}
    update_load = {name: statistics.median(l for _, l in ts) for name, ts in update_times.items()}

    targets = {"static": "≤ 1.03", "rigl update": "≤ 1.25", "ggr update": "≤ 1.25"}
    steps = ["| step | median (s) | median / dense | min (s) | min / dense | load | target |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in calls:
        steps.append(f"| {name} | {median[name]:.3f} | {median[name] / median['dense']:.2f}× | "
                     f"{best[name]:.3f} | {best[name] / best['dense']:.2f}× | {load[name]:.1f} | "
                     f"{targets.get(name, '')} |")
    updates = ["| optimizer update alone | median (s) | step estimate / dense | load | target |",
               "|---|---:|---:|---:|---:|"]
    for name, t in update.items():
        estimate = (median["dense"] + t - update["dense"]) / median["dense"]
        shown = f"{estimate:.2f}×" if name in calls else ""
        updates.append(f"| {name} | {t:.3f} | {shown} | {update_load[name]:.1f} | "
                       f"{targets.get(name, '')} |")
    table = (f"CIFAR ResNet-18 ({n_params / 1e6:.1f}M parameters, "
             f"{sum(p.size for p in prunable) / 1e6:.1f}M prunable at density {DENSITY}), batch "
             f"{args.batch} at 32×32, SGD momentum + weight decay; {args.reps} interleaved reps "
             f"of the whole step after warm-up.\n\n" + "\n".join(steps) +
             f"\n\nThe optimizer update alone (same gradients; {3 * args.reps} reps), and the step "
             f"it implies: (dense step + this update − dense update) / dense step, a steadier "
             f"estimate on a shared machine since forward and backward are the same in every "
             f"variant.\n\n" + "\n".join(updates) +
             f"\n\nLoad: median 1-minute load average (`os.getloadavg()`) after the figure's timed "
             f"calls; {os.cpu_count()} CPU cores, load {load_before[0]:.1f} before the timed reps and "
             f"{os.getloadavg()[0]:.1f} after.")
    print(table)
    if not args.no_write:
        from benchmarks.results import write_section
        write_section("DST step overhead (issue 3)", table)


if __name__ == "__main__":
    main()
