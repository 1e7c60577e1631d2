"""Lottery tickets: a 3-round IMP run on digits follows 1 − 0.8^r and rewinds to the saved weights."""

from __future__ import annotations

import json

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import lth
from sparsejax import lottery, masks as masks_lib

pytestmark = pytest.mark.slow  # four training runs; CI runs them with --runslow


def npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lth")
    config = lth.get_config("runlocal,rounds=3,rewind_epoch=1")
    config.num_epochs, config.optimizer.decay_epochs = 2, (1,)
    config.batch_size, config.progress = 128, False
    return workdir, config, lottery.run(config, workdir)


def test_sparsity_follows_imp_schedule(run):
    workdir, _, records = run
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    conv = 269_968 / (269_968 + 640)  # ResNet-20 on digits: the share of conv weights
    for r in records:
        assert r["sparsity"] == pytest.approx((1 - 0.8 ** r["round"]) * conv, abs=1e-3)
    assert json.loads((workdir / "lottery.json").read_text()) == records


def test_masks_are_nested_and_pruned_weights_stay_zero(run):
    workdir, _, _ = run
    previous = None
    for r in (1, 2, 3):
        mask = npz(workdir / f"round_{r}" / lottery.MASK_FILE)
        final = npz(workdir / f"round_{r}" / "final_variables.npz")
        for path, m in mask.items():
            assert not np.any(final[f"params/{path}"][~m]), path
            if previous is not None:
                assert not np.any(m & ~previous[path]), f"{path} regrew in round {r}"
        previous = mask


def test_rewinds_to_the_weights_of_the_rewind_epoch(run):
    workdir, config, _ = run
    rewind = npz(workdir / "round_0" / "rewind.npz")
    checkpoints = workdir / "round_0" / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as ckpt:  # the checkpoint at the end of epoch 1
        state = ckpt.restore((checkpoints / str(steps[0]) / "state").absolute())
    saved = traverse_util.flatten_dict(state["params"], sep="/")
    assert saved.keys() == {k[len("params/"):] for k in rewind if k.startswith("params/")}
    for path, value in saved.items():
        np.testing.assert_array_equal(rewind[f"params/{path}"], value, err_msg=path)
    # Every later round starts from those weights under its own mask (its rewind.npz is step 0).
    for r in (1, 2, 3):
        mask = npz(workdir / f"round_{r}" / lottery.MASK_FILE)
        start = npz(workdir / f"round_{r}" / "rewind.npz")
        assert start.keys() == rewind.keys()
        for key, value in rewind.items():
            path = key.removeprefix("params/")
            expected = np.where(mask[path], value, 0) if key.startswith("params/") else value
            np.testing.assert_array_equal(start[key], expected, err_msg=f"round {r}: {key}")
        expected = sum(m.size for p, m in mask.items() if m.ndim == 4)
        for _ in range(r):  # 20% of the remaining conv weights per round
            expected = masks_lib.kept_count(0.8, expected)
        assert sum(int(m.sum()) for p, m in mask.items() if m.ndim == 4) == expected
        assert mask["classifier/kernel"].all()  # conv layers only, as the ToST release


def test_rounds_continue_the_schedule_from_the_rewind_point(run):
    """Rewound to epoch 1 (step 10), rounds >= 1 train steps 11..20 with the schedule there (open_lth),
    not 20 steps from step 0."""
    workdir, _, _ = run
    steps = {r: [json.loads(line)["step"] for line in
                 (workdir / f"round_{r}" / "metrics.jsonl").read_text().splitlines()]
             for r in (0, 1)}
    assert min(steps[0]) <= 10 and min(steps[1]) > 10 and max(steps[1]) == 20

