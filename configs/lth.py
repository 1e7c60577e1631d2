"""Lottery tickets (IMP with rewinding), then the ticket trained with the config's recipe.

``python -m launch --config=configs/lth.py:rounds=5,rewind_epoch=0`` on CIFAR-10 ResNet-18 (paper
002 / ToST's LTH masks). Round r trains at sparsity 1 − 0.8^r; ``runlocal`` shrinks everything to the
embedded digits data and a ResNet-20 for a laptop.
"""

from __future__ import annotations

import math

import ml_collections

from configs import base


def settings(rounds: int, fraction: float, rewind_epoch: int, final_recipe: bool
             ) -> ml_collections.ConfigDict:
    """The ``config.lottery`` section (what ``mode = "lottery"`` reads)."""
    lt = ml_collections.ConfigDict()
    lt.rounds = rounds
    lt.fraction = fraction  # of the remaining weights, per round
    lt.rewind_epoch = rewind_epoch  # 0: rewind to the initialization
    lt.prune_dense = False  # conv kernels only, as the ToST release; True adds the classifier
    lt.rewind_schedule = "continue"  # continue (open_lth) | restart (from step 0)
    lt.final_recipe = final_recipe  # train the final ticket with the config's tost settings
    return lt


def imp_schedule(sparsity: float, rate: float = 0.2) -> tuple[int, float]:
    """``(rounds, fraction)`` of IMP reaching exactly ``sparsity`` of the pruned weights: the fewest
    rounds at which pruning ``rate`` per round gets there, with the per-round fraction evened out."""
    rounds = max(1, math.ceil(math.log(1 - sparsity) / math.log(1 - rate) - 1e-9))
    return rounds, 1 - (1 - sparsity) ** (1 / rounds)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = base.parse_arg(arg, rounds=5, rewind_epoch=0, tost=False, runlocal=False)
    c = base.get_config()
    c.name = "lth"
    c.mode = "lottery"
    c.lottery = settings(args.rounds, 0.2, args.rewind_epoch, args.tost)
    if args.tost:
        c.tost.ghost_skip, c.tost.ghost_swish, c.tost.label_smoothing = "conv1x1", True, 0.1
    return base.runlocal(c) if args.runlocal else c
