"""Masks made in PyTorch, imported onto Flax params (ALGORITHMS.md: "a mask made elsewhere").

Sparsejax's own format is the ``.npz`` of ``sparsejax.masks.save`` / ``load``. ``load_torch_masks``
reads a PyTorch checkpoint (``torch.save`` of a ``state_dict``, or of a dict holding one under
``"state_dict"``) and takes, for each prunable weight:

- its ``<name>.weight_mask`` buffer when there is one (``torch.nn.utils.prune`` stores
  ``weight_orig`` + ``weight_mask``; Synaptic-Flow's layers store ``weight`` + ``weight_mask``);
- otherwise ``weight != 0`` (a pruned state_dict, e.g. after ``torch.nn.utils.prune.remove``).

PyTorch weights are (out, in, *spatial): conv OIHW becomes Flax HWIO, linear (out, in) becomes
(in, out). A linear layer fed by a flattened feature map with spatial size > 1 has its inputs in
(C, H, W) order in PyTorch and (H, W, C) in Flax; such rows are not reordered here (the CIFAR
ResNets, VGG and MobileNet pool to 1×1 before their classifier, so they do not need it).

``torch`` is an optional extra, imported only when a file has to be read.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from sparsejax import distributions, paths

_MASK, _ORIG = "_mask", "_orig"
WEIGHT_SUFFIXES = ("weight", "weight_orig", "weight_mask")


@dataclasses.dataclass(frozen=True)
class TorchImport:
    """What ``load_torch_masks`` did.

    matched: ``(torch weight name, flax path, source)`` with source ``"weight_mask"`` or
      ``"weight != 0"``; unused: PyTorch prunable weights that went to no Flax parameter;
      unmasked: prunable Flax parameters that got no mask (left all-True).
    """

    matched: tuple[tuple[str, str, str], ...]
    unused: tuple[str, ...]
    unmasked: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"{t} -> {f} ({src})" for t, f, src in self.matched]
        lines += [f"unused torch weight: {t}" for t in self.unused]
        lines += [f"no mask (all kept): {f}" for f in self.unmasked]
        return "\n".join(lines)


def _read(source: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        state = source
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError("reading a PyTorch checkpoint needs torch; install the extra: "
                              "pip install -e .[torch]") from e
        state = torch.load(os.fspath(source), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a PyTorch state_dict (a dict of tensors), got "
                         f"{type(state).__name__}; save one with "
                         "torch.save(model.state_dict(), path)")
    return state


def _base(name: str) -> str:
    """``conv1.weight_mask`` / ``conv1.weight_orig`` / ``conv1.weight`` -> ``conv1.weight``."""
    for suffix in (_MASK, _ORIG):
        if name.endswith("weight" + suffix):
            return name[: -len(suffix)]
    return name


def _torch_masks(state: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, str]]:
    """``{weight name: (bool mask in PyTorch layout, source)}`` for every weight with ndim >= 2."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    for name, tensor in state.items():
        if name.split(".")[-1] not in WEIGHT_SUFFIXES or len(tuple(tensor.shape)) < 2:
            continue
        base = _base(name)
        if name.endswith(_MASK):
            out[base] = (np.asarray(tensor != 0), "weight_mask")
        elif base + _MASK not in state and base not in out:
            out[base] = (np.asarray(tensor != 0), "weight != 0")
    return out


def to_flax_layout(mask: np.ndarray) -> np.ndarray:
    """(out, in, *spatial) -> (*spatial, in, out): OIHW -> HWIO, linear (out, in) -> (in, out)."""
    return np.transpose(mask, tuple(range(2, mask.ndim)) + (1, 0))


