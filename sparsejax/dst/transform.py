"""Dynamic sparse training as one optax transformation: ``sparse_training(inner, masks, method=...)``.

Every step: the gradients are averaged over ``axis_name`` (if given), masked, and passed to the inner
optimizer; the returned updates set every pruned weight to exactly 0 after ``optax.apply_updates``
(``p + (-p) == 0`` exactly), whatever the inner optimizer does. On mask-update steps
(``sparsejax.dst.timing``), inside ``jax.lax.cond``, the rule (static, SET, RigL, DSR, GGR, GMP;
one module each, built by ``RULES[method](**options)``) drops and grows connections using the dense
gradient, and a grown weight is set to exactly its initial value. The state holds the masks, the step
count, the RNG key (identical on every device), the inner state, the rule's own state, and what the
last mask update changed.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparsejax import masks as masks_lib
from sparsejax import paths
from sparsejax.dst import dsr, ggr, gmp, rigl, set as set_rule, static
from sparsejax.dst.inner_state import check_resettable, keep_per_weight, reset
from sparsejax.dst.rewiring import Rewiring, Rule, active, update_seed
from sparsejax.dst.timing import drop_fraction_schedule

# The rule builders by method name: ``RULES[method](**options) -> Rule``.
RULES: dict[str, Callable[..., Rule]] = {
    "static": static.rule, "set": set_rule.rule, "rigl": rigl.rule, "dsr": dsr.rule,
    "ggr": ggr.rule, "gmp": gmp.rule}
METHODS = tuple(RULES)


class SparseTrainingState(NamedTuple):
    """State of `sparse_training`; ``grown``/``dropped`` are keyed by the prunable params' paths."""
    count: jax.Array                # int32: update() calls so far
    masks: Any                      # bool pytree with the params' structure
    key: jax.Array                  # uint32[2] seed of random growth, replicated; never split:
                                    # update t draws from a hash of (key, t, layer, position)
    inner_state: optax.OptState
    rule_state: Any                 # DSR: its threshold H; GMP: initial kept counts; () otherwise
    mask_updates: jax.Array         # int32: mask updates so far
    last_update: jax.Array          # int32: step of the last mask update, -1 before the first
    grown: dict[str, jax.Array]     # int32 per layer: connections grown at the last mask update
    dropped: dict[str, jax.Array]   # int32 per layer: connections dropped at the last mask update


def _rule(method: str, options: dict[str, Any], given: dict[str, Any]) -> Rule:
    """``RULES[method](**options)``, plus the ``given`` arguments of ``sparse_training`` its builder
    takes by name (start_step, end_step, update_every: GMP; structure: the rules that keep N:M
    structure); ``ValueError`` for an unknown method or option, or a structure it cannot keep."""
    if method not in RULES:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    parameters = inspect.signature(RULES[method]).parameters
    takes = [name for name in parameters if name not in given]
    for name in options:
        if name not in takes:
            raise ValueError(f"{method} takes no option {name!r} (its options: "
                             f"{', '.join(takes) or 'none'})")
    if given["structure"] is not None and "structure" not in parameters:
        keeping = [name for name, build in RULES.items()
                   if "structure" in inspect.signature(build).parameters]
        raise ValueError("{} cannot keep N:M structure {}:{} (it moves density between layers or "
                         "changes it); use one of {}".format(method, *given["structure"],
                                                            ", ".join(keeping)))
    return RULES[method](**options, **{k: v for k, v in given.items() if k in parameters})


def _check_arguments(method: str, update_every: int, start_step: int, end_step: int | None,
                     drop_fraction: float, new_weight_init: float | None) -> None:
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction is {drop_fraction}; it must lie in [0, 1]")
    if int(update_every) != update_every or update_every <= 0:
        raise ValueError(f"update_every is {update_every}; it must be a positive integer")
    if start_step < 0:
        raise ValueError(f"start_step is {start_step}; it must be >= 0")
    if end_step is None and method != "static":
        raise ValueError(f"end_step is required for method {method!r} (the last step that may "
                         f"change the mask is end_step - 1; gmp prunes at end_step too)")
    if end_step is not None and end_step < start_step:
        raise ValueError(f"end_step ({end_step}) is before start_step ({start_step})")
    if new_weight_init is not None and not math.isfinite(new_weight_init):
        raise ValueError(f"new_weight_init is {new_weight_init}; it must be finite")


def _masked_updates(params: Any, updates: Any, masks: Any, born: Any, init_value: float) -> Any:
    """Updates that leave each weight exactly 0 where masked out and ``init_value`` where ``born``.

    Elsewhere the weight becomes ``param + update``. ``born`` (connections grown this step, whose
    weight was 0) may be None.
    """
    def one(p, u, m, b=None):
        if b is not None:
            u = jnp.where(b, jnp.asarray(init_value, p.dtype) - p, u)
        return jnp.where(m, u, -p)

    trees = (params, updates, masks) if born is None else (params, updates, masks, born)
    return jax.tree.map(one, *trees)


