"""Paper 002 ("Spending Your Winning Lottery Better After Drawing It"): its tables and figures as
sweep specs, on LTH tickets (IMP at ~20% per round, each sparsity reached exactly; configs/lth.py).

``python -m launch.sweep --config=configs/paper/lottery.py:spec=tableA2``; ``:spec=tableA2,runlocal``
runs the same grid on digits. The protocol is paper 002's Section 4.1 (ResNet-18, CIFAR-100, 180
epochs, seeds 42, 1099, 5469). Arms: architecture tweaks AT = skip + Swish (here the ghost versions of
paper 000, removed before the first decay: the text of paper 002 does not say), training-recipe
tweaks TRT = layer-wise re-scaled init ("scaling") + label smoothing.

- ``tableA2`` (Fig. 1): LTH, +skip, +Swish, +scaling, +LS at 0% (dense) and 20-97%;
- ``tableA3`` (Figs. 6, 7): LTH, +AT, +TRT, +AT+TRT, LTH with rewinding (epoch 33 of 180) and
  AT+TRT with rewinding;
- ``tableA4``: ResNet-32 (the caption says ResNet-34, the table's rows ResNet-32) on CIFAR-10/100:
  random, GraSP, SynFlow vs LTH + AT + TRT at 90/95/98%, and the dense network;
- ``fig5``: LTH vs LTH + AT + TRT for VGG-16, ResNet-18/34/50, MobileNet on CIFAR-10/100 and
  TinyImageNet at 20-97%;
- ``fig9``: label smoothing vs distillation in TRT: pass ``teacher=DIR/final_variables.npz`` (a
  dense run, e.g. ``configs/tost.py:vanilla,mask=dense,dataset=cifar100``);
- ``figA12``: IMP vs one-shot magnitude pruning (OMP: one round), vanilla vs AT + TRT.
"""

from __future__ import annotations

from configs import base, tost
from configs.paper import arms

SPECS = ("tableA2", "tableA3", "tableA4", "fig5", "fig9", "figA12")
SPARSITIES = (0.2, 0.36, 0.49, 0.59, 0.67, 0.74, 0.79, 0.83, 0.87, 0.89, 0.91, 0.93, 0.94, 0.95,
              0.96, 0.97)  # Table A2's rows (1 − 0.8^r, rounded as the paper prints them)
REWIND = {"lottery.rewind_epoch": 33}  # of 180 (paper 002)
AT = {**arms.GSK, **arms.GSW}
TRT = {**arms.LRSI, **arms.LS}
SINGLE = {"lth": {}, "skip": arms.GSK, "swish": arms.GSW, "scaling": arms.LRSI, "ls": arms.LS}
COMPOSED = {"lth": {}, "at": AT, "trt": TRT, "at_trt": {**AT, **TRT}, "rewind": REWIND,
            "at_trt_rewind": {**AT, **TRT, **REWIND}}
LTH_VS_TWEAKS = {"lth": {}, "at_trt": {**AT, **TRT}}


def _args(arg):
    args = base.parse_arg(arg, spec="tableA2", runlocal=False, epochs=0, teacher="")
    if args.spec not in SPECS:
        raise ValueError(f"unknown spec {args.spec!r}; paper 002 has {', '.join(SPECS)}")
    if args.spec == "fig9" and not args.teacher:
        raise ValueError("spec fig9 needs a teacher: pass teacher=DIR/final_variables.npz of a "
                         "trained dense run")
    return args


def get_config(arg: str | None = None):
    args = _args(arg)
    c = arms.with_lottery(tost.get_config("vanilla,dataset=cifar100,model=resnet18,mask=dense"))
    c.name = f"paper002_{args.spec}" + ("_runlocal" if args.runlocal else "")
    if args.spec == "tableA4":
        c.model.name = "resnet32"
    c.recipe.distill.teacher = args.teacher
    return arms.finish(c, args)


def get_sweep(arg: str | None = None) -> dict:
    args = _args(arg)
    sparse, local = SPARSITIES, args.runlocal
    if args.spec == "tableA2":
        grids = [{"mask.method": ["dense"], "arm": SINGLE},
                 *arms.mask_grids(("lth",), sparse, {"arm": SINGLE})]
    elif args.spec == "tableA3":
        grids = arms.mask_grids(("lth",), sparse, {"arm": COMPOSED})
    elif args.spec == "tableA4":
        data = {} if local else {"data.name": ["cifar10", "cifar100"]}
        grids = [{**data, "mask.method": ["dense"]},
                 {**data, "mask.method": ["random", "grasp", "synflow"],
                  "mask.sparsity": [0.9, 0.95, 0.98]},
                 *arms.mask_grids(("lth",), (0.9, 0.95, 0.98), {**data, "arm": {
                     "at_trt": LTH_VS_TWEAKS["at_trt"]}})]
    elif args.spec == "fig5":
        rest = {} if local else {"data.name": ["cifar10", "cifar100", "tiny_imagenet"],
                                 "model.name": ["vgg16", "resnet18", "resnet34", "resnet50",
                                                "mobilenet_v1"]}
        grids = arms.mask_grids(("lth",), sparse, {**rest, "arm": LTH_VS_TWEAKS})
    elif args.spec == "fig9":
        no_teacher = {"recipe.distill.teacher": ""}  # the KD arm keeps the config's teacher
        grids = arms.mask_grids(("lth",), sparse, {"arm": {
            "lth": no_teacher, "at_trt_ls": {**AT, **TRT, **no_teacher},
            "at_trt_kd": {**AT, **arms.LRSI}}})
    else:  # figA12
        omp = [{"mask.method": {"omp": {"mode": "lottery", "lottery.rounds": 1,
                                        "lottery.fraction": s}},
                "mask.sparsity": [s], "arm": LTH_VS_TWEAKS} for s in sparse]
        grids = arms.mask_grids(("lth",), sparse, {"arm": LTH_VS_TWEAKS}) + omp
    return {"grids": grids, "seeds": arms.SEEDS}
