"""Loss landscape: 1-D and 2-D loss surfaces along filter-normalised random directions.

Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets" (reference implementation
tomgoldstein/loss-landscape, ``net_plotter.py`` and ``plot_surface.py``), made mask-aware:

- A random direction has i.i.d. Gaussian entries with the params' shapes (``get_random_weights``),
  restricted to the mask: exactly 0 at every pruned weight, so no point of a surface moves one.
- Filter normalisation (``normalize_direction(norm="filter")``): for every filter,
  ``d_filter *= ‖w_filter‖ / (‖d_filter‖ + 1e-10)``. The reference iterates over dim 0 of a PyTorch
  weight, i.e. the output channel of an OIHW conv kernel and the output unit of an (out, in) Linear
  weight; in Flax both are the LAST axis (conv kernels HWIO, dense kernels (in, out)), so a filter
  here is ``kernel[..., o]``. Both norms run over the filter's active (mask True) entries only.
- Biases and BatchNorm parameters get a zero direction: the reference's ``ignore="biasbn"`` (the
  default of ``create_random_direction`` and the ``--xignore biasbn --yignore biasbn`` of its README)
  fills every direction tensor with ``dim() <= 1`` with zeros. A tensor selected explicitly through
  ``filter_fn`` that has ndim <= 1 gets the reference's other branch: the direction is the (masked)
  weight itself (``d.copy_(w)``).
- Kernels that are never pruned (e.g. ghost paths) carry an all-True mask and are normalised like
  any kernel; pass ``filter_fn=sparsejax.paths.default_filter`` to perturb prunable kernels only.
- The surfaces are taken along ``params + α·d`` (1-D) or ``params + α·d1 + β·d2`` (2-D) for α, β
  in ``linspace(-span, span, steps)``, as the reference's ``set_weights`` with
  ``dir_type="weights"``: only params move, never BatchNorm statistics. ``loss_fn`` must evaluate
  BatchNorm in eval mode with the statistics it closes over; that is the caller's job.
- Losses are returned as computed; clipping for display (papers plot z clipped at 8) belongs to the
  plotting code.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax import paths

LossFn = Callable[[Any, Any], jax.Array]

FILTER_NORM_EPS = 1e-10  # reference: d.mul_(w.norm() / (d.norm() + 1e-10))


def _kernels(path: str, leaf: Any) -> bool:
    """The reference's ``ignore="biasbn"``: tensors with ndim >= 2 get a direction, ghosts included."""
    return np.ndim(leaf) >= 2


def _filter_normalized(d: jax.Array, w: jax.Array, m: jax.Array) -> jax.Array:
    """``d`` masked to ``m``, each last-axis filter scaled to the norm of the masked weight filter."""
    d = jnp.where(m, d, 0.0)
    if d.ndim <= 1:  # selected by a user filter_fn: the reference copies the weight (d.copy_(w))
        return jnp.where(m, w, 0).astype(d.dtype)
    w = jnp.where(m, w, 0).astype(d.dtype)
    axes = tuple(range(d.ndim - 1))
    d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes))
    w_norm = jnp.sqrt(jnp.sum(w * w, axis=axes))
    return d * (w_norm / (d_norm + FILTER_NORM_EPS))


@functools.partial(jax.jit, static_argnames=("selected",))
def _random_direction(params: Any, masks: Any, rng: jax.Array, selected: tuple[bool, ...]) -> Any:
    leaves, treedef = jax.tree.flatten(params)
    mask_leaves = jax.tree.leaves(masks)
    keys = jax.random.split(rng, len(leaves))
    out = []
    for w, m, key, chosen in zip(leaves, mask_leaves, keys, selected):
        w = jnp.asarray(w)
        if not chosen:
            out.append(jnp.zeros_like(w))
            continue
        drawn = jax.random.normal(key, w.shape, jnp.promote_types(w.dtype, jnp.float32))
        out.append(_filter_normalized(drawn, w, m).astype(w.dtype))
    return jax.tree.unflatten(treedef, out)


