"""``load(name, ...)``: the four datasets behind one entry point, with the papers' training protocol."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import grain
import jax

from sparsejax.data import pipeline, sources, splits
from sparsejax.data.pipeline import Examples, Preprocessing

# The papers' CIFAR values (ToST release), used for CIFAR-10 and CIFAR-100 alike.
CIFAR = Preprocessing(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), pad=4, flip=True)
# The values TinyImageNet code commonly uses (same convention as the CIFAR ones); crop 64 after pad 4.
TINY_IMAGENET = Preprocessing(mean=(0.4802, 0.4481, 0.3975), std=(0.2302, 0.2265, 0.2262), pad=4, flip=True)
# Mean and std of all pixels of digits' training set (train + validation); digits are not mirror-symmetric,
# so no flip, and an 8×8 image tolerates only a 1-pixel shift.
DIGITS = Preprocessing(mean=(0.3054,), std=(0.3760,), pad=1, flip=False)


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    preprocessing: Preprocessing
    read: Callable[[str | None, str | None], tuple[Examples, Examples]]  # (data_dir, manual_dir) -> (train, test)


_SPECS = {
    "digits": _Spec(10, DIGITS, lambda data_dir, manual_dir: sources.digits()),
    "cifar10": _Spec(10, CIFAR, functools.partial(sources.cifar, "cifar10")),
    "cifar100": _Spec(100, CIFAR, functools.partial(sources.cifar, "cifar100")),
    "tiny_imagenet": _Spec(200, TINY_IMAGENET, sources.tiny_imagenet),
}
NAMES = tuple(_SPECS)
NUM_CLASSES = {name: spec.num_classes for name, spec in _SPECS.items()}
CHANNELS = {name: len(spec.preprocessing.mean) for name, spec in _SPECS.items()}


@dataclasses.dataclass(frozen=True)
class Datasets:
    """A dataset ready for training. Batches are dicts of numpy arrays for this process:
    ``"image"`` float32 (batch_size // process_count, H, W, C) normalised, ``"label"`` int32; evaluation
    batches add ``"mask"`` bool (False on the padding of the last batch).

    ``train`` is endless (shuffled each epoch, augmented, incomplete last batch dropped); ``iter(train)``
    is a grain iterator whose ``get_state()`` (a small dict) goes into checkpoints and whose
    ``set_state(state)`` resumes exactly. ``validation`` and ``test`` are one pass each time they are
    iterated. ``batch_size`` is the global batch over all processes.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_validation: int
    num_test: int
    batch_size: int
    steps_per_epoch: int
    train: grain.IterDataset
    validation: grain.IterDataset
    test: grain.IterDataset


def load(name: str, *, batch_size: int, seed: int, data_dir: str | None = None, manual_dir: str | None = None,
         split_seed: int = 0, process_index: int | None = None, process_count: int | None = None) -> Datasets:
    """Loads ``name`` (one of ``NAMES``) into memory with the papers' 9:1 train/validation split.

    Args:
      name: 'digits' (offline, ships with scikit-learn), 'cifar10', 'cifar100' or 'tiny_imagenet'.
      batch_size: global batch size (the papers: 128); divisible by ``process_count``.
      seed: seeds the per-epoch shuffling and the augmentation.
      data_dir: tfds data directory (default: tfds's, ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).
      manual_dir: where official archives placed by hand are found (default ``<data_dir>/downloads/manual``).
      split_seed: seeds the stratified train/validation split (kept fixed across training seeds).
      process_index, process_count: this process and the number of processes (default: from jax).

    Raises:
      ValueError: unknown name, or a batch size that does not fit.
      DatasetNotFoundError: the dataset is not prepared and cannot be prepared here (the message says how).
    """
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    rows = pipeline.host_rows(batch_size, index, count)
    spec = _SPECS[name]
    pool, test = spec.read(data_dir, manual_dir)
    kept, held_out = splits.stratified_split(pool.labels, splits.VALIDATION_FRACTION, split_seed)
    train, validation = pool.take(kept), pool.take(held_out)
    if not 0 < batch_size <= len(train.labels):
        raise ValueError(f"batch_size {batch_size} must be in [1, {len(train.labels)}] for {name}")
    train_batches = pipeline.TrainBatches(train, batch_size, seed, spec.preprocessing, rows)

    def evaluation(examples: Examples) -> grain.IterDataset:
        return pipeline.eval_dataset(pipeline.EvalBatches(examples, batch_size, spec.preprocessing, rows))

    return Datasets(
        name=name, num_classes=spec.num_classes, image_shape=train.images.shape[1:],
        num_train=len(train.labels), num_validation=len(validation.labels), num_test=len(test.labels),
        batch_size=batch_size, steps_per_epoch=train_batches.steps_per_epoch,
        train=pipeline.train_dataset(train_batches), validation=evaluation(validation), test=evaluation(test))
