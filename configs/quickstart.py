"""Quickstart: a 90%-sparse ResNet-20 on scikit-learn's digits (offline), vanilla vs ToST.

Runs in a few minutes on 2 CPU cores and prints a table of the two test accuracies:
``python -m launch --config=configs/quickstart.py``. Arguments: ``:sparsity=0.95,epochs=40``.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = base.parse_arg(arg, sparsity=0.9, epochs=30)
    c = base.get_config()
    c.name = "quickstart"
    c.data.name = "digits"
    c.model.name = "resnet20"
    c.num_epochs = args.epochs
    c.batch_size = 128
    c.optimizer.decay_epochs = (args.epochs // 2, args.epochs * 3 // 4)
    c.mask.method = "random"
    c.mask.distribution = "erk"
    c.mask.sparsity = args.sparsity
    c.log_every_steps = 10
    tost = {"ghost_skip": "identity", "ghost_swish": True, "beta0": 1.0, "beta_max": 4.0,
            "label_smoothing": 0.1}
    c.compare = ml_collections.ConfigDict({"vanilla": {}, "tost": {"tost": tost}})
    return c
