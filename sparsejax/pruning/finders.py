"""``find_mask``: masks at initialization from random, magnitude, SNIP, GraSP or SynFlow scores.

ALGORITHMS.md, "Masks at initialization". Scores come from ``sparsejax.pruning.saliency``; the mask
keeps the largest ones with the exact top-k of ``sparsejax.topk``:

- ``scope='global'`` (Synaptic-Flow's and ToST's default): one ranking over all prunable tensors;
  exactly ``kept_count(1 - sparsity, Σ N)`` = round((1 − s)·Σ N) weights are kept in total.
- ``scope='layer'``: each tensor named in ``densities`` keeps exactly ``kept_count(d, N)`` weights,
  the rule of ``sparsejax.masks.from_scores`` (default densities: uniform at ``sparsity``; see
  ``sparsejax.distributions`` for ERK and others). Prunable tensors not named stay dense.
- ``structure='n:m'`` (e.g. '2:4'): N:M structured masks, every group of M consecutive weights along
  the reduction axes keeps its N largest scores (``sparsejax.masks.n_of_m``); tensors whose
  reduction size is not a multiple of M stay dense (``sparsejax.masks.n_of_m_unfit``, as NVIDIA
  ASP skips them). N:M fixes each tensor's density, so ``sparsity`` must be 1 − N/M and
  per-layer densities (``scope='layer'``, ``densities``) are refused.

Non-prunable leaves (biases, BatchNorm, ghost parameters, anything ``filter_fn`` rejects) get
all-True masks; the result always has exactly the params' tree structure.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import distributions, masks as masks_lib, paths, topk
from sparsejax.pruning import saliency

METHODS = ("random", "magnitude", "snip", "grasp", "synflow")
SCOPES = ("global", "layer")
SYNFLOW_ROUNDS = 100

Kept = int | dict[str, int]


def _keep(scores: dict[str, jax.Array], kept: Any) -> dict[str, jax.Array]:
    """Top-``kept`` of ``scores``: globally if ``kept`` is a number, per tensor if it is a dict."""
    if isinstance(kept, dict):
        return {p: topk.mask(s, kept[p]) for p, s in scores.items()}
    return topk.global_masks(scores, kept)


keep_top = jax.jit(_keep)  # ``kept`` is traced: SynFlow's rounds and IMP reuse one compilation.


class _Target:
    """What to keep: the tensors that are ranked and, for a round exponent e, how many survive.

    Global: ``kept_count(d**e, Σ N)`` in total; layer: ``kept_count(d_l**e, N_l)`` per tensor;
    N:M ``structure``: ``kept_count((N/M)**e, M)`` per group of M. e = 1 is the final mask;
    SynFlow's round r uses e = (r + 1) / rounds.
    """

    def __init__(self, params: Any, sparsity: float, scope: str,
                 densities: Mapping[str, float] | None, filter_fn: paths.FilterFn | None,
                 structure: tuple[int, int] | None = None):
        self.structure, self.filter_fn = structure, filter_fn
        prunable = paths.prunable(params, filter_fn, required=True)
        if scope == "global":
            if densities is not None:
                raise ValueError("densities are per-layer targets and apply only to scope='layer'; "
                                 "drop them or pass scope='layer'")
            self.density: float | dict[str, float] = 1.0 - sparsity
            self.sizes = {p: int(np.size(w)) for p, w in prunable.items()}
        else:
            if densities is None:
                densities = distributions.uniform(params, sparsity, filter_fn=filter_fn)
            masks_lib.check_densities(params, densities)
            for path in densities:
                if path not in prunable:
                    raise ValueError(f"density given for {path!r}, which is not prunable (biases, "
                                     "BatchNorm and ghost parameters are never pruned); pass a "
                                     "filter_fn that selects it to prune it anyway")
            self.density = {p: float(d) for p, d in densities.items()}
            self.sizes = {p: int(np.size(prunable[p])) for p in densities}

    def kept(self, exponent: float = 1.0) -> Kept:
        if isinstance(self.density, dict):
            return {p: masks_lib.kept_count(self.density[p] ** exponent, n)
                    for p, n in self.sizes.items()}
        return masks_lib.kept_count(self.density ** exponent, sum(self.sizes.values()))

    def select(self, scores: dict[str, jax.Array], exponent: float = 1.0) -> dict[str, jax.Array]:
        """The masks keeping the largest ``scores`` (the ranked tensors) at round exponent e."""
        if self.structure is None:
            return keep_top(scores, self.kept(exponent))
        n, m = self.structure
        k = masks_lib.kept_count((n / m) ** exponent, m)
        if k == m:  # an early SynFlow round that keeps every weight
            return {p: _ones(np.shape(s)) for p, s in scores.items()}
        return masks_lib.n_of_m(scores, k, m, self.filter_fn)


def check_structure(structure: str | None, sparsity: float, scope: str = "global",
                    densities: Mapping[str, float] | None = None) -> tuple[int, int] | None:
    """``(n, m)`` of an N:M ``structure`` ('n:m') the finders can keep, None for ''/None.

    ``ValueError`` (one line) for a malformed structure, per-layer densities (``scope='layer'``
    or ``densities``: N:M fixes every tensor's density at n/m) or a ``sparsity`` other than 1 − n/m.
    """
    n_of_m = masks_lib.parse_structure(structure)
    if n_of_m is None:
        return None
    n, m = n_of_m
    if scope != "global" or densities is not None:
        raise ValueError(f"structure {structure!r} keeps {n} of every {m} weights in each tensor, "
                         "so per-layer densities do not apply; use scope='global' without "
                         "densities")
    if abs(sparsity - (1 - n / m)) > 1e-9:
        raise ValueError(f"sparsity {sparsity} contradicts structure {structure!r}, whose sparsity "
                         f"is {1 - n / m:g}; set sparsity to {1 - n / m:g}")
    return n_of_m


def _check(method: str, sparsity: float, scope: str, rounds: int | None) -> float:
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {list(METHODS)}")
    sparsity = distributions.check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose 'global' (one ranking over all prunable "
                         "tensors) or 'layer' (per-tensor densities)")
    if rounds is not None:
        if method != "synflow":
            raise ValueError(f"rounds applies only to 'synflow', not {method!r}; drop it")
        if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
            raise ValueError(f"synflow rounds is {rounds!r}; expected a positive int (default 100)")
    return sparsity


@jax.jit
def _any_nan(scores: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {p: jnp.isnan(s).any() for p, s in scores.items()}


def _check_finite(scores: dict[str, jax.Array], method: str) -> None:
    for path, nan in _any_nan(scores).items():
        if bool(nan):
            raise ValueError(f"{method} scores of {path!r} contain NaN; check that apply_fn "
                             "returns finite logits for the given params and batches")


def _ones(shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.ones(shape, bool))


def _full(params: Any, chosen: Mapping[str, jax.Array]) -> Any:
    """The params-shaped mask: ``chosen`` where given, all-True elsewhere."""
    return paths.unflatten(params, {p: chosen[p] if p in chosen else _ones(np.shape(leaf))
                                    for p, leaf in paths.flatten(params).items()})


@functools.partial(jax.jit, static_argnames=("apply_fn", "structure", "input_shape", "per_layer"))
def _synflow_ranks(weights, rest, masks, *, apply_fn, structure, input_shape, per_layer):
    """SynFlow scores of the tensors in ``masks`` as float32 ranks, pruned weights at −1.

    The float64 scores are divided by their maximum (over all ranked tensors, or per tensor when
    ``per_layer``; a positive factor does not change the ranking) so that they fit the float32 keys
    of ``sparsejax.topk``. Also returns whether all scores were finite.
    """
    s = saliency.synflow_flow(weights, rest, masks, apply_fn=apply_fn, structure=structure,
                              input_shape=input_shape)
    s = {p: s[p] for p in masks}
    finite = jnp.all(jnp.stack([jnp.isfinite(v).all() for v in s.values()]))
    if per_layer:
        scale = {p: jnp.max(v) for p, v in s.items()}
    else:
        top = jnp.max(jnp.stack([jnp.max(v) for v in s.values()]))
        scale = {p: top for p in s}
    ranks = {p: jnp.where(masks[p], (v / jnp.where(scale[p] > 0, scale[p], 1)).astype(jnp.float32),
                          jnp.float32(-1)) for p, v in s.items()}
    return ranks, finite


def _synflow(params: Any, apply_fn: saliency.ApplyFn, input_shape: tuple[int, ...],
             target: _Target, rounds: int, filter_fn: paths.FilterFn | None
             ) -> dict[str, jax.Array]:
    """Iterative SynFlow: round r keeps the exponential-schedule count d^((r+1)/rounds) (with N:M
    structure, kept_count((N/M)^((r+1)/rounds), M) per group of M, so every round is structured).

    Scores are computed in float64 (``jax.enable_x64`` locally) on |θ| ⊙ (current mask). Pruned
    weights rank below every live one, so each round's mask lies inside the previous one.
    """
    structure, weights, rest = saliency.split(params, filter_fn)
    with jax.enable_x64(True):
        weights, rest = saliency.as_float64(weights), saliency.as_float64(rest)
    current = {p: _ones(np.shape(weights[p])) for p in target.sizes}
    for r in range(rounds):
        with jax.enable_x64(True):
            ranks, finite = _synflow_ranks(weights, rest, current, apply_fn=apply_fn,
                                           structure=structure, input_shape=input_shape,
                                           per_layer=(isinstance(target.density, dict)
                                                      or target.structure is not None))
        if not bool(finite):
            raise ValueError(f"synflow scores overflowed at round {r + 1} of {rounds} even with "
                             "float64 inputs; check that apply_fn does not force float32 "
                             "computation (e.g. a module dtype) and that the network is not too "
                             "deep for float64")
        current = target.select(ranks, (r + 1) / rounds)
    return current


def find_mask(method: str, params: Any, sparsity: float, *,
              apply_fn: saliency.ApplyFn | None = None,
              batches: Iterable[saliency.Batch] | None = None,
              input_shape: Sequence[int] | None = None, scope: str = "global",
              densities: Mapping[str, float] | None = None,
              filter_fn: paths.FilterFn | None = None, rounds: int | None = None,
              temperature: float = 200.0, rng: jax.Array | None = None,
              structure: str | None = None) -> Any:
    """A mask (bool pytree shaped like ``params``) at ``sparsity`` from ``method``'s scores.

    Args:
      method: 'random' (uniform positions; ``rng``, default ``jax.random.key(0)``), 'magnitude'
        (|w|), 'snip' (|g ⊙ w|, g summed over ``batches``), 'grasp' (θ ⊙ Hg at ``temperature``,
        largest kept) or 'synflow' (data-free, iterated ``rounds`` times, default 100, exponential
        schedule d^((r+1)/R)). See ``sparsejax.pruning.saliency`` for each rule.
      params: the dense initialization.
      sparsity: fraction of zeros in [0, 1); with ``scope='layer'`` it sets the default densities.
      apply_fn: ``apply_fn(params, x) -> logits``, closing over BatchNorm state and the like
        (snip, grasp, synflow). For synflow pass BatchNorm in eval mode (``train=False``).
      batches: iterable of ``{"x": inputs, "y": integer labels}`` (snip, grasp).
      input_shape: shape of SynFlow's all-ones input, batch dimension included, e.g. (1, 32, 32, 3).
      scope: 'global' (one threshold over all prunable tensors) or 'layer'.
      densities: ``{path: density}`` for ``scope='layer'`` (default uniform at ``sparsity``).
      filter_fn: which tensors are prunable (default ``sparsejax.paths.default_filter``).
      rounds: SynFlow's number of rounds.
      temperature: GraSP divides the logits by it (default 200).
      rng: PRNG key for 'random'.
      structure: 'n:m' (e.g. '2:4') for N:M structured masks (module docstring); '' or None: none.

    Returns:
      Masks with exactly the params' structure: global scope keeps exactly round((1 − s)·Σ N)
      prunable weights in total, layer scope exactly round(d·N) per named tensor (at least 1 unless
      d = 0), N:M exactly N per group of M; non-prunable leaves are all True.
    """
    sparsity = _check(method, sparsity, scope, rounds)
    target = _Target(params, sparsity, scope, densities, filter_fn,
                     check_structure(structure, sparsity, scope, densities))
    if method == "synflow":
        chosen = _synflow(params, saliency.check_apply_fn(apply_fn, "synflow"),
                          saliency.check_input_shape(input_shape), target,
                          SYNFLOW_ROUNDS if rounds is None else int(rounds), filter_fn)
        return _full(params, chosen)
    if method == "random":
        shapes = {p: np.shape(w) for p, w in paths.prunable(params, filter_fn).items()}
        scores = masks_lib.uniform_scores(jax.random.key(0) if rng is None else rng, shapes)
    else:
        scores = saliency.scores(method, params, apply_fn=apply_fn, batches=batches,
                                 temperature=temperature, filter_fn=filter_fn)
        _check_finite(scores, method)
    scores = {p: scores[p] for p in target.sizes}
    return _full(params, target.select(scores))
