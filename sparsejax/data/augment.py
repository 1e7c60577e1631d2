"""The papers' train-time augmentation (zero padding, random crop, horizontal flip) and normalisation."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Augmentation(NamedTuple):
    """Random choices for a batch of B images: crop ``offsets`` int (B, 2) as (row, column) in [0, 2·pad],
    and ``flips`` bool (B,), True where the image is mirrored left-right."""

    offsets: np.ndarray
    flips: np.ndarray

    def take(self, rows: slice) -> Augmentation:
        """The choices for a slice of the batch."""
        return Augmentation(self.offsets[rows], self.flips[rows])


def draw(rng: np.random.Generator, batch_size: int, pad: int, flip: bool) -> Augmentation:
    """Uniform crop offsets, and flips with probability 0.5 if ``flip`` (else none)."""
    offsets = rng.integers(0, 2 * pad + 1, size=(batch_size, 2))
    flips = rng.random(batch_size) < 0.5 if flip else np.zeros(batch_size, bool)
    return Augmentation(offsets, flips)


def crop_and_flip(images: np.ndarray, augmentation: Augmentation, pad: int) -> np.ndarray:
    """Pads images (B, H, W, C) with ``pad`` zero pixels on each side, crops (H, W) back out at the offsets and
    mirrors the flipped ones: torchvision's ``RandomCrop(H, padding=pad)`` then ``RandomHorizontalFlip``."""
    _, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(images)
    for i, ((row, column), flip) in enumerate(zip(augmentation.offsets, augmentation.flips)):
        window = padded[i, row:row + height, column:column + width]
        out[i] = window[:, ::-1] if flip else window
    return out


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 pixels (..., W, C) to float32 ``(pixel / 255 - mean) / std``, per channel."""
    std = np.asarray(std, np.float32)
    width = images.shape[-2]
    rows = images.reshape(*images.shape[:-2], -1).astype(np.float32)  # (..., W·C): fast inner loops
    rows *= np.tile(1 / (255 * std), width)
    rows -= np.tile(np.asarray(mean, np.float32) / std, width)
    return rows.reshape(images.shape)
