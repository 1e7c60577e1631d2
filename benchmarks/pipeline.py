"""Host overhead of the training loop and input-pipeline headroom, on CIFAR-sized data.

Run from the repository root: ``python -m benchmarks.pipeline`` (writes the "Training loop host
overhead (issue 5)" section of ``benchmarks/RESULTS.md``).

The data are 12,000 random 32×32×3 images (CIFAR's shape, fewer of them) behind the real
``sparsejax.data`` code path (shuffle, pad-4 crop, flip, normalise, grain prefetch), registered under a
benchmark-only name. The model is a 90%-sparse ResNet-20, batch 128, one CPU device.

- device step: the jitted, donated train step dispatched N times back to back on one batch already on
  device, synced once at the end, divided by N, so that dispatch overlaps compute as in the loop
  (also shown: the median single call synced after each, which counts dispatch and sync too; a
  ``lax.fori_loop`` of steps is no measure on CPU: XLA ran its body ~30× slower, 34.7 s a step);
- loop step: ``sparsejax.train.train_and_evaluate`` (progress bar, metrics every 50 steps, data,
  host→device copies), per step, from the difference of a short and a longer run so that
  compilation, start-up and the final evaluation and checkpoint cancel out;
- host overhead = loop step / device step − 1 (target ≤ 3%), the device step measured before and
  after the loop runs, whose gap shows how much the machine drifted meanwhile;
- pipeline headroom = batches/s the train iterator delivers ÷ steps/s the device consumes (target ≥ 5).
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time

import jax
import numpy as np
import optax

from benchmarks.results import write_section
from configs import base
import sparsejax
from sparsejax import data as data_lib, distributions, masks, models, train
from sparsejax.train import build, state as state_lib, step as step_lib
from sparsejax.data import catalog
from sparsejax.data.pipeline import Examples

NAME = "synthetic_cifar10"
EPOCHS_SHORT, EPOCHS_LONG = 1, 3
IMAGES = 12_000  # 10,800 after the 9:1 split: 84 steps of 128 per epoch keep the runs short


def register_synthetic_cifar() -> None:
    rng = np.random.default_rng(0)
    n = IMAGES

    def read(data_dir, manual_dir):
        del data_dir, manual_dir
        train_split = Examples(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, n).astype(np.int32))
        return train_split, train_split.take(np.arange(256))

    catalog._SPECS[NAME] = catalog._Spec(10, catalog.CIFAR, read)
    data_lib.NAMES = (*data_lib.NAMES, NAME)  # what the config check accepts


def config(epochs: int):
    c = base.get_config()
    c.name, c.data.name, c.model.name = "pipeline_benchmark", NAME, "resnet20"
    c.num_epochs, c.optimizer.decay_epochs = epochs, (epochs,)
    c.eval_every_epochs = c.checkpoint_every_epochs = 1000  # only the final ones, in both runs
    return c


def loop_seconds(epochs: int) -> float:
    c = config(epochs)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        train.train_and_evaluate(c, workdir)
        return time.perf_counter() - start


class DeviceStep:
    """The jitted, donated train step on one batch kept on device, compiled and warmed up once."""

    def __init__(self, ds):
        c = config(1)
        model = models.build("resnet20", 10)
        self.batch = jax.device_put(next(iter(ds.train)))
        variables = model.init(jax.random.key(0), self.batch["image"][:1], train=False)
        params = variables["params"]
        m = masks.random(jax.random.key(1), params, distributions.erk(params, c.mask.sparsity))
        inner = optax.chain(optax.add_decayed_weights(2e-4), optax.sgd(0.1, 0.9))
        tx = sparsejax.sparse_training(inner, m, method="static")
        self.state = jax.device_put(jax.tree.map(np.array, state_lib.create(variables, m, tx)))
        self.step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, inputs=None,
                                              loss=build.loss(c)), donate_argnums=0)
        self.single_call(3)

    def back_to_back(self, n: int = 20) -> float:
        """Seconds per step of ``n`` steps dispatched back to back and synced once."""
        t = time.perf_counter()
        for _ in range(n):
            self.state, _ = self.step(self.state, self.batch)
        jax.block_until_ready(self.state)
        return (time.perf_counter() - t) / n

    def single_call(self, n: int = 20) -> float:
        """Median seconds of ``n`` single steps, each synced."""
        times = []
        for _ in range(n):
            t = time.perf_counter()
            self.state, _ = self.step(self.state, self.batch)
            jax.block_until_ready(self.state)
            times.append(time.perf_counter() - t)
        return statistics.median(times)


def iterator_batches_per_second(ds, n: int = 200) -> float:
    it = iter(ds.train)
    next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return n / (time.perf_counter() - t)


def main() -> None:
    register_synthetic_cifar()
    ds = data_lib.load(NAME, batch_size=128, seed=0)
    timer = DeviceStep(ds)
    device_before, single_call = timer.back_to_back(), timer.single_call()
    short = loop_seconds(EPOCHS_SHORT)
    long = loop_seconds(EPOCHS_LONG)
    device_after = timer.back_to_back()
    device = (device_before + device_after) / 2
    loop = (long - short) / ((EPOCHS_LONG - EPOCHS_SHORT) * ds.steps_per_epoch)
    feed = iterator_batches_per_second(ds)
    body = f"""
| measure | value |
|---|---:|
| device step (ResNet-20, 90% sparse, batch 128, 32×32), back to back, one sync: mean of before and after the loop runs | {device * 1e3:.1f} ms |
| the same, before / after (their gap is this machine's drift, the resolution of the overhead) | {device_before * 1e3:.1f} / {device_after * 1e3:.1f} ms ({100 * abs(device_after / device_before - 1):.1f}%) |
| device step, single jitted call synced each time | {single_call * 1e3:.1f} ms |
| loop step (train_and_evaluate, per step) | {loop * 1e3:.1f} ms |
| host overhead (loop / device − 1), target ≤ 3% | {100 * (loop / device - 1):.1f}% |
| train iterator | {feed:.0f} batches/s |
| pipeline headroom (iterator rate × device step), target ≥ 5× | {feed * device:.1f}× |

{ds.steps_per_epoch} steps per epoch; loop step from {EPOCHS_SHORT}- and {EPOCHS_LONG}-epoch runs.
"""
    print(body)
    write_section("Training loop host overhead (issue 5)", body)


if __name__ == "__main__":
    main()
