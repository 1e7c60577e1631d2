"""The reduced-scale study of ``results/`` (issue 13): the papers' claims on digits, run on 2 CPU cores.

Each spec is a grid of paired arms on the embedded digits data (8×8, 10 classes), ResNet-20, 20
epochs (lr 0.1, ×0.1 at epochs 10 and 15, batch 128, weight decay 2e-4), ghost 1×1 paths and β 1→10
as configs/tost.py; ``python -m launch.sweep --config=configs/paper/study.py:spec=masks --seeds=5``.

- ``masks``: ToST vs vanilla on random (uniform), SNIP and SynFlow masks at 90/95/98/99% (paper 000
  Table 2);
- ``lth``: the same on lottery tickets, IMP rewound to the initialization at 60% per round (3-6
  rounds) instead of the paper's 20% (11-21 rounds: more than this CPU has for the study);
- ``tweaks``: each tweak alone and all together at 95% on random masks (paper 000 Table 4, which uses
  LTH masks); LRsI runs 60 iterations instead of 180 (on this CPU one iteration costs about a second);
- ``ghostliness``: gradual removal before the first decay vs abrupt, late, never (paper 000 Fig. 6);
- ``dst``: SET, RigL, DSR, GGR at 90/95/99% with uniform and ERK densities (paper 004 Table 1), the
  protocol of configs/dst.py scaled to 20 epochs;
- ``lenses``: one vanilla/ToST pair at 95% with activation sparsity, the top Hessian eigenvalue and
  gradient flow recorded during training (paper 000 Table 1, Figs. 2 and 9).
"""

from __future__ import annotations

from configs import base, dst, tost
from configs.paper import arms, tost as paper000

SPECS = ("masks", "lth", "tweaks", "ghostliness", "dst", "lenses")
SPARSITIES = (0.9, 0.95, 0.98, 0.99)
IMP_RATE = 0.6  # per IMP round: 3-6 rounds to 90-99% (20% per round would take 11-21 rounds)
EPOCHS = 20
LRSI_ITERATIONS = 60


def _args(arg):
    args = base.parse_arg(arg, spec="masks", epochs=EPOCHS)
    if args.spec not in SPECS:
        raise ValueError(f"unknown spec {args.spec!r}; the study has {', '.join(SPECS)}")
    return args


def get_config(arg: str | None = None):
    args = _args(arg)
    if args.spec == "dst":
        c = dst.get_config("method=rigl,dataset=cifar100,sparsity=0.9")
    else:
        c = tost.get_config("vanilla,mask=random,sparsity=0.95")
    if args.spec == "lth":
        c = arms.with_lottery(c)
    c.name = f"study_{args.spec}"
    c.recipe.lrsi_iterations = LRSI_ITERATIONS
    if args.spec == "lenses":
        c.analysis.lenses = "activations,hessian,gradient_flow"
        c.analysis.epochs = (0, 1, 2, 5, 10, 15, 20)
        c.analysis.hessian_iterations = 20
    return arms.finish(c, base.parse_arg(f"epochs={args.epochs},runlocal", runlocal=False, epochs=0))


def get_sweep(arg: str | None = None) -> dict:
    args = _args(arg)
    variant = {"variant": arms.VANILLA_VS_TOST}
    if args.spec == "masks":
        grid = {"mask.method": ["random", "snip", "synflow"], "mask.sparsity": list(SPARSITIES),
                **variant}
    elif args.spec == "lth":
        return {"grids": arms.mask_grids(("lth",), SPARSITIES, variant, IMP_RATE),
                "seeds": tuple(range(5))}
    elif args.spec == "tweaks":
        grid = {"arm": arms.TWEAKS}
    elif args.spec == "ghostliness":
        grid = {"arm": {"vanilla": {}, **paper000.GHOSTLINESS}}
    elif args.spec == "dst":
        grid = {"dst.method": ["set", "rigl", "dsr", "ggr"], "mask.distribution": ["uniform", "erk"],
                "mask.sparsity": [0.9, 0.95, 0.99]}
    else:
        grid = variant
    return {"grid": grid, "seeds": tuple(range(5))}

