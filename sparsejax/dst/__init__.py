"""Dynamic sparse training (ALGORITHMS.md, "Dynamic sparse training") as one optax transformation.

``transform`` holds ``sparse_training``, its state and ``RULES``, the rule builders by method name;
one module per rule (``static``, ``set``, ``rigl``, ``dsr``, ``ggr``, ``gmp``), each exporting
``rule(**options) -> Rule``; ``timing`` says when the mask changes and by how much.
"""

from sparsejax.dst.transform import (METHODS, RULES, SparseTrainingState, find_state, get_masks,
                                     report, sparse_training)

__all__ = ["METHODS", "RULES", "SparseTrainingState", "find_state", "get_masks", "report",
           "sparse_training"]
