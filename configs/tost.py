"""ToST (paper 000): a sparse mask trained with ghost skips, ghost Swish and label smoothing.

The papers' CIFAR protocol (180 epochs, lr 0.1 ×0.1 at 90/135, batch 128, wd 2e-4) with the ghost
phase ending right before the first decay. Arguments, e.g.
``--config=configs/tost.py:model=vgg16,dataset=cifar100,mask=snip,sparsity=0.95``:

- ``model``: resnet18 | resnet32 | resnet50 | vgg16 | mobilenet_v1 (any name of sparsejax.models);
- ``dataset``: cifar10 | cifar100; ``mask``: random | magnitude | snip | grasp | synflow | file;
- ``vanilla``: switch the tweaks off (the baseline row of the paper's tables);
- ``runlocal``: the same on the embedded digits data with a ResNet-20, 6 epochs;
- ``ghost``: conv1x1 (default: the released code's 1×1 conv + BatchNorm path, which produced the
  paper's tables) | identity (the paper text's reading). ResNet-50's bottleneck blocks get one ghost
  path around their 3×3 conv (the release has none there; see sparsejax.models.resnet).
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = base.parse_arg(arg, model="resnet18", dataset="cifar10", mask="random", sparsity=0.9,
                          ghost="conv1x1", vanilla=False, runlocal=False)
    c = base.get_config()
    c.name = f"tost_{args.dataset}_{args.model}_{args.mask}_{args.sparsity}" + (
        "_vanilla" if args.vanilla else "")
    c.data.name = args.dataset
    c.model.name = args.model
    c.mask.method = args.mask
    c.mask.sparsity = args.sparsity
    c.mask.distribution = "uniform"
    if not args.vanilla:
        c.tost.ghost_skip = args.ghost
        c.tost.ghost_swish = True
        c.tost.beta0, c.tost.beta_max = 1.0, 10.0
        c.tost.label_smoothing = 0.1
    return base.runlocal(c) if args.runlocal else c
