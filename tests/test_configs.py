"""Every config file builds with ``runlocal`` and trains an epoch on the embedded digits data."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from sparsejax import lottery, train
from sparsejax.train import build

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem != "__init__")
# Slow: the loop has in-process tests (test_train_modules), the modes runs of their own
# (tests/test_lottery.py), the rules and finders unit tests; one plain run stays in the default suite.
SLOW = [pytest.mark.slow]
CASES = [
    pytest.param("base", "runlocal"),
    pytest.param("quickstart", "runlocal", marks=SLOW),
    pytest.param("tost", "runlocal,mask=snip,sparsity=0.95", marks=SLOW),
    pytest.param("tost", "runlocal,model=resnet50,mask=synflow", marks=SLOW),
    pytest.param("dst", "runlocal,method=ggr", marks=SLOW),
    pytest.param("dst", "runlocal,method=rigl,distribution=uniform", marks=SLOW),
    pytest.param("dst", "runlocal,method=set", marks=SLOW),
    pytest.param("dst", "runlocal,method=dsr", marks=SLOW),
    pytest.param("gmp", "runlocal", marks=SLOW),
    pytest.param("lth", "runlocal,rounds=1,tost", marks=SLOW),
]


def test_every_config_file_is_covered():
    assert sorted({case.values[0] for case in CASES}) == CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_full_scale_config_is_valid(name):
    """The full-scale configs (CIFAR, 180 epochs) pass the up-front check as they are."""
    config = importlib.import_module(f"configs.{name}").get_config()
    build.check(config)
    assert config.data.name != "digits" or name == "quickstart"


def test_runlocal_keeps_the_schedule_shape():
    from configs import dst
    c = dst.get_config("runlocal")
    assert (c.data.name, c.model.name, c.num_epochs) == ("digits", "resnet20", 6)
    assert c.optimizer.decay_epochs == (2, 4, 5)  # epochs 30/60/80 of 100 (CIFAR-100)


@pytest.mark.parametrize("name, arg", CASES)
def test_config_trains_one_epoch(tmp_path, name, arg):
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    config.num_epochs, config.optimizer.decay_epochs, config.progress = 1, (1,), False
    config.optimizer.warmup_epochs, config.dst.start_epoch = 0, 0
    build.check(config)
    if config.mode == "lottery":
        records = lottery.run(config, tmp_path)
        assert [r["round"] for r in records] == [0, 1]
        return
    if config.mode == "compare":
        summaries = train.run_variants(config, tmp_path)
        assert set(summaries) == {"vanilla", "tost"}
        return
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["step"] == 10
    assert summary["sparsity"] == pytest.approx(config.mask.sparsity, abs=2e-3)
    assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_search_rounds_train_plainly_and_the_final_round_with_the_recipe(tmp_path):
    """The IMP search is plain training: ghosts, label smoothing, LRsI and the teacher are off in
    every round but the last, which keeps them when ``final_recipe`` is set."""
    config = importlib.import_module("configs.lth").get_config("rounds=2,tost,runlocal")
    config.recipe.lrsi, config.recipe.distill.teacher = True, "teacher.npz"
    for r in range(3):
        c = lottery._round_config(config, r, tmp_path)
        recipe = (c.tost.ghost_skip, c.tost.ghost_swish, c.tost.label_smoothing, c.recipe.lrsi,
                  c.recipe.distill.teacher)
        assert recipe == (("conv1x1", True, 0.1, True, "teacher.npz") if r == 2 else
                          ("", False, 0.0, False, "")), r