def random_direction(params: Any, masks: Any, rng: jax.Array, *,
                     filter_fn: paths.FilterFn | None = None) -> Any:
    """A params-shaped, mask-restricted, filter-normalised Gaussian direction (Li et al. 2018).

    Each leaf has the param's shape and dtype. ``filter_fn(path, leaf)`` picks the tensors that get a
    direction (default: ndim >= 2, i.e. conv and dense kernels including ghost ones; biases and
    BatchNorm scale/bias get exactly 0, the reference's ``ignore="biasbn"``). In a chosen kernel the
    direction is 0 at pruned weights and each output filter ``[..., o]`` has the norm of the masked
    weight filter: ``‖d[..., o]‖ = ‖(w·m)[..., o]‖`` (up to the reference's 1e-10 in the
    denominator; a filter with no active weight gets 0). Leaf ``i`` in tree order draws from
    ``jax.random.split(rng, n_leaves)[i]``. Raises ``ValueError`` if ``masks`` do not fit ``params``
    (`sparsejax.masks.validate`).
    """
    masks_lib.validate(masks, params)
    keep = filter_fn or _kernels
    selected = tuple(bool(keep(path, leaf)) for path, leaf in paths.flatten(params).items())
    return _random_direction(params, masks, rng, selected)


def _check_direction(direction: Any, params: Any, name: str) -> None:
    """Raises ``ValueError`` unless ``direction`` has the params' paths, shapes and tree structure."""
    got, want = paths.flatten(direction), paths.flatten(params)
    fix = "pass a params-shaped tree (e.g. from random_direction)"
    for path, p in want.items():
        if path not in got:
            raise ValueError(f"{name} has no entry for parameter {path!r}; {fix}")
        if tuple(np.shape(got[path])) != tuple(np.shape(p)):
            raise ValueError(f"{name} of {path!r} has shape {tuple(np.shape(got[path]))}, expected "
                             f"{tuple(np.shape(p))}; {fix}")
    extra = [path for path in got if path not in want]
    if extra or jax.tree.structure(direction) != jax.tree.structure(params):
        raise ValueError(f"{name} has entries that are not parameters ({extra[:3]}) or another tree "
                         f"structure; {fix}")


def _masked(direction: Any, masks: Any) -> Any:
    return jax.tree.map(lambda d, m: jnp.where(m, d, jnp.zeros_like(d)), direction, masks)


