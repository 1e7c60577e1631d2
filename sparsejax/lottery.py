"""Lottery tickets by iterative magnitude pruning with rewinding (ALGORITHMS.md, "Lottery ticket / IMP").

``run(config, workdir)`` trains ``config.lottery.rounds`` + 1 times. Round 0 trains the dense network
and keeps its weights at ``config.lottery.rewind_epoch`` (0: the initialization, as Frankle & Carbin;
e.g. 33 of 180 for rewinding, paper 002). After each round ``sparsejax.pruning.imp_prune`` removes
``config.lottery.fraction`` of the remaining weights by global magnitude over the conv kernels (as the
ToST release, which masks conv layers only; ``prune_dense`` adds the classifier), and the next round
starts from the rewound weights under the new mask, so round r trains at sparsity 1 − 0.8^r. With
``rewind_schedule = "continue"`` (default, open_lth's rewinding; Frankle et al. 2020) a round that
starts from the weights of epoch k trains from step k on, with the learning-rate schedule and the
data order at their step-k position; ``"restart"`` trains it from step 0 with the whole schedule. The mask search uses plain training (ToST tweaks, LRsI and distillation off); the last round trains the final
ticket with the config's own recipe when ``config.lottery.final_recipe`` is set (ToST on LTH masks).

Every round has its own directory ``workdir/round_<r>`` (with ``mask.npz``, its checkpoints and
summary; from round 1 on, its ``rewind.npz`` holds the variables the round started from);
``workdir/lottery.json`` records each finished round's sparsity and accuracies. Relaunching resumes:
finished rounds are read back, an interrupted round resumes from its checkpoint.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from sparsejax import files, masks as masks_lib, paths, pruning
from sparsejax.errors import TrainError
from sparsejax.train import FINAL_VARIABLES, REWIND_VARIABLES, build, train_and_evaluate
from sparsejax.train import workdir as workdir_lib

MASK_FILE = "mask.npz"


def _round_config(config: ml_collections.ConfigDict, r: int, workdir: pathlib.Path
                  ) -> ml_collections.ConfigDict:
    lt = config.lottery
    c = ml_collections.ConfigDict(config.to_dict())
    c.name, c.mode = f"{config.name}/round_{r}", "train"
    if r < lt.rounds or not lt.final_recipe:  # the search itself is plain training
        c.tost.ghost_skip, c.tost.ghost_swish, c.tost.label_smoothing = "", False, 0.0
        c.recipe.lrsi, c.recipe.distill.teacher = False, ""
    c.dst.method, c.dst.options = "static", {}
    if r == 0:
        c.mask.method = "dense"
        c.init.save_at_epoch = lt.rewind_epoch
    else:  # its own rewind.npz: the variables this round starts from
        c.mask.method, c.mask.file = "file", str(workdir / f"round_{r}" / MASK_FILE)
        c.init.variables_file = str(workdir / "round_0" / REWIND_VARIABLES)
        c.init.start_epoch = lt.rewind_epoch if lt.rewind_schedule == "continue" else 0
        c.init.save_at_epoch = c.init.start_epoch
    return c


def _conv_kernels(path: str, leaf) -> bool:
    return np.ndim(leaf) == 4 and paths.default_filter(path, leaf)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[dict]:
    """Runs (or resumes) the IMP rounds; returns one record per round."""
    build.check(config)
    with workdir_lib.locked(workdir) as workdir:
        return _rounds(config, workdir)


def _rounds(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[dict]:
    lt = config.lottery
    records = []
    for r in range(lt.rounds + 1):
        rdir = workdir / f"round_{r}"
        c = _round_config(config, r, workdir)
        summary = train_and_evaluate(c, rdir)
        records.append({"round": r, "sparsity": summary["sparsity"],
                        "test_accuracy": summary["test_accuracy"],
                        "final_test_accuracy": summary["final_test_accuracy"],
                        "mask_file": str(rdir / MASK_FILE) if r else None})
        if jax.process_index() == 0:
            workdir_lib.write_json(workdir / "lottery.json", records)
        if r == lt.rounds:
            break
        try:
            final = files.read_npz(rdir / FINAL_VARIABLES, "variables file", f"delete {rdir}")
        except FileNotFoundError:
            raise TrainError(f"{rdir} has a summary but no {FINAL_VARIABLES}; delete {rdir} to "
                             "train that round again") from None
        params = traverse_util.unflatten_dict(final, sep="/")["params"]
        masks = (masks_lib.ones_like(params) if r == 0 else
                 masks_lib.load(rdir / MASK_FILE, params))
        filter_fn = None if lt.prune_dense else _conv_kernels
        pruned = pruning.imp_prune(params, masks, lt.fraction, filter_fn=filter_fn)
        (workdir / f"round_{r + 1}").mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            masks_lib.save(workdir / f"round_{r + 1}" / MASK_FILE, pruned)
    return records


def table(records: list[dict]) -> str:
    """One line per round: sparsity and test accuracies."""
    lines = [f"{'round':>5} {'sparsity':>9} {'test acc (best val)':>20} {'final test acc':>15}"]
    lines += [f"{r['round']:>5} {r['sparsity']:>9.4f} {r['test_accuracy']:>20.4f} "
              f"{r['final_test_accuracy']:>15.4f}" for r in records]
    return "\n".join(lines)
