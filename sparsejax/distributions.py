"""Per-layer densities: uniform, ER and ERK (ALGORITHMS.md, "Layer densities").

Each function returns ``{path: density}`` for every prunable parameter (``sparsejax.paths``), ready for
``sparsejax.masks.from_scores`` / ``random``. Shared options:

- ``dense``: paths kept at density 1. The strings ``"first"`` and ``"last"`` name the first and last
  prunable tensor in the model's definition order (the insertion order of the params dicts, which for
  Flax ``nn.compact`` modules is the order in which layers are called).
- ``custom``: ``{path: density}`` fixed by the user.
- ``filter_fn``: which leaves are prunable (default ``sparsejax.paths.default_filter``).

Dense and custom layers are excluded from the ER/ERK solve and their non-zeros count against the
budget ``(1 - sparsity) · Σ N_l``, so the total number of non-zeros equals the budget to within one
per layer once ``sparsejax.masks.kept_count`` rounds each layer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from sparsejax import paths

FIRST, LAST = "first", "last"


def definition_order(params: Any) -> list[str]:
    """All leaf paths in the params' own (insertion) order rather than JAX's sorted-key order."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(child, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, (list, tuple)):
            for i, child in enumerate(node):
                walk(child, f"{prefix}/{i}" if prefix else str(i))
        else:
            out.append(prefix)

    walk(params, "")
    return out


def _prunable_shapes(params: Any, filter_fn: paths.FilterFn | None) -> dict[str, tuple[int, ...]]:
    chosen = paths.prunable(params, filter_fn, required=True)
    order = [p for p in definition_order(params) if p in chosen]
    return {p: tuple(int(d) for d in np.shape(chosen[p])) for p in order}


def _fixed(shapes: Mapping[str, tuple[int, ...]], dense: Iterable[str],
           custom: Mapping[str, float] | None) -> dict[str, float]:
    """Densities the user fixed: ``dense`` paths (with "first"/"last") at 1, then ``custom``."""
    names = list(shapes)
    fixed: dict[str, float] = {}
    for path in dense:
        path = {FIRST: names[0], LAST: names[-1]}.get(path, path)
        fixed[path] = 1.0
    fixed.update({p: float(d) for p, d in (custom or {}).items()})
    for path, density in fixed.items():
        if path not in shapes:
            raise ValueError(f"density fixed for {path!r}, which is not a prunable parameter; "
                             f"prunable paths are e.g. {names[:3]}")
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density of {path!r} is {density}; it must lie in [0, 1]")
    return fixed


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float; ``ValueError`` unless it lies in [0, 1) (the fraction of zeros)."""
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity is {sparsity}; it must lie in [0, 1) (fraction of zeros)")
    return float(sparsity)


def uniform(params: Any, sparsity: float, *, dense: Iterable[str] = (),
            custom: Mapping[str, float] | None = None,
            filter_fn: paths.FilterFn | None = None) -> dict[str, float]:
    """Every prunable tensor at density ``1 - sparsity``, except the ``dense`` and ``custom`` ones.

    Fixed layers are not compensated elsewhere (the global sparsity then differs from ``sparsity``).
    """
    density = 1.0 - check_sparsity(sparsity)
    shapes = _prunable_shapes(params, filter_fn)
    fixed = _fixed(shapes, dense, custom)
    return {p: fixed.get(p, density) for p in shapes}


def _solve(params: Any, sparsity: float, raw_fn: Callable[[tuple[int, ...]], float],
           power_scale: float, dense: Iterable[str], custom: Mapping[str, float] | None,
           filter_fn: paths.FilterFn | None) -> dict[str, float]:
    """RigL's solve: density_l = eps·raw_l with layers that would exceed 1 made dense, iteratively."""
    density = 1.0 - check_sparsity(sparsity)
    shapes = _prunable_shapes(params, filter_fn)
    sizes = {p: int(np.prod(s)) for p, s in shapes.items()}
    out = _fixed(shapes, dense, custom)
    budget = density * sum(sizes.values())
    raw = {p: raw_fn(s) ** power_scale for p, s in shapes.items() if p not in out}
    any_free = bool(raw)
    while raw:
        remaining = budget - sum(out[p] * sizes[p] for p in out)
        if remaining < 0:
            raise ValueError(f"the dense/custom layers alone hold {budget - remaining:.0f} weights, "
                             f"more than the budget {budget:.0f} at sparsity {sparsity}; "
                             "lower the sparsity or fix fewer layers")
        eps = remaining / sum(r * sizes[p] for p, r in raw.items())
        top = max(raw.values())
        if eps * top <= 1.0:
            out.update({p: float(eps * r) for p, r in raw.items()})
            break
        for p in [p for p, r in raw.items() if r == top]:
            out[p] = 1.0
            del raw[p]
    else:  # Every free layer became dense: the fixed ones may have left more than they can hold.
        held = sum(out[p] * sizes[p] for p in out)
        if any_free and budget - held > 0.5:
            raise ValueError(f"with every other layer dense the layers hold {held:.0f} weights and "
                             f"cannot reach the budget {budget:.0f} at sparsity {sparsity}; "
                             "raise the custom densities or the sparsity")
    return {p: out[p] for p in shapes}


def erk(params: Any, sparsity: float, *, power_scale: float = 1.0, dense: Iterable[str] = (),
        custom: Mapping[str, float] | None = None,
        filter_fn: paths.FilterFn | None = None) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (RigL): raw_l = (Σ shape_l / Π shape_l) ** power_scale.

    The shape includes the kernel's spatial dimensions for convolutions (HWIO) and is (in, out) for
    dense layers.
    """
    return _solve(params, sparsity, lambda s: sum(s) / float(np.prod(s)), power_scale, dense, custom,
                  filter_fn)


def er(params: Any, sparsity: float, *, power_scale: float = 1.0, dense: Iterable[str] = (),
       custom: Mapping[str, float] | None = None,
       filter_fn: paths.FilterFn | None = None) -> dict[str, float]:
    """Erdős–Rényi densities (SET): raw_l = (n_in + n_out) / (n_in · n_out), kernel size ignored."""
    return _solve(params, sparsity, lambda s: (s[-2] + s[-1]) / (s[-2] * s[-1]), power_scale,
                  dense, custom, filter_fn)


DISTRIBUTIONS: dict[str, Callable[..., dict[str, float]]] = {"uniform": uniform, "er": er, "erk": erk}
NAMES = tuple(DISTRIBUTIONS)


def by_name(name: str) -> Callable[..., dict[str, float]]:
    """The density distribution called ``name`` (one of `NAMES`)."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown density distribution {name!r}; choose one of {list(NAMES)}")
    return DISTRIBUTIONS[name]
