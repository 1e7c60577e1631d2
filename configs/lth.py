"""Lottery tickets (IMP with rewinding), then the ticket trained with the config's recipe.

``python -m launch --config=configs/lth.py:rounds=5,rewind_epoch=0`` on CIFAR-10 ResNet-18 (paper
002 / ToST's LTH masks). Round r trains at sparsity 1 − 0.8^r; ``runlocal`` shrinks everything to the
embedded digits data and a ResNet-20 for a laptop.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = base.parse_arg(arg, rounds=5, rewind_epoch=0, tost=False, runlocal=False)
    c = base.get_config()
    c.name = "lth"
    c.mode = "lottery"
    c.lottery = ml_collections.ConfigDict()
    c.lottery.rounds = args.rounds
    c.lottery.fraction = 0.2  # of the remaining weights, per round
    c.lottery.rewind_epoch = args.rewind_epoch  # 0: rewind to the initialization
    c.lottery.prune_dense = False  # conv kernels only, as the ToST release; True adds the classifier
    c.lottery.rewind_schedule = "continue"  # continue (open_lth) | restart (from step 0)
    c.lottery.final_recipe = args.tost  # train the final ticket with the tost settings below
    if args.tost:
        c.tost.ghost_skip, c.tost.ghost_swish, c.tost.label_smoothing = "conv1x1", True, 0.1
    return base.runlocal(c) if args.runlocal else c
