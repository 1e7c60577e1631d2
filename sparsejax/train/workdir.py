"""The run directory: made and checked before anything is written, locked while a run uses it, and
written only atomically (``sparsejax.files``), so no file in it is ever half-written.

Layout: ``config.json`` (the run's config; a workdir holds one config), ``.lock.<process>``,
``checkpoints/`` (orbax), ``metrics.jsonl``, ``tensorboard/``, ``rewind.npz`` (variables at
``init.save_at_epoch``), ``initial_masks.npz`` (the masks step 0 starts from, found on the plain
network; ``sparsejax.masks.save`` format), ``final_variables.npz`` and ``summary.json`` at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from sparsejax import files, paths, pruning
from sparsejax.errors import TrainError

FINAL_VARIABLES = "final_variables.npz"  # the trained (plain) network's params and batch_stats
REWIND_VARIABLES = "rewind.npz"          # the variables at config.init.save_at_epoch
INITIAL_MASKS = "initial_masks.npz"      # the plain network's masks at step 0

@contextlib.contextmanager
def locked(workdir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Creates ``workdir`` and holds its lock: a second run on it is refused at once, naming the
    live process. The lock is an ``flock`` (one per process index of a multi-host job), so a killed
    run leaves none behind."""
    workdir = pathlib.Path(workdir).resolve()
    path = workdir / f".lock.{jax.process_index()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a+")
    except OSError as e:
        raise TrainError(f"workdir {str(workdir)!r} is not writable ({e.strerror}); pass a "
                         "writable --workdir") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise TrainError(f"workdir {str(workdir)!r} is in use by {holder}; wait for that run "
                             "to end or pass another --workdir") from None
        lock.truncate(0)
        lock.write(f"process {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        try:
            yield workdir
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writes ``config.json``, or refuses a workdir that holds a run of another config."""
    saved = workdir / "config.json"
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous != current:
            old = traverse_util.flatten_dict(previous, sep=".")
            new = traverse_util.flatten_dict(current, sep=".")
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise TrainError(f"workdir {str(workdir)!r} holds a run of a different config "
                             f"(differs in {', '.join(keys[:5])}); use another --workdir or "
                             "delete that one")
    elif jax.process_index() == 0:
        write_json(saved, current, sort_keys=True)


def write_json(path: pathlib.Path, value: Any, sort_keys: bool = False) -> None:
    files.write_atomic(path, json.dumps(value, indent=2, sort_keys=sort_keys))


def save_variables(path: pathlib.Path, variables: Any) -> None:
    """Writes variables (params, batch_stats) to an ``.npz`` keyed by path, atomically."""
    files.save_npz(path, paths.flatten(variables))


def load_variables(path: str | os.PathLike, like: Any, *, flag: str = "init.variables_file",
                   complete: bool = False) -> Any:
    """Variables saved by `save_variables`, or a PyTorch state_dict (``.pt``:
    `sparsejax.pruning.load_torch_variables`), onto ``like``'s structure (arrays or shapes).

    Paths the file lacks keep ``like``'s values, unless ``complete``: then every path of ``like``
    must be in the file. ``flag`` names the config key in the errors (`TrainError`, one line).
    """
    read = (_torch_variables if pathlib.Path(path).suffix in pruning.TORCH_SUFFIXES
            else _npz_variables)
    try:
        variables, missing = read(path, like, flag)
    except FileNotFoundError:
        raise TrainError(f"variables file {os.fspath(path)!r} does not exist; check "
                         f"--config.{flag}") from None
    if complete and missing:
        raise TrainError(f"variables file {os.fspath(path)!r} lacks {missing[0]!r} "
                         f"({len(missing)} entries); it was saved for another model "
                         f"(--config.{flag})")
    return variables


def _npz_variables(path: str | os.PathLike, like: Any, flag: str) -> tuple[Any, list[str]]:
    """``(variables, paths of like the file lacks)`` from an ``.npz`` of `save_variables`."""
    stored = files.read_npz(path, "variables file",
                            "make one with sparsejax.train.workdir.save_variables")
    want = paths.flatten(like)
    for k, v in stored.items():
        if k not in want or tuple(jnp.shape(want[k])) != v.shape:
            raise TrainError(f"variables file {os.fspath(path)!r} has {k!r} {v.shape}, which does "
                             f"not fit this model; it was saved for another model (--config.{flag})")
    variables = paths.unflatten(like, {**want, **{k: jnp.asarray(v) for k, v in stored.items()}})
    return variables, [k for k in want if k not in stored]


def _torch_variables(path: str | os.PathLike, like: Any, flag: str) -> tuple[Any, list[str]]:
    """``(variables, paths nothing paired with)`` from a PyTorch state_dict; the pairing report is
    printed on process 0."""
    try:
        variables, report = pruning.load_torch_variables(path, like)
    except ValueError as e:
        raise TrainError(f"variables file {os.fspath(path)!r}: {e} (--config.{flag})") from None
    if jax.process_index() == 0:
        print(f"variables import from {os.fspath(path)}: {report}")
    return variables, list(report.unpaired)
