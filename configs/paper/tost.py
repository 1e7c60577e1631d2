"""Paper 000 (ToST, ICML 2022): its tables and figures as sweep specs.

``python -m launch.sweep --config=configs/paper/tost.py:spec=table2 [--seeds=3]``, then
``python -m launch.report sweeps/<name>``; ``:spec=table2,runlocal`` runs the same grid on digits.
Specs (the paper's protocol: 180 epochs, lr 0.1 ×0.1 at 90/135, batch 128, ToST as configs/tost.py):

- ``table2``: CIFAR-10/100 × ResNet-18/32 × masks LTH, SNIP, GraSP, SynFlow, random × 90/95/98%,
  vanilla vs ToST;
- ``table3``: TinyImageNet, ResNet-50, the same masks and sparsities, vanilla vs ToST;
- ``table4``: each tweak alone (GSk, GSw, LRsI, LS) and all together, LTH ResNet-18, CIFAR-100,
  75-95%;
- ``table5``: GSk and GSw on the dense network and LTH masks at 20/75/95%;
- ``fig6``: ghostliness: gradual removal before the first decay, abrupt, late (after it), never;
- ``fig7``: LTH masks at 20-97%, vanilla vs ToST, CIFAR-10/100.

The paper does not name its seeds; the specs use paper 002's (42, 1099, 5469).
"""

from __future__ import annotations

from configs import base, tost
from configs.paper import arms

SPECS = ("table2", "table3", "table4", "table5", "fig6", "fig7")
MASKS = ("lth", "snip", "grasp", "synflow", "random")
GHOSTLINESS = {  # paper 000 Section 3.4, with the full recipe (GSk + GSw + LS) in every arm
    "gradual": arms.TOST,
    "abrupt": {**arms.TOST, "tost.alpha_shape": "step", "tost.beta_max": 1.0},
    "late": {**arms.TOST, "tost.removal": "after_first_decay"},
    "never": {**arms.TOST, "tost.removal": "never"},
}


def _args(arg):
    args = base.parse_arg(arg, spec="table2", runlocal=False, epochs=0)
    if args.spec not in SPECS:
        raise ValueError(f"unknown spec {args.spec!r}; paper 000 has {', '.join(SPECS)}")
    return args


def get_config(arg: str | None = None):
    args = _args(arg)
    dataset, model = {"table3": ("tiny_imagenet", "resnet50")}.get(args.spec, ("cifar100", "resnet18"))
    c = arms.with_lottery(tost.get_config(f"vanilla,dataset=cifar10,model={model}"))
    c.data.name = dataset
    c.name = f"paper000_{args.spec}" + ("_runlocal" if args.runlocal else "")
    return arms.finish(c, args)


def get_sweep(arg: str | None = None) -> dict:
    args = _args(arg)
    local = {} if args.runlocal else None  # digits: one dataset and model for every row
    variant = {"variant": arms.VANILLA_VS_TOST}
    if args.spec == "table2":
        rest = local if local is not None else {"data.name": ["cifar10", "cifar100"],
                                                "model.name": ["resnet18", "resnet32"]}
        grids = arms.mask_grids(MASKS, (0.9, 0.95, 0.98), {**rest, **variant})
    elif args.spec == "table3":
        grids = arms.mask_grids(MASKS, (0.9, 0.95, 0.98), variant)
    elif args.spec == "table4":
        grids = arms.mask_grids(("lth",), (0.75, 0.8, 0.85, 0.9, 0.95), {"arm": arms.TWEAKS})
    elif args.spec == "table5":
        tweaks = {k: arms.TWEAKS[k] for k in ("vanilla", "gsk", "gsw")}
        grids = [{"mask.method": ["dense"], "arm": tweaks},
                 *arms.mask_grids(("lth",), (0.2, 0.75, 0.95), {"arm": tweaks})]
    elif args.spec == "fig6":
        grids = arms.mask_grids(("lth",), (0.8, 0.85, 0.9, 0.95), {"arm": GHOSTLINESS})
    else:  # fig7
        rest = local if local is not None else {"data.name": ["cifar10", "cifar100"]}
        grids = arms.mask_grids(("lth",), (0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.79, 0.832,
                                           0.866, 0.893, 0.914, 0.931, 0.945, 0.956, 0.965, 0.97),
                                {**rest, **variant})
    return {"grids": grids, "seeds": arms.SEEDS}
