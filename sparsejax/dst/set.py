"""SET (Sparse Evolutionary Training, Mocanu et al. 2018).

Per layer: drop the floor(f · active) smallest-magnitude kept weights, grow as many at uniformly
random positions among the connections not kept (a just-dropped one may come back and keeps its
value). New weights start at 0. The optimizer update of the step is applied first, then the mask
changes, so magnitudes are those after the update. Per-layer non-zero counts stay constant.

With N:M structure (``sparse_training(..., structure="n:m")``) the drop is the same; then every
group of M (``sparsejax.masks.n_of_m``) grows back as many as it lost at uniformly random positions
among its connections not kept, so every group keeps exactly N (``rewiring.refill``).
"""

from __future__ import annotations

import functools
from typing import Any

from sparsejax.dst.rewiring import Layers, Rewiring, Rule, random_scores, refill, remove_smallest


def rewire(r: Rewiring, structure: tuple[int, int] | None = None) -> tuple[Layers, Any]:
    """SET's mask update (see the module docstring)."""
    kept, dropped = remove_smallest(r)
    new = {}
    for stream, (path, keep) in enumerate(kept.items()):
        new[path] = refill(random_scores(r.seed, stream, keep.shape), keep, dropped[path],
                           structure)
    return new, r.state


def rule(structure: tuple[int, int] | None = None) -> Rule:
    """SET's rule; it takes no options (``structure`` comes from ``sparse_training``)."""
    return Rule(rewire=functools.partial(rewire, structure=structure))
