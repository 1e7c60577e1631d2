"""Static sparse training: the mask given at the start is kept for the whole run."""

from sparsejax.dst.rewiring import Rule


def rule() -> Rule:
    """Static training's rule (the mask never changes); it takes no options."""
    return Rule(rewire=None)
