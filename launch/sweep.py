"""``python -m launch.sweep --config=FILE[:args] [--grid=key=v1,v2 ...] [--seeds=N] [--workdir=DIR]``.

Trains every point of a grid of settings × seeds, one after another, each into its own directory
``DIR/<point>`` named from the point (``mask.sparsity=0.95,variant=tost,seed=1``), so a point keeps its
directory when the sweep is relaunched or grown. The grid is

- the config file's own, if it defines ``get_sweep(arg) -> {"grid": {...}, "seeds": (...)}``
  (the specs in ``configs/paper/``); a grid value that is a dict is a named axis of override sets,
  ``{"vanilla": {}, "tost": {"tost.ghost_swish": True, ...}}``;
- the axis ``variant`` for a comparison config (``mode = "compare"``: its ``config.compare`` arms);
- ``--grid=key=v1,v2`` (repeatable): any config key, values parsed as that key's type; it replaces
  the file's values for that key, and on a named axis it picks arms by name (``--grid=variant=tost``);
- ``--seeds=N`` (seeds 0..N-1) or ``--seeds=42,1099,5469``; the seed is always the last axis.

Arms of one point with the same seed share the mask and the initialization (masks are found on the
plain network; Flax initializes each module from its own path), so their difference is paired.

A finished point (``point.json``) is skipped, an interrupted one resumes from its checkpoint, a
failed one is reported and the others go on; the exit code is 1 if any failed. Nothing is deleted.
``--slurm`` writes ``DIR/sweep.sbatch`` (a job array, one task per point running this same command
with ``--point=$SLURM_ARRAY_TASK_ID``) instead of training. ``python -m launch.report DIR`` then
aggregates the points over seeds.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import itertools
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Any

import ml_collections
from absl import app, flags, logging

from launch.cli import (config_filename, define_config_flag, fail, load_config, parse_flags,
                        use_compile_cache)

FLAGS = flags.FLAGS
define_config_flag()
flags.DEFINE_multi_string("grid", [], "An axis key=v1,v2 (repeatable): a config key and its values, "
                          "or a named axis of the config file and the arms to run.")
flags.DEFINE_string("seeds", None, "N (seeds 0..N-1) or a list 42,1099,5469 (default: the config "
                    "file's seeds, else the config's seed).")
flags.DEFINE_string("workdir", None, "Sweep directory (default: sweeps/<config name>).")
flags.DEFINE_boolean("slurm", False, "Write DIR/sweep.sbatch (one array task per point) instead of "
                     "training.")
flags.DEFINE_integer("point", None, "Train only this point (its index in the sweep, from 0): what "
                     "each task of the --slurm array runs.")

SEED = "seed"
SWEEP_FILE = "sweep.json"
FINISHED = "point.json"  # written into a point's directory when it has finished


@dataclasses.dataclass(frozen=True)
class Point:
    name: str                   # the directory name: "key=value,...,seed=s"
    values: dict[str, Any]      # axis -> value (the arm's name on a named axis)
    overrides: dict[str, Any]   # config key -> value


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"5"`` -> 0..4; ``"42,1099"`` -> (42, 1099)."""
    try:
        items = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds={text!r} is neither a count nor a list of integers; "
                         "pass --seeds=5 or --seeds=42,1099,5469") from None
    if not items or (len(items) == 1 and items[0] < 1):
        raise ValueError(f"--seeds={text!r} gives no seed; pass --seeds=5 or --seeds=42,1099")
    return tuple(range(items[0])) if len(items) == 1 else tuple(items)


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out += [prefix + k]
        if isinstance(v, ml_collections.ConfigDict):
            out += _keys(v, f"{prefix}{k}.")
    return out


