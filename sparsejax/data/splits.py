"""Seeded, class-stratified splits: the papers' 9:1 train/validation split and digits' fixed test split."""

from __future__ import annotations

import numpy as np
from sklearn import model_selection

VALIDATION_FRACTION = 0.1  # the papers' 9:1 split of the training set (CIFAR: 45k/5k)


def stratified_split(labels: np.ndarray, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)``, each sorted: ``ceil(held_out_fraction * N)`` examples held out with every
    class in the same proportion, chosen by ``seed`` alone (scikit-learn's ``train_test_split``)."""
    kept, held_out = model_selection.train_test_split(
        np.arange(len(labels)), test_size=held_out_fraction, stratify=labels, random_state=seed)
    return np.sort(kept), np.sort(held_out)
