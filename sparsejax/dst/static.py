"""Static sparse training: the mask given at the start is kept for the whole run."""

from sparsejax.dst.rewiring import Rule

RULE = Rule(rewire=None)
