"""Batches as grain datasets: the endless shuffled, augmented train stream and padded evaluation passes.

Every batch is a pure function of its step number, so an iterator's state is just that number (grain's
``{"next_index": step}``), and a run resumed from it sees exactly the batches of an uninterrupted run.
Each of ``process_count`` processes gets rows ``[process_index·L, (process_index+1)·L)`` of every global
batch, ``L = batch_size // process_count``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import NamedTuple, Sequence

import grain
import numpy as np

from sparsejax.data import augment

Batch = dict[str, np.ndarray]

# One background thread computes batches ahead of the training step; the data are already in memory.
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)

_SHUFFLE, _AUGMENT = 0, 1  # independent random streams derived from the seed


class Examples(NamedTuple):
    """A split in memory: ``images`` uint8 (N, H, W, C), ``labels`` int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def take(self, indices: np.ndarray) -> Examples:
        """The examples at ``indices``, in that order."""
        return Examples(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Per-dataset normalisation (per-channel ``mean``/``std`` of pixels in [0, 1]) and train-time
    augmentation (``pad`` zero pixels then a random crop back to size; random horizontal ``flip``)."""

    mean: Sequence[float]
    std: Sequence[float]
    pad: int
    flip: bool


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """This process's rows of every global batch of ``batch_size``."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    local = batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


@functools.lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in ``epoch``: a permutation seeded by (seed, epoch)."""
    return _rng(seed, _SHUFFLE, epoch).permutation(num_examples)


@dataclasses.dataclass(frozen=True)
class TrainBatches:
    """Step → this process's train batch: epoch ``step // steps_per_epoch`` visits the examples in
    ``epoch_order`` (the last incomplete batch dropped); augmentation is drawn for the whole global batch
    from (seed, step), so processes never share random numbers and the global batch does not depend on
    the number of processes."""

    examples: Examples
    batch_size: int
    seed: int
    preprocessing: Preprocessing
    rows: slice

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches in one pass over the examples."""
        return len(self.examples.labels) // self.batch_size

    def __call__(self, step: int) -> Batch:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.examples.labels), self.seed, epoch)
        indices = order[index * self.batch_size:(index + 1) * self.batch_size][self.rows]
        p = self.preprocessing
        choices = augment.draw(_rng(self.seed, _AUGMENT, step), self.batch_size, p.pad, p.flip)
        images = augment.crop_and_flip(self.examples.images[indices], choices.take(self.rows), p.pad)
        return {"image": augment.normalize(images, p.mean, p.std), "label": self.examples.labels[indices]}


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Index → this process's part of evaluation batch ``index``: the examples in order, no augmentation,
    the last global batch padded (zero image, label 0) and ``"mask"`` False on padding, so that summing
    ``mask`` over all batches and processes counts every example exactly once."""

    examples: Examples
    batch_size: int
    preprocessing: Preprocessing
    rows: slice

    def __len__(self) -> int:
        return -(-len(self.examples.labels) // self.batch_size)

    def __call__(self, index: int) -> Batch:
        positions = np.arange(index * self.batch_size, (index + 1) * self.batch_size)[self.rows]
        mask = positions < len(self.examples.labels)
        batch = self.examples.take(np.where(mask, positions, 0))
        images = augment.normalize(batch.images, self.preprocessing.mean, self.preprocessing.std)
        return {"image": np.where(mask[:, None, None, None], images, np.float32(0)),
                "label": np.where(mask, batch.labels, 0).astype(np.int32), "mask": mask}


def train_dataset(batches: TrainBatches) -> grain.IterDataset:
    """The endless train stream; ``iter()`` gives a grain iterator with ``get_state()``/``set_state()``."""
    return grain.MapDataset.range(sys.maxsize).map(batches).to_iter_dataset(READ_OPTIONS)


def eval_dataset(batches: EvalBatches) -> grain.IterDataset:
    """One full pass over an evaluation split; iterate it again for the next evaluation."""
    return grain.MapDataset.range(len(batches)).map(batches).to_iter_dataset(READ_OPTIONS)
