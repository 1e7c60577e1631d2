"""SET (Sparse Evolutionary Training, Mocanu et al. 2018).

Per layer: drop the floor(f · active) smallest-magnitude kept weights, grow as many at uniformly
random positions among the connections not kept (a just-dropped one may come back and keeps its
value). New weights start at 0. The optimizer update of the step is applied first, then the mask
changes, so magnitudes are those after the update. Per-layer non-zero counts stay constant.
"""

from __future__ import annotations

from typing import Any

from sparsejax.dst.rewiring import Layers, Rewiring, Rule, grow, random_scores, remove_smallest


def rewire(r: Rewiring) -> tuple[Layers, Any]:
    """SET's mask update (see the module docstring)."""
    kept, dropped = remove_smallest(r)
    new = {}
    for stream, (path, keep) in enumerate(kept.items()):
        new[path] = keep | grow(random_scores(r.seed, stream, keep.shape), ~keep, dropped[path])
    return new, r.state


def rule() -> Rule:
    """SET's rule; it takes no options."""
    return Rule(rewire=rewire)
