"""The papers' figures as PNG files: layer densities, mask images, curves over training, loss
landscapes, activation sparsity.

Each function draws one matplotlib figure with the Agg canvas (no pyplot, no global state, no
display needed), writes it as a PNG to ``path`` through `sparsejax.files.write_atomic` (a temporary
file in the same directory renamed over ``path``, so a reader never sees half a file) and returns
``path`` as a `pathlib.Path`. Bad input (empty, mismatched shapes, fractions outside [0, 1]) raises
``ValueError`` with one line before anything is written.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sparsejax import files

DPI = 120
LOSS_CLIP = 8.0  # paper 002 Fig. 8: "z-axis ... clamped at 8.0 for better visualization"


def _figure(width: float = 6.4, height: float = 4.8) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> pathlib.Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    files.write_atomic(path, buffer.getvalue())
    return pathlib.Path(path)


def _vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a non-empty, finite 1-D float array."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} has shape {array.shape}; pass a non-empty 1-D sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values; pass finite numbers")
    return array


def _fractions(values: Mapping[str, Any], name: str) -> np.ndarray:
    """The values of ``values`` (non-empty) as fractions in [0, 1]."""
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"{name} is {values!r}; pass a non-empty dict of fractions in [0, 1]")
    array = _vector(list(values.values()), name)
    if np.any((array < 0) | (array > 1)):
        raise ValueError(f"{name} holds values outside [0, 1] (min {array.min()}, max {array.max()}); "
                         f"pass fractions, not percentages")
    return array


def layer_densities(report_or_densities: Mapping[str, Any], path: str | os.PathLike, *,
                    counts: Mapping[str, int] | None = None,
                    title: str | None = None) -> pathlib.Path:
    """Bars of per-layer density and, if known, active weights per layer (GGR Figure 2).

    ``report_or_densities`` is ``sparsejax.analysis.structure.report(...)`` (its ``"layers"``
    give density and active weights) or a flat ``{path: density}`` dict
    (``sparsejax.masks.layer_densities``), in which case ``counts`` = ``{path: active weights}``
    for the same paths adds the second panel. Layers are drawn in the densities' order.
    """
    layers_report = report_or_densities.get("layers") if isinstance(report_or_densities,
                                                                      Mapping) else None
    if isinstance(layers_report, Mapping):
        if counts is not None:
            raise ValueError("counts given with a structure report; the report already holds the "
                             "active weights, pass one or the other")
        densities = {p: layer["density"] for p, layer in layers_report.items()}
        counts = {p: layer["active"] for p, layer in layers_report.items()}
    else:
        densities = report_or_densities
    density = _fractions(densities, "densities")
    layers = list(densities)
    if counts is not None:
        if set(counts) != set(layers):
            odd = sorted(set(counts) ^ set(layers))
            raise ValueError(f"counts and densities differ in {len(odd)} layers (e.g. {odd[0]!r}); "
                             f"pass counts for exactly the densities' paths")
        active = _vector([counts[layer] for layer in layers], "counts")
        if np.any(active < 0):
            raise ValueError("counts holds negative values; pass numbers of active weights")

    panels = 1 if counts is None else 2
    figure = _figure(max(6.4, 0.22 * len(layers) + 2), 2.6 * panels + 1.4)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    positions = np.arange(len(layers))
    axes[0].bar(positions, density)
    axes[0].set_ylabel("density")
    axes[0].set_ylim(0, 1)
    if counts is not None:
        axes[1].bar(positions, active, color="tab:orange")
        axes[1].set_ylabel("active weights")
    axes[-1].set_xticks(positions)
    axes[-1].set_xticklabels([layer.removesuffix("/kernel") for layer in layers], rotation=90,
                             fontsize=7)
    if title:
        axes[0].set_title(title)
    return _save(figure, path)


def mask_matrix(mask: Any) -> np.ndarray:
    """A kernel's mask as a 2-D bool matrix (rows, out): True = active (non-zero) weight.

    A dense kernel (in, out) stays as is; a conv kernel HWIO (kh, kw, in, out) becomes
    (kh·kw·in, out), row ``(h·kw + w)·in + i`` (all axes but the last flattened in order).
    """
    array = np.asarray(mask)
    if array.ndim < 2 or array.size == 0:
        raise ValueError(f"mask has shape {array.shape}; pass a non-empty kernel with ndim >= 2 "
                         f"(dense (in, out) or conv HWIO)")
    return array.reshape(-1, array.shape[-1]) != 0


def mask_image(mask: Any, path: str | os.PathLike, *, title: str | None = None) -> pathlib.Path:
    """A kernel's mask as a black-and-white image, white = active weight (GGR Figure 3).

    Rows × columns as `mask_matrix`: (in or kh·kw·in) × out. The default title counts the active
    weights.
    """
    matrix = mask_matrix(mask)
    figure = _figure(5.0, 5.0)
    axes = figure.subplots()
    axes.imshow(matrix.astype(float), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                aspect="auto")
    axes.set_xlabel(f"output ({matrix.shape[1]})")
    axes.set_ylabel(f"{'input' if np.ndim(mask) == 2 else 'kernel position × input'} "
                    f"({matrix.shape[0]})")
    axes.set_title(title or f"{int(matrix.sum())} of {matrix.size} active")
    return _save(figure, path)


def over_training(series: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *,
                  ylabel: str, xlabel: str = "step", log_scale: bool = False,
                  title: str | None = None) -> pathlib.Path:
    """One line per run of a quantity over training, e.g. the top Hessian eigenvalue or the
    average gradient flow of vanilla vs ToST (paper 002 Fig. A11 draws eigenvalues on a log scale).

    ``series`` is ``{run label: [(step, value), ...]}``, each run non-empty; a third column
    ``(x, value, spread)`` draws error bars (the accuracy-vs-sparsity plots of ``launch.report``).
    """
    if not isinstance(series, Mapping) or not series:
        raise ValueError(f"series is {series!r}; pass a non-empty dict {{label: [(step, value), ...]}}")
    lines = {}
    for label, points in series.items():
        array = np.asarray(points, dtype=float)
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] not in (2, 3):
            raise ValueError(f"series {label!r} has shape {array.shape}; pass a non-empty list of "
                             f"(step, value) pairs or (x, value, spread) triples")
        if log_scale and np.any(array[:, 1] <= 0):
            raise ValueError(f"series {label!r} has values <= 0; a log scale needs positive values, "
                             f"pass log_scale=False")
        lines[label] = array
    figure = _figure()
    axes = figure.subplots()
    for label, array in lines.items():
        axes.errorbar(array[:, 0], array[:, 1], yerr=array[:, 2] if array.shape[1] == 3 else None,
                      marker="." if len(array) < 50 else None, capsize=3, label=label)
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend()
    if title:
        axes.set_title(title)
    return _save(figure, path)


def curve_1d(alphas: Any, losses: Any, path: str | os.PathLike, *, xlabel: str = "α",
             ylabel: str = "loss", title: str | None = None) -> pathlib.Path:
    """A 1-D loss curve ``losses[i]`` at ``alphas[i]`` (Li et al. 2018; paper 002 Fig. 10 along the
    top Hessian eigenvector), as `sparsejax.analysis.landscape.surface_1d` returns them."""
    alphas, losses = _vector(alphas, "alphas"), _vector(losses, "losses")
    if alphas.shape != losses.shape:
        raise ValueError(f"alphas has shape {alphas.shape} but losses {losses.shape}; pass one loss "
                         f"per alpha")
    figure = _figure()
    axes = figure.subplots()
    axes.plot(alphas, losses)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    return _save(figure, path)


def contour_2d(alphas: Any, betas: Any, losses: Any, path: str | os.PathLike, *,
               clip: float | None = LOSS_CLIP, levels: int = 20,
               title: str | None = None) -> pathlib.Path:
    """Contours of a 2-D loss surface (Li et al. 2018; paper 002 Figs. 4 and 8).

    ``losses`` has shape (len(betas), len(alphas)): ``losses[j, i]`` at ``(alphas[i], betas[j])``,
    as `sparsejax.analysis.landscape.surface_2d` returns it. Losses above ``clip`` are drawn as
    ``clip`` (paper 002 clamps at 8.0; None: no clamping); NaN and inf points are left blank.
    """
    alphas, betas = _vector(alphas, "alphas"), _vector(betas, "betas")
    z = np.asarray(losses, dtype=float)
    if z.shape != (betas.size, alphas.size):
        raise ValueError(f"losses has shape {z.shape}; pass shape (len(betas), len(alphas)) = "
                         f"{(betas.size, alphas.size)}, losses[j, i] at (alphas[i], betas[j])")
    if min(z.shape) < 2:
        raise ValueError(f"losses has shape {z.shape}; a contour needs at least 2 points per axis")
    if clip is not None and not np.isfinite(clip):
        raise ValueError(f"clip is {clip!r}; pass a finite number or None (no clamping)")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels is {levels!r}; pass a positive number of contour levels")
    if clip is not None:
        z = np.minimum(z, clip)
    figure = _figure(5.6, 4.8)
    axes = figure.subplots()
    contours = axes.contour(alphas, betas, z, levels=levels, cmap="viridis")
    figure.colorbar(contours, ax=axes, label="loss" if clip is None else f"loss (clamped at {clip:g})")
    axes.set_xlabel("α")
    axes.set_ylabel("β")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def activation_sparsity(per_stage: Mapping[str, Any], path: str | os.PathLike, *,
                        ylabel: str = "zero activations (%)",
                        title: str | None = None) -> pathlib.Path:
    """Bars of the activation sparsity per stage, in percent (paper 000 Table 1).

    ``per_stage`` is ``{stage: fraction}``, e.g. ``report["stages"]["zero"]`` of
    `sparsejax.analysis.activations.activation_sparsity`, or ``{run label: {stage: fraction}}``
    (e.g. ReLU, Swish, Mish) for grouped bars; every run then has the same stages.
    """
    if not isinstance(per_stage, Mapping) or not per_stage:
        raise ValueError(f"per_stage is {per_stage!r}; pass a non-empty dict {{stage: fraction}} "
                         f"or {{label: {{stage: fraction}}}}")
    nested = [isinstance(v, Mapping) for v in per_stage.values()]
    if any(nested) and not all(nested):
        raise ValueError("per_stage mixes fractions and dicts; pass {stage: fraction} or "
                         "{label: {stage: fraction}}")
    runs = dict(per_stage) if all(nested) else {"": per_stage}
    stages = list(next(iter(runs.values())))
    bars = {}
    for label, fractions in runs.items():
        if list(fractions) != stages:
            raise ValueError(f"run {label!r} has stages {list(fractions)}, the first run {stages}; "
                             f"pass the same stages in the same order")
        bars[label] = 100 * _fractions(fractions, f"per_stage[{label!r}]" if label else "per_stage")

    figure = _figure(max(6.4, 0.5 * len(stages) * len(bars) + 2), 4.8)
    axes = figure.subplots()
    width = 0.8 / len(bars)
    positions = np.arange(len(stages))
    for k, (label, percent) in enumerate(bars.items()):
        axes.bar(positions + (k - (len(bars) - 1) / 2) * width, percent, width,
                 label=label or None)
    axes.set_xticks(positions)
    axes.set_xticklabels(stages)
    axes.set_ylabel(ylabel)
    if len(bars) > 1:
        axes.legend()
    if title:
        axes.set_title(title)
    return _save(figure, path)
