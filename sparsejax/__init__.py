"""sparsejax: train sparse neural networks better, with any mask (JAX/Flax).

The mask primitives (``masks``, ``topk``, ``distributions``), dynamic sparse training as one optax
transformation (``sparse_training``, ``get_masks``; rules in ``dst``), masks at initialization and
lottery tickets (``pruning``), the ToST model zoo (``nn``, ``models``, ``schedules``) and the recipe
(``recipe``). The data pipeline (``sparsejax.data``) and the loop (``sparsejax.train``) are imported
on demand, since they pull in tensorflow-datasets and orbax.
"""

from sparsejax import distributions, dst, masks, models, nn, paths, pruning, schedules, topk
from sparsejax.dst import get_masks, sparse_training

__all__ = ["distributions", "dst", "get_masks", "masks", "models", "nn", "paths", "pruning",
           "schedules", "sparse_training", "topk"]
