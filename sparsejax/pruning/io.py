"""PyTorch interop: masks and weights of a PyTorch ``state_dict`` onto Flax, and masks back.

A lottery ticket is a mask and its initial (or rewound) weights (ALGORITHMS.md: "a mask made
elsewhere"). Sparsejax's own format is the ``.npz`` of ``sparsejax.masks.save`` and
``sparsejax.train.workdir.save_variables``; this module reads and writes PyTorch's:

- ``load_torch_masks``: for each prunable weight, its ``<name>.weight_mask`` buffer when there is
  one (``torch.nn.utils.prune`` stores ``weight_orig`` + ``weight_mask``; Synaptic-Flow's layers
  store ``weight`` + ``weight_mask``), otherwise ``weight != 0`` (a pruned state_dict, e.g. after
  ``torch.nn.utils.prune.remove``);
- ``load_torch_variables``: conv and linear weights and biases, BatchNorm weight, bias,
  running_mean and running_var, onto ``{"params": ..., "batch_stats": ...}``;
- ``save_torch_masks``: ``<name>.weight_mask`` tensors, as ``torch.nn.utils.prune`` keeps them.

Pairing is by name (`torch_names`), never by position: the order of the Flax dicts does not survive
``jit``, ``paths.unflatten`` or a checkpoint restore (they sort the keys). ``names={torch name: flax
path}`` replaces the rule. Ghost parameters (ToST) are never paired and stay as they are.

PyTorch weights are (out, in, *spatial): conv OIHW is Flax HWIO, linear (out, in) is Flax (in, out).
A linear layer fed by a flattened feature map with spatial size > 1 has its inputs in (C, H, W)
order in PyTorch and (H, W, C) in Flax; such rows are not reordered here (the CIFAR ResNets, VGG
and MobileNets pool to 1×1 before their classifier, so they do not need it).

``torch`` is an optional extra, imported only when a file is read or written.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from sparsejax import files, masks as masks_lib, paths
from sparsejax.errors import FileFormatError
from sparsejax.models.vgg import POOL, VGG16_LAYERS

TORCH_SUFFIXES = (".pt", ".pth", ".tar")  # files the config keys read as PyTorch checkpoints
_MASK, _ORIG = "_mask", "_orig"
WEIGHT_SUFFIXES = ("weight", "weight_orig", "weight_mask")
_BN_STEPS = "num_batches_tracked"  # PyTorch BatchNorm's step counter; Flax has none
FLAX_TO_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
                      "mean": "running_mean", "var": "running_var"}


def _vgg_features(layers: Sequence[int | str]) -> dict[str, str]:
    """VGG ``conv_i``/``bn_i`` -> ``features.k``/``features.k+1``: PyTorch's ``nn.Sequential`` has
    (conv, BN, ReLU) per conv and one max-pool per "M"."""
    out, k, i = {}, 0, 0
    for layer in layers:
        if layer == POOL:
            k += 1
            continue
        out[f"conv_{i}"], out[f"bn_{i}"] = f"features.{k}", f"features.{k + 1}"
        i, k = i + 1, k + 3
    return out


_SHORTCUT = {"conv_shortcut": "shortcut.0", "bn_shortcut": "shortcut.1"}
# The zoo's module names -> kuangliu pytorch-cifar's, per model family: (a module only that family
# has, its renames). ResNet ``layer1_0`` -> ``layer1.0`` and MobileNet ``block3`` -> ``layers.3``
# are renamed by `_BLOCK`.
ZOO_LAYOUTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("layer1_0/bn1", {**_SHORTCUT, "classifier": "linear"}),  # ResNets (6n+2: akamaster option B)
    ("bn_0", _vgg_features(VGG16_LAYERS)),  # VGG-16
    ("block0/bn_pw", {"conv_dw": "conv1", "bn_dw": "bn1", "conv_pw": "conv2", "bn_pw": "bn2",
                      "classifier": "linear"}),  # MobileNet v1
    ("block0/bn1", {**_SHORTCUT, "conv_dw": "conv2", "bn_dw": "bn2",
                    "classifier": "linear"}),  # MobileNet v2
)
_BLOCK = re.compile(r"layer(\d+)_(\d+)|block(\d+)")


@dataclasses.dataclass(frozen=True)
class TorchImport:
    """What ``load_torch_masks`` / ``load_torch_variables`` did.

    matched: ``(torch name, flax path, source)``; source is ``"weight_mask"`` or ``"weight != 0"``
      for masks, ``"value"`` or ``"weight_orig * weight_mask"`` for variables. unused: PyTorch
      tensors that went to no Flax leaf. unpaired: Flax leaves that got nothing (masks: prunable
      kernels, left all-True; variables: non-ghost leaves, left as given).
    """

    matched: tuple[tuple[str, str, str], ...]
    unused: tuple[str, ...]
    unpaired: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"{t} -> {f} ({src})" for t, f, src in self.matched]
        lines += [f"unused torch tensor: {t}" for t in self.unused]
        lines += [f"no torch tensor (kept as given): {f}" for f in self.unpaired]
        return "\n".join(lines)


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading or writing a PyTorch checkpoint needs torch; install the "
                          "extra: pip install -e .[torch]") from e
    return torch


def _read(source: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        state = source
    else:
        try:
            state = _torch().load(os.fspath(source), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as e:
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            raise FileFormatError(f"{os.fspath(source)!r} is not a PyTorch checkpoint of tensors "
                                  f"(torch.load: {reason}); save one with "
                                  "torch.save(model.state_dict(), path)") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise FileFormatError(f"expected a PyTorch state_dict (a dict of tensors), got "
                              f"{type(state).__name__}; save one with "
                              "torch.save(model.state_dict(), path)")
    return state


def _base(name: str) -> str:
    """``conv1.weight_mask`` / ``conv1.weight_orig`` / ``conv1.weight`` -> ``conv1.weight``."""
    for suffix in (_MASK, _ORIG):
        if name.endswith("weight" + suffix):
            return name[: -len(suffix)]
    return name


def _torch_masks(state: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """``{weight name: (bool mask in PyTorch layout, source)}`` for every weight with ndim >= 2."""
    out: dict[str, tuple[Any, str]] = {}
    for name, tensor in state.items():
        if name.split(".")[-1] not in WEIGHT_SUFFIXES or len(tuple(tensor.shape)) < 2:
            continue
        base = _base(name)
        if name.endswith(_MASK):
            out[base] = (tensor != 0, "weight_mask")
        elif base + _MASK not in state and base not in out:
            out[base] = (tensor != 0, "weight != 0")
    return out


def _torch_values(state: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """``{name: (value, source)}`` of the tensors a PyTorch module computes with: ``weight`` is
    ``weight_orig * weight_mask`` under ``torch.nn.utils.prune``; masks and BatchNorm step counters
    are left out."""
    out: dict[str, tuple[Any, str]] = {}
    for name, tensor in state.items():
        if name.endswith(_MASK) or name.endswith(_BN_STEPS):
            continue
        if name.endswith(_ORIG):
            out[_base(name)] = (tensor * state[_base(name) + _MASK], "weight_orig * weight_mask")
        else:
            out[name] = (tensor, "value")
    return out


def to_flax_layout(array: np.ndarray) -> np.ndarray:
    """(out, in, *spatial) -> (*spatial, in, out): OIHW -> HWIO, linear (out, in) -> (in, out)."""
    return np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))


def to_torch_layout(array: np.ndarray) -> np.ndarray:
    """(*spatial, in, out) -> (out, in, *spatial), the inverse of `to_flax_layout`."""
    return np.transpose(array, (array.ndim - 1, array.ndim - 2) + tuple(range(array.ndim - 2)))


def _torch_module(name: str, renames: Mapping[str, str]) -> str:
    if name in renames:
        return renames[name]
    block = _BLOCK.fullmatch(name)
    if block is None:
        return name
    return f"layer{block[1]}.{block[2]}" if block[1] else f"layers.{block[3]}"


def torch_names(tree: Any) -> dict[str, str]:
    """``{flax path: PyTorch tensor name}``, the pairing rule, for one collection (params or
    batch_stats) of a model.

    The leaf is renamed (``kernel``, ``scale`` -> ``weight``; ``bias``; ``mean`` ->
    ``running_mean``; ``var`` -> ``running_var``) and the modules joined with ".": ``fc/kernel`` ->
    ``fc.weight``.
    For the model zoo (`ZOO_LAYOUTS`) the modules are renamed to the kuangliu pytorch-cifar layout:
    ResNet ``layer1_0/conv_shortcut/kernel`` -> ``layer1.0.shortcut.0.weight``, VGG
    ``conv_1/kernel`` -> ``features.3.weight``, MobileNet v2 ``block3/conv_dw/kernel`` ->
    ``layers.3.conv2.weight``, ``classifier`` -> ``linear`` (VGG: ``classifier``). Ghost leaves and
    leaves of other names get none.
    """
    flat = [p for p in paths.flatten(tree) if not paths.is_ghost(p)]
    modules = {p.rpartition("/")[0] for p in flat}
    renames = next((r for marker, r in ZOO_LAYOUTS if marker in modules), None)
    out = {}
    for path in flat:
        *module, leaf = path.split("/")
        if leaf in FLAX_TO_TORCH_LEAF:
            if renames is not None:
                module = [_torch_module(m, renames) for m in module]
            out[path] = ".".join([*module, FLAX_TO_TORCH_LEAF[leaf]])
    return out


def _check_flax_path(torch_name: str, flax_path: str, flax_paths: Sequence[str],
                     what: str = "parameter path") -> None:
    if flax_path not in flax_paths:
        raise FileFormatError(f"names maps {torch_name!r} to {flax_path!r}, which is not a {what}; "
                              f"paths look like {next(iter(flax_paths), '<none>')!r}")


def _pairs(rule: Mapping[str, str], available: Sequence[str], flax_paths: Sequence[str],
           names: Mapping[str, str] | None, what: str) -> list[tuple[str, str]]:
    """``(torch name, flax path)`` pairs: ``names`` as given (each checked), else each available
    torch tensor with the Flax path whose ``rule`` name it has."""
    if names is not None:
        pairs = [(_base(t), f) for t, f in names.items()]
        for t, f in pairs:
            if t not in available:
                raise FileFormatError(f"names maps {t!r}, which is not a {what} of the checkpoint; "
                                      f"it has e.g. {list(available)[:3]}")
            _check_flax_path(t, f, flax_paths)
        return pairs
    by_torch_name = {t: f for f, t in rule.items()}
    pairs = [(t, by_torch_name[t]) for t in available if t in by_torch_name]
    if not pairs:
        flax_path, torch_name = next(iter(rule.items()), ("<none>", "<none>"))
        raise FileFormatError(f"no tensor of the PyTorch checkpoint has the name of a Flax "
                              f"parameter (it has e.g. {next(iter(available), '<none>')!r}; "
                              f"{flax_path!r} would be {torch_name!r}); pass "
                              "names={torch name: flax path}")
    return pairs


def _fitted(torch_name: str, tensor: Any, flax_path: str, like: Any) -> np.ndarray:
    """``tensor`` in Flax layout, or a one-line error naming both tensors when the shapes differ."""
    value = np.asarray(tensor)
    flax_value = to_flax_layout(value) if value.ndim >= 2 else value
    want = tuple(np.shape(like))
    if flax_value.shape != want:
        raise FileFormatError(f"torch tensor {torch_name!r} has shape {value.shape} "
                              f"({flax_value.shape} in Flax layout) but flax parameter "
                              f"{flax_path!r} has shape {want}; build the Flax model the "
                              "checkpoint was made for (same widths and classes) or pass "
                              "names={torch name: flax path}")
    return flax_value


def load_torch_masks(source: str | os.PathLike | Mapping[str, Any], params: Any, *,
                     names: Mapping[str, str] | None = None,
                     filter_fn: paths.FilterFn | None = None) -> tuple[Any, TorchImport]:
    """Masks for ``params`` from a PyTorch checkpoint file (or an already loaded state_dict).

    Args:
      source: path of a ``torch.save``-d state_dict (or of a dict holding one under
        ``"state_dict"``), or the state_dict itself (tensors or arrays).
      params: the Flax params the masks are for, their dicts in any order.
      names: ``{torch weight name: flax path}``, e.g. ``{"layer1.0.conv1.weight":
        "layer1_0/conv1/kernel"}`` (``.weight_mask`` / ``.weight_orig`` names are accepted too);
        only these pairs are used. Default: each prunable kernel with the PyTorch weight of its
        `torch_names` name.
      filter_fn: which Flax leaves are prunable (default ``paths.default_filter``).

    Returns:
      ``(masks, report)``: masks shaped like ``params`` (all-True where no mask was imported) and a
      `TorchImport`.

    Raises:
      FileFormatError (a ValueError): a paired tensor whose shape does not fit (naming both), a
        name in ``names`` that is not in the checkpoint or not a Flax parameter, no tensor paired.
      ImportError: reading a file without torch installed.
    """
    torch_masks = _torch_masks(_read(source))
    flat = paths.flatten(params)
    prunable = paths.prunable(params, filter_fn)
    rule = {p: t for p, t in torch_names(params).items() if p in prunable}
    pairs = _pairs(rule, list(torch_masks), list(flat), names,
                   "prunable weight (ndim >= 2, named *.weight or *.weight_mask)")
    chosen = {f: jnp.asarray(_fitted(t, torch_masks[t][0], f, flat[f])) for t, f in pairs}
    ones = {p: jnp.asarray(np.ones(np.shape(leaf), bool)) for p, leaf in flat.items()
            if p not in chosen}  # from NumPy: no compiled fill per shape
    masks = paths.unflatten(params, {**ones, **chosen})
    used = {t for t, _ in pairs}
    report = TorchImport(matched=tuple((t, f, torch_masks[t][1]) for t, f in pairs),
                         unused=tuple(t for t in torch_masks if t not in used),
                         unpaired=tuple(p for p in prunable if p not in chosen))
    return masks, report


def load_torch_variables(source: str | os.PathLike | Mapping[str, Any], variables: Any, *,
                         names: Mapping[str, str] | None = None) -> tuple[Any, TorchImport]:
    """``variables`` with the values of a PyTorch checkpoint (a lottery ticket's weights).

    Conv and linear weights and biases go to ``params`` (transposed to Flax layout), BatchNorm
    weight and bias to ``params`` (``scale``, ``bias``) and running_mean / running_var to
    ``batch_stats`` (``mean``, ``var``), cast to the dtype of the leaf they replace. A pruned module
    (``weight_orig`` + ``weight_mask``) gives ``weight_orig * weight_mask``, the weight it computes
    with. Ghost parameters (ToST ghost skips) and leaves nothing pairs with keep their values.

    Args:
      source: as for `load_torch_masks`.
      variables: ``{"params": ..., "batch_stats": ...}`` (arrays or shapes) of the Flax model.
      names: ``{torch tensor name: flax variables path}``, e.g. ``{"bn1.running_mean":
        "batch_stats/bn1/mean"}``; only these pairs are used. Default: each collection's
        `torch_names`.

    Returns:
      ``(variables, report)``: the same structure with the paired leaves replaced, and a
      `TorchImport`.

    Raises:
      as `load_torch_masks`.
    """
    tensors = _torch_values(_read(source))
    flat = paths.flatten(variables)
    rule = {f"{collection}/{p}": t for collection, tree in variables.items()
            for p, t in torch_names(tree).items()}
    pairs = _pairs(rule, list(tensors), list(flat), names, "tensor")
    loaded = {f: jnp.asarray(_fitted(t, tensors[t][0], f, flat[f]), dtype=flat[f].dtype)
              for t, f in pairs}
    used = {t for t, _ in pairs}
    report = TorchImport(matched=tuple((t, f, tensors[t][1]) for t, f in pairs),
                         unused=tuple(t for t in tensors if t not in used),
                         unpaired=tuple(p for p in flat
                                        if p not in loaded and not paths.is_ghost(p)))
    return paths.unflatten(variables, {p: loaded.get(p, leaf) for p, leaf in flat.items()}), report


def save_torch_masks(path: str | os.PathLike, masks: Any, params: Any,
                     names: Mapping[str, str] | None = None, *,
                     filter_fn: paths.FilterFn | None = None) -> None:
    """Writes the masks of ``params``' prunable kernels to ``path`` as PyTorch
    ``<name>.weight_mask`` tensors (float32 0/1 in PyTorch layout, as ``torch.nn.utils.prune``
    keeps them), atomically.

    ``names``: ``{torch weight name: flax path}`` as in `load_torch_masks`; default `torch_names`.
    PyTorch code applies them with ``torch.nn.utils.prune.custom_from_mask(module, "weight",
    state[name + ".weight_mask"])``. Raises ValueError for masks that do not fit ``params``,
    FileFormatError (a ValueError) for a ``names`` path that is not a prunable parameter.
    """
    torch = _torch()
    masks_lib.validate(masks, params)
    flat = paths.flatten(masks)
    prunable = paths.prunable(params, filter_fn)
    if names is None:
        pairs = [(t, f) for f, t in torch_names(params).items() if f in prunable]
    else:
        pairs = [(_base(t), f) for t, f in names.items()]
        for t, f in pairs:
            _check_flax_path(t, f, list(prunable), "prunable parameter path")
    state = {t + _MASK: torch.from_numpy(np.ascontiguousarray(to_torch_layout(np.asarray(flat[f])),
                                                              np.float32))
             for t, f in pairs}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files.write_atomic(path, buffer.getvalue())
