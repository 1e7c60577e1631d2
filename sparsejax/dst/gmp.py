"""GMP (gradual magnitude pruning, Zhu & Gupta 2017): from the given masks to ``final_sparsity``.

``sparse_training(inner, masks, method="gmp", final_sparsity=s_f, start_step=t0, end_step=t1,
update_every=Δt)``. The pruning steps are t0, t0 + Δt, ... and t1 itself (``end_step`` is included,
and prunes even when t1 − t0 is not a multiple of Δt; step 0 may prune). After the pruning step t a
rewired tensor of N weights keeps exactly ``masks.kept_count(1 − s_t, N)`` of them, with

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (t1 − t0))³     (s_t = s_f when t1 = t0),

s_i being its sparsity in the masks given at init. The rule's state holds those initial kept
counts, so a resumed run (whose transformation is rebuilt from the current masks) keeps the
schedule. Step t0 changes nothing; the sparsity rises along the cubic, reaches s_f at t1 and stays.

``scope="layer"`` (default; TensorFlow's model_pruning, RigL's "prune" baseline, also prunes each
tensor to the target) keeps the largest |w| of each tensor; ``scope="global"`` ranks all rewired
tensors together (one threshold) and keeps ``kept_count(1 − s_t, ΣN)`` with s_i = 1 − Σkept / ΣN.
Only kept weights compete (pruned ones rank below every kept one), so the new mask is a subset of
the old: nothing grows and a pruned weight stays exactly 0. Magnitudes are those after the step's
optimizer update (model_pruning updates the mask after the train op); ties go to the lower flat
index (for ``global``, to the earlier tensor in path order).

The counts are computed on the host in float64 (one ``jax.pure_callback`` per pruning step, inside
the mask-update branch only), so they equal ``kept_count`` evaluated in Python exactly; float32 on
the device would be off by one for large tensors. (JAX does not write programs with host callbacks
to its persistent compilation cache, so a GMP train step compiles afresh in every process.)
``drop_fraction`` and ``drop_schedule`` are not used.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax import topk
from sparsejax.dst.rewiring import Layers, Rewiring, Rule, active

SCOPES = ("layer", "global")


def sparsity_at(step: int, initial_sparsity: float, final_sparsity: float, start_step: int,
                end_step: int) -> float:
    """s_t of the module docstring at a pruning step ``start_step <= step <= end_step``."""
    progress = 1.0 if end_step == start_step else (step - start_step) / (end_step - start_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def kept_at(step: int, initial_kept: int, size: int, final_sparsity: float, start_step: int,
            end_step: int) -> int:
    """Weights kept after the pruning step ``step`` by ``size`` weights that kept ``initial_kept``
    at init: ``kept_count(1 − s_t, size)``, and never more than ``initial_kept``."""
    if size == 0:
        return 0
    s_t = sparsity_at(step, 1.0 - initial_kept / size, final_sparsity, start_step, end_step)
    return min(masks_lib.kept_count(1.0 - s_t, size), initial_kept)


def is_pruning_step(step: jax.Array, start_step: int, end_step: int, update_every: int
                    ) -> jax.Array:
    """Whether ``step`` prunes: t0 <= t <= t1 and ((t − t0) % Δt == 0 or t == t1); bool scalar."""
    step = jnp.asarray(step, jnp.int32)
    return ((step >= start_step) & (step <= end_step)
            & (((step - start_step) % update_every == 0) | (step == end_step)))


def _check_initial(final_sparsity: float, initial: dict[str, jax.Array], sizes: dict[str, int],
                   scope: str) -> None:
    """``ValueError`` if reaching ``final_sparsity`` would need growth (skipped for abstract masks,
    e.g. under ``jax.eval_shape``, where only the state's shapes matter)."""
    if any(isinstance(n, jax.core.Tracer) for n in initial.values()):
        return
    kept = {p: int(n) for p, n in initial.items()}
    if scope == "global":
        kept = {"all rewired tensors": sum(kept.values())}
        sizes = {"all rewired tensors": sum(sizes.values())}
    for name, n in kept.items():
        if masks_lib.kept_count(1.0 - final_sparsity, sizes[name]) > n:
            raise ValueError(
                f"gmp: final_sparsity {final_sparsity} is below the initial sparsity "
                f"{1.0 - n / sizes[name]:.6g} of {name} ({n} of {sizes[name]} kept); GMP only "
                f"prunes")


def rule(final_sparsity: float | None = None, scope: str = "layer", *, start_step: int = 0,
         end_step: int | None = None, update_every: int = 1) -> Rule:
    """GMP's rule (module docstring): prune to ``final_sparsity`` by magnitude, per ``scope``.

    ``start_step``, ``end_step`` and ``update_every`` come from ``sparse_training`` (not options).
    ``ValueError`` for a missing ``final_sparsity`` or one outside [0, 1), or an unknown ``scope``;
    at init, for masks already sparser than ``final_sparsity`` (per tensor, or over all of them for
    ``global``).
    """
    del update_every  # the pruning steps come from `update_steps`, called with the same arguments
    if final_sparsity is None:
        raise ValueError("gmp needs the option final_sparsity (the target, in [0, 1))")
    if not 0.0 <= float(final_sparsity) < 1.0:
        raise ValueError(f"gmp: final_sparsity is {final_sparsity}; it must lie in [0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"gmp: unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    final_sparsity = float(final_sparsity)

    def init_state(layer_masks: Layers) -> dict[str, jax.Array]:
        initial = {p: active(m) for p, m in layer_masks.items()}
        _check_initial(final_sparsity, initial, {p: m.size for p, m in layer_masks.items()}, scope)
        return initial

    def rewire(r: Rewiring) -> tuple[Layers, Any]:
        paths = list(r.masks)
        if not paths:
            return {}, r.state
        initial = jnp.stack([r.state[p] for p in paths])
        sizes = [r.masks[p].size for p in paths]
        if scope == "global":
            initial, sizes = jnp.sum(initial)[None], [sum(sizes)]

        def host(step, initial):
            return np.array([kept_at(int(step), int(n), size, final_sparsity, start_step, end_step)
                             for n, size in zip(initial, sizes)], np.int32)

        kept = jax.pure_callback(host, jax.ShapeDtypeStruct((len(sizes),), jnp.int32),
                                 r.step, initial, vmap_method="sequential")
        scores = {p: jnp.where(m, jnp.abs(r.weights[p]), -jnp.inf) for p, m in r.masks.items()}
        now = {p: active(m) for p, m in r.masks.items()}
        if scope == "global":
            total = jnp.sum(jnp.stack(list(now.values())))
            return topk.global_masks(scores, jnp.minimum(kept[0], total)), r.state
        return {p: topk.mask(scores[p], jnp.minimum(kept[i], now[p]))
                for i, p in enumerate(paths)}, r.state

    return Rule(rewire=rewire, init_state=init_state, init_from_masks=True,
                update_steps=is_pruning_step)
