"""The Hessian of the loss with respect to the active weights: top eigenvalue and trace.

ALGORITHMS.md, "Analysis the papers report": the top Hessian eigenvalue by power iteration on
Hessian-vector products, as PyHessian (Yao et al. 2020, ``amirgholami/PyHessian``,
``hessian.eigenvalues`` and ``hessian.trace``), over training (ToST Figure 9a; paper 002 Figure 2
and A13 take the mean over 10 batches, A11 over 3).

Mask-aware: the loss is evaluated at the sparse network (``sparsejax.masks.apply``: pruned weights
exactly 0) and the Hessian is the one of the loss as a function of the *active* weights only, i.e.
the principal submatrix H[A, A] of the active coordinates A. Every vector is projected onto A (zero
at pruned coordinates) before and after each Hessian-vector product, so H[A, A] is applied exactly.
With ``prunable_only=True`` (default) A holds the active coordinates of the prunable tensors
(``sparsejax.paths.prunable`` with ``filter_fn``; default: conv and dense kernels); biases,
BatchNorm and other tensors get a zero direction. With ``prunable_only=False`` A is every
coordinate whose mask is True (non-prunable tensors carry all-True masks).

Over several batches the Hessian-vector product is the mean over the batches, the Hessian of the
mean loss (PyHessian's ``dataloader_hv_product`` weights batches by their size instead; equal
batches give the same). Hessian-vector products are forward-over-reverse (``jax.jvp`` of
``jax.grad``), compiled once per ``loss_fn`` and batch shape.

``loss_fn(params, batch) -> scalar``: close over everything else (BatchNorm statistics, eval mode).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import masks as masks_lib, paths

LossFn = Callable[[Any, Any], jax.Array]

_RELATIVE_FLOOR = 1e-6  # PyHessian's |λ_prev| + 1e-6 in the relative change of the eigenvalue


def top_eigenvalue(loss_fn: LossFn, params: optax.Params, masks: Any, batches: Sequence[Any], *,
                   iterations: int = 100, tol: float = 1e-3, rng: jax.Array,
                   prunable_only: bool = True, filter_fn: paths.FilterFn | None = None
                   ) -> tuple[float, optax.Params]:
    """The dominant eigenvalue of the active-weight Hessian and its unit eigenvector.

    Power iteration as PyHessian's ``eigenvalues(maxIter=100, tol=1e-3)``: a standard normal start
    vector (``rng``) projected onto the active coordinates and normalised; then ``v ← Hv / ‖Hv‖``,
    where each step's eigenvalue estimate is the Rayleigh quotient ``vᵀHv`` of the unit ``v``; stops
    after ``iterations`` products or when the estimate changes by less than ``tol`` relative to the
    previous one, ``|λ_k − λ_{k−1}| / (|λ_{k−1}| + 1e-6) < tol``.

    Power iteration converges to the eigenvalue of largest *magnitude*, as PyHessian's. Near a
    random initialisation a negative eigenvalue can be the larger in magnitude (seen on ResNet-20 at
    step 0); the papers plot the *top* eigenvalue (on a log scale), so when the first pass ends
    negative at λ₋, a second pass (a fresh start vector) on the shifted H − λ₋I, whose spectrum is
    ≥ 0 with the top eigenvalue shifted the most, gives λ_top = μ + λ₋. This departs from PyHessian
    only where PyHessian would return a negative number. If ``Hv`` is exactly 0, ``v`` is an
    eigenvector of eigenvalue 0 and is returned with 0.0.

    Returns ``(eigenvalue, eigenvector)``: the last Rayleigh quotient as a float, and the last
    ``Hv / ‖Hv‖`` as a params-shaped pytree (params' dtypes) of unit L2 norm, zero at pruned
    coordinates and at tensors outside the analysis.
    Raises ``ValueError`` for masks that do not fit (``sparsejax.masks.validate``), no batches,
    ``iterations < 1``, a negative ``tol`` or no active weight.
    """
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations is {iterations}; pass an integer >= 1 (PyHessian uses 100)")
    if not tol >= 0:
        raise ValueError(f"tol is {tol}; pass a relative tolerance >= 0 (PyHessian uses 1e-3)")
    sparse, active, batches = _prepare(params, masks, batches, prunable_only, filter_fn)
    first, second = jax.random.split(rng)

    def start(key):
        return _unit(_project(_random_tree(key, params, jax.random.normal), active))

    def hvp(v):
        return _mean_hvp(loss_fn, sparse, active, v, batches)

    eigenvalue, v = _power_iteration(hvp, start(first), int(iterations), tol)
    if eigenvalue < 0:
        shift = eigenvalue
        shifted, v = _power_iteration(lambda u: _add(hvp(u), _scale(u, -shift)), start(second),
                                      int(iterations), tol)
        eigenvalue = shifted + shift
    return eigenvalue, v


def _power_iteration(apply: Callable[[Any], Any], v: Any, iterations: int, tol: float
                     ) -> tuple[float, Any]:
    """(Rayleigh quotient, unit vector) of the operator ``apply`` by PyHessian's power iteration."""
    eigenvalue = None
    for _ in range(iterations):
        hv = apply(v)
        estimate, norm = (float(x) for x in _rayleigh_and_norm(hv, v))
        if norm == 0.0:
            return 0.0, v
        previous, eigenvalue, v = eigenvalue, estimate, _scale(hv, 1.0 / norm)
        if previous is not None and abs(estimate - previous) < tol * (abs(previous)
                                                                      + _RELATIVE_FLOOR):
            break
    return eigenvalue, v


def trace(loss_fn: LossFn, params: optax.Params, masks: Any, batches: Sequence[Any], *,
          samples: int, rng: jax.Array, prunable_only: bool = True,
          filter_fn: paths.FilterFn | None = None) -> tuple[float, float]:
    """Hutchinson's estimate of the trace of the active-weight Hessian, with its standard error.

    ``tr H[A, A] ≈ mean_i v_iᵀ H v_i`` over ``samples`` Rademacher vectors (±1 with equal
    probability) on the active coordinates, zero elsewhere, as PyHessian's ``trace`` (which stops
    on a relative tolerance instead of a fixed count). The estimate is unbiased; the standard error
    is ``std(v_iᵀHv_i, ddof=1) / sqrt(samples)`` (NaN for one sample).

    Returns ``(mean, standard_error)`` as floats. Raises ``ValueError`` for masks that do not fit
    (``sparsejax.masks.validate``), no batches, ``samples < 1`` or no active weight.
    """
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples is {samples}; pass an integer >= 1 Rademacher vectors")
    sparse, active, batches = _prepare(params, masks, batches, prunable_only, filter_fn)
    values = []
    for key in jax.random.split(rng, int(samples)):
        v = _project(_random_tree(key, params, jax.random.rademacher), active)
        hv = _mean_hvp(loss_fn, sparse, active, v, batches)
        values.append(float(_rayleigh_and_norm(hv, v)[0]))
    values = np.asarray(values, np.float64)
    error = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return float(values.mean()), error


def _prepare(params: Any, masks: Any, batches: Sequence[Any], prunable_only: bool,
             filter_fn: paths.FilterFn | None) -> tuple[Any, Any, list[Any]]:
    """``(sparse params, active coordinates as a bool tree, batches as a list)``, checked."""
    masks_lib.validate(masks, params)
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; pass a non-empty list of batches (papers: 3 or 10)")
    if prunable_only:
        chosen = paths.prunable(params, filter_fn, required=True)
        active = paths.unflatten(params, {
            path: m if path in chosen else jnp.zeros(np.shape(m), bool)
            for path, m in paths.flatten(masks).items()})
    elif filter_fn is not None:
        raise ValueError("filter_fn is given with prunable_only=False, where every tensor takes "
                         "part; pass prunable_only=True to restrict to the filter's tensors")
    else:
        active = masks
    if not any(np.any(np.asarray(m)) for m in jax.tree.leaves(active)):
        raise ValueError("the masks keep no weight in the analysed tensors; pass masks with at "
                         "least one True entry (or prunable_only=False)")
    return jax.jit(masks_lib.apply)(params, masks), active, batches


@functools.partial(jax.jit, static_argnums=2)
def _random_tree(rng: jax.Array, like: Any, draw: Callable[..., jax.Array]) -> Any:
    """A tree like ``like`` whose leaves are ``draw(key, shape, dtype)``, one key per leaf, in one
    compiled program (a PRNG call per leaf shape would compile once per shape)."""
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(rng, len(leaves))
    return treedef.unflatten([draw(k, jnp.shape(x), jnp.result_type(x))
                              for k, x in zip(keys, leaves)])


@jax.jit
def _project(tree: Any, active: Any) -> Any:
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, active)


