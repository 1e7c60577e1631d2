"""What every DST rule is made of: the rule record, what it sees, magnitude removal and growth.

A rule works on flat dicts ``{path: array}`` over the tensors that take part (``Layers``), never on
the whole params tree. Selections are exact (``sparsejax.topk``) with traced counts, so one compiled
step serves every drop fraction.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax import topk
from sparsejax.dst import timing

Layers = dict[str, jax.Array]


class Rewiring(NamedTuple):
    """What a rule sees on a mask-update step (dicts over the tensors that take part)."""
    masks: Layers             # current masks (bool)
    weights: Layers           # weights after this step's optimizer update, exactly 0 where pruned
    grads: Layers             # dense gradients, also at pruned positions (device-averaged)
    drop_fraction: jax.Array  # f(t), float32 scalar
    seed: jax.Array           # uint32[2], different at every update (see `update_seed`)
    state: Any                # the rule's own state (DSR: its threshold)
    step: jax.Array | None = None  # int32: update() calls before this one (GMP's schedule)


class Rule(NamedTuple):
    """One DST rule and how the transformation treats it.

    ``rewire`` maps a ``Rewiring`` to ``(new masks, new rule state)``; None means the mask never
    changes (static). ``new_weight_init`` is the value of a grown connection; ``skips_update`` drops
    the optimizer update on mask-update steps; ``resets_optimizer_state`` zeroes the optimizer state
    of grown connections (both RigL). ``init_state()`` is the rule's state at init; with
    ``init_from_masks`` it is called with the initial masks of the rewired tensors (GMP keeps their
    initial counts). ``update_steps(step, start_step, end_step, update_every)`` says when the mask
    may change (default ``timing.is_update_step``; GMP's pruning steps include ``end_step``).
    """
    rewire: Callable[[Rewiring], tuple[Layers, Any]] | None
    new_weight_init: float = 0.0
    skips_update: bool = False
    resets_optimizer_state: bool = False
    init_state: Callable[..., Any] = tuple
    init_from_masks: bool = False
    update_steps: Callable[[jax.Array, int, int, int], jax.Array] = timing.is_update_step


def active(mask: jax.Array) -> jax.Array:
    """Number of kept connections in ``mask`` (int32 scalar)."""
    return jnp.sum(mask, dtype=jnp.int32)


def remove_smallest(r: Rewiring) -> tuple[Layers, Layers]:
    """Magnitude removal per layer: drops floor(f · active) smallest-|w| kept weights in each tensor.

    Returns ``(kept masks, number dropped per layer)``. Ties go to the lower flat index.
    """
    kept, dropped = {}, {}
    for path, mask in r.masks.items():
        n_active = active(mask)
        dropped[path] = jnp.floor(r.drop_fraction * n_active.astype(jnp.float32)).astype(jnp.int32)
        scores = jnp.where(mask, jnp.abs(r.weights[path]), -jnp.inf)
        kept[path] = topk.mask(scores, n_active - dropped[path])
    return kept, dropped


def grow(scores: jax.Array, eligible: jax.Array, n: jax.Array) -> jax.Array:
    """The ``n`` eligible positions with the largest ``scores`` (``n`` <= eligible count)."""
    return topk.mask(jnp.where(eligible, scores, -jnp.inf), n)


def refill(scores: jax.Array, keep: jax.Array, n: jax.Array, structure: tuple[int, int] | None
           ) -> jax.Array:
    """``keep`` plus ``n`` connections not kept at the largest ``scores`` (``grow``).

    With an N:M ``structure`` (N, M) and a tensor that splits into groups of M
    (``sparsejax.masks.fits_n_of_m``), each group instead gets back as many as it lacks,
    N − (kept in the group), at its own largest scores among its connections not kept: every group
    keeps exactly N again, and the total grown is ``n`` when the removal dropped ``n`` from N:M
    masks. Other tensors grow as without structure.
    """
    if structure is None or not masks_lib.fits_n_of_m(keep.shape, structure[1]):
        return keep | grow(scores, ~keep, n)
    n_kept, m = structure
    lacking = n_kept - masks_lib.group_counts(keep, m)
    return keep | masks_lib.top_in_groups(scores, lacking, m, eligible=~keep)


_GOLDEN = 0x9E3779B9


def _mix(z: jax.Array) -> jax.Array:
    """A bijective 32-bit integer mixer (MurmurHash3's finaliser)."""
    z = z ^ (z >> 16)
    z = z * jnp.uint32(0x85EBCA6B)
    z = z ^ (z >> 13)
    z = z * jnp.uint32(0xC2B2AE35)
    return z ^ (z >> 16)


def update_seed(key: jax.Array, step: jax.Array) -> jax.Array:
    """The uint32[2] seed of the mask update at ``step``: a hash of the state's key and the step."""
    return _mix(jnp.asarray(key, jnp.uint32) ^ _mix(jnp.asarray(step).astype(jnp.uint32)))


def random_scores(seed: jax.Array, stream: int, shape: tuple[int, ...]) -> jax.Array:
    """Positive float32 scores in a uniformly random order, for random growth (SET, DSR, GGR).

    A counter-based generator: the flat index is hashed with ``seed`` and ``stream`` (the layer's
    number) through a bijection per (seed, stream), and its top 30 bits become a normal positive
    float, so equal scores are rare and none is denormal. This costs one elementwise pass and no
    compile time; ``jax.random`` (threefry) costs about ten passes on CPU, compiles slowly, and
    ``uniform`` gives only 2^23 distinct values, whose ties make the top-k break them by index.
    """
    first = _mix(seed[0] ^ jnp.uint32((stream * _GOLDEN) & 0xFFFFFFFF))
    second = _mix(seed[1] + first)
    index = jax.lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    z = _mix(_mix(index * jnp.uint32(_GOLDEN) ^ first) ^ second)
    bits = (z >> 2) + jnp.uint32(1 << 23)  # exponent field in [1, 128]: normal and finite
    return jax.lax.bitcast_convert_type(bits, jnp.float32)
