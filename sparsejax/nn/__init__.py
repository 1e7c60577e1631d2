"""Layers for the ToST ghost tweaks: soft activations (GSw) and gated ghost skips (GSk)."""

from sparsejax.nn.activations import (ACTIVATIONS, activate, check_activation, mish, pswish, relu,
                                      swish)
from sparsejax.nn.ghost import DEFAULT_GHOST, GHOST_KINDS, GhostSkip, check_ghost_kind
from sparsejax.nn.layers import batch_norm, conv

__all__ = ["ACTIVATIONS", "DEFAULT_GHOST", "GHOST_KINDS", "GhostSkip", "activate", "batch_norm", "check_activation",
           "check_ghost_kind", "conv", "mish", "pswish", "relu", "swish"]