def sparse_training(inner: optax.GradientTransformation, masks: Any, *, method: str,
                    update_every: int = 100, start_step: int = 0, end_step: int | None = None,
                    drop_fraction: float = 0.3, drop_schedule: str = "cosine",
                    new_weight_init: float | None = None, axis_name: str | None = None,
                    filter_fn: paths.FilterFn | None = None, seed: int = 0,
                    structure: str | None = None, **rule_options: Any
                    ) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that training keeps ``masks`` and rewires them by ``method``.

    Args:
      inner: any optax optimizer; it receives the masked gradients.
      masks: bool pytree with the params' structure (True = kept), checked against params at init.
      method: a key of ``RULES``: "static", "set", "rigl", "dsr", "ggr" or "gmp" (one module each
        in ``sparsejax.dst``).
      update_every, start_step, end_step: the mask may change at steps ``t > 0`` with
        ``start_step <= t < end_step`` and ``(t - start_step) % update_every == 0`` (step t = number
        of earlier update() calls). ``end_step`` may be omitted only for "static". GMP prunes at
        ``start_step <= t <= end_step`` (``end_step`` included, step 0 allowed;
        ``sparsejax.dst.gmp``).
      drop_fraction, drop_schedule: f0 and "constant" | "cosine" | "exponential"
        (``sparsejax.dst.timing``).
      new_weight_init: value of a grown weight; None = the rule's (0; 1e-10 for GGR).
      axis_name: inside ``pmap``/``shard_map``, the gradients are averaged over this axis first,
        for the inner optimizer and for every mask decision. (Under ``shard_map`` with its default
        varying-axes checks, gradients of replicated params already arrive summed over the axis;
        the average then changes nothing, so scale the loss to the global-batch mean.)
      filter_fn: ``(path, leaf) -> bool``, the tensors that take part in rewiring; default
        ``sparsejax.paths.default_filter`` (conv and dense kernels). Other tensors keep their mask.
      seed: seed of the RNG key in the state (random growth of SET, DSR, GGR).
      structure: "n:m" (e.g. "2:4") to keep N:M structured masks N:M (``sparsejax.masks.n_of_m``):
        the masks must have it at init (``ValueError`` otherwise; checked when ``init`` runs on
        concrete masks). Static keeps it; SET and RigL drop as usual, then every group of M grows
        back as many as it lost, within the group (``sparsejax.dst.rewiring.refill``), so each
        keeps exactly N. Tensors whose reduction size is not a multiple of M (left dense by
        ``n_of_m``) are rewired as without structure. DSR, GGR and GMP move or change layer
        densities, which N:M fixes: ``ValueError``. "" or None: no structure.
      **rule_options: passed to the rule's builder ``RULES[method]``; an option it does not take is a
        ``ValueError``. GGR takes ``grow_gradient_fraction`` (its share of each layer's quota grown
        at the largest gradients, default 0.5); GMP ``final_sparsity`` and ``scope``.

    Returns an optax transformation whose updates leave pruned weights exactly 0 after
    ``optax.apply_updates``; for a Flax NNX model it is the ``tx`` of
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` (masks shaped like ``nnx.state(model, nnx.Param)``).
    Raises ``ValueError`` for bad arguments, and at init for masks that do
    not fit the params, (RigL) an inner state it cannot reset or (GMP) masks sparser than its
    target.
    """
    n_of_m = masks_lib.parse_structure(structure)
    rule = _rule(method, rule_options, dict(start_step=start_step, end_step=end_step,
                                            update_every=update_every, structure=n_of_m))
    _check_arguments(method, update_every, start_step, end_step, drop_fraction, new_weight_init)
    init_value = rule.new_weight_init if new_weight_init is None else new_weight_init
    end_step = start_step if end_step is None else end_step
    fraction_at = drop_fraction_schedule(drop_schedule, drop_fraction, start_step, end_step)
    inner = optax.with_extra_args_support(inner)

    masks = nnx.as_pure(masks)  # NNX boxes (nnx.Variable) off: update_fn sees plain values

    def init_fn(params: optax.Params) -> SparseTrainingState:
        # nnx.Optimizer passes its nnx.Variables here (the inner state keeps their metadata) and
        # their values to update_fn; the masks and the bookkeeping follow the values.
        values = nnx.as_pure(params)
        masks_lib.validate(masks, values)
        if n_of_m and not any(isinstance(m, jax.core.Tracer) for m in jax.tree.leaves(masks)):
            problem = masks_lib.n_of_m_misfit(masks, *n_of_m, filter_fn)
            if problem:
                raise ValueError(f"sparse_training(structure={structure!r}): {problem}; make the "
                                 f"masks with sparsejax.masks.n_of_m or find_mask(structure=...)")
        prunable = paths.prunable(params, filter_fn)
        inner_state = inner.init(params)
        masks_flat = paths.flatten(masks)
        rule_state = (rule.init_state({p: jnp.asarray(masks_flat[p]) for p in prunable})
                      if rule.init_from_masks else rule.init_state())
        if rule.resets_optimizer_state:
            check_resettable(inner, inner_state, prunable)
        zeros = {path: jnp.int32(0) for path in prunable}
        return SparseTrainingState(
            count=jnp.int32(0), masks=jax.tree.map(jnp.asarray, masks),
            key=jnp.array([(seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF], jnp.uint32),
            inner_state=inner_state, rule_state=rule_state,
            mask_updates=jnp.int32(0), last_update=jnp.int32(-1), grown=zeros, dropped=dict(zeros))

    def update_fn(grads: optax.Updates, state: SparseTrainingState,
                  params: optax.Params | None = None, **extra_args: Any
                  ) -> tuple[optax.Updates, SparseTrainingState]:
        if params is None:
            raise ValueError("sparse_training needs the params: call tx.update(grads, state, params)")
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        old = state.masks
        masked_grads = masks_lib.apply(grads, old)

        def inner_update():
            return inner.update(masked_grads, state.inner_state, params, **extra_args)

        if rule.rewire is None:
            updates, inner_state = inner_update()
            return (_masked_updates(params, updates, old, None, init_value),
                    state._replace(count=optax.safe_int32_increment(state.count),
                                   inner_state=inner_state))

        rewire_now = rule.update_steps(state.count, start_step, end_step, update_every)
        updates, inner_state = inner_update()
        if rule.skips_update:  # no update on mask-update steps, but the inner schedules advance
            updates, inner_state = jax.lax.cond(
                rewire_now, lambda: (jax.tree.map(jnp.zeros_like, updates),
                                     keep_per_weight(inner, inner_state, state.inner_state)),
                lambda: (updates, inner_state))

        old_flat, params_flat, updates_flat = (paths.flatten(t) for t in (old, params, updates))
        layers = list(state.grown)
        grads_flat = paths.flatten(grads)

        def rewire_branch():
            layer_masks = {p: old_flat[p] for p in layers}
            weights = {p: jnp.where(old_flat[p], params_flat[p] + updates_flat[p], 0) for p in layers}
            new, rule_state = rule.rewire(Rewiring(
                layer_masks, weights, {p: grads_flat[p] for p in layers},
                fraction_at(state.count), update_seed(state.key, state.count),
                state.rule_state, step=state.count))
            grown = {p: active(new[p] & ~layer_masks[p]) for p in layers}
            dropped = {p: active(layer_masks[p] & ~new[p]) for p in layers}
            return new, rule_state, grown, dropped, state.count

        def keep_branch():
            return ({p: old_flat[p] for p in layers}, state.rule_state, state.grown, state.dropped,
                    state.last_update)

        new_layers, rule_state, grown, dropped, last_update = jax.lax.cond(
            rewire_now, rewire_branch, keep_branch)
        new = paths.unflatten(old, {**old_flat, **new_layers})
        born = jax.tree.map(lambda n, o: n & ~o, new, old)
        if rule.resets_optimizer_state:
            inner_state = reset(inner, inner_state, born)
        return _masked_updates(params, updates, new, born, init_value), SparseTrainingState(
            count=optax.safe_int32_increment(state.count), masks=new, key=state.key,
            inner_state=inner_state, rule_state=rule_state,
            mask_updates=state.mask_updates + rewire_now.astype(jnp.int32),
            last_update=last_update, grown=grown, dropped=dropped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_state(opt_state: optax.OptState) -> SparseTrainingState:
    """The one `SparseTrainingState` inside ``opt_state`` (at any depth: chain, inject_hyperparams),
    with plain arrays as leaves (also for ``nnx.Optimizer.opt_state``, which boxes them)."""
    is_ours = lambda node: isinstance(node, SparseTrainingState)  # noqa: E731
    found = [n for n in jax.tree.leaves(opt_state, is_leaf=is_ours) if is_ours(n)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one sparse_training state in opt_state, found "
                         f"{len(found)}")
    return nnx.as_pure(found[0])


def get_masks(opt_state: optax.OptState) -> Any:
    """The current masks (bool pytree with the params' structure) held in ``opt_state``."""
    return find_state(opt_state).masks


def report(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """Flat scalar metrics after a step, ready to log (also under ``jit``).

    ``density/<path>`` per rewired tensor, ``grown/<path>`` and ``dropped/<path>`` (connections changed
    at the last mask update), ``sparsity`` over the rewired tensors, ``mask_updates`` (how many so
    far) and ``mask_updated`` (1 if the last step changed the mask schedule-wise, else 0).
    """
    state = find_state(opt_state)
    flat = paths.flatten(state.masks)
    metrics, kept, size = {}, jnp.int32(0), 0
    for path in state.grown:
        n = active(flat[path])
        metrics[f"density/{path}"] = n / flat[path].size
        metrics[f"grown/{path}"] = state.grown[path]
        metrics[f"dropped/{path}"] = state.dropped[path]
        kept, size = kept + n, size + flat[path].size
    metrics["sparsity"] = 1.0 - kept / max(size, 1)
    metrics["mask_updates"] = state.mask_updates
    metrics["mask_updated"] = (state.last_update == state.count - 1).astype(jnp.int32)
    return {name: jnp.asarray(value, jnp.float32) for name, value in metrics.items()}