@jax.jit
def _scale(tree: Any, factor: jax.Array) -> Any:
    return jax.tree.map(lambda x: (x * factor).astype(x.dtype), tree)


@jax.jit
def _unit(tree: Any) -> Any:
    return _scale(tree, 1.0 / optax.tree_utils.tree_norm(tree))


@jax.jit
def _add(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def _rayleigh_and_norm(hv: Any, v: Any) -> tuple[jax.Array, jax.Array]:
    return optax.tree_utils.tree_vdot(hv, v), optax.tree_utils.tree_norm(hv)


@functools.partial(jax.jit, static_argnums=0)
def _hvp(loss_fn: LossFn, params: Any, active: Any, v: Any, batch: Any) -> Any:
    """``P H P v`` for one batch: P projects onto the active coordinates, H is the loss Hessian."""
    tangent = _project(v, active)
    hv = jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (tangent,))[1]
    return _project(hv, active)


def _mean_hvp(loss_fn: LossFn, params: Any, active: Any, v: Any, batches: list[Any]) -> Any:
    """The Hessian-vector product of the mean loss over ``batches``."""
    total = _hvp(loss_fn, params, active, v, batches[0])
    for batch in batches[1:]:
        total = _add(total, _hvp(loss_fn, params, active, v, batch))
    return _scale(total, 1.0 / len(batches))
