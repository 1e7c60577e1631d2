"""When the mask may change, and how much of it: update steps and drop-fraction schedules.

Step ``t`` is the number of ``update()`` calls made before the current one (0 for the first call).
A mask update happens at step ``t`` when ``start_step <= t < end_step``, ``(t - start_step)`` is a
multiple of ``update_every``, and ``t > 0``. Step 0 never rewires: the caller's params need not be
masked before the first step (the first update zeroes them), and a grown weight must start from an
exact 0. So with ``start_step=0, update_every=100`` the mask changes at steps 100, 200, ... as in
RigL, where the first rewiring follows ``update_every`` steps of training.

Drop fraction f(t), with f0 the initial fraction, T = end_step − start_step and τ = min(t − start_step, T):

- ``"constant"``: f(t) = f0.
- ``"cosine"`` (RigL): f(t) = f0 · 0.5 · (1 + cos(π τ / T)).
- ``"exponential"``: f(t) = f0 · 0.01^(τ / T), i.e. from f0 down to f0 / 100 at ``end_step``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

EXPONENTIAL_END_RATIO = 0.01

DROP_SCHEDULES = ("constant", "cosine", "exponential")


def drop_fraction_schedule(kind: str, drop_fraction: float, start_step: int, end_step: int
                           ) -> optax.Schedule:
    """The schedule ``t -> f(t)`` named ``kind`` (see the module docstring); ``ValueError`` if unknown."""
    if kind not in DROP_SCHEDULES:
        raise ValueError(f"unknown drop_schedule {kind!r}; use one of {', '.join(DROP_SCHEDULES)}")
    span = max(end_step - start_step, 1)
    if kind == "constant":
        decay = optax.constant_schedule(drop_fraction)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(drop_fraction, decay_steps=span)
    else:
        decay = optax.exponential_decay(drop_fraction, transition_steps=span,
                                        decay_rate=EXPONENTIAL_END_RATIO,
                                        end_value=drop_fraction * EXPONENTIAL_END_RATIO)
    return lambda step: jnp.asarray(decay(jnp.maximum(step - start_step, 0)), jnp.float32)


def is_update_step(step: jax.Array, start_step: int, end_step: int, update_every: int) -> jax.Array:
    """Whether the mask changes at ``step`` (bool scalar; ``step`` may be traced)."""
    step = jnp.asarray(step, jnp.int32)
    return ((step > 0) & (step >= start_step) & (step < end_step)
            & ((step - start_step) % update_every == 0))
