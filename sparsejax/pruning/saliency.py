"""Saliency scores for masks at initialization (ALGORITHMS.md, "Masks at initialization").

Every function returns ``{path: scores}`` for the prunable tensors of ``params``
(``sparsejax.paths``; default: conv and dense kernels, never biases, BatchNorm or ghost parameters),
in tree order; a mask keeps the *largest* scores.

The model enters only through ``apply_fn(params, x) -> logits``: close over everything else
(BatchNorm statistics, ``train=``, RNGs), e.g.
``apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x, train=False)``.
The data-driven scores use the mean softmax cross-entropy of ``apply_fn(params, batch["x"])``
against the integer labels ``batch["y"]`` (``optax.softmax_cross_entropy_with_integer_labels``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import paths

ApplyFn = Callable[[Any, jax.Array], Any]
Batch = Mapping[str, Any]
Scores = dict[str, jax.Array]

SCORED_METHODS = ("magnitude", "snip", "grasp", "synflow")


@dataclasses.dataclass(frozen=True)
class Structure:
    """The params' tree structure and leaf paths; rebuilds params from ``{path: leaf}`` in ``jit``.

    Hashable, so jitted functions take it (and ``apply_fn``) as static arguments and reuse their
    compilation across calls with the same model, e.g. a sweep over sparsities.
    """

    treedef: Any
    names: tuple[str, ...]

    def merge(self, weights: Mapping[str, Any], rest: Mapping[str, Any]) -> Any:
        values = {**rest, **weights}
        return self.treedef.unflatten([values[n] for n in self.names])


def split(params: Any, filter_fn: paths.FilterFn | None
          ) -> tuple[Structure, dict[str, Any], dict[str, Any]]:
    """``(structure, weights, rest)``: the prunable leaves and all others, as ``{path: leaf}``.

    Gradients are taken with respect to ``weights`` only, as in GraSP's and Synaptic-Flow's code,
    where g and H live on the prunable weights.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = tuple(paths.path_str(p) for p, _ in leaves)
    weights = paths.prunable(params, filter_fn, required=True)
    rest = {n: leaf for n, (_, leaf) in zip(names, leaves) if n not in weights}
    return Structure(treedef, names), weights, rest


def check_batches(batches: Iterable[Batch] | None, method: str) -> list[Batch]:
    if batches is None:
        raise ValueError(f"{method} needs data: pass batches=[{{'x': inputs, 'y': labels}}, ...]")
    batches = list(batches)
    if not batches:
        raise ValueError(f"{method} got no batches; pass at least one {{'x': inputs, 'y': labels}}")
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "x" not in batch or "y" not in batch:
            raise ValueError(f"batch {i} for {method} is {type(batch).__name__}; expected a dict "
                             "{'x': inputs, 'y': integer labels}")
    return batches


def check_apply_fn(apply_fn: ApplyFn | None, method: str) -> ApplyFn:
    if apply_fn is None:
        raise ValueError(f"{method} needs the model: pass apply_fn=lambda params, x: logits")
    return apply_fn


