"""Static sparse training: the mask given at the start is kept for the whole run (so N:M masks stay
N:M)."""

from sparsejax.dst.rewiring import Rule


def rule(structure: tuple[int, int] | None = None) -> Rule:
    """Static training's rule (the mask never changes); it takes no options (``structure`` comes
    from ``sparse_training``, which checks it at init)."""
    del structure
    return Rule(rewire=None)
