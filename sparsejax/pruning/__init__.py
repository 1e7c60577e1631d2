"""Masks at initialization (random, magnitude, SNIP, GraSP, SynFlow), IMP steps, PyTorch interop.

ALGORITHMS.md, "Masks at initialization". ``find_mask`` is the entry point; the score functions are
exposed for inspection and tests; ``imp_prune`` / ``rewind`` are the pure steps of a lottery-ticket
loop; ``load_torch_masks`` / ``load_torch_variables`` import a PyTorch ticket's masks and weights,
``save_torch_masks`` writes masks PyTorch code loads.
"""

from sparsejax.pruning.finders import METHODS, SCOPES, SYNFLOW_ROUNDS, find_mask
from sparsejax.pruning.imp import imp_prune, rewind
from sparsejax.pruning.io import (TORCH_SUFFIXES, TorchImport, load_torch_masks,
                                  load_torch_variables, save_torch_masks, torch_names)
from sparsejax.pruning.saliency import (SCORED_METHODS, grasp_scores, magnitude_scores, scores,
                                      snip_scores, synflow_scores)

__all__ = ["METHODS", "SCOPES", "SCORED_METHODS", "SYNFLOW_ROUNDS", "TORCH_SUFFIXES", "TorchImport",
           "find_mask", "grasp_scores", "imp_prune", "load_torch_masks", "load_torch_variables",
           "magnitude_scores", "rewind", "save_torch_masks", "scores", "snip_scores",
           "synflow_scores", "torch_names"]
