"""Layer-wise re-scaled initialization (LRsI; ToST paper 000 §2.3, after GradInit, Zhu et al.).

The (masked) initialization is kept and every parameter tensor θ_i is multiplied by one learned
scalar α_i ≥ α_min,i (init 1), chosen to make the first optimizer step as effective as possible
(ALGORITHMS.md, "LRsI"). With θ_α = α ⊙ θ, g = m ⊙ ∇L(S; θ_α) (the gradient of the kept weights, m
the mask) and two half-overlapping batches S = [b0, b1], S̃ = [b0, b2], each iteration

- if ‖g‖ > γ (the gradient-norm constraint is violated), takes a step on α that minimises ‖g‖;
- else takes a step on α that minimises L(S̃; θ_α − η·ĝ)/η, where ĝ = g/‖g‖₂ (``first_step="sgd"``,
  the normalised SGD step) or ĝ = sign(g) with ‖g‖ = ‖g‖₁ (``first_step="adam"``).

The steps on α are GradInit's ``RescaleAdam``. At the end θ ← α ⊙ (m ⊙ θ): pruned weights stay
exactly 0, and training proceeds as normal.

Settings: the defaults are the ToST README's LRsI command (VITA-Group/ToST README.md, "Training
using LRsI": ``--gradinit-alg sgd --gradinit-eta 0.1 --gradinit-gamma 1 --gradinit-normalize-grad
--gradinit-lr 1e-2 --gradinit-min-scale 0.01 --gradinit-iters 180 --gradinit-grad-clip 1``). The
argparse defaults of ToST's ``LRsI/train_ticket.py`` differ (lr 1e-3, 390 iterations, γ = ∞, no
normalisation); the README command is the recipe ToST gives, so it is the default here.

Facts from the released GradInit code (zhuchen03/gradinit ``gradinit_utils.py``,
``gradinit_optimizers.py``; ToST's ``LRsI/`` holds the same code):

- Lower bounds: parameters whose name contains "weight" (Conv, Linear *and* BatchNorm weights) get
  ``--gradinit-min-scale`` (0.01), those whose name contains "bias" get 0 (``gradinit``: the
  ``weight_params``/``bias_params`` groups of ``RescaleAdam``). In Flax names: a leaf whose own name
  contains "bias" gets ``min_scale_bias``; every other leaf (``kernel``, BatchNorm ``scale``, ...)
  gets ``min_scale_weight``.
- ‖g‖ is the L2 norm over all parameter gradients for SGD, the L1 norm for Adam; the SGD step is
  g/‖g‖₂ (``--gradinit-normalize-grad``); the constraint step differentiates ‖g‖ itself (not ‖g‖²)
  through the gradient (second order).
- The objective is the updated loss divided by η (``obj_loss = updated_loss / eta``), which matters
  because the α-gradients are clipped.
- The first step is a constant when the objective is differentiated: the code subtracts
  ``gstep.data``, so ∂/∂α_i = ⟨∇L(S̃; θ'), θ_i⟩/η at θ' = θ_α − η·ĝ, not differentiated through ĝ.
  ALGORITHMS.md's formula, read literally, would differentiate through ĝ; the default follows the
  released code (the code ToST ran, and one order of derivatives cheaper).
- ``RescaleAdam`` differs from ``optax.adam``, so it is written out here: β = (0.9, 0.999),
  ε = 1e-8; each α-gradient is clipped to [−clip, clip] ("per dimension"; clip 0 turns it off);
  constraint and objective steps keep separate first moments and step counts but share one second
  moment, bias-corrected by the total count; α ← max(α − lr·m̂/(√v̂ + ε), α_min). A tensor whose
  norm is 0 (a zero-initialised bias, a fully pruned kernel, a bias whose scale reached 0) is
  skipped: its scale and moments stay as they are.
- Batches: the released loop draws b0 and b1 from the loader, and b2 only when the constraint holds,
  so an iteration consumes two or three loader batches, each one half of S (ToST passes its training
  loader, batch 128, so |S| = 256; GradInit's own ``train_cifar.py`` halves the batch instead). Here
  ``batches`` plays the loader: iteration t starts at a cursor c (0 at first) and uses
  b0 = batches[c], b1 = batches[c+1] and, when the constraint holds, b2 = batches[c+2]; the cursor
  then moves on by 3 (constraint held) or 2 (violated), indices modulo ``len(batches)`` (the list
  is re-iterated as the code re-iterates its loader). At least 3 batches are needed, so that b0, b1
  and b2 are different batches.
- BatchNorm runs in training mode (batch statistics) without updating its running statistics, and
  dropout is off (``net.eval()``, then ``set_bn_modes``).

Where the paper text and the released code differ: ToST's ``LRsI/train_ticket.py`` runs GradInit on
the *dense* network and applies the mask afterwards. The paper ("keep the original initialization of
sparse masks intact ... and just re-scale it") and ALGORITHMS.md ("the mask stays applied (zeros
remain zeros)") learn the scales on the masked network. This module follows the paper, since the
scales should suit the network that is trained; all-True masks, with the mask applied afterwards,
give the released behaviour.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax import paths

LossFn = Callable[[Any, Any], jax.Array]

FIRST_STEPS = ("sgd", "adam")
MIN_BATCHES = 3
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # RescaleAdam defaults (gradinit_optimizers.py)


class ScaleState(NamedTuple):
    """The scales and ``RescaleAdam``'s state: vectors of shape [n], one entry per tensor."""

    alpha: jax.Array  # the scales α
    objective_moment: jax.Array  # first moment of objective steps
    constraint_moment: jax.Array  # first moment of constraint steps
    second_moment: jax.Array  # shared by both kinds of step
    objective_count: jax.Array  # int32 steps taken of each kind
    constraint_count: jax.Array


