"""Dynamic sparse training (SET, RigL, DSR, GGR) as in the GGR paper (004).

GGR's protocol: 200 epochs (CIFAR-100: all epochs halved), batch 128, lr 0.1 after one warm-up epoch
from 0, ×0.2 at epochs 60/120/160; connectivity redistributed at the start of every epoch except the
first, with a drop fraction decaying by cosine from 10% to 0 at half of training, then the final
connectivity trained for the rest. The paper states neither momentum nor weight decay; this keeps the
base recipe's 0.9 and 2e-4. ``--config=configs/dst.py:method=ggr,dataset=cifar100,distribution=erk``;
arguments ``method`` (static | set | rigl | dsr | ggr), ``dataset`` (cifar10 | cifar100 |
tiny_imagenet), ``model``, ``distribution`` (uniform | erk), ``sparsity``, ``grow_gradient_fraction``
(GGR's share grown at the largest gradients), ``runlocal`` (digits, ResNet-20, 6 epochs).
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = base.parse_arg(arg, method="ggr", dataset="cifar100", model="resnet18",
                          distribution="erk", sparsity=0.9, grow_gradient_fraction=0.5,
                          runlocal=False)
    c = base.get_config()
    c.name = f"dst_{args.method}_{args.dataset}_{args.model}_{args.distribution}_{args.sparsity}"
    c.data.name = args.dataset
    c.model.name = args.model
    c.mask.method = "random"
    c.mask.distribution = args.distribution
    c.mask.sparsity = args.sparsity
    scale = 0.5 if args.dataset == "cifar100" else 1.0
    c.num_epochs = int(200 * scale)
    c.optimizer.warmup_epochs = 1
    c.optimizer.decay_epochs = tuple(int(e * scale) for e in (60, 120, 160))
    c.optimizer.decay_factor = 0.2
    c.dst.method = args.method
    c.dst.update_every = 0  # once per epoch
    c.dst.start_epoch = 1
    c.dst.end_fraction = 0.5
    c.dst.drop_fraction = 0.1
    c.dst.drop_schedule = "cosine"
    if args.method == "ggr":  # paper 004's "GGR SET" / "GGR RigL" rows: 0 / 1
        c.dst.options.grow_gradient_fraction = args.grow_gradient_fraction
    return base.runlocal(c) if args.runlocal else c
