"""The lenses in a run (``config.analysis``) and after it (``python -m launch.analyze``)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from configs import quickstart
from sparsejax import train
from sparsejax.errors import TrainError
from sparsejax.train import build

REPO = pathlib.Path(__file__).resolve().parents[1]
LENSES = "activations,hessian,trace,gradient_flow,landscape,structure"


def analyze(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "launch.analyze", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def small(config):
    config.num_epochs, config.optimizer.decay_epochs, config.batch_size = 2, (1,), 128
    config.progress = False
    a = config.analysis
    a.lenses, a.epochs, a.batches = "hessian,gradient_flow,activations", (0, 2), 2
    a.hessian_iterations, a.trace_samples, a.landscape_steps, a.landscape_batches = 5, 2, 5, 1
    return config


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> pathlib.Path:
    """The quickstart's two runs, shrunk, with lenses at epochs 0 and 2."""
    workdir = tmp_path_factory.mktemp("quickstart")
    train.run_variants(small(quickstart.get_config()), workdir)
    return workdir


@pytest.mark.slow  # two short runs and an analysis of each (about two minutes)
def test_lenses_during_training_and_after(compared):
    for run in ("vanilla", "tost"):
        lines = [json.loads(line) for line in
                 (compared / run / "analysis" / "hessian.jsonl").read_text().splitlines()]
        assert [line["step"] for line in lines] == [0, 20] and lines[0]["epoch"] == 0
        assert all(line["eigenvalue"] > 0 for line in lines)
        flow = json.loads((compared / run / "analysis" / "gradient_flow.jsonl").read_text()
                          .splitlines()[-1])
        assert flow["total"] > 0 and "conv1/kernel" in flow["layers"]
    checkpoints = {p: p.stat().st_mtime_ns for p in (compared / "tost" / "checkpoints").rglob("*")}

    result = analyze(f"--workdir={compared}", f"--lenses={LENSES}")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {"layer_density", "mask_", "activation_sparsity", "landscape_1d", "eigenvector_1d",
                "landscape_2d"}
    for run in ("vanilla", "tost"):
        pngs = list((compared / run / "plots").glob("*.png"))
        assert {e for e in expected if any(p.name.startswith(e) for p in pngs)} == expected
        for png in pngs:
            with Image.open(png) as image:
                assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
        assert {p.name for p in (compared / run / "analysis" / "step_20").iterdir()} == {
            f"{lens}.json" for lens in LENSES.split(",")}
    assert {p.name for p in (compared / "plots").glob("*.png")} == {
        "hessian_over_training.png", "gradient_flow_over_training.png"}
    assert {p: p.stat().st_mtime_ns for p in (compared / "tost" / "checkpoints").rglob("*")} \
        == checkpoints  # nothing written into a checkpoint directory

    assert "not among the checkpoints" in one_line_error(
        analyze(f"--workdir={compared}", "--step=7"))


@pytest.mark.slow
def test_analyze_bad_input_is_one_line(tmp_path):
    assert "unknown lens 'eigen'" in one_line_error(
        analyze(f"--workdir={tmp_path}", "--lenses=hessian,eigen"))
    assert "holds no sparsejax run" in one_line_error(analyze(f"--workdir={tmp_path}"))
    assert "does not exist" in one_line_error(analyze(f"--workdir={tmp_path / 'nothing'}"))
    assert "no run given" in one_line_error(analyze())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, value, words", [
    ("lenses", "hessian,landscpe", "unknown lens 'landscpe'"),
    ("epochs", (0, 99), "outside the run"),
    ("landscape_steps", 1, "landscape_steps >= 2"),
])
def test_analysis_config_is_checked_up_front(key, value, words):
    c = small(quickstart.get_config("variant=tost"))
    c.analysis[key] = value
    with pytest.raises(TrainError, match=words):
        build.check(c)