class Settings(NamedTuple):
    """The numeric settings of a ``rescale`` call, traced (a new value does not recompile)."""

    learning_rate: jax.Array
    eta: jax.Array
    gamma: jax.Array
    gradient_clip: jax.Array
    min_scale: jax.Array  # [n], per tensor


def is_bias(path: str) -> bool:
    """Whether a leaf gets the bias lower bound: its own name (last path entry) has "bias"."""
    return "bias" in path.rsplit("/", 1)[-1].lower()


def rescale(loss_fn: LossFn, params: Any, masks: Any, batches: Sequence[Any], *,
            iterations: int = 180, learning_rate: float = 1e-2, eta: float = 0.1,
            gamma: float = 1.0, min_scale_weight: float = 0.01, min_scale_bias: float = 0.0,
            gradient_clip: float = 1.0, first_step: str = "sgd") -> tuple[Any, dict[str, float]]:
    """Learns one scale per parameter tensor (LRsI) and returns ``(α ⊙ masked params, scales)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, differentiable twice and deterministic (no
        dropout). The caller closes over anything else the model needs. For BatchNorm use the batch
        statistics without keeping the updated running statistics, as GradInit does, e.g.
        ``logits, _ = model.apply({"params": p, "batch_stats": stats}, batch["image"], train=True,
        mutable=["batch_stats"])`` (the returned statistics are discarded).
      params: the initial parameters (any pytree of float arrays). Every leaf gets a scale, ghost
        parameters too if the loss uses them.
      masks: bool pytree with the params' structure (True = kept); it is applied to ``params`` first
        and stays applied.
      batches: a list of at least 3 batches, each a pytree of arrays with a leading batch axis,
        all of one structure; each is one half of S (the module docstring gives the order of use).
        Batches of one shape compile once.
      iterations: number of iterations (GradInit steps on α).
      learning_rate: ``RescaleAdam``'s learning rate.
      eta: the first step's learning rate η.
      gamma: the gradient-norm bound γ (``math.inf`` for none).
      min_scale_weight: lower bound of the scales of non-bias tensors (kernels, BatchNorm scales).
      min_scale_bias: lower bound of the scales of tensors named "bias".
      gradient_clip: each α-gradient is clipped to [−clip, clip]; 0 turns clipping off.
      first_step: ``"sgd"`` (normalised gradient step) or ``"adam"`` (sign step, L1 norm).

    Returns:
      ``(params, scales)``: params with the input's structure and dtypes, equal to
      ``scales[path] * (masks ⊙ params)`` per tensor, and ``scales`` a flat dict
      ``{path: float}`` with one entry per parameter tensor, keyed as ``sparsejax.paths.flatten``.

    Raises:
      ValueError: masks that do not fit params, fewer than 3 batches, a setting out of range, or a
        gradient norm that is not finite during the optimisation.
    """
    _check_settings(iterations, learning_rate, eta, gamma, min_scale_weight, min_scale_bias,
                    gradient_clip, first_step)
    masks_lib.validate(masks, params)
    batches = _check_batches(batches)

    base = masks_lib.apply(params, masks)
    flat = paths.flatten(base)
    if not flat:
        raise ValueError("LRsI got params with no tensors; pass the model's parameter pytree")
    min_scale = np.array([min_scale_bias if is_bias(p) else min_scale_weight for p in flat],
                         np.float32)
    settings = Settings(*(jnp.float32(v) for v in (learning_rate, eta, gamma, gradient_clip)),
                        min_scale=jnp.asarray(min_scale))
    active = jnp.stack([jnp.any(leaf != 0) for leaf in flat.values()])
    state = init_state(len(flat))

    cursor, n = 0, len(batches)
    for iteration in range(iterations):
        b0, b1, b2 = (batches[(cursor + k) % n] for k in range(3))
        state, violated, grad_norm = step(state, base, masks, active, settings, b0, b1, b2,
                                          loss_fn=loss_fn, first_step=first_step)
        norm = float(grad_norm)
        if not math.isfinite(norm):
            raise ValueError(f"LRsI: the gradient norm is {norm} at iteration {iteration}; "
                             "loss_fn must be finite and differentiable at the masked init")
        cursor = (cursor + (2 if bool(violated) else 3)) % n

    alpha = np.asarray(state.alpha)
    scales = {p: float(a) for p, a in zip(flat, alpha)}
    return scaled_params(state.alpha, base), scales


def _check_settings(iterations: int, learning_rate: float, eta: float, gamma: float,
                    min_scale_weight: float, min_scale_bias: float, gradient_clip: float,
                    first_step: str) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
            or iterations < 1:
        raise ValueError(f"LRsI iterations is {iterations!r}; it must be an integer >= 1 "
                         "(ToST uses 180)")
    for name, value in (("learning_rate", learning_rate), ("eta", eta)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"LRsI {name} is {value}; it must be finite and > 0")
    if not gamma > 0:
        raise ValueError(f"LRsI gamma (gradient-norm bound) is {gamma}; it must be > 0 "
                         "(math.inf for no bound)")
    for name, value in (("min_scale_weight", min_scale_weight), ("min_scale_bias", min_scale_bias),
                        ("gradient_clip", gradient_clip)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"LRsI {name} is {value}; it must be finite and >= 0")
    if first_step not in FIRST_STEPS:
        raise ValueError(f"LRsI first_step is {first_step!r}; use one of {FIRST_STEPS}")


def _check_batches(batches: Sequence[Any]) -> Sequence[Any]:
    if not hasattr(batches, "__len__") or not hasattr(batches, "__getitem__"):
        raise TypeError(f"LRsI batches is a {type(batches).__name__}; pass a list of batches, "
                        "e.g. list(itertools.islice(loader, 6))")
    if len(batches) < MIN_BATCHES:
        raise ValueError(f"LRsI needs at least {MIN_BATCHES} batches (got {len(batches)}); each "
                         "iteration uses S = [b0, b1] and S~ = [b0, b2], so pass a list of >= 3")
    return batches


def init_state(n: int) -> ScaleState:
    """Scales 1 and zero moments for ``n`` tensors."""
    zeros = jnp.zeros((n,), jnp.float32)
    count = jnp.zeros((n,), jnp.int32)
    return ScaleState(jnp.ones((n,), jnp.float32), zeros, zeros, zeros, count, count)


def scaled_params(alpha: jax.Array, base: Any) -> Any:
    """``alpha[i] * leaf_i`` for the leaves of ``base`` in tree order, in each leaf's dtype."""
    leaves, treedef = jax.tree.flatten(base)
    return jax.tree.unflatten(treedef, [(alpha[i] * leaf).astype(leaf.dtype)
                                        for i, leaf in enumerate(leaves)])


def _concat(a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def _masked_grad(loss_fn: LossFn, params: Any, masks: Any, batch: Any) -> Any:
    """∇L(batch; params) with pruned positions set to 0 (the gradient of the kept weights)."""
    grads = jax.grad(loss_fn)(params, batch)
    return jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), grads, masks)