def _check_grid(steps: int, span: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps is {steps!r}; pass an integer >= 2 (points per axis)")
    if not (np.isfinite(span) and span > 0):
        raise ValueError(f"span is {span!r}; pass a finite span > 0 (the grid runs from -span to span)")


def _check_batches(batches: Sequence[Any]) -> list[Any]:
    if isinstance(batches, Mapping):
        raise ValueError("batches is a single batch (a mapping); pass a list of batches, e.g. [batch]")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; pass a list of at least one batch")
    return batches


def _coordinates(steps: int, span: float) -> np.ndarray:
    """``linspace(-span, span, steps)`` computed so that it is exactly symmetric, with exactly 0 in
    the middle for odd ``steps`` and exactly ±span at the ends."""
    i = np.arange(steps)
    return span * ((2.0 * i - (steps - 1)) / (steps - 1))


@functools.partial(jax.jit, static_argnums=(0,))
def _grid_losses(loss_fn: LossFn, params: Any, directions: tuple[Any, ...],
                 coefficients: jax.Array, batch: Any) -> jax.Array:
    """``loss_fn(params + Σ_k c[k]·directions[k], batch)`` for each row ``c`` of ``coefficients``
    ``[points, len(directions)]``; points run one after another (one perturbed copy of the params
    in memory at a time)."""

    def at(c: jax.Array) -> jax.Array:
        def moved(p, *ds):
            step = sum(c[k] * d.astype(c.dtype) for k, d in enumerate(ds))
            return p + step.astype(p.dtype)
        return loss_fn(jax.tree.map(moved, params, *directions), batch)

    return jax.lax.map(at, coefficients)


def _mean_losses(loss_fn: LossFn, params: Any, directions: tuple[Any, ...],
                 coefficients: np.ndarray, batches: list[Any]) -> np.ndarray:
    """Losses at every grid point, averaged over ``batches`` (float64, ``[points]``)."""
    coefficients = jnp.asarray(coefficients, jnp.float32)
    total = np.zeros(coefficients.shape[0], np.float64)
    for batch in batches:
        losses = np.asarray(_grid_losses(loss_fn, params, directions, coefficients, batch))
        if losses.shape != total.shape:
            raise ValueError(f"loss_fn returned shape {losses.shape[1:]} per point; it must return "
                             f"a scalar loss")
        total += losses
    return total / len(batches)


def surface_1d(loss_fn: LossFn, params: Any, masks: Any, batches: Sequence[Any], *,
               steps: int = 21, span: float = 1.0, rng: jax.Array | None = None,
               direction: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The loss along one direction: ``(alphas [steps], losses [steps])``.

    ``losses[i]`` is the mean over ``batches`` of ``loss_fn(params + alphas[i]·d, batch)`` with
    ``alphas = linspace(-span, span, steps)`` (exactly symmetric; exactly 0 in the middle for odd
    ``steps``, where the loss is that of ``params``). ``d`` is ``direction`` (any params-shaped tree,
    e.g. the top Hessian eigenvector) masked to ``masks`` and otherwise used as given, or, with
    ``rng``, a fresh ``random_direction(params, masks, rng)``; pass exactly one of the two. Params
    are perturbed as they are: pruned weights keep their value in ``params`` (0 in sparsejax).
    ``loss_fn(params, batch) -> scalar`` must run BatchNorm in eval mode. One compiled program per
    batch shape evaluates every α in a ``lax.map``. Raises ``ValueError`` for ``steps < 2``,
    ``span <= 0``, masks or a direction that do not fit ``params``, or empty ``batches``.
    """
    _check_grid(steps, span)
    batches = _check_batches(batches)
    masks_lib.validate(masks, params)
    if (rng is None) == (direction is None):
        raise ValueError("pass exactly one of rng (for a random filter-normalised direction) "
                         "and direction")
    if direction is None:
        direction = random_direction(params, masks, rng)
    else:
        _check_direction(direction, params, "direction")
        direction = _masked(direction, masks)
    alphas = _coordinates(steps, span)
    losses = _mean_losses(loss_fn, params, (direction,), alphas[:, None], batches)
    return alphas, losses


def surface_2d(loss_fn: LossFn, params: Any, masks: Any, batches: Sequence[Any], *,
               steps: int = 21, span: float = 1.0, rng: jax.Array | None = None,
               directions: tuple[Any, Any] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The loss on the plane of two directions: ``(alphas [steps], betas [steps], losses [steps, steps])``.

    ``losses[j, i]`` is the mean over ``batches`` of ``loss_fn(params + alphas[i]·d1 + betas[j]·d2,
    batch)``: rows follow β, columns α, as the reference's surface file (``np.meshgrid(x, y)``
    order) and as ``matplotlib.pyplot.contour(alphas, betas, losses)`` reads it. ``alphas = betas =
    linspace(-span, span, steps)`` (exactly symmetric, exactly 0 in the middle for odd ``steps``).
    ``(d1, d2)`` is ``directions`` (two params-shaped trees, masked to ``masks``, otherwise used as
    given) or, with ``rng``, two independent ``random_direction`` draws from
    ``jax.random.split(rng)``; pass exactly one of the two. Otherwise as `surface_1d`.
    """
    _check_grid(steps, span)
    batches = _check_batches(batches)
    masks_lib.validate(masks, params)
    if (rng is None) == (directions is None):
        raise ValueError("pass exactly one of rng (for two random filter-normalised directions) "
                         "and directions")
    if directions is None:
        first, second = jax.random.split(rng)
        pair = (random_direction(params, masks, first), random_direction(params, masks, second))
    else:
        if not isinstance(directions, (tuple, list)) or len(directions) != 2:
            raise ValueError("directions must be a pair (d1, d2) of params-shaped trees")
        for k, d in enumerate(directions):
            _check_direction(d, params, f"directions[{k}]")
        pair = tuple(_masked(d, masks) for d in directions)
    alphas = _coordinates(steps, span)
    betas = alphas.copy()
    grid_a, grid_b = np.meshgrid(alphas, betas)
    coefficients = np.stack([grid_a.ravel(), grid_b.ravel()], axis=1)
    losses = _mean_losses(loss_fn, params, pair, coefficients, batches)
    return alphas, betas, losses.reshape(steps, steps)
