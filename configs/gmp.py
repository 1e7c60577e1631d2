"""Gradual magnitude pruning (Zhu & Gupta 2017), dense to sparse: RigL's "prune" baseline on CIFAR.

Dense masks at the start; ``sparse_training(method="gmp")`` prunes by magnitude (per layer, or
``scope=global``) along the cubic schedule to ``sparsity`` at 75% of training, then the final mask
trains for the rest, in the base recipe (ResNet-18, 180 epochs, SGD 0.1, ×0.1 at 90/135).
Schedule from RigL's CIFAR code (google-research/rigl, ``rigl/cifar_resnet/resnet_train_eval.py``,
``--training_method=prune``: ``sparsity_begin_step=20000``, ``sparsity_end_step=75000`` of
``max_steps=97656``, ``pruning_frequency=1000``; its DST mask updates are every 100 steps): pruning
starts at 20% of training, ends at 75% (``dst.end_fraction``; RigL's 76.8%) and prunes every 1000
steps (and at the end step). RigL leaves the first layer dense there; here every conv and dense
kernel is pruned (the default filter), as for the other methods.
``--config=configs/gmp.py:sparsity=0.95,scope=global``; arguments ``sparsity`` (final),
``scope`` (layer | global), ``dataset`` (cifar10 | cifar100 | tiny_imagenet), ``model``,
``start_fraction``, ``update_every`` (steps; 0 = once per epoch), ``runlocal`` (digits, ResNet-20,
6 epochs, pruning once per epoch from epoch 1).
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = base.parse_arg(arg, sparsity=0.9, scope="layer", dataset="cifar10", model="resnet18",
                          start_fraction=0.2, update_every=1000, runlocal=False)
    c = base.get_config()
    c.name = f"gmp_{args.dataset}_{args.model}_{args.scope}_{args.sparsity}"
    c.data.name = args.dataset
    c.model.name = args.model
    c.mask.method = "dense"
    c.mask.sparsity = args.sparsity  # the final masks' (unused by "dense": they start all ones)
    c.dst.method = "gmp"
    c.dst.update_every = args.update_every
    c.dst.end_fraction = 0.75  # the last pruning step (included), then the final mask trains
    c.dst.options.final_sparsity = args.sparsity
    c.dst.options.scope = args.scope
    if args.runlocal:
        c = base.runlocal(c)
        c.dst.update_every = 0  # once per epoch: a few pruning steps in the short run
    c.dst.start_epoch = int(round(args.start_fraction * c.num_epochs))
    return c
