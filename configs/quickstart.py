"""Quickstart: a 90%-sparse ResNet-20 on scikit-learn's digits (offline), vanilla vs ToST.

Runs in a few minutes on 2 CPU cores and prints a table of the two test accuracies:
``python -m launch --config=configs/quickstart.py``. Arguments: ``:sparsity=0.95,epochs=40``;
``:variant=tost`` (or ``vanilla``) trains that one run alone; ``runlocal`` shrinks it to 6 epochs.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = base.parse_arg(arg, sparsity=0.9, epochs=30, variant="", runlocal=False)
    c = base.get_config()
    c.name = f"quickstart_{args.variant}" if args.variant else "quickstart"
    c.data.name = "digits"
    c.model.name = "resnet20"
    c.num_epochs = args.epochs
    c.batch_size = 128
    c.optimizer.decay_epochs = (args.epochs // 2, args.epochs * 3 // 4)
    c.mask.method = "random"
    c.mask.distribution = "erk"
    c.mask.sparsity = args.sparsity
    c.log_every_steps = 10
    tost = {"ghost_skip": "conv1x1", "ghost_swish": True, "beta0": 1.0, "beta_max": 4.0,
            "label_smoothing": 0.1}
    if args.variant == "tost":
        c.tost.update(tost)
    elif not args.variant:
        c.mode = "compare"
        c.compare = ml_collections.ConfigDict({"vanilla": {}, "tost": {"tost": tost}})
    elif args.variant != "vanilla":
        raise ValueError(f"unknown quickstart variant {args.variant!r}; use vanilla or tost")
    return base.runlocal(c) if args.runlocal else c