def _norm(grads: Any, first_step: str) -> jax.Array:
    """‖g‖₂ for SGD, ‖g‖₁ for Adam, over all tensors."""
    leaves = [g.astype(jnp.float32) for g in jax.tree.leaves(grads)]
    if first_step == "adam":
        return sum(jnp.abs(g).sum() for g in leaves)
    return jnp.sqrt(sum(jnp.square(g).sum() for g in leaves))


def _direction(grads: Any, norm: jax.Array, first_step: str) -> Any:
    """The first step's direction: g/‖g‖₂ (SGD, 0 if g = 0) or sign(g) (Adam)."""
    if first_step == "adam":
        return jax.tree.map(jnp.sign, grads)
    safe = jnp.where(norm > 0, norm, 1.0)
    return jax.tree.map(lambda g: jnp.where(norm > 0, g / safe, 0.0).astype(g.dtype), grads)


def _rescale_adam(state: ScaleState, grad: jax.Array, constraint: jax.Array, active: jax.Array,
                  settings: Settings) -> ScaleState:
    """One ``RescaleAdam`` step on the scales of the ``active`` tensors (gradinit_optimizers.py)."""
    clip = settings.gradient_clip
    grad = jnp.where(clip > 0, jnp.clip(grad, -clip, clip), grad)
    on = active & (state.alpha != 0)  # the code skips tensors whose current norm is 0
    cons, obj = on & constraint, on & ~constraint
    constraint_count = state.constraint_count + cons
    objective_count = state.objective_count + obj
    constraint_moment = jnp.where(cons, BETA1 * state.constraint_moment + (1 - BETA1) * grad,
                                  state.constraint_moment)
    objective_moment = jnp.where(obj, BETA1 * state.objective_moment + (1 - BETA1) * grad,
                                 state.objective_moment)
    second_moment = jnp.where(on, BETA2 * state.second_moment + (1 - BETA2) * grad ** 2,
                              state.second_moment)
    count = jnp.maximum(jnp.where(constraint, constraint_count, objective_count), 1)
    moment = jnp.where(constraint, constraint_moment, objective_moment)
    correction1 = 1 - BETA1 ** count.astype(jnp.float32)
    total = jnp.maximum(constraint_count + objective_count, 1)
    correction2 = 1 - BETA2 ** total.astype(jnp.float32)
    denom = jnp.sqrt(second_moment / correction2) + EPS
    updated = jnp.maximum(state.alpha - settings.learning_rate / correction1 * moment / denom,
                          settings.min_scale)
    return ScaleState(jnp.where(on, updated, state.alpha), objective_moment, constraint_moment,
                      second_moment, objective_count, constraint_count)


@functools.partial(jax.jit, static_argnames=("loss_fn", "first_step"))
def step(state: ScaleState, base: Any, masks: Any, active: jax.Array, settings: Settings,
         b0: Any, b1: Any, b2: Any, *, loss_fn: LossFn, first_step: str
         ) -> tuple[ScaleState, jax.Array, jax.Array]:
    """One GradInit iteration: returns the new state, whether ‖g‖ > γ, and ‖g‖.

    ``base`` is the masked params, ``active`` [n] marks tensors of non-zero norm, S = [b0, b1] and
    S̃ = [b0, b2] (b2 is unused when the constraint is violated).
    """
    first, second = _concat(b0, b1), _concat(b0, b2)

    def grad_norm(alpha):
        grads = _masked_grad(loss_fn, scaled_params(alpha, base), masks, first)
        return _norm(grads, first_step), grads

    norm, grads = grad_norm(state.alpha)
    violated = norm > settings.gamma

    def constraint(alpha):  # minimise ‖g‖ itself, through the gradient
        return jax.grad(lambda a: grad_norm(a)[0])(alpha)

    def objective(alpha):  # minimise L(S̃; θ_α − η·ĝ)/η; ĝ, made outside, is a constant here
        update = jax.tree.map(lambda d: settings.eta * d, _direction(grads, norm, first_step))

        def updated_loss(a):
            moved = jax.tree.map(lambda p, u: p - u.astype(p.dtype), scaled_params(a, base), update)
            return loss_fn(moved, second) / settings.eta

        return jax.grad(updated_loss)(alpha)

    alpha_grad = jax.lax.cond(violated, constraint, objective, state.alpha)
    return _rescale_adam(state, alpha_grad, violated, active, settings), violated, norm
