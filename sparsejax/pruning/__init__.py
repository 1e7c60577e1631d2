"""Masks at initialization (random, magnitude, SNIP, GraSP, SynFlow), IMP steps and mask import.

ALGORITHMS.md, "Masks at initialization". ``find_mask`` is the entry point; the score functions are
exposed for inspection and tests; ``imp_prune`` / ``rewind`` are the pure steps of a lottery-ticket
loop; ``load_torch_masks`` imports ``weight_mask`` buffers or pruned weights from PyTorch.
"""

from sparsejax.pruning.finders import METHODS, SCOPES, SYNFLOW_ROUNDS, find_mask
from sparsejax.pruning.imp import imp_prune, rewind
from sparsejax.pruning.io import TorchImport, load_torch_masks
from sparsejax.pruning.saliency import (SCORED_METHODS, grasp_scores, magnitude_scores, scores,
                                      snip_scores, synflow_scores)

__all__ = ["METHODS", "SCOPES", "SCORED_METHODS", "SYNFLOW_ROUNDS", "TorchImport", "find_mask",
           "grasp_scores", "imp_prune", "load_torch_masks", "magnitude_scores", "rewind", "scores",
           "snip_scores", "synflow_scores"]
