"""sparsejax.analysis.plots: every figure is a real PNG written atomically; bad input writes nothing.

PNGs are read back with PIL: the signature bytes, the mode and a non-empty size; pixel content is
compared where a property shows in it (white = active mask entries, clamping of the loss surface).
"""

import os

import numpy as np
import pytest
from PIL import Image

from sparsejax.analysis import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGES = {"stem": 0.1, "layer1": 0.27, "layer2": 0.39, "layer3": 0.4, "layer4": 0.58}
DENSITIES = {"conv1/kernel": 1.0, "layer1_0/conv1/kernel": 0.2, "classifier/kernel": 0.05}
COUNTS = {"conv1/kernel": 1728, "layer1_0/conv1/kernel": 7373, "classifier/kernel": 256}
ALPHAS = np.linspace(-1.0, 1.0, 7)
BETAS = np.linspace(-1.0, 1.0, 5)
SURFACE = 2.0 + 30.0 * (ALPHAS[None, :] ** 2 + 0.5 * BETAS[:, None] ** 2)  # (len(betas), len(alphas))
REPORT = {"layers": {p: {"density": d, "active": COUNTS[p], "size": 10_000}
                     for p, d in DENSITIES.items()},
          "total": {"density": 0.3}}


def _read_png(path):
    """The decoded image of the PNG at ``path`` as an array, after checking that it is one."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode in ("RGBA", "RGB")
        assert image.size[0] > 0 and image.size[1] > 0
        return np.asarray(image.convert("RGB"))


CASES = {
    "layer_densities": lambda p: plots.layer_densities(DENSITIES, p),
    "layer_densities_counts": lambda p: plots.layer_densities(DENSITIES, p, counts=COUNTS),
    "layer_densities_report": lambda p: plots.layer_densities(REPORT, p, title="VGG16, 97 %"),
    "mask_image_dense": lambda p: plots.mask_image(np.eye(6, 4, dtype=bool), p),
    "mask_image_conv": lambda p: plots.mask_image(np.ones((3, 3, 2, 4)), p),
    "over_training": lambda p: plots.over_training(
        {"vanilla": [(0, 5.0), (1, 3.0), (2, 2.5)], "ToST": [(0, 8.0), (2, 1.5)]}, p,
        ylabel="top Hessian eigenvalue", log_scale=True),
    "curve_1d": lambda p: plots.curve_1d(ALPHAS, ALPHAS ** 2, p),
    "contour_2d": lambda p: plots.contour_2d(ALPHAS, BETAS, SURFACE, p),
    "activation_sparsity": lambda p: plots.activation_sparsity(STAGES, p),
    "activation_sparsity_grouped": lambda p: plots.activation_sparsity(
        {"ReLU": STAGES, "Swish": {s: 0.003 for s in STAGES}}, p),
}


@pytest.mark.parametrize("case", list(CASES))
def test_writes_one_png_and_nothing_else(tmp_path, case):
    path = tmp_path / f"{case}.png"
    path.write_bytes(b"an older file")  # replaced whole
    assert CASES[case](path) == path
    _read_png(path)
    assert os.listdir(tmp_path) == [path.name]


def test_accepts_a_string_path(tmp_path):
    path = str(tmp_path / "curve.png")
    assert str(plots.curve_1d([0.0, 1.0], [1.0, 2.0], path)) == path
    _read_png(path)


def test_second_panel_of_active_weights_makes_the_figure_taller(tmp_path):
    one = _read_png(plots.layer_densities(DENSITIES, tmp_path / "one.png"))
    two = _read_png(plots.layer_densities(DENSITIES, tmp_path / "two.png", counts=COUNTS))
    from_report = _read_png(plots.layer_densities(REPORT, tmp_path / "report.png"))
    assert two.shape[0] > one.shape[0]
    np.testing.assert_array_equal(from_report, two)  # the report's density and active weights


def _white_fraction(pixels):
    return np.mean(np.all(pixels == 255, axis=-1))


def test_mask_image_shows_active_weights_white(tmp_path):
    kept = _read_png(plots.mask_image(np.ones((8, 8), bool), tmp_path / "kept.png", title="m"))
    pruned = _read_png(plots.mask_image(np.zeros((8, 8), bool), tmp_path / "pruned.png", title="m"))
    assert kept.shape == pruned.shape
    assert _white_fraction(kept) > _white_fraction(pruned) + 0.3


def test_mask_matrix_rows_are_kernel_position_times_input():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 2, 4)) * (rng.uniform(size=(3, 3, 2, 4)) < 0.5)
    matrix = plots.mask_matrix(kernel)
    assert matrix.shape == (18, 4) and matrix.dtype == bool
    for h, w, i, o in np.ndindex(kernel.shape):
        assert matrix[(h * 3 + w) * 2 + i, o] == (kernel[h, w, i, o] != 0)
    np.testing.assert_array_equal(plots.mask_matrix(kernel[0, 0]), kernel[0, 0] != 0)


def test_contour_clamps_losses_at_clip(tmp_path):
    steep = SURFACE  # 2 at the centre, 47 at the corners: the rim is above 8
    assert steep.min() < 8.0 < steep.max()
    clamped = _read_png(plots.contour_2d(ALPHAS, BETAS, steep, tmp_path / "a.png"))
    by_hand = _read_png(plots.contour_2d(ALPHAS, BETAS, np.minimum(steep, 8.0), tmp_path / "b.png"))
    raw = _read_png(plots.contour_2d(ALPHAS, BETAS, steep, tmp_path / "c.png", clip=1e6))
    np.testing.assert_array_equal(clamped, by_hand)
    assert clamped.shape != raw.shape or np.any(clamped != raw)
    assert plots.LOSS_CLIP == 8.0


@pytest.mark.parametrize("call, match", [
    (lambda p: plots.layer_densities({}, p), "densities is {}"),
    (lambda p: plots.layer_densities({"a": 1.5}, p), "outside \\[0, 1\\]"),
    (lambda p: plots.layer_densities(DENSITIES, p, counts={"conv1/kernel": 3}), "differ in 2 layers"),
    (lambda p: plots.layer_densities(DENSITIES, p, counts={**COUNTS, "conv1/kernel": -1}),
     "negative"),
    (lambda p: plots.layer_densities(REPORT, p, counts=COUNTS), "one or the other"),
    (lambda p: plots.mask_image(np.ones(5), p), "ndim >= 2"),
    (lambda p: plots.mask_image(np.ones((0, 4)), p), "non-empty kernel"),
    (lambda p: plots.over_training({}, p, ylabel="λ"), "non-empty dict"),
    (lambda p: plots.over_training({"run": []}, p, ylabel="λ"), "'run' has shape \\(0,\\)"),
    (lambda p: plots.over_training({"run": [(0, 1, 2, 3)]}, p, ylabel="λ"),
         "\\(step, value\\) pairs or \\(x, value, spread\\) triples"),
    (lambda p: plots.over_training({"run": [(0, 0.0)]}, p, ylabel="λ", log_scale=True),
     "log scale needs positive"),
    (lambda p: plots.curve_1d([], [], p), "alphas has shape \\(0,\\)"),
    (lambda p: plots.curve_1d([0.0, 1.0], [1.0], p), "one loss per alpha"),
    (lambda p: plots.curve_1d([0.0, 1.0], [1.0, np.nan], p), "non-finite"),
    (lambda p: plots.contour_2d(ALPHAS, BETAS, SURFACE.T, p), "shape \\(len\\(betas\\), len\\(alphas"),
    (lambda p: plots.contour_2d([0.0], [0.0], [[1.0]], p), "at least 2 points"),
    (lambda p: plots.contour_2d(ALPHAS, BETAS, SURFACE, p, clip=np.inf), "clip is inf"),
    (lambda p: plots.contour_2d(ALPHAS, BETAS, SURFACE, p, levels=0), "levels is 0"),
    (lambda p: plots.activation_sparsity({}, p), "non-empty dict"),
    (lambda p: plots.activation_sparsity({"stem": 27.14}, p), "not percentages"),
    (lambda p: plots.activation_sparsity({"ReLU": STAGES, "Swish": {"stem": 0.0}}, p),
     "same stages"),
    (lambda p: plots.activation_sparsity({"ReLU": STAGES, "stem": 0.1}, p), "mixes"),
])
def test_bad_input_raises_one_line_and_writes_nothing(tmp_path, call, match):
    with pytest.raises(ValueError, match=match) as error:
        call(tmp_path / "figure.png")
    assert "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []
