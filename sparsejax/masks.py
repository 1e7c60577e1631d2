"""Masks are pytrees of ``bool`` arrays with exactly the structure of the params.

Every function here is pure. A mask leaf is True where the weight is kept. Tensors that are not pruned
(biases, BatchNorm, ghost parameters, anything outside the densities) carry an all-True mask, so a
mask tree can always be zipped with the params. Per-layer values are dicts keyed by the parameter's
"/"-joined path (``sparsejax.paths``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import files, paths, topk
from sparsejax.errors import FileFormatError

Densities = Mapping[str, float]


def kept_count(density: float, size: int) -> int:
    """Number of weights a tensor of ``size`` keeps at ``density``: round(d·N), at least 1 unless d = 0."""
    if density <= 0:
        return 0
    return min(size, max(1, int(np.floor(density * size + 0.5))))


def ones_like(params: Any) -> Any:
    """The all-True mask of ``params`` (nothing pruned)."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def check_densities(params: Any, densities: Densities) -> None:
    """Raises ``ValueError`` if a density names no parameter or lies outside [0, 1]."""
    shapes = paths.flatten(params)
    for path, density in densities.items():
        if path not in shapes:
            raise ValueError(f"density given for {path!r}, which is not a parameter path; "
                             f"valid paths look like {next(iter(shapes), '<none>')!r}")
        if not 0.0 <= float(density) <= 1.0:
            raise ValueError(f"density of {path!r} is {density}; a density must lie in [0, 1]")


def _check_finite(scores: Any, densities: Densities) -> None:
    for path, leaf in paths.flatten(scores).items():
        if path in densities and not isinstance(leaf, jax.core.Tracer):
            if bool(jnp.isnan(leaf).any()):
                raise ValueError(f"scores of {path!r} contain NaN; expected finite scores")


def from_scores(scores: Any, densities: Densities) -> Any:
    """Keeps, in each tensor named in ``densities``, exactly ``kept_count(d, N)`` largest scores.

    ``scores`` has the params' structure. Tensors not named keep an all-True mask. Ties go to the lower
    flat index (``sparsejax.topk.mask``). NaN scores raise ``ValueError`` naming the path.
    """
    check_densities(scores, densities)
    _check_finite(scores, densities)
    flat = paths.flatten(scores)
    kept = tuple((path, kept_count(float(densities[path]), int(np.size(s))))
                 for path, s in flat.items() if path in densities)
    chosen = _top_k({path: flat[path] for path, _ in kept}, kept)
    return paths.unflatten(scores, {path: chosen[path] if path in chosen
                                    else jnp.ones(jnp.shape(s), bool) for path, s in flat.items()})


@functools.partial(jax.jit, static_argnums=(1,))
def _top_k(scores: dict[str, jax.Array], kept: tuple[tuple[str, int], ...]) -> dict[str, jax.Array]:
    """All tensors' top-k in one compiled program (a program per tensor shape compiled slowly)."""
    return {path: topk.mask(scores[path], k) for path, k in kept}


@functools.partial(jax.jit, static_argnums=(1,))
def _uniform_scores(rng: jax.Array, shapes: tuple[tuple[str, tuple[int, ...]], ...]
                    ) -> dict[str, jax.Array]:
    sizes = [int(np.prod(shape)) for _, shape in shapes]
    flat = jax.random.uniform(rng, (sum(sizes),))
    starts = np.cumsum([0] + sizes)
    return {p: flat[a:b].reshape(shape) for (p, shape), a, b in zip(shapes, starts, starts[1:])}


def uniform_scores(rng: jax.Array, shapes: Mapping[str, Sequence[int]]) -> dict[str, jax.Array]:
    """I.i.d. uniform [0, 1) float32 scores ``{path: array of shape}``, in the order of ``shapes``.

    Drawn as one flat vector cut into the shapes: one PRNG call compiles once per set of shapes,
    where a call per tensor would compile threefry once per shape.
    """
    drawn = _uniform_scores(rng, tuple((p, tuple(int(d) for d in shape))
                                       for p, shape in shapes.items()))
    return {p: drawn[p] for p in shapes}  # jit returns dicts in sorted key order


