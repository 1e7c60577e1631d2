"""The lenses by name, run on one state of a network: what the train loop's analysis hook and
``python -m launch.analyze`` both call.

A *subject* is a model, its variables, the masks and the model's call arguments (α, β of the ghost
phase); every loss below is the cross-entropy of the model in eval mode (BatchNorm running
statistics), averaged over the given batches. Each lens returns a JSON-ready dict; `scalars` turns it
into the flat numbers that go to TensorBoard and ``DIR/analysis/<lens>.jsonl``.

- ``activations``: fraction of exactly-zero (and |y| < ε) activations per site and stage (paper 000
  Table 1);
- ``hessian``: top Hessian eigenvalue of the active weights (power iteration, paper 000 Figs. 2/9a,
  paper 002: mean over 10 batches);
- ``trace``: Hutchinson's estimate of the Hessian trace of the active weights;
- ``gradient_flow``: norm of the gradient of the active weights, total and per layer (paper 000 Fig. 9b);
- ``landscape``: loss along a random filter-normalised direction and along the top eigenvector (1-D),
  and over two random directions (2-D) (paper 000 Figs. 8/10, paper 002 Figs. A11/A13);
- ``structure``: per-layer density and active weights, empty neurons and inputs, dense and sparse
  multiply-adds (paper 004 Fig. 2, Table 4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax

from sparsejax.analysis import activations, gradient_flow, hessian, landscape, structure

LENSES = ("activations", "hessian", "trace", "gradient_flow", "landscape", "structure")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much work each lens does (defaults: the papers' and the reference codes')."""
    hessian_iterations: int = 100  # power iterations at most (PyHessian: 100, tol 1e-3)
    hessian_tol: float = 1e-3
    trace_samples: int = 20  # Rademacher vectors
    landscape_steps: int = 21  # points per axis, over [-span, span]
    landscape_span: float = 1.0
    landscape_batches: int = 2  # the surfaces use the first of the batches only (a grid is costly)


@dataclasses.dataclass(frozen=True)
class Subject:
    """One state of a network: ``model.apply(variables, x, train=False, **inputs)``; ``masks`` has
    the params' structure."""
    model: Any
    variables: Mapping[str, Any]
    masks: Any
    inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def params(self) -> Any:
        return self.variables["params"]

    def loss_fn(self) -> Callable[[Any, Mapping[str, Any]], jax.Array]:
        """``loss_fn(params, batch)``: mean cross-entropy in eval mode."""
        model, rest, inputs = self.model, {k: v for k, v in self.variables.items()
                                            if k != "params"}, dict(self.inputs)

        def loss_fn(params, batch):
            logits = model.apply({**rest, "params": params}, batch["image"], train=False, **inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        return loss_fn


def check(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple; ``ValueError`` naming an unknown lens."""
    for name in names:
        if name not in LENSES:
            raise ValueError(f"unknown lens {name!r}; use any of {', '.join(LENSES)}")
    return tuple(names)


def run(names: Sequence[str], subject: Subject, batches: Sequence[Mapping[str, Any]], *,
        rng: jax.Array, input_shape: Sequence[int], settings: Settings = Settings()
        ) -> dict[str, dict]:
    """Runs the lenses ``names`` (in `LENSES` order) on ``subject`` over ``batches``.

    ``batches``: dicts with ``"image"`` (N, H, W, C) and ``"label"`` (N,); ``input_shape``: one
    image's (H, W, C), for the multiply-add count. Returns ``{lens: result}``.
    """
    names = check(names)
    if not batches:
        raise ValueError("the lenses got no batches; pass at least one {'image', 'label'} batch")
    loss_fn, s = subject.loss_fn(), settings
    keys = dict(zip(LENSES, jax.random.split(rng, len(LENSES))))
    results: dict[str, dict] = {}
    eigenvector = None
    for name in (n for n in LENSES if n in names):
        if name == "activations":
            results[name] = activations.activation_sparsity(
                subject.model, subject.variables, batches, **subject.inputs)
        elif name == "hessian":
            value, eigenvector = hessian.top_eigenvalue(
                loss_fn, subject.params, subject.masks, batches, iterations=s.hessian_iterations,
                tol=s.hessian_tol, rng=keys[name])
            results[name] = {"eigenvalue": float(value)}
        elif name == "trace":
            mean, error = hessian.trace(loss_fn, subject.params, subject.masks, batches,
                                        samples=s.trace_samples, rng=keys[name])
            results[name] = {"trace": float(mean), "standard_error": float(error)}
        elif name == "gradient_flow":
            results[name] = gradient_flow.average_gradient_norm(loss_fn, subject.params,
                                                                subject.masks, batches)
        elif name == "landscape":
            results[name] = _landscape(loss_fn, subject, batches[:s.landscape_batches], keys[name],
                                       eigenvector, s)
        else:
            report = structure.report(subject.params, subject.masks)
            macs = structure.flops(subject.model, subject.variables, subject.masks,
                                   tuple(input_shape))
            results[name] = {"report": report, "flops": macs}
    return _jsonable(results)


def _landscape(loss_fn, subject: Subject, batches, rng, eigenvector, s: Settings) -> dict:
    one, two, three = jax.random.split(rng, 3)
    grid = dict(steps=s.landscape_steps, span=s.landscape_span)
    alphas, random_1d = landscape.surface_1d(loss_fn, subject.params, subject.masks, batches,
                                             rng=one, **grid)
    if eigenvector is None:  # the loss along the top eigenvector needs it
        _, eigenvector = hessian.top_eigenvalue(loss_fn, subject.params, subject.masks, batches,
                                                iterations=s.hessian_iterations,
                                                tol=s.hessian_tol, rng=two)
    _, eigen_1d = landscape.surface_1d(loss_fn, subject.params, subject.masks, batches,
                                       direction=eigenvector, **grid)
    _, betas, random_2d = landscape.surface_2d(loss_fn, subject.params, subject.masks, batches,
                                               rng=three, **grid)
    return {"alphas": alphas, "random_1d": random_1d, "eigen_1d": eigen_1d, "betas": betas,
            "random_2d": random_2d}


def scalars(name: str, result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one lens's result worth a line over training (TensorBoard, jsonl)."""
    if name == "activations":
        return {f"{name}/zero/{stage}": v for stage, v in result["stages"]["zero"].items()}
    if name == "gradient_flow":
        return {f"{name}/total": result["total"],
                **{f"{name}/{path}": v for path, v in result["layers"].items()}}
    if name in ("hessian", "trace"):
        return {f"{name}/{k}": v for k, v in result.items()}
    if name == "landscape":
        middle = len(result["alphas"]) // 2
        return {f"{name}/loss": result["random_1d"][middle]}
    total = result["report"]["total"]
    return {f"{name}/density": total["density"],
            f"{name}/empty_neuron_fraction": total["empty_neuron_fraction"],
            f"{name}/condensed_size": total["condensed_size"],
            f"{name}/dense_macs": result["flops"]["dense"],
            f"{name}/sparse_macs": result["flops"]["sparse"]}


def _jsonable(tree: Any) -> Any:
    """Arrays as lists and numpy scalars as Python numbers, for ``json.dumps``."""
    if isinstance(tree, Mapping):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, (np.ndarray, jax.Array)):
        return np.asarray(tree).tolist()
    if isinstance(tree, np.generic):
        return tree.item()
    return tree