def _zeros(weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {p: np.zeros(np.shape(w), jnp.result_type(w)) for p, w in weights.items()}


def _loss(apply_fn: ApplyFn, structure: Structure, weights: Any, rest: Any, batch: Batch,
          temperature: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``apply_fn(params, x) / temperature`` against integer ``y``."""
    logits = apply_fn(structure.merge(weights, rest), batch["x"]) / temperature
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


_STATIC = ("apply_fn", "structure")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _add_gradient(total, weights, rest, batch, temperature, *, apply_fn, structure):
    """``total + ∇_w L_T(batch)``."""
    g = jax.grad(_loss, argnums=2)(apply_fn, structure, weights, rest, batch, temperature)
    return jax.tree.map(jnp.add, total, g)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _add_hessian_g(total, weights, rest, batch, g, temperature, *, apply_fn, structure):
    """``total + H_w L_T(batch) · g`` (forward-over-reverse: ∇_w (stop_gradient(g) · ∇_w L_T))."""
    def grad(w):
        return jax.grad(_loss, argnums=2)(apply_fn, structure, w, rest, batch, temperature)

    return jax.tree.map(jnp.add, total, jax.jvp(grad, (weights,), (g,))[1])


@jax.jit
def _abs(tree):
    return jax.tree.map(jnp.abs, tree)


@jax.jit
def _abs_product(a, b):
    return jax.tree.map(lambda x, y: jnp.abs(x * y), a, b)


@jax.jit
def _product(a, b):
    return jax.tree.map(jnp.multiply, a, b)


def _gradient_sum(weights, rest, batches, temperature, apply_fn, structure):
    total = _zeros(weights)
    for batch in batches:
        total = _add_gradient(total, weights, rest, batch, temperature, apply_fn=apply_fn,
                              structure=structure)
    return total


def magnitude_scores(params: Any, *, filter_fn: paths.FilterFn | None = None) -> Scores:
    """|w| (one-shot magnitude pruning, OMP)."""
    _, weights, _ = split(params, filter_fn)
    return _abs(weights)


def snip_scores(params: Any, apply_fn: ApplyFn | None, batches: Iterable[Batch] | None, *,
                filter_fn: paths.FilterFn | None = None) -> Scores:
    """SNIP: |g ⊙ w| with g = Σ_batches ∇_w L, the absolute value taken once, after the sum."""
    apply_fn, batches = check_apply_fn(apply_fn, "snip"), check_batches(batches, "snip")
    structure, weights, rest = split(params, filter_fn)
    g = _gradient_sum(weights, rest, batches, 1.0, apply_fn, structure)
    return _abs_product(g, weights)


def grasp_scores(params: Any, apply_fn: ApplyFn | None, batches: Iterable[Batch] | None, *,
                 temperature: float = 200.0, filter_fn: paths.FilterFn | None = None) -> Scores:
    """GraSP: θ ⊙ Hg, to be kept largest; g and H at ``temperature`` on the logits.

    g = Σ_batches ∇_w L_T and Hg = ∇_w (stop_gradient(g) · Σ_batches ∇_w L_T), computed per batch
    as a forward-over-reverse Hessian-vector product (the same numbers). GraSP's paper removes the
    weights with the highest −θ ⊙ Hg, i.e. keeps the largest θ ⊙ Hg. Synaptic-Flow divides these
    scores by |Σ scores|; a positive factor does not change the ranking, so it is left out here.
    """
    apply_fn, batches = check_apply_fn(apply_fn, "grasp"), check_batches(batches, "grasp")
    if not float(temperature) > 0:
        raise ValueError(f"grasp temperature is {temperature}; it must be > 0 (default 200)")
    structure, weights, rest = split(params, filter_fn)
    g = _gradient_sum(weights, rest, batches, temperature, apply_fn, structure)
    hg = _zeros(weights)
    for batch in batches:
        hg = _add_hessian_g(hg, weights, rest, batch, g, temperature, apply_fn=apply_fn,
                            structure=structure)
    return _product(weights, hg)


def check_input_shape(input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is None:
        raise ValueError("synflow needs input_shape, the shape of its all-ones input with the "
                         "batch dimension, e.g. input_shape=(1, 32, 32, 3)")
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"synflow input_shape is {tuple(input_shape)}; expected positive sizes "
                         "with the batch dimension first, e.g. (1, 32, 32, 3)")
    return shape


@functools.partial(jax.jit, static_argnames=(*_STATIC, "input_shape"))
def synflow_flow(weights, rest, masks, *, apply_fn, structure, input_shape):
    """``{path: |∂R/∂θ ⊙ θ|}`` on θ = |w| ⊙ masks (``masks`` may name only some paths), the other
    params |·|; R is the sum of ``apply_fn``'s outputs on an all-ones input, in the inputs' dtype.
    """
    theta = {p: jnp.abs(w) * masks[p] if p in masks else jnp.abs(w) for p, w in weights.items()}
    rest = jax.tree.map(jnp.abs, rest)
    ones = jnp.ones(input_shape, next(iter(theta.values())).dtype)

    def total_output(t):
        outputs = apply_fn(structure.merge(t, rest), ones)
        return sum(jnp.sum(out) for out in jax.tree.leaves(outputs))

    grad = jax.grad(total_output)(theta)
    return {p: jnp.abs(grad[p] * t) for p, t in theta.items()}


def as_float64(tree: Any) -> Any:
    """Floating leaves as float64 (call inside ``jax.enable_x64(True)``)."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating)
        else x, tree)


def synflow_scores(params: Any, apply_fn: ApplyFn | None, input_shape: Sequence[int] | None, *,
                   masks: Mapping[str, Any] | None = None,
                   filter_fn: paths.FilterFn | None = None) -> dict[str, np.ndarray]:
    """One SynFlow round: |∂R/∂θ ⊙ θ| with every parameter replaced by |θ| (pruned ones by 0).

    R = Σ apply_fn(|params| ⊙ masks, ones(input_shape)). No data is used. ``masks`` is
    ``{path: bool array}`` for the tensors already pruned (the others count as unpruned). Pass an
    ``apply_fn`` with BatchNorm in eval mode (it closes over the running statistics, which are not
    made absolute: at initialization they are mean 0 and variance 1 anyway).

    Computed in float64 (``jax.enable_x64`` locally, as Synaptic-Flow runs in double precision): R
    grows like the product of the layers' weight sums and overflows float32 in deep networks.
    Returns float64 NumPy arrays. A model that forces float32 computation may still overflow; the
    finders then raise ``ValueError``.
    """
    apply_fn = check_apply_fn(apply_fn, "synflow")
    shape = check_input_shape(input_shape)
    structure, weights, rest = split(params, filter_fn)
    with jax.enable_x64(True):
        scores = synflow_flow(as_float64(weights), as_float64(rest),
                              {p: jnp.asarray(m, bool) for p, m in (masks or {}).items()},
                              apply_fn=apply_fn, structure=structure, input_shape=shape)
        return {p: np.asarray(s, np.float64) for p, s in scores.items()}


def scores(method: str, params: Any, *, apply_fn: ApplyFn | None = None,
           batches: Iterable[Batch] | None = None, input_shape: Sequence[int] | None = None,
           temperature: float = 200.0, filter_fn: paths.FilterFn | None = None
           ) -> dict[str, Any]:
    """The ``method`` scores of the prunable tensors: 'magnitude', 'snip', 'grasp' or 'synflow'.

    SynFlow here is one round on the dense network; ``find_mask`` iterates it.
    """
    if method == "magnitude":
        return magnitude_scores(params, filter_fn=filter_fn)
    if method == "snip":
        return snip_scores(params, apply_fn, batches, filter_fn=filter_fn)
    if method == "grasp":
        return grasp_scores(params, apply_fn, batches, temperature=temperature, filter_fn=filter_fn)
    if method == "synflow":
        return synflow_scores(params, apply_fn, input_shape, filter_fn=filter_fn)
    raise ValueError(f"unknown scoring method {method!r}; choose one of {list(SCORED_METHODS)} "
                     "('random' has no scores: use find_mask('random', ...))")