def random(rng: jax.Array, params: Any, densities: Densities) -> Any:
    """Uniformly random masks with exactly ``kept_count(d, N)`` True per tensor named in ``densities``."""
    check_densities(params, densities)
    leaves = paths.flatten(params)
    drawn = uniform_scores(rng, {p: np.shape(leaf) for p, leaf in leaves.items() if p in densities})
    scores = {p: drawn[p] if p in drawn else np.zeros(np.shape(leaf), np.float32)
              for p, leaf in leaves.items()}
    return from_scores(paths.unflatten(params, scores), densities)


def apply(params: Any, masks: Any) -> Any:
    """Params with every masked-out weight set to exactly 0 (same dtypes)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def _misfit(masks: Any, params: Any) -> str | None:
    """Why ``masks`` does not fit ``params`` (the first path whose structure, shape or dtype
    differs), or None."""
    got, want = paths.flatten(masks), paths.flatten(params)
    for path in want:
        if path not in got:
            return f"mask is missing parameter {path!r}; expected a mask for every param"
    for path in got:
        if path not in want:
            return f"mask has {path!r}, which is not a parameter; expected params' paths"
    for path, p in want.items():
        m = got[path]
        if tuple(np.shape(m)) != tuple(np.shape(p)):
            return (f"mask of {path!r} has shape {tuple(np.shape(m))}, "
                    f"expected {tuple(np.shape(p))}")
        if np.dtype(getattr(m, "dtype", type(m))) != np.bool_:
            return f"mask of {path!r} has dtype {getattr(m, 'dtype', type(m))}, expected bool"
    if jax.tree.structure(masks) != jax.tree.structure(params):
        return (f"mask tree structure {jax.tree.structure(masks)} differs from params' "
                f"{jax.tree.structure(params)}")
    return None


def validate(masks: Any, params: Any) -> None:
    """Raises ``ValueError`` naming the first path whose structure, shape or dtype does not fit.

    Masks must have exactly the params' tree structure, each leaf a ``bool`` array of the param's shape.
    """
    problem = _misfit(masks, params)
    if problem:
        raise ValueError(problem)


def counts(masks: Any, params: Any | None = None, filter_fn: paths.FilterFn | None = None
           ) -> dict[str, tuple[int, int]]:
    """``{path: (kept, size)}`` for the prunable tensors of ``params`` (or all masks if no params)."""
    flat = paths.flatten(masks)
    chosen = flat if params is None else paths.prunable(params, filter_fn)
    return {p: (int(np.count_nonzero(np.asarray(flat[p]))), int(np.size(flat[p]))) for p in chosen}


def layer_densities(masks: Any, params: Any | None = None,
                    filter_fn: paths.FilterFn | None = None) -> dict[str, float]:
    """``{path: kept / size}`` per prunable tensor."""
    return {p: kept / max(size, 1) for p, (kept, size) in counts(masks, params, filter_fn).items()}


def sparsity(masks: Any, params: Any, filter_fn: paths.FilterFn | None = None) -> float:
    """Fraction of zeros in the masks over all prunable tensors of ``params``."""
    c = counts(masks, params, filter_fn).values()
    total = sum(size for _, size in c)
    return 1.0 - sum(kept for kept, _ in c) / total if total else 0.0


def summary(masks: Any, params: Any, filter_fn: paths.FilterFn | None = None) -> str:
    """A per-layer table (path, shape, kept, size, density) with a total row, as plain text."""
    shapes = paths.flatten(params)
    rows = [(p, "x".join(map(str, np.shape(shapes[p]))), kept, size, kept / max(size, 1))
            for p, (kept, size) in counts(masks, params, filter_fn).items()]
    kept_all, size_all = sum(r[2] for r in rows), sum(r[3] for r in rows)
    rows.append(("total", "", kept_all, size_all, kept_all / max(size_all, 1)))
    width = max([len("layer")] + [len(r[0]) for r in rows])
    lines = [f"{'layer':<{width}}  {'shape':>18}  {'kept':>10}  {'size':>10}  {'density':>8}"]
    lines += [f"{p:<{width}}  {s:>18}  {k:>10,}  {n:>10,}  {d:>8.4f}" for p, s, k, n, d in rows]
    return "\n".join(lines)


_HOW = "make one with sparsejax.masks.save(path, masks)"


def save(path: str | os.PathLike, masks: Any) -> None:
    """Writes masks to a compressed ``.npz`` keyed by parameter path, atomically (never half a file)."""
    files.save_npz(path, {p: np.asarray(m, dtype=bool) for p, m in paths.flatten(masks).items()},
                   compressed=True)


def load(path: str | os.PathLike, params: Any) -> Any:
    """Reads masks saved by ``save`` and validates them against ``params``.

    Raises ``FileFormatError`` (a ``ValueError``) if the file is not such an ``.npz`` or holds the
    masks of another model, and ``FileNotFoundError`` if there is no file.
    """
    stored = files.read_npz(path, "mask file", _HOW)
    name = os.fspath(path)
    want = paths.flatten(params)
    for p in stored:
        if p not in want:
            raise FileFormatError(f"mask file {name!r} has {p!r}, which is not a parameter of this "
                                  f"model; expected paths like {next(iter(want), '<none>')!r}")
    for p in want:
        if p not in stored:
            raise FileFormatError(f"mask file {name!r} has no mask for {p!r}; "
                                  f"{_HOW} for this model")
    masks = paths.unflatten(params, {p: jnp.asarray(stored[p]) for p in want})
    problem = _misfit(masks, params)
    if problem:
        raise FileFormatError(f"mask file {name!r} does not fit this model: {problem}")
    return masks


# ------------------------------------------------------------------------------ N:M structure

def check_n_of_m(n: int, m: int) -> None:
    """``ValueError`` unless ``n`` and ``m`` are integers with ``1 <= n < m``."""
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (n, m)) \
            or not 1 <= n < m:
        raise ValueError(f"structure {n}:{m} needs integers 1 <= n < m (n = m would be dense), "
                         "e.g. 2:4")


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"n:m"`` (e.g. ``"2:4"``) as ``(n, m)``; None for ``""`` or None (no structure).

    ``ValueError`` (one line) for any other text or unless ``1 <= n < m``.
    """
    if not structure:
        return None
    n, colon, m = str(structure).partition(":")
    if not (colon and n.strip().isdigit() and m.strip().isdigit()):
        raise ValueError(f"structure is {structure!r}; write N:M structure as 'n:m', e.g. '2:4'")
    check_n_of_m(int(n), int(m))
    return int(n), int(m)