def load_torch_masks(source: str | os.PathLike | Mapping[str, Any], params: Any, *,
                     names: Mapping[str, str] | None = None,
                     order: Sequence[str] | None = None,
                     filter_fn: paths.FilterFn | None = None) -> tuple[Any, TorchImport]:
    """Masks for ``params`` from a PyTorch checkpoint file (or an already loaded state_dict).

    Args:
      source: path of a ``torch.save``-d state_dict, or the state_dict itself (tensors or arrays).
      params: the Flax params the masks are for.
      names: ``{torch weight name: flax path}``, e.g. ``{"layer1.0.conv1.weight":
        "layer1_0/conv1/kernel"}`` (``.weight_mask`` / ``.weight_orig`` names are accepted too).
        Only these pairs are used. Default: pair the PyTorch weights (ndim >= 2, in state_dict
        order) with the prunable Flax kernels in definition order
        (``sparsejax.distributions.definition_order``), one to one, checking every shape.
        Definition order is the insertion order of the params dicts, which an eager
        ``model.init`` keeps but anything passing the params through JAX (``jit``, ``tree.map``,
        a checkpoint restore) replaces by sorted key order; for such params pass ``order`` or
        ``names``.
      order: the Flax parameter paths in definition order for the default pairing (not with
        ``names``), e.g. ``definition_order`` of params from an eager ``model.init``.
      filter_fn: which Flax leaves are prunable for the default pairing and the report.

    Returns:
      ``(masks, report)``: masks shaped like ``params`` (all-True where no mask was imported) and a
      ``TorchImport`` listing matched, unused and unmasked tensors.

    Raises:
      ValueError: a paired tensor whose transposed shape differs from the Flax shape (naming both),
        or a name in ``names`` that is not in the checkpoint or not a Flax parameter.
      ImportError: reading a file without torch installed.
    """
    if names is not None and order is not None:
        raise ValueError("pass either names (explicit pairs) or order (for the default pairing), "
                         "not both")
    torch_masks = _torch_masks(_read(source))
    flat = paths.flatten(params)
    prunable = paths.prunable(params, filter_fn)
    if names is None:
        order = distributions.definition_order(params) if order is None else list(order)
        for path in order:
            if path not in flat:
                raise ValueError(f"order lists {path!r}, which is not a parameter path; paths "
                                 f"look like {next(iter(prunable or flat), '<none>')!r}")
        kernels = [p for p in order if p in prunable]
        pairs = list(zip(torch_masks, kernels))
    else:
        pairs = [(_base(t), f) for t, f in names.items()]
        for t, f in pairs:
            if t not in torch_masks:
                raise ValueError(f"names maps {t!r}, which is not a prunable weight of the "
                                 f"checkpoint (ndim >= 2, named *.weight / *.weight_mask); it has "
                                 f"e.g. {list(torch_masks)[:3]}")
            if f not in flat:
                raise ValueError(f"names maps {t!r} to {f!r}, which is not a parameter path; "
                                 f"paths look like {next(iter(prunable or flat), '<none>')!r}")
    chosen: dict[str, jnp.ndarray] = {}
    matched = []
    for t, f in pairs:
        mask, source_kind = torch_masks[t]
        flax_mask = to_flax_layout(mask)
        want = tuple(np.shape(flat[f]))
        if flax_mask.shape != want:
            raise ValueError(f"torch tensor {t!r} has shape {mask.shape} ({flax_mask.shape} in "
                             f"Flax layout) but flax parameter {f!r} has shape {want}; "
                             "pass names={torch_name: flax_path} to pair the tensors by name "
                             "(or order=, the Flax paths in definition order)")
        chosen[f] = jnp.asarray(flax_mask)
        matched.append((t, f, source_kind))
    used = {t for t, _ in pairs}
    masks = paths.unflatten(params, {
        p: chosen[p] if p in chosen else jnp.asarray(np.ones(np.shape(leaf), bool))
        for p, leaf in flat.items()})
    report = TorchImport(matched=tuple(matched),
                         unused=tuple(t for t in torch_masks if t not in used),
                         unmasked=tuple(p for p in prunable if p not in chosen))
    return masks, report
