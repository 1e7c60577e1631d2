"""Every config file builds, and trains on the embedded digits data (the models shrunk to ResNet-20)."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from sparsejax import lottery, train

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem != "__init__")
SLOW = [pytest.mark.slow]  # the DST rules and finders have unit tests of their own
CASES = [
    pytest.param("base", None),
    pytest.param("quickstart", None),
    pytest.param("tost", "mask=snip,sparsity=0.95"),
    pytest.param("tost", "model=resnet50,mask=synflow", marks=SLOW),
    pytest.param("dst", "method=ggr"),
    pytest.param("dst", "method=rigl,distribution=uniform", marks=SLOW),
    pytest.param("dst", "method=set", marks=SLOW),
    pytest.param("dst", "method=dsr", marks=SLOW),
    pytest.param("lth", "runlocal,rounds=1,tost"),
]


def test_every_config_file_is_covered():
    assert sorted({case.values[0] for case in CASES}) == CONFIGS


def tiny(config):
    config.data.name, config.num_epochs, config.batch_size, config.progress = "digits", 1, 128, False
    config.optimizer.decay_epochs = (1,)
    if config.model.name != "resnet20":
        config.model.name = "resnet20"
    return config


@pytest.mark.parametrize("name, arg", CASES)
def test_config_trains_one_epoch(tmp_path, name, arg):
    config = tiny(importlib.import_module(f"configs.{name}").get_config(arg))
    if config.mask.method == "lth":
        records = lottery.run(config, tmp_path)
        assert [r["round"] for r in records] == [0, 1]
        return
    if "compare" in config:
        summaries = train.run_variants(config, tmp_path)
        assert set(summaries) == {"vanilla", "tost"}
        return
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["step"] == 10
    assert summary["sparsity"] == pytest.approx(config.mask.sparsity, abs=2e-3)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
