"""Paper 004 (GGR): dynamic sparse training from a random mask, as sweep specs.

``python -m launch.sweep --config=configs/paper/ggr.py:spec=table1``; ``:spec=table1,runlocal`` runs
the same grid on digits. The protocol is configs/dst.py's (200 epochs, CIFAR-100 halved; redistribution
every epoch but the first, drop fraction 10% → 0 by cosine at half of training).

- ``table1``: MobileNetV2, ResNet-18 and VGG-16 on CIFAR-100 (100 epochs) and TinyImageNet (200) × SET, RigL, DSR, GGR,
  "GGR SET" and "GGR RigL" (``grow_gradient_fraction`` 0 and 1) × 90/97/99% × uniform and ERK, plus
  the dense reference and gradual magnitude pruning (configs/gmp.py's schedule) as baseline rows;
- ``table2``/``table3`` average Table 1's cells over models and data sets: ``python -m
  launch.report DIR`` writes ``DIR/report.csv`` (one line per data set, model, method, density
  distribution and sparsity); average its ``mean_test_accuracy`` over ``data`` and ``model.name``.
  Table 3's local "SET+RigL" row (half the regrowth random, half by gradient, within each layer) is
  not a rule of sparsejax; its GGR rows are ``ggr_set``, ``ggr_rigl`` and ``ggr``;
- ``table4`` is the structure lens on Table 1's VGG-16 and MobileNetV2 TinyImageNet runs at 97%
  (``python -m launch.analyze --workdir=<point> --lenses=structure``).
"""

from __future__ import annotations

import ml_collections

from configs import base, dst
from configs.paper import arms

SPECS = ("table1",)


def _rule(method: str, **options) -> dict:
    """A DST arm: the rule and its own options (replacing ``dst.options`` as a whole)."""
    return {"dst.method": method, "dst.options": ml_collections.ConfigDict(options)}


METHODS = {
    "set": _rule("set"),
    "rigl": _rule("rigl"),
    "dsr": _rule("dsr"),
    "ggr": _rule("ggr", grow_gradient_fraction=0.5),
    "ggr_set": _rule("ggr", grow_gradient_fraction=0.0),  # Table 1's "GGR SET"
    "ggr_rigl": _rule("ggr", grow_gradient_fraction=1.0),  # Table 1's "GGR RigL"
}


def get_config(arg: str | None = None):
    args = base.parse_arg(arg, spec="table1", runlocal=False, epochs=0)
    if args.spec not in SPECS:
        raise ValueError(f"unknown spec {args.spec!r}; paper 004 has {', '.join(SPECS)} "
                         "(tables 2-4 are views of table1's runs; see this file's docstring)")
    c = dst.get_config("method=ggr,dataset=cifar100,model=resnet18")
    c.name = f"paper004_{args.spec}" + ("_runlocal" if args.runlocal else "")
    c.dst.options = ml_collections.ConfigDict()  # each arm sets its rule's options
    return arms.finish(c, args)


def gmp(epochs: int) -> dict:
    """Gradual magnitude pruning (RigL's CIFAR prune baseline, configs/gmp.py): dense at the start,
    pruned every epoch from 20% to 75% of training to ``mask.sparsity``."""
    return {**_rule("gmp", scope="layer"), "mask.method": "dense",
            "dst.start_epoch": round(0.2 * epochs), "dst.end_fraction": 0.75}


def _protocol(dataset: str) -> dict:
    """configs/dst.py's data set, run length and lr decays for ``dataset``."""
    c = dst.get_config(f"dataset={dataset}")
    return {"data.name": dataset, "num_epochs": c.num_epochs,
            "optimizer.decay_epochs": c.optimizer.decay_epochs}


def get_sweep(arg: str | None = None) -> dict:
    args = base.parse_arg(arg, spec="table1", runlocal=False, epochs=0)
    if args.runlocal:
        datasets = {"digits": args.epochs or arms.LOCAL_EPOCHS}
        rest = {}
    else:  # the run lengths of configs/dst.py: CIFAR-100 halves GGR's 200 epochs
        datasets = {"cifar100": 100, "tiny_imagenet": 200}
        rest = {"model.name": ["mobilenet_v2", "resnet18", "vgg16"]}
    grids = []
    for dataset, epochs in datasets.items():
        data = {} if args.runlocal else {"data": {dataset: _protocol(dataset)}}
        sparse = {**data, **rest, "mask.distribution": ["uniform", "erk"],
                  "mask.sparsity": [0.9, 0.97, 0.99]}
        grids += [{**data, **rest, "method": {"dense": {"mask.method": "dense",
                                                        "dst.method": "static"}}},
                  {**sparse, "method": METHODS},
                  {**sparse, "method": {"gmp": gmp(epochs)}}]
    return {"grids": grids, "seeds": arms.SEEDS}