def _default(config: ml_collections.ConfigDict, key: str) -> Any:
    """The value of dotted ``key`` in ``config``; ValueError naming it (and the nearest keys) if none."""
    keys = _keys(config)
    if key not in keys:
        near = difflib.get_close_matches(key, keys, n=2)
        hint = f"did you mean {' or '.join(near)}?" if near else "see the config file for its keys"
        raise ValueError(f"grid key {key!r} is not in the config; {hint}")
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def parse_value(config: ml_collections.ConfigDict, key: str, text: str) -> Any:
    """``text`` as a value of ``key``'s type (bool, int, float, str, tuple)."""
    default = _default(config, key)
    kind = type(default)
    try:
        if isinstance(default, bool):
            value = {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        elif isinstance(default, (int, float)):
            value = kind(text)
        elif isinstance(default, (tuple, list)):
            value = tuple(ast.literal_eval(text))
        else:
            value = text
    except (KeyError, ValueError, TypeError, SyntaxError):
        raise ValueError(f"grid value {text!r} for {key} is not a {kind.__name__} "
                         f"(the config has {default!r})") from None
    return value


def check_value(config: ml_collections.ConfigDict, key: str, value: Any) -> Any:
    """``value`` if it fits ``key``'s type (an int where a float is wanted is widened)."""
    default = _default(config, key)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return tuple(value)
    if isinstance(default, ml_collections.ConfigDict) and isinstance(value, ml_collections.ConfigDict):
        return value
    if type(value) is not type(default):
        raise ValueError(f"grid value {value!r} for {key} is a {type(value).__name__}, not a "
                         f"{type(default).__name__} (the config has {default!r})")
    return value


def _flat(overrides: dict | ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted overrides as ``{"a.b": value}``; a ConfigDict value replaces that section
    whole (e.g. ``dst.options``, whose keys depend on the rule)."""
    out = {}
    for k, v in dict(overrides).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def axes(config: ml_collections.ConfigDict, grid: dict, cli_grid: list[str]
         ) -> list[tuple[str, list[tuple[str, dict[str, Any], Any]]]]:
    """One grid's axes, seeds excluded: ``[(axis, [(label, overrides, value), ...]), ...]``."""
    grid = dict(grid)
    if config.get("mode") == "compare":
        grid["variant"] = {name: config.compare[name].to_dict() for name in config.compare}
    named = {k: v for k, v in grid.items() if isinstance(v, dict)}
    for item in cli_grid:
        key, has_values, values = item.partition("=")
        if not has_values or not values:
            raise ValueError(f"--grid={item!r} has no values; pass --grid=key=v1,v2")
        if key == SEED:
            raise ValueError("the seed is not a grid key; pass --seeds=N or --seeds=s1,s2")
        names = values.split(",")
        if key in named:
            unknown = [n for n in names if n not in named[key]]
            if unknown:
                raise ValueError(f"--grid={item!r}: {key} has no arm {unknown[0]!r}; its arms are "
                                 f"{', '.join(named[key])}")
            grid[key] = {n: named[key][n] for n in names}
        elif key in grid:  # select among the spec's values
            grid[key] = [v for v in grid[key] if v in [parse_value(config, key, n) for n in names]]
        else:
            grid[key] = [parse_value(config, key, v) for v in names]
    out = []
    for key, values in grid.items():
        if isinstance(values, dict):
            arms = []
            for label, overrides in values.items():
                flat = {k: check_value(config, k, v) for k, v in _flat(overrides).items()}
                arms.append((label, flat, label))
            out.append((key, arms))
        else:
            if isinstance(values, (str, bytes)):
                raise ValueError(f"grid axis {key} needs a list of values, not {values!r}")
            checked = [check_value(config, key, v) for v in values]
            out.append((key, [(str(v), {key: v}, v) for v in checked]))
    return out


def points(config: ml_collections.ConfigDict, spec: dict, cli_grid: list[str],
           seeds: tuple[int, ...]) -> list[Point]:
    """Every point of the spec's grids (``grid``, or a list ``grids`` of them) × seeds, seeds
    varying fastest; a point two grids share is trained once."""
    found = {}
    for grid in grids(config, spec, cli_grid):
        for point in _grid_points(grid, seeds):
            found.setdefault(point.name, point)
    return list(found.values())


def grids(config, spec: dict, cli_grid: list[str]) -> list:
    """The axes of each of the spec's grids with ``--grid`` applied: on an axis of the spec it picks
    among the spec's values (each must be one), on any other config key it adds an axis."""
    found = [axes(config, g, cli_grid) for g in spec.get("grids", [spec.get("grid", {})])]
    for item in cli_grid:
        key, _, values = item.partition("=")
        kept = [(label, value) for g in found for axis, arms in g if axis == key
                for label, _, value in arms]
        for text in values.split(","):
            if not any(label == text or value == parse_value(config, key, text)
                       for label, value in kept):
                raise ValueError(f"--grid={item!r}: {text} is not a value of {key} in this "
                                 "sweep's spec; pick among its values or edit the spec")
    return found


def _grid_points(grid, seeds: tuple[int, ...]) -> list[Point]:
    found = []
    for combo in itertools.product(*(arms for _, arms in grid)):
        for seed in seeds:
            values = {axis: value for (axis, _), (_, _, value) in zip(grid, combo)}
            overrides = {k: v for _, flat, _ in combo for k, v in flat.items()}
            labels = [f"{axis}={label}" for (axis, _), (label, _, _) in zip(grid, combo)]
            name = ",".join([*labels, f"{SEED}={seed}"]).replace("/", "_")
            found.append(Point(name, {**values, SEED: seed}, {**overrides, SEED: seed}))
    return found


def point_config(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
    """The base config with ``point``'s overrides, as one training run."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.get("mode") == "compare":
        del c["compare"]
        c.mode = "train"
    c.update_from_flattened_dict(point.overrides)
    c.name = f"{config.name}/{point.name}"
    return ml_collections.ConfigDict(c.to_dict(), type_safe=True)


def load_spec(arg: str | None) -> dict:
    """The config file's ``get_sweep(arg)``, or ``{}`` if it has none."""
    path = config_filename().partition(":")[0]
    module_spec = importlib.util.spec_from_file_location("sparsejax_sweep_spec", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_sweep(arg) if hasattr(module, "get_sweep") else {}


def config_arg() -> str | None:
    """The ``:args`` part of --config, as the config file's get_config received it."""
    for item in sys.argv[1:]:
        if item.startswith("--config="):
            _, _, arg = item[len("--config="):].partition(":")
            return arg or None
    return None


def slurm_script(workdir: pathlib.Path, count: int, command: list[str]) -> str:
    line = shlex.join([*command, f"--workdir={workdir}"]) + " --point=$SLURM_ARRAY_TASK_ID"
    return "\n".join([
        "#!/bin/bash",
        f"# {count} points of a sparsejax sweep; submit with: sbatch {workdir / 'sweep.sbatch'}",
        "# (add resources on the sbatch command line, e.g. sbatch --gres=gpu:1 --time=12:00:00 ...)",
        f"#SBATCH --job-name=sparsejax-{workdir.name}",
        f"#SBATCH --array=0-{count - 1}",
        f"#SBATCH --output={workdir}/slurm/%A_%a.out",
        f"cd {shlex.quote(os.getcwd())}",
        line, ""])


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run(config: ml_collections.ConfigDict, todo: list[tuple[int, Point]], total: int,
        workdir: pathlib.Path) -> list[tuple[str, str]]:
    """Trains the points of ``todo`` that have not finished; returns the failed ``(name, reason)``."""
    from sparsejax import files, lottery, train
    from sparsejax.errors import UserError
    modes = {"train": train.train_and_evaluate,
             "lottery": lambda c, d: lottery.run(c, d)[-1]}  # the final ticket's record
    failed, durations = [], []
    for n, (i, point) in enumerate(todo, 1):
        rundir = workdir / point.name
        prefix = f"[{i + 1}/{total}] {point.name}"
        if (rundir / FINISHED).exists():
            print(f"{prefix}: finished before, skipped", flush=True)
            continue
        start = time.perf_counter()
        c = point_config(config, point)
        try:
            summary = modes[c.mode](c, rundir)
        except UserError as e:
            failed.append((point.name, " ".join(str(e).split())))
            print(f"{prefix}: failed: {failed[-1][1]}", flush=True)
            continue
        except Exception as e:  # noqa: BLE001 - a bug in one point must not stop the others
            failed.append((point.name, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
            logging.exception("point %s failed", point.name)
            print(f"{prefix}: failed: {failed[-1][1]}", flush=True)
            continue
        durations.append(time.perf_counter() - start)
        files.write_atomic(rundir / FINISHED, json.dumps(
            {"point": point.values, "test_accuracy": summary["test_accuracy"],
             "final_test_accuracy": summary["final_test_accuracy"],
             "seconds": durations[-1]}, indent=2))
        left = sum(not (workdir / p.name / FINISHED).exists() for _, p in todo[n:])
        eta = sum(durations) / len(durations) * left
        print(f"{prefix}: test accuracy {summary['test_accuracy']:.4f} in "
              f"{_duration(durations[-1])}; {left} to go, ETA {_duration(eta)}", flush=True)
    return failed


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.FATAL)
    config = load_config()
    try:
        spec = load_spec(config_arg())
        seeds = (parse_seeds(FLAGS.seeds) if FLAGS.seeds else
                 tuple(spec.get("seeds", ())) or (config.seed,))
        found = points(config, spec, FLAGS.grid, seeds)
        configs = [point_config(config, p) for p in found]
    except (ValueError, TypeError, KeyError) as e:
        fail(str(e))
    if FLAGS.point is not None and not 0 <= FLAGS.point < len(found):
        fail(f"--point={FLAGS.point} is not a point of this sweep (0..{len(found) - 1})")
    workdir = pathlib.Path(FLAGS.workdir or os.path.join("sweeps", config.name))
    from sparsejax import files
    from sparsejax.errors import UserError
    from sparsejax.train import build
    for point, c in zip(found, configs):
        try:
            build.check(c)
        except UserError as e:
            fail(f"point {point.name}: {e}")
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "launch.sweep",
               *[a for a in sys.argv[1:] if not a.startswith(("--workdir", "--slurm", "--point"))]]
    files.write_atomic(workdir / SWEEP_FILE, json.dumps(
        {"config": config_filename().partition(":")[0], "arg": config_arg(),
         "axes": list(dict.fromkeys(a for g in grids(config, spec, FLAGS.grid) for a, _ in g)),
         "seeds": list(seeds), "points": [p.name for p in found],
         "command": shlex.join(command[1:])}, indent=2))
    if FLAGS.slurm:
        path = workdir / "sweep.sbatch"
        (workdir / "slurm").mkdir(exist_ok=True)
        files.write_atomic(path, slurm_script(workdir.resolve(), len(found), command))
        print(f"{len(found)} points; submit with: sbatch {path}")
        return
    use_compile_cache()
    todo = list(enumerate(found))
    if FLAGS.point is not None:
        todo = [todo[FLAGS.point]]
    failed = run(config, todo, len(found), workdir)
    done = sum((workdir / p.name / FINISHED).exists() for p in found)
    print(f"{done} of {len(found)} points finished in {workdir}"
          + (f"; {len(failed)} failed: " + "; ".join(f"{n} ({r})" for n, r in failed)
             if failed else "") + f"; report: python -m launch.report {workdir}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