def fits_n_of_m(shape: Sequence[int], m: int) -> bool:
    """Whether a tensor of ``shape`` splits into groups of ``m``: its reduction size (the product
    of all axes but the last: kh·kw·in for a conv kernel, in for a dense one) is a multiple of
    ``m``."""
    return len(shape) >= 1 and int(np.prod(shape[:-1], dtype=np.int64)) % m == 0


def n_of_m_unfit(tree: Any, m: int, filter_fn: paths.FilterFn | None = None) -> dict[str, int]:
    """``{path: reduction size}`` of the prunable tensors that do not split into groups of ``m``
    (``n_of_m`` leaves them dense), e.g. ``{"conv1/kernel": 27}`` for a 3×3 conv on RGB at m = 4."""
    return {p: int(np.prod(np.shape(x)[:-1], dtype=np.int64))
            for p, x in paths.prunable(tree, filter_fn).items() if not fits_n_of_m(np.shape(x), m)}


def _groups(x: jax.Array, m: int) -> jax.Array:
    """``x`` of shape (..., out) as (groups, m, out): reduction axes flattened row-major (input
    channel fastest), then cut into runs of ``m`` consecutive entries per output column."""
    return jnp.reshape(x, (-1, m, jnp.shape(x)[-1]))


def group_counts(mask: jax.Array, m: int) -> jax.Array:
    """int32 (groups, out): how many entries each group of ``m`` keeps (``fits_n_of_m`` shapes)."""
    return jnp.sum(_groups(mask, m), axis=1, dtype=jnp.int32)


