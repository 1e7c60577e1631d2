"""Dynamic sparse training (ALGORITHMS.md, "Dynamic sparse training") as one optax transformation.

``transform`` holds ``sparse_training`` and its state; one module per rule (``static``, ``set``,
``rigl``, ``dsr``, ``ggr``); ``schedules`` says when the mask changes and by how much.
"""

from sparsejax.dst.transform import (METHODS, SparseTrainingState, find_state, get_masks, report,
                                     sparse_training)

__all__ = ["METHODS", "SparseTrainingState", "find_state", "get_masks", "report", "sparse_training"]
