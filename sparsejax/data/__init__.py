"""Data: CIFAR-10/100 (tfds), TinyImageNet (own tfds builder), scikit-learn's digits (offline default),
with the papers' 9:1 train/validation split, augmentation, normalisation and resumable iteration.

TensorFlow is needed only to prepare CIFAR once (tfds's builders; ``pip install "sparsejax[cifar]"``);
TinyImageNet is prepared and everything is read (array_record files) without it, and nothing here
imports it.
"""

from sparsejax.data.catalog import CHANNELS, NAMES, NUM_CLASSES, Datasets, load
from sparsejax.data.errors import DatasetNotFoundError
from sparsejax.data.tiny_imagenet import TinyImagenet

__all__ = ["CHANNELS", "NAMES", "NUM_CLASSES", "Datasets", "DatasetNotFoundError", "TinyImagenet", "load"]