def top_in_groups(scores: jax.Array, k: int | jax.Array, m: int,
                  eligible: jax.Array | None = None) -> jax.Array:
    """Bool of ``scores.shape``: in every group of ``m`` (``group_counts``' layout), the ``k``
    largest eligible scores.

    ``k`` is a number or an int array (groups, out), one count per group, and may be traced; a group
    with fewer than ``k`` eligible entries keeps all of them. Ranked exactly by
    ``sparsejax.topk.keys`` (NaN last) with the tie rule of ``sparsejax.topk.mask``: the lower
    flat index wins. A group is only ``m`` entries, so instead of ``topk``'s histograms the rank
    of each entry (how many eligible entries of its group are ahead of it) is counted in ``m``
    elementwise passes.
    """
    key = _groups(topk.keys(scores), m)
    ok = jnp.ones(key.shape, bool) if eligible is None else _groups(eligible, m)
    position = jax.lax.broadcasted_iota(jnp.int32, key.shape, 1)
    rank = jnp.zeros(key.shape, jnp.int32)
    for j in range(m):
        other = key[:, j:j + 1]
        ahead = (other > key) | ((other == key) & (j < position))
        rank += (ok[:, j:j + 1] & ahead).astype(jnp.int32)
    k = jnp.asarray(k, jnp.int32)
    return (ok & (rank < (k[:, None, :] if k.ndim else k))).reshape(jnp.shape(scores))


@functools.partial(jax.jit, static_argnums=(2,))
def _n_of_m(scores: dict[str, jax.Array], n: jax.Array, m: int) -> dict[str, jax.Array]:
    return {p: top_in_groups(s, n, m) for p, s in scores.items()}


def n_of_m(scores: Any, n: int, m: int, filter_fn: paths.FilterFn | None = None) -> Any:
    """N:M structured masks: in each prunable tensor, exactly the ``n`` largest of every ``m``
    consecutive scores along the reduction axes (ALGORITHMS.md, "N:M"; 2:4 for NVIDIA's sparse
    tensor cores).

    ``scores`` is a pytree shaped like the params, or a single array. A tensor (..., out), e.g. a
    conv kernel (kh, kw, in, out), is read as (kh·kw·in, out) with its reduction axes flattened
    row-major (input channel fastest), and each output column is cut into groups of ``m``
    consecutive rows. Ties go to the lower flat index and NaN ranks last (``top_in_groups``); an
    eager call with NaN scores raises ``ValueError`` naming the path.

    Prunable tensors (``filter_fn``, default conv and dense kernels) whose reduction size is not a
    multiple of ``m``, e.g. the first conv on RGB (3·3·3 = 27 at m = 4), are left dense (all True),
    as NVIDIA ASP skips the layers that do not fit (it prints "Auto skipping pruning"; ASP also
    skips shapes that do not fit its tensor-core tiles, here only the groups matter);
    ``n_of_m_unfit`` lists them. Other leaves are all True too. ``ValueError`` unless
    ``1 <= n < m``.
    """
    check_n_of_m(n, m)
    fit = {p: s for p, s in paths.prunable(scores, filter_fn).items()
           if fits_n_of_m(np.shape(s), m)}
    _check_finite(fit, fit)
    chosen = _n_of_m(fit, jnp.int32(n), m)
    return paths.unflatten(scores, {p: chosen[p] if p in chosen else jnp.ones(jnp.shape(s), bool)
                                    for p, s in paths.flatten(scores).items()})


def n_of_m_misfit(masks: Any, n: int, m: int, filter_fn: paths.FilterFn | None = None
                  ) -> str | None:
    """Why ``masks`` are not N:M (the first prunable tensor and group that does not keep exactly
    ``n`` of ``m``), or None. Tensors that do not split into groups of ``m`` are not checked."""
    for path, mask in paths.prunable(masks, filter_fn).items():
        if not fits_n_of_m(np.shape(mask), m):
            continue
        counts = np.asarray(group_counts(mask, m))
        wrong = np.argwhere(counts != n)
        if wrong.size:
            group, column = (int(i) for i in wrong[0])
            return (f"mask of {path!r} is not {n}:{m}: group {group} of output {column} keeps "
                    f"{counts[group, column]} of {m} ({len(wrong)} groups wrong)")
    return None


def is_n_of_m(masks: Any, n: int, m: int, filter_fn: paths.FilterFn | None = None) -> bool:
    """Whether every prunable tensor that splits into groups of ``m`` keeps exactly ``n`` per
    group."""
    return n_of_m_misfit(masks, n, m, filter_fn) is None
