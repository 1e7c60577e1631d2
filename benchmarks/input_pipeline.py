"""Input pipeline: train batches per second, for CIFAR-sized synthetic data and for digits.

Run from the repository root: ``python -m benchmarks.input_pipeline`` (writes the "Input pipeline"
section of ``benchmarks/RESULTS.md``).

The CIFAR case is 45,000 random 32×32×3 uint8 images (the size of the papers' CIFAR training split)
through the same code as ``sparsejax.data.load`` (epoch shuffling, pad-4 crop, flip, normalisation);
digits is its real training split. Global batch 128, one process. Columns:

- ``batch fn``: the batch function called directly, one batch after another (no grain);
- ``iterator``: ``iter(Datasets.train)``, grain with its background thread;
- ``behind a 10 ms step``: the iterator while the consumer spends 10 ms per step outside Python
  (``time.sleep``, which releases the GIL as a jitted step does): the time each step waits for its
  batch beyond those 10 ms, i.e. what the pipeline adds to a training step of that length.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Iterator

import grain
import numpy as np

from benchmarks.results import write_section
from sparsejax.data import catalog, pipeline, sources, splits
from sparsejax.data.pipeline import Examples, Preprocessing

BATCH_SIZE = 128
STEPS = 200
STEP_SECONDS = 0.010


def _per_second(next_batch: Callable[[], object], steps: int = STEPS) -> float:
    """Batches per second over ``steps`` calls, the best of 3 runs after a warm-up."""
    next_batch()
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            next_batch()
        rates.append(steps / (time.perf_counter() - start))
    return max(rates)


def _added_ms(iterator: Iterator) -> float:
    """Median wait (ms) for the next batch beyond a simulated step of STEP_SECONDS."""
    next(iterator)
    waits = []
    for _ in range(STEPS):
        time.sleep(STEP_SECONDS)
        start = time.perf_counter()
        next(iterator)
        waits.append(time.perf_counter() - start)
    return 1000 * statistics.median(waits)


def _train(examples: Examples, preprocessing: Preprocessing) -> tuple[pipeline.TrainBatches, grain.IterDataset]:
    """The batch function ``load`` builds for these examples, and the dataset it wraps it in."""
    batches = pipeline.TrainBatches(examples, BATCH_SIZE, 0, preprocessing, pipeline.host_rows(BATCH_SIZE, 0, 1))
    return batches, pipeline.train_dataset(batches)


def cifar_sized() -> tuple[pipeline.TrainBatches, grain.IterDataset]:
    """45k random CIFAR-shaped examples with CIFAR's preprocessing."""
    rng = np.random.default_rng(0)
    examples = Examples(rng.integers(0, 256, (45000, 32, 32, 3), np.uint8), rng.integers(0, 10, 45000).astype(np.int32))
    return _train(examples, catalog.CIFAR)


def digits() -> tuple[pipeline.TrainBatches, grain.IterDataset]:
    """Digits' training split (as ``load("digits")`` makes it) with its preprocessing."""
    pool, _ = sources.digits()
    kept, _ = splits.stratified_split(pool.labels, splits.VALIDATION_FRACTION, seed=0)
    return _train(pool.take(kept), catalog.DIGITS)


def main() -> None:
    rows = []
    for name, shape, make in (("CIFAR-sized (synthetic)", "45000×32×32×3", cifar_sized),
                              ("digits", "1293×8×8×1", digits)):
        batches, dataset = make()
        steps = iter(range(10**9))
        direct = _per_second(lambda: batches(next(steps)))
        iterator = iter(dataset)
        through_grain = _per_second(lambda: next(iterator))
        added = _added_ms(iter(dataset))
        rows.append(f"| {name} | {shape} | {BATCH_SIZE} | {direct:.0f} | {through_grain:.0f} | {added:.2f} |")
        print(rows[-1], flush=True)
    table = "\n".join([
        "Train batches (global batch 128, one process): shuffle, pad-crop, flip, normalise; numpy on the host. "
        f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "| data | train set | batch | batches/s, batch fn | batches/s, iterator | ms added behind a 10 ms step |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
    ])
    write_section("Input pipeline", table)


if __name__ == "__main__":
    main()
