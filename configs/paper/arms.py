"""What the paper specs share: the ToST arms, LTH masks as IMP to an exact sparsity, the digits variant.

A spec file in this directory defines ``get_config(arg)`` (the base run of a table) and
``get_sweep(arg)`` (its grid and seeds) for ``python -m launch.sweep``; ``runlocal`` runs the same
grid on the embedded digits data with a ResNet-20 for `LOCAL_EPOCHS` epochs, so that a CPU can run it.
"""

from __future__ import annotations

import ml_collections

from configs import base, lth

SEEDS = (42, 1099, 5469)  # paper 002, Table A2
LOCAL_EPOCHS = 20  # the digits variant: lr decays at the same fractions of training as the full run
LOCAL_CHECKPOINT_EPOCHS = 5  # an orbax save costs about a tenth of a digits epoch

# The tweaks of paper 000, one arm each (the released code's 1×1 conv ghost path; β from 1 to 10).
GSK = {"tost.ghost_skip": "conv1x1"}
GSW = {"tost.ghost_swish": True, "tost.beta0": 1.0, "tost.beta_max": 10.0}
LS = {"tost.label_smoothing": 0.1}
LRSI = {"recipe.lrsi": True}
TOST = {**GSK, **GSW, **LS}  # configs/tost.py: the recipe of the paper's Tables 2-3
VANILLA_VS_TOST = {"vanilla": {}, "tost": TOST}
TWEAKS = {"vanilla": {}, "gsk": GSK, "gsw": GSW, "lrsi": LRSI, "ls": LS, "all": {**TOST, **LRSI}}


def with_lottery(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``c`` with a ``lottery`` section, so that an LTH arm can switch ``mode`` to lottery."""
    c.lottery = lth.settings(rounds=1, fraction=0.2, rewind_epoch=0, final_recipe=True)
    return c


def lth_mask(sparsity: float, rate: float = 0.2) -> dict:
    """Overrides for an LTH ticket at exactly ``sparsity`` of the conv weights: IMP at about
    ``rate`` per round from a dense run, rewound to the initialization, the final ticket trained
    with the arm's recipe (a point's directory then holds every round; the report reads the final
    one)."""
    rounds, fraction = lth.imp_schedule(sparsity, rate)
    return {"mode": "lottery", "lottery.rounds": rounds, "lottery.fraction": fraction}


def mask_grids(masks: tuple[str, ...], sparsities: tuple[float, ...], rest: dict,
               rate: float = 0.2) -> list[dict]:
    """Grids over mask methods × sparsities (× ``rest``); ``lth`` gets one grid per sparsity,
    because its number of IMP rounds (at ``rate`` per round) depends on the sparsity."""
    finders = [m for m in masks if m != "lth"]
    grids = [{"mask.method": finders, "mask.sparsity": list(sparsities), **rest}] if finders else []
    if "lth" in masks:
        grids += [{"mask.method": {"lth": lth_mask(s, rate)}, "mask.sparsity": [s], **rest}
                  for s in sparsities]
    return grids


def finish(c: ml_collections.ConfigDict, args) -> ml_collections.ConfigDict:
    """The full run, or with ``runlocal`` the digits variant (``epochs`` > 0 overrides its length)."""
    if args.runlocal:
        c = base.runlocal(c, epochs=args.epochs or LOCAL_EPOCHS)
        c.checkpoint_every_epochs = LOCAL_CHECKPOINT_EPOCHS
        c.log_every_steps = 10
    elif args.epochs:
        raise ValueError("config argument epochs only shortens the runlocal variant; the full "
                         "runs keep the papers' lengths")
    c.progress = False  # a sweep prints one line per point
    return c
